"""Tests for maskrcnn.model.anchors: hand-computed anchors and FPN level assignment."""

from __future__ import annotations

import math

import pytest
import torch

from maskrcnn.model.anchors import AnchorGenerator
from maskrcnn.model.poolers import level_of_boxes, level_range

# Size 32 anchors: area 32^2, ratio a = h / w, w = 32 / sqrt(a), h = 32 * sqrt(a).
# a = 0.5: w = 32 sqrt(2) = 45.25..., h = 16 sqrt(2) = 22.62...; half sizes 16 sqrt(2), 8 sqrt(2).
_BIG = 16 * math.sqrt(2)  # 22.627...
_SMALL = 8 * math.sqrt(2)  # 11.313...
CELL_EXACT = [[-_BIG, -_SMALL, _BIG, _SMALL], [-16.0, -16.0, 16.0, 16.0], [-_SMALL, -_BIG, _SMALL, _BIG]]
CELL_ROUNDED = [[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0], [-11.0, -23.0, 11.0, 23.0]]


def _generator(stride: int, round_to_int: bool, offset: float = 0.0) -> AnchorGenerator:
    return AnchorGenerator(
        sizes=((32.0,),),
        aspect_ratios=(0.5, 1.0, 2.0),
        strides=(stride,),
        round_to_int=round_to_int,
        offset=offset,
    )


@pytest.mark.parametrize(("round_to_int", "cell"), [(True, CELL_ROUNDED), (False, CELL_EXACT)])
def test_single_location_stride_16(round_to_int: bool, cell: list[list[float]]) -> None:
    # A 15 x 15 image at stride 16: a 1 x 1 feature map, anchors centred at (0, 0).
    (anchors,) = _generator(16, round_to_int)([(1, 1)], (16, 16), torch.device("cpu"))
    assert anchors.shape == (3, 4)
    torch.testing.assert_close(anchors, torch.tensor(cell), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("round_to_int", "cell"), [(True, CELL_ROUNDED), (False, CELL_EXACT)])
def test_four_locations_stride_8(round_to_int: bool, cell: list[list[float]]) -> None:
    # A 15 x 15 image at stride 8: a 2 x 2 feature map. Location-major (row, then
    # column), then aspect ratio: centres (0, 0), (8, 0), (0, 8), (8, 8) as (x, y).
    (anchors,) = _generator(8, round_to_int)([(2, 2)], (16, 16), torch.device("cpu"))
    expected = []
    for cx, cy in [(0.0, 0.0), (8.0, 0.0), (0.0, 8.0), (8.0, 8.0)]:
        for x0, y0, x1, y1 in cell:
            expected.append([x0 + cx, y0 + cy, x1 + cx, y1 + cy])
    assert anchors.shape == (12, 4)
    torch.testing.assert_close(anchors, torch.tensor(expected), rtol=0, atol=1e-5)
    if round_to_int:
        assert anchors.tolist()[:4] == [
            [-23.0, -11.0, 23.0, 11.0],
            [-16.0, -16.0, 16.0, 16.0],
            [-11.0, -23.0, 11.0, 23.0],
            [-15.0, -11.0, 31.0, 11.0],
        ]


def test_offset_half_centres_anchors_in_cells() -> None:
    (anchors,) = _generator(8, True, offset=0.5)([(2, 2)], (16, 16), torch.device("cpu"))
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    expected = torch.tensor([[4.0, 4.0]] * 3 + [[12.0, 4.0]] * 3 + [[4.0, 12.0]] * 3 + [[12.0, 12.0]] * 3)
    torch.testing.assert_close(centres, expected)


def test_non_square_map_order_and_several_levels() -> None:
    gen = AnchorGenerator(
        sizes=((32.0,), (64.0,)), aspect_ratios=(0.5, 1.0, 2.0), strides=(4, 8), round_to_int=False
    )
    a4, a8 = gen([(2, 3), (1, 2)], (8, 12), torch.device("cpu"))
    assert a4.shape == (2 * 3 * 3, 4) and a8.shape == (1 * 2 * 3, 4)
    # Row-major locations: x varies fastest.
    centres = ((a4[:, :2] + a4[:, 2:]) / 2)[::3]
    expected = torch.tensor([[0.0, 0.0], [4.0, 0.0], [8.0, 0.0], [0.0, 4.0], [4.0, 4.0], [8.0, 4.0]])
    torch.testing.assert_close(centres, expected)
    # Level two holds size-64 anchors: the square one is 64 x 64.
    torch.testing.assert_close(a8[1], torch.tensor([-32.0, -32.0, 32.0, 32.0]))
    # Every anchor has area size^2.
    area = (a8[:, 2] - a8[:, 0]) * (a8[:, 3] - a8[:, 1])
    torch.testing.assert_close(area, torch.full((6,), 64.0**2))


def test_mismatched_sizes_and_strides() -> None:
    with pytest.raises(ValueError):
        AnchorGenerator(sizes=((32.0,), (64.0,)), aspect_ratios=(1.0,), strides=(4,), round_to_int=True)


def _square(side: float, x: float = 10.0, y: float = 20.0) -> list[float]:
    return [x, y, x + side, y + side]


def test_level_of_boxes() -> None:
    boxes = torch.tensor(
        [_square(112), _square(224), _square(448), _square(4), _square(2000), _square(111.9), _square(223.9)]
    )
    # floor(4 + log2(s / 224)), clamped to [2, 5], as an index from level 2:
    # 112 -> 3, 224 -> 4, 448 -> 5, 4 -> 2 (clamped), 2000 -> 5 (clamped),
    # 111.9 -> floor(2.998...) = 2, 223.9 -> 3.
    levels = level_of_boxes(
        boxes, min_level=2, max_level=5, canonical_size=224.0, canonical_level=4, eps=1e-6
    )
    assert levels.dtype == torch.int64
    assert levels.tolist() == [1, 2, 3, 0, 3, 0, 1]
    # Non-square boxes use sqrt(w h): 56 x 224 has sqrt = 112 -> level 3.
    rect = torch.tensor([[0.0, 0.0, 56.0, 224.0]])
    assert level_of_boxes(
        rect, min_level=2, max_level=5, canonical_size=224.0, canonical_level=4, eps=0.0
    ).tolist() == [1]


def test_level_of_empty_box_is_the_lowest_level() -> None:
    # sqrt(0) = 0, log2(0) = -inf: clamped to level 2, not NaN or garbage.
    boxes = torch.tensor([[5.0, 5.0, 5.0, 9.0], [3.0, 3.0, 3.0, 3.0]])
    levels = level_of_boxes(
        boxes, min_level=2, max_level=5, canonical_size=224.0, canonical_level=4, eps=1e-6
    )
    assert levels.tolist() == [0, 0]


def test_level_range() -> None:
    assert level_range((4, 8, 16, 32)) == (2, 5)
    assert level_range((4, 8, 16, 32, 64)) == (2, 6)


def test_several_sizes_at_one_level_are_size_major() -> None:
    # C4: every size at the one stride-16 level; each location lists size 32's ratios, then 64's.
    gen = AnchorGenerator(sizes=((32.0, 64.0),), aspect_ratios=(0.5, 1.0, 2.0), strides=(16,),
                          round_to_int=False)
    assert gen.num_anchors == 6
    (anchors,) = gen([(1, 2)], (16, 32), torch.device("cpu"))
    assert anchors.shape == (12, 4)
    widths = (anchors[:, 2] - anchors[:, 0]).tolist()
    heights = (anchors[:, 3] - anchors[:, 1]).tolist()
    r = 2 ** 0.5
    assert widths[:6] == pytest.approx([32 * r, 32, 32 / r, 64 * r, 64, 64 / r], rel=1e-6)
    assert heights[:6] == pytest.approx([32 / r, 32, 32 * r, 64 / r, 64, 64 * r], rel=1e-6)
    assert anchors[6:, 0].tolist() == pytest.approx((anchors[:6, 0] + 16).tolist())  # next column


def test_unequal_size_counts_per_level_are_refused() -> None:
    with pytest.raises(ValueError, match="as many anchor sizes"):
        AnchorGenerator(sizes=((32.0,), (64.0, 128.0)), aspect_ratios=(1.0,), strides=(4, 8),
                        round_to_int=True)
