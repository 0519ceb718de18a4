"""The Mask R-CNN detector (He et al. 2017, Figure 1): backbone+FPN, RPN, box and mask heads.

``loss(batch, targets)`` (also ``forward``) returns the training losses;
``predict(batch)`` runs inference: proposals from the RPN, RoIAlign features
for the box head, per-class detections, RoIAlign features of the detections
for the mask head, and the mask of each detection's class pasted into the
image at its box. With a keypoint head (Keypoint R-CNN, Section 5) the
detections' RoIAlign features also go to it, and each keypoint heatmap's
maximum becomes a keypoint. Boxes, masks and keypoints come back in the
pixels of the images the user passed in (``ImageBatch.original_sizes``).

Shapes: ``batch.tensor (N, 3, H, W)`` -> ``N`` ``Detections`` with
``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)``, ``masks (D, H_i, W_i)``,
``keypoints (D, P, 3)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import MaskLoss
from ..ops.boxes import BoxCoder, clip_boxes, large_enough, scale_boxes
from ..ops.masks import paste_masks
from ..structures import Detections, ImageBatch, Targets
from .box_head import BoxHead, box_head_loss, detect_boxes, sample_rois
from .keypoint_head import KeypointHead, keypoint_heatmaps_to_xy, keypoint_loss, keypoint_targets
from .mask_head import MaskHead, mask_loss, mask_probabilities, mask_targets
from .poolers import MultiLevelRoIPooler
from .rpn import RPN, rpn_loss


@dataclass(frozen=True)
class TrainingSettings:
    """Numbers of the training path (see ``config.py`` for their meaning)."""

    rpn_pre_nms_topk: int
    rpn_post_nms_topk: int
    rpn_box_coder: BoxCoder
    rpn_fg_iou_thresh: float
    rpn_bg_iou_thresh: float
    rpn_batch_size_per_image: int
    rpn_positive_fraction: float
    rpn_smooth_l1_beta: float
    rpn_crowd_ioa_thresh: float
    box_coder: BoxCoder
    roi_fg_iou_thresh: float
    roi_bg_iou_thresh: float
    roi_batch_size_per_image: int
    roi_positive_fraction: float
    roi_smooth_l1_beta: float
    roi_crowd_ioa_thresh: float
    mask_size: int
    mask_loss: MaskLoss


@dataclass(frozen=True)
class InferenceSettings:
    """Numbers of the inference path (see ``config.py`` for their meaning)."""

    rpn_pre_nms_topk: int
    rpn_post_nms_topk: int
    box_coder: BoxCoder
    score_thresh: float
    nms_thresh: float
    detections_per_image: int
    min_box_size: float | None
    paste_rule: str
    mask_threshold: float
    mask_loss: MaskLoss
    clip_to_original: bool


class MaskRCNN(nn.Module):
    """Backbone (FPN or C4), RPN, box head and (optionally) mask and keypoint heads.

    ``roi_shared`` runs on every RoI's pooled features before the box and mask
    heads: res5 in the C4 architecture, nothing with FPN.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        rpn: RPN,
        box_pooler: MultiLevelRoIPooler,
        box_head: BoxHead,
        mask_pooler: MultiLevelRoIPooler | None,
        mask_head: MaskHead | None,
        inference: InferenceSettings,
        training: TrainingSettings,
        keypoint_pooler: MultiLevelRoIPooler | None = None,
        keypoint_head: KeypointHead | None = None,
        roi_shared: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_shared = roi_shared
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.mask_pooler = mask_pooler
        self.mask_head = mask_head
        self.keypoint_pooler = keypoint_pooler
        self.keypoint_head = keypoint_head
        self.inference = inference
        self.training_settings = training

    def _roi_features(
        self, pooler: MultiLevelRoIPooler, features: list[Tensor], boxes: list[Tensor]
    ) -> Tensor:
        """Pooled RoI features, through the shared RoI stage (C4's res5) when there is one."""
        x = pooler(features, boxes)
        return x if self.roi_shared is None else self.roi_shared(x)

    def forward(self, batch: ImageBatch, targets: list[Targets]) -> dict[str, Tensor]:
        """Training losses; ``forward`` so that ``DistributedDataParallel`` can wrap the model."""
        return self.loss(batch, targets)

    def loss(self, batch: ImageBatch, targets: list[Targets]) -> dict[str, Tensor]:
        """The multi-task loss L = L_cls + L_box + L_mask, plus the RPN's two terms.

        Returns exactly ``loss_rpn_objectness``, ``loss_rpn_box``,
        ``loss_classifier``, ``loss_box``, (with a mask head) ``loss_mask`` and
        (with a keypoint head) ``loss_keypoint``.
        """
        s = self.training_settings
        features = self.backbone(batch.tensor)
        logits, deltas, anchors = self.rpn(features, (batch.tensor.shape[-2], batch.tensor.shape[-1]))
        losses = rpn_loss(
            logits, deltas, anchors, [t.boxes for t in targets], [t.crowd_boxes for t in targets],
            [t.generator(salt=1) for t in targets],
            box_coder=s.rpn_box_coder, fg_iou_thresh=s.rpn_fg_iou_thresh, bg_iou_thresh=s.rpn_bg_iou_thresh,
            batch_size_per_image=s.rpn_batch_size_per_image, positive_fraction=s.rpn_positive_fraction,
            smooth_l1_beta=s.rpn_smooth_l1_beta, crowd_ioa_thresh=s.rpn_crowd_ioa_thresh,
        )
        proposals = self.rpn.propose(
            logits, deltas, anchors, batch.image_sizes,
            pre_nms_topk=s.rpn_pre_nms_topk, post_nms_topk=s.rpn_post_nms_topk,
        )
        samples = sample_rois(
            [p.boxes for p in proposals], targets, box_coder=s.box_coder,
            fg_iou_thresh=s.roi_fg_iou_thresh, bg_iou_thresh=s.roi_bg_iou_thresh,
            batch_size_per_image=s.roi_batch_size_per_image, positive_fraction=s.roi_positive_fraction,
            crowd_ioa_thresh=s.roi_crowd_ioa_thresh,
        )
        class_logits, box_deltas = self.box_head(
            self._roi_features(self.box_pooler, features, [r.boxes for r in samples])
        )
        losses |= box_head_loss(class_logits, box_deltas, samples, smooth_l1_beta=s.roi_smooth_l1_beta)
        if self.mask_head is not None and self.mask_pooler is not None:
            # The mask branch sees only the positive RoIs (Section 3.1).
            positive = [r.boxes[r.foreground] for r in samples]
            mask_logits = self.mask_head(self._roi_features(self.mask_pooler, features, positive))
            classes = torch.cat([r.classes[r.foreground] for r in samples])
            losses["loss_mask"] = mask_loss(
                mask_logits, classes, mask_targets(samples, targets, s.mask_size), s.mask_loss
            )
        if self.keypoint_head is not None and self.keypoint_pooler is not None:
            # Like the mask branch, on the positive RoIs only (torchvision: all classes'
            # positives; instances without labelled keypoints add nothing to the loss).
            positive = [r.boxes[r.foreground] for r in samples]
            heatmaps = self.keypoint_head(self.keypoint_pooler(features, positive))
            index, valid = keypoint_targets(samples, targets, size=heatmaps.shape[-1],
                                            num_keypoints=heatmaps.shape[1])
            losses["loss_keypoint"] = keypoint_loss(heatmaps, index, valid)
        return losses

    @torch.no_grad()
    def predict(self, batch: ImageBatch, *, timings: dict[str, float] | None = None) -> list[Detections]:
        """Detections for every image of the batch, in original-image pixels.

        ``timings``, when given, receives seconds per stage (``backbone``,
        ``rpn``, ``box_head``, ``mask_head``, ``keypoint_head`` with a keypoint head, ``paste``).
        """
        clock = _StageClock(timings, batch.tensor.device)
        s = self.inference
        features = self.backbone(batch.tensor)
        clock.lap("backbone")
        logits, deltas, anchors = self.rpn(features, (batch.tensor.shape[-2], batch.tensor.shape[-1]))
        proposals = self.rpn.propose(
            logits, deltas, anchors, batch.image_sizes,
            pre_nms_topk=s.rpn_pre_nms_topk, post_nms_topk=s.rpn_post_nms_topk,
        )
        clock.lap("rpn")
        boxes = [p.boxes for p in proposals]
        class_logits, box_deltas = self.box_head(self._roi_features(self.box_pooler, features, boxes))
        detections = detect_boxes(
            class_logits, box_deltas, boxes, batch.image_sizes,
            box_coder=s.box_coder, score_thresh=s.score_thresh, nms_thresh=s.nms_thresh,
            detections_per_image=s.detections_per_image, min_box_size=s.min_box_size,
        )
        clock.lap("box_head")
        mask_probs: list[Tensor | None] = [None] * len(detections)
        if self.mask_head is not None and self.mask_pooler is not None:
            mask_logits = self.mask_head(
                self._roi_features(self.mask_pooler, features, [d.boxes for d in detections])
            )
            labels = torch.cat([d.labels for d in detections])
            probs = mask_probabilities(mask_logits, labels, s.mask_loss)
            mask_probs = list(probs.split([len(d) for d in detections]))
        clock.lap("mask_head")
        if self.keypoint_head is not None and self.keypoint_pooler is not None:
            det_boxes = [d.boxes for d in detections]
            heatmaps = self.keypoint_head(self.keypoint_pooler(features, det_boxes))
            keypoints = keypoint_heatmaps_to_xy(heatmaps, torch.cat(det_boxes))  # network-input pixels
            for d, k in zip(detections, keypoints.split([len(d) for d in detections]), strict=True):
                d.keypoints = k
            clock.lap("keypoint_head")
        results = [
            self._to_original(d, m, size, original)
            for d, m, size, original in zip(
                detections, mask_probs, batch.image_sizes, batch.original_sizes, strict=True
            )
        ]
        clock.lap("paste")
        return results

    def _to_original(
        self, det: Detections, mask_probs: Tensor | None, size: tuple[int, int], original: tuple[int, int]
    ) -> Detections:
        """Map one image's detections from network-input to original pixels and paste its masks.

        Keypoints scale like the boxes, per axis; their scores are kept.
        """
        s = self.inference
        boxes = scale_boxes(det.boxes, (original[1] / size[1], original[0] / size[0]))
        if s.clip_to_original:
            boxes = clip_boxes(boxes, original)
            keep = large_enough(boxes, 0.0, strict=True)
            det = det[keep]
            boxes = boxes[keep]
            mask_probs = None if mask_probs is None else mask_probs[keep]
        masks = None
        if mask_probs is not None:
            masks = paste_masks(mask_probs, boxes, original, s.paste_rule, s.mask_threshold)
        keypoints = det.keypoints
        if keypoints is not None:
            scale = torch.tensor([original[1] / size[1], original[0] / size[0], 1.0],
                                 dtype=keypoints.dtype, device=keypoints.device)
            keypoints = keypoints * scale  # (D, P, 3) * (3,): x, y scaled, score kept
        return Detections(boxes, det.scores, det.labels, masks, keypoints)


class _StageClock:
    """Records wall time per stage into a dict, synchronising CUDA so times are real."""

    def __init__(self, sink: dict[str, float] | None, device: torch.device) -> None:
        self.sink = sink
        self.device = device
        self.last = self._now() if sink is not None else 0.0

    def _now(self) -> float:
        import time

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, name: str) -> None:
        if self.sink is None:
            return
        now = self._now()
        self.sink[name] = self.sink.get(name, 0.0) + now - self.last
        self.last = now
