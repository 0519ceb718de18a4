"""Our RoIAlign and NMS as operators that export to their ONNX counterparts.

In PyTorch each operator runs our own implementation (``ops/roi_align.py``,
``ops/nms.py``); in the exported graph it becomes one ONNX node with the same
semantics, which ONNX Runtime and OpenVINO implement natively:

- ``roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)``
  -> ONNX ``RoiAlign`` (opset 16): ``coordinate_transformation_mode`` is
  ``half_pixel`` when aligned, else ``output_half_pixel`` (RoIs then count at
  least one feature pixel wide, as torchvision's); ``sampling_ratio`` 0 is
  adaptive, ``ceil(roi / output_size)`` samples per bin. Every attribute is
  written out: OpenVINO reads a missing ``sampling_ratio`` as 1 and ONNX
  Runtime a missing mode as ``output_half_pixel``, against the spec's defaults.
- ``nms_grouped(boxes (G, N, 4), scores (G, N), iou_threshold, score_threshold,
  max_per_group) -> (M, 2)`` ``[group, index]`` -> ONNX ``NonMaxSuppression``
  with one "batch" per group. Within a group: boxes above ``score_threshold``
  (strictly) by decreasing score, equal scores by increasing index, a box
  suppressed by a kept one when their IoU is above ``iou_threshold``; at most
  ``max_per_group`` kept; groups in order.

The operators are registered with ``torch.library`` when ``export_ops()`` is
first called (the exporter calls it), never at import.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from ..ops.nms import nms
from ..ops.roi_align import roi_align as _roi_align

# The ONNX opset of the exported graphs: RoiAlign-16 has the coordinate
# transformation modes; 18 is what torch's exporter library is written for.
OPSET = 18


def _roi_align_eager(
    features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    return _roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned).contiguous()


def _nms_grouped_eager(
    boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float, max_per_group: int
) -> Tensor:
    kept = []
    for g in range(boxes.shape[0]):
        above = (scores[g] > score_threshold).nonzero()[:, 0]
        keep = above[nms(boxes[g, above], scores[g, above], iou_threshold)][:max_per_group]
        kept.append(torch.stack((torch.full_like(keep, g), keep), dim=1))
    if not kept:
        return torch.zeros((0, 2), dtype=torch.int64, device=boxes.device)
    return torch.cat(kept)


@functools.cache
def export_ops() -> SimpleNamespace:
    """The exportable operators and their ONNX translations (registered once, on first use).

    Returns ``roi_align`` and ``nms_grouped`` (call them like the eager
    functions) and ``translations``, the ``custom_translation_table`` for
    ``torch.onnx.export``.
    """
    from onnxscript import INT64
    from onnxscript import opset18 as op

    @torch.library.custom_op("maskrcnn::roi_align", mutates_args=())
    def roi_align(
        features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int,
        aligned: bool,
    ) -> Tensor:
        return _roi_align_eager(features, rois, output_size, spatial_scale, sampling_ratio, aligned)

    @roi_align.register_fake
    def _(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int,
          aligned: bool) -> Tensor:
        return features.new_empty((rois.shape[0], features.shape[1], output_size, output_size))

    @torch.library.custom_op("maskrcnn::nms_grouped", mutates_args=())
    def nms_grouped(
        boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float, max_per_group: int
    ) -> Tensor:
        return _nms_grouped_eager(boxes, scores, iou_threshold, score_threshold, max_per_group)

    @nms_grouped.register_fake
    def _(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float,
          max_per_group: int) -> Tensor:
        count = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((count, 2), dtype=torch.int64)

    def roi_align_onnx(
        features: Any, rois: Any, output_size: int, spatial_scale: float, sampling_ratio: int, aligned: bool
    ) -> Any:
        batch_index = op.Cast(op.Squeeze(op.Slice(rois, [0], [1], [1]), [1]), to=INT64.dtype)
        boxes = op.Slice(rois, [1], [5], [1])
        return op.RoiAlign(
            features, boxes, batch_index,
            coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
            mode="avg", output_height=output_size, output_width=output_size,
            sampling_ratio=sampling_ratio, spatial_scale=spatial_scale,
        )

    def nms_grouped_onnx(
        boxes: Any, scores: Any, iou_threshold: float, score_threshold: float, max_per_group: int
    ) -> Any:
        # ONNX boxes are any two diagonal corners, and IoU is the same with x and y swapped.
        selected = op.NonMaxSuppression(
            boxes, op.Unsqueeze(scores, [1]),
            op.Constant(value_ints=[max_per_group]),
            op.Constant(value_floats=[iou_threshold]),
            op.Constant(value_floats=[score_threshold]),
            center_point_box=0,
        )  # (M, 3): group, class 0, index
        return op.Concat(op.Slice(selected, [0], [1], [1]), op.Slice(selected, [2], [3], [1]), axis=1)

    return SimpleNamespace(
        roi_align=roi_align,
        nms_grouped=nms_grouped,
        translations={
            torch.ops.maskrcnn.roi_align.default: roi_align_onnx,
            torch.ops.maskrcnn.nms_grouped.default: nms_grouped_onnx,
        },
    )
