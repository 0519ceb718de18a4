"""Tests for maskrcnn.ops.masks.paste_masks against per-box interpolate / grid_sample references."""

from __future__ import annotations

import sys

import pytest
import torch
from torch.nn import functional as F

from maskrcnn.ops.masks import paste_masks

# The module, not the function of the same name that maskrcnn.ops re-exports.
MASKS_MODULE = sys.modules["maskrcnn.ops.masks"]

IMAGE_SIZE = (40, 50)  # (h, w)

BOXES = torch.tensor(
    [
        [10.3, 5.7, 30.2, 25.9],  # inside
        [-6.4, -3.2, 12.5, 15.1],  # partly outside, top-left
        [35.5, 28.2, 58.3, 47.6],  # partly outside, bottom-right
        [20.2, 20.6, 21.1, 21.0],  # smaller than a pixel
        [5.0, 5.0, 7.0, 7.0],  # two pixels
        [0.0, 0.0, 50.0, 40.0],  # the whole image
        [60.0, 45.0, 70.0, 55.0],  # entirely outside
        [-10.5, 12.0, 60.5, 18.0],  # wider than the image
        [3.0, 33.7, 9.6, 39.99],  # touching the bottom edge
        [-30.0, -20.0, -10.0, -5.0],  # entirely outside, top-left
    ]
)


def _masks(side: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(BOXES.shape[0], side, side, generator=g)


def _torchvision_paste(mask: torch.Tensor, box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torchvision's per-box procedure, with ``interpolate`` doing the resize."""
    h, w = size
    s = mask.shape[-1]
    padded = F.pad(mask, (1, 1, 1, 1))
    # Grow the box about its centre as the mask grew, then truncate to integers.
    scale = (s + 2) / s
    half_w = (box[2] - box[0]) * 0.5 * scale
    half_h = (box[3] - box[1]) * 0.5 * scale
    cx = (box[2] + box[0]) * 0.5
    cy = (box[3] + box[1]) * 0.5
    x0, y0, x1, y1 = (int(v) for v in (cx - half_w, cy - half_h, cx + half_w, cy + half_h))
    bw = max(x1 - x0 + 1, 1)
    bh = max(y1 - y0 + 1, 1)
    resized = F.interpolate(padded[None, None], size=(bh, bw), mode="bilinear", align_corners=False)[0, 0]
    image = torch.zeros(h, w)
    xa, xb = max(x0, 0), min(x1 + 1, w)
    ya, yb = max(y0, 0), min(y1 + 1, h)
    if xb > xa and yb > ya:
        image[ya:yb, xa:xb] = resized[ya - y0 : yb - y0, xa - x0 : xb - x0]
    return image


def _detectron2_paste(mask: torch.Tensor, box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``grid_sample`` at every pixel centre of the image, zero outside the mask."""
    h, w = size
    x0, y0, x1, y1 = box.tolist()
    gx = (torch.arange(w, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
    gy = (torch.arange(h, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
    return F.grid_sample(
        mask[None, None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=False
    )[0, 0]


def _assert_same_binary(got: torch.Tensor, reference_soft: torch.Tensor, binary: torch.Tensor) -> None:
    """Equal binary masks, except possibly where the reference is within float noise of 0.5."""
    assert got.dtype == torch.bool
    differ = got != binary
    assert bool((reference_soft[differ] - 0.5).abs().lt(1e-5).all()), int(differ.sum())


@pytest.mark.parametrize("side", [28, 14])
@pytest.mark.parametrize("chunk_elements", [None, 300])
def test_torchvision_rule_matches_interpolate(
    side: int, chunk_elements: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if chunk_elements is not None:  # many small chunks of detections
        monkeypatch.setattr(MASKS_MODULE, "_CHUNK_ELEMENTS", chunk_elements)
    masks = _masks(side)
    got = paste_masks(masks, BOXES, IMAGE_SIZE, rule="torchvision")
    soft = paste_masks(masks, BOXES, IMAGE_SIZE, rule="torchvision", threshold=None)
    assert got.shape == (len(BOXES), *IMAGE_SIZE)
    assert soft.dtype == torch.float32
    for i in range(len(BOXES)):
        reference = _torchvision_paste(masks[i], BOXES[i], IMAGE_SIZE)
        # float32 noise: source coordinates near 29 carry an ulp of 2e-6, so two
        # float32 evaluations of the same bilinear map differ by a few 1e-6.
        torch.testing.assert_close(soft[i], reference, rtol=0, atol=1e-5, msg=f"box {i}")
        _assert_same_binary(got[i], reference, reference > 0.5)
    assert not bool(got[6].any()) and not bool(got[9].any())  # the boxes outside the image


@pytest.mark.parametrize("side", [28, 14])
@pytest.mark.parametrize("chunk_elements", [None, 300])
def test_detectron2_rule_matches_grid_sample(
    side: int, chunk_elements: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if chunk_elements is not None:  # many small chunks of detections
        monkeypatch.setattr(MASKS_MODULE, "_CHUNK_ELEMENTS", chunk_elements)
    masks = _masks(side, seed=1)
    got = paste_masks(masks, BOXES, IMAGE_SIZE, rule="detectron2")
    soft = paste_masks(masks, BOXES, IMAGE_SIZE, rule="detectron2", threshold=None)
    for i in range(len(BOXES)):
        reference = _detectron2_paste(masks[i], BOXES[i], IMAGE_SIZE)
        # Thresholded: over the whole image.
        _assert_same_binary(got[i], reference, reference >= 0.5)
        # Soft: equal within the box grown by one pixel; outside it the paste
        # leaves 0 where grid_sample gives less than one half.
        x0, y0, x1, y1 = BOXES[i].tolist()
        ys = torch.arange(IMAGE_SIZE[0])[:, None] + 0.5
        xs = torch.arange(IMAGE_SIZE[1])[None, :] + 0.5
        near = (xs > x0 - 1) & (xs < x1 + 1) & (ys > y0 - 1) & (ys < y1 + 1)
        torch.testing.assert_close(soft[i][near], reference[near], rtol=0, atol=1e-6, msg=f"box {i}")
        assert bool((reference[~near] < 0.5).all())
        assert bool((soft[i][~near] <= reference[~near] + 1e-6).all())


def test_torchvision_hand_case() -> None:
    # An all-ones 2 x 2 mask at box (2, 2, 6, 6) in a 10 x 10 image. Padded to
    # 4 x 4 (ones in the middle), the box grows by (2 + 2) / 2 = 2 about its
    # centre to (0, 0, 8, 8): 9 x 9 pixels. interpolate 4 -> 9 reads source
    # (k + 0.5) * 4 / 9 - 0.5: k = 1 -> 1/6 of a one, k = 2 -> 11/18,
    # k = 3..5 -> 1, k = 6 -> 11/18, k = 7 -> 1/6, k = 0, 8 -> 0.
    axis = torch.tensor([0, 1 / 6, 11 / 18, 1, 1, 1, 11 / 18, 1 / 6, 0, 0])
    masks = torch.ones(1, 2, 2)
    boxes = torch.tensor([[2.0, 2.0, 6.0, 6.0]])
    soft = paste_masks(masks, boxes, (10, 10), rule="torchvision", threshold=None)
    torch.testing.assert_close(soft[0], axis[:, None] * axis[None, :], rtol=0, atol=1e-6)
    # > 0.5: 11/18 * 1 is, 11/18 * 11/18 = 121/324 is not; a plus shape.
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[2:7, 3:6] = True
    expected[3:6, 2:7] = True
    assert torch.equal(paste_masks(masks, boxes, (10, 10), rule="torchvision")[0], expected)


def test_detectron2_hand_case() -> None:
    # Same mask and box. Pixel x maps to source ((x + 0.5 - 2) / 4 * 2 * 2 - 1) / 2
    # = (x - 2.5) / 2: x = 1 -> -0.75 (1/4 of mask pixel 0), x = 2 -> -0.25 (3/4),
    # x = 3, 4 -> 0.25, 0.75 (1), x = 5 -> 1.25 (3/4), x = 6 -> 1.75 (1/4).
    axis = torch.tensor([0, 0.25, 0.75, 1, 1, 0.75, 0.25, 0, 0, 0])
    masks = torch.ones(1, 2, 2)
    boxes = torch.tensor([[2.0, 2.0, 6.0, 6.0]])
    soft = paste_masks(masks, boxes, (10, 10), rule="detectron2", threshold=None)
    torch.testing.assert_close(soft[0], axis[:, None] * axis[None, :], rtol=0, atol=0)
    # >= 0.5: the corners 3/4 * 3/4 = 9/16 are in, 1/4 * 1 is out: exactly pixels 2..5 x 2..5.
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[2:6, 2:6] = True
    assert torch.equal(paste_masks(masks, boxes, (10, 10), rule="detectron2")[0], expected)


@pytest.mark.parametrize("rule", ["torchvision", "detectron2"])
def test_no_detections(rule: str) -> None:
    out = paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (12, 15), rule=rule)
    assert out.shape == (0, 12, 15) and out.dtype == torch.bool
    out = paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (12, 15), rule=rule, threshold=None)
    assert out.shape == (0, 12, 15) and out.dtype == torch.float32


@pytest.mark.parametrize("rule", ["torchvision", "detectron2"])
def test_inputs_not_mutated(rule: str) -> None:
    masks = _masks(28)
    before = (masks.clone(), BOXES.clone())
    paste_masks(masks, BOXES, IMAGE_SIZE, rule=rule)
    assert torch.equal(masks, before[0]) and torch.equal(BOXES, before[1])


@pytest.mark.parametrize("rule", ["torchvision", "detectron2"])
def test_degenerate_boxes_give_no_nan(rule: str) -> None:
    masks = _masks(28)[:3]
    boxes = torch.tensor([[5.0, 5.0, 5.0, 8.0], [3.0, 3.0, 9.0, 3.0], [4.0, 4.0, 4.0, 4.0]])
    soft = paste_masks(masks, boxes, (12, 12), rule=rule, threshold=None)
    assert not bool(torch.isnan(soft).any())
    assert bool(((soft >= 0) & (soft <= 1)).all())


def test_unknown_paste_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown paste rule 'nearest'"):
        paste_masks(torch.rand(1, 28, 28), torch.tensor([[1.0, 1.0, 9.0, 9.0]]), (12, 12), "nearest")  # type: ignore[arg-type]


@pytest.mark.parametrize("rule", ["torchvision", "detectron2"])
def test_cropped_paste_equals_the_full_paste(rule: str) -> None:
    """Boxes inside, across and beyond the image's edges: the crops hold exactly the full masks' pixels."""
    from maskrcnn.ops.masks import paste_mask_crops

    g = torch.Generator().manual_seed(7)
    for _ in range(60):
        h, w = (int(v) for v in torch.randint(5, 60, (2,), generator=g))
        d = int(torch.randint(0, 6, (1,), generator=g))
        spread, shift = torch.tensor([w * 1.4, h * 1.4]), torch.tensor([w * 0.2, h * 0.2])
        xy = torch.rand((d, 2), generator=g) * spread - shift
        wh = torch.rand((d, 2), generator=g) * torch.tensor([w, h]) + 0.5
        boxes = torch.cat([xy, xy + wh], dim=1)
        masks = torch.rand((d, 28, 28), generator=g)
        crops = paste_mask_crops(masks, boxes, (h, w), rule)  # type: ignore[arg-type]
        assert torch.equal(crops.dense(), paste_masks(masks, boxes, (h, w), rule))  # type: ignore[arg-type]
        for (x0, y0, x1, y1), crop in zip(crops.windows.tolist(), crops.crops, strict=True):
            assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h and crop.shape == (y1 - y0, x1 - x0)
