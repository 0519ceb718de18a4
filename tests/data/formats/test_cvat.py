"""Tests for maskrcnn.data.formats.cvat: CVAT for images 1.1 XML read and written."""

from __future__ import annotations

import json
import math
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn.data.coco import MISSING_IMAGE, SHORT_POLYGON, SIZE_MISMATCH
from maskrcnn.data.formats import cvat
from maskrcnn.data.formats.common import (
    BAD_SHAPE,
    EMPTY_MASK,
    NOT_A_REGION,
    SHAPE_OUTSIDE,
    UNKNOWN_CLASS,
    DatasetError,
)

H, W = 48, 64

TASK_META = """<meta><task><id>1</id><name>t</name><mode>annotation</mode>
<labels>
  <label><name>cat</name><color>#ff0000</color><type>any</type><attributes/></label>
  <label><name>dog</name><color>#00ff00</color><type>polygon</type><attributes/></label>
</labels></task></meta>"""


# -------------------------------------------------------------------- helpers


def _image(path: Path, height: int = H, width: int = W) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(height * 1000 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _xml(folder: Path, shapes: str, *, meta: str = TASK_META, name: str = "a.png",
         size: tuple[int, int] = (H, W), extra_images: str = "") -> Path:
    """An export folder: annotations.xml + images/<name>, one image holding ``shapes``."""
    _image(folder / "images" / name)
    path = folder / "annotations.xml"
    path.write_text(
        f'<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version>{meta}'
        f'<image id="0" name="{name}" width="{size[1]}" height="{size[0]}">{shapes}</image>'
        f"{extra_images}</annotations>",
        encoding="utf-8",
    )
    return path


def _read(path: Path, **kwargs: Any) -> Any:
    kwargs.setdefault("images", None)
    kwargs.setdefault("split", None)
    return cvat.read(path, class_attribute=None, **kwargs)


def _mask(segmentation: Any, height: int = H, width: int = W) -> np.ndarray:
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
        elif isinstance(rle["counts"], list):
            rle = mask_utils.frPyObjects(rle, height, width)
    return mask_utils.decode(rle).astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _details(report: Any, kind: str) -> list[str]:
    return [p.detail for p in report.examples.get(kind, [])]


# ---------------------------------------------------------------------- read


def test_polygon_box_and_classes_in_meta_order(tmp_path: Path) -> None:
    path = _xml(tmp_path,
                '<polygon label="dog" occluded="0" points="1.00,2.00;30.50,2.00;30.50,20.25" z_order="0"/>'
                '<box label="cat" occluded="0" xtl="4" ytl="5" xbr="14" ybr="25" z_order="0"/>'
                '<tag label="cat"/>')
    converted = _read(path)
    coco = converted.coco
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]
    assert converted.image_dir == tmp_path
    assert coco["images"] == [{"id": 1, "file_name": "images/a.png", "height": H, "width": W}]
    assert converted.report.total == 0  # the tag is ignored silently
    polygon, box = coco["annotations"]
    assert polygon["category_id"] == 2 and polygon["segmentation"] == [[1.0, 2.0, 30.5, 2.0, 30.5, 20.25]]
    assert box["category_id"] == 1 and box["segmentation"] == [[4.0, 5.0, 14.0, 5.0, 14.0, 25.0, 4.0, 25.0]]
    assert box["bbox"] == [4.0, 5.0, 10.0, 20.0]


def test_mask_rle_hand_computed(tmp_path: Path) -> None:
    # a 3x4 (HxW) mask box at left=1, top=2; runs 2 off, 3 on, 4 off, 1 on, 2 off, row-major:
    #   row 0: 0 0 1 1
    #   row 1: 1 0 0 0
    #   row 2: 0 1 0 0
    path = _xml(tmp_path, '<mask label="cat" source="manual" occluded="0" rle="2, 3, 4, 1, 2" '
                          'left="1" top="2" width="4" height="3" z_order="0"/>')
    converted = _read(path)
    assert converted.report.total == 0
    (ann,) = converted.coco["annotations"]
    expected = np.zeros((H, W), dtype=bool)
    for y, x in [(2, 3), (2, 4), (3, 1), (4, 2)]:
        expected[y, x] = True
    assert np.array_equal(_mask(ann["segmentation"]), expected)
    assert ann["area"] == 4 and ann["bbox"] == [1.0, 2.0, 4.0, 3.0]


def test_decode_and_encode_rle() -> None:
    crop = cvat.decode_rle([2, 3, 4, 1, 2], 3, 4)
    assert crop.astype(int).tolist() == [[0, 0, 1, 1], [1, 0, 0, 0], [0, 1, 0, 0]]
    assert cvat.encode_rle(crop) == [2, 3, 4, 1, 2]
    assert cvat.encode_rle(np.array([[1, 1], [0, 1]], dtype=bool)) == [0, 2, 1, 1]
    with pytest.raises(ValueError, match="cover 11 pixels"):
        cvat.decode_rle([2, 3, 4, 1, 1], 3, 4)


def test_mask_runs_must_cover_the_box(tmp_path: Path) -> None:
    path = _xml(tmp_path, '<mask label="cat" rle="2, 3, 4" left="1" top="2" width="4" height="3"/>'
                          '<mask label="cat" rle="2, x" left="1" top="2" width="4" height="3"/>')
    converted = _read(path)
    assert converted.report.counts == {BAD_SHAPE: 2}
    first, second = converted.report.examples[BAD_SHAPE]
    assert first.file_name == "annotations.xml"
    assert first.detail == ("image 'a.png', mask 1 (label 'cat'): rle runs cover 9 pixels but the mask's "
                            "box 4x3 has 12")
    assert second.detail.startswith("image 'a.png', mask 2 (label 'cat'): rle '2, x'")


def test_mask_clipped_to_the_image(tmp_path: Path) -> None:
    # a 2x3 box at (62, 47): only its top-left pixel (62, 47) and (63, 47) lie in the 64x48 image
    path = _xml(tmp_path, '<mask label="cat" rle="0, 6" left="62" top="47" width="3" height="2"/>'
                          '<mask label="cat" rle="0, 4" left="70" top="10" width="2" height="2"/>')
    converted = _read(path)
    (ann,) = converted.coco["annotations"]
    assert ann["area"] == 2 and ann["bbox"] == [62.0, 47.0, 2.0, 1.0]
    assert converted.report.counts == {SHAPE_OUTSIDE: 1}


def test_rotated_box(tmp_path: Path) -> None:
    # 20 x 10 box centred on (20, 15), rotated 90 degrees: 10 wide, 20 high about the same centre
    path = _xml(tmp_path, '<box label="cat" xtl="10" ytl="10" xbr="30" ybr="20" rotation="90"/>'
                          '<box label="cat" xtl="10" ytl="10" xbr="30" ybr="20" rotation="30"/>')
    converted = _read(path)
    quarter, thirty = converted.coco["annotations"]
    assert quarter["bbox"] == [15.0, 5.0, 10.0, 20.0]
    assert quarter["area"] == 200
    # clockwise on screen (y down): the corner right of the centre moves down
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    top_left = (20 + c * -10 - s * -5, 15 + s * -10 + c * -5)
    points = np.asarray(thirty["segmentation"][0]).reshape(-1, 2)
    assert np.allclose(points[0], top_left, atol=1e-3)
    assert np.allclose(points.mean(axis=0), (20, 15), atol=1e-3)


def test_ellipse(tmp_path: Path) -> None:
    path = _xml(tmp_path, '<ellipse label="cat" cx="30" cy="20" rx="10" ry="5" rotation="90"/>')
    (ann,) = _read(path).coco["annotations"]
    x, y, w, h = ann["bbox"]
    assert (x, y, w, h) == pytest.approx((25, 10, 10, 20), abs=0.1)  # a polygon through the ellipse
    assert ann["area"] == pytest.approx(math.pi * 50, rel=0.05)


def test_group_id_merges_shapes_of_one_label(tmp_path: Path) -> None:
    path = _xml(tmp_path,
                '<polygon label="cat" points="1,1;10,1;10,10" group_id="3"/>'
                '<polygon label="dog" points="40,1;50,1;50,10" group_id="3"/>'  # other label: own instance
                '<polygon label="cat" points="20,20;30,20;30,30" group_id="3"/>'
                '<polygon label="cat" points="1,30;5,30;5,40"/>'  # no group
                '<polygon label="cat" points="40,30;50,30;50,40" group_id="7"/>'
                '<mask label="cat" rle="0, 4" left="60" top="40" width="2" height="2" group_id="7"/>')
    coco = _read(path).coco
    anns = coco["annotations"]
    assert [a["category_id"] for a in anns] == [1, 2, 1, 1]
    assert anns[0]["segmentation"] == [
        [1.0, 1.0, 10.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 20.0, 30.0, 30.0]]
    # a mask in the group: everything rasterised into one RLE
    mixed = anns[3]
    assert isinstance(mixed["segmentation"], dict)
    expected = _mask([[40, 30, 50, 30, 50, 40]])
    expected[40:42, 60:62] = True
    assert np.array_equal(_mask(mixed["segmentation"]), expected)


def test_unknown_label(tmp_path: Path) -> None:
    path = _xml(tmp_path, '<polygon label="cat" points="1,1;10,1;10,10"/>'
                          '<polygon label="horse" points="1,1;10,1;10,10"/>'
                          '<polygon points="1,1;10,1;10,10"/>')
    converted = _read(path)
    assert converted.report.counts[UNKNOWN_CLASS] == 1
    problem = converted.report.examples[UNKNOWN_CLASS][0]
    assert problem.file_name == "annotations.xml"
    assert problem.detail.startswith(
        "image 'a.png', polygon 2 (label 'horse'): class 'horse' is not one of cat")
    assert converted.report.num_instances == 1


def test_non_numeric_attribute_names_the_shape(tmp_path: Path) -> None:
    path = _xml(tmp_path, '<polygon label="cat" points="1,1;10,1;10,10"/>'
                          '<box label="cat" xtl="1" ytl="1" xbr="wide" ybr="9"/>'
                          '<polygon label="cat" points="1,1;ten,1;10,10"/>'
                          '<polygon label="cat" points="1,1;10,1"/>')
    converted = _read(path)
    assert _details(converted.report, BAD_SHAPE) == [
        "image 'a.png', box 2 (label 'cat'): xbr='wide' is not a number",
        "image 'a.png', polygon 3 (label 'cat'): points: 'ten,1' is not 'x,y'",
    ]
    assert _details(converted.report, SHORT_POLYGON) == ["image 'a.png', polygon 4 (label 'cat'): 2 point(s)"]


def test_non_regions_are_counted(tmp_path: Path) -> None:
    path = _xml(tmp_path, '<polyline label="cat" points="1,1;10,1;10,10"/>'
                          '<points label="cat" points="1,1"/>'
                          '<skeleton label="cat"><points label="nose" points="3,3"/></skeleton>'
                          '<cuboid label="cat" xtl1="1" ytl1="1"/>'
                          '<tag label="cat"/>'
                          '<polygon label="cat" points="1,1;10,1;10,10"/>')
    converted = _read(path)
    assert converted.report.counts == {NOT_A_REGION: 4}
    assert _details(converted.report, NOT_A_REGION)[0] == (
        "image 'a.png', polyline 1 (label 'cat'): a polyline is not a region")
    assert converted.report.num_instances == 1


def test_project_meta_and_non_region_labels(tmp_path: Path) -> None:
    meta = """<meta><project><id>4</id><name>p</name><labels>
      <label><name>zebra</name><type>polygon</type></label>
      <label><name>ant</name><type>mask</type></label>
      <label><name>pose</name><type>skeleton</type></label>
      <label><name>nose</name><type>points</type><parent>pose</parent></label>
      <label><name>sunny</name><type>tag</type></label>
    </labels><tasks><task><id>1</id><name>t</name></task></tasks></project></meta>"""
    path = _xml(tmp_path, '<polygon label="ant" points="1,1;10,1;10,10"/>', meta=meta)
    converted = _read(path)
    assert [c["name"] for c in converted.coco["categories"]] == ["zebra", "ant"]
    assert converted.coco["annotations"][0]["category_id"] == 2


def test_job_meta(tmp_path: Path) -> None:
    meta = ("<meta><job><id>9</id><labels><label><name>b</name></label><label><name>a</name></label>"
            "</labels></job></meta>")
    path = _xml(tmp_path, '<polygon label="a" points="1,1;10,1;10,10"/>', meta=meta)
    assert [c["name"] for c in _read(path).coco["categories"]] == ["b", "a"]


def test_no_labels_in_meta_uses_the_labels_seen_sorted(tmp_path: Path) -> None:
    path = _xml(tmp_path, '<polygon label="zebra" points="1,1;10,1;10,10"/>'
                          '<polygon label="ant" points="1,1;10,1;10,10"/>', meta="<meta><task/></meta>")
    converted = _read(path)
    assert [c["name"] for c in converted.coco["categories"]] == ["ant", "zebra"]
    assert converted.report.total == 0


def test_malformed_xml(tmp_path: Path) -> None:
    path = tmp_path / "annotations.xml"
    path.write_text("<annotations>\n<version>1.1</version>\n<image id='0' name='a.png'>\n</annotations>\n")
    with pytest.raises(DatasetError) as e:
        _read(path)
    message = str(e.value)
    assert message.startswith(f"{path}: not well-formed XML (line 4, column 2): mismatched tag;")
    assert "\n" not in message


def test_other_root_and_video_exports_are_refused(tmp_path: Path) -> None:
    voc = tmp_path / "voc.xml"
    voc.write_text("<annotation><filename>a.png</filename></annotation>")
    with pytest.raises(DatasetError, match="root element <annotation>, not <annotations>"):
        _read(voc)
    video = tmp_path / "video.xml"
    video.write_text(f"<annotations><version>1.1</version>{TASK_META}"
                     f'<track id="0" label="cat"><box frame="0" xtl="1" ytl="1" xbr="5" ybr="5"/></track>'
                     f"</annotations>")
    with pytest.raises(DatasetError, match="CVAT for video") as e:
        _read(video)
    assert "\n" not in str(e.value)
    # tracks beside images: counted and skipped
    track = '<track id="0" label="cat"><box frame="0" xtl="1" ytl="1" xbr="5" ybr="5"/></track>'
    mixed = _xml(tmp_path / "mixed", '<polygon label="cat" points="1,1;10,1;10,10"/>', extra_images=track)
    converted = _read(mixed)
    assert converted.report.counts == {NOT_A_REGION: 1} and converted.report.num_instances == 1


def test_image_paths_and_sizes(tmp_path: Path) -> None:
    # beside the XML (no images/), under --images, and a size that does not match the file
    _image(tmp_path / "flat" / "b.png")
    (tmp_path / "flat" / "annotations.xml").write_text(
        f"<annotations>{TASK_META}"
        f'<image id="0" name="b.png" width="{W}" height="{H}"/>'
        f'<image id="1" name="gone.png" width="{W}" height="{H}"/>'
        f'<image id="2" name="b.png" width="10" height="10"/></annotations>'
    )
    converted = _read(tmp_path / "flat")
    assert [im["file_name"] for im in converted.coco["images"]] == ["b.png"]
    assert converted.report.counts == {MISSING_IMAGE: 1}
    path = _xml(tmp_path / "export", "", size=(10, 10))
    converted = _read(path)
    assert converted.report.counts == {SIZE_MISMATCH: 1}
    converted = _read(path, images=tmp_path / "flat")
    assert converted.report.counts == {MISSING_IMAGE: 1}
    assert converted.image_dir == tmp_path / "flat"


def test_project_export_subsets_and_split(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "Train" / "a.png")
    _image(tmp_path / "images" / "Validation" / "b.png")
    path = tmp_path / "annotations.xml"
    path.write_text(
        f"<annotations>{TASK_META}"
        f'<image id="0" name="a.png" subset="Train" width="{W}" height="{H}">'
        f'<polygon label="cat" points="1,1;10,1;10,10"/></image>'
        f'<image id="1" name="b.png" subset="Validation" width="{W}" height="{H}"/></annotations>'
    )
    converted = _read(path)
    assert [im["file_name"] for im in converted.coco["images"]] == [
        "images/Train/a.png", "images/Validation/b.png"]
    converted = _read(path, split="Validation")
    assert [im["file_name"] for im in converted.coco["images"]] == ["images/Validation/b.png"]
    with pytest.raises(DatasetError, match="subsets: Train, Validation"):
        _read(path, split="Test")


def test_empty_mask(tmp_path: Path) -> None:
    path = _xml(tmp_path, '<mask label="cat" rle="4" left="1" top="1" width="2" height="2"/>')
    assert _read(path).report.counts == {EMPTY_MASK: 1}


# ----------------------------------------------------------------- detection


def test_detect(tmp_path: Path) -> None:
    path = _xml(tmp_path / "export", '<polygon label="cat" points="1,1;10,1;10,10"/>')
    assert cvat.detect(path)
    assert cvat.detect(tmp_path / "export")
    other = tmp_path / "other"
    other.mkdir()
    coco = other / "coco.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    voc = other / "a.xml"
    voc.write_text("<annotation><filename>a.png</filename></annotation>")
    broken = other / "broken.xml"
    broken.write_text("garbage <annotations>")
    not_xml = other / "b.xml"
    not_xml.write_bytes(b"\x00\xff garbage")
    labelme = other / "a.json"
    labelme.write_text(json.dumps({"shapes": [], "imagePath": "a.png"}))
    data_yaml = other / "data.yaml"
    data_yaml.write_text("train: images\nnames: [a]\n")
    for p in (coco, voc, broken, not_xml, labelme, data_yaml, other, tmp_path / "missing.xml"):
        assert not cvat.detect(p), p


def test_truncated_file_is_detected_then_refused(tmp_path: Path) -> None:
    path = tmp_path / "annotations.xml"
    path.write_text("<annotations><version>1.1</version><image id='0'")
    assert cvat.detect(path)  # only the first element is read
    with pytest.raises(DatasetError, match="not well-formed XML"):
        _read(path)


def test_detect_format_picks_cvat(tmp_path: Path) -> None:
    from maskrcnn.data.formats import detect_format

    path = _xml(tmp_path, '<polygon label="cat" points="1,1;10,1;10,10"/>')
    assert detect_format(path) == "cvat"
    assert detect_format(tmp_path) == "cvat"


# ---------------------------------------------------------------- round trip


def _random_coco(folder: Path, rng: np.random.Generator, decimals: int | None) -> dict[str, Any]:
    """30 random instances (polygons, 2-part polygons, RLE masks, a box) over 4 images and 3 classes."""
    sizes = [(H, W), (60, 40), (H, W), (30, 50)]
    images = []
    for i, (h, w) in enumerate(sizes, start=1):
        name = f"im{i}.png" if i != 3 else "sub/im3.png"
        _image(folder / name, h, w)
        images.append({"id": i, "file_name": name, "height": h, "width": w})
    annotations = []
    for k in range(30):
        image = images[int(rng.integers(0, 3))]  # the 4th stays without annotations
        h, w = image["height"], image["width"]
        ann: dict[str, Any] = {"id": k + 1, "image_id": image["id"], "category_id": [2, 4, 6][k % 3],
                               "iscrowd": 0}
        if k % 3 == 1:  # a random blob as an RLE mask
            yy, xx = np.mgrid[0:h, 0:w]
            cx, cy, r = rng.uniform(5, w - 5), rng.uniform(5, h - 5), rng.uniform(2, 10)
            blob = ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r) | (rng.random((h, w)) < 0.02)
            rle = mask_utils.encode(np.asfortranarray(blob.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            ann["segmentation"] = rle
        else:
            parts = []
            for _ in range(2 if k % 5 == 0 else 1):
                largest = 0.25 * min(h, w)
                cx, cy = rng.uniform(largest, w - largest), rng.uniform(largest, h - largest)
                count = int(rng.integers(3, 9))
                angles = np.sort(rng.uniform(0, 2 * np.pi, count))
                radius = rng.uniform(2, largest, count)
                points = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
                if decimals is not None:
                    points = points.round(decimals)
                parts.append(points.reshape(-1).tolist())
            ann["segmentation"] = parts
        annotations.append(ann)
    annotations.append({"id": 31, "image_id": 1, "category_id": 4, "iscrowd": 0, "bbox": [3.5, 4.25, 10, 6]})
    categories = [{"id": 2, "name": "cat"}, {"id": 4, "name": "dog"}, {"id": 6, "name": "bird"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def _compare(coco: dict[str, Any], back: dict[str, Any]) -> tuple[list[float], list[float]]:
    """IoUs of RLE and of polygon instances, matched in order (the writer keeps it)."""
    assert [im["file_name"] for im in back["images"]] == [im["file_name"] for im in coco["images"]]
    assert [c["name"] for c in back["categories"]] == [c["name"] for c in coco["categories"]]
    src_names = {c["id"]: c["name"] for c in coco["categories"]}
    back_names = {c["id"]: c["name"] for c in back["categories"]}
    sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    back_files = {im["id"]: im["file_name"] for im in back["images"]}
    src_files = {im["id"]: im["file_name"] for im in coco["images"]}
    original = sorted(coco["annotations"], key=lambda a: (a["image_id"], a["id"]))
    assert len(back["annotations"]) == len(original)
    rle_ious, polygon_ious = [], []
    for a, b in zip(original, back["annotations"], strict=True):
        assert src_files[a["image_id"]] == back_files[b["image_id"]]
        assert src_names[a["category_id"]] == back_names[b["category_id"]]
        h, w = sizes[a["image_id"]]
        if "segmentation" not in a:
            x, y, bw, bh = a["bbox"]
            assert b["segmentation"] == [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
            continue
        assert len(b["segmentation"]) == len(a["segmentation"]) or isinstance(a["segmentation"], dict)
        iou = _iou(_mask(a["segmentation"], h, w), _mask(b["segmentation"], h, w))
        (rle_ious if isinstance(a["segmentation"], dict) else polygon_ious).append(iou)
    return rle_ious, polygon_ious


def test_round_trip_is_lossless(tmp_path: Path) -> None:
    coco = _random_coco(tmp_path / "photos", np.random.default_rng(3), decimals=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        xml_path = cvat.write(coco, tmp_path / "photos", tmp_path / "out")
    assert xml_path == tmp_path / "out" / "annotations.xml"
    back = _read(xml_path, images=tmp_path / "photos")
    assert back.report.total == 0
    rle_ious, polygon_ious = _compare(coco, back.coco)
    assert len(rle_ious) == 10 and len(polygon_ious) == 20
    assert rle_ious == [1.0] * 10
    assert polygon_ious == [1.0] * 20  # coordinates of 3 decimals are written as they are


def test_round_trip_full_precision_polygons(tmp_path: Path) -> None:
    coco = _random_coco(tmp_path / "photos", np.random.default_rng(11), decimals=None)
    xml_path = cvat.write(coco, tmp_path / "photos", tmp_path / "set.xml")
    back = _read(xml_path, images=tmp_path / "photos")
    rle_ious, polygon_ious = _compare(coco, back.coco)
    assert rle_ious == [1.0] * len(rle_ious)
    assert min(polygon_ious) >= 0.99 and float(np.mean(polygon_ious)) >= 0.999, polygon_ious


def test_written_xml_follows_cvat(tmp_path: Path) -> None:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[2, 3:5] = 1
    mask[3, 1] = 1
    mask[4, 2] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    coco = {
        "images": [{"id": 7, "file_name": "a.png", "height": H, "width": W}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "segmentation": rle},
            {"id": 2, "image_id": 7, "category_id": 1, "iscrowd": 0,
             "segmentation": [[1.5, 1, 10, 1, 10, 10.125], [20, 20, 30, 20, 30, 30]]},
            {"id": 3, "image_id": 7, "category_id": 1, "iscrowd": 1, "segmentation": rle},
        ],
    }
    with pytest.warns(UserWarning, match="1 crowd region"):
        path = cvat.write(coco, tmp_path, tmp_path / "x.xml")
    root = ET.parse(path).getroot()
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    assert [n.text for n in root.iter("name")] == ["maskrcnn export", "cat"]
    image = root.find("image")
    assert image is not None
    assert image.attrib == {"id": "0", "name": "a.png", "width": str(W), "height": str(H)}
    mask_el, first, second = list(image)
    assert mask_el.tag == "mask"
    assert {k: mask_el.get(k) for k in ("rle", "left", "top", "width", "height")} == {
        "rle": "2, 3, 4, 1, 2", "left": "1", "top": "2", "width": "4", "height": "3"}
    assert first.get("points") == "1.50,1.00;10.00,1.00;10.00,10.125"
    assert first.get("group_id") == second.get("group_id") == "1"
    assert first.get("occluded") == "0" and first.get("z_order") == "0"
