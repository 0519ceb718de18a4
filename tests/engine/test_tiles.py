"""Tests for maskrcnn.engine.tiles: the grid, merging across seams by masks, and the tiled predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskrcnn.engine.tiles import CappedPredictor, TiledPredictor, _cores, merge_tiles, tile_windows
from maskrcnn.structures import Detections, MaskCrops


@pytest.mark.parametrize("seed", range(40))
def test_tiles_cover_the_image_and_their_cores_partition_it(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 700)), int(rng.integers(1, 700))
    size = int(rng.integers(32, 300))
    overlap = int(rng.integers(0, size))
    tiles = tile_windows(h, w, size, overlap)
    covered = np.zeros((h, w), np.int32)
    owned = np.zeros((h, w), np.int32)
    for (x0, y0, x1, y1), (c0, d0, c1, d1) in zip(tiles, _cores(tiles), strict=True):
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert x1 - x0 == min(size, w) and y1 - y0 == min(size, h)  # full tiles, the last flush
        assert x0 <= c0 <= c1 <= x1 and y0 <= d0 <= d1 <= y1
        covered[y0:y1, x0:x1] += 1
        owned[d0:d1, c0:c1] += 1
    assert (covered >= 1).all()
    assert (owned == 1).all()  # every pixel belongs to exactly one tile's core


def test_tile_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="overlap"):
        tile_windows(100, 100, 64, 64)
    with pytest.raises(ValueError, match="size"):
        tile_windows(100, 100, 0, 0)


def _det(boxes: list[list[float]], scores: list[float], labels: list[int], masks: torch.Tensor) -> Detections:
    return Detections(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(scores),
                      torch.tensor(labels, dtype=torch.int64), MaskCrops.from_dense(masks))


def _disc(h: int, w: int, cx: float, cy: float, r: float) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def test_an_object_cut_by_a_seam_becomes_one_detection_with_one_mask() -> None:
    """A 100x60 image, two 64-wide tiles overlapping by 28 columns; a disc across the seam."""
    h, w = 60, 100
    tiles = tile_windows(h, w, 64, 28)
    assert tiles == [(0, 0, 64, 60), (36, 0, 100, 60)]
    disc = _disc(h, w, 50, 30, 20)  # columns 30..70: cut by both tiles' edges
    other = _disc(h, w, 10, 10, 6)  # wholly in the first tile
    parts = []
    for x0, y0, x1, y1 in tiles:
        window = disc[y0:y1, x0:x1]
        masks = [window]
        cols = torch.nonzero(window.any(0)).flatten()
        boxes = [[float(cols[0]), 10.0, float(cols[-1] + 1), 50.0]]
        scores, labels = [0.9 if x0 == 0 else 0.8], [2]
        if x0 == 0:
            masks.append(other[y0:y1, x0:x1])
            boxes.append([4.0, 4.0, 16.0, 16.0])
            scores.append(0.7)
            labels.append(2)
        parts.append(((x0, y0, x1, y1), _det(boxes, scores, labels, torch.stack(masks))))
    merged = merge_tiles(parts, (h, w))
    assert len(merged) == 2
    assert merged.scores.tolist() == pytest.approx([0.9, 0.7])
    assert torch.equal(merged.masks.dense()[0], disc)  # one mask, stitched across the seam
    assert torch.equal(merged.masks.dense()[1], other)
    assert merged.boxes[0].tolist() == [30.0, 10.0, 70.0, 50.0]  # the stitched mask's extent


def test_neighbours_that_disagree_stay_apart_and_a_view_from_outside_the_core_goes() -> None:
    h, w = 60, 100
    tiles = tile_windows(h, w, 64, 28)
    left = _disc(h, w, 42, 30, 5)  # both inside the overlap (columns 36..64), apart from each other
    right = _disc(h, w, 58, 30, 5)
    parts = [
        (tiles[0], _det([[37, 25, 47, 35]], [0.9], [0], left[None, :, 0:64])),
        (tiles[1], _det([[53 - 36, 25, 63 - 36, 35], [37 - 36, 25, 47 - 36, 35]], [0.8, 0.6], [0, 1],
                        torch.stack([right[:, 36:100], left[:, 36:100]]))),
    ]
    merged = merge_tiles(parts, (h, w))
    # The right disc is another object; the left one, seen by both tiles with other classes, is two.
    assert merged.labels.tolist() == [0, 0, 1] and merged.scores.tolist() == pytest.approx([0.9, 0.8, 0.6])
    assert torch.equal(merged.masks.dense()[1], right)
    assert torch.equal(merged.masks.dense()[2], left)  # a detection no tile matched keeps its whole mask
    capped = merge_tiles(parts, (h, w), max_detections=1)
    assert capped.scores.tolist() == pytest.approx([0.9])


def test_what_only_one_tile_found_keeps_its_mask_box_and_even_an_empty_mask() -> None:
    """Objects seen by one tile only, across the middle of the overlap or in the other tile's core."""
    h, w = 100, 164
    tiles = tile_windows(h, w, 100, 36)
    assert tiles == [(0, 0, 100, 100), (64, 0, 164, 100)]  # cores split at x = 82
    across = torch.zeros((h, w), dtype=torch.bool)
    across[10:40, 50:90] = True
    beyond = torch.zeros((h, w), dtype=torch.bool)
    beyond[50:60, 85:99] = True
    empty = torch.zeros((h, w), dtype=torch.bool)
    det = _det([[50, 10, 90, 40], [85, 50, 99, 60], [10, 70, 20, 80]], [0.9, 0.8, 0.7], [0, 0, 1],
               torch.stack([across, beyond, empty])[:, :, 0:100])
    empty_tile = _det([], [], [], torch.zeros((0, 100, 100), dtype=torch.bool))
    merged = merge_tiles([(tiles[0], det), (tiles[1], empty_tile)], (h, w))
    assert len(merged) == 3
    assert merged.boxes.tolist() == [[50, 10, 90, 40], [85, 50, 99, 60], [10, 70, 20, 80]]
    dense = merged.masks.dense()
    assert torch.equal(dense[0], across) and torch.equal(dense[1], beyond) and not dense[2].any()
    nothing = merge_tiles([(tiles[0], empty_tile), (tiles[1], empty_tile)], (h, w))
    assert len(nothing) == 0 and nothing.masks is not None and nothing.masks.shape == (0, h, w)


def test_a_duplicate_seen_whole_by_two_tiles_is_kept_once() -> None:
    h, w = 60, 100
    tiles = tile_windows(h, w, 64, 28)
    disc = _disc(h, w, 50, 30, 8)  # columns 42..58: inside the overlap
    parts = [(t, _det([[42 - t[0], 22, 58 - t[0], 38]], [0.9 - 0.1 * k], [1], disc[None, :, t[0] : t[2]]))
             for k, t in enumerate(tiles)]
    merged = merge_tiles(parts, (h, w))
    assert len(merged) == 1 and torch.equal(merged.masks.dense()[0], disc)


@pytest.fixture(scope="module")
def demo() -> object:
    from maskrcnn.engine.predict import load
    from tests.test_checkpoint_versions import FIXTURES

    return load(FIXTURES / "demo-v0.1.safetensors")  # a trained demo model, 128-pixel input


def test_tiles_that_match_the_images_of_a_mosaic_give_each_images_own_detections(demo: object,
                                                                                   tmp_path: object) -> None:
    """Tiles at scale 1 and the model's own 128-pixel input agree on 128-pixel images: a 2x3 mosaic
    cut exactly at its images gives the detections of each image, moved to its place."""
    from maskrcnn.data.images import load_image
    from maskrcnn.data.synthetic import make_demo_dataset

    _, _, val_json, val_dir = make_demo_dataset(tmp_path, train_images=1, val_images=6, seed=5)  # type: ignore[operator]
    images = [load_image(p) for p in sorted(val_dir.glob("*.png"))]
    mosaic = np.concatenate([np.concatenate(images[r * 3 : r * 3 + 3], axis=1) for r in range(2)], axis=0)
    tiled = TiledPredictor(demo, size=128, overlap=0, batch=4)(mosaic)  # type: ignore[arg-type]
    expected = []
    for k, image in enumerate(images):
        det = demo(image)  # type: ignore[operator]
        r, c = divmod(k, 3)
        masks = det.masks.dense()
        for i in range(len(det)):
            canvas = torch.zeros(mosaic.shape[:2], dtype=torch.bool)
            canvas[r * 128 : r * 128 + 128, c * 128 : c * 128 + 128] = masks[i]
            expected.append((float(det.scores[i]), int(det.labels[i]), canvas))
    assert len(tiled) == len(expected)
    got = sorted(zip(tiled.scores.tolist(), tiled.labels.tolist(), tiled.masks.dense(), strict=True),
                 key=lambda t: -t[0])
    for (score, label, mask), (want_score, want_label, want_mask) in zip(
            got, sorted(expected, key=lambda t: -t[0]), strict=True):
        assert score == pytest.approx(want_score, abs=1e-5) and label == want_label
        assert torch.equal(mask, want_mask)


def test_capped_predictor_keeps_the_best(demo: object) -> None:
    image = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    full = demo(image)  # type: ignore[operator]
    capped = CappedPredictor(demo, 3)(image)  # type: ignore[arg-type]
    assert len(capped) == min(3, len(full))
    assert capped.scores.tolist() == sorted(full.scores.tolist(), reverse=True)[: len(capped)]
