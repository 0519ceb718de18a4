"""Box head: two fully connected layers, a classifier and class-specific box regression.

The classifier has ``K + 1`` outputs (background at 0); the regressor predicts
4 deltas for each of the ``K`` foreground classes (Fast R-CNN). At inference
each RoI yields one candidate per class: its box decoded with that class's
deltas and clipped to the image, scored by the softmax probability. Low
scores are dropped, NMS runs per class, and the best ``detections_per_image``
are kept.

Shapes: ``(R, C, P, P)`` -> logits ``(R, K + 1)``, deltas ``(R, 4K)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..ops.boxes import BoxCoder, clip_boxes, large_enough
from ..ops.nms import batched_nms
from ..structures import Detections


class BoxHead(nn.Module):
    """``flatten -> fc1 -> ReLU -> fc2 -> ReLU -> (cls_score, bbox_pred)``."""

    def __init__(self, *, in_channels: int, resolution: int, fc_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * resolution * resolution, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, 4 * num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.relu_(self.fc1(x.flatten(1)))
        x = torch.relu_(self.fc2(x))
        return self.cls_score(x), self.bbox_pred(x)


def detect_boxes(
    class_logits: Tensor,
    box_deltas: Tensor,
    proposals: list[Tensor],
    image_sizes: list[tuple[int, int]],
    *,
    box_coder: BoxCoder,
    score_thresh: float,
    nms_thresh: float,
    detections_per_image: int,
    min_box_size: float | None,
) -> list[Detections]:
    """Per-class detections of each image from the box head's outputs (boxes in network-input pixels)."""
    num_classes = box_deltas.shape[1] // 4
    boxes_all = box_coder.decode(box_deltas, torch.cat(proposals))  # (R, 4K)
    scores_all = F.softmax(class_logits, dim=1)[:, 1:]  # (R, K): drop background
    result = []
    start = 0
    for props, size in zip(proposals, image_sizes, strict=True):
        stop = start + len(props)
        boxes, scores = boxes_all[start:stop], scores_all[start:stop]
        start = stop
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
        boxes, scores = boxes[finite], scores[finite]
        # (R, 4K) -> (R, K, 4); one candidate per RoI and class, RoI-major.
        boxes = clip_boxes(boxes.reshape(-1, num_classes, 4), size)
        labels = torch.arange(num_classes, device=boxes.device).expand_as(scores)
        keep = scores > score_thresh
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        if min_box_size is not None:
            keep = large_enough(boxes, min_box_size)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_image]
        result.append(Detections(boxes[keep], scores[keep], labels[keep]))
    return result
