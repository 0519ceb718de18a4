"""Tests for maskrcnn.data.coco: decoding, label mapping, validation report, real balloon data."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn.config import InputConfig
from maskrcnn.data import coco
from maskrcnn.data.augment import train_transform
from maskrcnn.data.coco import CocoDataset, DatasetError, ImageSizeMismatchError
from maskrcnn.data.images import read_image_size
from tests.peers import shared_dir

EXIF_ORIENTATION = 0x0112


def _write_image(
    path: Path, height: int, width: int, seed: int = 0, orientation: int | None = None
) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    if orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        image.save(path, exif=exif)
    return pixels


def _write_json(
    path: Path,
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    categories: list[dict[str, Any]] | None = None,
) -> Path:
    categories = categories if categories is not None else [{"id": 1, "name": "thing"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _ann(
    ann_id: int, image_id: int, bbox: list[float], segmentation: Any = None, **extra: Any
) -> dict[str, Any]:
    ann = {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": bbox, "iscrowd": 0}
    if segmentation is not None:
        ann["segmentation"] = segmentation
    ann.update(extra)
    return ann


def _one_image_dataset(
    tmp_path: Path, annotations: list[dict[str, Any]], height: int = 8, width: int = 10, **kwargs: Any
) -> CocoDataset:
    _write_image(tmp_path / "img" / "a.png", height, width)
    images = [{"id": 1, "file_name": "a.png", "height": height, "width": width}]
    return CocoDataset(_write_json(tmp_path / "ann.json", images, annotations), tmp_path / "img", **kwargs)


# ------------------------------------------------------------ decoding


def test_polygon_gives_mask_box_label_and_image(tmp_path: Path) -> None:
    pixels = _write_image(tmp_path / "img" / "a.png", 8, 10)
    images = [{"id": 5, "file_name": "a.png", "height": 8, "width": 10}]
    # Rectangle with corners (1, 1) and (4, 3): pycocotools fills columns 1..3, rows 1..2.
    anns = [_ann(1, 5, [1, 1, 3, 2], [[1, 1, 4, 1, 4, 3, 1, 3]])]
    ds = CocoDataset(_write_json(tmp_path / "ann.json", images, anns), tmp_path / "img")

    sample = ds[0]

    assert len(ds) == 1 and sample.image_id == 5 and sample.file_name == "a.png"
    assert sample.image.dtype == torch.uint8 and torch.equal(sample.image, torch.from_numpy(pixels))
    a = sample.annotations
    assert a.boxes.dtype == torch.float32 and a.boxes.tolist() == [[1.0, 1.0, 4.0, 3.0]]
    assert a.labels.dtype == torch.int64 and a.labels.tolist() == [0]
    expected = torch.zeros((1, 8, 10), dtype=torch.uint8)
    expected[0, 1:3, 1:4] = 1
    assert a.masks is not None and a.masks.dtype == torch.uint8 and torch.equal(a.masks, expected)
    assert a.keypoints is None
    assert a.crowd_boxes.shape == (0, 4)
    assert ds.report.total == 0 and ds.report.num_instances == 1


def test_compressed_rle_decodes_to_the_encoded_mask(tmp_path: Path) -> None:
    mask = np.zeros((8, 10), dtype=np.uint8)
    mask[2:6, 3:9] = 1
    mask[4, 0] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}  # as JSON stores it
    ds = _one_image_dataset(tmp_path, [_ann(1, 1, [0, 2, 9, 4], segmentation)])

    masks = ds[0].annotations.masks

    assert masks is not None and torch.equal(masks[0], torch.from_numpy(mask))


def test_uncompressed_rle_counts_are_column_major(tmp_path: Path) -> None:
    # 4x5 image; ones at (row 1, col 2), (row 2, col 2), (row 2, col 3).
    # Column-major positions col * 4 + row: 9, 10, 14 -> runs 9 zeros, 2 ones,
    # 3 zeros, 1 one, 5 zeros (sum 20).
    segmentation = {"size": [4, 5], "counts": [9, 2, 3, 1, 5]}
    ds = _one_image_dataset(tmp_path, [_ann(1, 1, [2, 1, 2, 2], segmentation)], height=4, width=5)

    masks = ds[0].annotations.masks

    expected = torch.zeros((4, 5), dtype=torch.uint8)
    expected[1, 2] = expected[2, 2] = expected[2, 3] = 1
    assert masks is not None and torch.equal(masks[0], expected)


def test_annotation_without_segmentation_gets_its_box_as_mask(tmp_path: Path) -> None:
    # x in [1.5, 3.5) touches columns 1, 2, 3; y in [2, 3) is row 2.
    ds = _one_image_dataset(tmp_path, [_ann(1, 1, [1.5, 2, 2, 1])])

    masks = ds[0].annotations.masks

    expected = torch.zeros((8, 10), dtype=torch.uint8)
    expected[2, 1:4] = 1
    assert masks is not None and torch.equal(masks[0], expected)


def test_box_is_clipped_to_the_image(tmp_path: Path) -> None:
    ds = _one_image_dataset(tmp_path, [_ann(1, 1, [-2, 5, 6, 10])])
    assert ds[0].annotations.boxes.tolist() == [[0.0, 5.0, 4.0, 8.0]]


def test_missing_bbox_comes_from_the_segmentation(tmp_path: Path) -> None:
    ann = _ann(1, 1, [0, 0, 1, 1], {"size": [4, 5], "counts": [9, 2, 3, 1, 5]})
    del ann["bbox"]
    ds = _one_image_dataset(tmp_path, [ann], height=4, width=5)
    assert ds[0].annotations.boxes.tolist() == [[2.0, 1.0, 4.0, 3.0]]


def test_crowd_goes_to_crowd_boxes_not_instances(tmp_path: Path) -> None:
    crowd = _ann(2, 1, [5, 4, 3, 2], {"size": [8, 10], "counts": [80]}, iscrowd=1)
    ds = _one_image_dataset(tmp_path, [_ann(1, 1, [1, 1, 3, 2], [[1, 1, 4, 1, 4, 3, 1, 3]]), crowd])

    a = ds[0].annotations

    assert a.boxes.tolist() == [[1.0, 1.0, 4.0, 3.0]]
    assert a.masks is not None and a.masks.shape == (1, 8, 10)
    assert a.crowd_boxes.dtype == torch.float32 and a.crowd_boxes.tolist() == [[5.0, 4.0, 8.0, 6.0]]
    assert (ds.report.num_instances, ds.report.num_crowd) == (1, 1)


def test_image_without_annotations_is_kept_as_a_negative(tmp_path: Path) -> None:
    _write_image(tmp_path / "img" / "a.png", 8, 10)
    _write_image(tmp_path / "img" / "b.png", 6, 4)
    images = [
        {"id": 1, "file_name": "a.png", "height": 8, "width": 10},
        {"id": 2, "file_name": "b.png", "height": 6, "width": 4},
    ]
    path = _write_json(tmp_path / "ann.json", images, [_ann(1, 1, [1, 1, 3, 2])])
    ds = CocoDataset(path, tmp_path / "img")

    negative = ds[1]

    assert len(ds) == 2 and negative.file_name == "b.png"
    a = negative.annotations
    assert a.boxes.shape == (0, 4) and a.labels.shape == (0,)
    assert a.masks is not None and a.masks.shape == (0, 6, 4)
    assert ds.aspect_ratios() == [10 / 8, 4 / 6]
    assert [s.file_name for s in (ds[0], ds[1])] == ["a.png", "b.png"]
    assert ds.report.num_negatives == 1
    assert ds.report.summary().startswith("2 images (1 without instances: negatives), 1 instances")

    dropped = CocoDataset(path, tmp_path / "img", drop_empty=True)
    assert len(dropped) == 1 and dropped.image_ids == [1]


def test_gappy_category_ids_map_to_contiguous_labels(tmp_path: Path) -> None:
    categories = [{"id": 7, "name": "seven"}, {"id": 1, "name": "one"}, {"id": 3, "name": "three"}]
    anns = [dict(_ann(i, 1, [1, 1, 2, 2]), category_id=c) for i, c in enumerate([3, 7, 1, 7], start=1)]
    _write_image(tmp_path / "img" / "a.png", 8, 10)
    images = [{"id": 1, "file_name": "a.png", "height": 8, "width": 10}]
    ds = CocoDataset(_write_json(tmp_path / "ann.json", images, anns, categories), tmp_path / "img")

    assert ds.category_ids == (1, 3, 7)
    assert ds.class_names == ("one", "three", "seven")
    assert [ds.label_of(c) for c in (1, 3, 7)] == [0, 1, 2]
    assert [ds.category_id(label) for label in (0, 1, 2)] == [1, 3, 7]
    assert ds[0].annotations.labels.tolist() == [1, 2, 0, 2]
    with pytest.raises(KeyError):
        ds.label_of(2)


def test_keypoints_become_continuous_coordinates(tmp_path: Path) -> None:
    categories = [{"id": 1, "name": "person", "keypoints": ["left_eye", "right_eye"]}]
    _write_image(tmp_path / "img" / "a.png", 8, 10)
    images = [{"id": 1, "file_name": "a.png", "height": 8, "width": 10}]
    anns = [
        _ann(1, 1, [1, 1, 5, 5], keypoints=[2, 3, 2, 7, 9, 0]),
        _ann(2, 1, [2, 2, 3, 3]),  # a person without keypoints: all unlabelled
    ]
    ds = CocoDataset(_write_json(tmp_path / "ann.json", images, anns, categories), tmp_path / "img")

    keypoints = ds[0].annotations.keypoints

    assert ds.keypoint_names == ("left_eye", "right_eye")
    assert keypoints is not None and keypoints.dtype == torch.float32
    assert keypoints.tolist() == [[[2.5, 3.5, 2.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]


# ------------------------------------------------------------ validation


def test_each_bad_case_is_reported_and_skipped(tmp_path: Path) -> None:
    _write_image(tmp_path / "img" / "a.png", 8, 10)
    images = [
        {"id": 1, "file_name": "a.png", "height": 8, "width": 10},
        {"id": 2, "file_name": "gone.png", "height": 8, "width": 10},
    ]
    square = [1, 1, 4, 1, 4, 3, 1, 3]
    anns = [
        _ann(10, 1, [1, 1, 3, 2], [square]),  # good
        _ann(11, 1, [2, 2, 0, 3]),  # zero width
        _ann(12, 1, [12, 1, 5, 5]),  # entirely right of the 10-pixel-wide image
        _ann(13, 1, [1, 1, 3, 2], [[1, 1, 4, 1]]),  # only a 2-point polygon: dropped
        _ann(14, 1, [1, 1, 3, 2], [[1, 1, 4, 1], square]),  # bad part dropped, instance kept
        dict(_ann(15, 1, [1, 1, 3, 2]), category_id=99),  # unknown category
        _ann(16, 2, [1, 1, 3, 2]),  # on the image whose file is missing: goes with it
        _ann(17, 42, [1, 1, 3, 2]),  # unknown image id
    ]
    ds = CocoDataset(_write_json(tmp_path / "ann.json", images, anns), tmp_path / "img")

    report = ds.report
    assert report.counts == {
        coco.DEGENERATE_BOX: 2,
        coco.SHORT_POLYGON: 2,
        coco.NO_VALID_POLYGON: 1,
        coco.UNKNOWN_CATEGORY: 1,
        coco.MISSING_IMAGE: 1,
        coco.UNKNOWN_IMAGE: 1,
    }
    assert [(p.file_name, p.annotation_id) for p in report.examples[coco.DEGENERATE_BOX]] == [
        ("a.png", 11),
        ("a.png", 12),
    ]
    assert [(p.file_name, p.annotation_id) for p in report.examples[coco.SHORT_POLYGON]] == [
        ("a.png", 13),
        ("a.png", 14),
    ]
    assert report.examples[coco.NO_VALID_POLYGON][0].annotation_id == 13
    assert report.examples[coco.UNKNOWN_CATEGORY][0].annotation_id == 15
    assert report.examples[coco.MISSING_IMAGE][0].file_name == "gone.png"
    assert report.examples[coco.UNKNOWN_IMAGE][0].annotation_id == 17
    summary = report.summary()
    assert "1 images, 2 instances" in summary and "8 problems" in summary
    assert f"{coco.UNKNOWN_CATEGORY}: 1" in summary and "gone.png" in summary

    # What is left loads without an exception: annotations 10 and 14, the same square.
    assert len(ds) == 1
    a = ds[0].annotations
    assert a.boxes.tolist() == [[1.0, 1.0, 4.0, 3.0]] * 2
    assert a.masks is not None and torch.equal(a.masks[0], a.masks[1]) and int(a.masks[1].sum()) == 6


def test_report_keeps_at_most_five_examples_per_kind(tmp_path: Path) -> None:
    ds = _one_image_dataset(tmp_path, [_ann(i, 1, [1, 1, 0, 1]) for i in range(8)])
    assert ds.report.counts == {coco.DEGENERATE_BOX: 8}
    assert [p.annotation_id for p in ds.report.examples[coco.DEGENERATE_BOX]] == [0, 1, 2, 3, 4]


def test_malformed_segmentations_are_reported(tmp_path: Path) -> None:
    anns = [
        _ann(1, 1, [1, 1, 3, 2], {"size": [4, 4], "counts": [16]}),  # RLE of another size
        _ann(2, 1, [1, 1, 3, 2], {"size": [8, 10], "counts": [3, 4]}),  # counts do not cover the image
        _ann(3, 1, [1, 1, 3, 2], [[1, 1, 4, 1, 4]]),  # odd number of coordinates
    ]
    ds = _one_image_dataset(tmp_path, anns)
    assert ds.report.counts == {coco.BAD_SEGMENTATION: 3, coco.NO_VALID_POLYGON: 1}
    assert len(ds[0].annotations) == 0


def test_size_mismatch_is_dropped_at_construction_or_raised_when_read(tmp_path: Path) -> None:
    _write_image(tmp_path / "img" / "a.png", 8, 10)
    images = [{"id": 1, "file_name": "a.png", "height": 10, "width": 8}]
    path = _write_json(tmp_path / "ann.json", images, [])

    checked = CocoDataset(path, tmp_path / "img")
    assert len(checked) == 0 and checked.report.counts == {coco.SIZE_MISMATCH: 1}
    assert "image is 8x10" in checked.report.examples[coco.SIZE_MISMATCH][0].detail

    unchecked = CocoDataset(path, tmp_path / "img", check_sizes=False)
    assert len(unchecked) == 1 and unchecked.report.total == 0
    with pytest.raises(ImageSizeMismatchError, match="a.png"):
        unchecked[0]


def test_exif_rotation_counts_in_the_size_check(tmp_path: Path) -> None:
    # Stored 8 high, 10 wide; orientation 6 (rotate 90) shows it 10 high, 8 wide.
    _write_image(tmp_path / "img" / "a.jpg", 8, 10, orientation=6)
    assert read_image_size(tmp_path / "img" / "a.jpg") == (10, 8)
    stored = [{"id": 1, "file_name": "a.jpg", "height": 8, "width": 10}]
    shown = [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 8}]

    assert CocoDataset(_write_json(tmp_path / "s.json", stored, []), tmp_path / "img").report.counts == {
        coco.SIZE_MISMATCH: 1
    }
    ds = CocoDataset(_write_json(tmp_path / "d.json", shown, []), tmp_path / "img")
    assert len(ds) == 1 and ds[0].image.shape == (10, 8, 3)


def test_coco_property_and_pickling(tmp_path: Path) -> None:
    ds = _one_image_dataset(tmp_path, [_ann(1, 1, [1, 1, 3, 2])])
    assert ds.coco.getImgIds() == [1] and ds.coco.getAnnIds() == [1]
    assert ds.image_ids == [1] and ds.json_path == tmp_path / "ann.json"

    copy = pickle.loads(pickle.dumps(ds))

    assert copy._coco is None  # rebuilt on demand, not shipped to workers
    assert torch.equal(copy[0].annotations.boxes, ds[0].annotations.boxes)


# ------------------------------------------------------------ real data


def test_balloon_train_loads_cleanly() -> None:
    root = shared_dir() / "data" / "balloon"
    if not (root / "train.json").is_file():
        pytest.skip(f"balloon dataset not found at {root}")
    ds = CocoDataset(root / "train.json", root / "train")

    assert ds.report.total == 0, ds.report.summary()
    assert len(ds) == 61 and ds.report.num_instances == 255
    assert ds.category_ids == (1,) and ds.class_names == ("balloon",)
    for i in range(len(ds)):
        sample = ds[i]
        a = sample.annotations
        assert len(a) >= 1
        assert a.masks is not None and a.masks.shape[1:] == sample.image.shape[:2]
        assert (a.masks.flatten(1).sum(1) > 0).all()
        assert (a.boxes[:, 2:] > a.boxes[:, :2]).all()


# ------------------------------------------------------------ every annotation validated at load time


def _rle_string(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def test_corrupt_compressed_rle_is_reported_and_skipped(tmp_path: Path) -> None:
    mask = np.zeros((8, 10), dtype=np.uint8)
    mask[2:6, 3:9] = 1
    good = _rle_string(mask)
    wide = _rle_string(np.ones((8, 10)))  # runs [0, 80]: 80 takes two characters, a cut can split it
    assert any(ord(c) - 48 & 0x20 for c in wide)
    cut = next(i for i, c in enumerate(wide) if ord(c) - 48 & 0x20) + 1  # after a "more follows" character
    corrupt = {
        2: wide[:cut],  # truncated inside a run: pycocotools would read past the string
        3: good[:-1],  # truncated at a run boundary: the runs no longer cover the image
        4: good + "1",  # one run too many
        5: good[:2] + "~" + good[3:],  # a character outside the alphabet
        6: "\u00e9" + good,  # not ASCII
        7: "",  # no runs at all
    }
    anns = [_ann(1, 1, [3, 2, 6, 4], {"size": [8, 10], "counts": good})]
    anns += [_ann(i, 1, [3, 2, 6, 4], {"size": [8, 10], "counts": c}) for i, c in corrupt.items()]

    ds = _one_image_dataset(tmp_path, anns)

    assert ds.report.counts == {coco.BAD_SEGMENTATION: 6}, ds.report.summary()
    assert ds.report.examples[coco.BAD_SEGMENTATION][0].detail.startswith("corrupt compressed RLE: truncated")
    assert len(ds) == 1
    for _ in range(3):  # the kept mask decodes the same every time
        a = ds[0].annotations
        assert a.masks is not None and len(a) == 1 and np.array_equal(a.masks[0].numpy(), mask)
    assert "sum to 70, not 8x10" in ds.report.examples[coco.BAD_SEGMENTATION][1].detail
    # The ground truth for COCOeval leaves them out too.
    assert ds.coco.getAnnIds() == [1]


def test_uncompressed_rle_must_be_non_negative_integers(tmp_path: Path) -> None:
    anns = [
        _ann(1, 1, [1, 1, 3, 2], {"size": [8, 10], "counts": [90, -10]}),  # sums to 80, one negative
        _ann(2, 1, [1, 1, 3, 2], {"size": [8, 10], "counts": [40.5, 39.5]}),
        _ann(3, 1, [1, 1, 3, 2], {"size": [8, 10], "counts": [True, 79]}),
        _ann(4, 1, [1, 1, 3, 2], {"size": ["8", 10], "counts": [80]}),
        _ann(5, 1, [1, 1, 3, 2], {"size": [10, 8], "counts": [80]}),  # swapped size
        _ann(6, 1, [1, 1, 3, 2], {"size": [8, 10], "counts": {"a": 1}}),
        _ann(7, 1, [1, 1, 3, 2], {"size": [8, 10], "counts": [10, 70]}),  # good
    ]
    ds = _one_image_dataset(tmp_path, anns)
    assert ds.report.counts == {coco.BAD_SEGMENTATION: 6}
    assert len(ds[0].annotations) == 1


def test_malformed_values_are_counted_and_skipped(tmp_path: Path) -> None:
    square = [1, 1, 4, 1, 4, 3, 1, 3]
    anns: list[Any] = [
        _ann(1, 1, [1, 1, 3, 2], [square]),  # good
        "not an annotation",
        dict(_ann(0, 1, [1, 1, 3, 2]), id=None),  # no id
        dict(_ann(0, 1, [1, 1, 3, 2]), id="2"),  # a string id
        _ann(1, 1, [1, 1, 3, 2]),  # a repeated id
        dict(_ann(3, 1, [1, 1, 3, 2]), image_id="1"),  # a string image id
        dict(_ann(4, 1, [1, 1, 3, 2]), category_id=[1]),  # unhashable category
        dict(_ann(5, 1, [1, 1, 3, 2]), iscrowd="yes"),
        _ann(6, 1, [1, float("nan"), 3, 2]),  # NaN in the box
        _ann(7, 1, [1, 1, 10**400, 2]),  # an integer beyond float range
        _ann(8, 1, "1 1 3 2"),  # type: ignore[arg-type]
        _ann(9, 1, [1, 1, -3, 2]),  # negative width
        _ann(10, 1, [1, 1, 3, 2], [[1, 1, 4, True, 4, 3]]),  # a boolean coordinate
        _ann(11, 1, [1, 1, 3, 2], [[1, 1, 4e9, 1, 4, 3]]),  # a vertex far outside the image
        _ann(12, 1, [1, 1, 3, 2], [square, "x"]),  # one bad part: the good one is kept
        _ann(13, 1, [1, 1, 3, 2], 42),  # type: ignore[arg-type]
    ]
    ds = _one_image_dataset(tmp_path, anns)

    assert ds.report.counts == {
        coco.BAD_ANNOTATION: 2,
        coco.BAD_ANNOTATION_ID: 2,
        coco.DUPLICATE_ANNOTATION: 1,
        coco.UNKNOWN_IMAGE: 1,
        coco.UNKNOWN_CATEGORY: 1,
        coco.BAD_BOX: 3,
        coco.DEGENERATE_BOX: 1,
        coco.BAD_SEGMENTATION: 4,
        coco.NO_VALID_POLYGON: 2,
    }, ds.report.summary()
    a = ds[0].annotations
    assert len(a) == 2 and a.masks is not None and torch.equal(a.masks[0], a.masks[1])


def test_malformed_keypoints_keep_the_instance_unlabelled(tmp_path: Path) -> None:
    categories = [{"id": 1, "name": "person", "keypoints": ["a", "b"]}]
    _write_image(tmp_path / "img" / "a.png", 8, 10)
    images = [{"id": 1, "file_name": "a.png", "height": 8, "width": 10}]
    anns = [
        _ann(1, 1, [1, 1, 5, 5], keypoints=[2, 3, 2, 7, 9, 2]),
        _ann(2, 1, [1, 1, 5, 5], keypoints=[2, 3, 2, float("inf"), 9, 2]),
        _ann(3, 1, [1, 1, 5, 5], keypoints=[2, 3, 2, 1e39, 9, 2]),  # beyond float32
        _ann(4, 1, [1, 1, 5, 5], keypoints=7),
        _ann(5, 1, [1, 1, 5, 5], keypoints=["2", 3, 2, 7, 9, 2]),
    ]
    ds = CocoDataset(_write_json(tmp_path / "ann.json", images, anns, categories), tmp_path / "img")
    assert ds.report.counts == {coco.BAD_KEYPOINTS: 4}
    keypoints = ds[0].annotations.keypoints
    assert keypoints is not None and keypoints.shape == (5, 2, 3)
    assert torch.isfinite(keypoints).all() and (keypoints[1:] == 0).all()


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


GOOD_IMAGE = {"id": 1, "file_name": "a.png", "height": 8, "width": 10}
CATS = [{"id": 1}]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a JSON file"),
        ("", "not a JSON file"),
        (json.dumps([GOOD_IMAGE]), "expected a COCO object .* got a JSON array"),
        (json.dumps({"annotations": [], "categories": [{"id": 1}]}), "no 'images' list"),
        (json.dumps({"images": {}, "categories": [{"id": 1}]}), "'images' is a object, not a list"),
        (json.dumps({"images": [GOOD_IMAGE], "annotations": {}, "categories": [{"id": 1}]}),
         "'annotations' is a object, not a list"),
        (json.dumps({"images": [{"file_name": "a.png", "height": 8, "width": 10}], "categories": CATS}),
         "image entry 0 has no integer 'id'"),
        (json.dumps({"images": [dict(GOOD_IMAGE, id="1")], "categories": [{"id": 1}]}),
         "image entry 0 has no integer 'id'"),
        (json.dumps({"images": [{"id": 1, "height": 8, "width": 10}], "categories": [{"id": 1}]}),
         r"image entry 0 \(id 1\) has no 'file_name'"),
        (json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 10}], "categories": [{"id": 1}]}),
         "needs positive integer 'height' and 'width', got None and 10"),
        (json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": 8}], "categories": [{"id": 1}]}),
         "needs positive integer 'height' and 'width'"),
        (json.dumps({"images": [dict(GOOD_IMAGE, height=-8)], "categories": [{"id": 1}]}),
         "needs positive integer 'height' and 'width'"),
        (json.dumps({"images": [GOOD_IMAGE, 3], "categories": [{"id": 1}]}), "image entry 1 is a number"),
        (json.dumps({"images": [GOOD_IMAGE], "annotations": []}), "no categories"),
        (json.dumps({"images": [GOOD_IMAGE], "annotations": [], "categories": []}), "no categories"),
        (json.dumps({"images": [GOOD_IMAGE], "categories": [{"name": "x"}]}),
         "category 0 has no integer 'id'"),
        (json.dumps({"images": [GOOD_IMAGE], "categories": [{"id": 1}, {"id": 1}]}),
         "category id 1 appears twice"),
        (json.dumps({"images": [GOOD_IMAGE], "categories": [{"id": 1, "keypoints": 17}]}),
         "'keypoints' is not a list of names"),
    ],
)
def test_bad_structure_is_a_one_line_dataset_error(tmp_path: Path, content: str, message: str) -> None:
    _write_image(tmp_path / "img" / "a.png", 8, 10)
    path = _write_text(tmp_path / "ann.json", content)
    with pytest.raises(DatasetError, match=message) as info:
        CocoDataset(path, tmp_path / "img")
    text = str(info.value)
    assert text.startswith(str(path)) and "\n" not in text
    assert isinstance(info.value, ValueError)  # callers catching ValueError still do


def test_missing_or_binary_annotation_file_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such annotation file"):
        CocoDataset(tmp_path / "absent.json", tmp_path)
    path = tmp_path / "bytes.json"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(DatasetError, match="not a JSON file"):
        CocoDataset(path, tmp_path)


def test_file_without_annotations_has_only_negatives(tmp_path: Path) -> None:
    _write_image(tmp_path / "img" / "a.png", 8, 10)
    path = _write_text(tmp_path / "ann.json", json.dumps({"images": [GOOD_IMAGE], "categories": [{"id": 1}]}))
    ds = CocoDataset(path, tmp_path / "img")
    assert len(ds) == 1 and ds.report.total == 0 and ds.class_names == ("1",)
    a = ds[0].annotations
    assert a.boxes.shape == (0, 4) and a.masks is not None and a.masks.shape == (0, 8, 10)
    # ... and it goes through the training transform as a negative.
    cfg = InputConfig(min_size=16, max_size=100, train_min_sizes=(16,))
    _, targets = train_transform(ds[0], cfg, np.random.default_rng(0))
    assert len(targets) == 0 and targets.masks is not None and targets.masks.shape == (0, 16, 20)


def test_image_names_the_file_system_cannot_hold_are_missing_images(tmp_path: Path) -> None:
    _write_image(tmp_path / "img" / "a.png", 8, 10)
    images = [
        GOOD_IMAGE,
        {"id": 2, "file_name": "b\u0000.png", "height": 8, "width": 10},
        {"id": 3, "file_name": "c" * 5000 + ".png", "height": 8, "width": 10},  # too long for a name
    ]
    ds = CocoDataset(_write_json(tmp_path / "ann.json", images, []), tmp_path / "img")
    assert len(ds) == 1 and ds.report.counts == {coco.MISSING_IMAGE: 2}


def test_size_mismatch_error_is_a_dataset_error() -> None:
    assert issubclass(ImageSizeMismatchError, DatasetError)


def test_repeated_image_id_drops_every_image_of_it(tmp_path: Path) -> None:
    _write_image(tmp_path / "img" / "a.png", 8, 10)
    _write_image(tmp_path / "img" / "b.png", 8, 10)
    _write_image(tmp_path / "img" / "c.png", 8, 10)
    images = [GOOD_IMAGE, dict(GOOD_IMAGE, file_name="b.png"), dict(GOOD_IMAGE, id=2, file_name="c.png")]
    anns = [_ann(1, 1, [1, 1, 3, 2]), _ann(2, 2, [1, 1, 3, 2])]
    ds = CocoDataset(_write_json(tmp_path / "ann.json", images, anns), tmp_path / "img")
    # Annotation 1 could be on a.png or b.png: neither is kept, and nothing else is reported.
    assert ds.file_names == ["c.png"] and len(ds[0].annotations) == 1
    assert ds.report.counts == {coco.DUPLICATE_IMAGE: 1}
