"""RoIAlign (Mask R-CNN, Section 3), vectorised and differentiable.

For each RoI and each of the ``P x P`` bins, ``g_h x g_w`` points are placed
at regular positions inside the bin, the feature map is sampled there by
bilinear interpolation, and the samples are averaged. Nothing is rounded:
neither the RoI nor the bin edges.

Conventions, as in torchvision's ``roi_align``:

- ``aligned=False`` (torchvision, Detectron1): RoI corners are scaled by
  ``spatial_scale`` as they are, and a RoI is at least 1 x 1 feature pixel.
- ``aligned=True`` (Detectron2's ROIAlignV2): corners are shifted by -0.5 so
  that a box edge at pixel coordinate ``x`` samples the feature whose centre
  is at ``x``; no minimum size.
- ``sampling_ratio > 0`` fixes ``g``; ``0`` adapts it, ``ceil(roi_size / P)``.
- A sample more than one pixel outside the map is 0; one within a pixel of
  the border is clamped onto it.

How it is computed: bilinear weights factor into a row weight times a column
weight, so the average over a bin is ``Wy @ F @ Wx^T`` where ``Wy (P, h)``
and ``Wx (P, w)`` hold, for each bin, the summed sample weights over the rows
and columns of a window of the feature map that covers the RoI. RoIs are
processed in chunks of similar window size; each chunk gathers its windows
``(R, h, w, C)`` and does two batched matrix products. The gradient flows to
the features (the RoIs are treated as constants, as in training) through the
transposed products, added into one map-sized buffer (``_RoIAlignFunction``).

Shapes: ``features (N, C, H, W)``, ``rois (R, 5)`` as ``(batch_index, x0,
y0, x1, y1)`` in input pixels, output ``(R, C, P, P)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .chunks import size_chunks

# Elements gathered per chunk (R * h * w * C). Small chunks are much faster on
# the CPU, not only lighter: a buffer of a few MB is reused by the allocator,
# while a fresh large one costs a page fault per 4 KB on first touch (a 1000-RoI
# gather measured 40 ms in 8 MB chunks and 270 ms in one piece).
_CHUNK_ELEMENTS = 1 << 21


def _axis_weights(
    start: Tensor, size: Tensor, bins: int, grid: Tensor, length: int
) -> tuple[Tensor, Tensor, int]:
    """Per-RoI bilinear weights along one axis, summed per bin.

    ``start``, ``size``: ``(R,)`` RoI start and extent in feature pixels;
    ``grid``: ``(R,)`` samples per bin; ``length``: feature map size on this axis.
    Returns the window origin ``(R,)`` (int64), weights ``(R, bins, L)`` over
    the window ``origin .. origin + L - 1``, and ``L``.
    """
    r = start.shape[0]
    g_max = max(int(grid.max()), 1) if r else 1
    bin_size = size / bins
    # (R, bins, g_max) sample coordinates, in the operation order of the C++ kernels.
    p = torch.arange(bins, device=start.device, dtype=start.dtype)[None, :, None]
    i = torch.arange(g_max, device=start.device, dtype=start.dtype)[None, None, :]
    g = grid.to(start.dtype).clamp(min=1)[:, None, None]
    coord = start[:, None, None] + p * bin_size[:, None, None] + (i + 0.5) * bin_size[:, None, None] / g
    used = i < grid[:, None, None]
    inside = (coord >= -1.0) & (coord <= length)
    coord = coord.clamp(min=0)
    low = coord.floor().long().clamp(max=length - 1)
    at_edge = low >= length - 1
    coord = torch.where(at_edge, low.to(coord.dtype), coord)
    high = torch.where(at_edge, low, low + 1)
    frac = coord - low.to(coord.dtype)
    # The weights sum the samples; the caller divides by the bin's sample count
    # g_h * g_w once at the end, as the peers' kernels do (dividing each axis by
    # its g here would round 1/g, and an exact 0.5 could come out 0.49999997).
    scale = (used & inside).to(coord.dtype)
    w_low = (1.0 - frac) * scale
    w_high = frac * scale

    big = torch.iinfo(torch.int64).max
    origin = torch.where(used & inside, low, big).amin(dim=(1, 2)).clamp(max=length - 1)
    last = torch.where(used & inside, high, -1).amax(dim=(1, 2))
    span = int((last - origin).max().clamp(min=0)) + 1 if r else 1
    weights = torch.zeros(r, bins, span, dtype=coord.dtype, device=coord.device)
    rel_low = (low - origin[:, None, None]).clamp(0, span - 1)
    rel_high = (high - origin[:, None, None]).clamp(0, span - 1)
    weights.scatter_add_(2, rel_low, w_low)
    weights.scatter_add_(2, rel_high, w_high)
    return origin, weights, span


@dataclass
class _ChunkPlan:
    """What one chunk of RoIs reads: ``index (R, sy, sx)`` rows of the flattened ``(N*H*W, C)`` map
    (the window each RoI covers), the summed bilinear weights ``wy (R, P, sy)`` and ``wx (R, P, sx)``
    over the window's rows and columns, and ``count (R,)`` samples per bin."""

    index: Tensor
    wy: Tensor
    wx: Tensor
    count: Tensor


def _plan_chunk(
    shape: tuple[int, int, int], rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int,
    aligned: bool,
) -> _ChunkPlan:
    n, h, w = shape
    offset = 0.5 if aligned else 0.0
    x0 = rois[:, 1] * spatial_scale - offset
    y0 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x0
    roi_h = rois[:, 4] * spatial_scale - offset - y0
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        gy = torch.full_like(roi_h, sampling_ratio, dtype=torch.int64)
        gx = gy
    else:
        gy = torch.ceil(roi_h / output_size).long()
        gx = torch.ceil(roi_w / output_size).long()
    oy, wy, sy = _axis_weights(y0, roi_h, output_size, gy, h)
    ox, wx, sx = _axis_weights(x0, roi_w, output_size, gx, w)
    rows = (oy[:, None] + torch.arange(sy, device=rois.device)).clamp(max=h - 1)
    cols = (ox[:, None] + torch.arange(sx, device=rois.device)).clamp(max=w - 1)
    batch = rois[:, 0].long()
    index = (batch[:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]
    return _ChunkPlan(index, wy, wx, gy.clamp(min=1) * gx.clamp(min=1))


def _align_chunk(flat: Tensor, plan: _ChunkPlan) -> Tensor:
    """``(R, P, P, C)``: the average over each bin's samples, ``Wy @ window @ Wx^T / count``."""
    r, sy, sx = plan.index.shape
    p, c = plan.wy.shape[1], flat.shape[1]
    # A row gather of C contiguous values per feature pixel: (R, sy, sx, C).
    window = flat.index_select(0, plan.index.reshape(-1)).view(r, sy, sx * c)
    # Rows: (R, P, sy) @ (R, sy, sx*C) -> (R, P, sx, C)
    t = torch.bmm(plan.wy.to(flat.dtype), window).view(r, p, sx, c)
    # Columns: (R, 1, P, sx) @ (R, P, sx, C) -> (R, P, P, C)
    total = torch.matmul(plan.wx.to(flat.dtype)[:, None], t)
    return total / plan.count.to(flat.dtype)[:, None, None, None]


def _align_chunk_backward(grad: Tensor, plan: _ChunkPlan, grad_flat: Tensor) -> None:
    """Add into ``grad_flat (N*H*W, C)`` the gradient of ``_align_chunk`` for ``grad (R, P, P, C)``.

    Each sample spreads its bin's gradient over its four bilinear neighbours;
    summed over a bin's samples, the row and column weights factor, so the
    window's gradient is ``Wy^T @ (grad / count) @ Wx``, ``(R, sy, sx, C)``,
    added row by row into the map where the windows lie.
    """
    r, sy, sx = plan.index.shape
    p, c = plan.wy.shape[1], grad.shape[-1]
    g = grad / plan.count.to(grad.dtype)[:, None, None, None]
    # Columns: (R, 1, sx, P) @ (R, P, P, C) -> (R, P, sx, C)
    t = torch.matmul(plan.wx.to(grad.dtype).transpose(1, 2)[:, None], g)
    # Rows: (R, sy, P) @ (R, P, sx*C) -> (R, sy, sx*C)
    window = torch.bmm(plan.wy.to(grad.dtype).transpose(1, 2), t.reshape(r, p, sx * c))
    grad_flat.index_add_(0, plan.index.reshape(-1), window.view(r * sy * sx, c))


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """RoIAlign of ``rois (R, 5)`` on ``features (N, C, H, W)`` -> ``(R, C, P, P)``.

    Differentiable with respect to ``features`` (``_RoIAlignFunction``).
    """
    n, c, h, w = features.shape
    if rois.shape[0] == 0:
        return features.new_zeros((0, c, output_size, output_size))
    # Constants: no gradient flows to the RoIs (as in training, where proposals are detached).
    rois = rois.detach().to(torch.float64 if features.dtype == torch.float64 else torch.float32)
    if torch.is_grad_enabled() and features.requires_grad:
        return _RoIAlignFunction.apply(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return _roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)[0]


def _plans(
    features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> tuple[list[Tensor], list[_ChunkPlan]]:
    """The RoIs in chunks of similar window size, and what each chunk reads.

    Windows within a factor of two of each other (octaves) share a chunk, so
    padding them to the largest at most doubles the work.
    """
    n, c, h, w = features.shape
    extent = ((rois[:, 3] - rois[:, 1]) * spatial_scale + 3) * ((rois[:, 4] - rois[:, 2]) * spatial_scale + 3)
    chunks = size_chunks(extent * c, _CHUNK_ELEMENTS, octaves=True)
    plans = [_plan_chunk((n, h, w), rois[idx], output_size, spatial_scale, sampling_ratio, aligned)
             for idx in chunks]
    return chunks, plans


def _roi_align(
    features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> tuple[Tensor, list[Tensor], list[_ChunkPlan]]:
    """The output ``(R, C, P, P)`` (a channels-last view), and the chunks and plans that made it."""
    n, c, h, w = features.shape
    chunks, plans = _plans(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    # Channel-last rows so that a window gather reads C contiguous values.
    flat = features.permute(0, 2, 3, 1).reshape(n * h * w, c)
    pieces = [_align_chunk(flat, plan) for plan in plans]
    # (R, P, P, C) in size order -> input order, viewed as (R, C, P, P): the
    # channels-last layout that convolutions on the CPU prefer anyway.
    out = torch.cat(pieces)[torch.argsort(torch.cat(chunks))]
    return out.permute(0, 3, 1, 2), chunks, plans


class _RoIAlignFunction(torch.autograd.Function):
    """RoIAlign with its own backward: one gradient buffer for the map, each window's gradient added
    into it (``_align_chunk_backward``). Differentiating through the forward's gather instead makes
    autograd zero and sum a map-sized buffer per chunk, and that dominated a training step."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int,
        aligned: bool,
    ) -> Tensor:
        out, chunks, plans = _roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
        ctx.chunks, ctx.plans = chunks, plans
        ctx.feature_shape, ctx.feature_dtype = features.shape, features.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        n, c, h, w = ctx.feature_shape
        # Summed in float32 at least: under bfloat16 autocast, overlapping windows add many small
        # contributions into one pixel, which bfloat16's 8 bits would round away.
        accumulate = torch.promote_types(ctx.feature_dtype, torch.float32)
        grad_flat = grad_out.new_zeros((n * h * w, c), dtype=accumulate)
        grad = grad_out.permute(0, 2, 3, 1)  # (R, P, P, C)
        # A backward called inside an autocast block would otherwise run the products in its type.
        with torch.autocast(grad_out.device.type, enabled=False):
            for idx, plan in zip(ctx.chunks, ctx.plans, strict=True):
                _align_chunk_backward(grad[idx].to(accumulate), plan, grad_flat)
        # (N*H*W, C) -> (N, C, H, W) channels-last, as the features usually are.
        grad_features = grad_flat.view(n, h, w, c).permute(0, 3, 1, 2).to(ctx.feature_dtype)
        return grad_features, None, None, None, None, None
