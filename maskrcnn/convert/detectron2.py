"""Detectron2 ``GeneralizedRCNN`` (R-CNN FPN, with or without masks) weights -> ours.

Detectron2's model zoo ships ``.pkl`` files, a pickle of ``{"model": {name:
numpy array}, "__author__": ..., ...}``; its trainer writes ``.pth`` files,
``torch.save`` of ``{"model": {name: tensor}, "optimizer": ..., ...}``. Names
follow its modules: ``backbone.bottom_up.res{2..5}`` are our
``backbone.body.layer{1..4}`` (each conv carries its norm as ``.norm``),
``backbone.fpn_lateral{2..5}`` our ``backbone.fpn.lateral.{0..3}``.

Class slots: Detectron2's classifier puts background LAST (``K + 1`` rows,
background at row ``K``); ours puts it first, so its rows are rotated by
one. Box regression and mask logits already have ``K`` class slots in the
same order. With the model zoo's 80 COCO classes, label ``i`` is the i-th
COCO category id.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from maskrcnn.config import ModelConfig, detectron2_r50_fpn
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
_BLOCK = r"backbone\.bottom_up\.res(?P<stage>[2-5])\.(?P<i>\d+)\."
_LAYER = "backbone.body.layer{stage}.{i}"

# (pattern over Detectron2's name, our name as a format string over the
# pattern's groups, transform of the value).
_RULES: list[tuple[re.Pattern[str], str, Transform | None]] = [
    (re.compile(p), r, t)
    for p, r, t in [
        (r"backbone\.bottom_up\.stem\.conv1\.weight", "backbone.body.conv1.weight", None),
        (rf"backbone\.bottom_up\.stem\.conv1\.norm\.{_NORM}", "backbone.body.bn1.{t}", None),
        (rf"{_BLOCK}conv(?P<j>[1-3])\.weight", _LAYER + ".conv{j}.weight", None),
        (rf"{_BLOCK}conv(?P<j>[1-3])\.norm\.{_NORM}", _LAYER + ".bn{j}.{t}", None),
        (rf"{_BLOCK}shortcut\.weight", _LAYER + ".downsample.0.weight", None),
        (rf"{_BLOCK}shortcut\.norm\.{_NORM}", _LAYER + ".downsample.1.{t}", None),
        (rf"backbone\.fpn_lateral(?P<level>[2-5])\.{_P}", "backbone.fpn.lateral.{level}.{t}", None),
        (rf"backbone\.fpn_output(?P<level>[2-5])\.{_P}", "backbone.fpn.output.{level}.{t}", None),
        (rf"proposal_generator\.rpn_head\.conv\.{_P}", "rpn.head.conv.{t}", None),
        (rf"proposal_generator\.rpn_head\.objectness_logits\.{_P}", "rpn.head.objectness.{t}", None),
        (rf"proposal_generator\.rpn_head\.anchor_deltas\.{_P}", "rpn.head.deltas.{t}", None),
        (rf"roi_heads\.box_head\.fc(?P<n>[12])\.{_P}", "box_head.fc{n}.{t}", None),
        (rf"roi_heads\.box_predictor\.cls_score\.{_P}", "box_head.cls_score.{t}", _background_first),
        (rf"roi_heads\.box_predictor\.bbox_pred\.{_P}", "box_head.bbox_pred.{t}", None),
        (rf"roi_heads\.mask_head\.mask_fcn(?P<conv>\d+)\.{_P}", "mask_head.convs.{conv}.{t}", None),
        (rf"roi_heads\.mask_head\.deconv\.{_P}", "mask_head.deconv.{t}", None),
        (rf"roi_heads\.mask_head\.predictor\.{_P}", "mask_head.predictor.{t}", None),
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
    return any(k.startswith(("backbone.bottom_up.", "proposal_generator.rpn_head.")) for k in keys)


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

    The config starts from ``detectron2_r50_fpn()``; depth, ResNeXt width,
    class count and mask head presence come from the tensors, and ResNeXt
    backbones get the Caffe2 stride placement and pixel std of Detectron2's
    ResNeXt configs. Raises ValueError for keypoint models.
    """
    if any(k.startswith("roi_heads.keypoint_head.") for k in state):
        raise ValueError(
            "this is a Detectron2 keypoint R-CNN checkpoint: keypoint checkpoints are not supported yet"
        )
    out = rename_state(state, _rename, _ignored)
    cfg = infer_config(detectron2_r50_fpn(), out)
    if cfg.backbone.groups > 1:
        cfg = cfg.replace(
            backbone=dataclasses.replace(cfg.backbone, stride_in_1x1=False),
            input=dataclasses.replace(cfg.input, pixel_std=RESNEXT_PIXEL_STD),
        )
    return cfg, out


def save_pickle(
    path: str | os.PathLike[str], state: Mapping[str, np.ndarray | Tensor], *, protocol: int = 4
) -> None:
    """Write a Detectron2 model-zoo style ``.pkl``: ``{"model": {name: numpy array}, "__author__": ...}``."""
    arrays = {
        name: value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
        for name, value in state.items()
    }
    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "maskrcnn synthetic"}, f, protocol=protocol)
