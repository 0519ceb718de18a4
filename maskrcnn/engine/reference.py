"""Peer checkpoints with synthetic weights, re-created from a reference fixture.

A fixture directory of ``../shared/reference`` holds ``spec.json`` (the
peer's state-dict names and shapes) and ``expected.json`` (its seed and
outputs); ``synth_weights.py`` beside the fixtures re-creates every tensor
from its name and the seed. ``write_fixture_weights`` writes those weights in
the peer's own file format, exactly as a user's downloaded checkpoint would
look, so that the whole import path is exercised.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

import torch

from ..convert import detectron2, torchvision

# Where the shared material lives unless MASKRCNN_SHARED says otherwise:
# beside the repository checkout.
DEFAULT_SHARED = Path(__file__).resolve().parents[3] / "shared"


def shared_dir() -> Path:
    return Path(os.environ.get("MASKRCNN_SHARED", DEFAULT_SHARED))


def reference_dir() -> Path:
    return shared_dir() / "reference"


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

    Detectron2 fixtures become a model-zoo ``.pkl``; torchvision ones a ``.pth`` state dict.
    A fixture may live anywhere (the shared ones, or the project's own under
    ``tests/reference``); the synthesiser is always the shared one. Tensors named
    in the fixture's ``"scale"`` (``{name: factor}``) are multiplied by it, as the
    fixture maker did.
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
        detectron2.save_pickle(out, arrays)
    else:
        torchvision.save_state_dict(out, {k: torch.from_numpy(v) for k, v in arrays.items()})
    return out
