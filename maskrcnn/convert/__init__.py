"""Checkpoints of this project, torchvision and Detectron2 -> (config, our state dict).

``load_checkpoint(path)`` reads a file, works out whose it is from its
contents (not its name), renames and reshapes the peer's tensors into our
key names (``torchvision.py``, ``detectron2.py``), and checks the result
against every name and shape the config's architecture has
(``shapes.expected_state_shapes``). Anything wrong is a ``CheckpointError``
that names the file: unreadable or truncated, of no known layout, or not
fitting the architecture (every missing, unexpected and wrong-shape tensor
in one message).

Reading never runs code from the file: safetensors has no pickle;
``torch.load`` runs with ``weights_only=True``; and Detectron2's ``.pkl``
files go through an unpickler that only rebuilds numpy arrays and plain
containers.
"""

from __future__ import annotations

import codecs
import collections
import importlib
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from maskrcnn.checkpoint import FORMAT_NAME, SAFETENSORS_SUFFIXES, unpack_model
from maskrcnn.config import ModelConfig
from maskrcnn.convert import detectron2, torchvision
from maskrcnn.convert.shapes import compare_state, expected_state_shapes, infer_config

__all__ = [
    "FORMATS",
    "CheckpointError",
    "compare_state",
    "detect_format",
    "expected_state_shapes",
    "infer_config",
    "load_checkpoint",
    "read_checkpoint",
]

FORMATS = (FORMAT_NAME, "torchvision", "detectron2")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default container since PyTorch 1.6
# How many entry names an error message shows.
_EXAMPLES = 8


class CheckpointError(Exception):
    """A checkpoint file that cannot be used: the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


# ---------------------------------------------------------------------------
# Reading files.


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """What a pickle of numpy arrays needs, under both numpy 1 and numpy 2 module names."""
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        # Protocol 2 pickles (Python 2 compatible) store an array's bytes as a latin-1 string.
        ("_codecs", "encode"): codecs.encode,
    }
    needed = [("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")]
    for module, name in needed:
        for package in ("numpy._core", "numpy.core"):
            try:
                obj = getattr(importlib.import_module(f"{package}.{module}"), name)
            except (ImportError, AttributeError):
                continue
            # Pickles name whichever package wrote them; numpy 2 renamed core -> _core.
            allowed[(f"numpy.core.{module}", name)] = obj
            allowed[(f"numpy._core.{module}", name)] = obj
            break
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers; refuses every other global."""

    _allowed = _numpy_globals()

    def __init__(self, file: IO[bytes]) -> None:
        # latin1: numpy arrays pickled by Python 2 (older model-zoo files) hold byte strings.
        super().__init__(file, encoding="latin1")

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: only numpy arrays and plain containers are allowed"
            ) from None


def _short(e: BaseException) -> str:
    """The first line of an error, without torch's advice to turn off ``weights_only`` (unsafe)."""
    text = str(e).strip()
    if "Weights only load failed" in text:
        # torch's message advises weights_only=False, which would run code from the file:
        # keep only what the safe unpickler objected to.
        found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        reason = found.group(1).strip() if found else ""
        if reason.startswith("Unsupported global"):
            name = re.search(r"GLOBAL (\S+)", reason)
            return (f"it holds Python objects besides tensors ({name.group(1) if name else 'a class'}), "
                    "which are not loaded because unpickling them could run code from the file")
        return f"not a weights file ({reason.rstrip('.') or 'unreadable'})"
    lines = text.splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _is_safetensors(path: Path, head: bytes, size: int) -> bool:
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return True
    # An 8-byte little-endian header length, then the JSON header.
    return len(head) >= 9 and 0 < int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    if metadata.get("format") == FORMAT_NAME:
        return {**metadata, "model": tensors}
    return tensors  # someone's bare state dict; detected by its keys


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """The object stored in a checkpoint file (usually a dict), without running code from it.

    safetensors files become ``{"format", "version", "config", "model"}``
    when written by this project, else the plain name -> tensor dict.
    Raises CheckpointError when the file cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if _is_safetensors(path, head, size):
        try:
            return _read_safetensors(path)
        except Exception as e:
            raise CheckpointError(path, f"cannot read checkpoint: not a valid safetensors file ({e})") from e
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of plain pickles (.pkl) before failing on them.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        torch_error = e
    if head.startswith(_ZIP_MAGIC):  # a torch file, damaged or holding more than weights
        raise CheckpointError(path, f"cannot read checkpoint: {_short(torch_error)}")
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f).load()
    except Exception as e:
        problem = f"neither a torch file ({_short(torch_error)}) nor a pickle ({_short(e)})"
        raise CheckpointError(path, f"cannot read checkpoint: {problem}") from e
    if not isinstance(obj, Mapping):
        # e.g. the magic number at the start of a pre-1.6 torch file that weights_only refused
        problem = f"{_short(torch_error)}; as a plain pickle it holds a {type(obj).__name__}"
        raise CheckpointError(path, f"cannot read checkpoint: {problem}")
    return obj


# ---------------------------------------------------------------------------
# Formats.


def _state_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict inside a training checkpoint's wrapper, or ``obj`` itself."""
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            return obj[key]
    return obj


def _unknown_layout(obj: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    names = [str(k) for k in state]
    shown = ", ".join(names[:_EXAMPLES]) + (", ..." if len(names) > _EXAMPLES else "")
    msg = f"matches no known checkpoint layout ({', '.join(FORMATS)}); "
    msg += f"{len(names)} entries: {shown or 'none'}"
    if state is not obj:
        msg += f" (inside a dict with keys {', '.join(map(str, list(obj)[:_EXAMPLES]))})"
    if "box.head.cls_score.weight" in state or "box_head.cls_score.weight" in state:
        msg += "; it looks like a bare maskrcnn state dict: save it with its config"
        msg += " (maskrcnn.checkpoint.save_model)"
    if "blobs" in obj:
        msg += "; it looks like a Detectron (Caffe2) pickle: convert it with Detectron2 first"
    return msg


def detect_format(obj: Any) -> str:
    """Whose checkpoint a loaded object is: one of ``FORMATS``.

    Our format says so (``format: "maskrcnn"``); peers are told apart by
    their state dicts' key names, looked up inside ``{"model": ...}`` or
    ``{"state_dict": ...}`` wrappers. Raises ValueError for anything else.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"not a checkpoint: it holds a {type(obj).__name__}, not a dict")
    if obj.get("format") == FORMAT_NAME:
        return FORMAT_NAME
    state = _state_of(obj)
    keys = [k for k in state if isinstance(k, str)]
    if detectron2.matches(keys):
        return "detectron2"
    if torchvision.matches(keys):
        return "torchvision"
    raise ValueError(_unknown_layout(obj, state))


def _convert(fmt: str, obj: Mapping[str, Any]) -> tuple[ModelConfig, dict[str, Tensor]]:
    if fmt == FORMAT_NAME:
        return unpack_model(obj)
    state = _state_of(obj)
    bad = [k for k in state if not isinstance(k, str)]
    if bad:
        raise ValueError(f"state-dict names must be strings, found {bad[:_EXAMPLES]}")
    converter = torchvision.convert if fmt == "torchvision" else detectron2.convert
    return converter(state)


def _architecture(cfg: ModelConfig) -> str:
    b = cfg.backbone
    net = f"ResNet-{b.depth}" if b.groups == 1 else f"ResNeXt-{b.depth} {b.groups}x{b.width_per_group}d"
    heads = "box and mask heads" if cfg.mask_head is not None else "box head, no mask head"
    if cfg.keypoint_head is not None:
        heads += f", {cfg.keypoint_head.num_keypoints}-keypoint head"
    return f"{net} {cfg.architecture.upper()}, {cfg.num_classes} classes, {heads}"


def load_checkpoint(
    path: str | os.PathLike[str], format: str | None = None
) -> tuple[ModelConfig, dict[str, Tensor]]:
    """The config and state dict (our key names) of a checkpoint file.

    ``format`` (one of ``FORMATS``) skips detection. The result is checked
    against ``expected_state_shapes(config)``; every problem is reported in
    one CheckpointError naming the file. The state dict's entries come in
    module order (that of ``expected_state_shapes``).
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; known: {', '.join(FORMATS)}")
    path = Path(path)
    obj = read_checkpoint(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"not a checkpoint: it holds a {type(obj).__name__}, not a dict")
    try:
        fmt = format or detect_format(obj)
        cfg, state = _convert(fmt, obj)
        expected = expected_state_shapes(cfg)
    except (ValueError, TypeError) as e:
        raise CheckpointError(path, str(e)) from e
    mismatch = compare_state(expected, state)
    if not mismatch.ok:
        raise CheckpointError(
            path,
            f"the {fmt} checkpoint's tensors do not fit its architecture ({_architecture(cfg)}):\n"
            + mismatch.describe(),
        )
    return cfg, {name: state[name] for name in expected}  # in module order, whatever the file's
