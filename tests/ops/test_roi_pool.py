"""RoIPool quantises as Fast R-CNN defines it; RoIWarp is a rounded RoI sampled bilinearly."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from maskrcnn.ops.roi_pool import roi_pool, roi_warp, round_half_away


def _c_round(x: float) -> int:
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def _slow_roi_pool(f: torch.Tensor, roi: list[float], p: int, scale: float) -> torch.Tensor:
    """Fast R-CNN's RoIPool, written out: round the RoI, floor/ceil the bins, max, empty bins 0."""
    _, c, h, w = f.shape
    b = int(roi[0])
    x0, y0, x1, y1 = (_c_round(v * scale) for v in roi[1:])
    rh, rw = max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1)
    out = torch.zeros(c, p, p, dtype=f.dtype)
    for ph in range(p):
        hs = min(max(math.floor(ph * rh / p) + y0, 0), h)
        he = min(max(math.ceil((ph + 1) * rh / p) + y0, 0), h)
        for pw in range(p):
            ws = min(max(math.floor(pw * rw / p) + x0, 0), w)
            we = min(max(math.ceil((pw + 1) * rw / p) + x0, 0), w)
            if he > hs and we > ws:
                out[:, ph, pw] = f[b, :, hs:he, ws:we].amax(dim=(1, 2))
    return out


def test_hand_computed_quantisation() -> None:
    # A 6x6 map of values 0..35; RoI (0.6, 0.4)-(4.4, 3.6) rounds to columns 1..4, rows 0..4
    # (x: round(0.6) = 1, round(4.4) = 4; y: round(0.4) = 0, round(3.6) = 4): a 5 x 4 region.
    f = torch.arange(36.0).reshape(1, 1, 6, 6)
    out = roi_pool(f, torch.tensor([[0, 0.6, 0.4, 4.4, 3.6]]), 2, 1.0)[0, 0]
    # Rows: bins [floor(0), ceil(2.5)) = 0..2 and [floor(2.5), ceil(5)) = 2..4;
    # columns: [0, 2) -> 1..2 and [2, 4) -> 3..4 (of the crop starting at column 1).
    # Max of rows 0..2, columns 1..2 is f[2, 2] = 14; the others follow.
    assert out.tolist() == [[14.0, 16.0], [26.0, 28.0]]


def test_round_half_away_from_zero() -> None:
    assert round_half_away(torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 2.4])).tolist() == [
        1.0, 2.0, 3.0, -1.0, -2.0, 2.0
    ]


@pytest.mark.parametrize("scale", [1.0, 0.25])
@pytest.mark.parametrize("p", [2, 7])
def test_matches_slow_reference(scale: float, p: int) -> None:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 3, 13, 17, generator=g, dtype=torch.float64)
    rois = torch.tensor([
        [0, 1.2, 2.7, 9.9, 11.0],
        [1, -5.0, -3.0, 6.0, 4.0],      # partly outside
        [0, 14.0, 10.0, 30.0, 20.0],    # past the far edge
        [1, 3.3, 3.3, 3.3, 3.3],        # a point
        [0, 40.0, 40.0, 60.0, 60.0],    # outside the map at scale 1
    ], dtype=torch.float64)
    if scale != 1.0:
        rois[:, 1:] *= 4
    out = roi_pool(f, rois, p, scale)
    for i, roi in enumerate(rois.tolist()):
        torch.testing.assert_close(out[i], _slow_roi_pool(f, roi, p, scale))


def _bilinear(f: torch.Tensor, y: float, x: float) -> torch.Tensor:
    h, w = f.shape[-2:]
    if y < -1 or y > h or x < -1 or x > w:
        return torch.zeros(f.shape[0], dtype=f.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = min(int(y), h - 1), min(int(x), w - 1)
    y = float(y0) if y0 >= h - 1 else y
    x = float(x0) if x0 >= w - 1 else x
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * f[:, y0, x0] + (1 - ly) * lx * f[:, y0, x1]
            + ly * (1 - lx) * f[:, y1, x0] + ly * lx * f[:, y1, x1])


def test_roi_warp_is_rounded_roi_sampled_bilinearly() -> None:
    g = torch.Generator().manual_seed(1)
    f = torch.randn(1, 2, 9, 11, generator=g, dtype=torch.float64)
    roi = [0, 4.9, 2.2, 27.3, 30.6]  # at scale 0.25: (1.225, 0.55, 6.825, 7.65) -> (1, 1, 7, 8)
    p = 3
    out = roi_warp(f, torch.tensor([roi], dtype=torch.float64), p, 0.25, 1)[0]
    x0, y0, x1, y1 = 1, 1, 7, 8
    bw, bh = (x1 - x0) / p, (y1 - y0) / p
    for ph in range(p):
        for pw in range(p):
            expected = _bilinear(f[0], y0 + (ph + 0.5) * bh, x0 + (pw + 0.5) * bw)
            torch.testing.assert_close(out[:, ph, pw], expected)


def test_gradient_reaches_the_maxima_only() -> None:
    f = torch.arange(16.0).reshape(1, 1, 4, 4).requires_grad_()
    roi_pool(f, torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]]), 1, 1.0).sum().backward()
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 3, 3] = 1.0
    assert torch.equal(f.grad, expected)


def _masked_max_gradient(features: torch.Tensor, rois: torch.Tensor, grad: torch.Tensor, p: int,
                         scale: float) -> torch.Tensor:
    """The gradient by autograd through the forward's masked maxima (no ties in random features)."""
    f = features.detach().requires_grad_(True)
    out = ROI_POOL_MODULE._roi_pool(f, rois, p, scale, with_argmax=False)[0].permute(0, 3, 1, 2)
    (out * grad).sum().backward()
    assert f.grad is not None
    return f.grad


ROI_POOL_MODULE = sys.modules["maskrcnn.ops.roi_pool"]


@pytest.mark.parametrize("chunk_elements", [None, 2_000])
def test_backward_sends_each_bin_to_its_maximum_on_random_cases(
    chunk_elements: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The argmax backward against autograd of the masked maxima, over 60 random maps and RoI sets
    (inside, across the border, entirely outside: empty bins get nothing), with small chunks too."""
    if chunk_elements is not None:
        monkeypatch.setattr(ROI_POOL_MODULE, "_CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(5)
    for case in range(60):
        n, c = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(1, 6, (1,), generator=g))
        h, w = (int(v) for v in torch.randint(2, 25, (2,), generator=g))
        scale = [1.0, 0.5, 0.25][case % 3]
        r = int(torch.randint(1, 30, (1,), generator=g))
        corners = (torch.rand(r, 2, 2, generator=g) * 1.6 - 0.3) * torch.tensor([w, h]) / scale
        boxes = torch.cat((corners.min(dim=1).values, corners.max(dim=1).values), dim=1)
        rois = torch.cat((torch.randint(0, n, (r, 1), generator=g).double(), boxes.double()), dim=1)
        features = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
        p = [7, 2, 3][case % 3]
        grad = torch.randn(r, c, p, p, generator=g, dtype=torch.float64)
        f = features.clone().requires_grad_(True)
        out = roi_pool(f, rois, p, scale)
        (out * grad).sum().backward()
        torch.testing.assert_close(out.detach(), roi_pool(features, rois, p, scale), rtol=0, atol=0)
        expected = _masked_max_gradient(features, rois, grad, p, scale)
        torch.testing.assert_close(f.grad, expected, rtol=0, atol=1e-12)


def test_gradcheck_and_float32_gradient() -> None:
    features = torch.randn(2, 3, 9, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rois = torch.tensor([[0, 1.2, 0.7, 7.9, 6.1], [1, -3.0, 2.0, 4.0, 12.0], [1, 20.0, 20.0, 30.0, 30.0]],
                        dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_pool(f, rois, 3, 1.0), (features.requires_grad_(True),))
    f32 = features.detach().float().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    roi_pool(f32, rois.float(), 3, 1.0).sum().backward()
    assert f32.grad is not None and f32.grad.dtype == torch.float32
    torch.testing.assert_close(f32.grad.double(), _masked_max_gradient(
        features, rois, torch.ones(3, 3, 3, 3, dtype=torch.float64), 3, 1.0))
