"""Checks of annotation values as JSON decodes them, shared by the dataset readers.

JSON gives any type anywhere: a number may be a string, a boolean, ``NaN``
(Python's ``json`` accepts it) or an integer too large for a float; a
compressed RLE string may be truncated or hold characters outside its
alphabet. These helpers turn such values into clean Python numbers or say
what is wrong, so that a reader can count and skip a bad annotation when the
file is loaded instead of failing (or, worse, silently reading memory it
should not) in the middle of training.

Compressed RLE (pycocotools' ``rleToString``/``rleFrString``): each run
length is written in 5-bit groups, least significant first, as characters
``chr(48 + group)`` with ``0x20`` set on every group but the last, and
``0x10`` of the last group its sign bit; from the fourth run on, the value
written is the difference to the run two before. pycocotools' C decoder
trusts its input: a string whose last character has the continuation bit
reads past the end of the string, characters outside ``'0'..'o'`` give
garbage, and run lengths that do not add up to ``height * width`` overflow
the mask or leave part of it uninitialised (a different mask each time).
:func:`rle_string_counts` decodes with every one of those checked, and a
string it accepts decodes in pycocotools to exactly the runs it returns.

:func:`clean_ground_truth` applies the same checks to a ground-truth file
for ``COCOeval``, which reads the file's annotations as they are.
"""

from __future__ import annotations

import math
from typing import Any

from pycocotools import mask as mask_utils

# pycocotools shifts 5-bit groups in a C int, so a run length has at most six
# groups (30 bits) before the shift overflows; its encoder never writes more
# for the run lengths of any image that fits in memory.
MAX_RLE_GROUPS = 6
# The largest magnitude a float32 holds; coordinates beyond it become inf.
FLOAT32_MAX = 3.4028234663852886e38
# Polygon vertices may lie outside the image (annotation tools allow it), but
# by at most this many image sizes; further away they are an error, and
# pycocotools' rasteriser walks every pixel of every edge (a vertex at 1e9
# would take gigabytes).
POLYGON_MARGIN = 1.0


class DatasetError(ValueError):
    """A dataset that cannot be read at all; the message is one line naming the file and the problem.

    Raised for the structure of a file (not JSON, not an object, an image
    entry without ``id``, ``file_name``, ``height`` or ``width``, no
    categories...). Problems of single annotations are not raised: readers
    count and skip them (``DatasetReport``).
    """


def short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for a one-line report (values may be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def as_int(value: Any) -> int | None:
    """``value`` as an ``int`` when it is an integer (or an integral float); None otherwise (bools too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def as_number(value: Any, limit: float = FLOAT32_MAX) -> float | None:
    """``value`` as a finite ``float`` of magnitude below ``limit``; None otherwise (bools, strings...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        return None
    if not math.isfinite(number) or abs(number) >= limit:
        return None
    return number


def as_numbers(values: Any, limit: float = FLOAT32_MAX) -> list[float] | None:
    """A list of numbers as floats (``as_number`` each); None when it is not a list or one is bad."""
    if not isinstance(values, list):
        return None
    numbers = [as_number(v, limit) for v in values]
    if any(n is None for n in numbers):
        return None
    return numbers  # type: ignore[return-value]


def polygon_inside(coordinates: list[float], height: int, width: int) -> bool:
    """Whether every ``x, y`` of a polygon lies within ``POLYGON_MARGIN`` image sizes of the image."""
    limit = POLYGON_MARGIN * max(height, width)
    return all(-limit <= x <= width + limit for x in coordinates[0::2]) and all(
        -limit <= y <= height + limit for y in coordinates[1::2]
    )


def polygons_valid(segmentation: Any, height: int, width: int) -> bool:
    """Whether a polygon segmentation is a non-empty list of parts, each an even number (>= 6) of
    finite coordinates inside the image's margin (``polygon_inside``)."""
    if not isinstance(segmentation, list) or not segmentation:
        return False
    for part in segmentation:
        numbers = as_numbers(part)
        if numbers is None or len(numbers) < 6 or len(numbers) % 2:
            return False
        if not polygon_inside(numbers, height, width):
            return False
    return True


def rle_string_counts(counts: str | bytes) -> list[int]:
    """The run lengths of a compressed RLE string, checked; ``ValueError`` saying what is wrong.

    Rejects characters outside the alphabet, a run left unfinished at the
    end of the string (a truncated string), runs of more than
    ``MAX_RLE_GROUPS`` characters and negative run lengths. The caller
    checks that the runs add up to the mask's size.
    """
    if isinstance(counts, str):
        try:
            data = counts.encode("ascii")
        except UnicodeEncodeError as exc:
            raise ValueError(f"non-ASCII character at position {exc.start}") from None
    else:
        data = bytes(counts)
    runs: list[int] = []
    value = groups = 0
    for position, byte in enumerate(data):
        group = byte - 48
        if not 0 <= group < 64:
            raise ValueError(f"character {chr(byte)!r} at position {position} is not in the RLE alphabet")
        value |= (group & 0x1F) << (5 * groups)
        groups += 1
        if group & 0x20:  # more groups follow
            if groups == MAX_RLE_GROUPS:
                raise ValueError(f"run {len(runs)} has more than {MAX_RLE_GROUPS} characters")
            continue
        if group & 0x10:  # sign bit of the last group: extend it
            value -= 1 << (5 * groups)
        if len(runs) > 2:  # from the fourth run on, a difference to the run two before
            value += runs[-2]
        if value < 0:
            raise ValueError(f"run {len(runs)} has a negative length ({value})")
        runs.append(value)
        value = groups = 0
    if groups:
        raise ValueError("truncated: the string ends inside a run length")
    return runs


def check_rle(segmentation: dict[str, Any], height: int, width: int) -> tuple[dict[str, Any] | None, str]:
    """An RLE segmentation checked against a ``height x width`` image: ``(clean, "")`` or ``(None, why)``.

    ``size`` must be ``[height, width]``; ``counts`` a list of non-negative
    integers (uncompressed) or a compressed string, and either must cover
    exactly ``height * width`` pixels. The clean RLE has ``size`` as ints and
    ``counts`` as a list of ints or as ASCII bytes, ready for pycocotools.
    """
    size = segmentation.get("size")
    if not isinstance(size, (list, tuple)) or len(size) != 2 or any(as_int(s) is None for s in size):
        return None, f"RLE size {short(size)} is not [height, width]"
    size = [as_int(s) for s in size]
    if size != [height, width]:
        return None, f"RLE size {short(size)} in a {height}x{width} image"
    counts = segmentation.get("counts")
    if isinstance(counts, list):
        runs = [as_int(c) for c in counts]
        if any(r is None or r < 0 for r in runs):
            return None, "RLE counts are not non-negative integers"
        clean: dict[str, Any] = {"size": size, "counts": runs}
    elif isinstance(counts, (str, bytes)):
        try:
            runs = rle_string_counts(counts)
        except ValueError as exc:
            return None, f"corrupt compressed RLE: {exc}"
        clean = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else bytes(counts)}
    else:
        return None, f"RLE counts of type {type(counts).__name__}"
    total = sum(runs)  # type: ignore[arg-type]
    if total != height * width:
        return None, f"RLE counts sum to {short(total)}, not {height}x{width} = {height * width}"
    return clean, ""


def clean_ground_truth(data: dict[str, Any], source: str) -> dict[str, int]:
    """Make ``data`` (a decoded instances file) safe for ``COCOeval``, in place; ``{reason: count}`` left out.

    Image entries need an integer ``id``, a ``file_name`` and positive
    integer ``height`` and ``width`` (pycocotools reads them for every
    segmentation), categories an integer ``id``: ``DatasetError`` otherwise. An annotation is left out
    when it is not an object, its ``id`` is missing or repeated, its image
    or category is unknown, or its segmentation is malformed (the RLE and
    polygon checks of this module, as the training loader applies them).
    What COCOeval needs and can be derived is filled in: ``iscrowd`` 0,
    ``bbox`` from the segmentation, the box as the segmentation when there
    is none, ``area`` from the segmentation.
    """
    images: dict[int, dict[str, Any]] = {}
    for position, image in enumerate(data["images"]):
        entry = image if isinstance(image, dict) else {}
        image_id, height, width = (as_int(entry.get(k)) for k in ("id", "height", "width"))
        sized = height is not None and width is not None and height > 0 and width > 0
        if image_id is None or not sized or not isinstance(entry.get("file_name"), str):
            raise DatasetError(
                f"{source}: image entry {position} needs an integer 'id', a 'file_name' and positive "
                f"integer 'height' and 'width'"
            )
        entry.update(id=image_id, height=height, width=width)
        images[image_id] = entry
    categories = set()
    for position, category in enumerate(data["categories"]):
        category_id = as_int(category.get("id")) if isinstance(category, dict) else None
        if category_id is None:
            raise DatasetError(f"{source}: category {position} has no integer 'id'")
        categories.add(category_id)
    kept: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    seen: set[int] = set()
    for ann in data["annotations"]:
        why = _ground_truth_problem(ann, images, categories, seen)
        if why:
            skipped[why] = skipped.get(why, 0) + 1
        else:
            seen.add(ann["id"])
            kept.append(ann)
    data["annotations"] = kept
    return skipped


def _ground_truth_problem(
    ann: Any, images: dict[int, dict[str, Any]], categories: set[int], seen: set[int]
) -> str:
    """Why ``ann`` cannot be scored (empty when it can, after filling in what it lacks)."""
    if not isinstance(ann, dict):
        return "not objects"
    ann_id = as_int(ann.get("id"))
    if ann_id is None or ann_id in seen:
        return "without a unique integer id"
    image_id, category_id = as_int(ann.get("image_id")), as_int(ann.get("category_id"))
    image = None if image_id is None else images.get(image_id)
    if image is None:
        return "of unknown images"
    if category_id not in categories:
        return "of unknown categories"
    ann.update(id=ann_id, image_id=image_id, category_id=category_id)  # as ints, which COCO indexes by
    iscrowd = ann.setdefault("iscrowd", 0)
    if isinstance(iscrowd, bool) or iscrowd not in (0, 1):
        return "with iscrowd other than 0 or 1"
    height, width = image["height"], image["width"]
    segmentation = ann.get("segmentation")
    bbox = ann.get("bbox")
    if bbox is not None and (not isinstance(bbox, list) or len(bbox) != 4 or not as_numbers(bbox)):
        return "with a malformed bbox"
    if isinstance(segmentation, dict):
        clean, _ = check_rle(segmentation, height, width)
        if clean is None:
            return "with a malformed segmentation"
        if isinstance(clean["counts"], bytes):
            clean["counts"] = clean["counts"].decode("ascii")
        ann["segmentation"] = segmentation = clean
    elif isinstance(segmentation, list) and segmentation:
        if not polygons_valid(segmentation, height, width):
            return "with a malformed segmentation"
    elif bbox is not None:  # no segmentation: the box (clipped to the image) is the mask, as in training
        x0, y0, w, h = (float(v) for v in bbox)
        x0, x1 = (min(max(x, 0.0), width) for x in (x0, x0 + w))
        y0, y1 = (min(max(y, 0.0), height) for y in (y0, y0 + h))
        ann["segmentation"] = segmentation = [[x0, y0, x1, y0, x1, y1, x0, y1]]
    else:
        return "with neither bbox nor segmentation"
    if bbox is None or as_numbers([ann.get("area")]) is None:
        if isinstance(segmentation, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:  # compressed RLE (frPyObjects would read the string as a list of numbers)
            rle = segmentation
        if bbox is None:
            ann["bbox"] = mask_utils.toBbox(rle).tolist()
        if as_numbers([ann.get("area")]) is None:
            ann["area"] = float(mask_utils.area(rle))
    return ""
