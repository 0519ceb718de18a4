"""COCO instances JSON -> :class:`~maskrcnn.structures.Sample`, validated once.

A :class:`CocoDataset` reads an instances file (``images``, ``annotations``,
``categories``) and a folder holding the images (``file_name`` is relative
to it). Shapes of one item: image ``(H, W, 3)`` uint8 RGB; ``M`` instances
with ``boxes (M, 4)`` float32 XYXY in the image's pixels, ``labels (M,)``
int64, ``masks (M, H, W)`` uint8 {0, 1}, ``keypoints (M, P, 3)`` float32 or
None; ``G`` crowd regions in ``crowd_boxes (G, 4)``.

Conventions:

- Labels are contiguous: category ids sorted ascending become ``0 .. K-1``
  (``category_ids[label]`` is the COCO id, :meth:`CocoDataset.label_of` the
  way back), whatever gaps the ids have (COCO's run 1..90 with ten unused).
- Boxes come from the ``bbox`` field ``[x, y, w, h]``, turned into XYXY and
  clipped to the image (from the segmentation when ``bbox`` is absent).
- ``iscrowd=1`` annotations are not instances: their boxes go to
  ``crowd_boxes`` (regions where a detection counts neither as right nor wrong).
- Masks are decoded from polygons (a list of ``[x0, y0, x1, y1, ...]``
  parts, merged), uncompressed RLE (``counts`` a list of run lengths,
  column-major) or compressed RLE (``counts`` a string). An annotation
  without a segmentation gets its box filled as its mask.
- Keypoints ``[x, y, v] * P`` are COCO pixel indices; labelled ones
  (``v > 0``) get ``+0.5`` so that they are continuous coordinates like the
  boxes (a keypoint at pixel index 0 sits at 0.5, the pixel's centre), as
  Detectron2 does. Unlabelled ones stay ``(0, 0, 0)``. Whoever writes
  keypoint results back to COCO JSON subtracts the 0.5 again.
- Images without instances are kept as negatives (``M = 0``: unannotated,
  crowd-only, or whose annotations were all invalid; a file without an
  ``annotations`` list has only negatives). ``drop_empty=True`` drops images
  left with no instance.
- The categories define the classes, so a file with no categories is a
  :class:`DatasetError` (a model needs at least one class).

Validation happens once, in the constructor, so that nothing fails
mid-epoch. The file's structure must be sound, or the constructor raises
:class:`DatasetError` (a ``ValueError``) whose one-line message names the
file and the problem: a file that is not JSON or not an object, ``images``
not a list, an image entry without an integer ``id``, a ``file_name`` or
positive integer ``height`` and ``width``, no categories, a category without
an integer ``id`` or with a repeated one. Problems of single annotations
are skipped and counted in :attr:`CocoDataset.report` (a
:class:`DatasetReport`, up to five examples per kind with file name and
annotation id): missing image files (the image is dropped), repeated image
ids (every image of the id is dropped: its annotations cannot be placed),
annotations that are not objects, missing, non-integer or repeated
annotation ids, unknown image ids or category ids, ``iscrowd`` other than 0
or 1, boxes that are not 4 finite numbers, degenerate boxes (width or
height <= 0, or nothing left after clipping), polygons that are not lists
of an even number of finite coordinates, of fewer than 3 points, or with
points more than an image size outside the image (dropped; the annotation
too when no part is left), RLE whose size is not the image's or whose runs
do not cover exactly its ``height * width`` pixels (compressed strings are
decoded with every step checked,
:func:`~maskrcnn.data.validation.rle_string_counts`, since pycocotools'
decoder reads past the end of a truncated one), and malformed keypoints
(the instance is kept, its keypoints unlabelled).

Image size: the JSON ``width``/``height`` must be the size of the image as
:func:`~maskrcnn.data.images.load_image` returns it (EXIF orientation
applied), since annotations are in those pixels. With ``check_sizes=True``
(the default) the constructor reads every image's header (not its pixels:
a fraction of a millisecond each) and drops images whose size differs, as
kind ``"size mismatch"``; typically a photo whose EXIF orientation rotates it
while the JSON describes the stored pixels. With ``check_sizes=False`` (for
large datasets known to be clean) a mismatch is found only when the image is
read, and :meth:`CocoDataset.__getitem__` raises :class:`ImageSizeMismatchError`
naming the file, since training on misplaced masks silently would be worse.

Records are kept pickled in one numpy byte buffer rather than as Python
lists and dicts, so that DataLoader workers forked from the main process do
not slowly copy the whole annotation set by touching reference counts.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import pickle
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from ..structures import Annotations, Sample
from .images import load_image, read_image_size
from .report import DatasetReport
from .validation import (
    DatasetError,
    as_int,
    as_numbers,
    check_rle,
    clean_ground_truth,
    polygon_inside,
    short,
)

__all__ = ["CocoDataset", "DatasetError", "ImageSizeMismatchError"]

# Problem kinds reported by the datasets of this package.
MISSING_IMAGE = "missing image file"
UNREADABLE_IMAGE = "unreadable image"
SIZE_MISMATCH = "size mismatch"
DUPLICATE_IMAGE = "duplicate image id"
UNKNOWN_IMAGE = "unknown image id"
UNKNOWN_CATEGORY = "unknown category id"
DEGENERATE_BOX = "degenerate box"
SHORT_POLYGON = "polygon with fewer than 3 points"
NO_VALID_POLYGON = "no valid polygon left"
BAD_SEGMENTATION = "malformed segmentation"
BAD_KEYPOINTS = "malformed keypoints"
BAD_ANNOTATION = "malformed annotation"
BAD_ANNOTATION_ID = "missing or non-integer annotation id"
DUPLICATE_ANNOTATION = "duplicate annotation id"
BAD_BOX = "malformed box"

class ImageSizeMismatchError(DatasetError):
    """An image read from disk does not have the size its annotations were made for."""


class SerializedList:
    """A read-only list of picklable records stored in one numpy byte buffer."""

    def __init__(self, records: Sequence[Any]) -> None:
        blobs = [
            np.frombuffer(pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8) for r in records
        ]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._buffer = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> Any:
        start = 0 if index == 0 else int(self._ends[index - 1])
        return pickle.loads(self._buffer[start : int(self._ends[index])].tobytes())


@dataclass
class _Record:
    """One kept image and its validated annotations (segmentations still encoded)."""

    image_id: int
    file_name: str
    height: int
    width: int
    boxes: np.ndarray  # (M, 4) float32 XYXY
    labels: np.ndarray  # (M,) int64
    segmentations: list[Any]  # per instance: polygons, an RLE dict, or None (fill the box)
    keypoints: np.ndarray | None  # (M, P, 3) float32
    crowd_boxes: np.ndarray  # (G, 4) float32


class CocoDataset(Dataset[Sample]):
    """Images and instance annotations of a COCO instances JSON file.

    ``json_path`` is the instances file, ``image_dir`` the folder that
    ``file_name`` is relative to. See the module docstring for the
    conventions, the validation and ``check_sizes``. ``data``: the decoded
    instances dict when it is already in memory (a source converted by
    :mod:`maskrcnn.data.formats`; ``json_path`` then only names it in
    messages); ``report``: a report to add this dataset's problems to (the
    conversion's own).
    """

    def __init__(
        self,
        json_path: str | Path,
        image_dir: str | Path,
        *,
        check_sizes: bool = True,
        drop_empty: bool = False,
        data: dict[str, Any] | None = None,
        report: DatasetReport | None = None,
    ) -> None:
        self.json_path = Path(json_path)
        self.image_dir = Path(image_dir)
        self.report = report if report is not None else DatasetReport()
        # The totals are of what this dataset keeps: counted again below.
        self.report.num_images = self.report.num_instances = self.report.num_crowd = 0
        self.report.num_negatives = 0
        self._coco: COCO | None = None
        # A dict given in memory (a converted LabelMe, VIA... source) is kept as JSON bytes in one
        # buffer, for ``coco`` (and so that forked workers do not touch its reference counts).
        self._json_bytes = None if data is None else np.frombuffer(json.dumps(data).encode(), dtype=np.uint8)
        if data is None:
            data = read_json(self.json_path)
        images_list, annotations = self._top_level(data)
        self._categories(data.get("categories"))

        # When no category names keypoints, the annotations decide how many
        # there are: the most common length of their keypoint lists.
        lengths = Counter(
            len(a["keypoints"]) // 3
            for a in annotations
            if isinstance(a, dict) and isinstance(a.get("keypoints"), list) and a["keypoints"]
            and len(a["keypoints"]) % 3 == 0
        )
        num_keypoints = len(self.keypoint_names) or (lengths.most_common(1)[0][0] if lengths else 0)

        images, known_ids = self._validate_images(images_list, check_sizes)
        by_image: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in images}
        seen_annotations: set[int] = set()
        for ann in annotations:
            if not isinstance(ann, dict):
                self.report.add(BAD_ANNOTATION, "", None, f"annotation is a {_json_type(ann)}, not an object")
                continue
            ann_id = as_int(ann.get("id"))
            if ann_id is None:
                self.report.add(BAD_ANNOTATION_ID, "", None, f"annotation id {short(ann.get('id'))}")
                continue
            if ann_id in seen_annotations:
                self.report.add(DUPLICATE_ANNOTATION, "", ann_id, "annotation id appears again; skipped")
                continue
            seen_annotations.add(ann_id)
            image_id = as_int(ann.get("image_id"))
            if image_id is not None and image_id in by_image:
                by_image[image_id].append(ann)
            elif image_id is None or image_id not in known_ids:
                self.report.add(
                    UNKNOWN_IMAGE, "", ann_id, f"image_id {short(ann.get('image_id'))} is not in 'images'"
                )
            # else: the image was dropped (missing file...); reported once, for the image.

        records = []
        for image_id, info in images.items():
            record = self._validate_annotations(info, by_image[image_id], num_keypoints)
            if drop_empty and len(record.labels) == 0:
                continue
            records.append(record)
            self.report.num_instances += len(record.labels)
            self.report.num_crowd += len(record.crowd_boxes)
            self.report.num_negatives += len(record.labels) == 0
        self.report.num_images = len(records)
        self.image_ids: list[int] = [r.image_id for r in records]
        self.file_names: list[str] = [r.file_name for r in records]
        self._sizes = np.array([(r.height, r.width) for r in records], dtype=np.int64).reshape(-1, 2)
        self._records = SerializedList(records)

    # ------------------------------------------------------------------ public

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Sample:
        record: _Record = self._records[index]
        path = self.image_dir / record.file_name
        array = load_image(path)
        if array.shape[:2] != (record.height, record.width):
            raise ImageSizeMismatchError(
                f"{path}: image is {array.shape[0]}x{array.shape[1]} (HxW, EXIF orientation applied) "
                f"but {self.json_path} says {record.height}x{record.width}; "
                f"construct the dataset with check_sizes=True to skip such images"
            )
        h, w = record.height, record.width
        masks = np.zeros((len(record.segmentations), h, w), dtype=np.uint8)
        for i, segmentation in enumerate(record.segmentations):
            masks[i] = _decode(segmentation, record.boxes[i], h, w)
        annotations = Annotations(
            boxes=torch.from_numpy(record.boxes),
            labels=torch.from_numpy(record.labels),
            masks=torch.from_numpy(masks),
            keypoints=None if record.keypoints is None else torch.from_numpy(record.keypoints),
            crowd_boxes=torch.from_numpy(record.crowd_boxes),
        )
        return Sample(torch.from_numpy(array), annotations, record.image_id, record.file_name)

    def boxes_and_labels(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ``index``'s instance boxes ``(M, 4)`` XYXY, labels ``(M,)`` and crowd boxes ``(G, 4)``.

        Read from the validated JSON; no image or mask is decoded.
        """
        record: _Record = self._records[index]
        return record.boxes, record.labels, record.crowd_boxes

    def image_size(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of image ``index`` as the JSON gives it."""
        h, w = self._sizes[index]
        return int(h), int(w)

    def aspect_ratios(self) -> list[float]:
        """Width / height of each image, from the JSON (no image is decoded)."""
        return (self._sizes[:, 1] / self._sizes[:, 0]).tolist()

    def label_of(self, category_id: int) -> int:
        """The contiguous label of a COCO category id (``KeyError`` for an unknown id)."""
        return self._label_of[category_id]

    def category_id(self, label: int) -> int:
        """The COCO category id of a contiguous label."""
        return self.category_ids[label]

    @property
    def coco(self) -> COCO:
        """The ground truth as a pycocotools ``COCO`` object, read from ``json_path`` on first use.

        It is the whole file less the annotations ``COCOeval`` cannot score
        (:func:`~maskrcnn.data.validation.clean_ground_truth`); evaluate on
        ``image_ids`` (the images this dataset kept) through ``COCOeval.params.imgIds``.
        """
        if self._coco is None:
            if self._json_bytes is None:
                data = read_json(self.json_path)
            else:
                data = json.loads(self._json_bytes.tobytes())
            data.setdefault("annotations", [])
            clean_ground_truth(data, str(self.json_path))
            coco = COCO()
            coco.dataset = data
            with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
                coco.createIndex()
            self._coco = coco
        return self._coco

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_coco"] = None  # workers do not need it; rebuilt on demand
        return state

    # -------------------------------------------------------------- validation

    def _top_level(self, data: Any) -> tuple[list[Any], list[Any]]:
        """The ``images`` and ``annotations`` lists; ``DatasetError`` when the file is not a COCO object.

        A file without ``annotations`` has only negatives.
        """
        if not isinstance(data, dict):
            raise DatasetError(
                f"{self.json_path}: expected a COCO object with 'images', 'annotations' and 'categories', "
                f"got a JSON {_json_type(data)}"
            )
        images = data.get("images")
        if not isinstance(images, list):
            what = "no 'images' list" if images is None else f"'images' is a {_json_type(images)}, not a list"
            raise DatasetError(f"{self.json_path}: not a COCO instances file: {what}")
        annotations = data.get("annotations", [])
        if not isinstance(annotations, list):
            raise DatasetError(
                f"{self.json_path}: 'annotations' is a {_json_type(annotations)}, not a list"
            )
        return images, annotations

    def _categories(self, entries: Any) -> None:
        """Set ``category_ids``, ``class_names``, the label map and ``keypoint_names``.

        The categories define the classes a model learns, so a file without
        any is a ``DatasetError`` (a file with categories and no annotations
        is not: all its images are negatives), as is a category without an
        integer ``id``, a repeated id, or ``keypoints`` that are not a list of names.
        """
        if entries is None or (isinstance(entries, list) and not entries):
            raise DatasetError(
                f"{self.json_path}: no categories: a dataset must list at least one category "
                f"(the classes a model learns), even if no image is annotated"
            )
        if not isinstance(entries, list):
            raise DatasetError(f"{self.json_path}: 'categories' is a {_json_type(entries)}, not a list")
        by_id: dict[int, dict[str, Any]] = {}
        for position, category in enumerate(entries):
            cid = as_int(category.get("id")) if isinstance(category, dict) else None
            if cid is None:
                raise DatasetError(f"{self.json_path}: category {position} has no integer 'id'")
            if cid in by_id:
                raise DatasetError(f"{self.json_path}: category id {short(cid)} appears twice")
            names = category.get("keypoints")
            if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                raise DatasetError(
                    f"{self.json_path}: category {short(cid)}: 'keypoints' is not a list of names"
                )
            by_id[cid] = category
        self.category_ids: tuple[int, ...] = tuple(sorted(by_id))
        self.class_names: tuple[str, ...] = tuple(str(by_id[c].get("name", c)) for c in self.category_ids)
        self._label_of = {cid: label for label, cid in enumerate(self.category_ids)}
        # Keypoint names come from the categories (COCO person has 17).
        self.keypoint_names: tuple[str, ...] = next(
            (tuple(by_id[c]["keypoints"]) for c in self.category_ids if by_id[c].get("keypoints")), ()
        )

    def _validate_images(
        self, entries: list[Any], check_sizes: bool
    ) -> tuple[dict[int, dict[str, Any]], set[int]]:
        """Image id -> {file_name, height, width} for images that can be read, and all ids listed.

        An entry that is not an object, or lacks an integer ``id``, a
        ``file_name`` or positive integer ``height`` and ``width``, is a
        ``DatasetError``: without them no annotation can be placed.
        """
        images: dict[int, dict[str, Any]] = {}
        listed: set[int] = set()
        repeated: set[int] = set()
        for position, entry in enumerate(entries):
            where = f"{self.json_path}: image entry {position}"
            if not isinstance(entry, dict):
                raise DatasetError(f"{where} is a {_json_type(entry)}, not an object")
            image_id = as_int(entry.get("id"))
            if image_id is None:
                raise DatasetError(f"{where} has no integer 'id' (got {short(entry.get('id'))})")
            file_name = entry.get("file_name")
            if not isinstance(file_name, str) or not file_name:
                raise DatasetError(f"{where} (id {short(image_id)}) has no 'file_name'")
            height, width = as_int(entry.get("height")), as_int(entry.get("width"))
            if height is None or width is None or height <= 0 or width <= 0:
                raise DatasetError(
                    f"{where} ({short(file_name)}) needs positive integer 'height' and 'width', "
                    f"got {short(entry.get('height'))} and {short(entry.get('width'))}"
                )
            if image_id in listed:
                detail = f"image id {short(image_id)} appears again: every image of it dropped"
                self.report.add(DUPLICATE_IMAGE, file_name, None, detail)
                repeated.add(image_id)
                continue
            listed.add(image_id)
            path = self.image_dir / file_name
            try:
                exists = path.is_file()
            except (OSError, ValueError):  # a name the file system cannot hold (a NUL byte...)
                exists = False
            if not exists:
                self.report.add(MISSING_IMAGE, file_name, None, f"{path} does not exist")
                continue
            if check_sizes:
                try:
                    actual = read_image_size(path)
                except (OSError, Image.DecompressionBombError) as exc:
                    self.report.add(UNREADABLE_IMAGE, file_name, None, str(exc))
                    continue
                if (height, width) != actual:
                    self.report.add(
                        SIZE_MISMATCH,
                        file_name,
                        None,
                        f"JSON says {short(height)}x{short(width)} (HxW), image is {actual[0]}x{actual[1]}",
                    )
                    continue
            images[image_id] = {
                "image_id": image_id, "file_name": file_name, "height": height, "width": width
            }
        for image_id in repeated:  # which of them an annotation belongs to cannot be told
            images.pop(image_id, None)
        return images, listed

    def _validate_annotations(
        self, info: dict[str, Any], annotations: list[dict[str, Any]], num_keypoints: int
    ) -> _Record:
        h, w, file_name = info["height"], info["width"], info["file_name"]
        boxes, labels, segmentations, keypoints, crowd = [], [], [], [], []
        for ann in annotations:
            ann_id = as_int(ann.get("id"))
            category = as_int(ann.get("category_id"))
            if category is None or category not in self._label_of:
                detail = f"category_id {short(ann.get('category_id'))}"
                self.report.add(UNKNOWN_CATEGORY, file_name, ann_id, detail)
                continue
            crowd_flag = ann.get("iscrowd", 0)
            if not isinstance(crowd_flag, (int, float)) or crowd_flag not in (0, 1):
                detail = f"iscrowd {short(crowd_flag)} is not 0 or 1"
                self.report.add(BAD_ANNOTATION, file_name, ann_id, detail)
                continue
            is_crowd = bool(crowd_flag)
            segmentation: Any = None
            if not is_crowd:
                ok, segmentation = self._check_segmentation(ann.get("segmentation"), h, w, file_name, ann_id)
                if not ok:
                    continue
            bbox = ann.get("bbox")
            if bbox is not None and (not isinstance(bbox, list) or len(bbox) != 4 or not as_numbers(bbox)):
                self.report.add(BAD_BOX, file_name, ann_id, f"bbox {short(bbox)} is not 4 finite numbers")
                continue
            box = _xyxy_box(bbox, segmentation, h, w)
            if box is None:
                self.report.add(DEGENERATE_BOX, file_name, ann_id, f"bbox {short(bbox)} in {w}x{h} image")
                continue
            if is_crowd:
                crowd.append(box)
                continue
            boxes.append(box)
            labels.append(self._label_of[category])
            segmentations.append(segmentation)
            if num_keypoints:
                keypoints.append(self._keypoints(ann.get("keypoints"), num_keypoints, file_name, ann_id))
        return _Record(
            image_id=info["image_id"],
            file_name=file_name,
            height=h,
            width=w,
            boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.array(labels, dtype=np.int64),
            segmentations=segmentations,
            keypoints=np.array(keypoints, dtype=np.float32).reshape(-1, num_keypoints, 3)
            if num_keypoints
            else None,
            crowd_boxes=np.array(crowd, dtype=np.float32).reshape(-1, 4),
        )

    def _check_segmentation(
        self, segmentation: Any, h: int, w: int, file_name: str, ann_id: int | None
    ) -> tuple[bool, Any]:
        """``(keep the annotation, cleaned segmentation or None)``; reports what it drops.

        Polygons need an even number (at least 6) of finite coordinates within
        one image size of the image (``validation.POLYGON_MARGIN``); RLE must be of the
        image's size and cover exactly its pixels (``check_rle``).
        """
        if segmentation is None or (isinstance(segmentation, list) and not segmentation):
            return True, None  # no segmentation: the box becomes the mask
        if isinstance(segmentation, list):
            parts = []
            for part in segmentation:
                numbers = as_numbers(part)
                if numbers is None or len(numbers) % 2:
                    self.report.add(
                        BAD_SEGMENTATION, file_name, ann_id, "polygon is not a list of x, y pairs"
                    )
                elif len(numbers) < 6:
                    self.report.add(SHORT_POLYGON, file_name, ann_id, f"{len(numbers) // 2} points")
                elif not polygon_inside(numbers, h, w):
                    self.report.add(
                        BAD_SEGMENTATION, file_name, ann_id, f"polygon point far outside the {w}x{h} image"
                    )
                else:
                    parts.append(numbers)
            if not parts:
                self.report.add(NO_VALID_POLYGON, file_name, ann_id, "annotation dropped")
                return False, None
            return True, parts
        if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
            clean, problem = check_rle(segmentation, h, w)
            if clean is None:
                self.report.add(BAD_SEGMENTATION, file_name, ann_id, problem)
                return False, None
            return True, clean
        self.report.add(BAD_SEGMENTATION, file_name, ann_id, f"unrecognised {type(segmentation).__name__}")
        return False, None

    def _keypoints(self, values: Any, num_keypoints: int, file_name: str, ann_id: int | None) -> np.ndarray:
        """``(P, 3)`` keypoints with labelled ones moved to continuous coordinates (+0.5).

        Keypoints that are not ``3 P`` finite numbers are reported and the
        instance kept without them (all unlabelled).
        """
        result = np.zeros((num_keypoints, 3), dtype=np.float32)
        if values is None or (isinstance(values, list) and not values):
            return result
        numbers = as_numbers(values)
        if numbers is None or len(numbers) != 3 * num_keypoints:
            count = len(values) if isinstance(values, list) else short(values)
            detail = f"{count} numbers for {num_keypoints} keypoints"
            self.report.add(BAD_KEYPOINTS, file_name, ann_id, detail)
            return result
        result[:] = np.asarray(numbers, dtype=np.float32).reshape(num_keypoints, 3)
        labelled = result[:, 2] > 0
        result[labelled, :2] += 0.5
        result[~labelled] = 0.0
        return result


def read_json(path: Path) -> Any:
    """The decoded JSON of ``path``; ``DatasetError`` naming the file when it cannot be read or parsed."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such annotation file") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(f"{path}: not a JSON file ({reason})") from None


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type: object, array, string, number, boolean or null."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _xyxy_box(bbox: list[Any] | None, segmentation: Any, h: int, w: int) -> list[float] | None:
    """COCO ``[x, y, w, h]`` (or the segmentation's extent) -> XYXY clipped to the image; None if empty.

    ``bbox`` is None or 4 finite numbers (checked by the caller).
    """
    if bbox is None:
        if segmentation is None:
            return None
        bbox = mask_utils.toBbox(_to_rle(segmentation, h, w)).tolist()
    x, y, bw, bh = (float(v) for v in bbox)
    if not bw > 0 or not bh > 0:
        return None
    x0, y0 = min(max(x, 0.0), w), min(max(y, 0.0), h)
    x1, y1 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    return [x0, y0, x1, y1]


def _to_rle(segmentation: Any, h: int, w: int) -> dict[str, Any]:
    """A cleaned segmentation (polygons or RLE) as one compressed RLE."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, h, w)
    return segmentation


def _decode(segmentation: Any, box: np.ndarray, h: int, w: int) -> np.ndarray:
    """``(h, w)`` uint8 mask of one instance; the box filled when there is no segmentation."""
    if segmentation is None:
        mask = np.zeros((h, w), dtype=np.uint8)
        # Pixels the continuous box touches: [floor(x0), ceil(x1)) and likewise in y.
        x0, y0 = math.floor(box[0]), math.floor(box[1])
        x1, y1 = math.ceil(box[2]), math.ceil(box[3])
        mask[y0:y1, x0:x1] = 1
        return mask
    with warnings.catch_warnings():
        # pycocotools' compiled decode trips numpy 2's copy-keyword deprecation
        # on every call; harmless, and otherwise printed by every worker.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return mask_utils.decode(_to_rle(segmentation, h, w))
