"""Tests for maskrcnn.engine.visualize: draw_detections and the pictures' file names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from maskrcnn.engine.visualize import (
    CONTOUR_DARKEN,
    MASK_ALPHA,
    PALETTE,
    color_for,
    draw_detections,
    picture_paths,
)

GREY = 100
HEIGHT, WIDTH = 100, 120  # line width 1 and the minimum font size at this size


def _grey_image() -> np.ndarray:
    return np.full((HEIGHT, WIDTH, 3), GREY, dtype=np.uint8)


def _one_detection() -> dict[str, Any]:
    """Box x 20..80, y 40..90 around a mask of rows 50..79, columns 30..69."""
    masks = np.zeros((1, HEIGHT, WIDTH), dtype=bool)
    masks[0, 50:80, 30:70] = True
    return {
        "boxes": np.array([[20.0, 40.0, 80.0, 90.0]]),
        "labels": ["cat"],
        "scores": np.array([0.9]),
        "masks": masks,
    }


def test_output_is_rgb_image_of_input_size_and_input_is_untouched() -> None:
    image = _grey_image()
    result = draw_detections(image, **_one_detection())
    assert result.mode == "RGB"
    assert result.size == (WIDTH, HEIGHT)
    assert (image == GREY).all()


def test_mask_is_tinted_outlined_and_the_rest_unchanged() -> None:
    result = np.asarray(draw_detections(_grey_image(), **_one_detection())).astype(float)
    red = np.array(PALETTE[0], dtype=float)

    # Inside the mask: halfway between grey and the first palette colour.
    expected_inside = GREY * (1 - MASK_ALPHA) + red * MASK_ALPHA
    assert np.abs(result[55:75, 35:65] - expected_inside).max() <= 0.5
    # The mask's outermost ring is the darker contour colour.
    assert np.abs(result[50, 30:70] - np.rint(red * CONTOUR_DARKEN)).max() == 0
    assert np.abs(result[50:80, 69] - np.rint(red * CONTOUR_DARKEN)).max() == 0
    # Box outline in the same colour.
    assert (result[90, 25:75] == red).all()
    assert (result[45:85, 20] == red).all()
    # Inside the box but outside the mask: untouched.
    assert (result[42:49, 22:79] == GREY).all()
    # Far from the box, mask and label: untouched.
    assert (result[:20] == GREY).all()
    assert (result[92:] == GREY).all()
    assert (result[:, 85:] == GREY).all()


def test_label_sits_on_a_filled_tag_above_the_box() -> None:
    result = np.asarray(draw_detections(_grey_image(), **_one_detection()))
    tag_rows = np.flatnonzero((result[:40, 20:80] != GREY).any(axis=(1, 2)))
    assert tag_rows.size > 0 and tag_rows[-1] == 39  # the tag ends right above the box edge
    assert tuple(result[39, 21]) == PALETTE[0]  # tag background (bottom padding)
    text = result[tag_rows[0] : 40, 20:80]
    assert (text.min(axis=2) > 200).sum() >= 10  # white (anti-aliased) text on the dark red tag


def test_label_of_a_box_at_the_top_goes_inside_the_box() -> None:
    # 5 pixels above the box are too few for the tag: it goes just inside the box.
    result = np.asarray(
        draw_detections(_grey_image(), np.array([[10.0, 5.0, 60.0, 50.0]]), ["dog"], np.array([0.5]))
    )
    assert (result[:5] == GREY).all()  # not pushed up against the image edge
    assert tuple(result[6, 11]) == PALETTE[0]  # tag top padding, inside the box
    assert (result[30:49, 11:59] == GREY).all()  # the rest of the box interior


def test_no_detections_returns_an_identical_image() -> None:
    image = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    result = draw_detections(
        image,
        torch.zeros(0, 4),
        [],
        torch.zeros(0),
        masks=torch.zeros(0, HEIGHT, WIDTH, dtype=torch.bool),
        keypoints=torch.zeros(0, 17, 3),
    )
    assert np.array_equal(np.asarray(result), image)


def test_score_threshold_hides_low_scores_and_colours_follow_score_rank() -> None:
    masks = np.zeros((2, HEIGHT, WIDTH), dtype=bool)
    masks[0, 10:30, 10:30] = True  # low score
    masks[1, 60:90, 70:110] = True  # high score
    boxes = np.array([[10.0, 10.0, 30.0, 30.0], [70.0, 60.0, 110.0, 90.0]])
    scores = np.array([0.3, 0.9])

    both = np.asarray(draw_detections(_grey_image(), boxes, ["a", "b"], scores, masks=masks)).astype(float)
    # Colours go by descending score: the 0.9 detection is first in the palette.
    assert np.abs(both[75, 90] - (GREY + np.array(PALETTE[0])) / 2).max() <= 0.5
    # (The low box is at the top, so its label covers its upper part: look lower.)
    assert np.abs(both[26, 25] - (GREY + np.array(PALETTE[1])) / 2).max() <= 0.5

    shown = np.asarray(
        draw_detections(_grey_image(), boxes, ["a", "b"], scores, masks=masks, score_threshold=0.5)
    )
    assert (shown[5:35, 5:35] == GREY).all()  # hidden detection: nothing drawn
    assert np.array_equal(shown[60:91, 70:111], both[60:91, 70:111].astype(np.uint8))

    only_low = draw_detections(
        _grey_image(), boxes[:1], ["a"], scores[:1], masks=masks[:1], score_threshold=0.31
    )
    assert (np.asarray(only_low) == GREY).all()
    at_threshold = draw_detections(_grey_image(), boxes[:1], ["a"], scores[:1], score_threshold=0.3)
    assert not (np.asarray(at_threshold) == GREY).all()  # score == threshold is kept


def test_keypoints_are_white_dots_joined_by_the_skeleton() -> None:
    keypoints = np.array([[[40.0, 70.0, 1.0], [80.0, 70.0, 0.0]]])
    result = np.asarray(
        draw_detections(
            _grey_image(),
            np.array([[30.0, 60.0, 90.0, 80.0]]),
            ["person"],
            np.array([0.8]),
            keypoints=keypoints,
            skeleton=[(0, 1)],
        )
    )
    assert tuple(result[70, 40]) == (255, 255, 255)
    assert tuple(result[70, 80]) == (255, 255, 255)  # drawn whatever its score
    assert tuple(result[70, 60]) == PALETTE[0]  # the skeleton line between them


def test_palette_is_distinct_and_cycles() -> None:
    assert len(set(PALETTE)) == len(PALETTE)
    assert color_for(len(PALETTE) + 2) == PALETTE[2]


def test_mask_probabilities_are_thresholded_and_shapes_checked() -> None:
    detection = _one_detection()
    as_bool = np.asarray(draw_detections(_grey_image(), **detection))
    detection["masks"] = np.where(detection["masks"], 0.7, 0.2).astype(np.float32)
    assert np.array_equal(np.asarray(draw_detections(_grey_image(), **detection)), as_bool)
    detection["masks"] = np.zeros((1, HEIGHT - 1, WIDTH), dtype=bool)
    with pytest.raises(ValueError, match="masks"):
        draw_detections(_grey_image(), **detection)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        draw_detections(np.zeros((HEIGHT, WIDTH), np.uint8), np.zeros((0, 4)), [], np.zeros(0))


def test_picture_paths_never_collide() -> None:
    names = ["a/x.png", "b/x.png", "x.jpg", "x.png", "y.jpeg"]
    assert [p.as_posix() for p in picture_paths(names, Path("viz"))] == [
        "viz/a/x.png", "viz/b/x.png", "viz/x.jpg.png", "viz/x.png.png", "viz/y.png",
    ]
    with pytest.raises(ValueError, match="X.png and x.png would both be"):
        picture_paths(["X.png", "x.png"], Path("viz"))  # one file on a case-insensitive disk
