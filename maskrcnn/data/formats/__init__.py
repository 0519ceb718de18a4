"""Annotation formats in and out: LabelMe, VIA, YOLO-seg, CVAT, Pascal VOC and instance-id PNGs.

Every reader turns its source into a COCO instances dict
(:class:`~maskrcnn.data.formats.common.Converted`), which
:class:`~maskrcnn.data.coco.CocoDataset` then validates and serves like any
COCO file; so training, evaluation, ``dataset stats`` and ``dataset show``
take any of them. :func:`read_source` picks the reader (``format="auto"``
detects it from the path), :func:`write_source` writes a COCO dict back out
in a format that can be written.

Each format module has ``detect(path) -> bool`` (cheap: names, a file's
first bytes or top-level keys) and ``read(path, *, images, class_attribute,
split) -> Converted``; the writable ones ``write(coco, image_dir, out) -> Path``
(the path to read back).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ..coco import CocoDataset, read_json
from ..validation import DatasetError
from .common import Converted

# Format name -> its module, in the order auto-detection tries them (COCO first: a COCO
# file is never taken for another). Modules are imported when first used.
_MODULES: dict[str, str] = {
    "coco": "coco_json",
    "via": "via",
    "labelme": "labelme",
    "cvat": "cvat",
    "yolo": "yolo",
    "voc": "voc",
    "instance-png": "instance_png",
}
FORMATS: tuple[str, ...] = tuple(_MODULES)
WRITABLE: tuple[str, ...] = ("labelme", "via", "yolo", "cvat", "voc")


def _module(name: str) -> ModuleType:
    return importlib.import_module(f".{_MODULES[name]}", __name__)


def detect_format(path: str | Path) -> str:
    """The format of ``path`` (a file or folder); ``DatasetError`` naming what was looked for if none fits."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such annotation file or folder")
    if path.is_file() and path.suffix.lower() == ".json":
        read_json(path)  # a JSON file that does not parse: say where, rather than "no format fits"
    for name in FORMATS:
        if _module(name).detect(path):
            return name
    raise DatasetError(
        f"{path}: not a dataset this program can read (looked for COCO, VIA or LabelMe JSON, CVAT XML, "
        f"a YOLO data.yaml or images/ + labels/ folders, a VOC folder with SegmentationObject/, "
        f"an instance-PNG class file); give --format"
    )


def read_source(
    path: str | Path,
    *,
    format: str = "auto",
    images: str | Path | None = None,
    class_attribute: str | None = None,
    split: str | None = None,
) -> Converted:
    """Read a dataset in any known format into a COCO dict.

    ``images``: the folder the images are in, when not where the source
    says (its own folder). ``class_attribute``: the VIA region attribute
    that holds the class. ``split``: the YOLO ``data.yaml`` key (``train``,
    ``val``, ``test``) or the VOC ``ImageSets/Segmentation`` list to read.
    Malformed sources raise ``DatasetError`` (one line); problems of single
    images and shapes are counted in ``Converted.report``.
    """
    path = Path(path)
    name = detect_format(path) if format == "auto" else format
    if name not in _MODULES:
        raise DatasetError(f"--format {format}: not one of auto, {', '.join(FORMATS)}")
    if not path.exists():
        raise DatasetError(f"{path}: no such annotation file or folder")
    return _module(name).read(
        path,
        images=Path(images) if images is not None else None,
        class_attribute=class_attribute,
        split=split,
    )


def write_source(coco: dict[str, Any], image_dir: str | Path, format: str, out: str | Path) -> Path:
    """Write a COCO instances dict (images under ``image_dir``) at ``out``; what to read back."""
    if format not in WRITABLE:
        raise DatasetError(f"--to {format}: cannot write that format; one of {', '.join(WRITABLE)}")
    return _module(format).write(coco, Path(image_dir), Path(out))


def write_coco(converted: Converted, out: str | Path) -> None:
    """Write ``converted.coco`` as a COCO JSON file at ``out`` (atomically); ``file_name`` stays
    relative to ``converted.image_dir``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(converted.coco))
    tmp.replace(out)


def default_split(path: str | Path, format: str, role: str) -> str | None:
    """The split to read for ``role`` (``"train"`` or ``"val"``) when the command line names none.

    A YOLO ``data.yaml`` (or a folder holding one) has its ``train`` and
    ``val`` keys, a YOLO folder its ``images/<role>``; a VOC folder its
    ``ImageSets/Segmentation/<role>.txt`` when there is one (else every
    annotated image). Other formats have no splits (None).
    """
    path = Path(path)
    if format == "yolo" and (
        path.is_file() or (path / "data.yaml").is_file() or (path / "images" / role).is_dir()
    ):
        return role
    if format == "voc" and (Path(path) / "ImageSets" / "Segmentation" / f"{role}.txt").is_file():
        return role
    return None


def align_categories(coco: dict[str, Any], class_names: Sequence[str], category_ids: Sequence[int]) -> None:
    """Give ``coco``'s categories, in place, the ids a model uses for the same class names.

    A converted source numbers its classes by its own list, which differs
    between a training and a validation folder as soon as a class is missing
    from one; scoring a model's detections needs the model's ids. Classes
    the model does not know keep new ids after the model's (their ground
    truth counts as missed).
    """
    by_name = dict(zip(class_names, category_ids, strict=True))
    next_id = max(category_ids, default=0) + 1
    remap: dict[int, int] = {}
    for category in coco["categories"]:
        new = by_name.get(category["name"])
        if new is None:
            new, next_id = next_id, next_id + 1
        remap[category["id"]] = new
        category["id"] = new
    for annotation in coco["annotations"]:
        annotation["category_id"] = remap.get(annotation["category_id"], annotation["category_id"])


def categories_differ(coco: dict[str, Any], class_names: Sequence[str], category_ids: Sequence[int]) -> bool:
    """Whether ``coco`` lists one of the model's class names under another id than the model's."""
    by_name = dict(zip(class_names, category_ids, strict=True))
    return any(
        isinstance(c, dict) and c.get("name") in by_name and c.get("id") != by_name[c["name"]]
        for c in coco.get("categories", [])
    )


def dataset_of(converted: Converted, **dataset_options: Any) -> CocoDataset:
    """A :class:`~maskrcnn.data.coco.CocoDataset` over a read source.

    A COCO file is read by the dataset itself; another format's dict is
    served from memory, the conversion's problems starting the dataset's
    report. ``dataset_options`` go to ``CocoDataset`` (``check_sizes``, ``drop_empty``).
    """
    if converted.format == "coco":
        return CocoDataset(converted.source, converted.image_dir, **dataset_options)
    return CocoDataset(converted.source, converted.image_dir, data=converted.coco, report=converted.report,
                       **dataset_options)


def open_dataset(
    path: str | Path,
    *,
    format: str = "auto",
    images: str | Path | None = None,
    class_attribute: str | None = None,
    split: str | None = None,
    **dataset_options: Any,
) -> CocoDataset:
    """A :class:`~maskrcnn.data.coco.CocoDataset` over any known format (arguments of :func:`read_source`)."""
    converted = read_source(path, format=format, images=images, class_attribute=class_attribute, split=split)
    return dataset_of(converted, **dataset_options)
