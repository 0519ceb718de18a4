"""Region Proposal Network (Faster R-CNN, Section 3.1) over FPN levels.

A shared head (3x3 conv + ReLU, then 1x1 convs) predicts, at every location
of every level, an objectness logit and 4 box deltas for each of the ``A``
anchors. Proposals are selected per image: the top-k anchors of each level
by objectness, decoded, clipped to the image, small boxes dropped, NMS within
each level, then the best ``post_nms_topk`` over all levels.

Shapes: per level ``objectness (N, A, H, W)``, ``deltas (N, 4A, H, W)``;
flattened ``(N, sum_l H_l W_l A)`` and ``(N, sum_l H_l W_l A, 4)`` in the
anchors' order (location-major, then anchor).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.boxes import BoxCoder, clip_boxes, large_enough
from ..ops.nms import batched_nms
from ..structures import Proposals
from .anchors import AnchorGenerator


class RPNHead(nn.Module):
    """3x3 conv shared by all levels, then objectness and box-delta 1x1 convs."""

    def __init__(self, *, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, 4 * num_anchors, 1)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """-> objectness ``(N, sum HWA)``, deltas ``(N, sum HWA, 4)``."""
        logits, deltas = [], []
        for x in features:
            t = torch.relu_(self.conv(x))
            o, d = self.objectness(t), self.deltas(t)
            n, a, h, w = o.shape
            # (N, A, H, W) -> (N, H, W, A) -> (N, H*W*A)
            logits.append(o.permute(0, 2, 3, 1).reshape(n, -1))
            # (N, A*4, H, W) -> (N, A, 4, H, W) -> (N, H, W, A, 4) -> (N, H*W*A, 4)
            deltas.append(d.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


class RPN(nn.Module):
    """Head, anchors and proposal selection."""

    def __init__(
        self,
        *,
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        box_coder: BoxCoder,
        nms_thresh: float,
        min_box_size: float,
        min_box_size_strict: bool,
    ) -> None:
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder
        self.nms_thresh = nms_thresh
        self.min_box_size = min_box_size
        self.min_box_size_strict = min_box_size_strict

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """-> objectness logits ``(N, T)``, deltas ``(N, T, 4)``, anchors per level."""
        logits, deltas = self.head(features)
        shapes = [tuple(f.shape[-2:]) for f in features]
        anchors = self.anchor_generator(shapes, features[0].device)
        return logits, deltas, anchors

    def propose(
        self,
        logits: Tensor,
        deltas: Tensor,
        anchors: list[Tensor],
        image_sizes: list[tuple[int, int]],
        *,
        pre_nms_topk: int,
        post_nms_topk: int,
    ) -> list[Proposals]:
        """Select proposals from the head's outputs (no gradient flows through them)."""
        logits = logits.detach()
        deltas = deltas.detach()
        n = logits.shape[0]
        # Top-k per level, for all images at once.
        picked, levels, start = [], [], 0
        for level, a in enumerate(anchors):
            count = a.shape[0]
            k = min(pre_nms_topk, count)
            top = logits[:, start : start + count].topk(k, dim=1).indices + start
            picked.append(top)
            levels.append(torch.full((k,), level, dtype=torch.int64, device=logits.device))
            start += count
        index = torch.cat(picked, dim=1)  # (N, sum_l k_l)
        level = torch.cat(levels)
        all_anchors = torch.cat(anchors)
        scores = logits.gather(1, index)
        result = []
        for i in range(n):
            boxes = self.box_coder.decode(deltas[i, index[i]], all_anchors[index[i]])
            s, lvl = scores[i], level
            finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(s)
            boxes, s, lvl = boxes[finite], s[finite], lvl[finite]
            boxes = clip_boxes(boxes, image_sizes[i])
            keep = large_enough(boxes, self.min_box_size, self.min_box_size_strict)
            boxes, s, lvl = boxes[keep], s[keep], lvl[keep]
            keep = batched_nms(boxes, s, lvl, self.nms_thresh)[:post_nms_topk]
            result.append(Proposals(boxes[keep], torch.sigmoid(s[keep])))
        return result
