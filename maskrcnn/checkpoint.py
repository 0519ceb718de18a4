"""This project's checkpoint format: weights together with the config that built them.

Two containers hold the same content:

- ``.safetensors``: the state dict as tensors; the file's string metadata
  holds ``format = "maskrcnn"``, ``version`` and ``config`` (the JSON of
  ``ModelConfig.to_dict()``). No pickle, so safe to load from anywhere.
- ``.pth`` / ``.pt``: ``torch.save`` of ``{"format": "maskrcnn", "version": 1,
  "config": dict, "model": state_dict}``, optionally with training state
  (``optimizer``, ``iteration``, ...) beside it, which inference ignores.

Files are written to a temporary file in the target directory and renamed
into place, so a crash mid-write never leaves a half-written checkpoint
under the final name. ``maskrcnn.convert.load_checkpoint`` reads both (and
the peers' formats).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from maskrcnn.config import ModelConfig
from maskrcnn.files import remove_stale_temporaries, write_atomically

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "remove_stale_temporaries", "save_model", "unpack_model"]

FORMAT_NAME = "maskrcnn"
FORMAT_VERSION = 1
SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt")
# Keys of the .pth payload that are not training state.
_PAYLOAD_KEYS = ("format", "version", "config", "model")


def _compact(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous tensors that each own their storage.

    safetensors refuses tensors sharing memory, and ``torch.save`` of a view
    (say, rows sliced off a peer's classifier) would write its whole storage.
    """
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"state_dict[{name!r}] is a {type(value).__name__}, not a tensor")
        t = value.detach().cpu().contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def save_model(
    path: str | os.PathLike[str],
    config: ModelConfig,
    state_dict: Mapping[str, Tensor],
    *,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``config`` and ``state_dict`` to ``path``; the extension picks the container.

    ``extra`` (training state: optimizer, scheduler, iteration, ...) goes
    beside the weights and needs a ``.pth`` / ``.pt`` file. Returns the path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_PAYLOAD_KEYS))
    if clash:
        raise ValueError(f"extra entries {clash} would overwrite the checkpoint's own")
    tensors = _compact(state_dict)
    if suffix in SAFETENSORS_SUFFIXES:
        if extra:
            raise ValueError(f"{path}: training state ({', '.join(sorted(extra))}) needs a .pth file")
        metadata = {
            "format": FORMAT_NAME,
            "version": str(FORMAT_VERSION),
            "config": json.dumps(config.to_dict()),
        }
        write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    elif suffix in TORCH_SUFFIXES:
        payload = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "config": config.to_dict(),
            "model": tensors,
            **extra,
        }
        write_atomically(path, lambda tmp: torch.save(payload, tmp))
    else:
        known = ", ".join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)
        raise ValueError(f"{path}: unknown checkpoint extension {path.suffix!r} (use {known})")
    return path


def unpack_model(payload: Mapping[str, Any]) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Config and state dict of a loaded payload in this format.

    ``payload`` is the ``.pth`` dict, or for safetensors the metadata's
    ``config`` (a JSON string) with the tensors under ``model``. Training
    state beside them is ignored. Raises ValueError on anything else.
    """
    if payload.get("format") != FORMAT_NAME:
        raise ValueError(f"not a {FORMAT_NAME} checkpoint (format is {payload.get('format')!r})")
    version = int(payload.get("version", FORMAT_VERSION))
    if version > FORMAT_VERSION:
        raise ValueError(f"checkpoint format version {version} is newer than this code's {FORMAT_VERSION}")
    config = payload.get("config")
    if config is None:
        raise ValueError("the checkpoint has no config")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as e:
            raise ValueError(f"the checkpoint's config is not valid JSON: {e}") from None
    if not isinstance(config, Mapping):
        raise ValueError(f"the checkpoint's config is a {type(config).__name__}, not a mapping")
    try:
        cfg = ModelConfig.from_dict(dict(config))
    except (TypeError, ValueError) as e:
        raise ValueError(f"the checkpoint's config is invalid: {e}") from None
    state = payload.get("model")
    if not isinstance(state, Mapping):
        raise ValueError("the checkpoint has no 'model' state dict")
    bad = [name for name, value in state.items() if not isinstance(value, Tensor)]
    if bad:
        raise ValueError(f"{len(bad)} state-dict entries are not tensors: {', '.join(map(str, bad[:10]))}")
    return cfg, dict(state)
