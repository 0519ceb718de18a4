"""Mask head: a small FCN predicting one ``S x S`` mask per class (Mask R-CNN, Figure 4, right).

Four 3x3 convs with ReLU on the ``14 x 14`` RoI features, a 2x2 stride-2
deconvolution with ReLU to ``28 x 28``, and a 1x1 conv to ``K`` mask logits.
Masks do not compete across classes: at inference the sigmoid of the mask of
the predicted class is taken; in training only that class's mask is penalised.

``MaskBranch`` owns the branch's numbers: its pooler, the head, the
representation (per-class sigmoid, softmax, class-agnostic), the rule that
makes training targets, and how masks are pasted and thresholded.

Shapes: ``(R, C, 14, 14)`` -> ``(R, K, 28, 28)``.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import MaskRepresentation, MaskTargetRule, PasteRule
from ..dist import global_normaliser
from ..ops.masks import paste_mask_crops
from ..ops.roi_align import roi_align
from ..structures import MaskCrops, RoISamples, Targets
from .poolers import MultiLevelRoIPooler
from .precision import widened


class MaskHead(nn.Module):
    """``4 x (conv3x3, ReLU) -> deconv 2x2/2, ReLU -> conv1x1 to K masks``."""

    def __init__(
        self, *, in_channels: int, conv_dims: tuple[int, ...], num_masks: int, deconv_dim: int | None = None
    ) -> None:
        super().__init__()
        dims = (in_channels, *conv_dims)
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        up = deconv_dim or dims[-1]
        self.deconv = nn.ConvTranspose2d(dims[-1], up, 2, stride=2)
        self.predictor = nn.Conv2d(up, num_masks, 1)
        for conv in [*self.convs, self.deconv]:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = torch.relu_(conv(x))
        return self.predictor(torch.relu_(self.deconv(x)))


def mask_channels(representation: MaskRepresentation, num_classes: int) -> int:
    """Mask predictor outputs: K per-class masks, K + 1 with a background channel, or one."""
    match representation:
        case "sigmoid":
            return num_classes
        case "softmax":
            return num_classes + 1
        case "class_agnostic":
            return 1
        case _:
            raise ValueError(f"unknown mask representation {representation!r}: "
                             f"expected one of {get_args(MaskRepresentation)}")


def mask_probabilities(
    mask_logits: Tensor, labels: Tensor, representation: MaskRepresentation = "sigmoid"
) -> Tensor:
    """Each RoI's foreground probability map for its class: ``(D, M, S, S), (D,) -> (D, S, S)``.

    ``labels`` are contiguous foreground labels 0..K-1.
    """
    index = torch.arange(labels.shape[0], device=labels.device)
    match representation:
        # float32 whatever the network's type, before the 0.5 threshold of pasting.
        case "sigmoid":
            return widened(mask_logits[index, labels]).sigmoid()
        case "softmax":
            return widened(mask_logits).softmax(dim=1)[index, labels + 1]
        case "class_agnostic":
            return widened(mask_logits[:, 0]).sigmoid()
        case _:
            raise ValueError(f"unknown mask representation {representation!r}: "
                             f"expected one of {get_args(MaskRepresentation)}")


def mask_targets(
    samples: list[RoISamples], targets: list[Targets], size: int, *, rule: MaskTargetRule
) -> Tensor:
    """``(P, S, S)`` targets of the positive RoIs, in the order of ``samples``.

    Each target is the RoI's window of its matched ground-truth mask, resampled
    to ``S x S`` by RoIAlign with adaptive sampling: the paper's "intersection
    between an RoI and its associated ground-truth mask". The two peers differ:

    - ``"detectron2"``: RoIAlign half-pixel aligned, binarised at 0.5 (bool);
    - ``"torchvision"``: RoIAlign unaligned, the averaged values kept as soft
      targets in [0, 1] (float).
    """
    match rule:
        case "detectron2":
            aligned = True
        case "torchvision":
            aligned = False
        case _:
            raise ValueError(f"unknown mask target rule {rule!r}: expected one of {get_args(MaskTargetRule)}")
    out = []
    device = samples[0].boxes.device if samples else torch.device("cpu")
    dtype = samples[0].boxes.dtype if samples else torch.float32
    for s, t in zip(samples, targets, strict=True):
        fg = s.foreground
        if t.masks is None or not bool(fg.any()):
            continue
        rois = torch.cat((s.gt_index[fg, None].to(s.boxes.dtype), s.boxes[fg]), dim=1)
        masks = t.masks[:, None].to(s.boxes.dtype)  # (M, 1, H, W): one "image" per instance
        out.append(roi_align(masks, rois, size, 1.0, 0, aligned)[:, 0])
    result = torch.cat(out) if out else torch.zeros((0, size, size), dtype=dtype, device=device)
    return result >= 0.5 if rule == "detectron2" else result


def mask_loss(
    mask_logits: Tensor, classes: Tensor, targets: Tensor, representation: MaskRepresentation = "sigmoid"
) -> Tensor:
    """The mask loss of the positive RoIs, averaged over their pixels.

    ``mask_logits (P, M, S, S)``, ``classes (P,)`` in 1..K, ``targets (P, S, S)``
    (binary, or soft in [0, 1]; the softmax representation takes them at 0.5).

    - ``"sigmoid"`` (the paper's): binary cross-entropy of the true class's
      mask only; other classes' masks get no gradient, so masks do not compete.
    - ``"softmax"``: per-pixel cross-entropy over a background channel and the K
      class channels, the target being the true class inside the mask and
      background outside.
    - ``"class_agnostic"``: binary cross-entropy of the single mask.

    With no positive RoI the loss is an exact 0 that still reaches the head's
    parameters (so data-parallel training sees every parameter used).
    """
    normaliser = global_normaliser(targets.numel(), mask_logits.device)
    if classes.numel() == 0:
        return mask_logits.sum() * 0.0
    index = torch.arange(classes.numel(), device=classes.device)
    match representation:
        case "softmax":
            target_class = torch.where(targets >= 0.5, classes[:, None, None], 0)
            return F.cross_entropy(mask_logits, target_class, reduction="sum") / normaliser
        case "sigmoid":
            logits = mask_logits[index, classes - 1]
        case "class_agnostic":
            logits = mask_logits[:, 0]
        case _:
            raise ValueError(f"unknown mask representation {representation!r}: "
                             f"expected one of {get_args(MaskRepresentation)}")
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="sum") / normaliser


class MaskBranch(nn.Module):
    """RoI pooling, the mask head, its training targets and loss, and pasting into the image.

    The pooled features reach ``loss`` and ``predict`` from the detector, which
    runs this branch's ``pooler`` (and, in C4, res5 on top).
    """

    def __init__(
        self,
        *,
        pooler: MultiLevelRoIPooler,
        head: MaskHead,
        representation: MaskRepresentation,
        target_rule: MaskTargetRule,
        paste_rule: PasteRule,
        threshold: float,
    ) -> None:
        super().__init__()
        self.pooler = pooler
        self.head = head
        self.representation = representation
        self.target_rule = target_rule
        self.paste_rule = paste_rule
        self.threshold = threshold

    def loss(self, features: Tensor, samples: list[RoISamples], targets: list[Targets]) -> dict[str, Tensor]:
        """``loss_mask`` from the pooled features ``(P, C, S', S')`` of the positive RoIs of ``samples``."""
        logits = self.head(features)
        classes = torch.cat([s.classes[s.foreground] for s in samples])
        target = mask_targets(samples, targets, logits.shape[-1], rule=self.target_rule)
        return {"loss_mask": mask_loss(logits, classes, target, self.representation)}

    def predict(self, features: Tensor, labels: Tensor) -> Tensor:
        """Foreground probabilities ``(D, S, S)`` of each detection's class, from its pooled features."""
        return mask_probabilities(self.head(features), labels, self.representation)

    def paste(self, probabilities: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> MaskCrops:
        """Binary masks of one image, each map resized into its box and thresholded, kept over the
        window its box reaches (``MaskCrops``; ``.dense()`` for ``(D, H, W)``)."""
        return paste_mask_crops(probabilities, boxes, image_size, self.paste_rule, self.threshold)
