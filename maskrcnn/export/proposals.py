"""RPN proposal selection over a whole batch at once, with every size fixed in advance.

``RPN.propose`` loops over images and keeps ``min(k, anchors)`` per level; a
graph for any batch and image size cannot. Here each level's logits are
padded with -inf so that top-k always takes a fixed ``k``; boxes that the
eager code would drop (padding, non-finite, too small) keep their place with
a score of -inf; NMS runs once for every (image, level) group; and the best
``post_nms`` of each image come out padded, with a mask of the real ones.
The result is the eager function's: the same boxes and scores in the same
order, then padding.

Shapes: ``logits (N, T)``, ``deltas (N, T, 4)``, anchors per level
``(T_l, 4)``, ``image_sizes (N, 2)`` int64 ``(h, w)`` -> ``boxes (N, K, 4)``,
``scores (N, K)`` (objectness probabilities, 0 for padding), ``valid (N, K)``
with ``K = min(post_nms, levels * pre_nms)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.boxes import BoxCoder
from .onnx_ops import export_ops

# Kept by NMS: scores above this, which every finite logit is and -inf is not.
_LOWEST = -3.0e38


def select_proposals(
    logits: Tensor,
    deltas: Tensor,
    anchors: list[Tensor],
    image_sizes: Tensor,
    *,
    box_coder: BoxCoder,
    pre_nms: int,
    post_nms: int,
    nms_thresh: float,
    min_box_size: float,
    min_box_size_strict: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    n = logits.shape[0]
    ops = export_ops()
    size = image_sizes.to(logits.dtype)[:, None, :]  # (N, 1, 2): h, w
    level_boxes, level_scores, start = [], [], 0
    for a in anchors:
        count = a.shape[0]
        scores = torch.cat((logits[:, start : start + count].detach(),
                            logits.new_full((n, pre_nms), float("-inf"))), dim=1)
        top = scores.topk(pre_nms, dim=1)  # (N, k): the level's best, then padding
        local = top.indices.clamp(max=count - 1)  # padding points at a real anchor; its score is -inf
        picked = deltas[:, start : start + count].detach().gather(1, local[..., None].expand(-1, -1, 4))
        boxes = box_coder.decode(picked.reshape(-1, 4), a[local].reshape(-1, 4)).reshape(n, pre_nms, 4)
        s = top.values
        keep = torch.isfinite(boxes).all(dim=2) & torch.isfinite(s)
        boxes = torch.where(keep[..., None], boxes, 0.0)
        # Clip to each image: x to [0, w], y to [0, h].
        upper = torch.cat((size.flip(-1), size.flip(-1)), dim=-1)  # (N, 1, 4): w, h, w, h
        boxes = torch.minimum(boxes.clamp(min=0), upper)
        sides = boxes[..., 2:] - boxes[..., :2]
        large = (sides > min_box_size) if min_box_size_strict else (sides >= min_box_size)
        keep &= large.all(dim=2)
        level_boxes.append(boxes)
        level_scores.append(torch.where(keep, s, float("-inf")))
        start += count
    levels = len(anchors)
    boxes = torch.stack(level_boxes, dim=1)  # (N, L, k, 4)
    scores = torch.stack(level_scores, dim=1)  # (N, L, k)
    kept = ops.nms_grouped(boxes.reshape(n * levels, pre_nms, 4), scores.reshape(n * levels, pre_nms),
                           nms_thresh, _LOWEST, pre_nms)  # (M, 2): group, index
    flat = scores.reshape(n * levels, pre_nms)
    survivors = torch.full_like(flat, float("-inf")).index_put(
        (kept[:, 0], kept[:, 1]), flat[kept[:, 0], kept[:, 1]])
    k = min(post_nms, levels * pre_nms)
    # By decreasing score over all levels. Exactly equal scores may come out in another order
    # than the eager NMS's (candidate order): ONNX TopK puts lower indices first, PyTorch's
    # topk promises no order, and a stable sort does not export.
    values, order = survivors.reshape(n, levels * pre_nms).topk(k, dim=1)
    out_boxes = boxes.reshape(n, levels * pre_nms, 4).gather(1, order[..., None].expand(-1, -1, 4))
    valid = values > float("-inf")
    return out_boxes, torch.where(valid, torch.sigmoid(values), 0.0), valid

