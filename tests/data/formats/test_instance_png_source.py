"""Tests for maskrcnn.data.formats.instance_png: instance-id PNG datasets converted to COCO."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.data import instance_png as dataset_module
from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.formats import instance_png
from maskrcnn.data.formats.common import Converted, DatasetError
from maskrcnn.data.instance_png import InstancePngDataset


def _image(path: Path, height: int, width: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(height * 100 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _ids(path: Path, ids: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids)
    if mode == "P":
        image = image.convert("P")  # palette indices equal to the grey values
    image.save(path)


def _class_file(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(json.dumps(spec))
    return path


def _read(path: Path, images: Path | None = None) -> Converted:
    return instance_png.read(path, images=images, class_attribute=None, split=None)


def _assert_same_as_dataset(converted: Converted, tmp_path: Path, dataset: InstancePngDataset) -> None:
    """The COCO dict read by CocoDataset gives InstancePngDataset's masks, labels and boxes for every item."""
    json_path = tmp_path / "converted.json"
    json_path.write_text(json.dumps(converted.coco))
    coco = CocoDataset(json_path, converted.image_dir)
    assert coco.report.total == 0
    assert [c["name"] for c in converted.coco["categories"]] == list(dataset.class_names)
    by_name = {coco[i].file_name: coco[i] for i in range(len(coco))}
    assert sorted(by_name) == sorted(dataset.file_names)
    for i in range(len(dataset)):
        expected = dataset[i]
        got = by_name[expected.file_name]
        e, g = expected.annotations, got.annotations
        assert torch.equal(got.image, expected.image)
        assert torch.equal(g.labels, e.labels)
        assert torch.equal(g.boxes, e.boxes)
        assert g.masks is not None and e.masks is not None and torch.equal(g.masks, e.masks)
        assert torch.equal(g.crowd_boxes, e.crowd_boxes)


def _penn_fudan(tmp_path: Path) -> tuple[Path, np.ndarray]:
    ids = np.zeros((6, 8), dtype=np.uint8)
    ids[1:4, 2:5] = 1
    ids[5, 7] = 2
    _image(tmp_path / "PNGImages" / "FudanPed00001.png", 6, 8)
    _ids(tmp_path / "PedMasks" / "FudanPed00001_mask.png", ids)
    _image(tmp_path / "PNGImages" / "FudanPed00002.png", 6, 8)
    _ids(tmp_path / "PedMasks" / "FudanPed00002_mask.png", ids * 0, mode="P")  # no pedestrian: a negative
    _image(tmp_path / "PNGImages" / "FudanPed00003.png", 6, 8)  # its mask is missing
    spec = {
        "classes": ["pedestrian"], "instance_to_class": "single", "images": "PNGImages", "masks": "PedMasks"
    }
    return _class_file(tmp_path / "classes.json", spec), ids


def test_penn_fudan_single_class_and_missing_mask(tmp_path: Path) -> None:
    classes, ids = _penn_fudan(tmp_path)

    converted = _read(classes)

    assert converted.format == "instance-png" and converted.image_dir == tmp_path / "PNGImages"
    coco = converted.coco
    assert [im["file_name"] for im in coco["images"]] == ["FudanPed00001.png", "FudanPed00002.png"]
    assert coco["categories"] == [{"id": 1, "name": "pedestrian", "supercategory": ""}]
    kept = [(a["image_id"], a["category_id"], a["iscrowd"]) for a in coco["annotations"]]
    assert kept == [(1, 1, 0), (1, 1, 0)]
    assert [a["bbox"] for a in coco["annotations"]] == [[2, 1, 3, 3], [7, 5, 1, 1]]
    report = converted.report
    assert report.counts == {dataset_module.MISSING_MASK: 1}
    assert report.examples[dataset_module.MISSING_MASK][0].file_name == "FudanPed00003.png"
    assert (report.num_images, report.num_instances, report.num_negatives) == (2, 2, 1)
    _assert_same_as_dataset(
        converted, tmp_path, InstancePngDataset(tmp_path / "PNGImages", tmp_path / "PedMasks", classes)
    )


def test_explicit_id_map_with_an_unmapped_id(tmp_path: Path) -> None:
    ids = np.zeros((5, 7), dtype=np.uint8)
    ids[0:2, 0:3] = 2  # dog
    ids[3:5, 2:7] = 1  # cat
    ids[4, 0] = 9  # not in the map: ignored, counted
    _image(tmp_path / "img" / "sub" / "pets.png", 5, 7)
    _ids(tmp_path / "ann" / "sub" / "pets.png", ids, mode="P")
    spec = {
        "classes": ["cat", "dog"], "instance_to_class": {"1": "cat", "2": "dog"},
        "images": "img", "masks": "ann", "mask_suffix": "",
    }
    classes = _class_file(tmp_path / "classes.json", spec)

    converted = _read(classes)

    assert [im["file_name"] for im in converted.coco["images"]] == ["sub/pets.png"]
    assert [c["name"] for c in converted.coco["categories"]] == ["cat", "dog"]
    assert [a["category_id"] for a in converted.coco["annotations"]] == [1, 2]
    assert converted.report.counts == {dataset_module.UNMAPPED_ID: 1}
    _assert_same_as_dataset(
        converted, tmp_path, InstancePngDataset(tmp_path / "img", tmp_path / "ann", classes, mask_suffix="")
    )


def test_cityscapes_map_with_a_crowd_region(tmp_path: Path) -> None:
    ids = np.full((4, 6), 7, dtype=np.uint16)  # road: no instances, ignored silently
    ids[0:2, 0:2] = 24001  # person 1
    ids[2:4, 4:6] = 26001  # car 1
    ids[3, 0:3] = 26  # a car group: crowd
    ids[0, 5] = 33001  # bicycle, not among the classes
    images, masks = tmp_path / "leftImg8bit" / "train", tmp_path / "gtFine" / "train"
    _image(images / "aachen" / "aachen_000000_000019_leftImg8bit.png", 4, 6)
    _ids(masks / "aachen" / "aachen_000000_000019_gtFine_instanceIds.png", ids)
    _image(images / "aachen" / "stray.png", 4, 6)  # not named *_leftImg8bit
    options = {"image_suffix": "_leftImg8bit", "mask_suffix": "_gtFine_instanceIds"}
    spec = {
        "classes": ["person", "car"], "instance_to_class": "cityscapes",
        "class_ids": {"24": "person", "26": "car"},
        "images": "leftImg8bit/train", "masks": "gtFine/train", **options,
    }
    classes = _class_file(tmp_path / "cityscapes.json", spec)

    converted = _read(classes)

    annotations = converted.coco["annotations"]
    kept = [(a["id"], a["category_id"], a["iscrowd"]) for a in annotations]
    assert kept == [(1, 1, 0), (2, 2, 0), (3, 2, 1)]
    crowd = annotations[2]
    assert isinstance(crowd["segmentation"], dict) and isinstance(crowd["segmentation"]["counts"], str)
    assert crowd["area"] == 3 and crowd["bbox"] == [0, 3, 3, 1]
    assert converted.report.num_crowd == 1 and converted.report.num_instances == 2
    assert converted.report.counts == {dataset_module.UNMAPPED_ID: 1, dataset_module.UNPAIRED_IMAGE: 1}
    assert converted.report.examples[dataset_module.UNPAIRED_IMAGE][0].file_name == "aachen/stray.png"
    _assert_same_as_dataset(converted, tmp_path, InstancePngDataset(images, masks, classes, **options))


def test_images_argument_replaces_the_images_key(tmp_path: Path) -> None:
    classes, _ = _penn_fudan(tmp_path)
    spec = json.loads(classes.read_text())
    del spec["images"]
    classes.write_text(json.dumps(spec))

    converted = _read(classes, images=tmp_path / "PNGImages")

    assert converted.image_dir == tmp_path / "PNGImages" and converted.report.num_instances == 2


@pytest.mark.parametrize("key", ["images", "masks"])
def test_missing_folder_key_is_one_line_showing_the_key_to_add(tmp_path: Path, key: str) -> None:
    classes, _ = _penn_fudan(tmp_path)
    spec = json.loads(classes.read_text())
    del spec[key]
    classes.write_text(json.dumps(spec))

    with pytest.raises(DatasetError) as info:
        _read(classes)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(classes))
    assert f'add "{key}": "<' in message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a JSON file"),
        ('["a"]', "expected a JSON object"),
        ('{"classes": ["a"], "instance_to_class": "single", "images": "nowhere", "masks": "PedMasks"}',
         "image folder"),
        ('{"classes": ["a"], "instance_to_class": "single", "images": "PNGImages", "masks": 3}', "'masks'"),
        ('{"classes": ["a"], "instance_to_class": "semantic", "images": "PNGImages", "masks": "PedMasks"}',
         "instance_to_class"),
    ],
)
def test_unusable_class_files_are_one_line(tmp_path: Path, content: str, message: str) -> None:
    _penn_fudan(tmp_path)
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DatasetError) as info:
        _read(path)
    assert "\n" not in str(info.value) and message in str(info.value) and str(path) in str(info.value)


def test_detect(tmp_path: Path) -> None:
    classes, _ = _penn_fudan(tmp_path)
    assert instance_png.detect(classes)

    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    labelme = tmp_path / "FudanPed00001.json"
    labelme.write_text(json.dumps({"shapes": [], "imagePath": "a.png", "imageHeight": 6, "imageWidth": 8}))
    broken = tmp_path / "broken.json"
    broken.write_text('{"instance_to_class": ')  # never raises
    listed = tmp_path / "list.json"
    listed.write_text('["instance_to_class"]')
    voc_root = tmp_path / "VOC"
    (voc_root / "SegmentationObject").mkdir(parents=True)
    (voc_root / "JPEGImages").mkdir()
    yaml = tmp_path / "data.yaml"
    yaml.write_text("instance_to_class: single\n")
    others = (coco, labelme, broken, listed, voc_root, yaml, tmp_path / "PNGImages", tmp_path / "absent.json")
    for path in others:
        assert not instance_png.detect(path), path
