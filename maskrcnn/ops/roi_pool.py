"""RoIPool (Fast R-CNN) and RoIWarp (MNC): the quantised baselines of the paper's Table 2c.

RoIPool rounds the RoI to feature-map pixels, divides it into ``P x P`` bins
whose edges are rounded again (start down, end up), and max-pools each bin:
two quantisations that misalign the pooled features with the RoI. A bin that
lies entirely outside the map gives 0. This is adaptive max pooling of the
rounded crop, computed here for all RoIs of a chunk at once: each RoI's
window of the map is gathered, and the max over each bin is taken along rows
and then along columns with per-RoI bin masks.

RoIWarp rounds the RoI to feature-map pixels like RoIPool, then samples it
bilinearly like RoIAlign: one quantisation instead of two.

Shapes: ``features (N, C, H, W)``, ``rois (R, 5)`` as ``(batch_index, x0, y0,
x1, y1)`` in input pixels, output ``(R, C, P, P)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .chunks import size_chunks
from .roi_align import roi_align

# Elements of the masked (R, P, h, w, C) max computed at once.
_CHUNK_ELEMENTS = 1 << 22


def round_half_away(x: Tensor) -> Tensor:
    """Rounding as C's ``round``: halves away from zero (``torch.round`` rounds halves to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _bin_edges(start: Tensor, size: Tensor, bins: int, length: int) -> tuple[Tensor, Tensor]:
    """``(R, bins)`` integer bin starts and ends (exclusive), clipped to ``[0, length]``."""
    p = torch.arange(bins, device=start.device, dtype=torch.float32)
    bin_size = size.float()[:, None] / bins
    lo = torch.floor(p * bin_size).long() + start[:, None]
    hi = torch.ceil((p + 1) * bin_size).long() + start[:, None]
    return lo.clamp(0, length), hi.clamp(0, length)


def _pool_chunk(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float) -> Tensor:
    _, c, h, w = features.shape
    x0 = round_half_away(rois[:, 1] * spatial_scale).long()
    y0 = round_half_away(rois[:, 2] * spatial_scale).long()
    x1 = round_half_away(rois[:, 3] * spatial_scale).long()
    y1 = round_half_away(rois[:, 4] * spatial_scale).long()
    ylo, yhi = _bin_edges(y0, (y1 - y0 + 1).clamp(min=1), output_size, h)
    xlo, xhi = _bin_edges(x0, (x1 - x0 + 1).clamp(min=1), output_size, w)
    # A window of the map that holds every (clipped) bin of each RoI.
    oy = ylo.amin(dim=1).clamp(max=h - 1)
    ox = xlo.amin(dim=1).clamp(max=w - 1)
    sy = int((yhi.amax(dim=1) - oy).clamp(min=1).max())
    sx = int((xhi.amax(dim=1) - ox).clamp(min=1).max())
    rows = oy[:, None] + torch.arange(sy, device=rois.device)  # (R, sy)
    cols = ox[:, None] + torch.arange(sx, device=rois.device)  # (R, sx)
    batch = rois[:, 0].long()
    window = features[batch[:, None, None], :, rows.clamp(max=h - 1)[:, :, None],
                      cols.clamp(max=w - 1)[:, None, :]]  # (R, sy, sx, C)
    in_row = (rows[:, None, :] >= ylo[:, :, None]) & (rows[:, None, :] < yhi[:, :, None])  # (R, P, sy)
    in_col = (cols[:, None, :] >= xlo[:, :, None]) & (cols[:, None, :] < xhi[:, :, None])  # (R, P, sx)
    low = torch.finfo(window.dtype).min
    # Rows of each bin: (R, P, sy, sx, C) -> (R, P, sx, C)
    t = torch.where(in_row[:, :, :, None, None], window[:, None], low).amax(dim=2)
    # Columns of each bin: (R, P, 1, sx, C) with (R, 1, P, sx, 1) -> (R, P, P, C)
    out = torch.where(in_col[:, None, :, :, None], t[:, :, None], low).amax(dim=3)
    empty = ~(in_row.any(dim=2)[:, :, None] & in_col.any(dim=2)[:, None, :])  # (R, P, P)
    out = out.masked_fill(empty[..., None], 0.0)
    return out.permute(0, 3, 1, 2)


def roi_pool(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float) -> Tensor:
    """RoIPool of ``rois (R, 5)`` on ``features (N, C, H, W)`` -> ``(R, C, P, P)``."""
    n, c, h, w = features.shape
    r = rois.shape[0]
    if r == 0:
        return features.new_zeros((0, c, output_size, output_size))
    rois = rois.to(torch.float64 if features.dtype == torch.float64 else torch.float32)
    # Window (w, h) of each RoI; a chunk's masked maxima are (R, P, h, w, C) over rows, then
    # (R, P, P, w, C) over columns, at its largest window: cost P * C * w * max(h, P) per RoI.
    side = (rois[:, 3:5] - rois[:, 1:3]) * spatial_scale + 2
    side = torch.stack((side[:, 0], side[:, 1].clamp(min=output_size)), dim=1)
    chunks = size_chunks(side, _CHUNK_ELEMENTS // (output_size * c))
    pieces = [_pool_chunk(features, rois[idx], output_size, spatial_scale) for idx in chunks]
    return torch.cat(pieces)[torch.argsort(torch.cat(chunks))]


def roi_warp(
    features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int
) -> Tensor:
    """RoIWarp: the RoI rounded to feature pixels, then sampled bilinearly (``(R, C, P, P)``)."""
    quantised = rois.clone()
    quantised[:, 1:] = round_half_away(rois[:, 1:] * spatial_scale)
    return roi_align(features, quantised, output_size, 1.0, sampling_ratio, aligned=False)
