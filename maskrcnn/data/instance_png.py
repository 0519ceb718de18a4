"""Datasets whose masks are PNGs of instance ids -> :class:`~maskrcnn.structures.Sample`.

Each image has a single-channel PNG of the same size in which every pixel
holds an instance id: 0 is background, each other value one object. This is
how Penn-Fudan (``PedMasks``) and Cityscapes (``gtFine *_instanceIds.png``)
store instances. Shapes of one item: image ``(H, W, 3)`` uint8 RGB;
``masks (M, H, W)`` uint8 {0, 1}; ``boxes (M, 4)`` float32 XYXY, the extent
of each mask (``x1 = last column + 1``, so a one-pixel instance at column
``c`` spans ``[c, c + 1)``); ``labels (M,)`` int64 contiguous; crowd regions
in ``crowd_boxes (G, 4)``; ``keypoints`` None.

Pairing image and mask. Images are the files under ``image_dir`` (searched
recursively, image suffixes only, sorted by relative path). An image whose
file stem is ``BASE + image_suffix`` pairs with
``mask_dir / <same sub-folder> / (BASE + mask_suffix + mask_extension)``:

- Penn-Fudan (the defaults: ``image_suffix=""``, ``mask_suffix="_mask"``):
  ``PNGImages/FudanPed00001.png`` <-> ``PedMasks/FudanPed00001_mask.png``.
- Cityscapes (``image_suffix="_leftImg8bit"``,
  ``mask_suffix="_gtFine_instanceIds"``):
  ``leftImg8bit/train/aachen/X_leftImg8bit.png`` <->
  ``gtFine/train/aachen/X_gtFine_instanceIds.png``.

The class file (JSON) lists the classes, whose order gives the labels
``0 .. K-1`` (``category_ids`` are ``1 .. K``), and says how an instance id
maps to a class through ``"instance_to_class"``:

- ``"single"``: one class; every non-zero id is an instance of it::

      {"classes": ["pedestrian"], "instance_to_class": "single"}

- ``"cityscapes"``: ``id // 1000`` is the Cityscapes label id, mapped to a
  class name by ``"class_ids"``. Ids below 1000 are a label id with no
  instance id: for a listed class that is a group of objects not told apart
  ("car group"), which becomes a crowd region; other ids below 1000 (road,
  sky...) are ignored without comment::

      {"classes": ["person", "car"], "instance_to_class": "cityscapes",
       "class_ids": {"24": "person", "26": "car"}}

- an object: the class name of each instance id::

      {"classes": ["cat", "dog"], "instance_to_class": {"1": "cat", "2": "dog"}}

Instance ids that map to no class are ignored and reported (kind
``"unmapped instance id"``; Cityscapes' caravans and trailers, for
instance, when they are not listed).

Validation happens once, in the constructor, which reads every image's
header and decodes every mask (a thread pool; about a minute for Cityscapes'
2975 training masks): missing masks, unpaired images, unreadable files and
image/mask size differences are reported in :attr:`InstancePngDataset.report`
and the image is skipped. ``image_id`` is the 1-based position of the image
among the kept ones, in sorted order. A mask with no instance (all zeros,
only crowd or ignored ids) keeps its image as a negative, as
:class:`~maskrcnn.data.coco.CocoDataset` does: ``masks (0, H, W)``. A class
file that cannot be used is a :class:`~maskrcnn.data.validation.DatasetError`.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..structures import Annotations, Sample
from .coco import SIZE_MISMATCH, UNREADABLE_IMAGE, ImageSizeMismatchError, SerializedList
from .images import IMAGE_EXTENSIONS, load_image, read_image_size
from .report import DatasetReport
from .validation import DatasetError

MISSING_MASK = "missing mask"
UNPAIRED_IMAGE = "image name without the image suffix"
UNREADABLE_MASK = "unreadable mask"
UNMAPPED_ID = "unmapped instance id"

# Cityscapes encodes instance pixels as label_id * 1000 + instance number;
# values below this are a bare label id (stuff, or a group of things).
CITYSCAPES_ID_FACTOR = 1000

_INSTANCE, _CROWD, _IGNORE, _UNMAPPED = range(4)


class InstanceClassMap:
    """How an instance id becomes a class: read from the class file (formats in the module docstring)."""

    def __init__(self, spec: dict[str, Any], source: str = "class file") -> None:
        if not isinstance(spec, dict):
            raise DatasetError(f"{source}: expected an object with 'classes' and 'instance_to_class'")
        classes = spec.get("classes")
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise DatasetError(f"{source}: 'classes' must be a non-empty list of names")
        if len(set(classes)) != len(classes):
            raise DatasetError(f"{source}: duplicate class names in {classes}")
        self.classes: tuple[str, ...] = tuple(classes)
        label = {name: i for i, name in enumerate(classes)}
        rule = spec.get("instance_to_class")

        def labels_of(mapping: Any, what: str) -> dict[int, int]:
            if not isinstance(mapping, dict):
                raise DatasetError(f"{source}: '{what}' must be an object of id -> class name")
            unknown = sorted({str(n) for n in mapping.values()} - set(label))
            if unknown:
                raise DatasetError(f"{source}: '{what}' names classes not in 'classes': {unknown}")
            bad = sorted(str(k) for k in mapping if not str(k).isdigit())
            if bad:
                raise DatasetError(f"{source}: '{what}' has keys that are not instance ids: {bad}")
            return {int(k): label[v] for k, v in mapping.items()}

        self.kind: str
        self._labels: dict[int, int] = {}
        if rule == "single":
            if len(classes) != 1:
                raise DatasetError(f"{source}: 'single' needs exactly one class, got {classes}")
            self.kind = "single"
        elif rule == "cityscapes":
            self.kind = "cityscapes"
            self._labels = labels_of(spec.get("class_ids"), "class_ids")
        elif isinstance(rule, dict):
            self.kind = "explicit"
            self._labels = labels_of(rule, "instance_to_class")
        else:
            raise DatasetError(
                f'{source}: \'instance_to_class\' must be "single", "cityscapes" or an object, got {rule!r}'
            )

    @classmethod
    def from_file(cls, path: str | Path) -> InstanceClassMap:
        try:
            spec = json.loads(Path(path).read_bytes())
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read the class file: {exc.strerror or exc}") from None
        except (ValueError, RecursionError) as exc:
            raise DatasetError(f"{path}: the class file is not JSON ({str(exc).splitlines()[0]})") from None
        return cls(spec, source=str(path))

    def classify(self, instance_id: int) -> tuple[int, int]:
        """``(what, label)`` of a non-zero id: instance, crowd, ignore or unmapped (label -1)."""
        if self.kind == "single":
            return _INSTANCE, 0
        if self.kind == "explicit":
            return (_INSTANCE, self._labels[instance_id]) if instance_id in self._labels else (_UNMAPPED, -1)
        label_id = instance_id // CITYSCAPES_ID_FACTOR
        if instance_id < CITYSCAPES_ID_FACTOR:
            return (_CROWD, self._labels[instance_id]) if instance_id in self._labels else (_IGNORE, -1)
        return (_INSTANCE, self._labels[label_id]) if label_id in self._labels else (_UNMAPPED, -1)


@dataclass
class _Record:
    image: str  # relative to image_dir
    mask: str  # relative to mask_dir
    height: int
    width: int
    instance_ids: list[int]
    labels: list[int]
    crowd_ids: list[int]


class InstancePngDataset(Dataset[Sample]):
    """Images with instance-id PNG masks (Penn-Fudan, Cityscapes); see the module docstring."""

    def __init__(
        self,
        image_dir: str | Path,
        mask_dir: str | Path,
        classes_file: str | Path,
        *,
        image_suffix: str = "",
        mask_suffix: str = "_mask",
        mask_extension: str = ".png",
        num_threads: int = 8,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.mask_dir = Path(mask_dir)
        self.image_suffix = image_suffix
        self.mask_suffix = mask_suffix
        self.mask_extension = mask_extension
        self.class_map = InstanceClassMap.from_file(classes_file)
        self.class_names: tuple[str, ...] = self.class_map.classes
        self.category_ids: tuple[int, ...] = tuple(range(1, len(self.class_names) + 1))
        self.report = DatasetReport()

        pairs = self._pairs()
        with ThreadPoolExecutor(max(1, min(num_threads, os.cpu_count() or 1))) as pool:
            scanned = list(pool.map(self._scan, pairs))
        records = []
        for record, problems in scanned:
            for kind, file_name, detail in problems:
                self.report.add(kind, file_name, None, detail)
            if record is not None:
                records.append(record)
                self.report.num_instances += len(record.instance_ids)
                self.report.num_crowd += len(record.crowd_ids)
                self.report.num_negatives += len(record.instance_ids) == 0
        self.report.num_images = len(records)
        self.file_names: list[str] = [r.image for r in records]
        self._sizes = np.array([(r.height, r.width) for r in records], dtype=np.int64).reshape(-1, 2)
        self._records = SerializedList(records)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Sample:
        record: _Record = self._records[index]
        path = self.image_dir / record.image
        image = load_image(path)
        ids = _read_ids(self.mask_dir / record.mask)
        if image.shape[:2] != ids.shape:
            raise ImageSizeMismatchError(
                f"{path}: image is {image.shape[0]}x{image.shape[1]} (HxW, EXIF orientation applied) "
                f"but its mask {self.mask_dir / record.mask} is {ids.shape[0]}x{ids.shape[1]}"
            )
        masks = _masks(ids, record.instance_ids)
        crowd = _masks(ids, record.crowd_ids)
        annotations = Annotations(
            boxes=masks_to_boxes(masks),
            labels=torch.tensor(record.labels, dtype=torch.int64),
            masks=masks,
            keypoints=None,
            crowd_boxes=masks_to_boxes(crowd),
        )
        return Sample(torch.from_numpy(image), annotations, index + 1, record.image)

    def aspect_ratios(self) -> list[float]:
        """Width / height of each image, from the image headers read at construction."""
        return (self._sizes[:, 1] / self._sizes[:, 0]).tolist()

    def label_of(self, category_id: int) -> int:
        """The contiguous label of a category id (``category_id - 1``)."""
        if category_id not in self.category_ids:
            raise KeyError(category_id)
        return category_id - 1

    def category_id(self, label: int) -> int:
        """The category id of a contiguous label (``label + 1``)."""
        return self.category_ids[label]

    # -------------------------------------------------------------- validation

    def _pairs(self) -> list[tuple[str, str]]:
        """``(image, mask)`` paths relative to their folders, for images named as expected."""
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir}")
        same_dir = self.image_dir.resolve() == self.mask_dir.resolve()
        pairs = []
        files = sorted(
            p.relative_to(self.image_dir)
            for p in self.image_dir.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
        )
        for rel in files:
            stem = rel.name[: -len(rel.suffix)]
            if same_dir and stem.endswith(self.mask_suffix) and rel.suffix == self.mask_extension:
                continue  # a mask lying beside its image
            if self.image_suffix:
                if not stem.endswith(self.image_suffix):
                    self.report.add(UNPAIRED_IMAGE, rel.as_posix(), None, f"expected *{self.image_suffix}")
                    continue
                stem = stem[: -len(self.image_suffix)]
            pairs.append(
                (rel.as_posix(), (rel.parent / f"{stem}{self.mask_suffix}{self.mask_extension}").as_posix())
            )
        return pairs

    def _scan(self, pair: tuple[str, str]) -> tuple[_Record | None, list[tuple[str, str, str]]]:
        """Read one image's header and its mask: the record, or None, and the problems found."""
        image, mask = pair
        mask_path = self.mask_dir / mask
        if not mask_path.is_file():
            return None, [(MISSING_MASK, image, f"{mask_path} does not exist")]
        try:
            height, width = read_image_size(self.image_dir / image)
        except OSError as exc:
            return None, [(UNREADABLE_IMAGE, image, str(exc))]
        try:
            ids = _read_ids(mask_path)
        except (OSError, ValueError) as exc:
            return None, [(UNREADABLE_MASK, image, f"{mask_path}: {exc}")]
        if ids.shape != (height, width):
            detail = f"image is {height}x{width} (HxW), mask {ids.shape[0]}x{ids.shape[1]}"
            return None, [(SIZE_MISMATCH, image, detail)]
        problems = []
        record = _Record(image, mask, height, width, [], [], [])
        for value in np.unique(ids).tolist():
            if value == 0:
                continue
            what, label = self.class_map.classify(value)
            if what == _INSTANCE:
                record.instance_ids.append(value)
                record.labels.append(label)
            elif what == _CROWD:
                record.crowd_ids.append(value)
            elif what == _UNMAPPED:
                problems.append((UNMAPPED_ID, image, f"id {value} ignored"))
        return record, problems


def _read_ids(path: Path) -> np.ndarray:
    """``(H, W)`` int64 instance ids of a single-channel PNG (8-bit, palette or 16/32-bit)."""
    with Image.open(path) as image:
        image.load()
        if image.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
            raise ValueError(f"instance masks must be single-channel, not mode {image.mode}")
        # For palette images the stored indices are the ids, not the colours they show.
        return np.asarray(image).astype(np.int64)


def _masks(ids: np.ndarray, values: list[int]) -> Tensor:
    """``(M, H, W)`` uint8: one binary mask per id in ``values``."""
    table = torch.from_numpy(ids)
    wanted = torch.tensor(values, dtype=torch.int64).view(-1, 1, 1)
    return (table[None] == wanted).to(torch.uint8)


def masks_to_boxes(masks: Tensor) -> Tensor:
    """``(M, H, W)`` masks -> ``(M, 4)`` float32 XYXY extents, ``x1 = last column + 1``.

    Every mask must be non-empty.
    """
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    rows = masks.any(dim=2)  # (M, H): which rows each mask touches
    cols = masks.any(dim=1)  # (M, W)
    h, w = rows.shape[1], cols.shape[1]
    # argmax of a bool finds the first True; on the flipped tensor, the last.
    y0 = rows.int().argmax(dim=1)
    y1 = h - rows.flip(1).int().argmax(dim=1)
    x0 = cols.int().argmax(dim=1)
    x1 = w - cols.flip(1).int().argmax(dim=1)
    return torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
