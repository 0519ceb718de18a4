"""Tests for maskrcnn.data.formats.yolo: YOLO-seg datasets (data.yaml or a folder) read and written."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pycocotools import mask as mask_utils

from maskrcnn.data.coco import SHORT_POLYGON
from maskrcnn.data.formats import yolo
from maskrcnn.data.formats.common import (
    BAD_FILE,
    BAD_SHAPE,
    LABEL_WITHOUT_IMAGE,
    SHAPE_OUTSIDE,
    UNKNOWN_CLASS,
    DatasetError,
)
from tests.data.formats.helpers import noise_image as _image

H, W = 48, 64


# -------------------------------------------------------------------- helpers


def _text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _read(path: Path, **kwargs: Any) -> Any:
    kwargs.setdefault("images", None)
    kwargs.setdefault("split", None)
    return yolo.read(path, class_attribute=None, **kwargs)


def _dataset(root: Path, names: Any = ("cat", "dog", "bird"), *, splits: bool = True) -> Path:
    """A small Ultralytics layout: images/{train,val}, labels/{train,val}, data.yaml."""
    train = "images/train" if splits else "images"
    _image(root / train / "a.png")
    _image(root / train / "b.png")
    lbl = "labels/train" if splits else "labels"
    _text(root / lbl / "a.txt", "0 0.1 0.1 0.5 0.1 0.5 0.5\n\n1 0.5 0.5 0.25 0.5\n")
    _text(root / lbl / "b.txt", "2 0.2 0.2 0.8 0.2 0.8 0.8 0.2 0.8\n")
    data: dict[str, Any] = {"train": train, "names": list(names) if isinstance(names, tuple) else names}
    if splits:
        _image(root / "images/val/c.png")
        _text(root / "labels/val/c.txt", "1 0.1 0.1 0.9 0.1 0.9 0.9\n")
        data["val"] = "images/val"
    return _text(root / "data.yaml", yaml.safe_dump(data))


def _mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _examples(report: Any, kind: str) -> list[tuple[str, str]]:
    return [(p.file_name, p.detail) for p in report.examples.get(kind, [])]


# ---------------------------------------------------------------- data.yaml


def test_names_as_list_and_polygon_coordinates_scaled(tmp_path: Path) -> None:
    converted = _read(_dataset(tmp_path))
    coco = converted.coco
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog", "bird"]
    assert [im["file_name"] for im in coco["images"]] == ["images/train/a.png", "images/train/b.png"]
    assert converted.image_dir == tmp_path
    assert converted.report.total == 0
    first = coco["annotations"][0]
    assert first["category_id"] == 1
    assert first["segmentation"] == [[6.4, 4.8, 32.0, 4.8, 32.0, 24.0]]
    assert len(coco["annotations"]) == 3


def test_names_as_dict_in_index_order(tmp_path: Path) -> None:
    converted = _read(_dataset(tmp_path, names={2: "bird", 0: "cat", 1: "dog"}))
    assert [c["name"] for c in converted.coco["categories"]] == ["cat", "dog", "bird"]
    bird = [a for a in converted.coco["annotations"] if a["category_id"] == 3]
    assert len(bird) == 1 and bird[0]["image_id"] == 2


def test_names_dict_with_a_gap_is_an_error(tmp_path: Path) -> None:
    yml = _dataset(tmp_path, names={0: "cat", 2: "bird"})
    with pytest.raises(DatasetError, match="1 is missing") as e:
        _read(yml)
    assert "\n" not in str(e.value) and str(yml) in str(e.value)


def test_box_line_is_a_rectangle(tmp_path: Path) -> None:
    converted = _read(_dataset(tmp_path))
    box = converted.coco["annotations"][1]
    # "1 0.5 0.5 0.25 0.5": centre (32, 24), size 16 x 24
    assert box["segmentation"] == [[24.0, 12.0, 40.0, 12.0, 40.0, 36.0, 24.0, 36.0]]
    assert box["bbox"] == [24.0, 12.0, 16.0, 24.0]
    assert box["area"] == 16 * 24


def test_split_val(tmp_path: Path) -> None:
    converted = _read(_dataset(tmp_path), split="val")
    assert [im["file_name"] for im in converted.coco["images"]] == ["images/val/c.png"]
    assert [a["category_id"] for a in converted.coco["annotations"]] == [2]
    # the train labels are not orphans of the val split
    assert converted.report.total == 0


def test_missing_split_names_the_keys(tmp_path: Path) -> None:
    yml = _dataset(tmp_path)
    with pytest.raises(DatasetError) as e:
        _read(yml, split="test")
    message = str(e.value)
    assert "\n" not in message and str(yml) in message and "'test'" in message
    assert "train, val" in message


def test_missing_names_is_one_line(tmp_path: Path) -> None:
    _image(tmp_path / "images/a.png")
    yml = _text(tmp_path / "data.yaml", "train: images\nval: images\n")
    with pytest.raises(DatasetError) as e:
        _read(yml)
    message = str(e.value)
    assert message.startswith(f"{yml}: no 'names': list the class names")
    assert "\n" not in message


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    yml = _text(tmp_path / "data.yaml", "train: images\nnames: [cat, dog\nval: images\n")
    with pytest.raises(DatasetError) as e:
        _read(yml)
    message = str(e.value)
    assert "\n" not in message and str(yml) in message and "not valid YAML (line 3" in message


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    yml = _text(tmp_path / "data.yaml", "- a\n- b\n")
    with pytest.raises(DatasetError, match="not a mapping"):
        _read(yml)


def test_nc_must_match_names(tmp_path: Path) -> None:
    yml = _dataset(tmp_path)
    data = yaml.safe_load(yml.read_text())
    data["nc"] = 5
    yml.write_text(yaml.safe_dump(data))
    with pytest.raises(DatasetError, match="nc: 5 but names has 3") as e:
        _read(yml)
    assert "\n" not in str(e.value)


def test_duplicate_names_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="'cat' is both class 0 and class 2"):
        _read(_dataset(tmp_path, names=("cat", "dog", "cat")))


def test_missing_split_folder_is_an_error(tmp_path: Path) -> None:
    yml = _text(tmp_path / "data.yaml", "train: nowhere/images\nnames: [a]\n")
    with pytest.raises(DatasetError, match="no folder or image list 'nowhere/images'") as e:
        _read(yml)
    assert "\n" not in str(e.value)


def test_path_key_relative_to_the_yaml_and_images_override(tmp_path: Path) -> None:
    _dataset(tmp_path / "data" / "set")
    yml = _text(tmp_path / "cfg" / "set.yaml",
                "path: ../data/set\ntrain: images/train\nval: images/val\nnames: [cat, dog, bird]\n")
    converted = _read(yml)
    assert converted.image_dir == tmp_path / "cfg" / "../data/set"
    assert converted.coco["images"][0]["file_name"] == "images/train/a.png"
    # --images replaces the root (a yaml written for another machine)
    moved = _text(tmp_path / "moved.yaml",
                  "path: /no/such/root\ntrain: images/train\nnames: [cat, dog, bird]\n")
    converted = _read(moved, images=tmp_path / "data" / "set")
    assert converted.report.num_images == 2 and converted.report.num_instances == 3


def test_absolute_path_elsewhere_falls_back_to_the_yaml_folder(tmp_path: Path) -> None:
    yml = _dataset(tmp_path)
    data = yaml.safe_load(yml.read_text())
    data["path"] = "/content/datasets/gone"
    yml.write_text(yaml.safe_dump(data))
    converted = _read(yml)
    assert converted.image_dir == tmp_path and converted.report.num_images == 2


def test_roboflow_parent_relative_entries(tmp_path: Path) -> None:
    # Roboflow writes train: ../train/images beside the train/ folder; Ultralytics drops the ../
    _image(tmp_path / "train/images/a.png")
    _text(tmp_path / "train/labels/a.txt", "0 0.1 0.1 0.5 0.1 0.5 0.5\n")
    yml = _text(tmp_path / "data.yaml", "train: ../train/images\nnc: 1\nnames: ['x']\n")
    converted = _read(yml)
    assert converted.report.num_instances == 1 and converted.report.total == 0


def test_txt_list_of_images(tmp_path: Path) -> None:
    _dataset(tmp_path)
    _text(tmp_path / "train.txt", "./images/train/b.png\nimages/val/c.png\n\n")
    yml = _text(tmp_path / "list.yaml", "train: train.txt\nnames: [cat, dog, bird]\n")
    converted = _read(yml)
    assert [im["file_name"] for im in converted.coco["images"]] == ["images/train/b.png", "images/val/c.png"]
    assert converted.report.num_instances == 2 and converted.report.total == 0


def test_list_of_folders(tmp_path: Path) -> None:
    _dataset(tmp_path)
    yml = _text(tmp_path / "both.yaml", "train: [images/train, images/val]\nnames: [cat, dog, bird]\n")
    converted = _read(yml)
    assert converted.report.num_images == 3 and converted.report.num_instances == 4


# ------------------------------------------------------------ label problems


def test_index_out_of_range_is_counted_with_file_and_line(tmp_path: Path) -> None:
    yml = _dataset(tmp_path)
    _text(tmp_path / "labels/train/b.txt",
          "2 0.2 0.2 0.8 0.2 0.8 0.8\n7 0.1 0.1 0.2 0.1 0.2 0.2\n-1 0 0 1 0 1 1\n")
    converted = _read(yml)
    assert converted.report.counts == {UNKNOWN_CLASS: 2}
    assert _examples(converted.report, UNKNOWN_CLASS) == [
        ("labels/train/b.txt", "line 2: class index 7 is out of range (3 names)"),
        ("labels/train/b.txt", "line 3: class index -1 is out of range (3 names)"),
    ]
    assert converted.report.num_instances == 3


def test_malformed_lines_are_bad_shapes(tmp_path: Path) -> None:
    yml = _dataset(tmp_path)
    _text(tmp_path / "labels/train/b.txt",
          "cat 0.1 0.1 0.5 0.1 0.5 0.5\n"   # class not an integer
          "0 0.1 x 0.5 0.1 0.5 0.5\n"       # not a number
          "0 0.1 0.1 0.5 0.1 0.5\n"         # odd number of coordinates
          "1.0 0.1 0.1 0.5 0.1 0.5 0.5\n"   # "1.0" is an integer (as Ultralytics reads it)
          "0 0.1 0.1\n"                     # one point (two would be 4 numbers: a box)
          "0 nan 0.1 0.5 0.1 0.5 0.5\n")    # not finite
    converted = _read(yml)
    details = _examples(converted.report, BAD_SHAPE)
    assert [d[0] for d in details] == ["labels/train/b.txt"] * 4
    assert details[0][1] == "line 1: class index 'cat' is not an integer"
    assert details[1][1] == "line 2: 'x' is not a number"
    assert details[2][1].startswith("line 3: 5 coordinates, an odd number")
    assert details[3][1].startswith("line 6:")
    assert _examples(converted.report, SHORT_POLYGON) == [("labels/train/b.txt", "line 5: 1 point(s)")]
    assert converted.report.num_instances == 3  # a.txt's two and line 4


def test_label_without_image(tmp_path: Path) -> None:
    yml = _dataset(tmp_path)
    _text(tmp_path / "labels/train/ghost.txt", "0 0.1 0.1 0.5 0.1 0.5 0.5\n")
    _text(tmp_path / "labels/train/classes.txt", "cat\ndog\nbird\n")  # labelImg's class list: not a label
    converted = _read(yml)
    assert converted.report.counts == {LABEL_WITHOUT_IMAGE: 1}
    assert _examples(converted.report, LABEL_WITHOUT_IMAGE)[0][0] == "labels/train/ghost.txt"


def test_image_without_labels_is_a_negative(tmp_path: Path) -> None:
    yml = _dataset(tmp_path)
    _image(tmp_path / "images/train/c.png")
    _text(tmp_path / "labels/train/b.txt", "")  # an empty label file: also a negative
    converted = _read(yml)
    assert converted.report.total == 0
    assert converted.report.num_images == 3 and converted.report.num_negatives == 2


def test_label_file_that_is_not_text(tmp_path: Path) -> None:
    yml = _dataset(tmp_path)
    (tmp_path / "labels/train/b.txt").write_bytes(b"\xff\xfe\x00binary")
    converted = _read(yml)
    assert [f for f, _ in _examples(converted.report, BAD_FILE)] == ["labels/train/b.txt"]
    assert converted.report.num_instances == 2


def test_shape_outside_the_image(tmp_path: Path) -> None:
    yml = _dataset(tmp_path)
    _text(tmp_path / "labels/train/b.txt", "0 1.2 1.2 1.5 1.2 1.5 1.5\n")
    converted = _read(yml)
    assert [d for _, d in _examples(converted.report, SHAPE_OUTSIDE)][0].startswith("line 1:")


# ------------------------------------------------------------ folder source


def test_folder_with_classes_txt(tmp_path: Path) -> None:
    _dataset(tmp_path, splits=False)
    (tmp_path / "data.yaml").unlink()
    _text(tmp_path / "classes.txt", "cat\ndog\nbird\n\n")
    converted = _read(tmp_path)
    assert [c["name"] for c in converted.coco["categories"]] == ["cat", "dog", "bird"]
    assert [im["file_name"] for im in converted.coco["images"]] == ["images/a.png", "images/b.png"]
    assert converted.report.num_instances == 3 and converted.report.total == 0


def test_folder_without_names_uses_indices(tmp_path: Path) -> None:
    _dataset(tmp_path, splits=False)
    (tmp_path / "data.yaml").unlink()
    converted = _read(tmp_path)
    assert [c["name"] for c in converted.coco["categories"]] == ["0", "1", "2"]
    assert converted.report.num_instances == 3


def test_folder_takes_names_from_its_yaml(tmp_path: Path) -> None:
    _dataset(tmp_path, names=("x", "y", "z"))
    converted = _read(tmp_path)
    assert [c["name"] for c in converted.coco["categories"]] == ["x", "y", "z"]
    # every image under images/ (train and val)
    assert converted.report.num_images == 3


def test_folder_split_subfolder(tmp_path: Path) -> None:
    _dataset(tmp_path)
    converted = _read(tmp_path, split="val")
    assert [im["file_name"] for im in converted.coco["images"]] == ["images/val/c.png"]
    with pytest.raises(DatasetError, match=r"no images/test/ folder \(images/ has train, val\)"):
        _read(tmp_path, split="test")


def test_folder_holding_only_a_yaml_reads_the_yaml(tmp_path: Path) -> None:
    _image(tmp_path / "train/images/a.png")
    _text(tmp_path / "train/labels/a.txt", "0 0.1 0.1 0.5 0.1 0.5 0.5\n")
    _text(tmp_path / "data.yaml", "train: train/images\nnames: [only]\n")
    assert yolo.detect(tmp_path)
    converted = _read(tmp_path)
    assert converted.report.num_instances == 1


def test_label_path_rule() -> None:
    assert yolo.label_path(Path("/d/images/train/a.jpg")) == Path("/d/labels/train/a.txt")
    # the LAST images/ component is replaced
    assert yolo.label_path(Path("/images/x/images/a.b.png")) == Path("/images/x/labels/a.b.txt")
    assert yolo.label_path(Path("/d/photos/a.jpg")) == Path("/d/photos/a.txt")


# ----------------------------------------------------------------- detection


def test_detect(tmp_path: Path) -> None:
    yml = _dataset(tmp_path / "yolo")
    assert yolo.detect(yml)
    assert yolo.detect(tmp_path / "yolo")
    other_yaml = _text(tmp_path / "config.yaml", "lr: 0.1\nepochs: 3\n")
    bad_yaml = _text(tmp_path / "bad.yaml", "names: [a\n")
    coco = _text(tmp_path / "coco.json", json.dumps({"images": [], "annotations": [], "categories": []}))
    labelme = _text(tmp_path / "a.json", json.dumps({"shapes": [], "imagePath": "a.png", "imageHeight": 48}))
    via = _text(tmp_path / "via.json", json.dumps({"a.png123": {"filename": "a.png", "regions": []}}))
    cvat = _text(tmp_path / "annotations.xml", "<annotations><version>1.1</version></annotations>")
    voc_dir = tmp_path / "voc"
    (voc_dir / "SegmentationObject").mkdir(parents=True)
    (voc_dir / "JPEGImages").mkdir()
    for path in (other_yaml, bad_yaml, coco, labelme, via, cvat, voc_dir, tmp_path / "missing.yaml"):
        assert not yolo.detect(path), path
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    assert not yolo.detect(binary)


def test_detect_format_picks_yolo(tmp_path: Path) -> None:
    from maskrcnn.data.formats import detect_format

    assert detect_format(_dataset(tmp_path)) == "yolo"
    assert detect_format(tmp_path) == "yolo"


# ---------------------------------------------------------------- round trip


def _random_coco(root: Path, rng: np.random.Generator) -> dict[str, Any]:
    """30 random polygon instances over 5 images (two sizes, one in a subfolder) and 3 classes."""
    files = ["a.png", "b.jpg", "sub/c.png", "d.png", "e.png"]
    sizes = [(H, W), (60, 40), (H, W), (30, 50), (H, W)]
    images = []
    for i, (name, (h, w)) in enumerate(zip(files, sizes, strict=True), start=1):
        _image(root / name, h, w)
        images.append({"id": i, "file_name": name, "height": h, "width": w})
    annotations = []
    for k in range(30):
        image = images[int(rng.integers(0, 4))]  # e.png stays without annotations
        h, w = image["height"], image["width"]
        largest = 0.3 * min(h, w)
        cx, cy = rng.uniform(largest, w - largest), rng.uniform(largest, h - largest)
        count = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, count))
        radius = rng.uniform(3, largest, count)
        if k % 7 == 0:  # 5 of them reach out of the image: clipped on writing
            radius = radius * 3
        points = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
        annotations.append({
            "id": k + 1, "image_id": image["id"], "category_id": [3, 5, 9][k % 3], "iscrowd": 0,
            "segmentation": [points.reshape(-1).round(3).tolist()],
        })
    categories = [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 9, "name": "bird"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def test_round_trip_random_polygons(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    coco = _random_coco(tmp_path / "src", rng)
    data_yaml = yolo.write(coco, tmp_path / "src", tmp_path / "out")
    assert data_yaml == tmp_path / "out" / "data.yaml"
    written = yaml.safe_load(data_yaml.read_text())
    assert written == {"train": "images", "val": "images", "nc": 3, "names": ["cat", "dog", "bird"]}
    assert (tmp_path / "out/labels/e.txt").read_text() == ""
    assert os.path.samefile(tmp_path / "src/sub/c.png", tmp_path / "out/images/sub/c.png")  # hard link
    for line in (tmp_path / "out/labels/a.txt").read_text().splitlines():
        values = line.split()[1:]
        assert all(len(v.split(".")[1]) == 6 and 0.0 <= float(v) <= 1.0 for v in values)

    back = yolo.read(data_yaml, images=None, class_attribute=None, split=None)
    assert back.report.total == 0
    assert [c["name"] for c in back.coco["categories"]] == ["cat", "dog", "bird"]
    name_of = {im["id"]: im["file_name"] for im in coco["images"]}
    assert sorted(im["file_name"] for im in back.coco["images"]) == sorted(
        f"images/{n}" for n in name_of.values())
    size_of = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}

    def key(ann: dict[str, Any], names: dict[int, str], cats: dict[int, str]) -> tuple[str, str]:
        return names[ann["image_id"]].removeprefix("images/"), cats[ann["category_id"]]

    src_cats = {c["id"]: c["name"] for c in coco["categories"]}
    back_cats = {c["id"]: c["name"] for c in back.coco["categories"]}
    back_names = {im["id"]: im["file_name"] for im in back.coco["images"]}
    original = sorted(coco["annotations"], key=lambda a: (name_of[a["image_id"]], a["id"]))
    assert len(back.coco["annotations"]) == len(original) == 30
    inside, clipped = [], []
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for ann in back.coco["annotations"]:
        by_key.setdefault(key(ann, back_names, back_cats), []).append(ann)
    for ann in original:
        h, w = size_of[ann["image_id"]]
        candidates = by_key[key(ann, name_of, src_cats)]
        source = _mask(ann["segmentation"], h, w)
        best = max(candidates, key=lambda b: _iou(source, _mask(b["segmentation"], h, w)))
        candidates.remove(best)
        xy = np.asarray(ann["segmentation"][0]).reshape(-1, 2)
        within = xy.min() >= 0 and xy[:, 0].max() <= w and xy[:, 1].max() <= h
        (inside if within else clipped).append(_iou(source, _mask(best["segmentation"], h, w)))
    # 6 decimals of normalised coordinates: the same pixels, but for a rare one on an edge
    assert len(inside) >= 20 and min(inside) >= 0.99 and float(np.mean(inside)) >= 0.999, inside
    # Clipped to the image, pycocotools puts its vertices on other points of its 1/5-pixel grid,
    # which moves a few edge pixels (the clipped region is the same)
    assert len(clipped) == 5 and min(clipped) >= 0.95 and float(np.mean(clipped)) >= 0.98, clipped


def test_write_multipart_rle_and_box_only(tmp_path: Path) -> None:
    _image(tmp_path / "src/a.png")
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[5:9, 5:20] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentation": [[1, 1, 10, 1, 10, 10], [20, 20, 30, 20, 30, 30, 20, 30]]},
            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": rle},
            {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [8, 4, 16, 12]},
        ],
    }
    with pytest.warns(UserWarning, match="1 RLE instance"):
        data_yaml = yolo.write(coco, tmp_path / "src", tmp_path / "out")
    lines = (tmp_path / "out/labels/a.txt").read_text().splitlines()
    assert len(lines) == 3 and lines[2] == "0 0.250000 0.208333 0.250000 0.250000"
    back = _read(data_yaml)
    # YOLO has no groups: the two parts come back as two instances
    segs = [a["segmentation"] for a in back.coco["annotations"]]
    assert segs[:2] == [
        [[1.0, 1.0, 10.0, 1.0, 10.0, 10.0]], [[20.0, 20.0, 30.0, 20.0, 30.0, 30.0, 20.0, 30.0]]]
    assert back.coco["annotations"][2]["bbox"] == [8.0, 4.0, 16.0, 12.0]


def test_write_yolo_read_from_yolo_keeps_layout(tmp_path: Path) -> None:
    yml = _dataset(tmp_path / "set")
    first = _read(yml)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out_yaml = yolo.write(first.coco, first.image_dir, tmp_path / "out")
    assert (tmp_path / "out/images/train/a.png").is_file()
    assert (tmp_path / "out/labels/train/a.txt").is_file()
    second = _read(out_yaml)
    assert [im["file_name"] for im in second.coco["images"]] == [
        im["file_name"] for im in first.coco["images"]]
    assert [a["segmentation"] for a in second.coco["annotations"]] == [
        a["segmentation"] for a in first.coco["annotations"]]


def test_write_refuses_colliding_labels(tmp_path: Path) -> None:
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W},
                   {"id": 2, "file_name": "a.jpg", "height": H, "width": W}],
        "categories": [{"id": 1, "name": "x"}], "annotations": [],
    }
    with pytest.raises(DatasetError, match="would both be written"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yolo.write(coco, tmp_path, tmp_path / "out")
