"""What a dataset holds, before hours of training: classes, instance sizes against the anchors, problems.

``dataset_stats(dataset, model)`` counts, from the validated annotations
(no image decoded): images and those without instances, instances and
images per class, crowd regions, the problems the reader skipped, and each
instance's size as the model will see it (``sqrt(w * h)`` of its box after
the model's input resize) against the anchor sizes: the anchor size nearest
on a log scale, or below half the smallest, or above twice the largest
(instances the RPN's anchors hardly match).

Shapes: a ``CocoDataset`` and a ``ModelConfig`` -> ``DatasetStats``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..config import ModelConfig
from .coco import CocoDataset
from .report import DatasetReport
from .transforms import resized_size


@dataclasses.dataclass(frozen=True)
class DatasetStats:
    """Counts of one dataset as one model sees it."""

    report: DatasetReport  # images, instances, crowd regions, problems skipped
    class_names: list[str]
    instances_per_class: list[int]
    images_per_class: list[int]
    anchor_sizes: list[float]
    # Instances per size bin: below half the smallest anchor, nearest to each anchor, above twice the largest.
    size_bins: list[int]
    min_size: int
    max_size: int


def dataset_stats(dataset: CocoDataset, model: ModelConfig) -> DatasetStats:
    """The counts of ``dataset`` for ``model`` (its input resize and anchor sizes)."""
    classes = len(dataset.category_ids)
    per_class = np.zeros(classes, dtype=np.int64)
    images_per_class = np.zeros(classes, dtype=np.int64)
    anchors = np.log2(np.asarray(model.anchors.sizes, dtype=np.float64))
    bins = np.zeros(len(anchors) + 2, dtype=np.int64)
    for index in range(len(dataset)):
        boxes, labels, _ = dataset.boxes_and_labels(index)
        if len(labels) == 0:
            continue
        per_class += np.bincount(labels, minlength=classes)
        images_per_class[np.unique(labels)] += 1
        height, width = dataset.image_size(index)
        h, w = resized_size(height, width, model.input)
        scale = math.sqrt((h / height) * (w / width))
        extents = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None)  # (M, 2): w, h
        sides = np.sqrt(extents[:, 0] * extents[:, 1])
        size = np.log2(np.maximum(sides * scale, 1e-6))
        nearest = np.abs(size[:, None] - anchors[None]).argmin(axis=1) + 1
        nearest[size < anchors[0] - 1] = 0
        nearest[size > anchors[-1] + 1] = len(anchors) + 1
        bins += np.bincount(nearest, minlength=len(bins))
    return DatasetStats(
        report=dataset.report, class_names=list(dataset.class_names), instances_per_class=per_class.tolist(),
        images_per_class=images_per_class.tolist(), anchor_sizes=list(model.anchors.sizes),
        size_bins=bins.tolist(), min_size=model.input.min_size, max_size=model.input.max_size,
    )


def format_stats(stats: DatasetStats) -> str:
    """The counts as text: a summary line, a table of classes, the size bins, the problems."""
    lines = [stats.report.summary().splitlines()[0], "", f"{'class':<24} {'instances':>9} {'images':>7}"]
    for name, count, images in zip(stats.class_names, stats.instances_per_class, stats.images_per_class,
                                   strict=True):
        lines.append(f"{name[:24]:<24} {count:>9} {images:>7}" + ("  (no instance)" if count == 0 else ""))
    sizes = stats.anchor_sizes
    labels = [f"< {sizes[0] / 2:g}"] + [f"~{s:g}" for s in sizes] + [f"> {sizes[-1] * 2:g}"]
    lines += ["", f"instance size sqrt(w*h) after resizing to min {stats.min_size} / max {stats.max_size}, "
                  "by nearest anchor size:"]
    lines.append("  " + "  ".join(f"{label}: {count}" for label, count in zip(labels, stats.size_bins,
                                                                               strict=True)))
    outside = stats.size_bins[0] + stats.size_bins[-1]
    if outside:
        lines.append(f"  {outside} instance(s) beyond half the smallest or twice the largest anchor: the RPN "
                     "matches them poorly; consider other anchor sizes or input sizes")
    problems = stats.report.summary().splitlines()[1:]
    if problems:
        lines += ["", "problems skipped:", *problems]
    return "\n".join(lines)
