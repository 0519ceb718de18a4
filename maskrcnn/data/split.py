"""Splitting a COCO instances file into a training and a validation file, by image.

``split_coco(data, val_fraction, seed)`` puts about ``val_fraction`` of the
images (with all their annotations) on the validation side, drawn in a
seeded random order, so the same seed gives the same split. Classes are kept
on both sides where they can be: every category that annotates at least two
images gets at least one of them on each side, even when that moves the
validation share a little off the fraction. Images without annotations are
split like the others. Both files keep the source's categories (so the
labels agree) and its other top-level fields.

Shapes: the decoded COCO JSON (``images``, ``annotations``, ``categories``)
-> two such objects and a ``SplitSummary``.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from typing import Any

from .validation import DatasetError


@dataclasses.dataclass(frozen=True)
class SplitSummary:
    """What a split gave: images and instances per side, and the classes seen on both."""

    train_images: int
    val_images: int
    train_instances: int
    val_instances: int
    classes_on_both_sides: int
    classes_that_can_be: int  # categories that annotate at least two images
    classes: int
    left_out: int  # annotations of images the file does not list


def split_coco(
    data: Any, val_fraction: float, seed: int
) -> tuple[dict[str, Any], dict[str, Any], SplitSummary]:
    """``(train, val, summary)`` of a decoded COCO instances file; ``DatasetError`` for a malformed one."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"the validation fraction must be between 0 and 1, got {val_fraction:g}")
    images, annotations = _images_and_annotations(data)
    if len(images) < 2:
        raise DatasetError(f"{len(images)} image(s): a split needs at least two")
    ids = [image["id"] for image in images]
    classes_of: dict[Any, set[Any]] = defaultdict(set)  # image id -> categories annotating it
    for ann in annotations:
        classes_of[ann.get("image_id")].add(ann.get("category_id"))
    images_of: dict[Any, list[Any]] = defaultdict(list)  # category -> images it annotates
    for image_id in ids:
        for category in classes_of[image_id]:
            images_of[category].append(image_id)

    order = ids[:]
    random.Random(seed).shuffle(order)
    target = min(max(round(val_fraction * len(ids)), 1), len(ids) - 1)
    val: set[Any] = set()
    in_train = {c: len(members) for c, members in images_of.items()}  # images of c still in training

    def can_move(image_id: Any) -> bool:
        """Whether ``image_id`` can go to validation without taking a class's last training image."""
        return all(in_train[c] > 1 or len(images_of[c]) < 2 for c in classes_of[image_id])

    def move(image_id: Any) -> None:
        val.add(image_id)
        for c in classes_of[image_id]:
            in_train[c] -= 1

    rank = {image_id: i for i, image_id in enumerate(order)}
    # Rarest classes first: one of their images to validation unless one is there already.
    for category in sorted(images_of, key=lambda c: (len(images_of[c]), str(c))):
        members = sorted(images_of[category], key=rank.__getitem__)
        if len(members) < 2 or any(m in val for m in members):
            continue
        for image_id in members:
            if can_move(image_id):
                move(image_id)
                break
    for image_id in order:
        if len(val) >= target:
            break
        if image_id not in val and can_move(image_id):
            move(image_id)

    def side(keep: set[Any]) -> dict[str, Any]:
        out = {key: value for key, value in data.items() if key not in ("images", "annotations")}
        out["images"] = [image for image in images if image["id"] in keep]
        out["annotations"] = [ann for ann in annotations if ann.get("image_id") in keep]
        return out

    train_ids = set(ids) - val
    train, validation = side(train_ids), side(val)
    both = sum(1 for members in images_of.values()
               if any(m in val for m in members) and any(m in train_ids for m in members))
    summary = SplitSummary(
        train_images=len(train["images"]), val_images=len(validation["images"]),
        train_instances=len(train["annotations"]), val_instances=len(validation["annotations"]),
        classes_on_both_sides=both,
        classes_that_can_be=sum(1 for members in images_of.values() if len(members) >= 2),
        classes=len(data.get("categories") or []),
        left_out=len(annotations) - len(train["annotations"]) - len(validation["annotations"]),
    )
    return train, validation, summary


def _images_and_annotations(data: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The image entries (each with an ``id``, no id twice) and the annotation objects of a COCO file."""
    if not isinstance(data, dict):
        raise DatasetError("not a COCO instances file: the top level is not an object")
    images = data.get("images")
    if not isinstance(images, list):
        raise DatasetError("not a COCO instances file: 'images' is missing or not a list")
    seen = set()
    for index, image in enumerate(images):
        if not isinstance(image, dict) or not isinstance(image.get("id"), int | str):
            raise DatasetError(f"images[{index}] has no integer or string 'id'")
        if image["id"] in seen:
            raise DatasetError(f"images[{index}]: id {image['id']!r} is used twice")
        seen.add(image["id"])
    annotations = data.get("annotations") or []
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise DatasetError("'annotations' is not a list of objects")
    return images, annotations
