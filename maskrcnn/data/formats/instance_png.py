"""Instance-id PNGs (Penn-Fudan, Cityscapes) as a source: a class file that also says where the data is.

The source is the JSON class file of :mod:`maskrcnn.data.instance_png`
(``classes``, ``instance_to_class``, ``class_ids``; read that module's
docstring) with the folders added, relative to the class file::

    {"classes": ["pedestrian"], "instance_to_class": "single",
     "images": "PNGImages", "masks": "PedMasks"}

Optional keys ``image_suffix``, ``mask_suffix`` and ``mask_extension`` mean
what :class:`~maskrcnn.data.instance_png.InstancePngDataset`'s arguments of
the same names do, with the same defaults (Penn-Fudan's: ``""``,
``"_mask"``, ``".png"``; Cityscapes needs ``"_leftImg8bit"`` and
``"_gtFine_instanceIds"``). The ``images`` argument of :func:`read`, when
given, replaces the file's ``"images"`` (which may then be left out).

The dataset does the pairing and validation; its problems (missing masks,
unpaired images, unreadable masks, size mismatches, unmapped ids) are carried
into the report under its own kinds, naming the image (relative to the image
folder). Then each instance becomes a COCO annotation with a compressed-RLE
mask (``iscrowd`` 0), and each crowd region (a Cityscapes group id of a listed
class) an ``iscrowd`` 1 annotation with an RLE mask, appended after the
instances. ``file_name`` is relative to the image folder; categories are the
class file's ``classes`` in its order (ids 1..K, the dataset's labels + 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..coco import read_json
from ..instance_png import UNREADABLE_MASK, InstancePngDataset, _read_ids
from ..report import DatasetReport
from .common import CocoBuilder, Converted, DatasetError

__all__ = ["detect", "read"]

FORMAT = "instance-png"
_KEY = b'"instance_to_class"'
_OPTIONAL_KEYS = ("image_suffix", "mask_suffix", "mask_extension")


def detect(path: Path) -> bool:
    """A ``.json`` file whose top level is an object with ``"instance_to_class"``; never raises."""
    try:
        if not (path.suffix.lower() == ".json" and path.is_file()):
            return False
        text = path.read_bytes()
        if _KEY not in text:  # cheap test before parsing other formats' (possibly large) JSON
            return False
        data = read_json(path)
    except (OSError, DatasetError):
        return False
    return isinstance(data, dict) and "instance_to_class" in data


def read(path: Path, *, images: Path | None, class_attribute: str | None, split: str | None) -> Converted:
    """Read the class file at ``path`` and the images and masks it names (module docstring)."""
    path = Path(path)
    keys = "'classes', 'instance_to_class', 'images' and 'masks'"
    if path.is_dir():
        raise DatasetError(f"{path}: a folder; give the class file (a JSON object with {keys})")
    spec = read_json(path)
    if not isinstance(spec, dict):
        raise DatasetError(f"{path}: expected a JSON object with {keys}")
    missing = [k for k in ("images", "masks") if k not in spec and not (k == "images" and images is not None)]
    if missing:
        example = {"images": '"images": "<image folder, relative to this file>"',
                   "masks": '"masks": "<mask folder, relative to this file>"'}
        raise DatasetError(f"{path}: no {' or '.join(repr(k) for k in missing)} key; add "
                           f"{', '.join(example[k] for k in missing)}")
    for key in ("images", "masks", *_OPTIONAL_KEYS):
        if key in spec and not isinstance(spec[key], str):
            raise DatasetError(f"{path}: {key!r} must be a string, not {type(spec[key]).__name__}")
    image_dir = images if images is not None else path.parent / spec["images"]
    mask_dir = path.parent / spec["masks"]
    image_source = "the images argument" if images is not None else "'images'"
    for what, folder, source in (("image", image_dir, image_source), ("mask", mask_dir, "'masks'")):
        if not folder.is_dir():
            raise DatasetError(f"{path}: the {what} folder {folder} does not exist; fix {source}")

    options = {k: spec[k] for k in _OPTIONAL_KEYS if k in spec}
    dataset = InstancePngDataset(image_dir, mask_dir, path, **options)
    builder = CocoBuilder(image_dir, classes=dataset.class_names, closed=True)
    _merge(builder.report, dataset.report)

    crowd: list[tuple[int, str, dict[str, Any]]] = []  # (image id, class name, RLE)
    for index in range(len(dataset)):
        # The dataset's records say which ids are instances or crowd; reading them here (rather than
        # dataset[index]) skips decoding the image itself.
        record = dataset._records[index]
        try:
            ids = _read_ids(mask_dir / record.mask)
        except (OSError, ValueError) as exc:  # changed since the dataset read it
            builder.report.add(UNREADABLE_MASK, record.image, None, f"{mask_dir / record.mask}: {exc}")
            continue
        image_id = builder.add_image(image_dir / record.image, record.image, (record.height, record.width))
        if image_id is None:
            continue
        for value, label in zip(record.instance_ids, record.labels, strict=True):
            builder.add_mask(image_id, dataset.class_names[label], ids == value, record.image,
                             f"instance id {value}")
        for value in record.crowd_ids:
            _, label = dataset.class_map.classify(value)
            crowd.append((image_id, dataset.class_names[label], _rle(ids == value)))

    converted = builder.result(FORMAT, path)
    _add_crowd(converted.coco, crowd)
    converted.report.num_crowd = len(crowd)
    return converted


def _merge(report: DatasetReport, other: DatasetReport) -> None:
    """Add ``other``'s problem counts and examples to ``report`` (not its totals)."""
    for kind, count in other.counts.items():
        report.counts[kind] = report.counts.get(kind, 0) + count
        examples = report.examples.setdefault(kind, [])
        room = report.max_examples - len(examples)
        examples.extend(other.examples.get(kind, [])[: max(room, 0)])


def _rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed RLE of a boolean ``(H, W)`` mask, ``counts`` as a string (as JSON stores it)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _add_crowd(coco: dict[str, Any], regions: list[tuple[int, str, dict[str, Any]]]) -> None:
    """Append each crowd region as an ``iscrowd`` 1 annotation with its RLE mask (fresh ids)."""
    category = {c["name"]: c["id"] for c in coco["categories"]}
    next_id = max((a["id"] for a in coco["annotations"]), default=0) + 1
    for image_id, name, rle in regions:
        coco["annotations"].append({
            "id": next_id,
            "image_id": image_id,
            "category_id": category[name],
            "segmentation": rle,
            "area": int(mask_utils.area(rle)),
            "bbox": [round(float(v), 3) for v in mask_utils.toBbox(rle)],
            "iscrowd": 1,
        })
        next_id += 1
