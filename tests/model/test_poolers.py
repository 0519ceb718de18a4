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


def test_each_roi_and_its_gradient_are_those_of_pooling_it_alone_at_its_level() -> None:
    """Random boxes over all levels and images: values and feature gradients equal RoIAlign RoI by RoI."""
    from maskrcnn.model.poolers import level_of_boxes
    from maskrcnn.ops.roi_align import roi_align

    g = torch.Generator().manual_seed(1)
    pooler = _pooler(aligned=True)
    for case in range(20):
        features = [torch.randn(2, 3, IMAGE // s, IMAGE // s, generator=g).requires_grad_() for s in STRIDES]
        boxes = []
        for _ in range(2):
            count = int(torch.randint(0, 12, (), generator=g))
            xy = torch.rand(count, 2, generator=g) * 400
            side = torch.exp(torch.rand(count, 2, generator=g) * 5.5) + 1  # 2 to 250 pixels
            boxes.append(torch.cat((xy, xy + side), dim=1))
        pooled = pooler(features, boxes)
        weights = torch.randn(pooled.shape, generator=g)
        got = torch.autograd.grad((pooled * weights).sum(), features, allow_unused=True)
        rois = torch.cat([torch.cat((torch.full((len(b), 1), float(i)), b), 1) for i, b in enumerate(boxes)])
        levels = level_of_boxes(rois[:, 1:], min_level=2, max_level=5, canonical_size=224.0,
                                canonical_level=4, eps=1e-6)
        expected = [roi_align(features[int(level)], rois[r : r + 1], 7, 1.0 / STRIDES[int(level)], 2, True)
                    for r, level in enumerate(levels)]
        assert pooled.shape == (len(rois), 3, 7, 7)
        if not expected:
            continue
        expected = torch.cat(expected)
        torch.testing.assert_close(pooled, expected, msg=f"case {case}")
        want = torch.autograd.grad((expected * weights).sum(), features, allow_unused=True)
        for a, b in zip(got, want, strict=True):
            if a is None or b is None:
                assert (a is None or not a.any()) and (b is None or not b.any())
            else:
                torch.testing.assert_close(a, b, msg=f"case {case}")
