"""Matching anchors or proposals to ground truth, and balanced sampling (Faster R-CNN, Section 3.1.2).

``match`` labels each of ``N`` candidates from its IoU with ``M`` ground-truth
boxes: foreground (1) at or above ``fg_thresh``, background (0) below
``bg_thresh``, ignored (-1) in between. With ``allow_low_quality``, each
ground-truth box also claims the candidates that overlap it most, even below
``fg_thresh``, so that every object gets at least one positive (the RPN's
rule; the box head does not use it). Background candidates lying mostly
inside an ``iscrowd`` region are ignored rather than taught as background.

``sample_balanced`` draws at most ``batch_size`` labelled candidates with at
most ``positive_fraction`` of them foreground. ``BalancedSampler`` holds one
stage's numbers (the RPN's, or the box head's) and does both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .boxes import box_area, box_iou

FOREGROUND = 1
BACKGROUND = 0
IGNORE = -1


@dataclass
class Match:
    """Per candidate: index of the matched ground truth (valid where foreground) and its label."""

    index: Tensor  # (N,) int64
    label: Tensor  # (N,) int64 in {1, 0, -1}


def _ioa(candidates: Tensor, regions: Tensor) -> Tensor:
    """Intersection over the candidate's area: ``(N, 4), (G, 4) -> (N, G)``."""
    lt = torch.maximum(candidates[:, None, :2], regions[None, :, :2])
    rb = torch.minimum(candidates[:, None, 2:], regions[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    return inter / box_area(candidates).clamp(min=1e-6)[:, None]


def match(
    candidates: Tensor,
    gt_boxes: Tensor,
    *,
    fg_thresh: float,
    bg_thresh: float,
    allow_low_quality: bool,
    crowd_boxes: Tensor | None = None,
    crowd_ioa_thresh: float = 0.7,
) -> Match:
    n = candidates.shape[0]
    device = candidates.device
    if gt_boxes.shape[0] == 0 or n == 0:
        index = torch.zeros(n, dtype=torch.int64, device=device)
        label = torch.full((n,), BACKGROUND, dtype=torch.int64, device=device)
    else:
        iou = box_iou(gt_boxes, candidates)  # (M, N)
        best, index = iou.max(dim=0)
        label = torch.full((n,), IGNORE, dtype=torch.int64, device=device)
        label[best >= fg_thresh] = FOREGROUND
        label[best < bg_thresh] = BACKGROUND
        if allow_low_quality:
            # Every candidate tied for the best IoU of some ground-truth box.
            best_per_gt = iou.max(dim=1, keepdim=True).values
            claimed = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=0)
            label[claimed] = FOREGROUND
    if crowd_boxes is not None and crowd_boxes.shape[0] > 0 and n > 0:
        in_crowd = _ioa(candidates, crowd_boxes).max(dim=1).values >= crowd_ioa_thresh
        label[(label == BACKGROUND) & in_crowd] = IGNORE
    return Match(index, label)


def sample_balanced(
    label: Tensor, *, batch_size: int, positive_fraction: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Indices of sampled foreground and background candidates."""
    positive = (label == FOREGROUND).nonzero(as_tuple=True)[0]
    negative = (label == BACKGROUND).nonzero(as_tuple=True)[0]
    num_pos = min(int(batch_size * positive_fraction), positive.numel())
    num_neg = min(batch_size - num_pos, negative.numel())
    pick_pos = torch.randperm(positive.numel(), generator=generator, device="cpu")[:num_pos]
    pick_neg = torch.randperm(negative.numel(), generator=generator, device="cpu")[:num_neg]
    return positive[pick_pos.to(label.device)], negative[pick_neg.to(label.device)]


@dataclass(frozen=True)
class BalancedSampler:
    """One stage's training-target rule: ``match`` candidates, then ``sample_balanced`` them.

    The RPN and the box head each hold one, with their own numbers
    (``SamplerConfig`` in the config).
    """

    fg_iou_thresh: float
    bg_iou_thresh: float
    batch_size_per_image: int
    positive_fraction: float
    allow_low_quality_matches: bool = False
    crowd_ioa_thresh: float = 0.7

    def __call__(
        self,
        candidates: Tensor,
        gt_boxes: Tensor,
        crowd_boxes: Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[Match, Tensor, Tensor]:
        """-> the match of every candidate, and the sampled foreground and background indices."""
        m = match(candidates, gt_boxes, fg_thresh=self.fg_iou_thresh, bg_thresh=self.bg_iou_thresh,
                  allow_low_quality=self.allow_low_quality_matches, crowd_boxes=crowd_boxes,
                  crowd_ioa_thresh=self.crowd_ioa_thresh)
        pos, neg = sample_balanced(m.label, batch_size=self.batch_size_per_image,
                                   positive_fraction=self.positive_fraction, generator=generator)
        return m, pos, neg
