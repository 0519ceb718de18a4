"""Tests for maskrcnn.data.formats.common (the shared COCO builder) and the format dispatch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn.data import coco as coco_module
from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.formats import align_categories, detect_format, open_dataset, read_source
from maskrcnn.data.formats.coco_json import image_folder
from maskrcnn.data.formats.common import (
    SHAPE_OUTSIDE,
    UNKNOWN_CLASS,
    CocoBuilder,
    DatasetError,
    ellipse,
    rectangle,
)

BALLOON = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "balloon"


def _image(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 60)).save(path)
    return path


def _decode(segmentation: object, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, list):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)))
    rle = dict(segmentation)  # type: ignore[arg-type]
    rle["counts"] = rle["counts"].encode()
    return mask_utils.decode(rle)


def test_rectangle_takes_corners_in_any_order() -> None:
    expected = [[1, 2], [5, 2], [5, 7], [1, 7]]
    assert rectangle(1, 2, 5, 7).tolist() == expected
    assert rectangle(5, 7, 1, 2).tolist() == expected
    assert rectangle(5, 2, 1, 7).tolist() == expected


@pytest.mark.parametrize(
    "rx, ry, theta", [(3, 3, 0.0), (40, 40, 0.0), (30, 10, 0.0), (30, 10, 0.7), (200, 5, 2.0)]
)
def test_ellipse_polygon_has_the_ellipse_area_and_extent(rx: float, ry: float, theta: float) -> None:
    points = ellipse(100.0, 80.0, rx, ry, theta)
    x, y = points[:, 0], points[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))  # shoelace
    assert area == pytest.approx(math.pi * rx * ry, rel=1e-9)
    # Every vertex lies on one ellipse of the same shape, a little larger (the polygon's corners
    # outside, its edges inside): rotate back and check the implicit equation.
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * (x - 100) + s * (y - 80), -s * (x - 100) + c * (y - 80)
    level = (u / rx) ** 2 + (v / ry) ** 2
    np.testing.assert_allclose(level, level[0], rtol=1e-9)
    assert 1.0 < level[0] < 1.05
    assert 12 <= len(points) <= 360


def test_builder_counts_each_problem_and_keeps_the_rest(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    builder = CocoBuilder(tmp_path, classes=("cat", "dog"), closed=True)
    image = builder.add_image(tmp_path / "a.png", "labels.json")
    assert image == 1 and builder.image_size(1) == (48, 64)
    assert builder.add_image(tmp_path / "a.png", "labels.json") == 1  # the same file once
    assert builder.add_image(tmp_path / "missing.png", "labels.json") is None
    assert builder.add_image(tmp_path / "a.png", "labels.json", size=(64, 48)) == 1  # already added
    _image(tmp_path / "b.png")
    assert builder.add_image(tmp_path / "b.png", "labels.json", size=(64, 48)) is None  # HxW swapped
    assert builder.class_name("bird", "labels.json", "shape 4") is None
    assert builder.class_name("", "labels.json", "shape 5") is None
    square = rectangle(10, 10, 30, 20)
    assert builder.add_polygons(1, "cat", [square], "labels.json", "shape 0")
    assert not builder.add_polygons(1, "dog", [[[1, 1], [5, 5]]], "labels.json", "shape 1")  # 2 points
    assert not builder.add_polygons(1, "dog", [rectangle(70, 50, 90, 60)], "labels.json", "shape 2")
    assert not builder.add_polygons(1, "dog", [[[0, 0], [np.nan, 3], [4, 4]]], "labels.json", "shape 3")
    # Two parts, one too short: the instance keeps the other.
    assert builder.add_polygons(1, "dog", [[[0, 0], [1, 1]], rectangle(0, 0, 8, 8)], "labels.json", "shape 6")
    mask = np.zeros((48, 64), bool)
    mask[5:9, 40:50] = True
    assert builder.add_mask(1, "dog", mask, "labels.json", "shape 7")
    assert not builder.add_mask(1, "dog", np.zeros((48, 64), bool), "labels.json", "shape 8")
    assert builder.add_mask(1, "cat", mask, "labels.json", "shape 9", crowd=True)
    converted = builder.result("test", tmp_path / "labels.json")
    report = converted.report
    assert report.counts == {
        coco_module.MISSING_IMAGE: 1, coco_module.SIZE_MISMATCH: 1, UNKNOWN_CLASS: 1,
        "region without a class": 1,
        coco_module.SHORT_POLYGON: 2, SHAPE_OUTSIDE: 1, "malformed shape": 1, "empty mask": 1,
    }
    assert (report.num_images, report.num_instances, report.num_crowd, report.num_negatives) == (1, 3, 1, 0)
    assert all(p.file_name == "labels.json" for examples in report.examples.values() for p in examples)
    assert "shape 4" in report.examples[UNKNOWN_CLASS][0].detail
    coco = converted.coco
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2, 2, 1]
    first = coco["annotations"][0]
    assert first["bbox"] == [10, 10, 20, 10] and first["iscrowd"] == 0
    assert first["area"] == int(_decode(first["segmentation"], 48, 64).sum()) == 200
    assert coco["annotations"][2]["area"] == 40 and coco["annotations"][2]["bbox"] == [40, 5, 10, 4]
    assert coco["annotations"][3]["iscrowd"] == 1
    np.testing.assert_array_equal(_decode(coco["annotations"][2]["segmentation"], 48, 64), mask)
    # The dict is what CocoDataset reads: same boxes, masks and crowd regions.
    dataset = CocoDataset(tmp_path / "labels.json", tmp_path, data=coco, report=report)
    sample = dataset[0]
    assert sample.annotations.labels.tolist() == [0, 1, 1]
    assert sample.annotations.crowd_boxes.tolist() == [[40, 5, 50, 9]]
    assert dataset.report is report and report.num_instances == 3


def test_open_classes_are_sorted_and_the_clip_is_to_the_image(tmp_path: Path) -> None:
    _image(tmp_path / "sub" / "a.png")
    builder = CocoBuilder(tmp_path)
    image = builder.add_image(tmp_path / "sub" / "a.png", "x")
    assert image is not None
    for name in ("zebra", "ant", "moth"):
        assert builder.class_name(name, "x", "s") == name
    # Half outside: kept, its box clipped to the image.
    assert builder.add_polygons(image, "moth", [rectangle(-10, -5, 20, 10)], "x", "s")
    converted = builder.result("test", tmp_path / "x")
    assert [c["name"] for c in converted.coco["categories"]] == ["ant", "moth", "zebra"]
    assert converted.coco["images"][0]["file_name"] == "sub/a.png"
    assert converted.coco["annotations"][0]["bbox"] == [0, 0, 20, 10]
    assert converted.coco["annotations"][0]["category_id"] == 2


def test_a_source_without_any_class_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no class found"):
        CocoBuilder(tmp_path).result("test", tmp_path / "x.json")


def test_align_categories_uses_the_models_ids_by_name() -> None:
    coco = {"categories": [{"id": 1, "name": "b"}, {"id": 2, "name": "c"}, {"id": 3, "name": "z"}],
            "annotations": [{"category_id": 1}, {"category_id": 2}, {"category_id": 3}]}
    align_categories(coco, ["a", "b", "c"], [7, 8, 9])
    assert [c["id"] for c in coco["categories"]] == [8, 9, 10]
    assert [a["category_id"] for a in coco["annotations"]] == [8, 9, 10]


def test_a_coco_file_finds_its_images_beside_it_or_in_a_folder_named_after_it(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 48, "width": 64}], "annotations": [],
            "categories": [{"id": 1, "name": "x"}]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    assert detect_format(path) == "coco"
    assert image_folder(path, data) == tmp_path / "train"
    assert read_source(path).image_dir == tmp_path / "train"
    assert len(open_dataset(path)) == 1
    (tmp_path / "train" / "a.png").rename(tmp_path / "b.png")
    with pytest.raises(DatasetError, match="give the folder they are in") as error:
        read_source(path)
    assert "\n" not in str(error.value)
    assert read_source(path, images=tmp_path / "train").image_dir == tmp_path / "train"


def test_detect_names_what_it_looked_for(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such annotation file or folder"):
        detect_format(tmp_path / "nothing.json")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="not a dataset this program can read") as error:
        detect_format(tmp_path / "notes.txt")
    assert "\n" not in str(error.value)


@pytest.mark.skipif(not BALLOON.is_dir(), reason="needs ../shared/data/balloon")
def test_dataset_from_a_dict_equals_the_dataset_from_its_file() -> None:
    from_file = CocoDataset(BALLOON / "val.json", BALLOON / "val")
    data = json.loads((BALLOON / "val.json").read_text())
    in_memory = CocoDataset(BALLOON / "val.json", BALLOON / "val", data=data)
    assert in_memory.file_names == from_file.file_names
    for index in (0, 5):
        a, b = from_file[index].annotations, in_memory[index].annotations
        assert (a.masks == b.masks).all() and (a.boxes == b.boxes).all()
    assert in_memory.coco.getImgIds() == from_file.coco.getImgIds()
    assert len(in_memory.coco.getAnnIds()) == len(from_file.coco.getAnnIds())
