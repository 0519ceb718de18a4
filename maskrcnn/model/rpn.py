"""Region Proposal Network (Faster R-CNN, Section 3.1) over FPN levels.

A shared head (3x3 conv + ReLU, then 1x1 convs) predicts, at every location
of every level, an objectness logit and 4 box deltas for each of the ``A``
anchors. Proposals are selected per image: the top-k anchors of each level
by objectness, decoded, clipped to the image, small boxes dropped, NMS within
each level, then the best ``post_nms_topk`` over all levels.

Training (``rpn_loss``): anchors are matched to ground truth (IoU >= 0.7
foreground, < 0.3 background, and each object's best anchors), 256 anchors
per image are sampled with at most half foreground, and the objectness (binary
cross-entropy) and box (smooth L1) losses are averaged over the samples.

Shapes: per level ``objectness (N, A, H, W)``, ``deltas (N, 4A, H, W)``;
flattened ``(N, sum_l H_l W_l A)`` and ``(N, sum_l H_l W_l A, 4)`` in the
anchors' order (location-major, then anchor).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..dist import global_normaliser
from ..ops.boxes import BoxCoder, clip_boxes, large_enough
from ..ops.matching import match, sample_balanced
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
        for conv in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

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

    def forward(
        self, features: list[Tensor], padded_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """-> objectness logits ``(N, T)``, deltas ``(N, T, 4)``, anchors per level.

        ``padded_size`` is the ``(H, W)`` of the padded image batch.
        """
        logits, deltas = self.head(features)
        shapes = [(f.shape[-2], f.shape[-1]) for f in features]
        anchors = self.anchor_generator(shapes, padded_size, features[0].device)
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


def rpn_loss(
    logits: Tensor,
    deltas: Tensor,
    anchors: list[Tensor],
    gt_boxes: list[Tensor],
    crowd_boxes: list[Tensor],
    generators: list[torch.Generator | None],
    *,
    box_coder: BoxCoder,
    fg_iou_thresh: float,
    bg_iou_thresh: float,
    batch_size_per_image: int,
    positive_fraction: float,
    smooth_l1_beta: float,
    crowd_ioa_thresh: float,
) -> dict[str, Tensor]:
    """Objectness and box losses over the sampled anchors of every image.

    Both are normalised by the number of sampled anchors (positives and
    negatives), so that the box loss weighs each positive anchor the same
    whatever the mix, as in Faster R-CNN's Eq. 1 with lambda balancing.
    """
    all_anchors = torch.cat(anchors)
    labels, targets, sampled_pos, sampled_neg = [], [], [], []
    offset = 0
    for boxes, crowd, generator in zip(gt_boxes, crowd_boxes, generators, strict=True):
        m = match(all_anchors, boxes, fg_thresh=fg_iou_thresh, bg_thresh=bg_iou_thresh,
                  allow_low_quality=True, crowd_boxes=crowd, crowd_ioa_thresh=crowd_ioa_thresh)
        pos, neg = sample_balanced(m.label, batch_size=batch_size_per_image,
                                   positive_fraction=positive_fraction, generator=generator)
        if boxes.shape[0] > 0:
            targets.append(box_coder.encode(all_anchors[pos], boxes[m.index[pos]]))
        else:
            targets.append(all_anchors.new_zeros((0, 4)))
        sampled_pos.append(pos + offset)
        sampled_neg.append(neg + offset)
        offset += all_anchors.shape[0]
        labels.append(m.label)
    pos = torch.cat(sampled_pos)
    neg = torch.cat(sampled_neg)
    sampled = torch.cat((pos, neg))
    flat_logits = logits.reshape(-1)
    objectness_target = torch.cat((torch.ones_like(pos), torch.zeros_like(neg))).to(flat_logits.dtype)
    normaliser = global_normaliser(sampled.numel(), flat_logits.device)
    loss_objectness = F.binary_cross_entropy_with_logits(
        flat_logits[sampled], objectness_target, reduction="sum"
    ) / normaliser
    box = box_regression_loss(deltas.reshape(-1, 4)[pos], torch.cat(targets), smooth_l1_beta)
    return {"loss_rpn_objectness": loss_objectness, "loss_rpn_box": box / normaliser}


def box_regression_loss(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Summed smooth L1 (``beta > 0``) or L1 (``beta == 0``) over all coordinates; 0 when empty."""
    if beta > 0:
        return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")
    return F.l1_loss(pred, target, reduction="sum")
