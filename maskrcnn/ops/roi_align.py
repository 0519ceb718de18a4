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
``(R, h, w, C)`` and does two batched matrix products. Autograd flows to the
features (the RoIs are treated as constants, as in training).

Shapes: ``features (N, C, H, W)``, ``rois (R, 5)`` as ``(batch_index, x0,
y0, x1, y1)`` in input pixels, output ``(R, C, P, P)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

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


def _align_chunk(
    flat: Tensor, shape: tuple[int, int, int], rois: Tensor, output_size: int,
    spatial_scale: float, sampling_ratio: int, aligned: bool,
) -> Tensor:
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
    rows = (oy[:, None] + torch.arange(sy, device=flat.device)).clamp(max=h - 1)
    cols = (ox[:, None] + torch.arange(sx, device=flat.device)).clamp(max=w - 1)
    batch = rois[:, 0].long()
    index = (batch[:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]
    r, c = index.shape[0], flat.shape[1]
    # A row gather of C contiguous values per feature pixel: (R, sy, sx, C).
    window = flat.index_select(0, index.reshape(-1)).view(r, sy, sx * c)
    # Rows: (R, P, sy) @ (R, sy, sx*C) -> (R, P, sx, C)
    t = torch.bmm(wy.to(flat.dtype), window).view(r, output_size, sx, c)
    # Columns: (R, 1, P, sx) @ (R, P, sx, C) -> (R, P, P, C)
    total = torch.matmul(wx.to(flat.dtype)[:, None], t)
    count = (gy.clamp(min=1) * gx.clamp(min=1)).to(flat.dtype)  # samples per bin
    return total / count[:, None, None, None]


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """RoIAlign of ``rois (R, 5)`` on ``features (N, C, H, W)`` -> ``(R, C, P, P)``."""
    n, c, h, w = features.shape
    r = rois.shape[0]
    if r == 0:
        return features.new_zeros((0, c, output_size, output_size))
    rois = rois.to(torch.float64 if features.dtype == torch.float64 else torch.float32)
    # Channel-last rows so that a window gather reads C contiguous values.
    flat = features.permute(0, 2, 3, 1).reshape(n * h * w, c)
    # Chunk RoIs of similar size together so that padding windows wastes little:
    # windows within a factor of two of each other (octaves) share a chunk, so
    # padding them to the largest at most doubles the work.
    extent = ((rois[:, 3] - rois[:, 1]) * spatial_scale + 3) * ((rois[:, 4] - rois[:, 2]) * spatial_scale + 3)
    chunks = size_chunks(extent * c, _CHUNK_ELEMENTS, octaves=True)
    pieces = [
        _align_chunk(flat, (n, h, w), rois[idx], output_size, spatial_scale, sampling_ratio, aligned)
        for idx in chunks
    ]
    # (R, P, P, C) in size order -> input order, viewed as (R, C, P, P): the
    # channels-last layout that convolutions on the CPU prefer anyway.
    out = torch.cat(pieces)[torch.argsort(torch.cat(chunks))]
    return out.permute(0, 3, 1, 2)
