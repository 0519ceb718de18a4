"""Pascal VOC segmentation folders (``SegmentationObject`` PNGs and XML annotations), read and written.

Layout of a VOC root (``VOCdevkit/VOC2012``)::

    JPEGImages/<stem>.jpg                   the images
    SegmentationObject/<stem>.png           palette PNG: pixel value k = the k-th object, 0 background,
                                            255 void (object boundaries, "don't care")
    SegmentationClass/<stem>.png            palette PNG: pixel value = index in VOC_CLASSES + 1, 0, 255
    Annotations/<stem>.xml                  <annotation> with <filename>, <size>, one <object> per object
    ImageSets/Segmentation/<split>.txt      the stems of a split (train, val, trainval), one a line

Reading (``read``):

- Images: the stems listed in ``ImageSets/Segmentation/<split>.txt`` when a
  split is given (a stem without an object PNG is counted as
  ``"missing mask"``), else every PNG in ``SegmentationObject/``, sorted.
- The PNGs are read as palette *indices* (PIL mode ``P`` or ``L``), never
  as the colours they show. A PNG re-saved as RGB by some tool is mapped back
  through the VOC colour map (:func:`voc_colormap`); a colour outside it
  makes the file malformed (``BAD_FILE``, the image skipped).
- Instances: each value k in 1..254 of the object PNG is one instance (its
  mask: the pixels equal to k); void pixels (255) belong to no instance.
  VOC's convention is that k is the k-th ``<object>`` of the XML, so the
  instance's class is that object's ``<name>``. When the XML is missing,
  malformed (``BAD_FILE``) or has fewer objects, the class is the most common
  class (1..20) of ``SegmentationClass`` under the instance, named through
  :data:`VOC_CLASSES`; with neither the instance is skipped (``NO_CLASS``).
  ``<difficult>`` objects are kept as ordinary instances (as Detectron2 does).
- Categories: only the classes that occur, VOC's own classes first in VOC's
  order, then any other names sorted (so VOC data keeps VOC's numbering
  minus the absent classes).
- The image: ``<filename>`` of the XML when that file exists in the image
  folder (``JPEGImages/``, or ``images`` when given), else ``<stem>.jpg``,
  ``.jpeg`` or ``.png``. None found: ``MISSING_IMAGE`` when the XML named a
  file, else ``LABEL_WITHOUT_IMAGE``. The XML's ``<size>`` (when positive)
  must be the image's (``SIZE_MISMATCH`` naming the XML), and so must the
  object PNG's (``SIZE_MISMATCH`` naming the PNG). ``file_name`` is relative
  to the VOC root (``JPEGImages/x.jpg``), or to ``images`` when given.

Writing (``write``) makes a VOC root at ``out``: images hard-linked (copied
where linking fails) into ``JPEGImages/`` under their own extension, the
stem being the file name's stem (whitespace replaced by ``_``; a stem already
taken gets ``_<image id>`` appended); object and class PNGs in mode ``P``
with the VOC palette; one XML per image; ``ImageSets/Segmentation/train.txt``.
VOC allows one object per pixel, COCO overlaps: instances are painted in the
order of the annotations and the later one wins a shared pixel (an instance
left with no pixel is dropped). Crowd regions (``iscrowd`` 1) become void
(255) where no instance covers them. Class PNG values are VOC's own indices
when every category name is a VOC class, else the position of the category
(sorted by id) + 1. Objects are numbered 1..254 (255 is void): an image with
more instances is a ``DatasetError``. No boundary band is drawn around
objects (VOC's annotators drew one by hand). ``<bndbox>`` is VOC's 1-based
inclusive pixel box of the object's painted pixels.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..coco import MISSING_IMAGE, SIZE_MISMATCH
from ..images import read_image_size
from ..instance_png import MISSING_MASK
from .common import (
    BAD_FILE,
    LABEL_WITHOUT_IMAGE,
    NO_CLASS,
    CocoBuilder,
    Converted,
    DatasetError,
    place_file,
    relative_name,
    segmentation_mask,
)

__all__ = ["VOC_CLASSES", "detect", "read", "voc_colormap", "write"]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
"""VOC's 20 classes; ``SegmentationClass`` value ``i + 1`` is ``VOC_CLASSES[i]`` (0 is background)."""

VOID = 255  # boundary / "don't care" pixels in both PNGs
MAX_OBJECTS = 254  # object values 1..254: 0 is background and 255 void
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
SPLIT_FOLDER = Path("ImageSets") / "Segmentation"
WRITTEN_SPLIT = "train"


def voc_colormap(count: int = 256) -> np.ndarray:
    """``(count, 3)`` uint8: the RGB colour VOC's palette gives each index.

    The bits of the index are dealt out in turn to red, green and blue, each
    filling its channel from the most significant bit down: index 1 is
    (128, 0, 0), 15 (person) (192, 128, 128), 255 (void) (224, 224, 192).
    """
    index = np.arange(count, dtype=np.int64)
    colours = np.zeros((count, 3), dtype=np.int64)
    for level in range(8):  # bits 3*level .. 3*level+2 of the index -> bit 7-level of r, g, b
        for channel in range(3):
            colours[:, channel] |= ((index >> (3 * level + channel)) & 1) << (7 - level)
    return colours.astype(np.uint8)


_PALETTE = voc_colormap()
# Colour key r << 16 | g << 8 | b of each index, sorted, for mapping RGB pixels back to indices.
_KEYS = (_PALETTE[:, 0].astype(np.int64) << 16) | (_PALETTE[:, 1].astype(np.int64) << 8) | _PALETTE[:, 2]
_KEY_ORDER = np.argsort(_KEYS)
_SORTED_KEYS = _KEYS[_KEY_ORDER]


# --------------------------------------------------------------------- detect


def detect(path: Path) -> bool:
    """A folder holding ``SegmentationObject/`` and ``JPEGImages/`` or ``Annotations/``."""
    try:
        return path.is_dir() and (path / "SegmentationObject").is_dir() and (
            (path / "JPEGImages").is_dir() or (path / "Annotations").is_dir()
        )
    except OSError:
        return False


# ----------------------------------------------------------------------- read


@dataclass
class _Xml:
    """What the reader uses of one ``Annotations/<stem>.xml``."""

    filename: str | None = None
    size: tuple[int, int] | None = None  # (height, width)
    names: list[str | None] = field(default_factory=list)  # <name> of each <object>, in file order


def read(path: Path, *, images: Path | None, class_attribute: str | None, split: str | None) -> Converted:
    """Read a VOC root (rules in the module docstring); ``class_attribute`` is not used."""
    root = Path(path)
    if not (root.is_dir() and (root / "SegmentationObject").is_dir()):
        raise DatasetError(
            f"{root}: no SegmentationObject/ folder; give a VOC root (e.g. VOCdevkit/VOC2012) holding "
            f"SegmentationObject/, JPEGImages/ and Annotations/"
        )
    image_folder = images if images is not None else root / "JPEGImages"
    builder = CocoBuilder(images if images is not None else root)
    if split is not None:
        stems = _split_stems(root, split, builder)
    else:
        stems = sorted(
            p.stem for p in (root / "SegmentationObject").iterdir()
            if p.suffix == ".png" and not p.name.startswith(".") and p.is_file()
        )
    for stem in stems:
        _read_image(builder, root, image_folder, stem)
    converted = builder.result("voc", root)
    names = [c["name"] for c in converted.coco["categories"]]
    order = [c for c in VOC_CLASSES if c in names] + sorted(n for n in names if n not in VOC_CLASSES)
    _reorder_categories(converted.coco, order)
    return converted


def _split_stems(root: Path, split: str, builder: CocoBuilder) -> list[str]:
    """The stems of ``ImageSets/Segmentation/<split>.txt`` that have an object PNG (others counted)."""
    folder = root / SPLIT_FOLDER
    list_file = folder / f"{split}.txt"
    try:
        text = list_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        found = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
        have = f"the splits here are {', '.join(found)}" if found else f"{folder} has no split list"
        raise DatasetError(f"{list_file}: split {split!r} not found; {have}") from None
    report_name = relative_name(list_file, root)
    stems: dict[str, None] = {}  # ordered, without repeats
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0] in stems:
            continue
        stem = words[0]
        if not (root / "SegmentationObject" / f"{stem}.png").is_file():
            builder.report.add(MISSING_MASK, report_name, None,
                               f"line {number}: no SegmentationObject/{stem}.png for {stem!r}")
            continue
        stems[stem] = None
    return list(stems)


def _read_image(builder: CocoBuilder, root: Path, image_folder: Path, stem: str) -> None:
    """Add one stem's image and instances to ``builder``, counting what cannot be used."""
    object_png = root / "SegmentationObject" / f"{stem}.png"
    png_name = relative_name(object_png, root)
    xml_path = root / "Annotations" / f"{stem}.xml"
    xml_name = relative_name(xml_path, root)
    xml: _Xml | None = None
    if xml_path.is_file():
        try:
            xml = _read_xml(xml_path)
        except ValueError as exc:
            builder.report.add(BAD_FILE, xml_name, None, f"{exc}; classes taken from SegmentationClass")

    image_path = _find_image(image_folder, stem, xml.filename if xml else None)
    if image_path is None:
        if xml is not None and xml.filename:
            builder.report.add(MISSING_IMAGE, xml_name, None,
                               f"no image {xml.filename!r} (nor {stem}.jpg/.jpeg/.png) in {image_folder}")
        else:
            builder.report.add(LABEL_WITHOUT_IMAGE, png_name, None,
                               f"no {stem}.jpg, .jpeg or .png in {image_folder}")
        return
    try:
        objects = _read_indices(object_png)
    except ValueError as exc:
        builder.report.add(BAD_FILE, png_name, None, str(exc))
        return
    try:
        image_size = read_image_size(image_path)
    except (OSError, SyntaxError, ValueError):
        image_size = None  # add_image below reports the unreadable image
    if image_size is not None and objects.shape != image_size:
        builder.report.add(
            SIZE_MISMATCH, png_name, None,
            f"the PNG is {objects.shape[0]}x{objects.shape[1]} (HxW) but {image_path.name} is "
            f"{image_size[0]}x{image_size[1]}",
        )
        return
    size = xml.size if xml is not None else None
    image_id = builder.add_image(image_path, xml_name if size is not None else png_name, size)
    if image_id is None:
        return

    xml_names = xml.names if xml is not None else []
    classes: np.ndarray | None = None  # SegmentationClass indices, read when first needed
    class_tried = False
    for k in np.unique(objects).tolist():
        if k == 0 or k == VOID:
            continue
        mask = objects == k
        where = f"object {k}"
        name = xml_names[k - 1] if k <= len(xml_names) else None
        if name is None:
            if not class_tried:
                class_tried = True
                classes = _read_class_png(builder, root, stem, objects.shape)
            name = _majority_class(classes, mask) if classes is not None else None
        if name is None:
            builder.report.add(
                NO_CLASS, png_name, None,
                f"{where}: no <object> {k} in {xml_name} and no VOC class under it in SegmentationClass",
            )
            continue
        name = builder.class_name(name, png_name, where)
        if name is not None:
            builder.add_mask(image_id, name, mask, png_name, where)


def _read_xml(path: Path) -> _Xml:
    """``<filename>``, ``<size>`` and the object names of a VOC XML; ``ValueError`` when it is malformed."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"not well-formed XML ({exc})") from None
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or exc})") from None
    if root.tag != "annotation":
        raise ValueError(f"the root element is <{root.tag}>, not <annotation>")
    xml = _Xml()
    filename = (root.findtext("filename") or "").strip()
    xml.filename = Path(filename).name or None  # a bare name in the image folder
    size = root.find("size")
    if size is not None:
        try:
            width, height = int(size.findtext("width") or ""), int(size.findtext("height") or "")
        except ValueError:
            width = height = 0
        if width > 0 and height > 0:  # some exporters write 0: no size given
            xml.size = (height, width)
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        xml.names.append(name or None)
    return xml


def _find_image(folder: Path, stem: str, filename: str | None) -> Path | None:
    """The XML's ``<filename>`` in ``folder`` when it exists, else ``<stem>`` with an image suffix."""
    candidates = ([folder / filename] if filename else []) + [folder / f"{stem}{s}" for s in IMAGE_SUFFIXES]
    return next((p for p in candidates if p.is_file()), None)


def _read_indices(path: Path) -> np.ndarray:
    """``(H, W)`` uint8 palette indices of a VOC PNG; ``ValueError`` (one line) when it cannot be used."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("P", "L"):
                # For a palette image the stored indices are the values, not the colours they show.
                return np.asarray(image, dtype=np.uint8).copy()
            if image.mode in ("RGB", "RGBA"):
                return _colours_to_indices(np.asarray(image.convert("RGB")))
            raise ValueError(f"mode {image.mode}; expected a palette (P) PNG of VOC indices")
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot be read as an image ({exc})") from None


def _colours_to_indices(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` VOC colours -> ``(H, W)`` indices; ``ValueError`` for a colour not in the colour map."""
    keys = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    position = np.clip(np.searchsorted(_SORTED_KEYS, keys), 0, len(_SORTED_KEYS) - 1)
    known = _SORTED_KEYS[position] == keys
    if not known.all():
        y, x = np.argwhere(~known)[0]
        raise ValueError(
            f"an RGB PNG with {int((~known).sum())} pixel(s) of colours outside the VOC colour map "
            f"(e.g. {tuple(int(v) for v in rgb[y, x])} at x={x}, y={y}); save it as a palette PNG of indices"
        )
    return _KEY_ORDER[position].astype(np.uint8)


def _read_class_png(builder: CocoBuilder, root: Path, stem: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """``SegmentationClass/<stem>.png`` as indices, or None (counted when present but unusable)."""
    path = root / "SegmentationClass" / f"{stem}.png"
    if not path.is_file():
        return None
    name = relative_name(path, root)
    try:
        classes = _read_indices(path)
    except ValueError as exc:
        builder.report.add(BAD_FILE, name, None, str(exc))
        return None
    if classes.shape != shape:
        builder.report.add(
            SIZE_MISMATCH, name, None,
            f"the PNG is {classes.shape[0]}x{classes.shape[1]} (HxW) but SegmentationObject/{stem}.png "
            f"is {shape[0]}x{shape[1]}",
        )
        return None
    return classes


def _majority_class(classes: np.ndarray, mask: np.ndarray) -> str | None:
    """The VOC class most pixels of ``mask`` have in ``classes`` (background and void ignored)."""
    values = classes[mask]
    values = values[(values >= 1) & (values <= len(VOC_CLASSES))]
    if values.size == 0:
        return None
    return VOC_CLASSES[int(np.bincount(values).argmax()) - 1]


def _reorder_categories(coco: dict[str, Any], order: list[str]) -> None:
    """Renumber ``coco``'s categories 1..K in ``order`` (names), updating the annotations."""
    old = {c["name"]: c["id"] for c in coco["categories"]}
    new_id = {old[name]: i + 1 for i, name in enumerate(order)}
    coco["categories"] = [{"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(order)]
    for annotation in coco["annotations"]:
        annotation["category_id"] = new_id[annotation["category_id"]]


# ---------------------------------------------------------------------- write


def write(coco: dict[str, Any], image_dir: Path, out: Path) -> Path:
    """Write a COCO instances dict as a VOC root at ``out`` (rules in the module docstring); return ``out``.

    ``file_name`` is relative to ``image_dir``. Malformed entries are a ``DatasetError`` (one line).
    """
    out = Path(out)
    image_dir = Path(image_dir)
    categories = _categories(coco)
    names = [name for _, name in categories]
    if all(name in VOC_CLASSES for name in names):
        class_value = {cid: VOC_CLASSES.index(name) + 1 for cid, name in categories}
    else:
        if len(categories) > MAX_OBJECTS:
            raise DatasetError(f"{len(categories)} categories; a VOC class PNG holds at most {MAX_OBJECTS}")
        class_value = {cid: i + 1 for i, (cid, _) in enumerate(categories)}
    class_name = dict(categories)

    by_image: dict[Any, list[dict[str, Any]]] = {}
    for annotation in coco.get("annotations") or []:
        if isinstance(annotation, dict):
            by_image.setdefault(annotation.get("image_id"), []).append(annotation)

    for sub in ("JPEGImages", "SegmentationObject", "SegmentationClass", "Annotations", str(SPLIT_FOLDER)):
        (out / sub).mkdir(parents=True, exist_ok=True)
    stems: list[str] = []
    used: set[str] = set()
    for image in coco.get("images") or []:
        image_id, file_name, height, width = _image_entry(image)
        stem = re.sub(r"\s+", "_", Path(file_name).stem) or "image"
        base, number = stem, 0
        while stem in used:  # the same stem in two sub-folders: VOC stems must be unique
            number += 1
            stem = f"{base}_{image_id}" if number == 1 else f"{base}_{image_id}_{number}"
        used.add(stem)
        source = image_dir / file_name
        if not source.is_file():
            raise DatasetError(f"{source}: image {image_id} not found; give the folder the images are in")
        target = out / "JPEGImages" / f"{stem}{Path(file_name).suffix}"
        place_file(source, target)

        objects, classes, boxes, object_classes = _rasterise(
            by_image.get(image_id, []), height, width, class_value, image_id
        )
        _save_png(objects, out / "SegmentationObject" / f"{stem}.png")
        _save_png(classes, out / "SegmentationClass" / f"{stem}.png")
        names_of_objects = [class_name[c] for c in object_classes]
        xml = _annotation_xml(out.name, target.name, height, width, names_of_objects, boxes)
        (out / "Annotations" / f"{stem}.xml").write_text(xml, encoding="utf-8")
        stems.append(stem)
    (out / SPLIT_FOLDER / f"{WRITTEN_SPLIT}.txt").write_text("".join(f"{s}\n" for s in stems))
    return out


def _categories(coco: dict[str, Any]) -> list[tuple[int, str]]:
    """``(id, name)`` of the categories, sorted by id; ``DatasetError`` for a malformed entry."""
    result = []
    for c in coco.get("categories") or []:
        if not (isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)):
            raise DatasetError(f"category {str(c)[:60]}: needs an integer 'id' and a 'name'")
        result.append((c["id"], c["name"]))
    return sorted(result)


def _image_entry(image: Any) -> tuple[Any, str, int, int]:
    """``(id, file_name, height, width)`` of a COCO image entry; ``DatasetError`` when malformed."""
    if not isinstance(image, dict):
        raise DatasetError(f"image entry {str(image)[:60]}: not an object")
    file_name, height, width = image.get("file_name"), image.get("height"), image.get("width")
    if not (isinstance(file_name, str) and file_name and isinstance(height, int) and isinstance(width, int)
            and height > 0 and width > 0):
        raise DatasetError(
            f"image {image.get('id')!r}: needs a 'file_name' and positive integer 'height' and 'width'"
        )
    return image.get("id"), file_name, height, width


def _rasterise(
    annotations: list[dict[str, Any]],
    height: int,
    width: int,
    class_value: dict[int, int],
    image_id: Any,
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int]], list[int]]:
    """One image's object and class PNGs ``(H, W)`` uint8, its objects' VOC boxes and category ids.

    Instances are painted in order (the later one wins a pixel); crowd
    regions become void where no instance lies; instances left without a
    pixel are dropped and the rest numbered 1.. in order.
    """
    painted = np.zeros((height, width), dtype=np.int32)  # 1-based position in `instances`, 0 none
    crowd = np.zeros((height, width), dtype=bool)
    instances: list[dict[str, Any]] = []
    for annotation in annotations:
        category_id = annotation.get("category_id")
        if not isinstance(category_id, int) or category_id not in class_value:
            raise DatasetError(
                f"annotation {annotation.get('id')!r}: category_id {category_id!r} "
                f"is not a listed category"
            )
        mask = _decode(annotation, height, width)
        if annotation.get("iscrowd"):
            crowd |= mask
        else:
            instances.append(annotation)
            painted[mask] = len(instances)
    kept = [int(v) for v in np.unique(painted) if v > 0]  # ascending = annotation order
    if len(kept) > MAX_OBJECTS:
        raise DatasetError(
            f"image {image_id!r}: {len(kept)} instances; a VOC object PNG numbers at most {MAX_OBJECTS}"
        )
    to_object = np.zeros(len(instances) + 1, dtype=np.uint8)
    to_class = np.zeros(len(instances) + 1, dtype=np.uint8)
    for number, position in enumerate(kept, 1):
        to_object[position] = number
        to_class[position] = class_value[instances[position - 1]["category_id"]]
    objects, classes = to_object[painted], to_class[painted]
    void = crowd & (painted == 0)
    objects[void] = VOID
    classes[void] = VOID
    boxes = []
    for number in range(1, len(kept) + 1):
        rows = np.flatnonzero((objects == number).any(axis=1))
        cols = np.flatnonzero((objects == number).any(axis=0))
        # VOC boxes are 1-based and inclusive: pixel column c is x = c + 1.
        boxes.append((int(cols[0]) + 1, int(rows[0]) + 1, int(cols[-1]) + 1, int(rows[-1]) + 1))
    return objects, classes, boxes, [instances[p - 1]["category_id"] for p in kept]


def _decode(annotation: dict[str, Any], height: int, width: int) -> np.ndarray:
    """The ``(H, W)`` bool mask of a COCO annotation (its box when it has no segmentation)."""
    try:
        return segmentation_mask(annotation.get("segmentation"), height, width, annotation.get("bbox"))
    except ValueError as exc:
        raise DatasetError(f"annotation {annotation.get('id')!r}: {exc}") from None


def _save_png(indices: np.ndarray, path: Path) -> None:
    """Save ``(H, W)`` uint8 indices as a palette (mode ``P``) PNG with VOC's colours."""
    image = Image.fromarray(indices)
    image.putpalette(_PALETTE.tobytes())  # an L image with a palette becomes P
    image.save(path)


def _annotation_xml(
    folder: str,
    filename: str,
    height: int,
    width: int,
    names: list[str],
    boxes: list[tuple[int, int, int, int]],
) -> str:
    """A VOC ``<annotation>`` document: one ``<object>`` per object, in the order of the object values."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for name, (xmin, ymin, xmax, ymax) in zip(names, boxes, strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"
