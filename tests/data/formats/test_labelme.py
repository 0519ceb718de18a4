"""Tests for maskrcnn.data.formats.labelme: LabelMe JSON files in and out."""

from __future__ import annotations

import base64
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn.data.coco import MISSING_IMAGE, SHORT_POLYGON, SIZE_MISMATCH
from maskrcnn.data.formats import detect_format, labelme, open_dataset
from maskrcnn.data.formats.common import (
    BAD_FILE,
    BAD_SHAPE,
    EMPTY_MASK,
    NO_CLASS,
    NOT_A_REGION,
    SHAPE_OUTSIDE,
    DatasetError,
)
from tests.data.formats.helpers import plain_image as _image


def _shape(label: str, points: list[list[float]], shape_type: str | None = "polygon",
           group_id: int | None = None, **extra: Any) -> dict[str, Any]:
    shape = {"label": label, "points": points, "group_id": group_id, "description": "",
             "shape_type": shape_type, "flags": {}, "mask": None}
    shape.update(extra)
    return shape


def _labelme(path: Path, image_path: str, shapes: list[Any], size: tuple[int, int] | None = (48, 64)
             ) -> Path:
    """A LabelMe file at ``path``; ``size`` is (imageHeight, imageWidth), None to leave them out."""
    data: dict[str, Any] = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": image_path,
                            "imageData": None}
    if size is not None:
        data["imageHeight"], data["imageWidth"] = size
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _png_b64(mask: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, list):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)))
    rle = dict(segmentation)
    if isinstance(rle["counts"], str):
        rle["counts"] = rle["counts"].encode()
    else:
        rle = mask_utils.frPyObjects(rle, height, width)
    return mask_utils.decode(rle)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _details(report: Any, kind: str) -> list[str]:
    return [p.detail for p in report.examples.get(kind, [])]


# ------------------------------------------------------------------------------- shapes


def test_polygon_rectangle_circle_and_oriented_rectangle(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    _labelme(tmp_path / "a.json", "a.jpg", [
        {"label": "dog", "points": [[2, 2], [20, 3], [11, 18]]},  # no shape_type: a polygon
        _shape("cat", [[30, 10], [40, 30]], "rectangle"),
        _shape("cat", [[40, 30], [30, 10]], "rectangle"),  # corners in the other order
        _shape("ball", [[32, 24], [32 + 12, 24]], "circle"),
        _shape("box", [[5, 30], [15, 30], [15, 40], [5, 40]], "oriented_rectangle"),
        _shape("dog", [[1, 1], [5, 1], [3, 4]], None),  # a null shape_type is a polygon too
    ])

    converted = labelme.read(tmp_path, images=None, class_attribute=None, split=None)

    coco = converted.coco
    assert [c["name"] for c in coco["categories"]] == ["ball", "box", "cat", "dog"]  # sorted labels
    assert converted.report.total == 0 and converted.report.num_instances == 6
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_class: dict[str, list[dict[str, Any]]] = {}
    for a in coco["annotations"]:
        by_class.setdefault(names[a["category_id"]], []).append(a)
    rect = _decode(by_class["cat"][0]["segmentation"], 48, 64)
    assert rect.sum() == 10 * 20 and rect[10:30, 30:40].all()
    assert by_class["cat"][0]["segmentation"] == by_class["cat"][1]["segmentation"]
    circle = by_class["ball"][0]
    assert circle["area"] == pytest.approx(math.pi * 12**2, rel=0.02)
    assert circle["bbox"] == pytest.approx([20, 12, 24, 24], abs=0.2)
    assert by_class["box"][0]["segmentation"] == [[5, 30, 15, 30, 15, 40, 5, 40]]
    assert converted.coco["images"] == [{"id": 1, "file_name": "a.jpg", "height": 48, "width": 64}]


def test_shapes_with_one_label_and_group_id_are_one_instance(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    left, right = [[2, 2], [10, 2], [10, 10], [2, 10]], [[20, 2], [30, 2], [30, 10], [20, 10]]
    _labelme(tmp_path / "a.json", "a.png", [
        _shape("car", left, group_id=1),
        _shape("car", right, group_id=1),  # second part of the same car
        _shape("bus", left, group_id=1),  # same group id, other label: another instance
        _shape("car", left),  # null group ids: an instance each
        _shape("car", right),
    ])

    converted = labelme.read(tmp_path / "a.json", images=None, class_attribute=None, split=None)

    annotations = converted.coco["annotations"]
    assert len(annotations) == 4
    assert len(annotations[0]["segmentation"]) == 2 and annotations[0]["area"] == 8 * 8 + 10 * 8
    assert [len(a["segmentation"]) for a in annotations[1:]] == [1, 1, 1]


def test_labelmes_ignore_and_background_marks_are_left_out(tmp_path: Path) -> None:
    """labelme's examples mark regions that are not objects ``__ignore__``; labelme2coco drops them."""
    _image(tmp_path / "a.png")
    square = [[2, 2], [10, 2], [10, 10], [2, 10]]
    _labelme(tmp_path / "a.json", "a.png", [
        _shape("person", square), _shape("__ignore__", square), _shape("_background_", square),
    ])
    converted = labelme.read(tmp_path / "a.json", images=None, class_attribute=None, split=None)
    assert [c["name"] for c in converted.coco["categories"]] == ["person"]
    assert len(converted.coco["annotations"]) == 1 and converted.report.total == 0


def test_mask_shape_is_placed_at_the_box_top_left(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    box = np.zeros((10, 12), dtype=bool)
    box[2:8, 3:11] = True
    box[0, 0] = True
    shapes = [
        _shape("blob", [[20, 5], [31, 14]], "mask", mask=_png_b64(box)),  # whole-pixel corners
        _shape("blob", [[40.4, 30.6], [51.4, 39.6]], "mask", mask=_png_b64(box)),  # rounded to (40, 31)
        # a corner outside the image: the part inside is kept
        _shape("blob", [[-3, -2], [8, 7]], "mask", mask=_png_b64(box)),
        # whole-pixel corners of a smaller box crop the PNG (corners inclusive: 4 x 3 pixels)
        _shape("blob", [[50, 2], [53, 4]], "mask", mask=_png_b64(box)),
    ]
    _labelme(tmp_path / "a.json", "a.png", shapes)

    converted = labelme.read(tmp_path, images=None, class_attribute=None, split=None)

    assert converted.report.total == 0
    masks = [_decode(a["segmentation"], 48, 64).astype(bool) for a in converted.coco["annotations"]]
    for mask, (x, y) in zip(masks[:2], [(20, 5), (40, 31)], strict=True):
        expected = np.zeros((48, 64), dtype=bool)
        expected[y : y + 10, x : x + 12] = box
        assert (mask == expected).all()
    expected = np.zeros((48, 64), dtype=bool)
    expected[0:8, 0:9] = box[2:, 3:]
    assert (masks[2] == expected).all()
    expected = np.zeros((48, 64), dtype=bool)
    expected[2:5, 50:54] = box[:3, :4]
    assert (masks[3] == expected).all() and masks[3].sum() == 2
    assert isinstance(converted.coco["annotations"][0]["segmentation"]["counts"], str)


def test_mask_grouped_with_a_polygon_is_their_union(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    box = np.ones((5, 5), dtype=bool)
    _labelme(tmp_path / "a.json", "a.png", [
        _shape("tree", [[0, 0], [4, 4]], "mask", group_id=7, mask=_png_b64(box)),
        _shape("tree", [[10, 10], [20, 10], [20, 20], [10, 20]], group_id=7),
    ])

    converted = labelme.read(tmp_path, images=None, class_attribute=None, split=None)

    (annotation,) = converted.coco["annotations"]
    mask = _decode(annotation["segmentation"], 48, 64).astype(bool)
    assert mask[0:5, 0:5].all() and mask[10:20, 10:20].all() and mask.sum() == 25 + 100
    assert annotation["area"] == 125 and annotation["bbox"] == [0, 0, 20, 20]


def test_problems_of_shapes_are_counted_with_the_file_and_shape(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.jpg")
    square = [[2, 2], [10, 2], [10, 10], [2, 10]]
    _labelme(tmp_path / "sub" / "a.json", "../img/a.jpg", [
        _shape("pt", [[3, 3]], "point"),  # 1
        _shape("ln", [[3, 3], [9, 9]], "line"),  # 2
        _shape("ls", [[3, 3], [9, 9], [4, 7]], "linestrip"),  # 3
        _shape("ps", [[3, 3], [9, 9]], "points"),  # 4
        _shape("x", square, "spline"),  # 5: unknown type
        _shape("x", [[1, 1], [5, 5], [7, 7]], "rectangle"),  # 6: three points
        _shape("x", [[1, 1], [5, 5]]),  # 7: a 2-point polygon
        _shape("", square),  # 8: no label
        _shape("x", [[1, 1], [5, 5]], "mask", mask="not base64 png"),  # 9
        _shape("x", [[100, 100], [120, 100], [110, 130]]),  # 10: outside the 64x48 image
        _shape("x", [[1, "a"], [5, 5], [7, 7]]),  # 11: not numbers
        "not a shape",  # 12
        _shape("x", [[0, 0], [3, 3]], "mask", mask=_png_b64(np.zeros((4, 4), bool))),  # 13: empty mask
        _shape("ok", square),  # 14: the one good shape
        _shape(7, square),  # type: ignore[arg-type]  # 15: a label that is not a string
    ])

    converted = labelme.read(tmp_path, images=None, class_attribute=None, split=None)

    report = converted.report
    assert report.counts == {NOT_A_REGION: 4, BAD_SHAPE: 6, SHORT_POLYGON: 1, NO_CLASS: 1,
                             SHAPE_OUTSIDE: 1, EMPTY_MASK: 1}
    assert report.num_instances == 1
    assert [c["name"] for c in converted.coco["categories"]] == ["ok", "x"]  # a class of the source
    assert converted.coco["images"][0]["file_name"] == "img/a.jpg"
    for kind in report.examples:
        assert all(p.file_name == "sub/a.json" for p in report.examples[kind])
    assert _details(report, NOT_A_REGION)[0].startswith("shape 1 (label 'pt'): a point")
    bad = _details(report, BAD_SHAPE)
    assert any(d.startswith("shape 5 ") and "spline" in d for d in bad)
    assert any(d.startswith("shape 6 ") and "2 points" in d for d in bad)
    assert any(d.startswith("shape 9 ") and "base64 PNG" in d for d in bad)
    assert any(d.startswith("shape 11 ") for d in bad) and any(d.startswith("shape 12") for d in bad)
    assert _details(report, SHORT_POLYGON)[0].startswith("shape 7 (label 'x')")
    assert _details(report, NO_CLASS)[0].startswith("shape 8 ")
    assert _details(report, SHAPE_OUTSIDE)[0].startswith("shape 10 ")


# ------------------------------------------------------------------------------- images


def test_image_paths_windows_separators_sizes_and_missing_images(tmp_path: Path) -> None:
    square = [[2, 2], [10, 2], [10, 10], [2, 10]]
    _image(tmp_path / "images" / "a.jpg")
    _image(tmp_path / "images" / "b.jpg")
    _image(tmp_path / "labels" / "c.jpg")
    _labelme(tmp_path / "labels" / "a.json", "..\\images\\a.jpg", [_shape("x", square)])  # Windows path
    _labelme(tmp_path / "labels" / "b.json", "../images/b.jpg", [_shape("x", square)], size=None)
    _labelme(tmp_path / "labels" / "c.json", "C:\\Users\\me\\photos\\c.jpg", [_shape("x", square)])  # beside
    _labelme(tmp_path / "labels" / "d.json", "../images/d.jpg", [_shape("x", square)])  # missing
    _image(tmp_path / "images" / "e.jpg")
    _labelme(tmp_path / "labels" / "e.json", "../images/e.jpg", [_shape("x", square)], size=(64, 48))

    converted = labelme.read(tmp_path / "labels", images=None, class_attribute=None, split=None)

    names = [im["file_name"] for im in converted.coco["images"]]
    assert names == ["../images/a.jpg", "../images/b.jpg", "c.jpg"]
    assert converted.image_dir == tmp_path / "labels"
    report = converted.report
    assert report.counts == {MISSING_IMAGE: 1, SIZE_MISMATCH: 1}
    assert report.examples[MISSING_IMAGE][0].file_name == "d.json"
    assert "d.jpg" in report.examples[MISSING_IMAGE][0].detail
    assert report.examples[SIZE_MISMATCH][0].file_name == "e.json"


def test_images_folder_given(tmp_path: Path) -> None:
    _image(tmp_path / "photos" / "day1" / "a.jpg")
    _image(tmp_path / "photos" / "b.jpg")
    square = [[2, 2], [10, 2], [10, 10], [2, 10]]
    _labelme(tmp_path / "ann" / "day1" / "a.json", "a.jpg", [_shape("x", square)])
    _labelme(tmp_path / "ann" / "b.json", "somewhere/else/b.jpg", [_shape("x", square)])

    converted = labelme.read(tmp_path / "ann", images=tmp_path / "photos", class_attribute=None, split=None)

    assert converted.image_dir == tmp_path / "photos"
    assert [im["file_name"] for im in converted.coco["images"]] == ["b.jpg", "day1/a.jpg"]
    assert converted.report.total == 0


# ------------------------------------------------------------------------------- files


def test_malformed_file_in_a_folder_is_counted_and_other_json_ignored(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    _labelme(tmp_path / "a.json", "a.jpg", [_shape("x", [[2, 2], [10, 2], [10, 10]])])
    (tmp_path / "b.json").write_text('{"shapes": [{"label": "x", "points": [[1, 2]')  # truncated
    (tmp_path / "c.json").write_text(json.dumps({"shapes": {"not": "a list"}, "imagePath": "a.jpg"}))
    (tmp_path / "coco.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    (tmp_path / "settings.json").write_text("[1, 2, 3]")

    converted = labelme.read(tmp_path, images=None, class_attribute=None, split=None)

    assert converted.report.counts == {BAD_FILE: 2}
    examples = converted.report.examples[BAD_FILE]
    assert [p.file_name for p in examples] == ["b.json", "c.json"]
    assert "not a JSON file" in examples[0].detail and "'shapes'" in examples[1].detail
    assert converted.report.num_instances == 1


@pytest.mark.parametrize("text, message", [
    ('{"shapes": [', "not a JSON file"),
    ('{"images": []}', "not a LabelMe file"),
    ('{"shapes": [], "imagePath": 3}', "'imagePath' is 3"),
])
def test_a_single_unreadable_file_is_one_line_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DatasetError) as info:
        labelme.read(path, images=None, class_attribute=None, split=None)
    assert str(info.value).startswith(str(path)) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_folder_without_labelme_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "coco.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(DatasetError, match="no LabelMe JSON file") as info:
        labelme.read(tmp_path, images=None, class_attribute=None, split=None)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------- detection


def _other_formats(root: Path) -> dict[str, Path]:
    """Typical files of the other formats."""
    root.mkdir(parents=True, exist_ok=True)
    coco = root / "coco.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    via = root / "via" / "via_region_data.json"
    via.parent.mkdir()
    via.write_text(json.dumps({"a.jpg123": {"filename": "a.jpg", "size": 123, "regions": {},
                                            "file_attributes": {}}}))
    yolo = root / "yolo" / "data.yaml"
    yolo.parent.mkdir()
    yolo.write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: cat\n")
    (root / "yolo" / "labels" / "train").mkdir(parents=True)
    (root / "yolo" / "labels" / "train" / "a.txt").write_text("0 0.1 0.1 0.5 0.1 0.3 0.4\n")
    cvat = root / "annotations.xml"
    cvat.write_text('<?xml version="1.0"?><annotations><version>1.1</version>'
                    '<image id="0" name="a.jpg" width="64" height="48">'
                    '<polygon label="cat" points="1,1;5,1;3,4"/></image></annotations>')
    voc = root / "voc"
    (voc / "SegmentationObject").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "JPEGImages").mkdir()
    (voc / "Annotations" / "a.xml").write_text("<annotation><filename>a.jpg</filename></annotation>")
    return {"coco": coco, "coco-folder": root / "only-coco", "via": via, "via-folder": via.parent,
            "yolo": yolo, "yolo-folder": yolo.parent, "cvat": cvat, "voc": voc}


def test_detect(tmp_path: Path) -> None:
    _image(tmp_path / "lm" / "a.jpg")
    file = _labelme(tmp_path / "lm" / "nested" / "a.json", "../a.jpg", [])
    assert labelme.detect(file) and labelme.detect(tmp_path / "lm")
    assert detect_format(tmp_path / "lm") == "labelme" and detect_format(file) == "labelme"
    others = _other_formats(tmp_path / "others")
    (tmp_path / "others" / "only-coco").mkdir()
    (tmp_path / "others" / "only-coco" / "train.json").write_text(others["coco"].read_text())
    for name, path in others.items():
        assert not labelme.detect(path), name
    assert not labelme.detect(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    assert not labelme.detect(tmp_path / "broken.json")


# ------------------------------------------------------------------------------- writing


def _random_polygon(rng: np.random.Generator, width: int, height: int) -> list[float]:
    """A star-shaped polygon of at least 20 px across, inside the image."""
    radius = rng.uniform(10, 25)
    cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
    count = int(rng.integers(5, 12))
    step = 2 * math.pi / count  # vertices spread around the centre: no slivers
    angles = rng.uniform(0, 2 * math.pi) + step * (np.arange(count) + rng.uniform(-0.3, 0.3, count))
    radii = rng.uniform(0.6, 1.0, count) * radius
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).reshape(-1).tolist()


def _random_coco(root: Path, rng: np.random.Generator, num_instances: int = 30) -> dict[str, Any]:
    """Images in two folders, three classes, polygons (some of two parts) and RLE masks."""
    files = ["a.jpg", "b.png", "sub/c.jpg", "sub/d.jpg", "sub/e.jpg"]
    width, height = 160, 120
    images = []
    for i, name in enumerate(files, start=1):
        _image(root / name, (width, height))
        images.append({"id": i, "file_name": name, "height": height, "width": width})
    annotations = []
    for i in range(1, num_instances + 1):
        image_id = int(rng.integers(1, len(files)))  # the last image stays without instances
        kind = rng.choice(["polygon", "parts", "rle"])
        if kind == "rle":
            mask = np.zeros((height, width), dtype=np.uint8)
            x, y = int(rng.integers(0, width - 30)), int(rng.integers(0, height - 30))
            mask[y : y + int(rng.integers(5, 30)), x : x + int(rng.integers(5, 30))] = 1
            mask[y, x] = 0  # not a plain box
            rle = mask_utils.encode(np.asfortranarray(mask))
            segmentation: Any = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
        else:
            parts = 2 if kind == "parts" else 1
            segmentation = [_random_polygon(rng, width, height) for _ in range(parts)]
        annotations.append({"id": i, "image_id": image_id, "category_id": int(rng.integers(1, 4)),
                            "segmentation": segmentation, "iscrowd": 0, "area": 0, "bbox": [0, 0, 1, 1]})
    categories = [{"id": 1, "name": "ant"}, {"id": 2, "name": "bee"}, {"id": 3, "name": "cow"}]
    return {"images": images, "annotations": annotations, "categories": categories}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    image_dir = tmp_path / "images"
    coco = _random_coco(image_dir, rng)

    out = labelme.write(coco, image_dir, tmp_path / "labelme")
    converted = labelme.read(out, images=None, class_attribute=None, split=None)

    assert out == tmp_path / "labelme" and converted.report.total == 0
    back = converted.coco
    assert [c["name"] for c in back["categories"]] == ["ant", "bee", "cow"]
    resolved = [(converted.image_dir / im["file_name"]).resolve() for im in back["images"]]
    assert resolved == [(image_dir / im["file_name"]).resolve() for im in coco["images"]]
    assert len(back["annotations"]) == len(coco["annotations"])
    names = {c["id"]: c["name"] for c in coco["categories"]}
    back_names = {c["id"]: c["name"] for c in back["categories"]}
    new_id = {im["id"]: i + 1 for i, im in enumerate(coco["images"])}
    expected = sorted(coco["annotations"], key=lambda a: (new_id[a["image_id"]], a["id"]))
    for original, read_back in zip(expected, back["annotations"], strict=True):
        assert read_back["image_id"] == new_id[original["image_id"]]
        assert back_names[read_back["category_id"]] == names[original["category_id"]]
        a = _decode(original["segmentation"], 120, 160)
        b = _decode(read_back["segmentation"], 120, 160)
        if isinstance(original["segmentation"], dict):
            assert (a == b).all()  # bitmaps come back exactly
        else:
            assert len(read_back["segmentation"]) == len(original["segmentation"])
            assert _iou(a, b) >= 0.99
    dataset = open_dataset(out)  # what training reads: the COCO dataset over the conversion
    assert len(dataset) == len(coco["images"]) and dataset.report.num_instances == len(coco["annotations"])
    assert dataset.report.total == 0


def test_written_files_follow_labelme(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "x" / "a.jpg")
    _image(tmp_path / "images" / "x" / "a.png")  # same stem: the second file keeps its suffix
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[5:9, 10:20] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    coco = {
        "images": [{"id": 1, "file_name": "x/a.jpg", "height": 48, "width": 64},
                   {"id": 2, "file_name": "x/a.png", "height": 48, "width": 64}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentation": [[1, 1, 9, 1, 9, 9], [20, 20, 30, 20, 30, 30]]},
            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentation": {"size": [48, 64], "counts": rle["counts"].decode()}},
            {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 1,
             "segmentation": {"size": [48, 64], "counts": rle["counts"].decode()}},
        ],
        "categories": [{"id": 1, "name": "cat"}],
    }

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labelme.write(coco, tmp_path / "images", tmp_path / "out")

    assert any("1 crowd annotation" in str(w.message) for w in caught)
    first = json.loads((tmp_path / "out" / "x" / "a.json").read_text())
    second = json.loads((tmp_path / "out" / "x" / "a.png.json").read_text())
    assert first["imagePath"] == "../../images/x/a.jpg" and second["imagePath"] == "../../images/x/a.png"
    assert (first["version"], first["imageData"], first["imageHeight"], first["imageWidth"]) == (
        "5.5.0", None, 48, 64)
    assert set(first) == {"version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth"}
    polygons, bitmap = first["shapes"][:2], first["shapes"][2]
    assert len(first["shapes"]) == 3 and second["shapes"] == []
    assert [s["shape_type"] for s in polygons] == ["polygon", "polygon"]
    assert [s["group_id"] for s in polygons] == [1, 1] and bitmap["group_id"] == 2
    assert polygons[0]["points"] == [[1, 1], [9, 1], [9, 9]]
    assert set(bitmap) == {"label", "points", "group_id", "description", "shape_type", "flags", "mask"}
    assert bitmap["shape_type"] == "mask" and bitmap["points"] == [[10, 5], [19, 8]]
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(bitmap["mask"]))))
    assert png.shape == (4, 10) and png.all()
