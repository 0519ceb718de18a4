"""Tests for maskrcnn.model.poolers: level assignment, order of RoIs, empty images."""

from __future__ import annotations

import pytest
import torch

from maskrcnn.model.poolers import MultiLevelRoIPooler

STRIDES = (4, 8, 16, 32)
IMAGE = 512


def _pooler(aligned: bool = False, sampling_ratio: int = 2) -> MultiLevelRoIPooler:
    return MultiLevelRoIPooler(
        strides=STRIDES,
        resolution=7,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
        canonical_box_size=224.0,
        canonical_level=4,
        level_eps=1e-6,
    )


def _level_features(num_images: int, channels: int = 2) -> list[torch.Tensor]:
    """Level l (2..5) of image n is the constant 10 n + l."""
    features = []
    for level, stride in zip(range(2, 6), STRIDES, strict=True):
        side = IMAGE // stride
        values = torch.tensor([10.0 * n + level for n in range(num_images)])
        features.append(values[:, None, None, None].expand(num_images, channels, side, side).contiguous())
    return features


def _square(side: float, x: float = 20.0, y: float = 30.0) -> list[float]:
    return [x, y, x + side, y + side]


@pytest.mark.parametrize("aligned", [False, True])
def test_boxes_go_to_their_level_in_input_order(aligned: bool) -> None:
    # sqrt(wh) 112 -> P3, 224 -> P4, 448 -> P5, 50 -> P2 (4 + log2(50 / 224) = 1.8, clamped),
    # 111.9 -> P2. Image n reads 10 n + level.
    image0 = torch.tensor([_square(224), _square(112, 5, 7), _square(448, 40, 50), _square(50)])
    image1 = torch.tensor([_square(448, 10, 10), _square(111.9), _square(224, 100, 200), _square(112)])
    pooled = _pooler(aligned)(_level_features(2), [image0, image1])
    assert pooled.shape == (8, 2, 7, 7)
    expected = [4, 3, 5, 2, 15, 12, 14, 13]
    for i, value in enumerate(expected):
        torch.testing.assert_close(pooled[i], torch.full((2, 7, 7), float(value)), msg=f"RoI {i}")


def test_image_with_zero_boxes() -> None:
    features = _level_features(3)
    boxes = [torch.zeros(0, 4), torch.tensor([_square(224), _square(112)]), torch.zeros(0, 4)]
    pooled = _pooler()(features, boxes)
    assert pooled.shape == (2, 2, 7, 7)
    # The two boxes belong to image 1.
    torch.testing.assert_close(pooled[0], torch.full((2, 7, 7), 14.0))
    torch.testing.assert_close(pooled[1], torch.full((2, 7, 7), 13.0))


def test_no_boxes_at_all() -> None:
    pooled = _pooler()(_level_features(2), [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert pooled.shape == (0, 2, 7, 7)


def test_extra_levels_are_ignored() -> None:
    # P6 is passed along with P2..P5 by the backbone but never pooled from:
    # a 500-pixel box (level 4 + log2(500 / 224) = 5.2) reads P5.
    features = _level_features(1)
    features.append(torch.full((1, 2, IMAGE // 64, IMAGE // 64), 99.0))
    pooled = _pooler()(features, [torch.tensor([_square(500, 5, 5)])])
    torch.testing.assert_close(pooled[0], torch.full((2, 7, 7), 5.0))


def test_pooled_values_match_roi_align_at_the_level_stride() -> None:
    # A non-constant map: the pooled value of a 224-pixel box is RoIAlign on P4 at scale 1/16.
    g = torch.Generator().manual_seed(0)
    features = [torch.randn(1, 3, IMAGE // s, IMAGE // s, generator=g) for s in STRIDES]
    box = torch.tensor([[100.0, 60.0, 324.0, 284.0]])
    pooled = _pooler(sampling_ratio=1)(features, [box])
    # One sample per bin at its centre: 224 / 16 = 14 feature pixels, 2 per bin,
    # so bin (i, j) samples P4 at (60 / 16 + 2 i + 1, 100 / 16 + 2 j + 1) = (4.75 + 2 i, 7.25 + 2 j).
    p4 = features[2][0]
    for i in range(7):
        for j in range(7):
            y, x = 4.75 + 2 * i, 7.25 + 2 * j
            y0, x0 = int(y), int(x)
            ly, lx = y - y0, x - x0
            value = (
                (1 - ly) * (1 - lx) * p4[:, y0, x0]
                + (1 - ly) * lx * p4[:, y0, x0 + 1]
                + ly * (1 - lx) * p4[:, y0 + 1, x0]
                + ly * lx * p4[:, y0 + 1, x0 + 1]
            )
            torch.testing.assert_close(pooled[0, :, i, j], value, rtol=1e-5, atol=1e-5)


def test_unknown_pooler_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown pooler kind 'roi_algin'"):
        MultiLevelRoIPooler(strides=STRIDES, resolution=7, sampling_ratio=2, aligned=False,
                            canonical_box_size=224.0, canonical_level=4, level_eps=1e-6,
                            kind="roi_algin")  # type: ignore[arg-type]
