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

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

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


def _pool_chunk(
    features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, *, with_argmax: bool = False
) -> tuple[Tensor, Tensor | None]:
    """``(R, P, P, C)`` bin maxima of a chunk, and (``with_argmax``) where each came from: its row of the
    flattened ``(N*H*W, C)`` map, ``(R, P, P, C)`` int64; ``N*H*W``, one past the map, for an empty bin
    (its output is the constant 0)."""
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
    empty = ~(in_row.any(dim=2)[:, :, None] & in_col.any(dim=2)[:, None, :])  # (R, P, P)
    # Rows of each bin: (R, P, sy, sx, C) -> (R, P, sx, C)
    by_rows = torch.where(in_row[:, :, :, None, None], window[:, None], low)
    # Columns of each bin: (R, P, 1, sx, C) with (R, 1, P, sx, 1) -> (R, P, P, C)
    if not with_argmax:
        t = by_rows.amax(dim=2)
        out = torch.where(in_col[:, None, :, :, None], t[:, :, None], low).amax(dim=3)
        return out.masked_fill(empty[..., None], 0.0), None
    t, row_at = by_rows.max(dim=2)  # (R, P, sx, C): the window row of each column's maximum
    out, col_at = torch.where(in_col[:, None, :, :, None], t[:, :, None], low).max(dim=3)  # (R, P, P, C)
    r, p = out.shape[:2]
    # The row of the chosen column's maximum: row_at[r, py, col_at[r, py, px, c], c].
    row_of = row_at[:, :, None].expand(r, p, p, sx, c).gather(3, col_at[:, :, :, None]).squeeze(3)
    y = rows.clamp(max=h - 1).gather(1, row_of.reshape(r, -1)).view(r, p, p, c)
    x = cols.clamp(max=w - 1).gather(1, col_at.reshape(r, -1)).view(r, p, p, c)
    past_the_map = features.shape[0] * h * w
    argmax = ((batch[:, None, None, None] * h + y) * w + x).masked_fill(empty[..., None], past_the_map)
    return out.masked_fill(empty[..., None], 0.0), argmax


def _chunks(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float) -> list[Tensor]:
    c = features.shape[1]
    # Window (w, h) of each RoI; a chunk's masked maxima are (R, P, h, w, C) over rows, then
    # (R, P, P, w, C) over columns, at its largest window: cost P * C * w * max(h, P) per RoI.
    side = (rois[:, 3:5] - rois[:, 1:3]) * spatial_scale + 2
    side = torch.stack((side[:, 0], side[:, 1].clamp(min=output_size)), dim=1)
    return size_chunks(side, _CHUNK_ELEMENTS // (output_size * c))


def _roi_pool(
    features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, with_argmax: bool
) -> tuple[Tensor, Tensor | None]:
    """``(R, P, P, C)`` maxima in input order, and (``with_argmax``) their map rows, as ``_pool_chunk``."""
    chunks = _chunks(features, rois, output_size, spatial_scale)
    pieces = [_pool_chunk(features, rois[idx], output_size, spatial_scale, with_argmax=with_argmax)
              for idx in chunks]
    order = torch.argsort(torch.cat(chunks))
    out = torch.cat([v for v, _ in pieces])[order]
    argmax = torch.cat([a for _, a in pieces if a is not None])[order] if with_argmax else None
    return out, argmax


class _RoIPoolFunction(torch.autograd.Function):
    """RoIPool whose backward gives each bin's gradient to the pixel its maximum came from (as the
    peers' kernels do), added into one map-sized buffer. Differentiating the masked maxima instead
    made autograd build and sum a map-sized gradient per chunk: 1.4 s for 512 RoIs on a P2 map."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, features: Tensor, rois: Tensor, output_size: int, spatial_scale: float
    ) -> Tensor:
        out, argmax = _roi_pool(features, rois, output_size, spatial_scale, with_argmax=True)
        ctx.save_for_backward(argmax)
        ctx.feature_shape, ctx.feature_dtype = features.shape, features.dtype
        return out.permute(0, 3, 1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (argmax,) = ctx.saved_tensors
        n, c, h, w = ctx.feature_shape
        accumulate = torch.promote_types(ctx.feature_dtype, torch.float32)
        # One row past the map takes the gradient of the empty bins, and is dropped.
        grad_flat = grad_out.new_zeros((n * h * w + 1, c), dtype=accumulate)
        grad = grad_out.permute(0, 2, 3, 1).to(accumulate).reshape(-1, c)  # (R*P*P, C)
        grad_flat.scatter_add_(0, argmax.reshape(-1, c), grad)
        grad_features = grad_flat[:-1].view(n, h, w, c).permute(0, 3, 1, 2).to(ctx.feature_dtype)
        return grad_features, None, None, None


def roi_pool(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float) -> Tensor:
    """RoIPool of ``rois (R, 5)`` on ``features (N, C, H, W)`` -> ``(R, C, P, P)``; differentiable with
    respect to ``features``."""
    n, c, h, w = features.shape
    r = rois.shape[0]
    if r == 0:
        return features.new_zeros((0, c, output_size, output_size))
    rois = rois.detach().to(torch.float64 if features.dtype == torch.float64 else torch.float32)
    if torch.is_grad_enabled() and features.requires_grad:
        return _RoIPoolFunction.apply(features, rois, output_size, spatial_scale)
    return _roi_pool(features, rois, output_size, spatial_scale, with_argmax=False)[0].permute(0, 3, 1, 2)


def roi_warp(
    features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int
) -> Tensor:
    """RoIWarp: the RoI rounded to feature pixels, then sampled bilinearly (``(R, C, P, P)``)."""
    quantised = rois.clone()
    quantised[:, 1:] = round_half_away(rois[:, 1:] * spatial_scale)
    return roi_align(features, quantised, output_size, 1.0, sampling_ratio, aligned=False)
