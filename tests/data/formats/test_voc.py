"""Tests for maskrcnn.data.formats.voc: Pascal VOC segmentation folders read and written."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn.data.coco import MISSING_IMAGE, SIZE_MISMATCH
from maskrcnn.data.formats import voc
from maskrcnn.data.formats.common import BAD_FILE, LABEL_WITHOUT_IMAGE, NO_CLASS, DatasetError
from maskrcnn.data.instance_png import MISSING_MASK
from tests.data.formats.helpers import noise_image as _image

H, W = 48, 64


# -------------------------------------------------------------------- helpers


def _png(path: Path, indices: np.ndarray, *, rgb: bool = False, palette: bytes | None = None) -> Path:
    """Save indices as VOC does (mode P with the VOC palette), or as the RGB colours some tools re-save."""
    path.parent.mkdir(parents=True, exist_ok=True)
    indices = indices.astype(np.uint8)
    if rgb:
        Image.fromarray(voc.voc_colormap()[indices]).save(path)
    else:
        image = Image.fromarray(indices)
        image.putpalette(palette if palette is not None else voc.voc_colormap().tobytes())
        image.save(path)
    return path


def _xml(path: Path, filename: str, names: list[str], size: tuple[int, int] | None = (H, W)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    size_xml = (
        f"<size><width>{size[1]}</width><height>{size[0]}</height><depth>3</depth></size>" if size else ""
    )
    objects = "".join(
        f"<object><name>{n}</name><difficult>0</difficult>"
        f"<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object>"
        for n in names
    )
    path.write_text(f"<annotation><filename>{filename}</filename>{size_xml}{objects}</annotation>")
    return path


def _two_objects() -> np.ndarray:
    """Object 1 a rectangle with a void band around it, object 2 another rectangle."""
    ids = np.zeros((H, W), dtype=np.uint8)
    ids[4:20, 4:30] = 255  # boundary band
    ids[6:18, 6:28] = 1
    ids[25:40, 35:60] = 2
    return ids


def _read(root: Path, **kwargs: Any) -> voc.Converted:
    args = {"images": None, "class_attribute": None, "split": None} | kwargs
    return voc.read(root, **args)


def _masks(converted: voc.Converted) -> dict[str, list[tuple[str, np.ndarray]]]:
    """file_name -> [(class name, mask)] in annotation order."""
    names = {c["id"]: c["name"] for c in converted.coco["categories"]}
    files = {im["id"]: im for im in converted.coco["images"]}
    out: dict[str, list[tuple[str, np.ndarray]]] = {im["file_name"]: [] for im in files.values()}
    for a in converted.coco["annotations"]:
        im = files[a["image_id"]]
        mask = _decode(a["segmentation"], im["height"], im["width"])
        out[im["file_name"]].append((names[a["category_id"]], mask))
    return out


def _decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode()
    return mask_utils.decode(rle).astype(bool)


def _examples(converted: voc.Converted, kind: str) -> list[str]:
    return [p.file_name for p in converted.report.examples.get(kind, [])]


# ------------------------------------------------------------------- reading


def test_colormap_is_vocs_bit_interleaving() -> None:
    cmap = voc.voc_colormap()
    assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
    assert cmap[:3].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    assert cmap[15].tolist() == [192, 128, 128]  # person
    assert cmap[255].tolist() == [224, 224, 192]  # void
    assert len({tuple(c) for c in cmap.tolist()}) == 256


def test_palette_png_gives_indices_void_excluded_classes_in_xml_order(tmp_path: Path) -> None:
    ids = _two_objects()
    _image(tmp_path / "JPEGImages" / "a.jpg")
    # A grey palette that shows index k as colour (k, k, k) would read as RGB differently: indices count.
    grey = bytes(v for k in range(256) for v in (255 - k, 0, k))
    _png(tmp_path / "SegmentationObject" / "a.png", ids, palette=grey)
    _xml(tmp_path / "Annotations" / "a.xml", "a.jpg", ["person", "dog"])  # object 1 person, object 2 dog

    assert Image.open(tmp_path / "SegmentationObject" / "a.png").mode == "P"
    converted = _read(tmp_path)

    assert converted.report.counts == {}
    assert converted.format == "voc" and converted.image_dir == tmp_path
    assert converted.coco["images"] == [{"id": 1, "file_name": "JPEGImages/a.jpg", "height": H, "width": W}]
    # Only the classes that occur, in VOC's order: dog (12th) before person (15th).
    assert [c["name"] for c in converted.coco["categories"]] == ["dog", "person"]
    assert [c["id"] for c in converted.coco["categories"]] == [1, 2]
    masks = _masks(converted)["JPEGImages/a.jpg"]
    assert [name for name, _ in masks] == ["person", "dog"]
    assert np.array_equal(masks[0][1], ids == 1) and np.array_equal(masks[1][1], ids == 2)
    union = masks[0][1] | masks[1][1]
    assert not union[ids == 255].any()  # void pixels belong to no instance
    assert [a["bbox"] for a in converted.coco["annotations"]] == [[6, 6, 22, 12], [35, 25, 25, 15]]
    assert converted.report.num_images == 1 and converted.report.num_instances == 2


def test_rgb_saved_png_is_mapped_back_and_unknown_colours_are_counted(tmp_path: Path) -> None:
    ids = _two_objects()
    _image(tmp_path / "JPEGImages" / "a.jpg")
    _png(tmp_path / "SegmentationObject" / "a.png", ids, rgb=True)
    _xml(tmp_path / "Annotations" / "a.xml", "a.jpg", ["cat", "cat"])
    _image(tmp_path / "JPEGImages" / "b.jpg")
    colours = voc.voc_colormap()[ids]
    colours[0, 0] = (1, 2, 3)  # not a VOC colour (say, a re-encoding artefact)
    Image.fromarray(colours).save(tmp_path / "SegmentationObject" / "b.png")
    _xml(tmp_path / "Annotations" / "b.xml", "b.jpg", ["cat", "cat"])

    assert Image.open(tmp_path / "SegmentationObject" / "a.png").mode == "RGB"
    converted = _read(tmp_path)

    masks = _masks(converted)
    assert list(masks) == ["JPEGImages/a.jpg"]
    back = [m for _, m in masks["JPEGImages/a.jpg"]]
    assert len(back) == 2 and np.array_equal(back[0], ids == 1) and np.array_equal(back[1], ids == 2)
    assert converted.report.counts == {BAD_FILE: 1}
    assert _examples(converted, BAD_FILE) == ["SegmentationObject/b.png"]
    assert "(1, 2, 3)" in converted.report.examples[BAD_FILE][0].detail


def test_class_from_segmentation_class_when_xml_is_missing_or_short(tmp_path: Path) -> None:
    ids = np.zeros((H, W), dtype=np.uint8)
    ids[0:10, 0:10] = 1
    ids[20:30, 20:30] = 2
    ids[40:45, 50:60] = 3
    classes = np.zeros((H, W), dtype=np.uint8)
    classes[0:10, 0:10] = 8  # cat ...
    classes[0:2, 0:10] = 12  # ... with a few dog pixels: the majority wins
    classes[20:30, 20:30] = 3  # bird
    classes[40:45, 50:60] = 255  # object 3: only void under it -> no class
    for stem in ("a", "b"):
        _image(tmp_path / "JPEGImages" / f"{stem}.jpg")
        _png(tmp_path / "SegmentationObject" / f"{stem}.png", ids)
        _png(tmp_path / "SegmentationClass" / f"{stem}.png", classes)
    _xml(tmp_path / "Annotations" / "b.xml", "b.jpg", ["horse"])  # names object 1 only

    converted = _read(tmp_path)

    masks = _masks(converted)
    assert [n for n, _ in masks["JPEGImages/a.jpg"]] == ["cat", "bird"]  # no XML at all
    assert [n for n, _ in masks["JPEGImages/b.jpg"]] == ["horse", "bird"]  # XML first, then the class PNG
    assert [c["name"] for c in converted.coco["categories"]] == ["bird", "cat", "horse"]
    assert converted.report.counts == {NO_CLASS: 2}
    assert _examples(converted, NO_CLASS) == ["SegmentationObject/a.png", "SegmentationObject/b.png"]
    assert "object 3" in converted.report.examples[NO_CLASS][0].detail


def test_malformed_xml_is_counted_and_the_class_png_used(tmp_path: Path) -> None:
    ids = _two_objects()
    classes = np.where(ids == 255, 255, np.where(ids > 0, 15, 0)).astype(np.uint8)
    _image(tmp_path / "JPEGImages" / "a.jpg")
    _png(tmp_path / "SegmentationObject" / "a.png", ids)
    _png(tmp_path / "SegmentationClass" / "a.png", classes)
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text("<annotation><object><name>dog</name></annotation")

    converted = _read(tmp_path)

    assert converted.report.counts == {BAD_FILE: 1}
    assert _examples(converted, BAD_FILE) == ["Annotations/a.xml"]
    assert [n for n, _ in _masks(converted)["JPEGImages/a.jpg"]] == ["person", "person"]


def test_split_list_and_stems_without_an_object_png(tmp_path: Path) -> None:
    ids = _two_objects()
    for stem in ("a", "b", "c"):
        _image(tmp_path / "JPEGImages" / f"{stem}.jpg")
        _png(tmp_path / "SegmentationObject" / f"{stem}.png", ids)
        _xml(tmp_path / "Annotations" / f"{stem}.xml", f"{stem}.jpg", ["cow", "cow"])
    lists = tmp_path / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "val.txt").write_text("c\n\na\nzz\na\n")  # blank line, a stem without a PNG, a repeat
    (lists / "train.txt").write_text("b\n")

    converted = _read(tmp_path, split="val")

    assert [im["file_name"] for im in converted.coco["images"]] == ["JPEGImages/c.jpg", "JPEGImages/a.jpg"]
    assert converted.report.counts == {MISSING_MASK: 1}
    problem = converted.report.examples[MISSING_MASK][0]
    assert problem.file_name == "ImageSets/Segmentation/val.txt" and "line 4" in problem.detail
    assert [im["file_name"] for im in _read(tmp_path).coco["images"]] == [
        "JPEGImages/a.jpg", "JPEGImages/b.jpg", "JPEGImages/c.jpg"
    ]


def test_missing_split_file_is_one_line_naming_the_splits(tmp_path: Path) -> None:
    _png(tmp_path / "SegmentationObject" / "a.png", _two_objects())
    lists = tmp_path / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("a\n")
    (lists / "val.txt").write_text("a\n")

    with pytest.raises(DatasetError) as info:
        _read(tmp_path, split="test")
    message = str(info.value)
    assert "\n" not in message
    assert "test.txt" in message and "train, val" in message


def test_not_a_voc_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        _read(tmp_path)
    assert "\n" not in str(info.value) and "SegmentationObject" in str(info.value)


def test_object_png_without_its_image(tmp_path: Path) -> None:
    ids = _two_objects()
    _png(tmp_path / "SegmentationObject" / "a.png", ids)  # no XML, no image
    _png(tmp_path / "SegmentationObject" / "b.png", ids)
    _xml(tmp_path / "Annotations" / "b.xml", "b.jpg", ["cow", "cow"])  # the XML names a missing image
    _image(tmp_path / "JPEGImages" / "c.png")  # found under another suffix
    _png(tmp_path / "SegmentationObject" / "c.png", ids)
    _xml(tmp_path / "Annotations" / "c.xml", "c.jpg", ["cow", "cow"])
    _image(tmp_path / "JPEGImages" / "photo_d.jpeg")  # named by the XML
    _png(tmp_path / "SegmentationObject" / "d.png", ids)
    _xml(tmp_path / "Annotations" / "d.xml", "photo_d.jpeg", ["cow", "cow"])

    converted = _read(tmp_path)

    names = [im["file_name"] for im in converted.coco["images"]]
    assert names == ["JPEGImages/c.png", "JPEGImages/photo_d.jpeg"]
    assert converted.report.counts == {LABEL_WITHOUT_IMAGE: 1, MISSING_IMAGE: 1}
    assert _examples(converted, LABEL_WITHOUT_IMAGE) == ["SegmentationObject/a.png"]
    assert _examples(converted, MISSING_IMAGE) == ["Annotations/b.xml"]


def test_images_folder_given(tmp_path: Path) -> None:
    _image(tmp_path / "pictures" / "a.jpg")
    _png(tmp_path / "voc" / "SegmentationObject" / "a.png", _two_objects())
    _xml(tmp_path / "voc" / "Annotations" / "a.xml", "a.jpg", ["cow", "sheep"])

    converted = _read(tmp_path / "voc", images=tmp_path / "pictures")

    assert converted.image_dir == tmp_path / "pictures"
    assert [im["file_name"] for im in converted.coco["images"]] == ["a.jpg"]
    assert converted.report.num_instances == 2


def test_size_mismatches_name_the_png_or_the_xml(tmp_path: Path) -> None:
    _image(tmp_path / "JPEGImages" / "a.jpg")
    _png(tmp_path / "SegmentationObject" / "a.png", np.ones((H + 2, W), dtype=np.uint8))  # PNG != image
    _xml(tmp_path / "Annotations" / "a.xml", "a.jpg", ["cow"])
    _image(tmp_path / "JPEGImages" / "b.jpg")
    _png(tmp_path / "SegmentationObject" / "b.png", np.ones((H, W), dtype=np.uint8))
    _xml(tmp_path / "Annotations" / "b.xml", "b.jpg", ["cow"], size=(H, W + 5))  # XML size != image
    _image(tmp_path / "JPEGImages" / "c.jpg")
    _png(tmp_path / "SegmentationObject" / "c.png", np.ones((H, W), dtype=np.uint8))
    _xml(tmp_path / "Annotations" / "c.xml", "c.jpg", ["cow"], size=(0, 0))  # 0: no size given

    converted = _read(tmp_path)

    assert converted.report.counts == {SIZE_MISMATCH: 2}
    assert _examples(converted, SIZE_MISMATCH) == ["SegmentationObject/a.png", "Annotations/b.xml"]
    assert [im["file_name"] for im in converted.coco["images"]] == ["JPEGImages/c.jpg"]


# ------------------------------------------------------------------ detection


def test_detect(tmp_path: Path) -> None:
    root = tmp_path / "VOC2012"
    _png(root / "SegmentationObject" / "a.png", _two_objects())
    (root / "JPEGImages").mkdir()
    assert voc.detect(root)
    only_annotations = tmp_path / "ann"
    (only_annotations / "SegmentationObject").mkdir(parents=True)
    (only_annotations / "Annotations").mkdir()
    assert voc.detect(only_annotations)

    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    labelme = tmp_path / "x.json"
    labelme.write_text(json.dumps({"shapes": [], "imagePath": "x.jpg", "imageHeight": 4, "imageWidth": 4}))
    yolo = tmp_path / "yolo"
    (yolo / "images").mkdir(parents=True)
    (yolo / "labels").mkdir()
    (yolo / "data.yaml").write_text("names: [a]\n")
    lone = tmp_path / "lone"
    (lone / "SegmentationObject").mkdir(parents=True)  # neither images nor annotations beside it
    for path in (coco, labelme, yolo, yolo / "data.yaml", lone, root / "JPEGImages", tmp_path / "nothing"):
        assert not voc.detect(path), path


# ------------------------------------------------------------------- writing


def _random_coco(tmp_path: Path, seed: int, classes: list[str]) -> tuple[dict[str, Any], Path]:
    """Images with non-overlapping random blob masks (each a compressed RLE), several classes."""
    rng = np.random.default_rng(seed)
    image_dir = tmp_path / "src"
    images, annotations = [], []
    sizes = [(48, 64), (40, 40), (64, 48), (30, 70), (50, 50)]
    for image_id, (h, w) in enumerate(sizes, 1):
        name = f"img {image_id}.jpg" if image_id == 2 else f"sub/img{image_id}.jpg"  # a space; a sub-folder
        _image(image_dir / name, h, w)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        # Blobs painted in turn into one label map: each final region is one instance, none overlap.
        labels = np.zeros((h, w), dtype=np.int32)
        yy, xx = np.mgrid[0:h, 0:w]
        for k in range(1, int(rng.integers(4, 9))):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(2, h / 3), rng.uniform(2, w / 3)
            labels[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = k
        for k in np.unique(labels):
            if k == 0:
                continue
            rle = mask_utils.encode(np.asfortranarray((labels == k).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": int(rng.integers(1, len(classes) + 1)), "segmentation": rle,
                "area": int((labels == k).sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            })
    categories = [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(classes)]
    return {"images": images, "annotations": annotations, "categories": categories}, image_dir


@pytest.mark.parametrize(("seed", "classes"), [(0, ["person", "car", "dog"]), (1, ["zebra", "cat", "apple"])])
def test_round_trip_gives_identical_masks(tmp_path: Path, seed: int, classes: list[str]) -> None:
    coco, image_dir = _random_coco(tmp_path, seed, classes)
    assert len(coco["annotations"]) >= 20

    root = voc.write(coco, image_dir, tmp_path / "out")
    converted = _read(root)

    assert root == tmp_path / "out" and voc.detect(root)
    assert converted.report.counts == {}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    used = {names[a["category_id"]] for a in coco["annotations"]}
    assert {c["name"] for c in converted.coco["categories"]} == used
    read_back = _masks(converted)
    stems = ["sub/img1", "img_2", "sub/img3", "sub/img4", "sub/img5"]  # whitespace -> _
    written = [f"JPEGImages/{Path(s).name}.jpg" for s in stems]
    assert list(read_back) == sorted(written)  # read back in stem order
    for image, file_name in zip(coco["images"], written, strict=True):
        original = [
            (names[a["category_id"]], _decode(a["segmentation"], image["height"], image["width"]))
            for a in coco["annotations"] if a["image_id"] == image["id"]
        ]
        got = read_back[file_name]
        assert len(got) == len(original)
        for (name, mask), (name_back, mask_back) in zip(original, got, strict=True):
            assert name_back == name
            assert np.array_equal(mask_back, mask)
    first = tmp_path / "out" / "JPEGImages" / "img1.jpg"
    assert os.path.samefile(first, image_dir / "sub" / "img1.jpg")  # hard-linked, not copied
    assert (tmp_path / "out" / "ImageSets" / "Segmentation" / "train.txt").read_text().split() == [
        Path(s).name for s in stems
    ]


def test_written_files_follow_voc_conventions(tmp_path: Path) -> None:
    _image(tmp_path / "src" / "a.jpg", 20, 30)
    square = [[2.0, 3.0, 12.0, 3.0, 12.0, 13.0, 2.0, 13.0]]  # pixels 2..11 x 3..12
    overlapping = [[10.0, 10.0, 20.0, 10.0, 20.0, 18.0, 10.0, 18.0]]  # pixels 10..19 x 10..17, painted later
    coco = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": 20, "width": 30}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 15, "segmentation": square, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 8, "segmentation": overlapping, "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 8, "bbox": [0, 0, 3, 2], "iscrowd": 1},
            {"id": 4, "image_id": 7, "category_id": 8, "segmentation": [[25, 1, 27, 1, 27, 3]], "iscrowd": 0},
        ],
        "categories": [{"id": 8, "name": "cat"}, {"id": 15, "name": "person"}],
    }
    out = voc.write(coco, tmp_path / "src", tmp_path / "out")

    objects_png = Image.open(out / "SegmentationObject" / "a.png")
    class_png = Image.open(out / "SegmentationClass" / "a.png")
    assert objects_png.mode == "P" and class_png.mode == "P"
    assert objects_png.getpalette()[: 3 * 3] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    objects, classes = np.asarray(objects_png), np.asarray(class_png)
    assert objects[3, 2] == 1 and objects[12, 2] == 1 and objects[3, 12] == 0 and objects[13, 2] == 0
    assert objects[10, 10] == 2 and objects[12, 11] == 2 and objects[17, 19] == 2  # the later one wins
    assert objects[0, 0] == 255 and classes[0, 0] == 255  # crowd -> void
    assert objects[1, 26] == 3 and (objects == 3).sum() == 1  # the small triangle: one pixel
    # All names are VOC's: the class PNG uses VOC's numbering (person 15, cat 8).
    assert classes[5, 5] == 15 and classes[15, 15] == 8

    xml = ET.parse(out / "Annotations" / "a.xml").getroot()
    assert xml.tag == "annotation" and xml.findtext("filename") == "a.jpg"
    assert [xml.findtext(f"size/{t}") for t in ("width", "height", "depth")] == ["30", "20", "3"]
    objs = xml.findall("object")
    assert [o.findtext("name") for o in objs] == ["person", "cat", "cat"]
    assert [o.findtext("difficult") for o in objs] == ["0", "0", "0"]
    boxes = [[int(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")] for o in objs]
    ys, xs = np.nonzero(objects == 1)
    assert boxes[0] == [xs.min() + 1, ys.min() + 1, xs.max() + 1, ys.max() + 1] == [3, 4, 12, 13]
    assert boxes[1] == [11, 11, 20, 18]

    other = dict(coco, categories=[{"id": 8, "name": "kitten"}, {"id": 15, "name": "person"}])
    out2 = voc.write(other, tmp_path / "src", tmp_path / "out2")
    classes2 = np.asarray(Image.open(out2 / "SegmentationClass" / "a.png"))
    assert classes2[5, 5] == 2 and classes2[15, 15] == 1  # not all VOC names: position (by id) + 1
    assert voc.write(other, tmp_path / "src", tmp_path / "out2") == out2  # writing again over it works


def test_write_refuses_more_than_254_instances(tmp_path: Path) -> None:
    _image(tmp_path / "src" / "a.png", 16, 16)
    annotations = [
        {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [i % 16, i // 16, 1, 1], "iscrowd": 0}
        for i in range(255)
    ]
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": 16, "width": 16}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "dot"}],
    }
    with pytest.raises(DatasetError) as info:
        voc.write(coco, tmp_path / "src", tmp_path / "out")
    assert "\n" not in str(info.value) and "255 instances" in str(info.value)

    coco["annotations"] = annotations[:254]
    converted = _read(voc.write(coco, tmp_path / "src", tmp_path / "out"))
    assert converted.report.num_instances == 254 and converted.report.counts == {}
