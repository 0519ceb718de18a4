"""This project's checkpoint format: weights together with the config that built them.

Two containers hold the same content:

- ``.safetensors``: the state dict as tensors; the file's string metadata
  holds ``format = "maskrcnn"``, ``version`` and ``config`` (the JSON of
  ``ModelConfig.to_dict()``). No pickle, so safe to load from anywhere.
- ``.pth`` / ``.pt``: ``torch.save`` of ``{"format": "maskrcnn", "version": 2,
  "config": dict, "model": state_dict}``, optionally with training state
  (``optimizer``, ``iteration``, ...) beside it, which inference ignores.

Versions: 1 (v0.1) had flat sampler fields in the RPN and box-head configs,
``mask_head.loss`` for the mask representation, and the heads' weights under
``box_head.``, ``mask_head.``, ``keypoint_head.``. Version 2 nests the
samplers (``rpn.sampler``, ``box_head.sampler``), names the representation
``mask_head.representation``, adds ``mask_head.target_rule``, and keeps the
weights under ``box.head.``, ``mask.head.``, ``keypoint.head.`` (each branch
owns its head). ``unpack_model`` upgrades older files as it reads them.

Files are written to a temporary file in the target directory and renamed
into place, so a crash mid-write never leaves a half-written checkpoint
under the final name. ``maskrcnn.convert.load_checkpoint`` reads both (and
the peers' formats).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from maskrcnn.config import BoxHeadConfig, ModelConfig, RPNConfig
from maskrcnn.files import remove_stale_temporaries, write_atomically

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "remove_stale_temporaries", "save_model", "unpack_model"]

FORMAT_NAME = "maskrcnn"
FORMAT_VERSION = 2
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
    try:
        version = int(payload.get("version", 1))
    except (TypeError, ValueError):
        raise ValueError(f"checkpoint format version {payload.get('version')!r} is not a number") from None
    if version > FORMAT_VERSION:
        raise ValueError(f"checkpoint format version {version} is newer than this code's {FORMAT_VERSION}: "
                         "upgrade maskrcnn to read it")
    if version < 1:
        raise ValueError(f"checkpoint format version {version} does not exist (the first is 1)")
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
    state = payload.get("model")
    if not isinstance(state, Mapping):
        raise ValueError("the checkpoint has no 'model' state dict")
    config, state = dict(config), dict(state)
    for old in range(version, FORMAT_VERSION):
        config, state = _UPGRADES[old](config, state)
    try:
        cfg = ModelConfig.from_dict(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the checkpoint's config is invalid: {e}") from None
    bad = [name for name, value in state.items() if not isinstance(value, Tensor)]
    if bad:
        raise ValueError(f"{len(bad)} state-dict entries are not tensors: {', '.join(map(str, bad[:10]))}")
    return cfg, state


# ---------------------------------------------------------------------------
# Upgrades of older versions, each from version ``v`` to ``v + 1``.

# v1's flat sampler fields, nested as ``sampler`` in v2.
_SAMPLER_FIELDS = ("fg_iou_thresh", "bg_iou_thresh", "batch_size_per_image", "positive_fraction",
                   "crowd_ioa_thresh")
_V1_HEAD_PREFIXES = {"box_head.": "box.head.", "mask_head.": "mask.head.", "keypoint_head.": "keypoint.head."}


def _v1_to_v2(config: dict[str, Any], state: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """v0.1 checkpoints: nest the samplers, rename the mask representation, move the heads' weights.

    v1 trained every mask head with binarised, aligned targets (Detectron2's
    rule), so that is the target rule it gets; a sampler field the file does
    not hold keeps v2's default.
    """
    config = dict(config)
    for stage, low_quality in (("rpn", True), ("box_head", False)):
        if isinstance(config.get(stage), Mapping):
            section = dict(config[stage])
            sampler = {name: section.pop(name) for name in _SAMPLER_FIELDS if name in section}
            if sampler:
                section["sampler"] = {**_default_sampler(stage), **sampler,
                                      "allow_low_quality_matches": low_quality}
            config[stage] = section
    if isinstance(config.get("mask_head"), Mapping):
        mask = dict(config["mask_head"])
        if "loss" in mask:
            mask["representation"] = mask.pop("loss")
        mask.setdefault("target_rule", "detectron2")
        config["mask_head"] = mask
    renamed = {}
    for name, value in state.items():
        for old, new in _V1_HEAD_PREFIXES.items():
            if name.startswith(old):
                name = new + name[len(old):]
                break
        renamed[name] = value
    return config, renamed


def _default_sampler(stage: str) -> dict[str, Any]:
    section = RPNConfig() if stage == "rpn" else BoxHeadConfig()
    return dataclasses.asdict(section.sampler)


_UPGRADES = {1: _v1_to_v2}
