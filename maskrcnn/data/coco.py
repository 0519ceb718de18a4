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
- Images without annotations are kept as negatives (``drop_empty=True``
  drops images left with no instance).

Validation happens once, in the constructor. Problems are skipped and
counted in :attr:`CocoDataset.report` (a :class:`DatasetReport`, up to five
examples per kind with file name and annotation id), never raised mid-epoch:
missing image files (the image is dropped), annotations of unknown image ids
or unknown category ids, degenerate boxes (width or height <= 0 after
clipping), polygons of fewer than 3 points (dropped; the annotation too when
no part is left), malformed segmentations or keypoints.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from ..structures import Annotations, Sample
from .images import load_image

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

_EXIF_ORIENTATION = 0x0112
# EXIF orientations 5..8 rotate by 90 degrees (with or without a mirror): height and width swap.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass(frozen=True)
class Problem:
    """One example of a skipped problem: where it is and what is wrong."""

    kind: str
    file_name: str
    annotation_id: int | None
    detail: str


@dataclass
class DatasetReport:
    """What a dataset found while validating: problem counts per kind, a few examples each.

    ``num_images``, ``num_instances`` and ``num_crowd`` count what was kept.
    """

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[Problem]] = field(default_factory=dict)
    num_images: int = 0
    num_instances: int = 0
    num_crowd: int = 0
    max_examples: int = 5

    def add(self, kind: str, file_name: str, annotation_id: int | None = None, detail: str = "") -> None:
        """Count one problem of ``kind``; keep it as an example while fewer than ``max_examples`` are."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < self.max_examples:
            examples.append(Problem(kind, file_name, annotation_id, detail))

    @property
    def total(self) -> int:
        """Number of problems of all kinds (0 for a clean dataset)."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """Human-readable lines: what was kept, then each problem kind with its examples."""
        lines = [
            f"{self.num_images} images, {self.num_instances} instances, {self.num_crowd} crowd regions; "
            + (f"{self.total} problems skipped" if self.total else "no problems")
        ]
        for kind in sorted(self.counts):
            lines.append(f"  {kind}: {self.counts[kind]}")
            for p in self.examples.get(kind, []):
                where = p.file_name or "?"
                if p.annotation_id is not None:
                    where += f" (annotation {p.annotation_id})"
                lines.append(f"    {where}" + (f": {p.detail}" if p.detail else ""))
        return "\n".join(lines)


class ImageSizeMismatchError(ValueError):
    """An image read from disk does not have the size its annotations were made for."""


def read_image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image as ``load_image`` returns it, from the header only.

    The EXIF orientation is applied (5..8 swap the sides). Raises ``OSError``
    (PIL's ``UnidentifiedImageError`` included) when the header cannot be read.
    """
    with Image.open(path) as image:
        width, height = image.size
        try:
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # a broken EXIF block; load_image would ignore it as well
            orientation = 1
    if orientation in _TRANSPOSING_ORIENTATIONS:
        return width, height
    return height, width


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
    conventions, the validation and ``check_sizes``.
    """

    def __init__(
        self,
        json_path: str | Path,
        image_dir: str | Path,
        *,
        check_sizes: bool = True,
        drop_empty: bool = False,
    ) -> None:
        self.json_path = Path(json_path)
        self.image_dir = Path(image_dir)
        self.report = DatasetReport()
        data = json.loads(self.json_path.read_text())
        self._coco: COCO | None = None

        categories = sorted(data.get("categories", []), key=lambda c: int(c["id"]))
        self.category_ids: tuple[int, ...] = tuple(int(c["id"]) for c in categories)
        self.class_names: tuple[str, ...] = tuple(str(c.get("name", c["id"])) for c in categories)
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"{self.json_path}: duplicate category ids {self.category_ids}")
        self._label_of = {cid: label for label, cid in enumerate(self.category_ids)}
        # Keypoint names come from the categories (COCO person has 17); when no
        # category lists them, the annotations decide how many there are.
        self.keypoint_names: tuple[str, ...] = next(
            (tuple(c["keypoints"]) for c in categories if c.get("keypoints")), ()
        )
        num_keypoints = len(self.keypoint_names) or next(
            (len(a["keypoints"]) // 3 for a in data.get("annotations", []) if a.get("keypoints")), 0
        )

        images = self._validate_images(data.get("images", []), check_sizes)
        by_image: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in images}
        known_ids = {int(im["id"]) for im in data.get("images", []) if "id" in im}
        for ann in data.get("annotations", []):
            image_id = int(ann.get("image_id", -1))
            if image_id in by_image:
                by_image[image_id].append(ann)
            elif image_id not in known_ids:
                self.report.add(UNKNOWN_IMAGE, "", ann.get("id"), f"image_id {image_id} is not in 'images'")
            # else: the image was dropped (missing file...); reported once, for the image.

        records = []
        for image_id, info in images.items():
            record = self._validate_annotations(info, by_image[image_id], num_keypoints)
            if drop_empty and len(record.labels) == 0:
                continue
            records.append(record)
            self.report.num_instances += len(record.labels)
            self.report.num_crowd += len(record.crowd_boxes)
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

        It is the whole file, problems included; evaluate on ``image_ids``
        (the images this dataset kept) through ``COCOeval.params.imgIds``.
        """
        if self._coco is None:
            with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
                self._coco = COCO(str(self.json_path))
        return self._coco

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_coco"] = None  # workers do not need it; rebuilt on demand
        return state

    # -------------------------------------------------------------- validation

    def _validate_images(self, entries: list[dict[str, Any]], check_sizes: bool) -> dict[int, dict[str, Any]]:
        """Image id -> {file_name, height, width} for images that can be read."""
        images: dict[int, dict[str, Any]] = {}
        for entry in entries:
            image_id, file_name = int(entry["id"]), str(entry["file_name"])
            if image_id in images:
                self.report.add(DUPLICATE_IMAGE, file_name, None, f"image id {image_id} appears again")
                continue
            path = self.image_dir / file_name
            if not path.is_file():
                self.report.add(MISSING_IMAGE, file_name, None, f"{path} does not exist")
                continue
            size = (entry.get("height"), entry.get("width"))
            if check_sizes or None in size:
                try:
                    actual = read_image_size(path)
                except OSError as exc:
                    self.report.add(UNREADABLE_IMAGE, file_name, None, str(exc))
                    continue
                if None in size:
                    size = actual
                elif tuple(int(s) for s in size) != actual:
                    self.report.add(
                        SIZE_MISMATCH,
                        file_name,
                        None,
                        f"JSON says {size[0]}x{size[1]} (HxW), image is {actual[0]}x{actual[1]}",
                    )
                    continue
            images[image_id] = {
                "image_id": image_id,
                "file_name": file_name,
                "height": int(size[0]),
                "width": int(size[1]),
            }
        return images

    def _validate_annotations(
        self, info: dict[str, Any], annotations: list[dict[str, Any]], num_keypoints: int
    ) -> _Record:
        h, w, file_name = info["height"], info["width"], info["file_name"]
        boxes, labels, segmentations, keypoints, crowd = [], [], [], [], []
        for ann in annotations:
            ann_id = ann.get("id")
            category = ann.get("category_id")
            if category not in self._label_of:
                self.report.add(UNKNOWN_CATEGORY, file_name, ann_id, f"category_id {category}")
                continue
            is_crowd = bool(ann.get("iscrowd", 0))
            segmentation: Any = None
            if not is_crowd:
                ok, segmentation = self._check_segmentation(ann.get("segmentation"), h, w, file_name, ann_id)
                if not ok:
                    continue
            box = _xyxy_box(ann.get("bbox"), segmentation, h, w)
            if box is None:
                self.report.add(DEGENERATE_BOX, file_name, ann_id, f"bbox {ann.get('bbox')} in {w}x{h} image")
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
        """``(keep the annotation, cleaned segmentation or None)``; reports what it drops."""
        if segmentation is None or (isinstance(segmentation, list) and not segmentation):
            return True, None  # no segmentation: the box becomes the mask
        if isinstance(segmentation, list):
            parts = []
            for part in segmentation:
                if not isinstance(part, list) or len(part) % 2 or not all(_finite(v) for v in part):
                    self.report.add(
                        BAD_SEGMENTATION, file_name, ann_id, "polygon is not a list of x, y pairs"
                    )
                elif len(part) < 6:
                    self.report.add(SHORT_POLYGON, file_name, ann_id, f"{len(part) // 2} points")
                else:
                    parts.append([float(v) for v in part])
            if not parts:
                self.report.add(NO_VALID_POLYGON, file_name, ann_id, "annotation dropped")
                return False, None
            return True, parts
        if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
            size = [int(s) for s in segmentation["size"]]
            counts = segmentation["counts"]
            if size != [h, w]:
                self.report.add(BAD_SEGMENTATION, file_name, ann_id, f"RLE size {size} in a {h}x{w} image")
                return False, None
            if isinstance(counts, list):
                if sum(counts) != h * w:
                    self.report.add(BAD_SEGMENTATION, file_name, ann_id, f"RLE counts sum to {sum(counts)}")
                    return False, None
                return True, {"size": size, "counts": [int(c) for c in counts]}
            if isinstance(counts, (str, bytes)):
                return True, {
                    "size": size,
                    "counts": counts if isinstance(counts, bytes) else counts.encode(),
                }
        self.report.add(BAD_SEGMENTATION, file_name, ann_id, f"unrecognised {type(segmentation).__name__}")
        return False, None

    def _keypoints(self, values: Any, num_keypoints: int, file_name: str, ann_id: int | None) -> np.ndarray:
        """``(P, 3)`` keypoints with labelled ones moved to continuous coordinates (+0.5)."""
        result = np.zeros((num_keypoints, 3), dtype=np.float32)
        if not values:
            return result
        if len(values) != 3 * num_keypoints or not all(_finite(v) for v in values):
            self.report.add(
                BAD_KEYPOINTS, file_name, ann_id, f"{len(values)} numbers for {num_keypoints} keypoints"
            )
            return result
        result[:] = np.asarray(values, dtype=np.float32).reshape(num_keypoints, 3)
        labelled = result[:, 2] > 0
        result[labelled, :2] += 0.5
        result[~labelled] = 0.0
        return result


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _xyxy_box(bbox: Any, segmentation: Any, h: int, w: int) -> list[float] | None:
    """COCO ``[x, y, w, h]`` (or the segmentation's extent) -> XYXY clipped to the image; None if empty."""
    if bbox is None and segmentation is not None:
        bbox = mask_utils.toBbox(_to_rle(segmentation, h, w)).tolist()
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_finite(v) for v in bbox):
        return None
    x, y, bw, bh = (float(v) for v in bbox)
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
