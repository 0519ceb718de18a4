"""Tests for maskrcnn.data.formats.via: VGG Image Annotator 1.x/2.x JSON in and out."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from maskrcnn.data.coco import MISSING_IMAGE, SHORT_POLYGON
from maskrcnn.data.formats import detect_format, open_dataset, via
from maskrcnn.data.formats.common import (
    BAD_FILE,
    BAD_SHAPE,
    NO_CLASS,
    NOT_A_REGION,
    SHAPE_OUTSIDE,
    UNKNOWN_CLASS,
    DatasetError,
)
from tests.data.formats.helpers import plain_image as _image


def _polygon(xs: list[Any], ys: list[Any], **attributes: Any) -> dict[str, Any]:
    return {"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
            "region_attributes": attributes}


def _region(name: str, attributes: dict[str, Any] | None = None, **shape: Any) -> dict[str, Any]:
    return {"shape_attributes": {"name": name, **shape}, "region_attributes": attributes or {}}


def _entry(filename: str, regions: Any, size: int = 1234) -> tuple[str, dict[str, Any]]:
    entry = {"filename": filename, "size": size, "regions": regions, "file_attributes": {}}
    return f"{filename}{size}", entry


def _export(path: Path, *entries: tuple[str, dict[str, Any]]) -> Path:
    """A VIA region export (``via_region_data.json`` style)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(entries)))
    return path


def _project(path: Path, entries: list[tuple[str, dict[str, Any]]], region_attributes: dict[str, Any],
             id_list: list[str] | None = None) -> Path:
    """A VIA 2 project file."""
    data = {
        "_via_settings": via._settings("test"),
        "_via_img_metadata": dict(entries),
        "_via_attributes": {"region": region_attributes, "file": {}},
        "_via_data_format_version": "2.0.10",
        "_via_image_id_list": id_list if id_list is not None else [key for key, _ in entries],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _read(path: Path, class_attribute: str | None = None, images: Path | None = None) -> Any:
    return via.read(path, images=images, class_attribute=class_attribute, split=None)


def _decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _names(converted: Any) -> list[str]:
    """The class name of each annotation, in order."""
    names = {c["id"]: c["name"] for c in converted.coco["categories"]}
    return [names[a["category_id"]] for a in converted.coco["annotations"]]


def _details(report: Any, kind: str) -> list[str]:
    return [p.detail for p in report.examples.get(kind, [])]


# ------------------------------------------------------------------------------- variants


def test_via1_regions_object_without_attributes_is_one_class(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "a.jpg")
    _image(tmp_path / "train" / "b.jpg")
    path = _export(
        tmp_path / "train" / "via_region_data.json",
        _entry("a.jpg", {"0": _polygon([2, 20, 11, 2], [2, 3, 18, 2]),
                         "1": _polygon([30, 40, 35], [5, 5, 20])}),
        _entry("b.jpg", {}),  # a negative
    )

    converted = _read(tmp_path / "train")  # the folder holding the one VIA file

    assert converted.source == path and converted.image_dir == tmp_path / "train"
    assert [c["name"] for c in converted.coco["categories"]] == [via.DEFAULT_CLASS]
    assert [im["file_name"] for im in converted.coco["images"]] == ["a.jpg", "b.jpg"]
    first, second = converted.coco["annotations"]
    assert first["segmentation"] == [[2, 2, 20, 3, 11, 18, 2, 2]]  # whole pixels as stored
    assert second["segmentation"] == [[30, 5, 40, 5, 35, 20]]
    assert converted.report.total == 0 and converted.report.num_negatives == 1


def test_via2_list_regions_with_one_attribute(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    square = ([2, 12, 12, 2], [2, 2, 12, 12])
    path = _export(tmp_path / "export.json", _entry("a.jpg", [
        _polygon(*square, name="dog"),
        _polygon(*square, name="cat"),
        _polygon(*square),  # no attribute
        _polygon(*square, name=""),  # empty
        _polygon(*square, name="cat"),
    ]))

    converted = _read(path)

    assert [c["name"] for c in converted.coco["categories"]] == ["cat", "dog"]  # sorted: no option list
    assert _names(converted) == ["dog", "cat", "cat"]
    assert converted.report.counts == {NO_CLASS: 2}
    assert _details(converted.report, NO_CLASS) == ["region 2 of 'a.jpg': no 'name'",
                                                    "region 3 of 'a.jpg': no 'name'"]
    assert converted.report.examples[NO_CLASS][0].file_name == "export.json"


def test_project_dropdown_options_are_the_classes_and_the_order(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    _image(tmp_path / "b.jpg")
    square = ([2, 12, 12, 2], [2, 2, 12, 12])
    entries = [
        _entry("a.jpg", [_polygon(*square, species="horse", note="x"), _polygon(*square, species="unicorn")]),
        _entry("b.jpg", [_polygon(*square, species="zebra")]),
    ]
    attributes = {
        "species": {"type": "dropdown", "description": "", "default_options": {},
                    "options": {"zebra": "striped", "horse": "", "donkey": ""}},
        "note": {"type": "text", "description": "", "default_value": ""},
    }
    path = _project(tmp_path / "via_project.json", entries, attributes, id_list=["b.jpg1234", "a.jpg1234"])

    converted = _read(path, class_attribute="species")

    assert [c["name"] for c in converted.coco["categories"]] == ["zebra", "horse", "donkey"]
    assert [im["file_name"] for im in converted.coco["images"]] == ["b.jpg", "a.jpg"]  # the project's order
    assert _names(converted) == ["zebra", "horse"]
    assert converted.report.counts == {UNKNOWN_CLASS: 1}
    assert _details(converted.report, UNKNOWN_CLASS)[0].startswith(
        "region 1 of 'a.jpg': class 'unicorn' is not one of zebra, horse, donkey")


def test_checkbox_attribute(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    square = ([2, 12, 12, 2], [2, 2, 12, 12])
    regions = [
        _polygon(*square, kind={"car": True}),
        _polygon(*square, kind={"car": False, "bus": True}),
        _polygon(*square, kind={}),  # nothing ticked
        _polygon(*square, kind={"car": True, "bus": True}),  # two ticked
    ]
    attributes = {"kind": {"type": "checkbox", "description": "", "options": {"car": "", "bus": ""},
                           "default_options": {}}}
    path = _project(tmp_path / "p.json", [_entry("a.jpg", regions)], attributes)

    converted = _read(path)  # the project's only attribute

    assert [c["name"] for c in converted.coco["categories"]] == ["car", "bus"]
    assert _names(converted) == ["car", "bus"]
    assert converted.report.counts == {NO_CLASS: 1, BAD_SHAPE: 1}
    assert _details(converted.report, NO_CLASS)[0].startswith("region 2 of 'a.jpg'")
    assert "several options" in _details(converted.report, BAD_SHAPE)[0]


def test_rect_circle_and_ellipse(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg", (200, 160))
    path = _export(tmp_path / "v.json", _entry("a.jpg", [
        _region("rect", {"c": "box"}, x=10, y=20, width=30, height=15),
        _region("circle", {"c": "round"}, cx=100, cy=80, r=25),
        _region("ellipse", {"c": "oval"}, cx=100, cy=80, rx=40, ry=12),  # VIA 1.x: no theta
        _region("ellipse", {"c": "oval"}, cx=100, cy=80, rx=40, ry=12, theta=math.pi / 2),
    ]))

    converted = _read(path)

    assert converted.report.total == 0
    rect, circle, flat, upright = converted.coco["annotations"]
    assert rect["segmentation"] == [[10, 20, 40, 20, 40, 35, 10, 35]] and rect["area"] == 30 * 15
    assert circle["area"] == pytest.approx(math.pi * 25**2, rel=0.02)
    assert flat["area"] == pytest.approx(math.pi * 40 * 12, rel=0.02)
    assert upright["area"] == pytest.approx(flat["area"], rel=0.01)
    assert flat["bbox"] == pytest.approx([60, 68, 80, 24], abs=0.3)
    assert upright["bbox"] == pytest.approx([88, 40, 24, 80], abs=0.3)  # rotated a quarter turn


def test_region_problems_are_counted(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    path = _export(
        tmp_path / "v.json",
        _entry("a.jpg", [
            _polygon([2, 20], [2, 20], c="x"),  # 0: two points
            _polygon([2, 20, 11], [2, 3], c="x"),  # 1: mismatched lengths
            _polygon([2, "a", 11], [2, 3, 4], c="x"),  # 2: not numbers
            _region("polygon", {"c": "x"}, all_points_x=[1, 2, 3]),  # 3: no all_points_y
            _region("polyline", {"c": "x"}, all_points_x=[1, 2, 3], all_points_y=[1, 5, 1]),  # 4
            _region("point", {"c": "x"}, cx=3, cy=3),  # 5
            _region("spline", {"c": "x"}),  # 6: unknown
            _polygon([100, 120, 110], [100, 100, 130], c="x"),  # 7: outside the 64x48 image
            _region("rect", {"c": "x"}, x=1, y=2, width="3", height=4),  # 8: a string
            {"region_attributes": {"c": "x"}},  # 9: no shape
            _polygon([2, 20, 11], [2, 3, 18], c="ok"),  # 10: fine
        ]),
        _entry("missing.jpg", [_polygon([2, 20, 11], [2, 3, 18], c="x")]),
        _entry("http://example.com/photos/remote.jpg", [_polygon([2, 20, 11], [2, 3, 18], c="x")], size=-1),
        ("broken", {"filename": "c.jpg", "size": 1, "regions": 5}),
    )

    converted = _read(path)

    report = converted.report
    assert report.counts == {SHORT_POLYGON: 1, BAD_SHAPE: 6, NOT_A_REGION: 2, SHAPE_OUTSIDE: 1,
                             MISSING_IMAGE: 2, BAD_FILE: 1}
    assert report.num_instances == 1 and report.num_images == 1
    assert all(p.file_name == "v.json" for kind in report.examples for p in report.examples[kind])
    assert _details(report, SHORT_POLYGON)[0].startswith("region 0 of 'a.jpg'")
    bad = _details(report, BAD_SHAPE)
    assert bad[0] == "region 1 of 'a.jpg': 3 all_points_x but 2 all_points_y"
    assert [d.split(":")[0] for d in bad] == [f"region {i} of 'a.jpg'" for i in (1, 2, 3, 6, 8)]  # 9: 6th
    assert [d.split(":")[0] for d in _details(report, NOT_A_REGION)] == [
        "region 4 of 'a.jpg'", "region 5 of 'a.jpg'"]
    assert _details(report, SHAPE_OUTSIDE)[0].startswith("region 7 of 'a.jpg'")
    missing = _details(report, MISSING_IMAGE)
    assert "missing.jpg" in missing[0] and "URL" in missing[1]
    assert "entry 'broken'" in _details(report, BAD_FILE)[0]


def test_images_folder_and_url_with_a_local_copy(tmp_path: Path) -> None:
    _image(tmp_path / "pics" / "a.jpg")
    _image(tmp_path / "pics" / "remote.jpg")
    triangle = _polygon([2, 20, 11], [2, 3, 18])
    path = _export(tmp_path / "ann" / "v.json", _entry("a.jpg", [triangle]),
                   _entry("https://example.com/x/remote.jpg?dl=1", [triangle], size=-1))

    converted = _read(path, images=tmp_path / "pics")

    assert converted.image_dir == tmp_path / "pics"
    assert [im["file_name"] for im in converted.coco["images"]] == ["a.jpg", "remote.jpg"]
    assert converted.report.total == 0


# ------------------------------------------------------------------------------- classes


def test_class_attribute_choice(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    tri = ([2, 20, 11], [2, 3, 18])

    def read_with(attributes: list[dict[str, Any]], given: str | None = None) -> Any:
        path = _export(tmp_path / "v.json", _entry("a.jpg", [_polygon(*tri, **a) for a in attributes]))
        return _read(path, class_attribute=given)

    several = [{"colour": "red", "size": "big"}, {"colour": "blue", "size": "small"}]
    with pytest.raises(DatasetError) as info:
        read_with(several)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "v.json"))
    assert "'colour', 'size'" in message and "--class-attribute" in message
    assert _names(read_with(several, "size")) == ["big", "small"]
    with pytest.raises(DatasetError, match="'shape': no region has it.*'colour', 'size'") as info:
        read_with(several, "shape")
    assert "\n" not in str(info.value)
    # Several attributes, one with a usual name (any case): that one.
    assert _names(read_with([{"Type": "car", "colour": "red"}])) == ["car"]
    assert _names(read_with([{"type": "car", "Label": "vehicle"}])) == ["vehicle"]  # label before type


# ------------------------------------------------------------------------------- files


@pytest.mark.parametrize("text, message", [
    ('{"a.jpg1": {"filename": "a.jpg", "regions": [', "not a JSON file"),
    ('[1, 2]', "not a VIA file"),
    ('{"_via_img_metadata": [], "_via_settings": {}}', "'_via_img_metadata' is []"),
    (json.dumps({"project": {"pid": "__VIA_PROJECT_ID__"}, "config": {}, "attribute": {},
                 "file": {"1": {"fid": "1", "fname": "a.jpg"}}, "view": {},
                 "metadata": {"1_x": {"vid": "1", "xy": [2, 1, 1, 5, 5]}}}), "VIA 3 is not supported"),
])
def test_unreadable_file_is_one_line_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "via.json"
    path.write_text(text)
    with pytest.raises(DatasetError) as info:
        _read(path)
    assert str(info.value).startswith(str(path)) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_folder_needs_exactly_one_via_file(tmp_path: Path) -> None:
    (tmp_path / "coco.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(DatasetError, match="no VIA JSON file"):
        _read(tmp_path)
    _export(tmp_path / "via_region_data.json", _entry("a.jpg", []))
    _export(tmp_path / "via_project_2.json", _entry("b.jpg", []))
    with pytest.raises(DatasetError, match="several VIA JSON files") as info:
        _read(tmp_path)
    assert "via_project_2.json" in str(info.value) and "\n" not in str(info.value)


def _other_formats(root: Path) -> dict[str, Path]:
    """Typical files of the other formats."""
    root.mkdir(parents=True, exist_ok=True)
    coco = root / "coco.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}],
                                "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    labelme = root / "lm" / "a.json"
    labelme.parent.mkdir()
    labelme.write_text(json.dumps({"version": "5.5.0", "flags": {}, "imagePath": "a.jpg", "imageData": None,
                                   "imageHeight": 48, "imageWidth": 64, "shapes": [
                                       {"label": "x", "points": [[1, 1], [5, 1], [3, 4]], "group_id": None,
                                        "shape_type": "polygon", "flags": {}}]}))
    yolo = root / "yolo" / "data.yaml"
    yolo.parent.mkdir()
    yolo.write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: cat\n")
    cvat = root / "annotations.xml"
    cvat.write_text('<?xml version="1.0"?><annotations><version>1.1</version>'
                    '<image id="0" name="a.jpg" width="64" height="48">'
                    '<polygon label="cat" points="1,1;5,1;3,4"/></image></annotations>')
    voc = root / "voc"
    (voc / "SegmentationObject").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    return {"coco": coco, "labelme": labelme, "labelme-folder": labelme.parent, "yolo": yolo,
            "yolo-folder": yolo.parent, "cvat": cvat, "voc": voc}


def test_detect(tmp_path: Path) -> None:
    export = _export(tmp_path / "balloon" / "via_region_data.json", _entry("a.jpg", {}))
    project = _project(tmp_path / "p" / "via_project_1.json", [_entry("a.jpg", [])], {})
    via3 = tmp_path / "v3.json"
    via3.write_text(json.dumps({"project": {}, "config": {}, "attribute": {}, "file": {}, "view": {},
                                "metadata": {}}))
    for path in (export, export.parent, project, project.parent, via3):
        assert via.detect(path), path
    assert detect_format(export) == "via" and detect_format(project.parent) == "via"
    for name, path in _other_formats(tmp_path / "others").items():
        assert not via.detect(path), name
    (tmp_path / "broken.json").write_text("{")
    assert not via.detect(tmp_path / "broken.json") and not via.detect(tmp_path / "nothing.json")


# ------------------------------------------------------------------------------- writing


def _random_polygon(rng: np.random.Generator, width: int, height: int) -> list[float]:
    """A convex-ish star polygon of 25..60 px across, inside the image, with fractional vertices."""
    radius = rng.uniform(12.5, 30)
    cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
    count = int(rng.integers(5, 14))
    step = 2 * math.pi / count  # vertices spread around the centre: no slivers
    angles = rng.uniform(0, 2 * math.pi) + step * (np.arange(count) + rng.uniform(-0.3, 0.3, count))
    radii = rng.uniform(0.8, 1.0, count) * radius
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).reshape(-1).tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    image_dir = tmp_path / "images"
    width, height = 160, 120
    files = ["a.jpg", "b.png", "sub/c.jpg", "sub/d.jpg"]
    images = []
    for i, name in enumerate(files, start=1):
        _image(image_dir / name, (width, height))
        images.append({"id": i, "file_name": name, "height": height, "width": width})
    annotations = [
        {"id": i, "image_id": int(rng.integers(1, len(files))), "category_id": int(rng.integers(1, 4)),
         "segmentation": [_random_polygon(rng, width, height)], "iscrowd": 0, "area": 0, "bbox": [0, 0, 1, 1]}
        for i in range(1, 31)
    ]
    categories = [{"id": 1, "name": "zebra"}, {"id": 2, "name": "ant"}, {"id": 3, "name": "moth"}]
    coco = {"images": images, "annotations": annotations, "categories": categories}

    out = via.write(coco, image_dir, tmp_path / "out")
    converted = _read(out)

    assert out == tmp_path / "out" / "via_project.json" and converted.report.total == 0
    back = converted.coco
    assert [c["name"] for c in back["categories"]] == ["zebra", "ant", "moth"]  # the dropdown's order
    resolved = [(converted.image_dir / im["file_name"]).resolve() for im in back["images"]]
    assert resolved == [(image_dir / name).resolve() for name in files]
    assert len(back["annotations"]) == len(annotations)
    names = {c["id"]: c["name"] for c in categories}
    back_names = {c["id"]: c["name"] for c in back["categories"]}
    expected = sorted(annotations, key=lambda a: (a["image_id"], a["id"]))
    for original, read_back in zip(expected, back["annotations"], strict=True):
        assert read_back["image_id"] == original["image_id"]
        assert back_names[read_back["category_id"]] == names[original["category_id"]]
        part = read_back["segmentation"][0]
        assert all(float(v).is_integer() for v in part)  # VIA stores whole pixels
        a = _decode(original["segmentation"], height, width)
        b = _decode(read_back["segmentation"], height, width)
        assert _iou(a, b) >= 0.9
    dataset = open_dataset(out)  # what training reads: the COCO dataset over the conversion
    assert len(dataset) == len(files) and dataset.report.num_instances == len(annotations)
    assert dataset.report.total == 0


def test_written_project_follows_via2(tmp_path: Path) -> None:
    image = _image(tmp_path / "images" / "a.jpg")
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[5:9, 10:20] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 48, "width": 64}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 2, "iscrowd": 0,
             "segmentation": [[1.4, 1.5, 9.6, 1.2, 9.5, 9.49, 1.4, 1.5], [20, 20, 30, 20, 30, 30]]},
            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentation": {"size": [48, 64], "counts": rle["counts"].decode()}},
            {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [3.2, 4.6, 10, 5]},
        ],
        "categories": [{"id": 2, "name": "dog"}, {"id": 1, "name": "cat"}],
    }

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = via.write(coco, tmp_path / "images", tmp_path / "ann" / "mine.json")

    assert out == tmp_path / "ann" / "mine.json"
    assert any("1 RLE mask" in str(w.message) for w in caught)
    project = json.loads(out.read_text())
    assert set(project) == {"_via_settings", "_via_img_metadata", "_via_attributes",
                            "_via_data_format_version", "_via_image_id_list"}
    settings = project["_via_settings"]
    assert set(settings) == {"ui", "core", "project"} and settings["project"]["name"] == "mine"
    assert settings["core"] == {"buffer_size": 18, "filepath": {}, "default_filepath": ""}
    size = image.stat().st_size
    key = f"../images/a.jpg{size}"
    assert project["_via_image_id_list"] == [key]
    entry = project["_via_img_metadata"][key]
    assert (entry["filename"], entry["size"], entry["file_attributes"]) == ("../images/a.jpg", size, {})
    first, second, box = entry["regions"]
    assert first["shape_attributes"] == {"name": "polygon", "all_points_x": [1, 10, 10],
                                         "all_points_y": [2, 1, 9]}  # rounded half up, closing point dropped
    assert second["shape_attributes"]["all_points_x"] == [20, 30, 30]
    assert [r["region_attributes"]["class"] for r in entry["regions"]] == ["dog", "dog", "cat"]
    assert box["shape_attributes"] == {"name": "rect", "x": 3, "y": 5, "width": 10, "height": 5}
    assert project["_via_attributes"] == {
        "region": {"class": {"type": "dropdown", "description": "", "options": {"cat": "", "dog": ""},
                             "default_options": {}}},
        "file": {},
    }
    back = _read(out)
    assert [c["name"] for c in back.coco["categories"]] == ["cat", "dog"]
    assert _names(back) == ["dog", "dog", "cat"]  # the two parts come back as two instances
