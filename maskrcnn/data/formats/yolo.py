"""YOLO segmentation labels (Ultralytics' layout) -> COCO instances, and back.

A YOLO-seg dataset is a folder of images and, for each image, a ``.txt``
label file with one object per line::

    <class> x1 y1 x2 y2 ...        a polygon (segment), at least 3 points
    <class> cx cy w h              exactly 4 numbers: a box (read as a rectangle polygon)

``<class>`` is a 0-based index into the class names; coordinates are
normalised by the image's width and height (``0 .. 1``), so they are
multiplied by the size read from the image file. Blank lines are ignored;
each line is one instance (YOLO has no way to group several polygons into
one object).

Where the label of an image is (Ultralytics' rule): the last ``/images/``
component of the image's absolute path replaced by ``/labels/``, the suffix
by ``.txt`` (``data/images/train/a.jpg`` -> ``data/labels/train/a.txt``; an
image path without an ``images`` folder has its label beside it). An image
without a label file is a negative (no instances: normal in YOLO). A label
file under the labels folder that matches no image is counted
(``LABEL_WITHOUT_IMAGE``); for splits given as a ``.txt`` list of images
that check is not made (several lists usually share one folder).

Sources:

- A ``data.yaml`` (any ``.yaml``/``.yml``): ``path`` is the dataset root
  (relative to the yaml's folder, or absolute; missing: the yaml's folder;
  a ``path`` under which the split is not found, typically written for
  another machine or for Ultralytics' own datasets folder, falls back to
  the yaml's folder when the split is found there; ``--images`` replaces
  it). ``train``/``val``/``test`` are an image folder (searched
  recursively), a list of them, or a ``.txt`` file listing image
  paths, relative to the root (Ultralytics' ``../`` fallback applies: an
  entry ``../x`` not found is looked up as ``x``; a listed path starting
  with ``./`` is relative to the list file). ``names`` is a list or a dict
  ``{index: name}``; ``nc``, when given, must equal its length. ``split``
  chooses the key (default ``train``).
- A folder with ``images/`` and ``labels/``: all images under ``images/``,
  or ``images/<split>`` when ``split`` is given. Class names from
  ``classes.txt`` or ``obj.names`` (one per line, blank lines skipped) in
  the folder, in ``labels/`` or in the folder's parent, else from the
  ``names`` of a ``data.yaml``/``dataset.yaml`` in the folder; with none of
  these the names are ``"0"``, ``"1"``, ... up to the largest class index
  the labels use. A folder without ``images/`` + ``labels/`` but with a
  ``data.yaml`` is read through that yaml.

``file_name`` of the images is relative to the dataset root (a yaml's
``path``, or the folder) or to ``--images`` when given (for a yaml the new
root; for a folder only what ``file_name`` is relative to, the images
staying in its ``images/``). Problems of a label file are reported under its
path relative to that folder, with the line: ``BAD_SHAPE`` for a class
index that is not an integer, a value that is not a number, or an odd
number of coordinates; ``UNKNOWN_CLASS`` for an index out of range;
``SHORT_POLYGON`` for fewer than 3 points; ``BAD_FILE`` for a label file
that is not UTF-8 text.

Writing (:func:`write`): ``out/data.yaml`` (``train`` and ``val`` both
``images``: a COCO dict has no split, so validation reads the training
images; ``names`` as a list; no ``path`` key, since Ultralytics resolves a
relative ``path`` against its working or datasets folder but a missing one
against the yaml's own folder), ``out/images/<file_name>`` (hard links,
copies where linking fails; a leading ``images/`` of ``file_name`` is
dropped so that a YOLO dataset read and written again keeps its layout) and
``out/labels/...txt`` one line per polygon part (class index, then ``x y``
pairs normalised with 6 decimals, clipped to the image as Ultralytics
rejects coordinates outside ``0 .. 1``). Parts of a multi-part instance
become separate lines, so they come back as separate instances. Boxes
without a segmentation are written as box lines. YOLO cannot store bitmaps:
RLE instances (and crowd regions) are skipped with a warning naming the
count. Images without annotations get an empty label file.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..images import IMAGE_EXTENSIONS
from ..validation import short
from .common import (
    BAD_FILE,
    BAD_SHAPE,
    LABEL_WITHOUT_IMAGE,
    UNKNOWN_CLASS,
    CocoBuilder,
    Converted,
    DatasetError,
    place_file,
    rectangle,
    relative_name,
)

__all__ = ["detect", "label_path", "read", "write"]

FORMAT = "yolo"
YAML_SUFFIXES = (".yaml", ".yml")
SPLITS = ("train", "val", "test")
DEFAULT_SPLIT = "train"
# Yaml files a dataset folder may hold, in the order they are tried.
DATA_YAML_NAMES = ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml")
# Class-name files (one name per line) of darknet, labelImg and CVAT's YOLO export.
NAME_FILES = ("classes.txt", "obj.names")
# Normalised coordinates keep 6 decimals: 1e-6 of a 10000-pixel side is 0.01 pixel.
COORD_DECIMALS = 6
# A yaml file larger than this is not a dataset description (detect reads no further).
MAX_YAML_BYTES = 1 << 20


# ------------------------------------------------------------------- detect


def detect(path: Path) -> bool:
    """A ``.yaml``/``.yml`` with ``names`` or ``train``, or a folder with images/ + labels/ or such a yaml."""
    try:
        if path.is_file():
            return path.suffix.lower() in YAML_SUFFIXES and _looks_like_data_yaml(path)
        if path.is_dir():
            if (path / "images").is_dir() and (path / "labels").is_dir():
                return True
            return any(_looks_like_data_yaml(path / name) for name in DATA_YAML_NAMES)
    except OSError:
        return False
    return False


def _looks_like_data_yaml(path: Path) -> bool:
    try:
        if not path.is_file() or path.stat().st_size > MAX_YAML_BYTES:
            return False
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception:  # any YAML, decoding or OS error: not ours (detect never raises)
        return False
    return isinstance(data, dict) and ("names" in data or "train" in data)


# --------------------------------------------------------------------- read


def read(path: Path, *, images: Path | None, class_attribute: str | None, split: str | None) -> Converted:
    """Read a YOLO-seg dataset (a data.yaml or a folder; see the module docstring)."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in YAML_SUFFIXES:
            raise DatasetError(f"{path}: not a YOLO data.yaml; give the dataset's .yaml file or its folder "
                               f"(with images/ and labels/)")
        return _read_yaml(path, images, split)
    if (path / "images").is_dir() and (path / "labels").is_dir():
        return _read_folder(path, images, split)
    for name in DATA_YAML_NAMES:
        if (path / name).is_file():
            return _read_yaml(path / name, images, split)
    raise DatasetError(f"{path}: no images/ and labels/ folders and no data.yaml; give the dataset's "
                       f"data.yaml or the folder holding images/ and labels/")


def label_path(image: Path) -> Path:
    """The label file of ``image`` (Ultralytics: last ``/images/`` -> ``/labels/``, suffix -> ``.txt``)."""
    text = os.path.abspath(image)
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if images in text:
        text = labels.join(text.rsplit(images, 1))
    return Path(text).with_suffix(".txt")


def _label_dir(folder: Path) -> Path:
    """The folder holding the labels of the images under ``folder`` (the same rule, on a folder)."""
    text = os.path.abspath(folder) + os.sep
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if images in text:
        text = labels.join(text.rsplit(images, 1))
    return Path(text)


def _load_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot be read ({e}); check the file") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        problem = " ".join(str(problem).split())
        raise DatasetError(f"{path}: not valid YAML{where}: {problem}; fix the file") from None


def _names(data: dict[str, Any], source: Path) -> list[str]:
    """The class names of a data.yaml, index order; ``DatasetError`` when missing or inconsistent."""
    if "names" not in data or data["names"] is None:
        raise DatasetError(f"{source}: no 'names': list the class names (names: [cat, dog] or "
                           f"names: {{0: cat, 1: dog}}) so that class indices can be read")
    raw = data["names"]
    if isinstance(raw, dict):
        indexed: dict[int, str] = {}
        for key, value in raw.items():
            index = _class_index(str(key))
            if index is None or index < 0:
                raise DatasetError(f"{source}: names: key {short(key)} is not a class index (0, 1, ...); "
                                   f"write names as {{0: cat, 1: dog}} or as a list")
            indexed[index] = str(value)
        missing = sorted(set(range(len(indexed))) - set(indexed))
        if missing:
            raise DatasetError(f"{source}: names: indices must be 0..{len(indexed) - 1} but {missing[0]} is "
                               f"missing; number the classes without gaps")
        names = [indexed[i] for i in range(len(indexed))]
    elif isinstance(raw, list):
        names = [str(n) for n in raw]
    else:
        raise DatasetError(f"{source}: names: {short(raw)} is neither a list nor a dict; "
                           f"write names: [cat, dog] or names: {{0: cat, 1: dog}}")
    if not names:
        raise DatasetError(f"{source}: names: empty; list the class names")
    _check_unique(names, f"{source}: names")
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise DatasetError(f"{source}: nc: {short(nc)} but names has {len(names)} entries; make them agree "
                           f"(or drop nc)")
    return names


def _check_unique(names: Sequence[str], where: str) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise DatasetError(f"{where}: {name!r} is both class {seen[name]} and class {i}; "
                               f"class names must be unique")
        seen[name] = i


def _read_yaml(path: Path, images: Path | None, split: str | None) -> Converted:
    data = _load_yaml(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: the top level is {type(data).__name__}, not a mapping; a YOLO data.yaml "
                           f"has keys path, train, val, names")
    names = _names(data, path)
    key = split or DEFAULT_SPLIT
    if not data.get(key):
        present = ", ".join(str(k) for k in _split_keys(data)) or "none"
        raise DatasetError(f"{path}: no {key!r} images (its image keys: {present}); choose one with --split")
    entries = data[key] if isinstance(data[key], list) else [data[key]]
    for entry in entries:
        if not isinstance(entry, str):
            raise DatasetError(f"{path}: {key}: {short(entry)} is not a path; give a folder, a list of "
                               f"folders or a .txt list of images")
    root, resolved = _resolve_entries(path, data.get("path"), images, key, entries)
    image_paths: list[Path] = []
    label_dirs: list[Path] = []
    for entry_path in resolved:
        if entry_path.is_dir():
            image_paths.extend(_list_images(entry_path))
            label_dirs.append(_label_dir(entry_path))
        else:
            image_paths.extend(_read_image_list(entry_path, root))
    return _build(path, root, image_paths, names, label_dirs)


def _split_keys(data: dict[str, Any]) -> list[Any]:
    """Keys of a data.yaml that name images (train, val, test and the like)."""
    return [
        k for k, v in data.items()
        if k not in ("path", "names", "nc", "download") and v
        and (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)))
    ]


def _resolve_entries(
    source: Path, declared: Any, images: Path | None, key: str, entries: Sequence[str]
) -> tuple[Path, list[Path]]:
    """The dataset root and the paths of ``entries`` under it (rules in the module docstring)."""
    if images is not None:
        roots = [Path(images)]
    elif declared:
        root = Path(str(declared))
        roots = list(dict.fromkeys([root if root.is_absolute() else source.parent / root, source.parent]))
    else:
        roots = [source.parent]
    for root in roots:
        found = [_resolve_entry(root, entry) for entry in entries]
        if all(p is not None for p in found):
            return root, [p for p in found if p is not None]
    missing = next(e for e in entries if _resolve_entry(roots[0], e) is None)
    raise DatasetError(f"{source}: {key}: no folder or image list {missing!r} under {roots[0]}; fix 'path' "
                       f"or {key!r} in the yaml, or give the dataset root (--images)")


def _resolve_entry(root: Path, entry: str) -> Path | None:
    """``entry`` under ``root`` (Ultralytics' fallback: a missing ``../x`` is looked up as ``x``)."""
    candidate = Path(entry) if Path(entry).is_absolute() else root / entry
    if candidate.exists():
        return candidate
    if entry.startswith("../"):
        candidate = root / entry[3:]
        if candidate.exists():
            return candidate
    return None


def _read_image_list(path: Path, root: Path) -> list[Path]:
    """The images a ``.txt`` split file lists (absolute, ``./`` = beside the list, else under ``root``)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot be read as a list of images ({e}); check the file") from None
    images: list[Path] = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if Path(line).is_absolute():
            images.append(Path(line))
        elif line.startswith("./"):
            images.append(path.parent / line[2:])
        else:
            images.append(root / line)
    return images


def _list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, by suffix, hidden files skipped), sorted by path."""
    found = [
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(found, key=lambda p: p.as_posix())


def _read_folder(folder: Path, images: Path | None, split: str | None) -> Converted:
    image_root = folder / "images"
    if split:
        if not (image_root / split).is_dir():
            subfolders = sorted(d.name for d in image_root.iterdir() if d.is_dir())
            has = ", ".join(subfolders) if subfolders else "no split subfolders"
            raise DatasetError(f"{folder}: no images/{split}/ folder (images/ has {has}); choose one with "
                               f"--split, or leave --split out to read every image")
        image_root = image_root / split
    names = _folder_names(folder)
    return _build(folder, images if images is not None else folder, _list_images(image_root), names,
                  [_label_dir(image_root)])


def _folder_names(folder: Path) -> list[str] | None:
    """Class names of a dataset folder (name files, then a yaml's names); None when there are none."""
    for candidate in (
        folder / "classes.txt", folder / "obj.names", folder / "labels" / "classes.txt",
        folder.parent / "classes.txt", folder.parent / "obj.names",
    ):
        if candidate.is_file():
            try:
                lines = candidate.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise DatasetError(f"{candidate}: cannot be read as class names ({e}); "
                                   f"write one name per line") from None
            names = [line.strip() for line in lines if line.strip()]
            if names:
                _check_unique(names, str(candidate))
                return names
    for name in DATA_YAML_NAMES:
        candidate = folder / name
        if candidate.is_file():
            data = _load_yaml(candidate)
            if isinstance(data, dict) and data.get("names") is not None:
                return _names(data, candidate)
    return None


# -------------------------------------------------------------------- build


def _class_index(token: str) -> int | None:
    """``token`` as an integer class index (``"2"`` or ``"2.0"``, as Ultralytics reads it); None if not."""
    try:
        return int(token)
    except ValueError:
        pass
    try:
        value = float(token)
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value.is_integer() else None


def _largest_class(label_files: Iterable[Path]) -> int:
    """The largest class index used in ``label_files`` (-1 when none), for datasets without names."""
    largest = -1
    for label in label_files:
        try:
            lines = label.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue  # reported when the file is read for its image
        for line in lines:
            tokens = line.split()
            index = _class_index(tokens[0]) if tokens else None
            if index is not None:
                largest = max(largest, index)
    return largest


def _build(
    source: Path,
    image_dir: Path,
    image_paths: Sequence[Path],
    names: list[str] | None,
    label_dirs: Sequence[Path],
) -> Converted:
    labels = {image: label_path(image) for image in image_paths}
    if names is None:
        # No class list: name the classes by index, up to the largest index used.
        existing = [lbl for lbl in dict.fromkeys(labels.values()) if lbl.is_file()]
        names = [str(i) for i in range(_largest_class(existing) + 1)]
    builder = CocoBuilder(image_dir, classes=names, closed=True)
    for image in image_paths:
        image_id = builder.add_image(image, relative_name(image, image_dir))
        if image_id is None:
            continue
        label = labels[image]
        if label.is_file():
            _read_label(builder, image_id, label, relative_name(label, image_dir), names)

    expected = {os.path.abspath(lbl) for lbl in labels.values()}
    scanned: set[str] = set()
    for folder in dict.fromkeys(label_dirs):
        if not folder.is_dir():
            continue
        for label in sorted(folder.rglob("*.txt"), key=lambda p: p.as_posix()):
            key = os.path.abspath(label)
            if label.name in NAME_FILES or key in expected or key in scanned:
                continue
            scanned.add(key)
            builder.report.add(
                LABEL_WITHOUT_IMAGE, relative_name(label, image_dir), None,
                f"no image for this label file (an image {label.stem}.* where the labels/ -> images/ "
                f"rule puts it)",
            )
    return builder.result(FORMAT, source)


def _read_label(builder: CocoBuilder, image_id: int, label: Path, file_name: str, names: list[str]) -> None:
    """Add the instances of one label file, each problem counted under ``file_name`` and its line."""
    try:
        lines = label.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        builder.report.add(BAD_FILE, file_name, None, f"cannot be read as text: {e}")
        return
    height, width = builder.image_size(image_id)
    scale = np.array([width, height], dtype=np.float64)
    for number, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"line {number}"
        index = _class_index(tokens[0])
        if index is None:
            builder.report.add(BAD_SHAPE, file_name, None,
                               f"{where}: class index {short(tokens[0])} is not an integer")
            continue
        try:
            values = [float(t) for t in tokens[1:]]
        except ValueError:
            bad = next(t for t in tokens[1:] if not _is_float(t))
            builder.report.add(BAD_SHAPE, file_name, None, f"{where}: {short(bad)} is not a number")
            continue
        if len(values) % 2:
            builder.report.add(
                BAD_SHAPE, file_name, None,
                f"{where}: {len(values)} coordinates, an odd number (expected 'class x1 y1 x2 y2 ...' "
                f"or 'class cx cy w h')",
            )
            continue
        if not 0 <= index < len(names):
            builder.report.add(UNKNOWN_CLASS, file_name, None,
                               f"{where}: class index {index} is out of range ({len(names)} names)")
            continue
        if len(values) == 4:  # a box: centre and size
            cx, cy, w, h = values
            points = rectangle(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2) * scale
        else:
            points = np.asarray(values, dtype=np.float64).reshape(-1, 2) * scale
        builder.add_polygons(image_id, names[index], [points], file_name, where)


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


# -------------------------------------------------------------------- write


def write(coco: dict[str, Any], image_dir: Path, out: Path) -> Path:
    """Write ``coco`` (images under ``image_dir``) as a YOLO-seg dataset in folder ``out``; its data.yaml.

    See the module docstring for the layout and what cannot be written.
    """
    out = Path(out)
    image_dir = Path(image_dir)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder; give a folder for the YOLO dataset")
    categories = sorted(coco.get("categories", []), key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(categories)}
    names = [str(c["name"]) for c in categories]
    _check_unique(names, "categories")
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in coco.get("annotations", []):
        by_image.setdefault(ann.get("image_id"), []).append(ann)

    skipped = {"rle": 0, "crowd": 0, "unknown category": 0, "outside or degenerate part": 0}
    missing_images: list[str] = []
    destinations: dict[Path, str] = {}
    label_files: dict[Path, str] = {}
    for image in coco.get("images", []):
        file_name = str(image["file_name"])
        relative = _destination(file_name)
        destination = out / "images" / relative
        label = label_path(destination)
        for seen, path in ((destinations, destination), (label_files, label)):
            if path in seen:
                raise DatasetError(f"{out}: images {seen[path]!r} and {file_name!r} would both be written to "
                                   f"{path}; rename one of them")
            seen[path] = file_name
        source = image_dir / file_name
        if source.is_file():
            place_file(source, destination)
        else:
            missing_images.append(file_name)
        width, height = float(image["width"]), float(image["height"])
        lines: list[str] = []
        for ann in by_image.get(image["id"], []):
            if ann.get("category_id") not in index:
                skipped["unknown category"] += 1
                continue
            if ann.get("iscrowd"):
                skipped["crowd"] += 1
                continue
            lines.extend(_label_lines(ann, index[ann["category_id"]], width, height, skipped))
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    (out / "images").mkdir(parents=True, exist_ok=True)
    data_yaml = out / "data.yaml"
    header = ("# YOLO-seg dataset written by maskrcnn. No 'path': the dataset root is this file's folder.\n"
              "# val is the same images as train (the source had no split).\n")
    body = yaml.safe_dump({"train": "images", "val": "images", "nc": len(names), "names": names},
                          sort_keys=False, allow_unicode=True)
    data_yaml.write_text(header + body, encoding="utf-8")

    if skipped["rle"]:
        warnings.warn(f"YOLO cannot store bitmap masks: {skipped['rle']} RLE instance(s) skipped",
                      stacklevel=2)
    others = {k: v for k, v in skipped.items() if v and k != "rle"}
    if others:
        what = ", ".join(f"{v} {k}" for k, v in others.items())
        warnings.warn(f"not written to YOLO: {what}", stacklevel=2)
    if missing_images:
        warnings.warn(f"{len(missing_images)} image(s) not found under {image_dir} "
                      f"(e.g. {missing_images[0]}); their labels were written without them", stacklevel=2)
    return data_yaml


def _destination(file_name: str) -> Path:
    """Where ``file_name`` goes under ``out/images`` (a leading ``images/`` dropped; never outside)."""
    parts = Path(file_name.replace("\\", "/")).parts
    if not parts or Path(file_name).is_absolute() or ".." in parts:
        raise DatasetError(f"file_name {file_name!r}: not a path inside the image folder; "
                           f"YOLO needs the images under its own images/ folder")
    if len(parts) > 1 and parts[0] == "images":
        parts = parts[1:]
    return Path(*parts)


def _label_lines(
    ann: dict[str, Any], class_index: int, width: float, height: float, skipped: dict[str, int]
) -> list[str]:
    """The YOLO lines of one annotation: one per polygon part, a box line without a segmentation."""
    segmentation = ann.get("segmentation")
    scale = np.array([width, height], dtype=np.float64)
    if isinstance(segmentation, dict):
        skipped["rle"] += 1
        return []
    if not segmentation:
        bbox = ann.get("bbox")
        if not bbox or len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0:
            skipped["outside or degenerate part"] += 1
            return []
        x, y, w, h = (float(v) for v in bbox)
        corners = _clip(rectangle(x, y, x + w, y + h), width, height)
        if len(corners) < 3:
            skipped["outside or degenerate part"] += 1
            return []
        (x1, y1), (x2, y2) = corners.min(axis=0) / scale, corners.max(axis=0) / scale
        values = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        return [f"{class_index} " + " ".join(f"{v:.{COORD_DECIMALS}f}" for v in values)]
    lines = []
    for part in segmentation:
        points = np.asarray(part, dtype=np.float64)
        if points.size % 2 or points.size < 6:
            skipped["outside or degenerate part"] += 1
            continue
        points = _clip(points.reshape(-1, 2), width, height)
        if len(points) < 3:
            skipped["outside or degenerate part"] += 1
            continue
        normalised = np.clip(points / scale, 0.0, 1.0).reshape(-1)
        lines.append(f"{class_index} " + " ".join(f"{v:.{COORD_DECIMALS}f}" for v in normalised))
    return lines


def _clip(points: np.ndarray, width: float, height: float) -> np.ndarray:
    """``points`` ``(P, 2)`` clipped to the image ``[0, W] x [0, H]`` (Sutherland-Hodgman).

    The region inside the image is unchanged; only what lies outside (which
    YOLO's normalised coordinates cannot hold) is cut away.
    """
    if len(points) and points.min() >= 0 and points[:, 0].max() <= width and points[:, 1].max() <= height:
        return points
    for axis, limit, keep_below in ((0, 0.0, False), (0, width, True), (1, 0.0, False), (1, height, True)):
        if not len(points):
            break
        inside = points[:, axis] <= limit if keep_below else points[:, axis] >= limit
        kept: list[np.ndarray] = []
        for i in range(len(points)):
            current, previous = points[i], points[i - 1]
            if inside[i] != inside[i - 1]:
                t = (limit - previous[axis]) / (current[axis] - previous[axis])
                kept.append(previous + t * (current - previous))
            if inside[i]:
                kept.append(current)
        points = np.asarray(kept, dtype=np.float64).reshape(-1, 2)
    return points
