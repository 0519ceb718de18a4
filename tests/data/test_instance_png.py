"""Tests for maskrcnn.data.instance_png: Penn-Fudan and Cityscapes style instance-id PNGs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.config import InputConfig
from maskrcnn.data import coco, instance_png
from maskrcnn.data.augment import train_transform
from maskrcnn.data.instance_png import InstancePngDataset, masks_to_boxes
from maskrcnn.data.validation import DatasetError


def _write_image(path: Path, height: int, width: int) -> np.ndarray:
    pixels = np.random.default_rng(height * 100 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def _write_ids(path: Path, ids: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids)
    if mode == "P":
        image = image.convert("P")  # palette indices equal to the grey values
    image.save(path)


def _write_classes(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(json.dumps(spec))
    return path


def test_penn_fudan_layout_with_default_suffixes(tmp_path: Path) -> None:
    ids = np.zeros((6, 8), dtype=np.uint8)
    ids[1:4, 2:5] = 1  # rows 1..3, columns 2..4
    ids[5, 7] = 2  # one pixel in the corner
    pixels = _write_image(tmp_path / "PNGImages" / "FudanPed00001.png", 6, 8)
    _write_ids(tmp_path / "PedMasks" / "FudanPed00001_mask.png", ids)
    _write_image(tmp_path / "PNGImages" / "FudanPed00002.png", 6, 8)
    _write_ids(tmp_path / "PedMasks" / "FudanPed00002_mask.png", ids * 0, mode="P")  # no pedestrian
    _write_image(tmp_path / "PNGImages" / "FudanPed00003.png", 6, 8)  # its mask is missing
    classes = _write_classes(
        tmp_path / "classes.json", {"classes": ["pedestrian"], "instance_to_class": "single"}
    )

    ds = InstancePngDataset(tmp_path / "PNGImages", tmp_path / "PedMasks", classes)

    assert len(ds) == 2 and ds.file_names == ["FudanPed00001.png", "FudanPed00002.png"]
    assert ds.category_ids == (1,) and ds.class_names == ("pedestrian",)
    assert ds.report.counts == {instance_png.MISSING_MASK: 1}
    assert ds.report.examples[instance_png.MISSING_MASK][0].file_name == "FudanPed00003.png"
    assert (ds.report.num_images, ds.report.num_instances) == (2, 2)
    assert ds.aspect_ratios() == [8 / 6, 8 / 6]

    sample = ds[0]
    assert sample.image_id == 1 and sample.file_name == "FudanPed00001.png"
    assert torch.equal(sample.image, torch.from_numpy(pixels))
    a = sample.annotations
    assert a.boxes.dtype == torch.float32
    assert a.boxes.tolist() == [[2.0, 1.0, 5.0, 4.0], [7.0, 5.0, 8.0, 6.0]]
    assert a.labels.tolist() == [0, 0]
    assert a.masks is not None and a.masks.dtype == torch.uint8
    assert torch.equal(a.masks, torch.from_numpy(np.stack([ids == 1, ids == 2]).astype(np.uint8)))
    assert a.keypoints is None and a.crowd_boxes.shape == (0, 4)

    empty = ds[1].annotations
    assert empty.boxes.shape == (0, 4) and empty.masks is not None and empty.masks.shape == (0, 6, 8)


def test_cityscapes_layout_ids_crowd_and_unmapped(tmp_path: Path) -> None:
    ids = np.full((4, 6), 7, dtype=np.uint16)  # road: a label id without instances
    ids[0:2, 0:2] = 24001  # person 1
    ids[2:4, 4:6] = 26001  # car 1
    ids[3, 0:3] = 26  # a car group: crowd
    ids[0, 5] = 33001  # bicycle, not among the classes
    ids[1, 3] = 0  # unlabelled
    image_root, mask_root = tmp_path / "leftImg8bit" / "train", tmp_path / "gtFine" / "train"
    _write_image(image_root / "aachen" / "aachen_000000_000019_leftImg8bit.png", 4, 6)
    _write_ids(mask_root / "aachen" / "aachen_000000_000019_gtFine_instanceIds.png", ids)
    _write_image(image_root / "aachen" / "stray.png", 4, 6)  # not named *_leftImg8bit
    spec = {
        "classes": ["person", "car"],
        "instance_to_class": "cityscapes",
        "class_ids": {"24": "person", "26": "car"},
    }
    classes = _write_classes(tmp_path / "classes.json", spec)

    ds = InstancePngDataset(
        image_root,
        mask_root,
        classes,
        image_suffix="_leftImg8bit",
        mask_suffix="_gtFine_instanceIds",
    )

    assert len(ds) == 1 and ds.file_names == ["aachen/aachen_000000_000019_leftImg8bit.png"]
    assert ds.category_ids == (1, 2) and ds.class_names == ("person", "car")
    assert ds.report.counts == {instance_png.UNMAPPED_ID: 1, instance_png.UNPAIRED_IMAGE: 1}
    assert ds.report.examples[instance_png.UNMAPPED_ID][0].detail == "id 33001 ignored"
    assert ds.report.examples[instance_png.UNPAIRED_IMAGE][0].file_name == "aachen/stray.png"
    a = ds[0].annotations
    assert a.labels.tolist() == [0, 1]
    assert a.boxes.tolist() == [[0.0, 0.0, 2.0, 2.0], [4.0, 2.0, 6.0, 4.0]]
    assert a.crowd_boxes.tolist() == [[0.0, 3.0, 3.0, 4.0]]
    assert a.masks is not None and int(a.masks[1].sum()) == 4 and int(a.masks.sum()) == 8


def test_explicit_id_map_and_same_folder_masks(tmp_path: Path) -> None:
    ids = np.zeros((3, 4), dtype=np.uint8)
    ids[0, 0], ids[1, 1:3], ids[2, 3] = 2, 1, 3
    _write_image(tmp_path / "data" / "pet.png", 3, 4)
    _write_ids(tmp_path / "data" / "pet_mask.png", ids)  # beside the image: not taken for an image
    spec = {"classes": ["cat", "dog"], "instance_to_class": {"1": "cat", "2": "dog"}}
    classes = _write_classes(tmp_path / "classes.json", spec)

    ds = InstancePngDataset(tmp_path / "data", tmp_path / "data", classes)

    assert len(ds) == 1 and ds.report.counts == {instance_png.UNMAPPED_ID: 1}
    a = ds[0].annotations
    assert a.labels.tolist() == [0, 1]  # id 1 (cat) then id 2 (dog)
    assert a.boxes.tolist() == [[1.0, 1.0, 3.0, 2.0], [0.0, 0.0, 1.0, 1.0]]
    assert ds.label_of(2) == 1 and ds.category_id(0) == 1


def test_size_mismatch_and_unreadable_mask_are_reported(tmp_path: Path) -> None:
    _write_image(tmp_path / "img" / "a.png", 4, 6)
    _write_ids(tmp_path / "mask" / "a_mask.png", np.ones((6, 4), dtype=np.uint8))
    _write_image(tmp_path / "img" / "b.png", 4, 6)
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(tmp_path / "mask" / "b_mask.png")  # RGB
    classes = _write_classes(tmp_path / "c.json", {"classes": ["x"], "instance_to_class": "single"})

    ds = InstancePngDataset(tmp_path / "img", tmp_path / "mask", classes)

    assert len(ds) == 0
    assert ds.report.counts == {coco.SIZE_MISMATCH: 1, instance_png.UNREADABLE_MASK: 1}
    assert "single-channel" in ds.report.examples[instance_png.UNREADABLE_MASK][0].detail


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"classes": [], "instance_to_class": "single"}, "non-empty"),
        ({"classes": ["a", "b"], "instance_to_class": "single"}, "exactly one"),
        ({"classes": ["a"], "instance_to_class": {"1": "b"}}, "not in 'classes'"),
        ({"classes": ["a"], "instance_to_class": "cityscapes"}, "class_ids"),
        ({"classes": ["a"], "instance_to_class": "semantic"}, "instance_to_class"),
    ],
)
def test_bad_class_file_raises(tmp_path: Path, spec: dict[str, Any], message: str) -> None:
    (tmp_path / "img").mkdir()
    classes = _write_classes(tmp_path / "c.json", spec)
    with pytest.raises(ValueError, match=message):
        InstancePngDataset(tmp_path / "img", tmp_path / "img", classes)


def test_masks_to_boxes_hand_case() -> None:
    masks = torch.zeros((2, 5, 7), dtype=torch.uint8)
    masks[0, 1:3, 2:6] = 1
    masks[1, 4, 0] = 1
    assert masks_to_boxes(masks).tolist() == [[2.0, 1.0, 6.0, 3.0], [0.0, 4.0, 1.0, 5.0]]
    assert masks_to_boxes(torch.zeros((0, 5, 7), dtype=torch.uint8)).shape == (0, 4)


def test_images_without_instances_are_negatives_through_the_training_transform(tmp_path: Path) -> None:
    # An all-background mask and a crowd-only mask (a Cityscapes car group, id 26 < 1000).
    image_root, mask_root = tmp_path / "images", tmp_path / "masks"
    _write_image(image_root / "empty.png", 6, 8)
    _write_ids(mask_root / "empty_mask.png", np.zeros((6, 8), dtype=np.uint16))
    crowd = np.zeros((6, 8), dtype=np.uint16)
    crowd[2:4, 1:5] = 26
    _write_image(image_root / "crowd.png", 6, 8)
    _write_ids(mask_root / "crowd_mask.png", crowd)
    spec = {"classes": ["car"], "instance_to_class": "cityscapes", "class_ids": {"26": "car"}}
    ds = InstancePngDataset(image_root, mask_root, _write_classes(tmp_path / "c.json", spec))
    assert len(ds) == 2 and ds.report.total == 0

    cfg = InputConfig(min_size=12, max_size=100, train_min_sizes=(12,), flip_prob=1.0)
    for i in range(2):
        _, targets = train_transform(ds[i], cfg, np.random.default_rng(i))
        assert targets.boxes.shape == (0, 4) and targets.labels.shape == (0,)
        assert targets.masks is not None and targets.masks.shape == (0, 12, 16)
    assert [len(ds[i].annotations.crowd_boxes) for i in range(2)] == [1, 0]  # sorted: crowd.png first


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "the class file is not JSON"),
        ('["car"]', "expected an object with 'classes'"),
        ('{"classes": ["car"], "instance_to_class": {"one": "car"}}', "keys that are not instance ids"),
    ],
)
def test_unusable_class_file_is_a_dataset_error(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "c.json").write_text(content)
    with pytest.raises(DatasetError, match=message):
        InstancePngDataset(tmp_path / "img", tmp_path / "img", tmp_path / "c.json")
