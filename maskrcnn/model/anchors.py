"""Anchors: sizes per feature level (one per FPN level, all five for C4), several aspect ratios.

A cell anchor of size ``s`` and aspect ratio ``a = h / w`` has area ``s^2``:
``w = s / sqrt(a)``, ``h = s * sqrt(a)``, centred on 0. It is placed at
``((x + offset) * stride, (y + offset) * stride)`` for every location of the
level's feature map. Anchors are ordered location-major (row, column), then
by aspect ratio, which matches the RPN head's ``(N, A, H, W)`` outputs after
``permute(0, 2, 3, 1)``.

Shapes: per level ``(H_l * W_l * A, 4)``.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import Tensor, nn

from ..config import StrideRule


def cell_anchors(size: float, aspect_ratios: tuple[float, ...], round_to_int: bool) -> Tensor:
    """``(A, 4)`` anchors of one size centred at the origin."""
    ratios = torch.tensor(aspect_ratios, dtype=torch.float32)
    h_ratio = torch.sqrt(ratios)
    w_ratio = 1.0 / h_ratio
    ws = w_ratio * size
    hs = h_ratio * size
    anchors = torch.stack((-ws, -hs, ws, hs), dim=1) / 2
    # torchvision rounds the corners to whole pixels; Detectron2 keeps them exact.
    return anchors.round() if round_to_int else anchors


class AnchorGenerator(nn.Module):
    """Anchors of every level for a padded batch of a given size."""

    def __init__(
        self,
        *,
        sizes: tuple[tuple[float, ...], ...],
        aspect_ratios: tuple[float, ...],
        strides: tuple[int, ...],
        round_to_int: bool,
        offset: float = 0.0,
        stride_rule: StrideRule = "fixed",
    ) -> None:
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"{len(sizes)} anchor sizes for {len(strides)} feature levels")
        if stride_rule not in get_args(StrideRule):
            raise ValueError(f"stride_rule {stride_rule!r} is not one of {get_args(StrideRule)}")
        self.strides = strides
        self.offset = offset
        self.stride_rule = stride_rule
        counts = {len(level) for level in sizes}
        if len(counts) != 1:
            raise ValueError(f"every level needs as many anchor sizes; got {sizes}")
        self.num_anchors = counts.pop() * len(aspect_ratios)
        # Size-major, then aspect ratio, at each location.
        self.cells = [
            torch.cat([cell_anchors(s, aspect_ratios, round_to_int) for s in level]) for level in sizes
        ]

    def level_strides(
        self, feature_shapes: list[tuple[int, int]], padded_size: tuple[int, int]
    ) -> list[tuple[int, int]]:
        """``(stride_y, stride_x)`` of each level for a padded batch of ``padded_size``.

        "fixed" gives the nominal strides. "torchvision" divides the padded size
        by the feature size, per axis, rounding down: equal to the nominal
        stride wherever the feature map is exactly the padded size over it, but
        not at P6 when the padded side is an odd multiple of 32 (P6 then has
        ``(side / 32 + 1) / 2`` cells).
        """
        match self.stride_rule:
            case "fixed":
                return [(s, s) for s in self.strides]
            case "torchvision":
                return [(padded_size[0] // h, padded_size[1] // w) for h, w in feature_shapes]
            case _:
                raise ValueError(f"unknown stride_rule {self.stride_rule!r}")

    def forward(
        self, feature_shapes: list[tuple[int, int]], padded_size: tuple[int, int], device: torch.device
    ) -> list[Tensor]:
        """``(H_l * W_l * A, 4)`` anchors per level for feature maps of these ``(H_l, W_l)``."""
        anchors = []
        strides = self.level_strides(feature_shapes, padded_size)
        for (h, w), (stride_y, stride_x), cell in zip(feature_shapes, strides, self.cells, strict=True):
            ys = (torch.arange(h, dtype=torch.float32, device=device) + self.offset) * stride_y
            xs = (torch.arange(w, dtype=torch.float32, device=device) + self.offset) * stride_x
            y, x = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack((x, y, x, y), dim=-1).reshape(-1, 1, 4)
            # (H*W, 1, 4) + (1, A, 4) -> (H*W*A, 4)
            anchors.append((shifts + cell.to(device)[None]).reshape(-1, 4))
        return anchors
