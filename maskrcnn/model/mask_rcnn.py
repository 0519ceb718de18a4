"""The Mask R-CNN detector (He et al. 2017, Figure 1): backbone, RPN, and the box, mask and keypoint branches.

``loss(batch, targets)`` (also ``forward``) returns the training losses;
``predict(batch)`` runs inference. Each stage owns its numbers and has its own
``loss`` and ``predict``; this module only wires them as the figure does:

    backbone -> RPN -> proposals -> RoIAlign -> box branch -> detections
                                        |--> mask branch (positive RoIs / detections)
                                        '--> keypoint branch (Keypoint R-CNN, Section 5)

Boxes, masks and keypoints come back in the pixels of the images the user
passed in (``ImageBatch.original_sizes``).

Shapes: ``batch.tensor (N, 3, H, W)`` -> ``N`` ``Detections`` with
``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)``, ``masks (D, H_i, W_i)``,
``keypoints (D, P, 3)``.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from ..ops.boxes import clip_boxes, large_enough, scale_boxes
from ..structures import Detections, ImageBatch, Targets
from .box_head import BoxBranch
from .keypoint_head import KeypointBranch
from .mask_head import MaskBranch
from .poolers import MultiLevelRoIPooler
from .rpn import RPN


class MaskRCNN(nn.Module):
    """Backbone (FPN, C4 or DC5), RPN, box branch and (optionally) mask and keypoint branches.

    ``roi_shared`` runs on the pooled features of every box- and mask-branch
    RoI: res5 in the C4 architecture (Figure 4, left), nothing otherwise.
    ``clip_to_original`` clips the boxes to the image after mapping them back
    to its pixels and drops empty ones (Detectron2 does; torchvision does not).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        rpn: RPN,
        box: BoxBranch,
        mask: MaskBranch | None = None,
        keypoint: KeypointBranch | None = None,
        roi_shared: nn.Module | None = None,
        clip_to_original: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_shared = roi_shared
        self.box = box
        self.mask = mask
        self.keypoint = keypoint
        self.clip_to_original = clip_to_original

    def forward(self, batch: ImageBatch, targets: list[Targets]) -> dict[str, Tensor]:
        """Training losses; ``forward`` so that ``DistributedDataParallel`` can wrap the model."""
        return self.loss(batch, targets)

    def loss(self, batch: ImageBatch, targets: list[Targets]) -> dict[str, Tensor]:
        """The multi-task loss L = L_cls + L_box + L_mask, plus the RPN's two terms.

        Returns exactly ``loss_rpn_objectness``, ``loss_rpn_box``,
        ``loss_classifier``, ``loss_box``, (with a mask branch) ``loss_mask`` and
        (with a keypoint branch) ``loss_keypoint``.
        """
        features = self.backbone(batch.tensor)
        proposals, losses = self.rpn.loss(features, batch, targets)
        samples = self.box.sample(proposals, targets)
        losses |= self.box.loss(self._pool(self.box.pooler, features, [s.boxes for s in samples]), samples)
        # The mask and keypoint branches see only the positive RoIs (Section 3.1).
        positives = [s.boxes[s.foreground] for s in samples]
        if self.mask is not None:
            losses |= self.mask.loss(self._pool(self.mask.pooler, features, positives), samples, targets)
        if self.keypoint is not None:
            losses |= self.keypoint.loss(self.keypoint.pooler(features, positives), samples, targets)
        return losses

    @torch.no_grad()
    def predict(
        self,
        batch: ImageBatch,
        *,
        score_threshold: float | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[Detections]:
        """Detections for every image of the batch, in original-image pixels.

        ``score_threshold`` replaces the box branch's own for this call.
        ``timings``, when given, receives seconds per stage: ``backbone``,
        ``rpn``, ``box_head``, ``paste``, and ``mask_head`` / ``keypoint_head``
        for the branches the model has.
        """
        clock = _StageClock(timings, batch.tensor.device)
        features = self.backbone(batch.tensor)
        clock.lap("backbone")
        proposals = self.rpn.predict(features, batch)
        clock.lap("rpn")
        box_features = self._pool(self.box.pooler, features, [p.boxes for p in proposals])
        detections = self.box.predict(box_features, proposals, batch.image_sizes,
                                      score_threshold=score_threshold)
        clock.lap("box_head")
        boxes, counts = [d.boxes for d in detections], [len(d) for d in detections]
        masks: list[Tensor] | list[None] = [None] * len(detections)
        keypoints: list[Tensor] | list[None] = [None] * len(detections)
        if self.mask is not None:
            labels = torch.cat([d.labels for d in detections])
            probabilities = self.mask.predict(self._pool(self.mask.pooler, features, boxes), labels)
            masks = list(probabilities.split(counts))
            clock.lap("mask_head")
        if self.keypoint is not None:
            found = self.keypoint.predict(self.keypoint.pooler(features, boxes), torch.cat(boxes))
            keypoints = list(found.split(counts))  # network-input pixels
            clock.lap("keypoint_head")
        per_image = zip(detections, masks, keypoints, batch.image_sizes, batch.original_sizes, strict=True)
        results = [self._to_original(*args) for args in per_image]
        clock.lap("paste")
        return results

    def _pool(self, pooler: MultiLevelRoIPooler, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """Pooled RoI features, through the shared RoI stage (C4's res5) when there is one."""
        x = pooler(features, boxes)
        return x if self.roi_shared is None else self.roi_shared(x)

    def _to_original(
        self,
        det: Detections,
        mask_probabilities: Tensor | None,
        keypoints: Tensor | None,
        size: tuple[int, int],
        original: tuple[int, int],
    ) -> Detections:
        """One image's detections mapped from network-input to original pixels, masks pasted.

        Keypoints scale like the boxes, per axis; their scores are kept.
        """
        sx, sy = original[1] / size[1], original[0] / size[0]
        boxes = scale_boxes(det.boxes, (sx, sy))
        scores, labels = det.scores, det.labels
        if self.clip_to_original:
            boxes = clip_boxes(boxes, original)
            keep = large_enough(boxes, 0.0, strict=True)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            mask_probabilities = None if mask_probabilities is None else mask_probabilities[keep]
            keypoints = None if keypoints is None else keypoints[keep]
        masks = None
        if mask_probabilities is not None:
            assert self.mask is not None
            masks = self.mask.paste(mask_probabilities, boxes, original)
        if keypoints is not None:
            scale = torch.tensor([sx, sy, 1.0], dtype=keypoints.dtype, device=keypoints.device)
            keypoints = keypoints * scale  # (D, P, 3) * (3,): x, y scaled, score kept
        return Detections(boxes, scores, labels, masks, keypoints)


class _StageClock:
    """Records wall time per stage into a dict, synchronising CUDA so times are real."""

    def __init__(self, sink: dict[str, float] | None, device: torch.device) -> None:
        self.sink = sink
        self.device = device
        self.last = self._now() if sink is not None else 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, name: str) -> None:
        if self.sink is None:
            return
        now = self._now()
        self.sink[name] = self.sink.get(name, 0.0) + now - self.last
        self.last = now
