"""Box arithmetic: areas, IoU, clipping, and the R-CNN box parametrisation.

Boxes are XYXY in absolute pixels (``structures.py``). Widths are ``x1 - x0``
with no ``+ 1``: both torchvision and Detectron2 treat coordinates as
continuous.

The box coder is Eq. 2 of Fast R-CNN / the R-CNN appendix::

    dx = wx * (gx - px) / pw        dw = ww * log(gw / pw)
    dy = wy * (gy - py) / ph        dh = wh * log(gh / ph)

with ``(px, py, pw, ph)`` the centre and size of the reference box (anchor or
proposal) and ``(gx, gy, gw, gh)`` those of the target.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

# Largest log-scale change decode accepts: a box can grow at most 1000/16 =
# 62.5 times (the value both peers use), which keeps exp() finite.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def box_area(boxes: Tensor) -> Tensor:
    """``(R, 4) -> (R,)``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of every pair: ``(N, 4), (M, 4) -> (N, M)``.

    A pair whose union is empty (two degenerate boxes) has IoU 0.
    """
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp x to ``[0, w]`` and y to ``[0, h]`` for ``size = (h, w)``; any ``(..., 4)`` shape."""
    h, w = size
    x = boxes[..., 0::2].clamp(min=0, max=w)
    y = boxes[..., 1::2].clamp(min=0, max=h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def large_enough(boxes: Tensor, min_size: float, strict: bool = False) -> Tensor:
    """Bool mask of boxes whose width and height are ``>= min_size`` (``> min_size`` if strict)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    if strict:
        return (w > min_size) & (h > min_size)
    return (w >= min_size) & (h >= min_size)


def scale_boxes(boxes: Tensor, scale_xy: tuple[float, float]) -> Tensor:
    """Multiply x coordinates by ``scale_xy[0]`` and y by ``scale_xy[1]`` (float32 factors)."""
    sx = torch.tensor(scale_xy[0], dtype=boxes.dtype, device=boxes.device)
    sy = torch.tensor(scale_xy[1], dtype=boxes.dtype, device=boxes.device)
    return boxes * torch.stack((sx, sy, sx, sy))


class BoxCoder:
    """Encode target boxes relative to reference boxes, and decode deltas back.

    ``weights`` scale the deltas so that, for ground truth, they have roughly
    unit variance: (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head.
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float],
        scale_clamp: float = DEFAULT_SCALE_CLAMP,
    ) -> None:
        self.weights = weights
        self.scale_clamp = scale_clamp

    def encode(self, reference: Tensor, target: Tensor) -> Tensor:
        """``(R, 4), (R, 4) -> (R, 4)`` deltas that turn ``reference`` into ``target``."""
        wx, wy, ww, wh = self.weights
        pw = reference[:, 2] - reference[:, 0]
        ph = reference[:, 3] - reference[:, 1]
        px = reference[:, 0] + 0.5 * pw
        py = reference[:, 1] + 0.5 * ph
        gw = target[:, 2] - target[:, 0]
        gh = target[:, 3] - target[:, 1]
        gx = target[:, 0] + 0.5 * gw
        gy = target[:, 1] + 0.5 * gh
        return torch.stack(
            (
                wx * (gx - px) / pw,
                wy * (gy - py) / ph,
                ww * torch.log(gw / pw),
                wh * torch.log(gh / ph),
            ),
            dim=1,
        )

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """``(R, 4k), (R, 4) -> (R, 4k)``: one box per group of 4 deltas (k classes).

        Computed in the wider of the two types: bfloat16 deltas of float32
        anchors give float32 boxes (bfloat16 would round x = 800 to 4 pixels).
        """
        dtype = torch.promote_types(deltas.dtype, reference.dtype)
        deltas, reference = deltas.to(dtype), reference.to(dtype)
        wx, wy, ww, wh = self.weights
        pw = (reference[:, 2] - reference[:, 0])[:, None]
        ph = (reference[:, 3] - reference[:, 1])[:, None]
        px = reference[:, 0, None] + 0.5 * pw
        py = reference[:, 1, None] + 0.5 * ph
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)
        cx = dx * pw + px
        cy = dy * ph + py
        half_w = 0.5 * (torch.exp(dw) * pw)
        half_h = 0.5 * (torch.exp(dh) * ph)
        # (R, k, 4) -> (R, 4k), class-major as the deltas came in.
        boxes = torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=2)
        return boxes.reshape(deltas.shape)


def box_regression_loss(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Smooth L1 (``beta > 0``) or L1 (``beta == 0``), summed over every coordinate; 0 when empty."""
    if beta > 0:
        return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")
    return F.l1_loss(pred, target, reduction="sum")
