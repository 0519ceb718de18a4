"""Box head: two fully connected layers, a classifier and class-specific box regression.

The classifier has ``K + 1`` outputs (background at 0); the regressor predicts
4 deltas for each of the ``K`` foreground classes (Fast R-CNN). At inference
each RoI yields one candidate per class: its box decoded with that class's
deltas and clipped to the image, scored by the softmax probability. Low
scores are dropped, NMS runs per class, and the best ``detections_per_image``
are kept.

Training (``sample_rois``, ``box_head_loss``): proposals and the ground-truth
boxes are matched at IoU 0.5, 512 RoIs per image are sampled with at most a
quarter foreground, and the loss is cross-entropy plus smooth L1 on the true
class's deltas.

``BoxBranch`` owns the branch's numbers: its pooler, the head, the coder, the
training sampler and the post-processing (score threshold, NMS, detection cap).

Shapes: ``(R, C, P, P)`` -> logits ``(R, K + 1)``, deltas ``(R, 4K)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..dist import global_normaliser
from ..ops.boxes import BoxCoder, box_regression_loss, clip_boxes, large_enough
from ..ops.matching import BalancedSampler
from ..ops.nms import batched_nms
from ..structures import Detections, Proposals, RoISamples, Targets
from .poolers import MultiLevelRoIPooler
from .precision import widened


class BoxHead(nn.Module):
    """``flatten -> fc1 -> ReLU -> fc2 -> ReLU -> (cls_score, bbox_pred)``.

    With ``num_fc=0`` (C4, after res5) the RoI features are averaged over
    space and go straight to the predictors.
    """

    def __init__(
        self, *, in_channels: int, resolution: int, fc_dim: int, num_classes: int, num_fc: int = 2
    ) -> None:
        super().__init__()
        if num_fc not in (0, 2):
            raise ValueError(f"the box head has 2 fully connected layers or none, not {num_fc}")
        self.num_fc = num_fc
        out = fc_dim if num_fc else in_channels
        if num_fc:
            self.fc1 = nn.Linear(in_channels * resolution * resolution, fc_dim)
            self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.cls_score = nn.Linear(out, num_classes + 1)
        self.bbox_pred = nn.Linear(out, 4 * num_classes)
        for fc in (self.fc1, self.fc2) if num_fc else ():
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
        # Small initial outputs: near-uniform class scores and near-zero deltas.
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.num_fc:
            x = torch.relu_(self.fc1(x.flatten(1)))
            x = torch.relu_(self.fc2(x))
        else:
            x = x.mean(dim=(2, 3))
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
    # float32 whatever the network's type: the softmax, decoding and NMS run in float32 (model.precision).
    class_logits, box_deltas = widened(class_logits), widened(box_deltas)
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


def sample_rois(
    proposals: list[Tensor], targets: list[Targets], *, sampler: BalancedSampler, box_coder: BoxCoder
) -> list[RoISamples]:
    """Match proposals (with the ground-truth boxes appended) and sample training RoIs per image.

    Appending the ground truth guarantees positives early in training, when
    the RPN's proposals are still poor.
    """
    samples = []
    for props, t in zip(proposals, targets, strict=True):
        boxes = torch.cat((props.detach(), t.boxes))
        m, pos, neg = sampler(boxes, t.boxes, t.crowd_boxes, t.generator())
        keep = torch.cat((pos, neg))
        classes = torch.zeros(keep.numel(), dtype=torch.int64, device=boxes.device)
        box_targets = boxes.new_zeros((keep.numel(), 4))
        if len(t) > 0:
            classes[: pos.numel()] = t.labels[m.index[pos]] + 1
            box_targets[: pos.numel()] = box_coder.encode(boxes[pos], t.boxes[m.index[pos]])
        samples.append(RoISamples(boxes[keep], classes, m.index[keep], box_targets))
    return samples


def box_head_loss(
    class_logits: Tensor, box_deltas: Tensor, samples: list[RoISamples], *, smooth_l1_beta: float
) -> dict[str, Tensor]:
    """Softmax cross-entropy over K + 1 classes, and box regression of the true class on positives.

    The box loss is summed over positives and divided by all sampled RoIs
    (Fast R-CNN's normalisation), so it does not grow when positives are rare.
    """
    classes = torch.cat([s.classes for s in samples])
    targets = torch.cat([s.box_targets for s in samples])
    normaliser = global_normaliser(classes.numel(), class_logits.device)
    loss_classifier = F.cross_entropy(class_logits, classes, reduction="sum") / normaliser
    pos = (classes > 0).nonzero(as_tuple=True)[0]
    # (R, 4K) -> (R, K, 4); the deltas of each positive's own class.
    deltas = box_deltas.view(box_deltas.shape[0], -1, 4)[pos, classes[pos] - 1]
    box = box_regression_loss(deltas, targets[pos], smooth_l1_beta)
    return {"loss_classifier": loss_classifier, "loss_box": box / normaliser}


class BoxBranch(nn.Module):
    """RoI pooling, the box head, its training samples and loss, and detection post-processing.

    The pooled features reach ``loss`` and ``predict`` from the detector, which
    runs this branch's ``pooler`` (and, in C4, res5 on top).
    """

    def __init__(
        self,
        *,
        pooler: MultiLevelRoIPooler,
        head: BoxHead,
        box_coder: BoxCoder,
        sampler: BalancedSampler,
        smooth_l1_beta: float,
        score_thresh: float,
        nms_thresh: float,
        detections_per_image: int,
        min_box_size: float | None,
    ) -> None:
        super().__init__()
        self.pooler = pooler
        self.head = head
        self.box_coder = box_coder
        self.sampler = sampler
        self.smooth_l1_beta = smooth_l1_beta
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.min_box_size = min_box_size

    def sample(self, proposals: list[Proposals], targets: list[Targets]) -> list[RoISamples]:
        """Training RoIs of every image: proposals plus ground truth, matched and sampled."""
        boxes = [p.boxes for p in proposals]
        return sample_rois(boxes, targets, sampler=self.sampler, box_coder=self.box_coder)

    def loss(self, features: Tensor, samples: list[RoISamples]) -> dict[str, Tensor]:
        """``loss_classifier`` and ``loss_box`` from the pooled features ``(S, C, P, P)`` of ``samples``."""
        class_logits, box_deltas = self.head(features)
        return box_head_loss(class_logits, box_deltas, samples, smooth_l1_beta=self.smooth_l1_beta)

    def predict(
        self,
        features: Tensor,
        proposals: list[Proposals],
        image_sizes: list[tuple[int, int]],
        *,
        score_threshold: float | None = None,
    ) -> list[Detections]:
        """Detections of every image (network-input pixels) from the pooled features of ``proposals``.

        ``score_threshold`` replaces the branch's own ``score_thresh`` for this call.
        """
        class_logits, box_deltas = self.head(features)
        return detect_boxes(
            class_logits, box_deltas, [p.boxes for p in proposals], image_sizes,
            box_coder=self.box_coder,
            score_thresh=self.score_thresh if score_threshold is None else score_threshold,
            nms_thresh=self.nms_thresh, detections_per_image=self.detections_per_image,
            min_box_size=self.min_box_size,
        )
