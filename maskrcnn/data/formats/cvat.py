"""CVAT for images 1.1 XML -> COCO instances, and back.

The file (``annotations.xml`` of an unzipped CVAT export, or any ``.xml``
whose root element is ``<annotations>``)::

    <annotations>
      <version>1.1</version>
      <meta><task|project|job> ... <labels><label><name>cat</name>...</label></labels> ...</meta>
      <image id="0" name="a.jpg" width="640" height="480" [subset="train"]>
        <polygon label="cat" points="x,y;x,y;..." [group_id="2"] .../>
        <box label="cat" xtl= ytl= xbr= ybr= [rotation="30"] .../>
        <ellipse label="cat" cx= cy= rx= ry= [rotation=] .../>
        <mask label="cat" rle="n, n, ..." left= top= width= height= .../>
      </image>
    </annotations>

Conventions:

- Classes: the names of every ``<labels><label>`` in the meta (task, job or
  project), in document order, each once; a shape whose label is not among
  them is ``UNKNOWN_CLASS``. Labels that cannot be regions are left out of
  the list: sub-labels of a skeleton (a ``<parent>``) and labels of type
  ``skeleton``, ``points``, ``polyline``, ``cuboid`` or ``tag``. A meta with
  no labels at all: the labels the shapes use, sorted.
- Coordinates are continuous pixel coordinates as CVAT stores them (no
  half-pixel shift). A box's ``rotation`` (degrees, clockwise on screen
  about its centre) rotates its corners; an ellipse's rotates its axes.
- Mask ``rle``: comma-separated run lengths over the mask's own box
  (``width`` x ``height`` pixels placed at ``left``, ``top``), row-major
  (left to right, then top to bottom), starting with a run of background
  pixels (0 when the first pixel is set) and alternating. The runs must
  cover the box exactly (``BAD_SHAPE`` otherwise); pixels outside the image
  are clipped away.
- Shapes of one image with the same non-zero ``group_id`` and the same
  label are one instance: their polygons (boxes and ellipses as polygons)
  its parts, or, when one of them is a mask, all rasterised into one mask.
- ``<polyline>``, ``<points>``, ``<skeleton>`` and ``<cuboid>`` are not
  regions (``NOT_A_REGION``); ``<tag>`` (a label of the whole image) is
  ignored. A CVAT *for video* export (``<track>`` elements, no ``<image>``)
  is refused with a ``DatasetError`` saying to export as CVAT for images;
  tracks beside images are counted (``NOT_A_REGION``) and skipped.
- Image files: ``name`` relative to ``--images`` when given, else the first
  that exists of ``images/<name>``, ``images/<subset>/<name>`` (a project
  export) and ``<name>`` beside the XML. ``file_name`` is relative to
  ``--images`` or the XML's folder. The ``width``/``height`` attributes must
  match the image file (``SIZE_MISMATCH`` otherwise).
- ``split``: keep only the images whose ``subset`` attribute is that value.
- Problems are reported under the XML file's name, with the entry:
  ``"image 'a.jpg', polygon 3 (label 'cat')"`` (the 3rd element of the image).

Writing (:func:`write`): ``out`` is the ``.xml`` path, or a folder that gets
``annotations.xml``; images are not copied (read it back with ``--images``
set to the image folder). The meta is a ``<task>`` with one label per
category; each image an ``<image id name width height>`` (``name`` = COCO
``file_name``); polygons are ``<polygon>`` (coordinates with 2 decimals as
CVAT writes them, 3 where the value has them: the precision readers here
keep, so that the round trip is exact), a multi-part instance several
polygons sharing a ``group_id`` (1, 2, ... per instance); RLE masks are
``<mask>`` with CVAT's RLE over the mask's tight box; an annotation with only
a ``bbox`` is a ``<box>``. Crowd regions are skipped with a warning.
"""

from __future__ import annotations

import math
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    BAD_SHAPE,
    NOT_A_REGION,
    SHAPE_OUTSIDE,
    SHORT_POLYGON,
    CocoBuilder,
    Converted,
    DatasetError,
    ellipse,
    polygon_mask,
    rectangle,
    segmentation_mask,
)

__all__ = ["decode_rle", "detect", "encode_rle", "read", "write"]

FORMAT = "cvat"
XML_NAME = "annotations.xml"
REGIONS = ("polygon", "box", "ellipse", "mask")
NOT_REGIONS = ("polyline", "points", "skeleton", "cuboid")
IGNORED = ("tag",)
NOT_REGION_LABEL_TYPES = frozenset({"skeleton", "points", "polyline", "cuboid", "tag"})
# A mask box this many times larger than the image is an error, not a mask to allocate.
MAX_MASK_BOX_RATIO = 4


class _ShapeError(ValueError):
    """A shape's attributes cannot be read; the message says which and why."""

    kind = BAD_SHAPE


class _OutsideError(_ShapeError):
    """A mask whose pixels all lie outside the image."""

    kind = SHAPE_OUTSIDE


# ------------------------------------------------------------------- detect


def detect(path: Path) -> bool:
    """An ``.xml`` file whose root element is ``<annotations>``, or a folder holding one."""
    try:
        if path.is_dir():
            return any(_is_cvat_xml(p) for p in _candidates(path))
        return path.is_file() and path.suffix.lower() == ".xml" and _is_cvat_xml(path)
    except OSError:
        return False


def _candidates(folder: Path) -> list[Path]:
    """XML files directly in ``folder``, ``annotations.xml`` first."""
    others = sorted(p for p in folder.glob("*.xml") if p.name != XML_NAME and p.is_file())
    return ([folder / XML_NAME] if (folder / XML_NAME).is_file() else []) + others


def _is_cvat_xml(path: Path) -> bool:
    """Whether the first element of ``path`` is ``<annotations>`` (reads only up to it; never raises)."""
    try:
        with open(path, "rb") as f:
            for _, element in ET.iterparse(f, events=("start",)):
                return element.tag == "annotations"
    except Exception:  # not XML, unreadable...: not ours
        return False
    return False


# --------------------------------------------------------------------- read


def read(path: Path, *, images: Path | None, class_attribute: str | None, split: str | None) -> Converted:
    """Read a CVAT for images 1.1 XML (or the folder of an unzipped export); see the module docstring."""
    xml_path = _find_xml(Path(path))
    image_dir = Path(images) if images is not None else xml_path.parent
    report_name = xml_path.name
    builder: CocoBuilder | None = None
    subsets: set[str] = set()
    track_count = 0
    image_count = 0
    depth = 0
    root: ET.Element | None = None
    try:
        with open(xml_path, "rb") as f:
            # Streamed: each <image> is handled and cleared when it ends (masks can make files large).
            for event, element in ET.iterparse(f, events=("start", "end")):
                if event == "start":
                    depth += 1
                    if depth == 1:
                        root = element
                        if element.tag != "annotations":
                            raise DatasetError(
                                f"{xml_path}: root element <{element.tag}>, not <annotations>; "
                                f"not a CVAT for images XML (export the task as 'CVAT for images 1.1')"
                            )
                    continue
                depth -= 1
                if depth != 1 or root is None:
                    continue
                if element.tag == "meta" and builder is None:
                    classes = _meta_labels(element)
                    builder = CocoBuilder(image_dir, classes=classes, closed=bool(classes))
                elif element.tag == "image":
                    if builder is None:
                        builder = CocoBuilder(image_dir)
                    image_count += 1
                    subset = element.get("subset")
                    if subset:
                        subsets.add(subset)
                    if not split or subset == split:
                        _read_image(builder, element, xml_path.parent, images, report_name)
                elif element.tag == "track":
                    track_count += 1
                root.remove(element)
    except ET.ParseError as e:
        line, column = e.position
        what = str(e).split(":")[0]
        raise DatasetError(f"{xml_path}: not well-formed XML (line {line}, column {column}): {what}; "
                           f"fix the file or export it again from CVAT") from None
    except OSError as e:
        raise DatasetError(f"{xml_path}: cannot be read ({e})") from None
    if builder is None:
        builder = CocoBuilder(image_dir)
    if track_count and not image_count:
        raise DatasetError(f"{xml_path}: a 'CVAT for video' export (<track> elements, no <image>); "
                           f"export the task as 'CVAT for images 1.1'")
    if split and split not in subsets:
        known = ", ".join(sorted(subsets)) or "none"
        raise DatasetError(f"{xml_path}: no image of subset {split!r} (subsets: {known}); "
                           f"choose one with --split or leave it out")
    if track_count:
        builder.report.add(NOT_A_REGION, report_name, None,
                           f"{track_count} <track> element(s): video annotations are not read (export the "
                           f"task as 'CVAT for images 1.1')")
    return builder.result(FORMAT, xml_path)


def _find_xml(path: Path) -> Path:
    if not path.is_dir():
        return path
    candidates = [p for p in _candidates(path) if _is_cvat_xml(p)]
    if not candidates:
        raise DatasetError(f"{path}: no CVAT XML in this folder (an annotations.xml whose root is "
                           f"<annotations>); give the XML file")
    if candidates[0].name != XML_NAME and len(candidates) > 1:
        raise DatasetError(f"{path}: several CVAT XML files ({', '.join(p.name for p in candidates[:4])}); "
                           f"give the one to read")
    return candidates[0]


def _meta_labels(meta: ET.Element) -> list[str]:
    """The class names of the meta's ``<labels>`` (task, job or project), document order, once each."""
    names: list[str] = []
    for labels in meta.iter("labels"):
        for label in labels.findall("label"):
            name = label.findtext("name")
            kind = (label.findtext("type") or "").strip()
            parent = (label.findtext("parent") or "").strip()
            if name and kind not in NOT_REGION_LABEL_TYPES and not parent:
                names.append(name)
    return list(dict.fromkeys(names))


def _image_path(xml_dir: Path, images: Path | None, name: str, subset: str | None) -> Path:
    if images is not None:
        return images / name
    candidates = [xml_dir / "images" / name]
    if subset:
        candidates.append(xml_dir / "images" / subset / name)
    candidates.append(xml_dir / name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[0] if (xml_dir / "images").is_dir() else candidates[-1]


def _read_image(
    builder: CocoBuilder, element: ET.Element, xml_dir: Path, images: Path | None, report_name: str
) -> None:
    """Add one ``<image>`` and its regions."""
    name = element.get("name")
    if not name:
        builder.report.add(BAD_SHAPE, report_name, None, f"image id {element.get('id')!r}: no 'name'")
        return
    image_where = f"image {name!r}"
    size: tuple[int, int] | None = None
    try:
        size = (_integer(element, "height"), _integer(element, "width"))
    except _ShapeError as e:
        if element.get("width") is not None or element.get("height") is not None:
            builder.report.add(BAD_SHAPE, report_name, None,
                               f"{image_where}: {e} (size taken from the image file)")
    image_id = builder.add_image(_image_path(xml_dir, images, name, element.get("subset")), report_name, size)
    if image_id is None:
        return
    height, width = builder.image_size(image_id)

    # Instances in order of first appearance: a lone shape, or all shapes of one (group_id, label).
    instances: dict[Any, tuple[str, str, list[np.ndarray | tuple[str, np.ndarray]]]] = {}
    for number, shape in enumerate(element, start=1):
        tag = shape.tag
        label = shape.get("label")
        where = f"{image_where}, {tag} {number}" + (f" (label {label!r})" if label is not None else "")
        if tag in IGNORED:
            continue
        if tag not in REGIONS:
            builder.report.add(NOT_A_REGION, report_name, None, f"{where}: a {tag} is not a region")
            continue
        class_name = builder.class_name(label, report_name, where)
        if class_name is None:
            continue
        try:
            part = _shape(shape, height, width)
        except _ShapeError as e:
            builder.report.add(e.kind, report_name, None, f"{where}: {e}")
            continue
        group = _group(shape)
        if group:
            key: Any = ("group", group, class_name)
            where = f"{image_where}, group {group} (label {class_name!r})"
        else:
            key = ("shape", number)
        instances.setdefault(key, (where, class_name, []))[2].append(part)

    for where, class_name, parts in instances.values():
        masks = [p[1] for p in parts if isinstance(p, tuple)]
        polygons = [p for p in parts if not isinstance(p, tuple)]
        if not masks:
            builder.add_polygons(image_id, class_name, polygons, report_name, where)
            continue
        mask = np.zeros((height, width), dtype=bool)
        for m in masks:
            mask |= m
        for polygon in polygons:
            if not np.isfinite(polygon).all():
                builder.report.add(BAD_SHAPE, report_name, None, f"{where}: a coordinate is not finite")
            elif len(polygon) < 3:
                builder.report.add(SHORT_POLYGON, report_name, None, f"{where}: {len(polygon)} point(s)")
            else:
                mask |= polygon_mask([polygon], height, width)
        builder.add_mask(image_id, class_name, mask, report_name, where)


def _group(shape: ET.Element) -> int:
    """The shape's ``group_id`` (0: none; a value that is not an integer counts as none)."""
    try:
        return int(shape.get("group_id") or 0)
    except ValueError:
        return 0


def _number(shape: ET.Element, name: str, default: float | None = None) -> float:
    value = shape.get(name)
    if value is None:
        if default is not None:
            return default
        raise _ShapeError(f"no {name!r} attribute")
    try:
        number = float(value)
    except ValueError:
        raise _ShapeError(f"{name}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise _ShapeError(f"{name}={value!r} is not a finite number")
    return number


def _integer(shape: ET.Element, name: str) -> int:
    number = _number(shape, name)
    if not number.is_integer():
        raise _ShapeError(f"{name}={shape.get(name)!r} is not an integer")
    return int(number)


def _shape(shape: ET.Element, height: int, width: int) -> np.ndarray | tuple[str, np.ndarray]:
    """A region as a polygon ``(P, 2)``, or ``("mask", (H, W) bool)``; ``_ShapeError`` when malformed."""
    tag = shape.tag
    if tag == "polygon":
        return _points(shape.get("points"))
    if tag == "box":
        corners = rectangle(_number(shape, "xtl"), _number(shape, "ytl"), _number(shape, "xbr"),
                            _number(shape, "ybr"))
        return _rotate(corners, math.radians(_number(shape, "rotation", 0.0)))
    if tag == "ellipse":
        return ellipse(_number(shape, "cx"), _number(shape, "cy"), _number(shape, "rx"), _number(shape, "ry"),
                       math.radians(_number(shape, "rotation", 0.0)))
    # mask
    left, top = _integer(shape, "left"), _integer(shape, "top")
    box_width, box_height = _integer(shape, "width"), _integer(shape, "height")
    rle = shape.get("rle")
    if rle is None:
        raise _ShapeError("no 'rle' attribute")
    try:
        runs = [int(v) for v in rle.replace(" ", "").split(",") if v]
    except ValueError:
        raise _ShapeError(f"rle {rle[:40]!r}: not comma-separated integers") from None
    if box_width <= 0 or box_height <= 0:
        raise _ShapeError(f"mask box {box_width}x{box_height} is empty")
    if box_width * box_height > MAX_MASK_BOX_RATIO * max(height * width, 1):
        raise _ShapeError(f"mask box {box_width}x{box_height} is far larger than the {width}x{height} image")
    try:
        crop = decode_rle(runs, box_height, box_width)
    except ValueError as e:
        raise _ShapeError(str(e)) from None
    mask = np.zeros((height, width), dtype=bool)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + box_width, width), min(top + box_height, height)
    if x1 > x0 and y1 > y0:
        mask[y0:y1, x0:x1] = crop[y0 - top:y1 - top, x0 - left:x1 - left]
    if crop.any() and not mask.any():
        raise _OutsideError(f"mask at left={left}, top={top} ({box_width}x{box_height}) lies outside the "
                          f"{width}x{height} image")
    return ("mask", mask)


def _points(text: str | None) -> np.ndarray:
    """``"x,y;x,y;..."`` as ``(P, 2)`` floats."""
    if text is None:
        raise _ShapeError("no 'points' attribute")
    points = []
    for pair in text.split(";"):
        if not pair.strip():
            continue
        values = pair.split(",")
        try:
            if len(values) != 2:
                raise ValueError
            points.append((float(values[0]), float(values[1])))
        except ValueError:
            raise _ShapeError(f"points: {pair[:40]!r} is not 'x,y'") from None
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def _rotate(points: np.ndarray, theta: float) -> np.ndarray:
    """``points`` rotated by ``theta`` radians about their centre, clockwise on screen (y down)."""
    if theta == 0.0:
        return points
    centre = (points.min(axis=0) + points.max(axis=0)) / 2
    c, s = math.cos(theta), math.sin(theta)
    d = points - centre
    return np.stack([centre[0] + c * d[:, 0] - s * d[:, 1], centre[1] + s * d[:, 0] + c * d[:, 1]], axis=1)


def decode_rle(runs: list[int], height: int, width: int) -> np.ndarray:
    """CVAT's mask RLE (row-major runs, background first) as a ``(height, width)`` bool array.

    ``ValueError`` when a run is negative or the runs do not cover ``height * width`` pixels.
    """
    if any(r < 0 for r in runs):
        raise ValueError("rle has a negative run")
    total = sum(runs)
    if total != height * width:
        raise ValueError(f"rle runs cover {total} pixels but the mask's box {width}x{height} has "
                         f"{height * width}")
    values = np.arange(len(runs)) % 2 == 1  # runs alternate background, foreground, ...
    return np.repeat(values, runs).reshape(height, width)


def encode_rle(crop: np.ndarray) -> list[int]:
    """A ``(h, w)`` bool array as CVAT's RLE: row-major runs, the first one of background (may be 0)."""
    flat = np.asarray(crop, dtype=bool).reshape(-1)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return [int(r) for r in runs]


# -------------------------------------------------------------------- write


def write(coco: dict[str, Any], image_dir: Path, out: Path) -> Path:
    """Write ``coco`` as a CVAT for images 1.1 XML at ``out`` (a ``.xml`` path or a folder); the XML path.

    ``image_dir`` is not used: CVAT names images by ``file_name`` and the
    images are not copied (see the module docstring).
    """
    out = Path(out)
    xml_path = out / XML_NAME if out.is_dir() or out.suffix.lower() != ".xml" else out
    categories = sorted(coco.get("categories", []), key=lambda c: c["id"])
    names = {c["id"]: str(c["name"]) for c in categories}
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    meta = ET.SubElement(root, "meta")
    task = ET.SubElement(meta, "task")
    ET.SubElement(task, "id").text = "0"
    ET.SubElement(task, "name").text = "maskrcnn export"
    ET.SubElement(task, "size").text = str(len(coco.get("images", [])))
    ET.SubElement(task, "mode").text = "annotation"
    ET.SubElement(task, "overlap").text = "0"
    labels = ET.SubElement(task, "labels")
    for category in categories:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = str(category["name"])
        ET.SubElement(label, "type").text = "any"
        ET.SubElement(label, "attributes")

    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in coco.get("annotations", []):
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    skipped = {"crowd region": 0, "unknown category": 0, "empty or malformed shape": 0}
    group = 0
    for frame, image in enumerate(coco.get("images", [])):
        height, width = int(image["height"]), int(image["width"])
        image_element = ET.SubElement(root, "image", {
            "id": str(frame), "name": str(image["file_name"]), "width": str(width), "height": str(height),
        })
        for ann in by_image.get(image["id"], []):
            if ann.get("iscrowd"):
                skipped["crowd region"] += 1
                continue
            if ann.get("category_id") not in names:
                skipped["unknown category"] += 1
                continue
            common = {"label": names[ann["category_id"]], "source": "manual", "occluded": "0"}
            segmentation = ann.get("segmentation")
            if isinstance(segmentation, dict):
                attributes = _mask_attributes(segmentation, height, width)
                if attributes is None:
                    skipped["empty or malformed shape"] += 1
                    continue
                ET.SubElement(image_element, "mask", {**common, **attributes, "z_order": "0"})
            elif segmentation:
                parts = [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
                skipped["empty or malformed shape"] += len(segmentation) - len(parts)
                if len(parts) > 1:
                    group += 1
                for part in parts:
                    pairs = zip(part[0::2], part[1::2], strict=True)
                    points = ";".join(f"{_fmt(x)},{_fmt(y)}" for x, y in pairs)
                    attributes = {**common, "points": points, "z_order": "0"}
                    if len(parts) > 1:
                        attributes["group_id"] = str(group)
                    ET.SubElement(image_element, "polygon", attributes)
            else:
                bbox = ann.get("bbox")
                if not bbox or len(bbox) != 4:
                    skipped["empty or malformed shape"] += 1
                    continue
                x, y, w, h = (float(v) for v in bbox)
                ET.SubElement(image_element, "box", {
                    **common, "xtl": _fmt(x), "ytl": _fmt(y), "xbr": _fmt(x + w), "ybr": _fmt(y + h),
                    "z_order": "0",
                })
    ET.indent(root, space="  ")
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(xml_path, encoding="utf-8", xml_declaration=True)
    others = {k: v for k, v in skipped.items() if v}
    if others:
        what = ", ".join(f"{v} {k}(s)" for k, v in others.items())
        warnings.warn(f"not written to CVAT: {what}", stacklevel=2)
    return xml_path


def _fmt(value: float) -> str:
    """A coordinate with 2 decimals, 3 when it has a third (the precision the readers keep)."""
    text = f"{float(value):.3f}"
    if text.endswith("0"):
        text = text[:-1]
    return "0.00" if text in ("-0.00", "-0.000") else text


def _mask_attributes(segmentation: dict[str, Any], height: int, width: int) -> dict[str, str] | None:
    """The ``<mask>`` attributes of a COCO RLE (CVAT's RLE over its tight box); None when empty."""
    try:
        mask = segmentation_mask(segmentation, height, width)
    except ValueError:
        return None
    if not mask.any():
        return None
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]), int(columns[0]), int(columns[-1])
    runs = encode_rle(mask[top:bottom + 1, left:right + 1])
    return {
        "rle": ", ".join(map(str, runs)), "left": str(left), "top": str(top),
        "width": str(right - left + 1), "height": str(bottom - top + 1),
    }
