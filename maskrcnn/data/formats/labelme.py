"""LabelMe JSON (one file per image) in and out.

A LabelMe annotation file is a JSON object written by the labelme tool
(https://github.com/wkentaro/labelme) next to its image::

    {"version": "5.5.0", "flags": {}, "shapes": [...], "imagePath": "../images/a.jpg",
     "imageData": null, "imageHeight": 480, "imageWidth": 640}

The source is one such file or a folder searched recursively (sorted) for
them. Conventions of the reader:

- ``imagePath`` is relative to the JSON file's folder; Windows separators
  are turned into ``/`` (labelme does the same). When no image is there,
  the same name beside the JSON file, then (with ``images``) under
  ``images`` at the JSON's relative folder or directly in it, are tried
  before the image is counted missing. ``imageData`` is never used: the
  image must be a file. ``imageHeight``/``imageWidth``, when given, must
  be the image's size (labelme applies the EXIF orientation too).
- Shapes: ``polygon`` (also when ``shape_type`` is missing or null),
  ``rectangle`` (two opposite corners), ``circle`` (the centre, then a point
  on the circle), ``oriented_rectangle`` (four corners, recent labelme),
  ``mask`` (two corners of a box and ``mask``, a base64 PNG of the box's
  pixels, placed at the box's top-left corner rounded to whole pixels, as
  labelme's ``shapes_to_label`` does). ``point``, ``points``,
  ``line`` and ``linestrip`` enclose no area: counted as
  ``NOT_A_REGION`` and skipped. Other types are ``BAD_SHAPE``.
- Instances: shapes of one file with the same ``label`` and the same
  non-null ``group_id`` are one instance of several parts (labelme's own
  ``labelme2coco`` example); a null ``group_id`` makes a shape an instance
  of its own. An instance with a ``mask`` part is rasterised (its polygons
  OR-ed into the mask) and stored as RLE; otherwise it stays polygons.
- Classes are the labels, sorted (LabelMe has no class list); an empty
  label is ``NO_CLASS``. Shapes labelled ``__ignore__`` or ``_background_``
  (the marks of labelme's own examples and ``labels.txt`` for regions that
  are not objects) are left out, as its ``labelme2coco`` leaves them out.
- Problems are counted under the JSON file's path relative to the source
  folder, with the shapes numbered from 1 (``"shape 3 (label 'cat')"``).
  A file that is not valid JSON, or that looks like LabelMe (it has
  ``shapes`` or ``imagePath``) but is malformed, is ``BAD_FILE``; other JSON
  files in the folder (COCO, VIA, settings) are ignored. A single file given
  as the source that cannot be read raises :class:`DatasetError`.

The writer (:func:`write`) puts one LabelMe file per image in a folder,
mirroring the images' folders (``out/<folder>/<image stem>.json``), with
``imagePath`` relative to it and ``imageData`` null. Polygon parts become
``polygon`` shapes; RLE masks become ``mask`` shapes (the mask's bounding
box, corners inclusive, and the PNG of that box); every instance gets its
own ``group_id`` (1.. in each file) so that instances of one class never
merge and an instance's parts stay together. Crowd annotations
(``iscrowd`` 1) are not instances and are left out (a warning says how
many).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image

from ..coco import SHORT_POLYGON
from ..validation import as_int, as_number, short
from .common import (
    BAD_FILE,
    BAD_SHAPE,
    NOT_A_REGION,
    SHAPE_OUTSIDE,
    CocoBuilder,
    Converted,
    DatasetError,
    ellipse,
    polygon_mask,
    rectangle,
    relative_name,
    segmentation_mask,
)

__all__ = ["detect", "read", "write"]

FORMAT = "labelme"
# What ``write`` puts in ``version``: the labelme release whose files it mirrors.
LABELME_VERSION = "5.5.0"
# ``detect`` on a folder looks at this many JSON files at most (it must stay cheap).
DETECT_MAX_FILES = 5
# ... and reads this many bytes of each before parsing it (labelme writes "shapes" near the start).
SNIFF_BYTES = 1 << 16
POLYGON_TYPES = frozenset({"polygon", "oriented_rectangle"})
IGNORED_LABELS = frozenset({"__ignore__", "_background_"})
NON_REGION_TYPES = frozenset({"point", "points", "line", "linestrip"})


# --------------------------------------------------------------------------- detection


def _is_labelme(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("shapes"), list) and "imagePath" in data


def _load(path: Path) -> Any:
    """The decoded JSON of ``path``; ``ValueError``/``OSError`` when it cannot be read."""
    return json.loads(path.read_bytes())


def _json_files(root: Path) -> list[Path]:
    """The ``.json`` files under ``root``, recursively, sorted; hidden folders and files skipped."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.lower().endswith(".json") and not name.startswith("."):
                found.append(Path(folder) / name)
    return sorted(found, key=lambda p: relative_name(p, root))


def _sniff(path: Path) -> bool:
    """Whether the start of ``path`` names a LabelMe key (skips parsing a large COCO file in a folder)."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    return any(key in head for key in (b'"shapes"', b'"imagePath"', b'"imageData"'))


def detect(path: Path) -> bool:
    """A LabelMe ``.json`` file, or a folder whose first few JSON files hold at least one."""
    try:
        if path.is_file():
            return path.suffix.lower() == ".json" and _is_labelme(_load(path))
        if not path.is_dir():
            return False
        checked = 0
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.lower().endswith(".json") or name.startswith("."):
                    continue
                file = Path(folder) / name
                try:
                    if _sniff(file) and _is_labelme(_load(file)):
                        return True
                except (OSError, ValueError, RecursionError):
                    pass
                checked += 1
                if checked >= DETECT_MAX_FILES:
                    return False
    except (OSError, ValueError, RecursionError):
        return False
    return False


# ------------------------------------------------------------------------------ reading


@dataclass
class _Instance:
    """Shapes of one file that form one instance: polygon parts and placed box masks."""

    label: Any
    group_id: Any
    shapes: list[int] = field(default_factory=list)
    parts: list[np.ndarray] = field(default_factory=list)
    masks: list[tuple[int, int, np.ndarray]] = field(default_factory=list)  # (x, y, box mask)

    def where(self) -> str:
        numbers = ", ".join(str(i) for i in self.shapes)
        group = "" if self.group_id is None else f", group {self.group_id}"
        return f"shape{'s' if len(self.shapes) > 1 else ''} {numbers} (label {short(self.label)}{group})"


def read(path: Path, *, images: Path | None, class_attribute: str | None, split: str | None) -> Converted:
    """Read a LabelMe file or folder (conventions in the module docstring)."""
    path = Path(path)
    if path.is_dir():
        root = path
        files = _json_files(path)
    elif path.is_file():
        root = path.parent
        files = [path]
    else:
        raise DatasetError(f"{path}: no such file or folder")
    builder = CocoBuilder(image_dir=images if images is not None else root)
    found = 0
    for file in files:
        name = relative_name(file, root)
        try:
            data = _load(file)
        except (OSError, ValueError, RecursionError) as exc:
            if path.is_file():
                raise DatasetError(f"{file}: not a JSON file ({_reason(exc)}); fix or re-save it") from None
            builder.report.add(BAD_FILE, name, None, f"not a JSON file ({_reason(exc)})")
            continue
        if not isinstance(data, dict) or ("shapes" not in data and "imagePath" not in data):
            if path.is_file():
                raise DatasetError(f"{file}: not a LabelMe file (no 'shapes' and 'imagePath'); give --format")
            continue  # another kind of JSON (COCO, VIA, settings) beside the LabelMe files
        found += 1
        problem = _structure_problem(data)
        if problem:
            if path.is_file():
                raise DatasetError(f"{file}: {problem}; fix or re-save it in labelme")
            builder.report.add(BAD_FILE, name, None, problem)
            continue
        _read_file(builder, file, name, data, root, images)
    if not found and path.is_dir():
        raise DatasetError(f"{path}: no LabelMe JSON file ('shapes' and 'imagePath') in it; give --format")
    return builder.result(FORMAT, path)


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), for a one-line report."""
    text = str(exc)
    return text.splitlines()[0] if text.strip() else type(exc).__name__


def _structure_problem(data: dict[str, Any]) -> str:
    """What makes a LabelMe object unusable as a whole ('' when nothing)."""
    if not isinstance(data.get("shapes"), list):
        return f"'shapes' is {short(data.get('shapes'))}, not a list"
    image_path = data.get("imagePath")
    if not isinstance(image_path, str) or not image_path.strip():
        return f"'imagePath' is {short(image_path)}, not a file name"
    return ""


def _image_path(file: Path, image_path: str, root: Path, images: Path | None) -> Path:
    """Where the image of ``file`` is (the first candidate that exists, else the one it names)."""
    relative = PureWindowsPath(image_path.strip()).as_posix()  # labelme on Windows writes backslashes
    named = file.parent / relative
    base = Path(relative).name
    candidates = [named, file.parent / base]
    if images is not None:
        candidates += [images / file.parent.relative_to(root) / base, images / base]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return named


def _size(data: dict[str, Any]) -> tuple[int, int] | None:
    """``(imageHeight, imageWidth)`` when both are whole numbers (older files may lack them)."""
    height, width = as_int(data.get("imageHeight")), as_int(data.get("imageWidth"))
    return (height, width) if height is not None and width is not None else None


def _read_file(
    builder: CocoBuilder, file: Path, name: str, data: dict[str, Any], root: Path, images: Path | None
) -> None:
    image_id = builder.add_image(_image_path(file, data["imagePath"], root, images), name, _size(data))
    if image_id is None:
        return
    height, width = builder.image_size(image_id)
    instances: dict[Any, _Instance] = {}
    for number, shape in enumerate(data["shapes"], start=1):
        if not isinstance(shape, dict):
            builder.report.add(BAD_SHAPE, name, None, f"shape {number}: {short(shape)} is not an object")
            continue
        label = shape.get("label")
        where = f"shape {number} (label {short(label)})"
        shape_type = shape.get("shape_type") or "polygon"
        if not isinstance(shape_type, str) or (label is not None and not isinstance(label, str)):
            builder.report.add(BAD_SHAPE, name, None, f"{where}: label and shape_type must be strings")
            continue
        if label in IGNORED_LABELS:  # labelme's own marks for "not an object" (labelme2coco drops them)
            continue
        if shape_type in NON_REGION_TYPES:
            builder.report.add(NOT_A_REGION, name, None, f"{where}: a {shape_type}, which encloses no area")
            continue
        points = _points(shape.get("points"))
        if points is None:
            builder.report.add(
                BAD_SHAPE, name, None, f"{where}: points {short(shape.get('points'))} are not [x, y] pairs"
            )
            continue
        part: np.ndarray | None = None
        placed: tuple[int, int, np.ndarray] | None = None
        if shape_type in POLYGON_TYPES:
            part = points
        elif shape_type in ("rectangle", "circle", "mask"):
            if len(points) != 2:
                builder.report.add(
                    BAD_SHAPE, name, None, f"{where}: a {shape_type} needs 2 points, not {len(points)}"
                )
                continue
            if shape_type == "rectangle":
                part = rectangle(*points.reshape(-1))
            elif shape_type == "circle":
                part = _circle(points)
            else:
                placed, problem = _box_mask(shape.get("mask"), points)
                if placed is None:
                    builder.report.add(BAD_SHAPE, name, None, f"{where}: {problem}")
                    continue
        else:
            builder.report.add(BAD_SHAPE, name, None, f"{where}: unknown shape_type {short(shape_type)}")
            continue
        group_id = shape.get("group_id")
        key: Any = ("shape", number) if group_id is None else ("group", str(label), repr(group_id))
        instance = instances.setdefault(key, _Instance(label, group_id))
        instance.shapes.append(number)
        if part is not None:
            instance.parts.append(part)
        if placed is not None:
            instance.masks.append(placed)
    for instance in instances.values():
        where = instance.where()
        class_name = builder.class_name(instance.label, name, where)
        if class_name is None:
            continue
        if not instance.masks:
            builder.add_polygons(image_id, class_name, instance.parts, name, where)
            continue
        mask, inside = _rasterise(builder, instance, height, width, name, where)
        if not inside:
            builder.report.add(SHAPE_OUTSIDE, name, None, f"{where}: lies outside the {width}x{height} image")
            continue
        builder.add_mask(image_id, class_name, mask, name, where)  # counts an empty mask


def _points(value: Any) -> np.ndarray | None:
    """``[[x, y], ...]`` as a ``(P, 2)`` float array; None when it is not a list of finite number pairs."""
    if not isinstance(value, list) or not value:
        return None
    numbers = []
    for point in value:
        if not isinstance(point, list | tuple) or len(point) != 2:
            return None
        x, y = as_number(point[0]), as_number(point[1])
        if x is None or y is None:
            return None
        numbers.append((x, y))
    return np.asarray(numbers, dtype=np.float64)


def _circle(points: np.ndarray) -> np.ndarray:
    (cx, cy), (px, py) = points
    radius = float(np.hypot(px - cx, py - cy))
    return ellipse(float(cx), float(cy), radius, radius)


def _box_mask(value: Any, points: np.ndarray) -> tuple[tuple[int, int, np.ndarray] | None, str]:
    """The decoded box mask of a ``mask`` shape and its top-left pixel, or None and what is wrong.

    labelme places the PNG at the box's top-left corner (its first point)
    rounded to whole pixels; with whole-pixel corners the box (corners
    inclusive) also crops the PNG.
    """
    if not isinstance(value, str) or not value:
        return None, "a mask shape without 'mask' (a base64 PNG)"
    try:
        with Image.open(io.BytesIO(base64.b64decode(value, validate=False))) as image:
            array = np.asarray(image)
    except Image.UnidentifiedImageError:
        return None, "'mask' is not a base64 PNG (its bytes are not an image)"
    except (binascii.Error, ValueError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        return None, f"'mask' is not a base64 PNG ({_reason(exc)})"
    if array.ndim != 2:
        return None, f"'mask' decodes to an array of shape {array.shape}, not a single-channel image"
    mask = array.astype(bool)
    rounded = np.round(points).astype(np.int64)  # half to even, as labelme's numpy does
    (x1, y1), (x2, y2) = rounded.min(axis=0), rounded.max(axis=0)  # corners in either order
    if np.array_equal(points, np.trunc(points)):
        mask = mask[: max(y2 - y1 + 1, 0), : max(x2 - x1 + 1, 0)]
    return (int(x1), int(y1), mask), ""


def _rasterise(
    builder: CocoBuilder, instance: _Instance, height: int, width: int, name: str, where: str
) -> tuple[np.ndarray, bool]:
    """The ``(H, W)`` mask of an instance with a mask part (its polygons OR-ed in), and whether any
    part reached into the image."""
    mask = np.zeros((height, width), dtype=bool)
    inside = False
    limit = max(height, width)  # the builder's margin: vertices at most an image size outside
    for part in instance.parts:
        if len(part) < 3:
            builder.report.add(SHORT_POLYGON, name, None, f"{where}: {len(part)} point(s)")
            continue
        if (part[:, 0] < -limit).any() or (part[:, 0] > width + limit).any() or (
            (part[:, 1] < -limit).any() or (part[:, 1] > height + limit).any()
        ):
            builder.report.add(SHAPE_OUTSIDE, name, None, f"{where}: a polygon lies far outside the image")
            continue
        mask |= polygon_mask([part], height, width)
        inside = True
    for x, y, box in instance.masks:
        y0, y1 = max(y, 0), min(y + box.shape[0], height)
        x0, x1 = max(x, 0), min(x + box.shape[1], width)
        if y0 < y1 and x0 < x1:
            mask[y0:y1, x0:x1] |= box[y0 - y : y1 - y, x0 - x : x1 - x]
            inside = True
    return mask, inside


# ------------------------------------------------------------------------------ writing


def write(coco: dict[str, Any], image_dir: Path, out: Path) -> Path:
    """Write one LabelMe file per image of ``coco`` under the folder ``out``; returns ``out``.

    ``out/<image's folder>/<image stem>.json`` (``<image name>.json`` when two
    images of one folder share a stem); ``..`` in a ``file_name`` is dropped
    from the JSON's place, not from its ``imagePath``.
    """
    out = Path(out)
    image_dir = Path(image_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = {c["id"]: str(c["name"]) for c in coco.get("categories", [])}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for annotation in coco.get("annotations", []):
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    used: set[Path] = set()
    crowd = 0
    for image in coco.get("images", []):
        file_name = str(image["file_name"])
        parts = [p for p in Path(file_name).parts if p not in ("..", ".", "/")]
        json_path = out.joinpath(*parts).with_suffix(".json")
        if json_path in used:
            json_path = out.joinpath(*parts[:-1], parts[-1] + ".json")
        used.add(json_path)
        height, width = int(image["height"]), int(image["width"])
        shapes: list[dict[str, Any]] = []
        group_id = 0
        for annotation in by_image.get(image["id"], []):
            if annotation.get("iscrowd", 0):
                crowd += 1
                continue
            group_id += 1
            label = names.get(annotation["category_id"], str(annotation["category_id"]))
            shapes += _shapes(annotation, label, group_id, height, width)
        document = {
            "version": LABELME_VERSION,
            "flags": {},
            "shapes": shapes,
            "imagePath": Path(os.path.relpath(image_dir / file_name, json_path.parent)).as_posix(),
            "imageData": None,
            "imageHeight": height,
            "imageWidth": width,
        }
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(document, indent=2, ensure_ascii=False), encoding="utf-8")
    if crowd:
        warnings.warn(f"{crowd} crowd annotation(s) (iscrowd 1) left out: LabelMe has no crowd regions",
                      stacklevel=2)
    return out


def _shape(label: str, points: list[list[float]], group_id: int, shape_type: str, mask: str | None = None
           ) -> dict[str, Any]:
    return {"label": label, "points": points, "group_id": group_id, "description": "",
            "shape_type": shape_type, "flags": {}, "mask": mask}


def _shapes(annotation: dict[str, Any], label: str, group_id: int, height: int, width: int
            ) -> list[dict[str, Any]]:
    """The LabelMe shapes of one COCO annotation (all with ``group_id``)."""
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list) and segmentation:
        return [
            _shape(label, [[float(x), float(y)] for x, y in zip(part[0::2], part[1::2], strict=False)],
                   group_id, "polygon")
            for part in segmentation
        ]
    if isinstance(segmentation, dict):
        mask = segmentation_mask(segmentation, height, width)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if not len(rows):
            return []
        y1, y2, x1, x2 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
        buffer = io.BytesIO()
        Image.fromarray(mask[y1 : y2 + 1, x1 : x2 + 1].astype(np.uint8)).save(buffer, format="PNG")
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        return [_shape(label, [[x1, y1], [x2, y2]], group_id, "mask", encoded)]
    bbox = annotation.get("bbox")
    if isinstance(bbox, list) and len(bbox) == 4:  # no segmentation: its box is its mask
        x, y, w, h = (float(v) for v in bbox)
        return [_shape(label, [[x, y], [x + w, y + h]], group_id, "rectangle")]
    return []
