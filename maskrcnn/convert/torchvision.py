"""torchvision ``maskrcnn_resnet50_fpn`` weights (also Faster and Keypoint R-CNN's) -> ours.

torchvision names the model after its module tree
(``backbone.fpn.inner_blocks.0.0``, ``roi_heads.box_predictor.cls_score``).
Two layouts exist: current torchvision wraps convolutions in
``Conv2dNormActivation`` (``inner_blocks.i.0``, ``rpn.head.conv.0.0``,
``mask_head.i.0``); files published by older versions, which users still
download, have bare convolutions (``inner_blocks.i``, ``rpn.head.conv``,
``mask_head.mask_fcn{1..4}``). Both map to the same names here.

Class slots: torchvision's box predictor has ``K + 1`` outputs everywhere,
background at 0. Our classifier keeps all ``K + 1`` (background first too),
but box regression and mask logits only exist for the ``K`` foreground
classes, so their background slot (the first 4 rows of ``bbox_pred``, the
first row of ``mask_fcn_logits``) is dropped. With COCO's 91 slots, K = 90
labels are COCO category ids minus one, ten of them "N/A".

Keypoint R-CNN: torchvision's keypoint head is one ``nn.Sequential`` of
conv, ReLU, conv, ReLU, ... (``keypoint_head.0``, ``.2``, ..., ``.14``: the
ReLUs hold no weights), which become ``keypoint.head.convs.0..7``; its
``keypoint_predictor.kps_score_lowres`` deconvolution is our
``keypoint.head.predictor``. Its 2 classes (background, person) leave us one
foreground class, person, COCO category id 1.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import Tensor

from maskrcnn.config import ModelConfig, torchvision_keypoint_r50_fpn, torchvision_r50_fpn
from maskrcnn.convert.shapes import infer_config, rename_state

Transform = Callable[[Tensor], Tensor]


def _drop_rows(n: int) -> Transform:
    """Drop the first ``n`` rows (background's slot) of a weight or bias."""
    return lambda t: t[n:]


# (pattern over torchvision's name, our name as a re.sub template, transform of the value).
# `(?:0\.)?` accepts both the current (wrapped) and the old (bare) conv layouts.
_RULES: list[tuple[re.Pattern[str], str, Transform | None]] = [
    (re.compile(p), r, t)
    for p, r, t in [
        (r"backbone\.body\.(.+)", r"backbone.body.\1", None),
        (r"backbone\.fpn\.inner_blocks\.(\d+)\.(?:0\.)?(weight|bias)", r"backbone.fpn.lateral.\1.\2", None),
        (r"backbone\.fpn\.layer_blocks\.(\d+)\.(?:0\.)?(weight|bias)", r"backbone.fpn.output.\1.\2", None),
        (r"rpn\.head\.conv\.(?:0\.0\.)?(weight|bias)", r"rpn.head.conv.\1", None),
        (r"rpn\.head\.cls_logits\.(weight|bias)", r"rpn.head.objectness.\1", None),
        (r"rpn\.head\.bbox_pred\.(weight|bias)", r"rpn.head.deltas.\1", None),
        (r"roi_heads\.box_head\.fc6\.(weight|bias)", r"box.head.fc1.\1", None),
        (r"roi_heads\.box_head\.fc7\.(weight|bias)", r"box.head.fc2.\1", None),
        (r"roi_heads\.box_predictor\.cls_score\.(weight|bias)", r"box.head.cls_score.\1", None),
        # (4 (K + 1), D) -> (4 K, D): torchvision's label j (1..K) at rows 4j..4j+3 becomes our
        # label j - 1 at rows 4(j - 1)..4(j - 1)+3.
        (r"roi_heads\.box_predictor\.bbox_pred\.(weight|bias)", r"box.head.bbox_pred.\1", _drop_rows(4)),
        (r"roi_heads\.mask_head\.(\d+)\.0\.(weight|bias)", r"mask.head.convs.\1.\2", None),
        (r"roi_heads\.mask_predictor\.conv5_mask\.(weight|bias)", r"mask.head.deconv.\1", None),
        # (K + 1, 256, 1, 1) -> (K, 256, 1, 1)
        (r"roi_heads\.mask_predictor\.mask_fcn_logits\.(weight|bias)", r"mask.head.predictor.\1",
         _drop_rows(1)),
        (r"roi_heads\.keypoint_predictor\.kps_score_lowres\.(weight|bias)", r"keypoint.head.predictor.\1",
         None),
    ]
]
# Old layout's mask convs are numbered from 1.
_OLD_MASK_FCN = re.compile(r"roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)")
# Keypoint convs sit at the even places of a Sequential of (conv, ReLU) pairs.
_KEYPOINT_CONV = re.compile(r"roi_heads\.keypoint_head\.(\d*[02468])\.(weight|bias)")

# Batch-norm step counters: meaningless for frozen batch norm.
_IGNORED_SUFFIXES = (".num_batches_tracked",)
_KEYPOINT_PREFIXES = ("roi_heads.keypoint_head.", "roi_heads.keypoint_predictor.")
# maskrcnn_resnet50_fpn_v2: conv box head and norm layers in FPN and heads.
_V2_MARKERS = ("roi_heads.box_head.0.0.weight", "backbone.fpn.inner_blocks.0.1.weight")


def matches(keys: Iterable[str]) -> bool:
    """Whether these state-dict keys look like a torchvision detection model."""
    keys = set(keys)
    return "backbone.body.conv1.weight" in keys and any(
        k.startswith(("roi_heads.", "rpn.head.cls_logits.")) for k in keys
    )


def _rename(name: str) -> tuple[str, Transform | None]:
    m = _OLD_MASK_FCN.fullmatch(name)
    if m:
        return f"mask.head.convs.{int(m.group(1)) - 1}.{m.group(2)}", None
    m = _KEYPOINT_CONV.fullmatch(name)
    if m:
        return f"keypoint.head.convs.{int(m.group(1)) // 2}.{m.group(2)}", None
    for pattern, template, transform in _RULES:
        if pattern.fullmatch(name):
            return pattern.sub(template, name), transform
    # Unknown names pass through, so that validation reports them as unexpected.
    return name, None


def convert(state: Mapping[str, Any]) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Our config and state dict from a torchvision detection state dict.

    The config starts from ``torchvision_r50_fpn()`` (``torchvision_keypoint_r50_fpn()``
    for keypoint R-CNN); depth, ResNeXt width, class count, mask head presence
    and keypoint count come from the tensors. Raises ValueError for v2 models.
    """
    if any(k in state for k in _V2_MARKERS):
        raise ValueError(
            "this is a torchvision *_fpn_v2 checkpoint (conv box head, normalised FPN and heads), "
            "which is not supported: only the original R-CNN FPN architecture is"
        )
    out = rename_state(state, _rename, lambda name: name.endswith(_IGNORED_SUFFIXES))
    keypoints = any(k.startswith(_KEYPOINT_PREFIXES) for k in state)
    base = torchvision_keypoint_r50_fpn() if keypoints else torchvision_r50_fpn()
    return infer_config(base, out), out

