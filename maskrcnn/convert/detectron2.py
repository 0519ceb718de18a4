"""Detectron2 ``GeneralizedRCNN`` weights (FPN, C4 or DC5; with or without masks) -> ours.

Detectron2's model zoo ships ``.pkl`` files, a pickle of ``{"model": {name:
numpy array}, "__author__": ..., ...}``; its trainer writes ``.pth`` files,
``torch.save`` of ``{"model": {name: tensor}, "optimizer": ..., ...}``. Names
follow its modules: ``backbone.bottom_up.res{2..5}`` (FPN) or
``backbone.res{2..5}`` (C4, DC5) are our ``backbone.body.layer{1..4}`` (each
conv carries its norm as ``.norm``), ``backbone.fpn_lateral{2..5}`` our
``backbone.fpn.lateral.{0..3}``, and the C4 RoI head's ``roi_heads.res5``
our ``roi_shared``.

The architecture is read off the names, since the file carries no config:
FPN has ``backbone.bottom_up.*`` and ``backbone.fpn_*``; C4 (``Res5ROIHeads``)
has ``roi_heads.res5.*`` and a backbone up to res4; DC5 has a bare ResNet
backbone with ``backbone.res5.*``. (A plain, undilated C5 model would have the
same tensors as DC5; the model zoo has none.)

Class slots: Detectron2's classifier puts background LAST (``K + 1`` rows,
background at row ``K``); ours puts it first, so its rows are rotated by
one. Box regression and mask logits already have ``K`` class slots in the
same order. With the model zoo's 80 COCO classes, label ``i`` is the i-th
COCO category id.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from maskrcnn.config import (
    Architecture,
    ModelConfig,
    detectron2_r50_c4,
    detectron2_r50_dc5,
    detectron2_r50_fpn,
)
from maskrcnn.convert.shapes import infer_config, rename_state

Transform = Callable[[Tensor], Tensor]


def _background_first(t: Tensor) -> Tensor:
    """(K + 1, ...) with background at row K -> background at row 0, classes in order after it."""
    return torch.cat([t[-1:], t[:-1]])


# Detectron2 numbers stages res2..res5, FPN levels 2..5 and mask convs from 1;
# ours count from 0 (layer1..layer4 being torchvision's names for res2..res5).
_INDEX_OFFSETS = {"stage": -1, "level": -2, "conv": -1}
_NORM = r"(?P<t>weight|bias|running_mean|running_var)"
_P = r"(?P<t>weight|bias)"
# FPN models nest the ResNet as ``backbone.bottom_up``; C4 and DC5 models are the bare ResNet.
_BLOCK = r"backbone\.(?:bottom_up\.)?res(?P<stage>[2-5])\.(?P<i>\d+)\."
_LAYER = "backbone.body.layer{stage}.{i}"
# C4: res5 runs per RoI, inside the RoI heads.
_RES5_HEAD = r"roi_heads\.res5\.(?P<i>\d+)\."
_SHARED = "roi_shared.{i}"


def _block_rules(block: str, ours: str) -> list[tuple[str, str, Transform | None]]:
    """A bottleneck block's convs, norms and projection shortcut."""
    return [
        (rf"{block}conv(?P<j>[1-3])\.weight", ours + ".conv{j}.weight", None),
        (rf"{block}conv(?P<j>[1-3])\.norm\.{_NORM}", ours + ".bn{j}.{t}", None),
        (rf"{block}shortcut\.weight", ours + ".downsample.0.weight", None),
        (rf"{block}shortcut\.norm\.{_NORM}", ours + ".downsample.1.{t}", None),
    ]

# (pattern over Detectron2's name, our name as a format string over the
# pattern's groups, transform of the value).
_RULES: list[tuple[re.Pattern[str], str, Transform | None]] = [
    (re.compile(p), r, t)
    for p, r, t in [
        (r"backbone\.(?:bottom_up\.)?stem\.conv1\.weight", "backbone.body.conv1.weight", None),
        (rf"backbone\.(?:bottom_up\.)?stem\.conv1\.norm\.{_NORM}", "backbone.body.bn1.{t}", None),
        *_block_rules(_BLOCK, _LAYER),
        *_block_rules(_RES5_HEAD, _SHARED),
        (rf"backbone\.fpn_lateral(?P<level>[2-5])\.{_P}", "backbone.fpn.lateral.{level}.{t}", None),
        (rf"backbone\.fpn_output(?P<level>[2-5])\.{_P}", "backbone.fpn.output.{level}.{t}", None),
        (rf"proposal_generator\.rpn_head\.conv\.{_P}", "rpn.head.conv.{t}", None),
        (rf"proposal_generator\.rpn_head\.objectness_logits\.{_P}", "rpn.head.objectness.{t}", None),
        (rf"proposal_generator\.rpn_head\.anchor_deltas\.{_P}", "rpn.head.deltas.{t}", None),
        (rf"roi_heads\.box_head\.fc(?P<n>[12])\.{_P}", "box.head.fc{n}.{t}", None),
        (rf"roi_heads\.box_predictor\.cls_score\.{_P}", "box.head.cls_score.{t}", _background_first),
        (rf"roi_heads\.box_predictor\.bbox_pred\.{_P}", "box.head.bbox_pred.{t}", None),
        (rf"roi_heads\.mask_head\.mask_fcn(?P<conv>\d+)\.{_P}", "mask.head.convs.{conv}.{t}", None),
        (rf"roi_heads\.mask_head\.deconv\.{_P}", "mask.head.deconv.{t}", None),
        (rf"roi_heads\.mask_head\.predictor\.{_P}", "mask.head.predictor.{t}", None),
    ]
]

# Entries that are not learned weights: input normalisation constants (our
# config holds them) and the RPN's cell anchors (computed from the config).
_IGNORED_NAMES = ("pixel_mean", "pixel_std")
_IGNORED_PREFIXES = ("proposal_generator.anchor_generator.",)
_IGNORED_SUFFIXES = (".num_batches_tracked",)

# Detectron2's ResNeXt models start from FAIR's Caffe2 ImageNet weights, not
# MSRA's: stride in the 3x3 conv, and a per-channel std on 0-255 BGR pixels
# (its model zoo's X-101-32x8d configs all set these two).
RESNEXT_PIXEL_STD = (57.375, 57.120, 58.395)


def matches(keys: Iterable[str]) -> bool:
    """Whether these state-dict keys look like a Detectron2 R-CNN."""
    return any(
        k.startswith(("backbone.bottom_up.", "proposal_generator.rpn_head.", "roi_heads.res5.")) for k in keys
    )


# What marks each architecture's state dict (Detectron2's names).
_MARKS: dict[str, tuple[str, ...]] = {
    "fpn": ("backbone.bottom_up.", "backbone.fpn_"),
    "c4": ("roi_heads.res5.",),
    "dc5": ("backbone.res5.",),
}


def detect_architecture(keys: Iterable[str]) -> Architecture | None:
    """``"fpn"``, ``"c4"`` or ``"dc5"`` from a Detectron2 state dict's names; None when none is marked.

    Raises ValueError when the names mark more than one (tensors of several
    models mixed in one file).
    """
    found: dict[str, str] = {}
    for key in keys:
        for arch, prefixes in _MARKS.items():
            if arch not in found and key.startswith(prefixes):
                found[arch] = key
    if len(found) > 1:
        marks = "; ".join(f"{a.upper()}: {', '.join(p + '*' for p in ps)}" for a, ps in _MARKS.items())
        seen = ", ".join(f"{a.upper()} ({k})" for a, k in found.items())
        raise ValueError(
            f"this Detectron2 state dict mixes the tensors of several architectures: {seen}; "
            f"a model has the tensors of exactly one ({marks})"
        )
    return next(iter(found), None)  # type: ignore[return-value]


_BASES: dict[str, Callable[[], ModelConfig]] = {
    "fpn": detectron2_r50_fpn, "c4": detectron2_r50_c4, "dc5": detectron2_r50_dc5,
}


def _rename(name: str) -> tuple[str, Transform | None]:
    for pattern, template, transform in _RULES:
        m = pattern.fullmatch(name)
        if m:
            groups = {
                k: str(int(v) + _INDEX_OFFSETS[k]) if k in _INDEX_OFFSETS else v
                for k, v in m.groupdict().items()
            }
            return template.format(**groups), transform
    # Unknown names pass through, so that validation reports them as unexpected.
    return name, None


def _ignored(name: str) -> bool:
    return name in _IGNORED_NAMES or name.startswith(_IGNORED_PREFIXES) or name.endswith(_IGNORED_SUFFIXES)


def convert(state: Mapping[str, Any]) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Our config and state dict from a Detectron2 model state dict (numpy arrays or tensors).

    The architecture (FPN, C4, DC5) comes from the names and picks the config
    to start from (``detectron2_r50_fpn``, ``_c4``, ``_dc5``: the model zoo's
    configs); depth, ResNeXt width, class count and mask head come from the
    tensors, and ResNeXt backbones get the Caffe2 stride placement and pixel
    std of Detectron2's ResNeXt configs. Raises ValueError for keypoint models
    and for names that mark several architectures.
    """
    if any(k.startswith("roi_heads.keypoint_head.") for k in state):
        raise ValueError(
            "this is a Detectron2 keypoint R-CNN checkpoint: keypoint checkpoints are not supported yet"
        )
    # Names of no known architecture are read as FPN's, so that the error lists every misfit.
    architecture = detect_architecture(state) or "fpn"
    out = rename_state(state, _rename, _ignored)
    cfg = infer_config(_BASES[architecture](), out)
    if cfg.backbone.groups > 1:
        cfg = cfg.replace(
            backbone=dataclasses.replace(cfg.backbone, stride_in_1x1=False),
            input=dataclasses.replace(cfg.input, pixel_std=RESNEXT_PIXEL_STD),
        )
    return cfg, out

