"""Tests for maskrcnn.ops.boxes: IoU, clipping, size filtering and the box coder."""

from __future__ import annotations

import math

import pytest
import torch

from maskrcnn.ops.boxes import BoxCoder, box_area, box_iou, clip_boxes, large_enough


def _random_boxes(generator: torch.Generator, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 100
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 50 + 1
    return torch.cat((xy, xy + wh), dim=1).to(dtype)


# --- IoU ---------------------------------------------------------------------


def test_iou_of_three_hand_made_boxes() -> None:
    # A: 2x2 at the origin (area 4); B: 2x2 shifted by (1, 1) (area 4);
    # C: 4 wide, 2 tall at the origin (area 8).
    # A & B overlap in a 1x1 square: 1 / (4 + 4 - 1) = 1/7.
    # A & C: A lies inside C: 4 / 8 = 1/2.
    # B & C: x in [1, 3], y in [1, 2]: 2 / (4 + 8 - 2) = 1/5.
    boxes = torch.tensor(
        [[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 4.0, 2.0]], dtype=torch.float64
    )
    expected = torch.tensor(
        [[1.0, 1 / 7, 1 / 2], [1 / 7, 1.0, 1 / 5], [1 / 2, 1 / 5, 1.0]], dtype=torch.float64
    )
    torch.testing.assert_close(box_iou(boxes, boxes), expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(box_area(boxes), torch.tensor([4.0, 4.0, 8.0], dtype=torch.float64))


def test_iou_rectangular_shape_and_disjoint() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[20.0, 20.0, 30.0, 30.0], [10.0, 0.0, 20.0, 10.0], [5.0, 0.0, 15.0, 10.0]])
    # Disjoint, touching along an edge (zero-area intersection), half overlap 50 / 150.
    iou = box_iou(a, b)
    assert iou.shape == (1, 3)
    torch.testing.assert_close(iou, torch.tensor([[0.0, 0.0, 1 / 3]]))


@pytest.mark.parametrize("seed", range(5))
def test_iou_symmetric_and_bounded(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a = _random_boxes(g, 40)
    b = _random_boxes(g, 30)
    ab = box_iou(a, b)
    ba = box_iou(b, a)
    assert ab.shape == (40, 30)
    torch.testing.assert_close(ab, ba.T)
    assert bool(((ab >= 0) & (ab <= 1)).all())
    # Every box has IoU 1 with itself.
    torch.testing.assert_close(torch.diagonal(box_iou(a, a)), torch.ones(40))


def test_iou_degenerate_boxes_are_zero_not_nan() -> None:
    degenerate = torch.tensor(
        [[1.0, 1.0, 1.0, 3.0], [2.0, 2.0, 5.0, 2.0], [4.0, 4.0, 4.0, 4.0]]
    )  # zero width, zero height, a point
    normal = torch.tensor([[0.0, 0.0, 6.0, 6.0]])
    for iou in (box_iou(degenerate, degenerate), box_iou(degenerate, normal), box_iou(normal, degenerate)):
        assert not bool(torch.isnan(iou).any())
        assert bool((iou == 0).all())


def test_iou_empty_inputs() -> None:
    assert box_iou(torch.zeros(0, 4), torch.zeros(3, 4)).shape == (0, 3)
    assert box_iou(torch.zeros(2, 4), torch.zeros(0, 4)).shape == (2, 0)


# --- clipping and size filter ---------------------------------------------------


def test_clip_boxes() -> None:
    # size is (h, w) = (10, 20): x is clamped to [0, 20], y to [0, 10].
    boxes = torch.tensor(
        [[-5.0, -3.0, 25.0, 12.0], [2.0, 3.0, 4.0, 5.0], [30.0, 11.0, 40.0, 15.0], [-9.0, -9.0, -1.0, -2.0]]
    )
    expected = torch.tensor(
        [[0.0, 0.0, 20.0, 10.0], [2.0, 3.0, 4.0, 5.0], [20.0, 10.0, 20.0, 10.0], [0.0, 0.0, 0.0, 0.0]]
    )
    torch.testing.assert_close(clip_boxes(boxes, (10, 20)), expected, rtol=0, atol=0)
    # Any leading shape works, and the input is untouched.
    batched = boxes.reshape(2, 2, 4)
    before = batched.clone()
    torch.testing.assert_close(clip_boxes(batched, (10, 20)), expected.reshape(2, 2, 4), rtol=0, atol=0)
    assert torch.equal(batched, before)


def test_large_enough_strict_and_not() -> None:
    boxes = torch.tensor(
        [
            [0.0, 0.0, 1.0, 1.0],  # exactly 1 x 1
            [0.0, 0.0, 2.0, 1.0],  # 2 wide, exactly 1 tall
            [0.0, 0.0, 2.0, 3.0],  # 2 x 3
            [0.0, 0.0, 0.5, 4.0],  # too narrow
            [3.0, 3.0, 3.0, 3.0],  # empty
        ]
    )
    assert large_enough(boxes, 1.0).tolist() == [True, True, True, False, False]
    assert large_enough(boxes, 1.0, strict=True).tolist() == [False, False, True, False, False]
    # Detectron2's "non-empty" filter: strict with min_size 0.
    assert large_enough(boxes, 0.0, strict=True).tolist() == [True, True, True, True, False]


# --- box coder -------------------------------------------------------------------


def _reference_decode(
    deltas: torch.Tensor, reference: torch.Tensor, weights: tuple[float, ...]
) -> torch.Tensor:
    """Eq. 2 of Fast R-CNN inverted, one box and one class at a time, in Python floats."""
    wx, wy, ww, wh = weights
    clamp = math.log(1000.0 / 16)
    out = torch.empty_like(deltas)
    for r in range(deltas.shape[0]):
        x0, y0, x1, y1 = reference[r].tolist()
        pw, ph = x1 - x0, y1 - y0
        px, py = x0 + 0.5 * pw, y0 + 0.5 * ph
        for k in range(deltas.shape[1] // 4):
            dx, dy, dw, dh = deltas[r, 4 * k : 4 * k + 4].tolist()
            cx = dx / wx * pw + px
            cy = dy / wy * ph + py
            w = math.exp(min(dw / ww, clamp)) * pw
            h = math.exp(min(dh / wh, clamp)) * ph
            out[r, 4 * k : 4 * k + 4] = torch.tensor(
                [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=torch.float64
            )
    return out


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_round_trip(weights: tuple[float, float, float, float]) -> None:
    g = torch.Generator().manual_seed(0)
    reference = _random_boxes(g, 100, torch.float64)
    target = _random_boxes(g, 100, torch.float64)
    coder = BoxCoder(weights)
    deltas = coder.encode(reference, target)
    assert deltas.shape == (100, 4)
    assert deltas.dtype == torch.float64
    torch.testing.assert_close(coder.decode(deltas, reference), target, rtol=0, atol=1e-10)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_matches_definition(weights: tuple[float, float, float, float]) -> None:
    # Reference box centred at (5, 10), 10 x 20; target centred at (7, 5), 20 x 5.
    reference = torch.tensor([[0.0, 0.0, 10.0, 20.0]], dtype=torch.float64)
    target = torch.tensor([[-3.0, 2.5, 17.0, 7.5]], dtype=torch.float64)
    wx, wy, ww, wh = weights
    expected = torch.tensor(
        [[wx * 2 / 10, wy * -5 / 20, ww * math.log(2.0), wh * math.log(0.25)]], dtype=torch.float64
    )
    torch.testing.assert_close(BoxCoder(weights).encode(reference, target), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_decode_zero_deltas_returns_reference(weights: tuple[float, float, float, float]) -> None:
    g = torch.Generator().manual_seed(1)
    reference = _random_boxes(g, 20, torch.float64)
    decoded = BoxCoder(weights).decode(torch.zeros(20, 8, dtype=torch.float64), reference)
    torch.testing.assert_close(decoded, reference.repeat(1, 2), rtol=0, atol=1e-12)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_decode_clamps_log_scale(weights: tuple[float, float, float, float]) -> None:
    reference = torch.tensor([[10.0, 20.0, 14.0, 28.0]], dtype=torch.float64)  # 4 x 8, centre (12, 24)
    deltas = torch.tensor([[0.0, 0.0, 1e4, 0.0], [0.0, 0.0, 0.0, 1e4]], dtype=torch.float64)
    decoded = BoxCoder(weights).decode(deltas, reference.expand(2, 4))
    assert bool(torch.isfinite(decoded).all())
    width = decoded[:, 2] - decoded[:, 0]
    height = decoded[:, 3] - decoded[:, 1]
    # At most 1000 / 16 = 62.5 times the reference size, and the centre is kept.
    torch.testing.assert_close(width, torch.tensor([62.5 * 4, 4.0], dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(height, torch.tensor([8.0, 62.5 * 8], dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        (decoded[:, 0] + decoded[:, 2]) / 2, torch.full((2,), 12.0, dtype=torch.float64)
    )
    torch.testing.assert_close(
        (decoded[:, 1] + decoded[:, 3]) / 2, torch.full((2,), 24.0, dtype=torch.float64)
    )


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_decode_several_classes_matches_per_class_definition(
    weights: tuple[float, float, float, float],
) -> None:
    g = torch.Generator().manual_seed(2)
    reference = _random_boxes(g, 15, torch.float64)
    deltas = torch.randn(15, 4 * 5, generator=g, dtype=torch.float64)
    deltas[0, 2] = 50.0  # one clamped width
    coder = BoxCoder(weights)
    decoded = coder.decode(deltas, reference)
    assert decoded.shape == (15, 20)
    torch.testing.assert_close(decoded, _reference_decode(deltas, reference, weights), rtol=1e-12, atol=1e-10)
    # Column group k is class k: the same as decoding that class alone.
    for k in range(5):
        torch.testing.assert_close(
            decoded[:, 4 * k : 4 * k + 4], coder.decode(deltas[:, 4 * k : 4 * k + 4], reference)
        )


def test_decode_float32_reference_float64_deltas() -> None:
    # The reference boxes follow the deltas' dtype.
    reference = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.tensor([[0.1, -0.1, 0.0, 0.0]], dtype=torch.float64)
    decoded = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(deltas, reference)
    assert decoded.dtype == torch.float64
    torch.testing.assert_close(decoded, torch.tensor([[1.0, -1.0, 11.0, 9.0]], dtype=torch.float64))
