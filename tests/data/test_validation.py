"""Tests for maskrcnn.data.validation: the checked RLE decoder and the number checks."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from maskrcnn.data.validation import as_int, as_number, check_rle, clean_ground_truth, rle_string_counts


def _encode(mask: np.ndarray) -> bytes:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_decoder_agrees_with_pycocotools_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        h, w = (int(v) for v in rng.integers(1, 200, 2))
        mask = rng.random((h, w)) < rng.random()
        if trial % 4 == 0:  # long runs, whose differences are negative and take several characters
            mask = np.zeros((h, w), dtype=bool)
            mask[h // 3 :, : w // 2] = True
        runs = rle_string_counts(_encode(mask))
        assert sum(runs) == h * w
        decoded = mask_utils.decode(mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w))
        assert np.array_equal(decoded, mask)


def test_hand_decoded_string() -> None:
    # Runs [0, 80] of an all-ones 8 x 10 mask: "0" is 0; 80 = 0b10_10000 -> groups 16 (sign bit set,
    # so another group follows: 16 | 0x20 = 48 -> "`") and 2 -> "2".
    assert _encode(np.ones((8, 10))) == b"0`2"
    assert rle_string_counts("0`2") == [0, 80]


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ("0`", "truncated"),
        ("0~2", "'~' at position 1 is not in the RLE alphabet"),
        ("0 2", "is not in the RLE alphabet"),
        ("\u00e90", "non-ASCII"),
        ("0" + "`" * 6 + "2", "more than 6 characters"),
        ("0@", "negative length"),  # "@" = 48 + 16: the sign bit alone, -16 as the second run
    ],
)
def test_corrupt_strings_are_refused(counts: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rle_string_counts(counts)


def test_check_rle() -> None:
    good = {"size": [8, 10], "counts": "0`2"}
    clean, problem = check_rle(good, 8, 10)
    assert clean == {"size": [8, 10], "counts": b"0`2"} and problem == ""
    assert check_rle({"size": [8, 10], "counts": [0, 80]}, 8, 10)[0] == {"size": [8, 10], "counts": [0, 80]}
    assert "sum to 79" in check_rle({"size": [8, 10], "counts": [0, 79]}, 8, 10)[1]
    assert "in a 10x8 image" in check_rle(good, 10, 8)[1]
    assert "not [height, width]" in check_rle({"size": [8], "counts": "0`2"}, 8, 10)[1]
    assert "of type NoneType" in check_rle({"size": [8, 10], "counts": None}, 8, 10)[1]


def test_numbers() -> None:
    values = (3, 3.0, 3.5, True, "3", None, float("nan"))
    assert [as_int(v) for v in values] == [3, 3, None, None, None, None, None]
    assert [as_number(v) for v in (2, 2.5, 10**400, float("inf"), float("nan"), False, "1", 1e39)] == [
        2.0, 2.5, None, None, None, None, None, None,
    ]


def test_clean_ground_truth_fills_in_what_cocoeval_needs() -> None:
    mask = np.zeros((8, 10), dtype=np.uint8)
    mask[2:6, 3:9] = 1  # 24 pixels, box (3, 2, 6, 4)
    compressed = _encode(mask).decode()
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 10}],
        "categories": [{"id": 1}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1,
             "segmentation": {"size": [8, 10], "counts": compressed}},
            {"id": 2, "image_id": 1, "category_id": 1,  # uncompressed
             "segmentation": {"size": [8, 10], "counts": rle_string_counts(compressed)}},
            {"id": 3, "image_id": 1, "category_id": 1, "segmentation": [[3, 2, 9, 2, 9, 6, 3, 6]]},
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [3, 2, 20, 4]},  # the box, clipped, as mask
            {"id": 5, "image_id": 1, "category_id": 1, "segmentation": {"size": [8, 10], "counts": "0`"}},
            {"id": 6, "image_id": 1.0, "category_id": 1},
        ],
    }
    skipped = clean_ground_truth(data, "gt.json")
    assert skipped == {"with a malformed segmentation": 1, "with neither bbox nor segmentation": 1}
    kept = data["annotations"]
    assert [a["id"] for a in kept] == [1, 2, 3, 4]
    for ann in kept[:3]:
        assert ann["bbox"] == [3.0, 2.0, 6.0, 4.0] and ann["area"] == 24.0 and ann["iscrowd"] == 0
    assert kept[3]["area"] == 28.0  # 7 x 4 pixels: the box clipped to the 10-pixel-wide image
