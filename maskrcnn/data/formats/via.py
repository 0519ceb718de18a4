"""VGG Image Annotator (VIA 1.x and 2.x) JSON in and out.

Two files of VIA (https://www.robots.ox.ac.uk/~vgg/software/via/) are read:

- the annotation export (``via_region_data.json``; VIA 1.x "Save as JSON",
  VIA 2 "Export Annotations (as json)"): an object keyed by
  ``<filename><file size in bytes>``, each value ``{"filename", "size",
  "regions", "file_attributes"}``. ``regions`` is a list (VIA 2) or an
  object keyed ``"0"``, ``"1"``, ... (VIA 1.x, e.g. the Matterport balloon
  set);
- the VIA 2 project (``via_project*.json``): ``{"_via_settings",
  "_via_img_metadata": <the export above>, "_via_attributes": {"region":
  {name: {"type", "options", ...}}, "file": {...}}, "_via_image_id_list"}``.

The source is such a file, or a folder holding exactly one. VIA 3 projects
(``project``, ``file``, ``metadata`` with ``vid``) are a different model and
are refused with a one-line :class:`DatasetError`.

Regions: ``{"shape_attributes": {"name": ...}, "region_attributes": {...}}``.
``polygon`` (``all_points_x``, ``all_points_y``), ``rect`` (``x``, ``y``,
``width``, ``height``), ``circle`` (``cx``, ``cy``, ``r``) and ``ellipse``
(``cx``, ``cy``, ``rx``, ``ry``, ``theta`` in radians, clockwise on
screen) are regions; ``polyline`` and ``point`` enclose no area
(``NOT_A_REGION``). VIA stores whole pixels; they are taken as they are.
Each region is one instance (VIA has no groups). Problems are counted under
the JSON file's name, each naming the region by its index or key in the
file (from 0) and the image (``"region 2 of 'a.jpg'"``).

The class of a region is the region attribute ``class_attribute``; when
None, the one attribute the project declares or the regions use, or among
several the first named (any case) ``class``, ``label``, ``name``,
``category`` or ``type``, else the only one the project declares with a
list of choices (dropdown, radio, checkbox). When no region has any attribute and the project
declares none (the balloon set), every region is one class, ``"object"``.
An attribute value is a string (text, radio, dropdown) or, for a checkbox,
``{option_id: true}`` with exactly one option set. When the project
declares options for the attribute, they are the class list in their order
and other values are ``UNKNOWN_CLASS``; otherwise the class names are the
values, sorted.

Images: ``filename`` is relative to the JSON file's folder (or to
``images`` when given; then a URL's last part is looked for there too);
the project's ``default_filepath`` is tried when the image is not there. A
URL with no local copy is a ``MISSING_IMAGE``. The image's size is read from
the file (VIA's ``size`` is the file's length in bytes).

The writer (:func:`write`) makes a VIA 2.0 project: polygons become
``polygon`` regions with whole-pixel vertices (rounded half up, as VIA's
``Math.round``), one region per part (so an instance of several parts reads
back as several instances), an annotation without segmentation its box as
a ``rect``; the class is the region attribute ``class``, a ``dropdown``
whose options are the category names. VIA has no bitmap region: RLE masks
and crowd annotations are left out with a warning saying how many.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..coco import MISSING_IMAGE, read_json
from ..validation import as_number, as_numbers, short
from .common import (
    BAD_FILE,
    BAD_SHAPE,
    NO_CLASS,
    NOT_A_REGION,
    CocoBuilder,
    Converted,
    DatasetError,
    ellipse,
    rectangle,
)

__all__ = ["detect", "read", "write"]

FORMAT = "via"
# The single class of a dataset whose regions have no attribute at all.
DEFAULT_CLASS = "object"
# Attribute names taken for the class, in this order, when the regions have several.
CLASS_ATTRIBUTE_NAMES = ("class", "label", "name", "category", "type")
# Attribute types whose values come from a declared list of options.
CHOICE_TYPES = frozenset({"dropdown", "radio", "checkbox", "image_dropdown"})
# What the writer puts in _via_data_format_version (VIA 2.0.x saves this).
VIA_DATA_FORMAT_VERSION = "2.0.10"
NON_REGION_SHAPES = frozenset({"polyline", "point"})
# A folder's JSON files are sniffed (first bytes) before parsing; detect() looks at this many at most.
SNIFF_BYTES = 1 << 16
DETECT_MAX_FILES = 20
_SNIFF_KEYS = (b'"_via_', b'"filename"', b'"vid"', b'"pid"')
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


# --------------------------------------------------------------------------- detection


def _kind(data: Any) -> str:
    """``"project"``, ``"regions"`` (an export), ``"via3"`` or ``""`` for a decoded JSON value."""
    if not isinstance(data, dict):
        return ""
    if "_via_img_metadata" in data:
        return "project"
    if {"project", "file", "metadata"} <= data.keys():
        return "via3"
    first = next(iter(data.values()), None)
    if isinstance(first, dict) and "filename" in first and "regions" in first:
        return "regions"
    return ""


def _sniff(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    return any(key in head for key in _SNIFF_KEYS)


def _folder_json(folder: Path) -> Iterator[Path]:
    """The folder's own ``.json`` files (not its subfolders'), names with 'via' first, then sorted."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".json" and not p.name.startswith("."))
    return iter(sorted(files, key=lambda p: "via" not in p.name.lower()))


def detect(path: Path) -> bool:
    """A VIA 1.x/2.x JSON file (or a VIA 3 one, so that reading it says why not), or a folder with one."""
    try:
        if path.is_file():
            try:
                return path.suffix.lower() == ".json" and _kind(read_json(path)) != ""
            except DatasetError:
                return False
        if not path.is_dir():
            return False
        for count, file in enumerate(_folder_json(path)):
            if count >= DETECT_MAX_FILES:
                break
            try:
                if _sniff(file) and _kind(read_json(file)):
                    return True
            except (OSError, DatasetError):
                continue
    except OSError:
        return False
    return False


# ------------------------------------------------------------------------------ reading


def _source_file(path: Path) -> tuple[Path, Any]:
    """The VIA JSON of ``path`` (itself, or the one VIA JSON in the folder) and its decoded value;
    ``DatasetError`` when there is none or several, or it is not JSON."""
    if path.is_file():
        return path, read_json(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: no such file or folder")
    found = []
    for file in _folder_json(path):
        try:
            if not _sniff(file):
                continue
        except OSError:
            continue
        data = read_json(file)  # a VIA-looking file that is not JSON raises, naming it
        if _kind(data):
            found.append((file, data))
    if not found:
        raise DatasetError(f"{path}: no VIA JSON file (via_region_data.json or a VIA 2 project) in it; "
                           f"give the file or --format")
    if len(found) > 1:
        names = ", ".join(file.name for file, _ in found)
        raise DatasetError(f"{path}: several VIA JSON files ({names}); give the one to read")
    return found[0]


def read(path: Path, *, images: Path | None, class_attribute: str | None, split: str | None) -> Converted:
    """Read a VIA JSON file or a folder holding one (conventions in the module docstring)."""
    path = Path(path)
    file, data = _source_file(path)
    kind = _kind(data)
    if kind == "via3":
        raise DatasetError(f"{file}: a VIA 3 project ('project', 'file', 'metadata'); VIA 3 is not "
                           f"supported: export the annotations as VIA 2 JSON (or COCO) and read that")
    if not kind:
        raise DatasetError(f"{file}: not a VIA file (expected '_via_img_metadata' or entries with 'filename' "
                           f"and 'regions'); give --format")
    metadata = data["_via_img_metadata"] if kind == "project" else data
    if not isinstance(metadata, dict):
        raise DatasetError(f"{file}: '_via_img_metadata' is {short(metadata)}, not an object of images; "
                           f"re-save the project in VIA 2")
    declared = _declared_attributes(data)
    source = file.name
    image_dir = images if images is not None else file.parent
    early = _Deferred()
    entries = list(_entries(data, metadata, source, early))
    attribute = _class_attribute(file, entries, declared, class_attribute)
    options = _options(declared.get(attribute)) if attribute is not None else []
    builder = CocoBuilder(image_dir=image_dir, classes=options, closed=bool(options))
    early.replay(builder)
    default_path = _default_filepath(data)
    for filename, regions in entries:
        image = _image_path(filename, file.parent, images, default_path)
        if image is None:
            builder.report.add(MISSING_IMAGE, source, None,
                               f"{filename!r} is a URL; download the images and give their folder (--images)")
            continue
        image_id = builder.add_image(image, source)
        if image_id is None:
            continue
        for rid, region in regions:
            where = f"region {rid} of {filename!r}"
            _read_region(builder, image_id, region, attribute, source, where)
    return builder.result(FORMAT, file)


class _Deferred:
    """Problems found before the builder exists (it needs the class list first)."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str, str]] = []

    def add(self, kind: str, file_name: str, detail: str) -> None:
        self.problems.append((kind, file_name, detail))

    def replay(self, builder: CocoBuilder) -> None:
        for kind, file_name, detail in self.problems:
            builder.report.add(kind, file_name, None, detail)


def _declared_attributes(data: dict[str, Any]) -> dict[str, Any]:
    """The project's region attributes ``{name: definition}`` ({} for an export)."""
    attributes = data.get("_via_attributes")
    region = attributes.get("region") if isinstance(attributes, dict) else None
    return region if isinstance(region, dict) else {}


def _options(definition: Any) -> list[str]:
    """The option ids an attribute declares, in order ([] for a text attribute or none)."""
    options = definition.get("options") if isinstance(definition, dict) else None
    return [str(k) for k in options] if isinstance(options, dict) else []


def _default_filepath(data: dict[str, Any]) -> Path | None:
    """The project's ``_via_settings.core.default_filepath`` when it is a local folder."""
    settings = data.get("_via_settings")
    core = settings.get("core") if isinstance(settings, dict) else None
    value = core.get("default_filepath") if isinstance(core, dict) else None
    if isinstance(value, str) and value and not _URL.match(value) and Path(value).is_dir():
        return Path(value)
    return None


def _entries(
    data: dict[str, Any], metadata: dict[str, Any], source: str, report: _Deferred
) -> Iterator[tuple[str, list[tuple[str, Any]]]]:
    """``(filename, [(region id, region), ...])`` per well-formed image entry, in the project's order."""
    keys = list(metadata)
    listed = data.get("_via_image_id_list")
    if isinstance(listed, list):
        order = [k for k in listed if isinstance(k, str) and k in metadata]
        keys = list(dict.fromkeys(order + keys))
    for key in keys:
        entry = metadata[key]
        if not isinstance(entry, dict):
            report.add(BAD_FILE, source, f"entry {key!r}: {short(entry)} is not an object")
            continue
        filename = entry.get("filename")
        if not isinstance(filename, str) or not filename.strip():
            report.add(BAD_FILE, source, f"entry {key!r}: 'filename' is {short(filename)}")
            continue
        regions = entry.get("regions")
        if isinstance(regions, list):  # VIA 2
            yield filename, [(str(i), r) for i, r in enumerate(regions)]
        elif isinstance(regions, dict):  # VIA 1.x: {"0": region, "1": region, ...}
            ids = sorted(regions, key=lambda k: (0, int(k), "") if k.isdigit() else (1, 0, k))
            yield filename, [(k, regions[k]) for k in ids]
        else:
            report.add(BAD_FILE, source, f"entry {key!r}: 'regions' is {short(regions)}, not a list")


def _region_attributes(region: Any) -> dict[str, Any]:
    attributes = region.get("region_attributes") if isinstance(region, dict) else None
    return attributes if isinstance(attributes, dict) else {}


def _class_attribute(
    file: Path, entries: list[tuple[str, list[tuple[str, Any]]]], declared: dict[str, Any], given: str | None
) -> str | None:
    """The region attribute that holds the class (None: one class for all); rule in the module docstring."""
    used: dict[str, None] = {}
    count = 0
    for _, regions in entries:
        for _, region in regions:
            count += 1
            used.update(dict.fromkeys(_region_attributes(region)))
    keys = list(dict.fromkeys([*declared, *used]))
    listed = ", ".join(repr(k) for k in keys) or "none"
    if given is not None:
        if count and given not in used:
            raise DatasetError(f"{file}: --class-attribute {given!r}: no region has it (region attributes: "
                               f"{listed}); give one of those")
        return given
    if not keys:
        return None
    if len(keys) == 1:
        return keys[0]
    for name in CLASS_ATTRIBUTE_NAMES:
        for key in keys:
            if key.lower() == name:
                return key
    # A project that declares exactly one attribute with a list of choices (dropdown, radio,
    # checkbox): that list is the classes, the others are free text or flags.
    choices = [
        k for k, spec in declared.items()
        if isinstance(spec, dict) and spec.get("type") in CHOICE_TYPES
        and isinstance(spec.get("options"), dict) and spec["options"]
    ]
    if len(choices) == 1:
        return choices[0]
    raise DatasetError(f"{file}: regions have several attributes ({listed}) and none is named class, label, "
                       f"name, category or type, nor is exactly one a list of choices; "
                       f"give --class-attribute")


def _image_path(filename: str, folder: Path, images: Path | None, default: Path | None) -> Path | None:
    """The local file of an image entry (the first candidate that exists, else the one it names);
    None for a URL with no local copy."""
    if _URL.match(filename):
        if images is not None:
            local = images / filename.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
            if local.is_file():
                return local
        return None
    named = (images if images is not None else folder) / filename
    if not named.is_file() and default is not None and (default / filename).is_file():
        return default / filename
    return named


def _read_region(
    builder: CocoBuilder, image_id: int, region: Any, attribute: str | None, source: str, where: str
) -> None:
    if not isinstance(region, dict):
        builder.report.add(BAD_SHAPE, source, None, f"{where}: {short(region)} is not an object")
        return
    shape = region.get("shape_attributes")
    name = shape.get("name") if isinstance(shape, dict) else None
    if not isinstance(shape, dict) or not isinstance(name, str):
        builder.report.add(BAD_SHAPE, source, None, f"{where}: no shape_attributes with a 'name'")
        return
    if name in NON_REGION_SHAPES:
        builder.report.add(NOT_A_REGION, source, None, f"{where}: a {name}, which encloses no area")
        return
    polygon, problem = _polygon(name, shape)
    if polygon is None:
        builder.report.add(BAD_SHAPE, source, None, f"{where}: {problem}")
        return
    if attribute is None:
        class_name: str | None = builder.class_name(DEFAULT_CLASS, source, where)
    else:
        value = _region_attributes(region).get(attribute)
        class_name = _class_value(builder, value, attribute, source, where)
    if class_name is not None:
        builder.add_polygons(image_id, class_name, [polygon], source, where)


def _polygon(name: str, shape: dict[str, Any]) -> tuple[np.ndarray | None, str]:
    """The polygon ``(P, 2)`` of a VIA region shape, or None and what is wrong."""
    if name == "polygon":
        xs, ys = as_numbers(shape.get("all_points_x")), as_numbers(shape.get("all_points_y"))
        if xs is None or ys is None:
            return None, "all_points_x/all_points_y missing or not lists of numbers"
        if len(xs) != len(ys):
            return None, f"{len(xs)} all_points_x but {len(ys)} all_points_y"
        return np.stack([np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)], axis=1), ""
    fields = {"rect": ("x", "y", "width", "height"), "circle": ("cx", "cy", "r"),
              "ellipse": ("cx", "cy", "rx", "ry")}.get(name)
    if fields is None:
        return None, f"unknown shape {short(name)}"
    values = [as_number(shape.get(f)) for f in fields]
    if any(v is None for v in values):
        text = ", ".join(f"{f}={short(shape.get(f), 12)}" for f in fields)
        return None, f"a {name} needs numbers {', '.join(fields)} ({text})"
    v: list[float] = values  # type: ignore[assignment]
    if name == "rect":
        return rectangle(v[0], v[1], v[0] + v[2], v[1] + v[3]), ""
    if name == "circle":
        return ellipse(v[0], v[1], v[2], v[2]), ""
    theta = as_number(shape.get("theta", 0.0))
    if theta is None:
        return None, f"an ellipse with theta {short(shape.get('theta'))}, not a number"
    return ellipse(v[0], v[1], v[2], v[3], theta), ""


def _class_value(builder: CocoBuilder, value: Any, attribute: str, source: str, where: str) -> str | None:
    """The class a region attribute value names (checkbox: the one option set); None when reported."""
    if isinstance(value, dict):  # checkbox: {option_id: true, ...}
        chosen = [k for k, v in value.items() if v is True]
        if len(chosen) > 1:
            builder.report.add(
                BAD_SHAPE, source, None, f"{where}: checkbox {attribute!r} has several options set: {chosen}"
            )
            return None
        value = chosen[0] if chosen else None
    elif isinstance(value, bool) or (value is not None and not isinstance(value, str | int | float)):
        builder.report.add(BAD_SHAPE, source, None, f"{where}: {attribute!r} is {short(value)}, not a name")
        return None
    if value is None or (isinstance(value, str) and not value.strip()):
        builder.report.add(NO_CLASS, source, None, f"{where}: no {attribute!r}")
        return None
    return builder.class_name(str(value), source, where)


# ------------------------------------------------------------------------------ writing


def _settings(name: str) -> dict[str, Any]:
    """VIA 2.0.x's default ``_via_settings`` (the keys its project loader copies into its own)."""
    return {
        "ui": {
            "annotation_editor_height": 25,
            "annotation_editor_fontsize": 0.8,
            "leftsidebar_width": 18,
            "image_grid": {
                "img_height": 80,
                "rshape_fill": "none",
                "rshape_fill_opacity": 0.3,
                "rshape_stroke": "yellow",
                "rshape_stroke_width": 2,
                "show_region_shape": True,
                "show_image_policy": "all",
            },
            "image": {
                "region_label": "__via_region_id__",
                "region_color": "__via_default_region_color__",
                "region_label_font": "10px Sans",
                "on_image_annotation_editor_placement": "NEAR_REGION",
            },
        },
        "core": {"buffer_size": 18, "filepath": {}, "default_filepath": ""},
        "project": {"name": name},
    }


def _pixel(value: float) -> int:
    """A coordinate as a whole pixel, rounded half up like JavaScript's ``Math.round``."""
    return int(math.floor(float(value) + 0.5))


def _polygon_region(part: list[float], class_name: str) -> dict[str, Any] | None:
    """A VIA polygon region of one COCO polygon part (whole pixels, repeated vertices dropped)."""
    points: list[tuple[int, int]] = []
    for x, y in zip(part[0::2], part[1::2], strict=False):
        point = (_pixel(x), _pixel(y))
        if not points or points[-1] != point:
            points.append(point)
    if len(points) > 1 and points[0] == points[-1]:
        points.pop()
    if not points:
        return None
    return {
        "shape_attributes": {
            "name": "polygon",
            "all_points_x": [p[0] for p in points],
            "all_points_y": [p[1] for p in points],
        },
        "region_attributes": {"class": class_name},
    }


def write(coco: dict[str, Any], image_dir: Path, out: Path) -> Path:
    """Write ``coco`` as a VIA 2 project at ``out`` (a ``.json`` file, else ``out/via_project.json``).

    ``filename`` is the image's path relative to the project file's folder;
    ``size`` the image file's length in bytes (-1 when it is missing, VIA's
    value for remote files). Returns the project file.
    """
    out = Path(out)
    file = out if out.suffix.lower() == ".json" else out / "via_project.json"
    file.parent.mkdir(parents=True, exist_ok=True)
    categories = sorted(coco.get("categories", []), key=lambda c: c["id"])
    names = {c["id"]: str(c["name"]) for c in categories}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for annotation in coco.get("annotations", []):
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    metadata: dict[str, dict[str, Any]] = {}
    skipped = crowd = 0
    for image in coco.get("images", []):
        path = Path(image_dir) / str(image["file_name"])
        filename = Path(os.path.relpath(path, file.parent)).as_posix()
        size = path.stat().st_size if path.is_file() else -1
        key = f"{filename}{size}"
        entry = metadata.setdefault(key, {"filename": filename, "size": size, "regions": [],
                                          "file_attributes": {}})
        for annotation in by_image.get(image["id"], []):
            if annotation.get("iscrowd", 0):
                crowd += 1
                continue
            class_name = names.get(annotation["category_id"], str(annotation["category_id"]))
            segmentation = annotation.get("segmentation")
            if isinstance(segmentation, dict):
                skipped += 1
            elif isinstance(segmentation, list) and segmentation:
                for part in segmentation:
                    region = _polygon_region(part, class_name)
                    if region is not None:
                        entry["regions"].append(region)
            elif isinstance(annotation.get("bbox"), list) and len(annotation["bbox"]) == 4:
                x, y, w, h = (float(v) for v in annotation["bbox"])
                left, top = _pixel(x), _pixel(y)
                entry["regions"].append({
                    "shape_attributes": {"name": "rect", "x": left, "y": top,
                                         "width": _pixel(x + w) - left, "height": _pixel(y + h) - top},
                    "region_attributes": {"class": class_name},
                })
    project = {
        "_via_settings": _settings(file.stem),
        "_via_img_metadata": metadata,
        "_via_attributes": {
            "region": {"class": {"type": "dropdown", "description": "",
                                 "options": {n: "" for n in names.values()}, "default_options": {}}},
            "file": {},
        },
        "_via_data_format_version": VIA_DATA_FORMAT_VERSION,
        "_via_image_id_list": list(metadata),
    }
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(project, separators=(",", ":")))  # compact, as VIA saves it
    tmp.replace(file)
    if skipped or crowd:
        warnings.warn(
            f"{file}: left out {skipped} RLE mask(s) (VIA has no bitmap region) "
            f"and {crowd} crowd annotation(s)",
            stacklevel=2,
        )
    return file
