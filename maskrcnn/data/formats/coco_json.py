"""COCO instances JSON as a source: read as it is (``CocoDataset`` validates it), images found beside it.

Where the images are, when no folder is given: the JSON file's own folder
when it holds the first listed image, else a folder named after the file
beside it (``train.json`` -> ``train/``, the layout of the balloon set and
of many exports). Otherwise the caller must name the folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..coco import read_json
from ..report import DatasetReport
from .common import Converted, DatasetError

__all__ = ["detect", "image_folder", "read"]

_SNIFF_BYTES = 1 << 16


def detect(path: Path) -> bool:
    """A ``.json`` file whose top level is an object with an ``images`` list (LabelMe and VIA have none)."""
    if not (path.is_file() and path.suffix.lower() == ".json"):
        return False
    try:
        data = read_json(path)
    except DatasetError:
        return False
    return isinstance(data, dict) and isinstance(data.get("images"), list) and (
        "annotations" in data or "categories" in data
    )


def image_folder(json_path: Path, data: dict[str, Any]) -> Path:
    """The folder holding the images of ``data`` (rule in the module docstring); ``DatasetError`` if none."""
    names = [im.get("file_name") for im in data.get("images", []) if isinstance(im, dict)]
    names = [n for n in names if isinstance(n, str) and n]
    candidates = [json_path.parent, json_path.parent / json_path.stem]
    if not names:
        return json_path.parent
    for folder in candidates:
        if (folder / names[0]).is_file():
            return folder
    raise DatasetError(
        f"{json_path}: its images (e.g. {names[0]}) are neither beside it nor in {candidates[1]}/; "
        f"give the folder they are in (--images)"
    )


def read(path: Path, *, images: Path | None, class_attribute: str | None, split: str | None) -> Converted:
    """The file's dict as it is; ``CocoDataset`` validates it (the report here stays empty)."""
    if path.is_dir():
        raise DatasetError(f"{path}: a folder; give the COCO JSON file itself")
    data = read_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a COCO object with 'images', 'annotations' and 'categories'")
    folder = images if images is not None else image_folder(path, data)
    return Converted(coco=data, image_dir=folder, report=DatasetReport(), format="coco", source=path)
