"""What every annotation format shares: a COCO instances dict built with each problem counted.

Each reader (``labelme``, ``via``, ``yolo``, ``cvat``, ``voc``,
``instance_png``) turns its source into a COCO instances dict with a
:class:`CocoBuilder`, which checks what every format can get wrong the way
:class:`~maskrcnn.data.coco.CocoDataset` does: the problem is counted in a
:class:`~maskrcnn.data.report.DatasetReport` (kind, file, entry, what is
wrong) and the image or shape skipped, never raised. A source that cannot be
read at all (malformed JSON or XML, a YAML file without names) raises
:class:`~maskrcnn.data.validation.DatasetError` with one line naming the file
and the entry.

Conventions of the built dict (what :class:`Converted` holds):

- ``images``: ``id`` 1.. in the order added, ``file_name`` relative to
  ``Converted.image_dir`` (POSIX separators), ``height``/``width`` read from
  the image file's header with the EXIF orientation applied
  (:func:`~maskrcnn.data.images.read_image_size`), since that is how
  :func:`~maskrcnn.data.images.load_image` returns the pixels.
- ``categories``: ``id`` 1..K in the order of the source's own class list
  when it has one (YOLO ``names``, CVAT labels, VIA options), else sorted
  by name; ``name`` is the source's class name.
- ``annotations``: ``id`` 1.., ``iscrowd`` 0, ``bbox`` ``[x, y, w, h]`` of
  the shape clipped to the image, ``area`` in pixels of the rasterised mask
  (pycocotools). Polygons stay polygons (a list of ``[x0, y0, x1, y1, ...]``
  parts in continuous pixel coordinates, as COCO and the tools store
  them); rectangles, circles and ellipses become polygons
  (:func:`rectangle`, :func:`ellipse`); bitmaps become compressed RLE.

Coordinates: a point ``(x, y)`` is where the tool put it, in the image's
pixels (``0 .. W`` across); no half-pixel shift is added.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..coco import MISSING_IMAGE, SHORT_POLYGON, SIZE_MISMATCH, UNREADABLE_IMAGE
from ..images import read_image_size
from ..report import DatasetReport
from ..validation import DatasetError

__all__ = [
    "BAD_FILE",
    "BAD_SHAPE",
    "EMPTY_MASK",
    "LABEL_WITHOUT_IMAGE",
    "NO_CLASS",
    "NOT_A_REGION",
    "SHAPE_OUTSIDE",
    "UNKNOWN_CLASS",
    "CocoBuilder",
    "Converted",
    "DatasetError",
    "ellipse",
    "place_file",
    "polygon_mask",
    "rectangle",
    "segmentation_mask",
    "relative_name",
]

# Problem kinds of the converters (the COCO reader's own kinds are reused
# where the problem is the same: MISSING_IMAGE, UNREADABLE_IMAGE, SIZE_MISMATCH, SHORT_POLYGON).
SHAPE_OUTSIDE = "shape outside the image"
UNKNOWN_CLASS = "unknown class"
NO_CLASS = "region without a class"
LABEL_WITHOUT_IMAGE = "label file without an image"
BAD_SHAPE = "malformed shape"
BAD_FILE = "malformed file"
NOT_A_REGION = "shape that is not a region (skipped)"
EMPTY_MASK = "empty mask"

# Vertices of a circle or ellipse: about one per ELLIPSE_STEP pixels of its
# perimeter (the polygon's area then differs from the ellipse's by well under
# a pixel per side), within these bounds.
ELLIPSE_STEP = 2.0
ELLIPSE_MIN_VERTICES = 12
ELLIPSE_MAX_VERTICES = 360


@dataclass
class Converted:
    """A source read into a COCO instances dict.

    ``coco`` has ``images``, ``annotations`` and ``categories``;
    ``image_dir`` is the folder its ``file_name`` values are relative to;
    ``report`` counts what was skipped (with ``num_images`` and
    ``num_instances`` of what was kept); ``format`` the reader's name and
    ``source`` the path it read.
    """

    coco: dict[str, Any]
    image_dir: Path
    report: DatasetReport
    format: str
    source: Path


def relative_name(path: Path, image_dir: Path) -> str:
    """``path`` relative to ``image_dir``, POSIX separators (``..`` when it lies outside)."""
    return Path(os.path.relpath(path, image_dir)).as_posix()


def place_file(source: Path, target: Path) -> None:
    """Hard-link ``source`` at ``target`` (a copy where the file system cannot link); folders made as needed.

    A writer that must put the images in its format's own place (VOC's
    ``JPEGImages/``, YOLO's ``images/``) shares them with the source, not duplicates them.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        if os.path.samefile(source, target):
            return
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def polygon_mask(parts: Iterable[np.ndarray], height: int, width: int) -> np.ndarray:
    """The ``(H, W)`` bool union of polygon ``parts`` (each ``(P, 2)``, ``P >= 3``), by pycocotools."""
    mask = np.zeros((height, width), dtype=bool)
    flat = [np.asarray(part, dtype=np.float64).reshape(-1).tolist() for part in parts]
    if flat:
        mask |= mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(flat, height, width))).astype(bool)
    return mask


def segmentation_mask(segmentation: Any, height: int, width: int, bbox: Any = None) -> np.ndarray:
    """The ``(H, W)`` bool mask of a COCO segmentation: polygons, uncompressed or compressed RLE;
    the box ``[x, y, w, h]`` filled when there is none. ``ValueError`` saying what is wrong otherwise.

    Polygon parts of fewer than 3 points cover nothing (4 numbers would be read as a box).
    """
    try:
        if isinstance(segmentation, list) and segmentation:
            parts = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
            return polygon_mask([np.asarray(p, dtype=np.float64) for p in parts], height, width)
        if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
            counts = segmentation["counts"]
            counts = counts.encode() if isinstance(counts, str) else counts
            rle = {"size": segmentation.get("size"), "counts": counts}
        elif bbox is not None:
            x, y, w, h = (float(v) for v in bbox)
            return polygon_mask([rectangle(x, y, x + w, y + h)], height, width)
        else:
            raise ValueError("no segmentation and no box")
        mask = mask_utils.decode(rle).astype(bool)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"cannot decode its segmentation ({exc})") from None
    if mask.shape != (height, width):
        raise ValueError(f"its mask is {mask.shape[0]}x{mask.shape[1]}, the image {height}x{width}")
    return mask


def rectangle(x1: float, y1: float, x2: float, y2: float) -> np.ndarray:
    """The polygon ``(4, 2)`` of an axis-aligned rectangle given by two opposite corners (any order)."""
    left, right = min(x1, x2), max(x1, x2)
    top, bottom = min(y1, y2), max(y1, y2)
    return np.array([[left, top], [right, top], [right, bottom], [left, bottom]], dtype=np.float64)


def ellipse(cx: float, cy: float, rx: float, ry: float, theta: float = 0.0) -> np.ndarray:
    """A polygon ``(P, 2)`` with the area of an ellipse (a circle when ``rx == ry``), vertices at
    equal angles just outside it.

    ``theta`` (radians) rotates the ``rx`` axis from the x axis towards the
    y axis (clockwise on screen, as VIA and CVAT draw it). ``P`` follows
    the perimeter (Ramanujan's approximation): one vertex per
    ``ELLIPSE_STEP`` pixels, between ``ELLIPSE_MIN_VERTICES`` and ``ELLIPSE_MAX_VERTICES``.
    """
    rx, ry = abs(rx), abs(ry)
    h = ((rx - ry) / (rx + ry)) ** 2 if rx + ry > 0 else 0.0
    perimeter = math.pi * (rx + ry) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))
    count = int(min(max(math.ceil(perimeter / ELLIPSE_STEP), ELLIPSE_MIN_VERTICES), ELLIPSE_MAX_VERTICES))
    t = np.arange(count) * (2 * math.pi / count)
    # An inscribed polygon falls short of the ellipse's area by a factor sin(2 pi/P) P / (2 pi);
    # scaling the radii by its inverse square root gives the polygon the ellipse's area exactly.
    scale = math.sqrt(2 * math.pi / (count * math.sin(2 * math.pi / count)))
    x, y = scale * rx * np.cos(t), scale * ry * np.sin(t)
    c, s = math.cos(theta), math.sin(theta)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


class CocoBuilder:
    """Collects images, classes and shapes of one source into a COCO instances dict.

    ``image_dir``: the folder ``file_name`` is written relative to.
    ``classes``: the source's own class list, in its order; with
    ``closed=True`` a name outside it is a problem (``UNKNOWN_CLASS``),
    otherwise new names are added (and, when no list was given, the
    categories come out sorted by name).
    """

    def __init__(
        self,
        image_dir: Path,
        *,
        classes: Sequence[str] = (),
        closed: bool = False,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.report = DatasetReport()
        self._classes: list[str] = list(dict.fromkeys(classes))
        self._closed = closed
        self._sort = not classes
        self._images: list[dict[str, Any]] = []
        self._annotations: list[dict[str, Any]] = []
        self._sizes: dict[int, tuple[int, int]] = {}
        self._names: dict[str, int] = {}

    # ----------------------------------------------------------------- classes

    def class_name(self, name: Any, file_name: str, where: str) -> str | None:
        """``name`` as a known class; None (reported) when it is empty or not in a closed list."""
        if name is None or (isinstance(name, str) and not name.strip()):
            self.report.add(NO_CLASS, file_name, None, f"{where}: no class name")
            return None
        name = str(name)
        if name not in self._classes:
            if self._closed:
                known = ", ".join(self._classes[:8]) + (", ..." if len(self._classes) > 8 else "")
                detail = f"{where}: class {name!r} is not one of {known}"
                self.report.add(UNKNOWN_CLASS, file_name, None, detail)
                return None
            self._classes.append(name)
        return name

    @property
    def classes(self) -> list[str]:
        """The class names as the categories will list them."""
        return sorted(self._classes) if self._sort else list(self._classes)

    # ------------------------------------------------------------------ images

    def add_image(self, path: Path, file_name: str, size: tuple[int, int] | None = None) -> int | None:
        """Add the image at ``path``; its id, or None (reported) when it cannot be used.

        ``file_name`` names the source entry in reports. The image's size is
        read from its header; ``size`` (``(height, width)``) is what the
        source says, and a different one is a ``SIZE_MISMATCH`` (the shapes
        were drawn on other pixels). The same path added twice is one image.
        """
        path = Path(path)
        name = relative_name(path, self.image_dir)
        if name in self._names:
            return self._names[name]
        if not path.is_file():
            self.report.add(MISSING_IMAGE, file_name, None, f"no image at {path}")
            return None
        try:
            height, width = read_image_size(path)
        except (OSError, SyntaxError, ValueError) as e:
            self.report.add(UNREADABLE_IMAGE, file_name, None, f"{path}: {e}")
            return None
        if size is not None and tuple(size) != (height, width):
            self.report.add(
                SIZE_MISMATCH, file_name, None,
                f"the annotations are for {size[0]}x{size[1]} (HxW) but {path.name} is {height}x{width}",
            )
            return None
        image_id = len(self._images) + 1
        self._images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        self._sizes[image_id] = (height, width)
        self._names[name] = image_id
        return image_id

    def image_size(self, image_id: int) -> tuple[int, int]:
        """``(height, width)`` of an added image."""
        return self._sizes[image_id]

    # ------------------------------------------------------------------ shapes

    def add_polygons(
        self,
        image_id: int,
        class_name: str,
        parts: Iterable[Any],
        file_name: str,
        where: str,
        *,
        crowd: bool = False,
    ) -> bool:
        """Add one instance made of polygon ``parts`` (each ``(P, 2)`` points); whether it was kept.

        A part with fewer than 3 points, or with coordinates that are not
        finite numbers, is dropped (``SHORT_POLYGON`` / ``BAD_SHAPE``); an
        instance with no part left, or whose parts all lie outside the image
        or cover no pixel of it, is skipped (``SHAPE_OUTSIDE``). ``crowd``: a
        region to ignore (COCO ``iscrowd`` 1) rather than an instance.
        """
        height, width = self._sizes[image_id]
        kept: list[list[float]] = []
        for part in parts:
            try:
                points = np.asarray(part, dtype=np.float64).reshape(-1, 2)
            except (TypeError, ValueError):
                self.report.add(BAD_SHAPE, file_name, None, f"{where}: points are not pairs of numbers")
                continue
            if not np.isfinite(points).all():
                self.report.add(BAD_SHAPE, file_name, None, f"{where}: a coordinate is not a finite number")
                continue
            if len(points) < 3:
                self.report.add(SHORT_POLYGON, file_name, None, f"{where}: {len(points)} point(s)")
                continue
            kept.append([round(float(v), 3) for v in points.reshape(-1)])
        if not kept:
            return False
        x = np.concatenate([np.asarray(p[0::2]) for p in kept])
        y = np.concatenate([np.asarray(p[1::2]) for p in kept])
        limit = max(height, width)  # the COCO reader's margin: points at most an image size outside
        if x.max() <= 0 or y.max() <= 0 or x.min() >= width or y.min() >= height or (
            x.min() < -limit or y.min() < -limit or x.max() > width + limit or y.max() > height + limit
        ):
            self.report.add(
                SHAPE_OUTSIDE, file_name, None,
                f"{where}: spans x {x.min():.1f}..{x.max():.1f}, y {y.min():.1f}..{y.max():.1f} "
                f"of a {width}x{height} (WxH) image",
            )
            return False
        rle = mask_utils.merge(mask_utils.frPyObjects(kept, height, width))
        area = int(mask_utils.area(rle))
        if area == 0:
            self.report.add(SHAPE_OUTSIDE, file_name, None, f"{where}: covers no pixel of the image")
            return False
        x1, y1 = max(float(x.min()), 0.0), max(float(y.min()), 0.0)
        x2, y2 = min(float(x.max()), float(width)), min(float(y.max()), float(height))
        self._add(image_id, class_name, kept, [x1, y1, x2 - x1, y2 - y1], area, crowd)
        return True

    def add_mask(self, image_id: int, class_name: str, mask: np.ndarray, file_name: str, where: str, *,
                 crowd: bool = False) -> bool:
        """Add one instance (or with ``crowd`` a region to ignore) given as a boolean ``(H, W)`` mask of
        the whole image (stored as RLE)."""
        height, width = self._sizes[image_id]
        mask = np.asarray(mask)
        if mask.shape != (height, width):
            self.report.add(
                BAD_SHAPE, file_name, None, f"{where}: mask is {mask.shape}, the image {(height, width)}"
            )
            return False
        if not mask.any():
            self.report.add(EMPTY_MASK, file_name, None, f"{where}: no pixel set")
            return False
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        rle["counts"] = rle["counts"].decode("ascii")
        self._add(image_id, class_name, rle, bbox, int(mask.sum()), crowd)
        return True

    def _add(self, image_id: int, class_name: str, segmentation: Any, bbox: list[float], area: int,
             crowd: bool) -> None:
        self._annotations.append({
            "id": len(self._annotations) + 1,
            "image_id": image_id,
            "category": class_name,  # replaced by category_id in result()
            "segmentation": segmentation,
            "area": area,
            "bbox": [round(v, 3) for v in bbox],
            "iscrowd": int(crowd),
        })

    # ------------------------------------------------------------------ result

    def result(self, format: str, source: Path) -> Converted:
        """The COCO dict, with ``report.num_images``/``num_instances``/``num_negatives`` filled in.

        A source with no class at all is a ``DatasetError``: a model needs at least one.
        """
        classes = self.classes
        if not classes:
            raise DatasetError(f"{source}: no class found (no labelled shape and no class list); "
                               f"nothing to train or evaluate")
        ids = {name: i + 1 for i, name in enumerate(classes)}
        annotations = []
        for a in self._annotations:
            a = dict(a)
            a["category_id"] = ids[a.pop("category")]
            annotations.append(a)
        annotated = {a["image_id"] for a in annotations if not a["iscrowd"]}
        self.report.num_images = len(self._images)
        self.report.num_instances = sum(1 for a in annotations if not a["iscrowd"])
        self.report.num_crowd = len(annotations) - self.report.num_instances
        self.report.num_negatives = sum(1 for im in self._images if im["id"] not in annotated)
        coco = {
            "images": list(self._images),
            "annotations": annotations,
            "categories": [{"id": ids[n], "name": n, "supercategory": ""} for n in classes],
        }
        return Converted(coco=coco, image_dir=self.image_dir, report=self.report, format=format,
                         source=Path(source))
