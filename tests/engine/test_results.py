"""Tests for maskrcnn.engine.results: RLE encoding, COCO records, atomic JSON writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from maskrcnn.engine.results import encode_mask, to_coco_results, write_json_atomic

# pycocotools' compiled decode trips a NumPy 2 deprecation inside itself; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def _l_shape() -> np.ndarray:
    mask = np.zeros((4, 5), dtype=bool)
    mask[1:4, 1] = True  # vertical bar in column 1, rows 1..3
    mask[3, 2:4] = True  # foot along row 3, columns 2..3
    return mask


def test_encode_mask_hand_checked_counts() -> None:
    # Column-major runs of the L shape: column 0 (4 zeros) + row 0 of column 1
    # = 5 zeros, then 3 ones (column 1, rows 1..3), then rows 0..2 of column 2
    # = 3 zeros, 1 one, rows 0..2 of column 3 = 3 zeros, 1 one, then the rest
    # (column 4) = 4 zeros. pycocotools writes counts [5, 3, 3, 1, 3, 1, 4]
    # in its compressed string form; decoding gives the mask back exactly.
    rle = encode_mask(_l_shape())
    assert rle["size"] == [4, 5]
    assert isinstance(rle["counts"], str)
    assert np.array_equal(mask_utils.decode(rle).astype(bool), _l_shape())
    uncompressed = mask_utils.frPyObjects({"size": [4, 5], "counts": [5, 3, 3, 1, 3, 1, 4]}, 4, 5)
    assert uncompressed["counts"].decode("ascii") == rle["counts"]
    assert mask_utils.area(rle) == 5


def test_encode_mask_accepts_tensors_and_rejects_batches() -> None:
    assert encode_mask(torch.from_numpy(_l_shape())) == encode_mask(_l_shape())
    with pytest.raises(ValueError, match=r"\(2, 4, 5\)"):
        encode_mask(np.zeros((2, 4, 5), dtype=bool))


def test_to_coco_results_fields_and_xywh() -> None:
    boxes = torch.tensor([[10.0, 20.0, 30.5, 60.0], [0.0, 0.0, 1.0, 2.0]])
    scores = torch.tensor([0.9, 0.25])
    masks = np.zeros((2, 4, 5), dtype=bool)
    masks[0] = _l_shape()
    keypoints = torch.tensor([[[1.0, 2.0, 0.5], [3.0, 4.0, 0.0]], [[5.0, 6.0, 1.0], [7.0, 8.0, 2.5]]])

    records = to_coco_results("a.jpg", boxes, scores, [18, 1], masks=masks, keypoints=keypoints)

    assert len(records) == 2
    first = records[0]
    assert set(first) == {"file_name", "category_id", "bbox", "score", "segmentation", "keypoints"}
    assert first["file_name"] == "a.jpg"
    assert first["category_id"] == 18
    assert first["bbox"] == [10.0, 20.0, 20.5, 40.0]
    assert first["score"] == pytest.approx(0.9)
    assert np.array_equal(mask_utils.decode(first["segmentation"]).astype(bool), _l_shape())
    assert first["keypoints"] == [1.0, 2.0, 0.5, 3.0, 4.0, 0.0]
    assert records[1]["bbox"] == [0.0, 0.0, 1.0, 2.0]
    assert records[1]["keypoints"] == [5.0, 6.0, 1.0, 7.0, 8.0, 2.5]
    assert mask_utils.area(records[1]["segmentation"]) == 0
    for record in records:
        assert type(record["score"]) is float and type(record["category_id"]) is int
        assert all(type(v) is float for v in record["bbox"])
    json.dumps(records)  # serialisable as is


def test_to_coco_results_without_masks_or_keypoints_omits_them() -> None:
    records = to_coco_results("b.png", np.array([[1.0, 1.0, 3.0, 4.0]]), np.array([0.5]), [3])
    assert records == [{"file_name": "b.png", "category_id": 3, "bbox": [1.0, 1.0, 2.0, 3.0], "score": 0.5}]


def test_to_coco_results_keeps_full_precision() -> None:
    records = to_coco_results("c.png", np.array([[0.123456789, 0.0, 1.0, 1.0]]), np.array([0.987654321]), [1])
    assert records[0]["bbox"][0] == 0.123456789
    assert records[0]["score"] == 0.987654321


def test_empty_detections_give_empty_list() -> None:
    records = to_coco_results(
        "d.png",
        torch.zeros(0, 4),
        torch.zeros(0),
        [],
        masks=torch.zeros(0, 7, 9, dtype=torch.bool),
        keypoints=torch.zeros(0, 17, 3),
    )
    assert records == []


def test_to_coco_results_rejects_inconsistent_lengths() -> None:
    with pytest.raises(ValueError, match="2 boxes, 1 scores, 2 category ids"):
        to_coco_results("e.png", np.zeros((2, 4)), np.zeros(1), [1, 2])
    with pytest.raises(ValueError, match="masks"):
        to_coco_results("e.png", np.zeros((2, 4)), np.zeros(2), [1, 2], masks=np.zeros((3, 4, 4), bool))


def test_write_json_atomic_writes_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "results.json"
    write_json_atomic(target, [{"a": 1}])
    write_json_atomic(target, {"b": [1.5, "x"]})  # replaces the first version
    assert json.loads(target.read_text()) == {"b": [1.5, "x"]}
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_write_json_atomic_failure_keeps_old_file_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    write_json_atomic(target, {"old": True})
    with pytest.raises(ValueError):
        write_json_atomic(target, {"bad": float("nan")})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.parametrize("seed", range(3))
def test_rle_from_crops_equals_pycocotools_on_the_full_masks(seed: int) -> None:
    """Windows at the edges, empty and zero-width crops, full-image masks: 200 random images each."""
    from maskrcnn.engine.results import _encode_masks, encode_crops
    from maskrcnn.structures import MaskCrops

    g = torch.Generator().manual_seed(seed)
    for _ in range(200):
        h, w = (int(v) for v in torch.randint(1, 30, (2,), generator=g))
        dense = torch.zeros((4, h, w), dtype=torch.bool)
        windows, crops = [], []
        for i in range(4):
            x0 = int(torch.randint(0, w + 1, (1,), generator=g))
            y0 = int(torch.randint(0, h + 1, (1,), generator=g))
            x1 = int(torch.randint(x0, w + 1, (1,), generator=g))
            y1 = int(torch.randint(y0, h + 1, (1,), generator=g))
            if i == 3:
                x0, y0, x1, y1 = 0, 0, w, h
            crop = torch.rand((y1 - y0, x1 - x0), generator=g) > (0.5 if i < 3 else -1.0)
            dense[i, y0:y1, x0:x1] = crop
            windows.append((x0, y0, x1, y1))
            crops.append(crop)
        masks = MaskCrops(torch.tensor(windows), crops, (h, w))
        assert torch.equal(masks.dense(), dense)
        expected = [r["counts"] for r in _encode_masks(dense.numpy())]
        assert [r["counts"] for r in encode_crops(masks)] == expected
