"""Tests for maskrcnn.ops.roi_align against a slow, direct implementation of the definition."""

from __future__ import annotations

import math
import sys
from itertools import product

import numpy as np
import pytest
import torch

from maskrcnn.ops.roi_align import roi_align

# The module, not the function of the same name that maskrcnn.ops re-exports.
ROI_ALIGN_MODULE = sys.modules["maskrcnn.ops.roi_align"]


def _bilinear(channels: np.ndarray, y: float, x: float) -> np.ndarray:
    """Bilinear value of ``channels (C, H, W)`` at ``(y, x)``, with RoIAlign's border rules."""
    _, h, w = channels.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(channels.shape[0])
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= h - 1:
        y_low = y_high = h - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_low = x_high = w - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * channels[:, y_low, x_low]
        + hy * lx * channels[:, y_low, x_high]
        + ly * hx * channels[:, y_high, x_low]
        + ly * lx * channels[:, y_high, x_high]
    )


def _reference_roi_align(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """One RoI, one bin, one sample point at a time."""
    feats = features.detach().numpy().astype(np.float64)
    out = np.zeros((rois.shape[0], features.shape[1], output_size, output_size))
    offset = 0.5 if aligned else 0.0
    for r, (b, x0, y0, x1, y1) in enumerate(rois.tolist()):
        start_x = x0 * spatial_scale - offset
        start_y = y0 * spatial_scale - offset
        roi_w = x1 * spatial_scale - offset - start_x
        roi_h = y1 * spatial_scale - offset - start_y
        if not aligned:  # Detectron1 / torchvision: at least one feature pixel.
            roi_w = max(roi_w, 1.0)
            roi_h = max(roi_h, 1.0)
        bin_w = roi_w / output_size
        bin_h = roi_h / output_size
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / output_size)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / output_size)
        count = max(grid_h * grid_w, 1)
        for ph in range(output_size):
            for pw in range(output_size):
                total = np.zeros(features.shape[1])
                for iy in range(grid_h):
                    y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_x + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        total += _bilinear(feats[int(b)], y, x)
                out[r, :, ph, pw] = total / count
    return torch.from_numpy(out)


def _features(n: int = 3, c: int = 3, h: int = 11, w: int = 13, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g, dtype=torch.float64)


def _rois(scale: float) -> torch.Tensor:
    """RoIs in input pixels for a feature map of about 11 x 13 at ``scale``."""
    in_feature_pixels = [
        (0, 1.3, 2.2, 7.9, 9.4),  # inside
        (1, 0.0, 0.0, 13.0, 11.0),  # the whole map
        (2, 4.6, 3.1, 6.2, 4.05),  # small, below one pixel on y
        (0, -3.7, -2.4, 4.3, 5.6),  # partly outside, top-left
        (1, 8.2, 6.7, 17.3, 14.9),  # partly outside, bottom-right
        (2, 20.3, 15.2, 27.7, 22.1),  # entirely outside
        (0, 3.4, 2.1, 3.4, 8.6),  # degenerate: zero width
        (1, 5.0, 5.0, 5.0, 5.0),  # degenerate: a point
        (2, 0.45, 7.3, 12.6, 10.8),  # wide and flat
    ]
    return torch.tensor(
        [(b, x0 / scale, y0 / scale, x1 / scale, y1 / scale) for b, x0, y0, x1, y1 in in_feature_pixels],
        dtype=torch.float64,
    )


_CASES = list(product([False, True], [1, 2, 0], [1.0, 0.25]))


@pytest.mark.parametrize(("aligned", "sampling_ratio", "spatial_scale"), _CASES)
def test_matches_direct_definition(aligned: bool, sampling_ratio: int, spatial_scale: float) -> None:
    features = _features()
    rois = _rois(spatial_scale)
    for output_size in (2, 7, 14):
        if output_size == 14 and sampling_ratio == 0 and spatial_scale == 0.25:
            continue  # the slowest combination; adaptive sampling at size 14 is covered at scale 1
        got = roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
        assert got.shape == (rois.shape[0], 3, output_size, output_size)
        assert got.dtype == torch.float64
        expected = _reference_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12, msg=f"output_size={output_size}")


def test_adaptive_sampling_on_large_rois() -> None:
    # RoIs of 20+ feature pixels: ceil(roi / P) samples per bin, differing between the axes.
    features = _features(n=1, h=30, w=34, seed=3)
    rois = torch.tensor([[0, 1.2, 0.7, 31.9, 12.4], [0, 3.3, 2.0, 9.1, 28.8]], dtype=torch.float64)
    for aligned in (False, True):
        got = roi_align(features, rois, 5, 1.0, 0, aligned)
        torch.testing.assert_close(
            got, _reference_roi_align(features, rois, 5, 1.0, 0, aligned), rtol=0, atol=1e-12
        )


def test_entirely_outside_is_zero() -> None:
    features = _features()
    rois = torch.tensor([[0, 40.0, 40.0, 60.0, 60.0], [1, -30.0, -30.0, -10.0, -5.0]], dtype=torch.float64)
    for aligned in (False, True):
        assert bool((roi_align(features, rois, 7, 1.0, 2, aligned) == 0).all())


def test_hand_computed_centre_sample() -> None:
    # f(y, x) = 4 y + x on a 4 x 4 map, one bin, one sample at the RoI centre.
    features = torch.arange(16, dtype=torch.float64).reshape(1, 1, 4, 4)
    # aligned=False, RoI (0, 0, 3, 3): centre (1.5, 1.5), between 5, 6, 9, 10: 7.5.
    rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]], dtype=torch.float64)
    assert roi_align(features, rois, 1, 1.0, 1, False).item() == pytest.approx(7.5, abs=1e-12)
    # aligned=False, RoI (0, 0, 4, 4): centre (2, 2), exactly pixel 4 * 2 + 2 = 10.
    rois = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]], dtype=torch.float64)
    assert roi_align(features, rois, 1, 1.0, 1, False).item() == pytest.approx(10.0, abs=1e-12)
    # aligned=True, RoI (0, 0, 4, 4) covering the map: shifted by -0.5, centre (1.5, 1.5): 7.5,
    # the mean of the map, as the half-pixel correction intends.
    assert roi_align(features, rois, 1, 1.0, 1, True).item() == pytest.approx(7.5, abs=1e-12)
    # aligned=True, 2 x 2 output, one sample per bin: bin centres at 0.5 and 2.5 on each axis.
    got = roi_align(features, rois, 2, 1.0, 1, True)
    expected = torch.tensor(
        [[[[4 * 0.5 + 0.5, 4 * 0.5 + 2.5], [4 * 2.5 + 0.5, 4 * 2.5 + 2.5]]]], dtype=torch.float64
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    # aligned=False, RoI (2, 2, 5, 5), one 3 x 3 bin with 2 x 2 samples: each axis
    # samples 2 + 0.75 = 2.75 and 2 + 2.25 = 4.25. 4.25 > W = 4 lies outside: 0.
    # Only (2.75, 2.75) counts: f = 4 * 2.75 + 2.75 = 13.75, averaged over 4 samples.
    rois = torch.tensor([[0, 2.0, 2.0, 5.0, 5.0]], dtype=torch.float64)
    assert roi_align(features, rois, 1, 1.0, 2, False).item() == pytest.approx(13.75 / 4, abs=1e-12)
    # aligned=False, RoI (2, 2, 4.6, 4.6): samples at 2.65 and 3.95 on each axis;
    # 3.95 is within a pixel of the border and reads the last row / column (3).
    # Mean of 4 y + x over y, x in {2.65, 3}: 5 * 2.825 = 14.125.
    rois = torch.tensor([[0, 2.0, 2.0, 4.6, 4.6]], dtype=torch.float64)
    assert roi_align(features, rois, 1, 1.0, 2, False).item() == pytest.approx(14.125, abs=1e-12)
    # A sample exactly one pixel outside (x = -1, y = H = 4) still counts, clamped onto
    # the border: f(3, 0) = 12. A little further out (x = -1.1, y = 4.1) it is 0.
    rois = torch.tensor([[0, -1.5, 3.5, -0.5, 4.5], [0, -1.6, 3.6, -0.6, 4.6]], dtype=torch.float64)
    assert roi_align(features, rois, 1, 1.0, 1, False).flatten().tolist() == [12.0, 0.0]


@pytest.mark.parametrize("aligned", [False, True])
def test_constant_map_gives_constant(aligned: bool) -> None:
    features = torch.full((2, 3, 16, 20), 3.25, dtype=torch.float64)
    rois = torch.tensor(
        [
            [0, 1.0, 1.0, 18.0, 14.0],
            [1, 2.3, 4.7, 9.1, 6.2],
            [1, 0.5, 0.5, 19.5, 15.5],
            [0, 7.2, 3.3, 7.9, 3.6],
        ],
        dtype=torch.float64,
    )
    for sampling_ratio in (1, 2, 0):
        got = roi_align(features, rois, 7, 1.0, sampling_ratio, aligned)
        torch.testing.assert_close(got, torch.full_like(got, 3.25), rtol=0, atol=1e-12)


def test_empty_rois() -> None:
    out = roi_align(_features(), torch.zeros(0, 5, dtype=torch.float64), 7, 1.0, 2, False)
    assert out.shape == (0, 3, 7, 7)


def test_float32_matches_float64() -> None:
    features = _features()
    rois = _rois(0.25)
    for aligned in (False, True):
        got = roi_align(features.float(), rois.float(), 7, 0.25, 2, aligned)
        assert got.dtype == torch.float32
        expected = roi_align(features, rois, 7, 0.25, 2, aligned)
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("aligned", [False, True])
def test_gradcheck_features(aligned: bool) -> None:
    features = _features(n=2, c=2, h=5, w=6, seed=5).requires_grad_(True)
    rois = torch.tensor(
        [[0, 0.3, 0.6, 4.2, 3.9], [1, -1.2, 1.1, 2.7, 5.8], [1, 2.2, 0.4, 7.4, 2.9]], dtype=torch.float64
    )
    for sampling_ratio in (2, 0):
        assert torch.autograd.gradcheck(
            lambda f, sr=sampling_ratio: roi_align(f, rois, 2, 1.0, sr, aligned), (features,)
        )


def _gather_gradient(
    features: torch.Tensor, rois: torch.Tensor, grad: torch.Tensor, *args: object
) -> torch.Tensor:
    """The features' gradient by autograd through the forward's gather and matrix products."""
    f = features.detach().requires_grad_(True)
    out = ROI_ALIGN_MODULE._roi_align(f, rois, *args)[0]
    (out * grad).sum().backward()
    assert f.grad is not None
    return f.grad


@pytest.mark.parametrize("chunk_elements", [None, 3_000])
def test_backward_equals_autograd_through_the_forward_on_random_cases(
    chunk_elements: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hand-written backward against autograd of the forward, over 60 random maps, RoI sets
    (inside, across the border, outside, degenerate) and settings; with small chunks too."""
    if chunk_elements is not None:
        monkeypatch.setattr(ROI_ALIGN_MODULE, "_CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(11)
    for case in range(60):
        n, c = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(1, 6, (1,), generator=g))
        h, w = (int(v) for v in torch.randint(2, 30, (2,), generator=g))
        scale = [1.0, 0.5, 0.25, 0.125][case % 4]
        r = int(torch.randint(1, 40, (1,), generator=g))
        corners = (torch.rand(r, 2, 2, generator=g) * 1.4 - 0.2) * torch.tensor([w, h]) / scale
        boxes = torch.cat((corners.min(dim=1).values, corners.max(dim=1).values), dim=1)
        rois = torch.cat((torch.randint(0, n, (r, 1), generator=g).double(), boxes.double()), dim=1)
        features = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
        output_size, sampling_ratio, aligned = [7, 2, 5][case % 3], [0, 1, 2][(case // 3) % 3], case % 2 == 0
        args = (output_size, scale, sampling_ratio, aligned)
        grad = torch.randn(r, c, output_size, output_size, generator=g, dtype=torch.float64)
        f = features.clone().requires_grad_(True)
        out = roi_align(f, rois, *args)
        (out * grad).sum().backward()
        torch.testing.assert_close(out.detach(), roi_align(features, rois, *args), rtol=0, atol=0)
        expected = _gather_gradient(features, rois, grad, *args)
        torch.testing.assert_close(f.grad, expected, rtol=1e-12, atol=1e-12)


def test_backward_in_float32_and_bfloat16_features() -> None:
    """The gradient comes back in the features' own type and layout-free shape."""
    features = _features(n=3, c=4, h=9, w=10, seed=2)
    rois = _rois(1.0)[:5]
    grad = torch.randn(5, 4, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = _gather_gradient(features, rois, grad, 3, 1.0, 2, True)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2)):
        f = features.to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        (roi_align(f, rois.float(), 3, 1.0, 2, True) * grad.to(dtype)).sum().backward()
        assert f.grad is not None and f.grad.dtype == dtype and f.grad.shape == features.shape
        torch.testing.assert_close(f.grad.double(), expected, rtol=tol, atol=tol)


def test_backward_called_inside_autocast_and_rois_are_constants() -> None:
    """``backward()`` inside a bfloat16 autocast block (the products stay in the accumulation type),
    and RoIs that require a gradient get none: they are constants, with or without feature gradients."""
    features = _features(n=3, c=4, h=9, w=10, seed=3).float().requires_grad_(True)
    rois = _rois(1.0)[:5].float().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align(features * 1, rois, 3, 1.0, 2, True)
        out.float().sum().backward()
    assert features.grad is not None and features.grad.dtype == torch.float32
    assert rois.grad is None and not roi_align(features.detach(), rois, 3, 1.0, 2, True).requires_grad


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("chunk_elements", [None, 40_000])
def test_linear_map_gives_bin_centres(
    aligned: bool, chunk_elements: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On f = a_c y + b_c x + k_n the average of a bin's regular sample grid is f at
    # the bin centre, whatever the sampling ratio, as long as no sample is clamped.
    # Many RoIs of varied sizes in shuffled order, on two images; with a small chunk
    # budget they are pooled in many chunks and must come back in input order.
    if chunk_elements is not None:
        monkeypatch.setattr(ROI_ALIGN_MODULE, "_CHUNK_ELEMENTS", chunk_elements)
    h, w, p, scale = 60, 70, 7, 0.5
    a = torch.tensor([1.0, -2.0], dtype=torch.float64)
    b = torch.tensor([0.5, 3.0], dtype=torch.float64)
    k = torch.tensor([10.0, -40.0], dtype=torch.float64)
    ys = torch.arange(h, dtype=torch.float64)[:, None]
    xs = torch.arange(w, dtype=torch.float64)[None, :]
    features = a[None, :, None, None] * ys + b[None, :, None, None] * xs + k[:, None, None, None]
    g = torch.Generator().manual_seed(4)
    r = 150
    # Corners in feature pixels within [1, size - 2] so that every sample is inside,
    # sizes from 2 (at least one feature pixel on both conventions) to most of the map.
    size = 2 + torch.rand(r, 2, generator=g, dtype=torch.float64) * torch.tensor([w - 6.0, h - 6.0])
    start = 1 + torch.rand(r, 2, generator=g, dtype=torch.float64) * (torch.tensor([w - 3.0, h - 3.0]) - size)
    batch = torch.randint(2, (r, 1), generator=g).to(torch.float64)
    rois = torch.cat((batch, start / scale, (start + size) / scale), dim=1)
    for sampling_ratio in (1, 2, 0):
        got = roi_align(features, rois, p, scale, sampling_ratio, aligned)
        shift = 0.5 if aligned else 0.0
        centre = (torch.arange(p, dtype=torch.float64) + 0.5) / p  # bin centres as fractions of the RoI
        cy = start[:, 1, None] - shift + centre * size[:, 1, None]  # (R, P)
        cx = start[:, 0, None] - shift + centre * size[:, 0, None]
        n = batch[:, 0].long()
        expected = (
            a[None, :, None, None] * cy[:, None, :, None]
            + b[None, :, None, None] * cx[:, None, None, :]
            + k[n][:, None, None, None]
        )
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)
