"""Multi-level RoI feature extraction: each RoI is pooled from the FPN level that suits its size.

A box of ``sqrt(wh) = 224`` pixels reads level 4 (stride 16); each halving of
its size moves one level finer (FPN paper, Eq. 1). RoIs are grouped by level,
pooled with RoIAlign (or the ablation's RoIPool / RoIWarp), and put back in
their original order. ``kind`` picks the paper's ablation alternatives
(Table 2c): ``roi_pool`` (Fast R-CNN) or ``roi_warp`` (quantised RoI,
bilinear sampling).

Shapes: features ``[(N, C, H_l, W_l)]`` for P2..P5, boxes ``[(R_i, 4)]`` per
image -> ``(sum R_i, C, P, P)``.
"""

from __future__ import annotations

import math
from typing import get_args

import torch
from torch import Tensor, nn

from ..config import PoolerKind
from ..ops.roi_align import roi_align
from ..ops.roi_pool import roi_pool, roi_warp


class MultiLevelRoIPooler(nn.Module):
    """Assigns RoIs to levels and pools each group at that level's stride."""

    def __init__(
        self,
        *,
        strides: tuple[int, ...],
        resolution: int,
        sampling_ratio: int,
        aligned: bool,
        canonical_box_size: float,
        canonical_level: int,
        level_eps: float,
        kind: PoolerKind = "roi_align",
    ) -> None:
        super().__init__()
        if kind not in get_args(PoolerKind):
            raise ValueError(f"unknown pooler kind {kind!r}: expected one of {get_args(PoolerKind)}")
        self.kind = kind
        self.strides = strides
        self.resolution = resolution
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level
        self.level_eps = level_eps

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        features = features[: len(self.strides)]
        batch_index = torch.cat(
            [torch.full((len(b), 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)]
        )
        rois = torch.cat((batch_index, torch.cat(boxes)), dim=1)  # (R, 5)
        n, c = features[0].shape[:2]
        if rois.shape[0] == 0:
            return features[0].new_zeros((0, c, self.resolution, self.resolution))
        min_level, max_level = level_range(self.strides)
        levels = level_of_boxes(
            rois[:, 1:], min_level=min_level, max_level=max_level,
            canonical_size=self.canonical_box_size, canonical_level=self.canonical_level,
            eps=self.level_eps,
        )
        # Pool each level's RoIs, concatenate in level order, and gather back into
        # the RoIs' order: one copy forward and one scatter backward, where writing
        # into a zero output level by level copies the whole output per level.
        order, pooled = [], []
        for level, (feature, stride) in enumerate(zip(features, self.strides, strict=True)):
            idx = (levels == level).nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            order.append(idx)
            pooled.append(self._pool(feature, rois[idx], 1.0 / stride))
        if len(pooled) == 1:
            return pooled[0]  # one level: already in the RoIs' order
        order = torch.cat(order)
        position = torch.empty_like(order)
        position[order] = torch.arange(order.numel(), device=order.device)
        return torch.cat(pooled).index_select(0, position)

    def _pool(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        match self.kind:
            case "roi_align":
                return roi_align(feature, rois, self.resolution, scale, self.sampling_ratio, self.aligned)
            case "roi_pool":
                return roi_pool(feature, rois, self.resolution, scale)
            case "roi_warp":
                return roi_warp(feature, rois, self.resolution, scale, self.sampling_ratio)
            case _:
                raise ValueError(f"unknown pooler kind {self.kind!r}: expected one of {get_args(PoolerKind)}")


def level_of_boxes(
    boxes: Tensor, *, min_level: int, max_level: int, canonical_size: float, canonical_level: int,
    eps: float,
) -> Tensor:
    """FPN level index (0-based from ``min_level``) of each box, Eq. 1 of the FPN paper.

    ``k = floor(k0 + log2(sqrt(wh) / 224))``, clamped to the available levels:
    a 224-pixel box maps to level 4, a box half that size one level lower.
    """
    size = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    level = torch.floor(canonical_level + torch.log2(size / canonical_size) + eps)
    return level.clamp(min=min_level, max=max_level).long() - min_level


def level_range(strides: tuple[int, ...]) -> tuple[int, int]:
    """``(min_level, max_level)`` for feature maps of these strides (stride 4 is level 2)."""
    return int(math.log2(strides[0])), int(math.log2(strides[-1]))
