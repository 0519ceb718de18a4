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

# Rows of the IoU matrix computed at once, to bound memory (rows x columns floats).
_IOU_ROWS = 256


def _overlapping_pairs(
    boxes: Tensor, iou_threshold: float, group_end: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Pairs ``(i, j)``, ``i < j`` in the given order, of the same group and IoU above the threshold.

    Boxes come sorted by group, so row ``i`` only needs columns ``i + 1`` up to
    the end of its group (``group_end[i]``, exclusive); without groups, up to ``n``.
    """
    n = boxes.shape[0]
    src, dst = [], []
    for start in range(0, n, _IOU_ROWS):
        stop = min(start + _IOU_ROWS, n)
        end = n if group_end is None else int(group_end[stop - 1])
        rows = torch.arange(start, stop, device=boxes.device)
        cols = torch.arange(start, end, device=boxes.device)
        over = box_iou(boxes[start:stop], boxes[start:end]) > iou_threshold
        over &= cols[None, :] > rows[:, None]
        if group_end is not None:
            over &= cols[None, :] < group_end[start:stop, None]
        i, j = over.nonzero(as_tuple=True)
        src.append(rows[i])
        dst.append(cols[j])
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


def _by_score(index: Tensor, scores: Tensor) -> Tensor:
    """``index`` sorted by decreasing score, equal scores by increasing index."""
    index = index.sort().values
    return index[torch.sort(scores[index], descending=True, stable=True).indices]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the kept boxes, by decreasing score. ``(R, 4), (R,) -> (K,)``."""
    return batched_nms(boxes, scores, None, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor | None, iou_threshold: float) -> Tensor:
    """NMS within each group (class, FPN level) independently; ``groups=None`` is one group.

    Returns indices of the kept boxes of all groups, by decreasing score
    (equal scores by increasing index).
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = _by_score(torch.arange(n, device=boxes.device), scores)
    group_end = None
    if groups is not None:
        # Group-major, score order within each group.
        order = order[torch.sort(groups[order], stable=True).indices]
        sorted_groups = groups[order]
        group_end = torch.searchsorted(sorted_groups, sorted_groups, right=True)
    src, dst = _overlapping_pairs(boxes[order].float(), iou_threshold, group_end)
    keep = _greedy_keep(n, src, dst, boxes.device)
    return _by_score(order[keep], scores)
