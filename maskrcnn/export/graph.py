"""The whole detector as one dense function of a uint8 batch, for an ONNX graph.

``MaskRCNN.predict`` loops over images, reads sizes on the host and returns a
list; an exported graph cannot. ``ExportableMaskRCNN`` computes the same
detections with fixed-size tensors wherever the eager code drops or splits:

- the input transform on a padded uint8 batch (``preprocess.prepare_batch``);
- backbone, FPN, RPN head and proposal selection (``proposals.select_proposals``):
  ``(N, K)`` proposals per image, padded, with a validity mask;
- the box head on all ``N * K`` proposals; padding, low scores, non-finite and
  small boxes get a score of -inf; one grouped NMS over every (image, class);
  the best ``detections_per_image`` of each image;
- the detections flattened with their image's index (the only data-dependent
  size): an image without detections simply has no rows;
- mask head, mask of the predicted class, pasting into the whole input canvas
  and the threshold; keypoint decoding; boxes and keypoints in input pixels.

Inputs: ``images (N, H, W, 3)`` uint8 RGB, image ``i`` in the top-left
``sizes[i]`` of the canvas; ``sizes (N, 2)`` int64 ``(h, w)``;
``score_threshold ()`` float32 (the box head's threshold, applied before NMS
as in ``predict``). Outputs: ``boxes (D, 4)`` float32 in input pixels,
``scores (D,)``, ``labels (D,)`` int64 (0-based contiguous), ``image_index
(D,)`` int64, image-major and by decreasing score within an image as
``predict`` orders them; ``masks (D, H, W)`` uint8 over the canvas for mask
models; ``keypoints (D, P, 3)`` ``(x, y, score)`` for keypoint models.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import ModelConfig
from ..model import MaskRCNN
from ..model.mask_head import mask_probabilities
from ..model.poolers import MultiLevelRoIPooler, level_of_boxes, level_range
from ..ops.masks import binarise, pasted_values
from .onnx_ops import export_ops
from .preprocess import prepare_batch
from .proposals import select_proposals

# Kept by NMS: scores above this, which every finite score is and -inf is not.
_LOWEST = -3.0e38


class ExportError(ValueError):
    """A model that the export does not cover (the message says what and why)."""


class ExportableMaskRCNN(nn.Module):
    """A built ``MaskRCNN`` and its config as one dense, batch-vectorised forward."""

    def __init__(self, model: MaskRCNN, config: ModelConfig) -> None:
        super().__init__()
        check_exportable(model, config)
        self.model = model
        self.config = config

    @property
    def output_names(self) -> list[str]:
        names = ["boxes", "scores", "labels", "image_index"]
        if self.model.mask is not None:
            names.append("masks")
        if self.model.keypoint is not None:
            names.append("keypoints")
        return names

    def forward(self, images: Tensor, sizes: Tensor, score_threshold: Tensor) -> tuple[Tensor, ...]:
        model = self.model
        x, image_sizes = prepare_batch(images, sizes, self.config.input)
        features = model.backbone(x)
        rpn = model.rpn
        out = rpn(features, (x.shape[-2], x.shape[-1]))
        proposals, _, proposal_valid = select_proposals(
            out.logits, out.deltas, out.anchors, image_sizes, box_coder=rpn.box_coder,
            pre_nms=rpn.test_topk.pre_nms, post_nms=rpn.test_topk.post_nms, nms_thresh=rpn.nms_thresh,
            min_box_size=rpn.min_box_size, min_box_size_strict=rpn.min_box_size_strict,
        )
        n, k = proposal_valid.shape
        rois = proposals.reshape(n * k, 4)
        roi_image = torch.arange(n, device=rois.device)[:, None].expand(n, k).reshape(-1)
        class_logits, box_deltas = model.box.head(self._pool(model.box.pooler, features, rois, roi_image))
        scores, boxes, labels, image_index, order_valid = self._detect(
            class_logits, box_deltas, rois, proposal_valid, image_sizes, score_threshold)

        # Back to input pixels, per axis, with each image's float32 factors (as ``scale_boxes``).
        ratio = (sizes.to(torch.float64) / image_sizes.to(torch.float64)).to(torch.float32)  # (N, 2): y, x
        factors = ratio.flip(1).repeat(1, 2)  # (N, 4): x, y, x, y
        scaled = boxes * factors[:, None, :]
        keep = order_valid
        if model.clip_to_original:
            upper = sizes.flip(1).repeat(1, 2).to(scaled.dtype)[:, None, :]
            scaled = torch.minimum(scaled.clamp(min=0), upper)
            sides = scaled[..., 2:] - scaled[..., :2]
            keep = keep & (sides > 0).all(dim=-1)
        found = keep.nonzero()  # (D, 2): image, slot; image-major, by decreasing score
        image, slot = found[:, 0], found[:, 1]
        outputs = [scaled[image, slot], scores[image, slot], labels[image, slot], image]
        network_boxes = boxes[image, slot]
        if model.mask is not None:
            mask = model.mask
            logits = mask.head(self._pool(mask.pooler, features, network_boxes, image))
            probabilities = mask_probabilities(logits, outputs[2], mask.representation)
            d = probabilities.shape[0]
            origin = torch.zeros(d, dtype=torch.int64, device=probabilities.device)
            values = pasted_values(probabilities, outputs[0], mask.paste_rule, origin, origin,
                                   images.shape[1], images.shape[2])
            outputs.append(binarise(values, mask.paste_rule, mask.threshold).to(torch.uint8))
        if model.keypoint is not None:
            from .keypoints import keypoint_ops

            keypoint = model.keypoint
            pooled = self._pool(keypoint.pooler, features, network_boxes, image, shared=False)
            heatmaps = keypoint.head(pooled)
            found_keypoints = keypoint_ops().keypoints_from_heatmaps(heatmaps, network_boxes)
            scale = torch.cat((factors[image, :2], torch.ones_like(factors[image, :1])), dim=1)  # x, y, 1
            outputs.append(found_keypoints * scale[:, None, :])
        return tuple(outputs)

    def _detect(
        self,
        class_logits: Tensor,
        box_deltas: Tensor,
        rois: Tensor,
        proposal_valid: Tensor,
        image_sizes: Tensor,
        score_threshold: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``detect_boxes`` over the padded proposals: the best detections of each image, padded.

        Returns ``scores (N, T)`` (-inf for padding), ``boxes (N, T, 4)`` in
        network-input pixels, ``labels (N, T)``, ``image_index (N, T)`` and
        ``valid (N, T)`` with ``T = min(detections_per_image, K * classes)``.
        """
        box = self.model.box
        n, k = proposal_valid.shape
        num_classes = box_deltas.shape[1] // 4
        boxes = box.box_coder.decode(box_deltas, rois).reshape(n, k, num_classes, 4)
        scores = F.softmax(class_logits, dim=1)[:, 1:].reshape(n, k, num_classes)
        finite = (torch.isfinite(boxes).all(dim=3).all(dim=2) & torch.isfinite(scores).all(dim=2))[..., None]
        boxes = torch.where(finite[..., None], boxes, 0.0)
        size = image_sizes.to(boxes.dtype)  # (N, 2): h, w
        upper = size.flip(1).repeat(1, 2)[:, None, None, :]  # (N, 1, 1, 4): w, h, w, h
        boxes = torch.minimum(boxes.clamp(min=0), upper)
        keep = finite & proposal_valid[..., None] & (scores > score_threshold)
        if box.min_box_size is not None:
            keep &= ((boxes[..., 2:] - boxes[..., :2]) >= box.min_box_size).all(dim=3)
        scores = torch.where(keep, scores, float("-inf"))
        # One NMS group per (image, class), over that class's candidate boxes of every proposal.
        grouped_boxes = boxes.permute(0, 2, 1, 3).reshape(n * num_classes, k, 4)
        grouped_scores = scores.permute(0, 2, 1).reshape(n * num_classes, k)
        kept = export_ops().nms_grouped(grouped_boxes, grouped_scores, box.nms_thresh, _LOWEST,
                                        box.detections_per_image)  # (M, 2): group, proposal
        survivors = torch.full_like(grouped_scores, float("-inf")).index_put(
            (kept[:, 0], kept[:, 1]), grouped_scores[kept[:, 0], kept[:, 1]])
        # Candidates proposal-major, then class, as ``detect_boxes`` orders them.
        flat = survivors.reshape(n, num_classes, k).permute(0, 2, 1).reshape(n, k * num_classes)
        top = min(box.detections_per_image, k * num_classes)
        values, order = flat.topk(top, dim=1)
        label = order % num_classes
        picked = boxes.reshape(n, k * num_classes, 4).gather(1, order[..., None].expand(-1, -1, 4))
        image_index = torch.arange(n, device=values.device)[:, None].expand(n, top)
        return values, picked, label, image_index, values > float("-inf")

    def _pool(
        self, pooler: MultiLevelRoIPooler, features: list[Tensor], boxes: Tensor, image: Tensor,
        *, shared: bool = True,
    ) -> Tensor:
        """``MaskRCNN._pool`` for flat boxes ``(R, 4)`` of images ``image (R,)``: ``(R, C, P, P)``.

        Boxes are pooled level by level, each level's slice found with
        ``nonzero``, and the results put back in the boxes' order with the
        inverse permutation. ``shared`` runs the shared RoI stage (C4's res5).
        """
        ops = export_ops()
        rois = torch.cat((image[:, None].to(boxes.dtype), boxes), dim=1)  # (R, 5)
        features = features[: len(pooler.strides)]
        if len(features) == 1:
            pooled = ops.roi_align(features[0], rois, pooler.resolution, 1.0 / pooler.strides[0],
                                   pooler.sampling_ratio, pooler.aligned)
        else:
            min_level, max_level = level_range(pooler.strides)
            levels = level_of_boxes(boxes, min_level=min_level, max_level=max_level,
                                    canonical_size=pooler.canonical_box_size,
                                    canonical_level=pooler.canonical_level, eps=pooler.level_eps)
            parts, order = [], []
            for level, (feature, stride) in enumerate(zip(features, pooler.strides, strict=True)):
                index = (levels == level).nonzero()[:, 0]
                parts.append(ops.roi_align(feature, rois[index], pooler.resolution, 1.0 / stride,
                                           pooler.sampling_ratio, pooler.aligned))
                order.append(index)
            permutation = torch.cat(order)
            torch._check(permutation.shape[0] == rois.shape[0])
            inverse = torch.zeros_like(permutation).index_put(
                (permutation,), torch.arange(permutation.shape[0], device=permutation.device))
            pooled = torch.cat(parts)[inverse]
        if shared and self.model.roi_shared is not None:
            pooled = self.model.roi_shared(pooled)
        return pooled


def check_exportable(model: MaskRCNN, config: ModelConfig) -> None:
    """Raise ``ExportError`` naming what the export does not cover in this model."""
    poolers = [model.box.pooler]
    poolers += [b.pooler for b in (model.mask, model.keypoint) if b is not None]
    for pooler in poolers:
        if pooler.kind != "roi_align":
            raise ExportError(f"the export covers RoIAlign pooling, not {pooler.kind!r} "
                              f"(an ablation of the paper's Table 2c)")
