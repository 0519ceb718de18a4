"""Pasting ``S x S`` mask predictions into the image (the paper's inference step).

"The m x m floating-number mask output is then resized to the RoI size, and
binarized at a threshold of 0.5." Two conventions exist for that resize:

- ``"torchvision"``: the mask is padded by one zero pixel on each side and
  its box grown to match, the box is truncated to integers, and the padded
  mask is resized to that integer box by bilinear interpolation (PyTorch's
  ``interpolate``, ``align_corners=False``, edge-clamped).
- ``"detectron2"``: each image pixel centre inside the box is mapped into the
  mask and sampled bilinearly (``grid_sample``, zero outside the mask).

Both are separable, so for a window of image rows ``Y`` and columns ``X``
around a box the pasted values are ``Wy @ mask @ Wx^T`` with per-axis weight
matrices. Detections are processed in chunks of similar window size, and
each window is written into its image with one indexed assignment.

Shapes: ``masks (D, S, S)`` probabilities, ``boxes (D, 4)`` in image pixels,
result ``(D, H, W)``, or (:func:`paste_mask_crops`) each detection's window
only, as :class:`~maskrcnn.structures.MaskCrops`, whose memory follows the
objects rather than the image.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import get_args

import torch
from torch import Tensor

from ..config import PasteRule
from ..structures import MaskCrops
from .chunks import size_chunks

# Elements of pasted windows computed at once (D * h * w); a few MB, which the
# allocator reuses (see roi_align.py on page faults).
_CHUNK_ELEMENTS = 1 << 20


def _interpolate_weights(first: Tensor, count: Tensor, span: int, src_size: int) -> Tensor:
    """Bilinear ``interpolate`` weights from ``src_size`` to ``count`` outputs.

    Output index ``k`` (``0 <= k < count``) of each row reads source
    coordinate ``(k + 0.5) * src_size / count - 0.5`` clamped at 0, as
    PyTorch's ``upsample_bilinear2d`` (``align_corners=False``) does.
    ``first (D,)`` is the index of the first output in the window, ``span``
    the window length. Returns ``(D, span, src_size)``.
    """
    k = first[:, None] + torch.arange(span, device=first.device)  # (D, span)
    valid = (k >= 0) & (k < count[:, None])
    scale = src_size / count.to(torch.float32)
    src = (scale[:, None] * (k.to(torch.float32) + 0.5) - 0.5).clamp(min=0)
    low = src.floor().long().clamp(max=src_size - 1)
    frac = (src - low.to(src.dtype)).clamp(0, 1)
    high = torch.where(low < src_size - 1, low + 1, low)
    return _two_taps(low, (1 - frac) * valid, high, frac * valid, src_size)


def _two_taps(low: Tensor, w_low: Tensor, high: Tensor, w_high: Tensor, src_size: int) -> Tensor:
    """Rows of weights ``(..., src_size)``: ``w_low`` at index ``low`` plus ``w_high`` at ``high``.

    Indices outside ``[0, src_size)`` weigh nothing. Built by comparison
    rather than scattering, so that it exports to any ONNX runtime.
    """
    columns = torch.arange(src_size, device=low.device)
    zero = w_low.new_zeros(())
    return (torch.where(columns == low[..., None], w_low[..., None], zero)
            + torch.where(columns == high[..., None], w_high[..., None], zero))


def _grid_sample_weights(pixels: Tensor, lo: Tensor, hi: Tensor, src_size: int) -> Tensor:
    """Bilinear ``grid_sample`` weights (``align_corners=False``, zero padding).

    Pixel ``p`` (its centre at ``p + 0.5``) of each row maps to normalised
    ``g = (p + 0.5 - lo) / (hi - lo) * 2 - 1`` and to source coordinate
    ``((g + 1) * src_size - 1) / 2``; taps outside the source weigh nothing.
    ``pixels (D, span)`` int64, ``lo``, ``hi`` ``(D,)``. Returns ``(D, span, src_size)``.
    """
    centre = pixels.to(torch.float32) + 0.5
    g = (centre - lo[:, None]) / (hi - lo)[:, None] * 2 - 1
    src = ((g + 1) * src_size - 1) / 2
    low = src.floor()
    frac = src - low
    low = low.long()
    return _two_taps(low, 1 - frac, low + 1, frac, src_size)


def _sampling_windows(boxes: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Image window ``(y0, y1, x0, x1)`` (end exclusive) that grid sampling can set.

    Outside the box grown by one pixel each value is below one half of an edge
    mask pixel, so it never reaches the 0.5 threshold (Detectron2 pastes into
    the same window on the CPU).
    """
    h, w = size
    x0 = (boxes[:, 0].floor() - 1).clamp(min=0).long()
    y0 = (boxes[:, 1].floor() - 1).clamp(min=0).long()
    x1 = (boxes[:, 2].ceil() + 1).clamp(max=w).long()
    y1 = (boxes[:, 3].ceil() + 1).clamp(max=h).long()
    return y0, y1, x0, x1


def _torchvision_boxes(boxes: Tensor, mask_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """torchvision's integer paste boxes: grown by one mask pixel each side, truncated.

    Returns the integer boxes ``(D, 4)`` and their heights and widths ``(D,)``
    in pixels (at least 1).
    """
    scale = (mask_size + 2) / mask_size
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    centre = (boxes[:, 2:] + boxes[:, :2]) * 0.5
    ibox = torch.cat((centre - half, centre + half), dim=1).long()
    bw = (ibox[:, 2] - ibox[:, 0] + 1).clamp(min=1)
    bh = (ibox[:, 3] - ibox[:, 1] + 1).clamp(min=1)
    return ibox, bh, bw


def pasted_values(
    masks: Tensor, boxes: Tensor, rule: PasteRule, y0: Tensor, x0: Tensor, span_y: int, span_x: int
) -> Tensor:
    """Each mask resized into its box, over a window of the image: ``(D, span_y, span_x)`` float32.

    ``masks (D, S, S)`` probabilities, ``boxes (D, 4)`` in image pixels; the
    window of detection ``d`` starts at pixel ``(y0[d], x0[d])``. Pixels that
    the box's resize does not reach are 0. ``paste_masks`` calls it on a tight
    window per detection; the exported model on the whole image.
    """
    masks = masks.float()
    boxes = boxes.float()
    rows = y0[:, None] + torch.arange(span_y, device=masks.device)  # (D, span_y)
    cols = x0[:, None] + torch.arange(span_x, device=masks.device)  # (D, span_x)
    if rule == "torchvision":
        # One pixel of zero padding around each mask, the box grown by the same
        # factor about its centre, then truncated to integer pixels.
        ibox, bh, bw = _torchvision_boxes(boxes, masks.shape[-1])
        masks = torch.nn.functional.pad(masks, (1, 1, 1, 1))
        wy = _interpolate_weights(y0 - ibox[:, 1], bh, span_y, masks.shape[-2])
        wx = _interpolate_weights(x0 - ibox[:, 0], bw, span_x, masks.shape[-1])
    elif rule == "detectron2":
        wy = _grid_sample_weights(rows, boxes[:, 1], boxes[:, 3], masks.shape[-2])
        wx = _grid_sample_weights(cols, boxes[:, 0], boxes[:, 2], masks.shape[-1])
    else:
        raise ValueError(f"unknown paste rule {rule!r}: expected one of {get_args(PasteRule)}")
    # (D, span_y, S) @ (D, S, S) @ (D, S, span_x)
    return torch.bmm(torch.bmm(wy, masks), wx.transpose(1, 2))


def binarise(values: Tensor, rule: PasteRule, threshold: float) -> Tensor:
    """Pasted probabilities to a bool mask: ``> threshold`` (torchvision) or ``>=`` (Detectron2)."""
    return values > threshold if rule == "torchvision" else values >= threshold


def _pasted_chunks(
    masks: Tensor, boxes: Tensor, size: tuple[int, int], rule: PasteRule, threshold: float | None
) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]]:
    """The pasted values of every detection over its window, a chunk of detections at a time.

    Yields ``(idx, values, y0, y1, x0, x1)``: detections ``idx (C,)``, their values
    ``(C, span_y, span_x)`` (thresholded to bool with a ``threshold``), and
    their windows: rows ``y0 .. y1 - 1`` and columns ``x0 .. x1 - 1`` of the image
    (the top-left ``(y1 - y0, x1 - x0)`` of each values plane; the rest is padding).
    """
    h, w = size
    if rule not in get_args(PasteRule):
        raise ValueError(f"unknown paste rule {rule!r}: expected one of {get_args(PasteRule)}")
    if masks.shape[0] == 0:
        return
    boxes = boxes.float()
    if rule == "torchvision":
        ibox, _, _ = _torchvision_boxes(boxes, masks.shape[-1])
        x0 = ibox[:, 0].clamp(min=0, max=w)
        y0 = ibox[:, 1].clamp(min=0, max=h)
        x1 = (ibox[:, 2] + 1).clamp(max=w)
        y1 = (ibox[:, 3] + 1).clamp(max=h)
    else:
        y0, y1, x0, x1 = _sampling_windows(boxes, size)
        # A box beyond the image's far edge has an empty window: put it at the edge.
        x0, y0 = x0.clamp(max=w), y0.clamp(max=h)
    x1 = torch.maximum(x1, x0)
    y1 = torch.maximum(y1, y0)
    # Chunks of detections of similar window area, each window counted at the chunk's largest area.
    for idx in size_chunks((y1 - y0) * (x1 - x0), _CHUNK_ELEMENTS):
        span_y = int((y1[idx] - y0[idx]).max())
        span_x = int((x1[idx] - x0[idx]).max())
        if span_y == 0 or span_x == 0:
            values = masks.new_zeros((len(idx), span_y, span_x), dtype=torch.bool if threshold is not None
                                     else torch.float32)
        else:
            values = pasted_values(masks[idx], boxes[idx], rule, y0[idx], x0[idx], span_y, span_x)
            if threshold is not None:
                values = binarise(values, rule, threshold)
        yield idx, values, y0[idx], y1[idx], x0[idx], x1[idx]


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    size: tuple[int, int],
    rule: PasteRule = "torchvision",
    threshold: float | None = 0.5,
) -> Tensor:
    """Paste ``masks (D, S, S)`` into ``(D, H, W)`` images at ``boxes (D, 4)``.

    With a ``threshold`` the result is bool (``value > threshold`` for the
    torchvision rule, ``>=`` for Detectron2's, as each framework does);
    without one it is the float probabilities. Each detection is computed
    over the window of the image its box can reach.
    """
    h, w = size
    d = masks.shape[0]
    dtype = torch.bool if threshold is not None else torch.float32
    out = torch.zeros((d, h, w), dtype=dtype, device=masks.device)
    for idx, values, y0, y1, x0, x1 in _pasted_chunks(masks, boxes, size, rule, threshold):
        span_y, span_x = values.shape[1:]
        if span_y == 0 or span_x == 0:
            continue
        rows = y0[:, None] + torch.arange(span_y, device=masks.device)
        cols = x0[:, None] + torch.arange(span_x, device=masks.device)
        inside = (rows < y1[:, None])[:, :, None] & (cols < x1[:, None])[:, None, :]
        det = idx[:, None, None].expand_as(inside)
        out[det[inside], rows[:, :, None].expand_as(inside)[inside],
            cols[:, None, :].expand_as(inside)[inside]] = values[inside].to(dtype)
    return out


def paste_mask_crops(
    masks: Tensor,
    boxes: Tensor,
    size: tuple[int, int],
    rule: PasteRule = "torchvision",
    threshold: float = 0.5,
) -> MaskCrops:
    """:func:`paste_masks`, thresholded, with each mask kept over its window only (bounded memory).

    ``crops.dense()`` equals ``paste_masks(masks, boxes, size, rule, threshold)``
    bit for bit: the same values, computed over the same windows.
    """
    d = masks.shape[0]
    windows = torch.zeros((d, 4), dtype=torch.int64, device=masks.device)
    crops: list[Tensor] = [masks.new_zeros((0, 0), dtype=torch.bool)] * d
    for idx, values, y0, y1, x0, x1 in _pasted_chunks(masks, boxes, size, rule, threshold):
        windows[idx] = torch.stack([x0, y0, x1, y1], dim=1).long()
        spans = zip(idx.tolist(), (y1 - y0).tolist(), (x1 - x0).tolist(), strict=True)
        for k, (i, hh, ww) in enumerate(spans):
            crops[i] = values[k, :hh, :ww].clone()
    return MaskCrops(windows, crops, (int(size[0]), int(size[1])))
