"""Greedy non-maximum suppression, vectorised.

Greedy NMS visits boxes by decreasing score and keeps a box unless a kept,
higher-scoring box overlaps it with IoU above the threshold. The decision for
box ``i`` depends only on decisions for boxes before it, so the kept set is
the unique fixed point of

    keep[i] = not any(keep[j] and iou[j, i] > t for j < i)

We find it by iterating that map from "keep everything" on the sparse list of
overlapping pairs: after ``n`` rounds the first ``n`` decisions are final, and
in practice it settles after a few rounds (the length of the longest chain of
boxes that suppress one another). Each round is a single scatter over the
pairs; no Python loop runs per box.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .boxes import box_iou

# Rows of the IoU matrix computed at once, to bound memory (rows x N floats).
_IOU_ROWS = 256
# Above this many boxes, batched NMS works group by group rather than on all pairs.
_ALL_PAIRS_LIMIT = 4096


def _overlapping_pairs(boxes: Tensor, iou_threshold: float, groups: Tensor | None) -> tuple[Tensor, Tensor]:
    """Pairs ``(i, j)`` with ``i < j`` (score order) and IoU above the threshold."""
    n = boxes.shape[0]
    cols = torch.arange(n, device=boxes.device)
    src, dst = [], []
    for start in range(0, n, _IOU_ROWS):
        rows = cols[start : start + _IOU_ROWS]
        over = box_iou(boxes[rows], boxes) > iou_threshold
        over &= cols[None, :] > rows[:, None]
        if groups is not None:
            over &= groups[rows][:, None] == groups[None, :]
        i, j = over.nonzero(as_tuple=True)
        src.append(rows[i])
        dst.append(j)
    return torch.cat(src), torch.cat(dst)


def _greedy_keep(n: int, src: Tensor, dst: Tensor, device: torch.device) -> Tensor:
    """Fixed point of the greedy rule on the pair list; bool mask ``(n,)``."""
    keep = torch.ones(n, dtype=torch.bool, device=device)
    for _ in range(n):
        suppressed = torch.zeros(n, dtype=torch.bool, device=device)
        suppressed[dst[keep[src]]] = True
        new_keep = ~suppressed
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the kept boxes, by decreasing score. ``(R, 4), (R,) -> (K,)``."""
    return _nms(boxes, scores, iou_threshold, None)


def _nms(boxes: Tensor, scores: Tensor, iou_threshold: float, groups: Tensor | None) -> Tensor:
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order].float()
    groups = None if groups is None else groups[order]
    src, dst = _overlapping_pairs(boxes, iou_threshold, groups)
    keep = _greedy_keep(boxes.shape[0], src, dst, boxes.device)
    return order[keep]


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group (class, FPN level) independently.

    Returns indices of the kept boxes of all groups, by decreasing score.
    """
    if boxes.shape[0] <= _ALL_PAIRS_LIMIT:
        return _nms(boxes, scores, iou_threshold, groups)
    kept = []
    for g in torch.unique(groups):
        idx = (groups == g).nonzero(as_tuple=True)[0]
        kept.append(idx[_nms(boxes[idx], scores[idx], iou_threshold, None)])
    # Index order first, so that equal scores come out as on the all-pairs path.
    keep = torch.cat(kept).sort().values
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]
