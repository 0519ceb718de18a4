"""Exports of real photos in each tool's own conventions convert back into the reference COCO file.

The balloon validation photos (13 real images, 50 polygon instances), their
instances given one of three classes in turn so that there are several
classes and several instances per image, are written here as each tool
writes them (not with this package's writers): LabelMe (one JSON per image,
float points, ``imagePath`` relative to the JSON), VIA 2 (whole-pixel
points, the class in a region attribute), YOLO-seg (``data.yaml`` and
normalised coordinates with 6 decimals), CVAT for images 1.1 (2 decimals).
Read back, every format must give the same images, classes and instance
counts, and masks that match the reference: mean IoU >= 0.96, none below
0.75 (VIA and rounding lose a little on thin instances).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import yaml
from pycocotools import mask as mask_utils

from maskrcnn.data.formats import read_source
from tests.peers import shared_dir

BALLOON = shared_dir() / "data" / "balloon"
CLASSES = ("red balloon", "blue balloon", "party_balloon")

pytestmark = pytest.mark.skipif(not (BALLOON / "val.json").is_file(), reason="needs ../shared/data/balloon")


@pytest.fixture(scope="module")
def reference() -> dict:
    data = json.loads((BALLOON / "val.json").read_text())
    data["categories"] = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    for position, a in enumerate(sorted(data["annotations"], key=lambda a: a["id"])):
        a["category_id"] = position % len(CLASSES) + 1
    return data


def _by_image(data: dict) -> dict[str, list[tuple[str, np.ndarray]]]:
    """file name -> [(class name, mask)] of every instance, decoded with pycocotools."""
    names = {c["id"]: c["name"] for c in data["categories"]}
    images = {im["id"]: im for im in data["images"]}
    out: dict[str, list[tuple[str, np.ndarray]]] = {Path(im["file_name"]).name: [] for im in data["images"]}
    for a in data["annotations"]:
        im = images[a["image_id"]]
        seg = a["segmentation"]
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, im["height"], im["width"]))
        else:
            rle = {"size": seg["size"], "counts": seg["counts"].encode() if isinstance(seg["counts"], str)
                   else seg["counts"]}
        out[Path(im["file_name"]).name].append((names[a["category_id"]], mask_utils.decode(rle).astype(bool)))
    return out


def _compare(reference: dict, converted: dict) -> list[float]:
    """IoU of each reference instance with its best match of the same class in the converted file."""
    want, got = _by_image(reference), _by_image(converted)
    assert sorted(want) == sorted(got)
    assert sorted(c["name"] for c in converted["categories"]) == sorted(CLASSES)
    ious = []
    for name, instances in want.items():
        assert sorted(c for c, _ in got[name]) == sorted(c for c, _ in instances), name
        taken: set[int] = set()
        for cls, mask in instances:
            scores = [
                (np.logical_and(mask, m).sum() / np.logical_or(mask, m).sum(), j)
                for j, (c, m) in enumerate(got[name]) if c == cls and j not in taken
            ]
            best, j = max(scores)
            taken.add(j)
            ious.append(float(best))
    return ious


def _parts(a: dict) -> list[np.ndarray]:
    return [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in a["segmentation"]]


def _labelme(reference: dict, root: Path) -> Path:
    names = {c["id"]: c["name"] for c in reference["categories"]}
    for im in reference["images"]:
        shapes = []
        for group, a in enumerate(x for x in reference["annotations"] if x["image_id"] == im["id"]):
            for part in _parts(a):
                shapes.append({"label": names[a["category_id"]], "points": part.tolist(), "group_id": group,
                               "description": "", "shape_type": "polygon", "flags": {}, "mask": None})
        # One JSON per image in its own folder, the image one level up (imagePath relative to the JSON).
        target = root / "annotations" / (Path(im["file_name"]).stem + ".json")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({
            "version": "5.5.0", "flags": {}, "shapes": shapes,
            "imagePath": os.path.relpath(BALLOON / "val" / im["file_name"], target.parent),
            "imageData": None, "imageHeight": im["height"], "imageWidth": im["width"],
        }))
    return root / "annotations"


def _via(reference: dict, root: Path) -> Path:
    names = {c["id"]: c["name"] for c in reference["categories"]}
    metadata = {}
    for im in reference["images"]:
        regions = []
        for a in (x for x in reference["annotations"] if x["image_id"] == im["id"]):
            for part in _parts(a):
                regions.append({
                    "shape_attributes": {"name": "polygon", "all_points_x": [round(v) for v in part[:, 0]],
                                         "all_points_y": [round(v) for v in part[:, 1]]},
                    "region_attributes": {"kind": names[a["category_id"]], "note": ""},
                })
        size = (BALLOON / "val" / im["file_name"]).stat().st_size
        metadata[f"{im['file_name']}{size}"] = {"filename": im["file_name"], "size": size, "regions": regions,
                                               "file_attributes": {}}
    path = root / "via_project.json"
    path.write_text(json.dumps({
        "_via_settings": {"ui": {}, "core": {"buffer_size": 18, "filepath": {}, "default_filepath": ""},
                          "project": {"name": "balloons"}},
        "_via_img_metadata": metadata,
        "_via_attributes": {"region": {"kind": {"type": "dropdown", "description": "",
                                                "options": {n: "" for n in CLASSES}, "default_options": {}},
                                       "note": {"type": "text", "description": "", "default_value": ""}},
                            "file": {}},
        "_via_data_format_version": "2.0.10",
        "_via_image_id_list": list(metadata),
    }))
    return path


def _yolo(reference: dict, root: Path) -> Path:
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for im in reference["images"]:
        os.symlink(BALLOON / "val" / im["file_name"], root / "images" / "val" / im["file_name"])
        lines = []
        for a in (x for x in reference["annotations"] if x["image_id"] == im["id"]):
            for part in _parts(a):
                xy = (part / [im["width"], im["height"]]).reshape(-1)
                lines.append(" ".join([str(a["category_id"] - 1), *(f"{v:.6f}" for v in xy)]))
        (root / "labels" / "val" / (Path(im["file_name"]).stem + ".txt")).write_text("\n".join(lines) + "\n")
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump({"path": str(root), "train": "images/val", "val": "images/val",
                                    "names": dict(enumerate(CLASSES))}))
    return path


def _cvat(reference: dict, root: Path) -> Path:
    names = {c["id"]: c["name"] for c in reference["categories"]}
    top = ElementTree.Element("annotations")
    ElementTree.SubElement(top, "version").text = "1.1"
    task = ElementTree.SubElement(ElementTree.SubElement(top, "meta"), "task")
    labels = ElementTree.SubElement(task, "labels")
    for name in CLASSES:
        label = ElementTree.SubElement(labels, "label")
        ElementTree.SubElement(label, "name").text = name
        ElementTree.SubElement(label, "type").text = "polygon"
    group = 0
    for index, im in enumerate(reference["images"]):
        node = ElementTree.SubElement(top, "image", id=str(index), name=im["file_name"],
                                      width=str(im["width"]), height=str(im["height"]))
        for a in (x for x in reference["annotations"] if x["image_id"] == im["id"]):
            group += 1
            for part in _parts(a):
                points = ";".join(f"{x:.2f},{y:.2f}" for x, y in part)
                ElementTree.SubElement(node, "polygon", label=names[a["category_id"]], source="manual",
                                       occluded="0", points=points, z_order="0", group_id=str(group))
    path = root / "annotations.xml"
    ElementTree.ElementTree(top).write(path, encoding="utf-8", xml_declaration=True)
    return path


@pytest.mark.parametrize("tool", ["labelme", "via", "yolo", "cvat"])
def test_a_tools_export_of_real_photos_converts_into_the_reference(reference: dict, tool: str,
                                                                    tmp_path: Path) -> None:
    write = {"labelme": _labelme, "via": _via, "yolo": _yolo, "cvat": _cvat}[tool]
    source = write(reference, tmp_path)
    images = None if tool in ("labelme", "yolo") else BALLOON / "val"
    converted = read_source(source, images=images, split="val" if tool == "yolo" else None)
    assert converted.format == tool
    assert converted.report.total == 0, converted.report.summary()
    assert len(converted.coco["annotations"]) == len(reference["annotations"])
    ious = _compare(reference, converted.coco)
    assert len(ious) == 50
    assert np.mean(ious) >= 0.96 and min(ious) >= 0.75, (np.mean(ious), min(ious))
    if tool != "via":  # float coordinates: the same pixels
        assert min(ious) >= 0.99, min(ious)
