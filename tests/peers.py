"""Test and benchmark support: where the shared material lives, and peer checkpoints
with synthetic weights written in the peers' own file formats.

A fixture directory (``../shared/reference/*`` or the project's own under
``tests/reference``) holds ``spec.json`` (the peer's state-dict names and shapes)
and ``expected.json`` (its seed and outputs); ``synth_weights.py`` in the shared
reference folder re-creates every tensor from its name and the seed.
``write_fixture_weights`` writes those weights exactly as a user's downloaded
checkpoint would look (a torchvision ``.pth`` state dict, a Detectron2 model-zoo
``.pkl``), so that the whole import path is exercised.

This lives beside the tests, not in the package: the package never reads the
shared folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

# Where the shared material lives unless MASKRCNN_SHARED says otherwise: beside the checkout.
DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_dir() -> Path:
    return Path(os.environ.get("MASKRCNN_SHARED", DEFAULT_SHARED))


def reference_dir() -> Path:
    return shared_dir() / "reference"


def save_torchvision_state(path: str | os.PathLike[str], state: Mapping[str, Tensor]) -> None:
    """A torchvision-style checkpoint: ``torch.save`` of the plain name -> tensor dict."""
    torch.save(dict(state), path)


def save_detectron2_pickle(
    path: str | os.PathLike[str], state: Mapping[str, np.ndarray | Tensor], *, protocol: int = 4
) -> None:
    """A Detectron2 model-zoo style ``.pkl``: ``{"model": {name: numpy array}, "__author__": ...}``."""
    arrays = {
        name: value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
        for name, value in state.items()
    }
    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "maskrcnn synthetic"}, f, protocol=protocol)


def _synth_module(reference: Path) -> ModuleType:
    path = reference / "synth_weights.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the reference weight synthesiser is missing")
    spec = importlib.util.spec_from_file_location("_reference_synth_weights", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_fixture_weights(fixture: str | Path, out: str | Path) -> Path:
    """Write the fixture's synthetic weights in its framework's format; returns the file written.

    Detectron2 fixtures become a model-zoo ``.pkl``; torchvision ones a ``.pth``
    state dict. Tensors named in the fixture's ``"scale"`` (``{name: factor}``)
    are multiplied by it, as the fixture maker did.
    """
    fixture = Path(fixture)
    synth = _synth_module(reference_dir())
    spec = json.loads((fixture / "spec.json").read_text())
    expected = json.loads((fixture / "expected.json").read_text())
    seed, scale = expected["seed"], expected.get("scale", {})
    arrays = {name: synth.synth_tensor(name, shape, seed) for name, shape, _ in spec}
    for name, factor in scale.items():
        arrays[name] = arrays[name] * factor
    out = Path(out)
    if fixture.name.startswith("detectron2"):
        save_detectron2_pickle(out, arrays)
    else:
        save_torchvision_state(out, {k: torch.from_numpy(v) for k, v in arrays.items()})
    return out
