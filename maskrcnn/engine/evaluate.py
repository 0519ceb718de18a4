"""COCO evaluation: box, mask and keypoint AP of a predictor on an annotated image set.

The numbers are pycocotools' own (``COCOeval``, the code behind the COCO
leaderboard and the tables of the Mask R-CNN paper), so they compare with
Detectron2's and torchvision's published results: AP averaged over IoU
thresholds 0.50:0.05:0.95, at most 100 detections per image, objects binned
by area into small (< 32²), medium and large (> 96²) pixels. Keypoint AP is
COCO's too: object keypoint similarity (OKS) in place of IoU, with COCO's
per-keypoint constants (so 17 keypoints, COCO's person), at most 20
detections per image, and no small bin.

Metrics dictionary (what :func:`evaluate` returns and ``maskrcnn evaluate``
writes as JSON)::

    {"bbox": {"AP": 0.379, "AP50": 0.592, "AP75": 0.411, "APs": 0.219, "APm": 0.415, "APl": 0.484},
     "segm": {"AP": 0.346, ...},               # when the model has a mask head
     "keypoints": {"AP": 0.65, ..., "APs": None, ...},  # when it has a keypoint head
     "images": 5000,                           # images evaluated
     "images_failed": []}                      # file names skipped (unreadable, wrong size)

Values are on pycocotools' 0-1 scale (:func:`format_table` shows them ×100).
A value is ``None`` (JSON ``null``) where it is undefined: no ground-truth
instance falls in that area range among the evaluated images (pycocotools
reports -1 there). Keypoint ``APs`` is always ``None``: COCO's keypoint
evaluation has no small bin (people under 32² pixels carry no keypoints);
the key is kept so that every IoU type has the same six. The IoU-type
entries are the dict-valued keys; the two
``images`` keys say which images the numbers are over, since AP over a subset
does not compare with AP over the whole set.

Failed images are left out of the evaluation, not counted as images with no
detections: the metrics are those of the images that were evaluated, like
``max_images``. Callers decide whether a failure is fatal (the command
exits with status 1).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from ..data.images import ImageReadError, load_image
from ..data.validation import DatasetError, clean_ground_truth
from .predict import BasePredictor

IOU_TYPES: tuple[str, ...] = ("bbox", "segm", "keypoints")
"""The kinds of AP this module computes: boxes, instance masks and keypoints (OKS)."""

METRIC_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
"""The metrics of every IoU type; names of ``COCOeval.stats[0:6]`` for boxes and masks."""

# What COCOeval.stats holds first, per IoU type: keypoints have no small bin.
_STAT_NAMES: dict[str, tuple[str, ...]] = {
    "bbox": METRIC_NAMES,
    "segm": METRIC_NAMES,
    "keypoints": ("AP", "AP50", "AP75", "APm", "APl"),
}

# The fields COCOeval reads from a result record of each kind. Each kind gets
# records with only its own fields; see _records_for for why.
_RESULT_FIELDS: dict[str, tuple[str, ...]] = {
    "bbox": ("image_id", "category_id", "score", "bbox"),
    "segm": ("image_id", "category_id", "score", "segmentation"),
    "keypoints": ("image_id", "category_id", "score", "keypoints"),
}


# OKS has a constant per keypoint; pycocotools has those of COCO's 17 person keypoints.
_COCO_KEYPOINTS = len(Params(iouType="keypoints").kpt_oks_sigmas)


def load_ground_truth(path: str | os.PathLike[str]) -> COCO:
    """Read a COCO annotation file (instances format) without pycocotools' printing.

    Raises ``FileNotFoundError`` when the file is missing and
    :class:`~maskrcnn.data.validation.DatasetError` (a ``ValueError``),
    naming the file, when it is not JSON, lacks the ``images`` and
    ``categories`` lists evaluation needs, or has an image entry without an
    integer ``id`` and a ``file_name``. A file without ``annotations`` has
    images without ground truth (every detection on them is a false
    positive). Annotations pycocotools cannot score are left out with a
    warning saying how many and why (:func:`clean_ground_truth`), so that a
    bad one cannot stop an evaluation (or a training run validating) midway.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such annotation file: {path}")
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DatasetError(f"{path}: not a JSON file: {str(exc).splitlines()[0]}") from None
    return ground_truth_from_dict(data, str(path))


def ground_truth_from_dict(data: Any, source: str) -> COCO:
    """:func:`load_ground_truth` for an instances dict already in memory (modified in place);
    ``source`` names it in messages."""
    path = source
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a COCO annotation object, got a JSON {type(data).__name__}")
    missing = [key for key in ("images", "categories") if not isinstance(data.get(key), list)]
    if missing or not isinstance(data.setdefault("annotations", []), list):
        raise DatasetError(
            f"{path}: not a COCO instances file: no {' or '.join(missing or ['annotations'])} list"
        )
    skipped = clean_ground_truth(data, str(path))
    if skipped:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))
        warnings.warn(f"{path}: {sum(skipped.values())} ground-truth annotations left out ({reasons})",
                      stacklevel=2)
    gt = COCO()
    gt.dataset = data
    with _quiet(False):
        gt.createIndex()
    return gt


def coco_metrics(
    gt: COCO,
    results: Sequence[dict[str, Any]],
    iou_types: Sequence[str] = ("bbox", "segm"),
    *,
    image_ids: Sequence[int] | None = None,
    verbose: bool = False,
) -> dict[str, dict[str, float | None]]:
    """Run ``COCOeval`` once per IoU type; ``{iou_type: {"AP": ..., ..., "APl": ...}}`` on the 0-1 scale.

    ``results`` are COCO result records (``category_id``, ``score``, ``bbox``
    XYWH and/or ``segmentation`` RLE and/or ``keypoints``) naming their image
    by ``image_id`` or, as :func:`~maskrcnn.engine.results.to_coco_results`
    writes them, by the ground truth's ``file_name``. They are not modified.
    ``image_ids`` restricts the evaluation to those images (default: all of
    ``gt``'s). No results at all give 0.0 wherever there is ground truth.
    pycocotools' summary is printed to stdout only when ``verbose``.

    ``"keypoints"`` scores ``keypoints`` ``[x1, y1, v1, ...]`` in COCO's pixel
    indices (17 of them; ``v`` is not read) against the ground-truth
    categories that list ``keypoints`` names, whose annotations need
    ``keypoints`` and ``num_keypoints``; other categories are left out of it.
    ``ValueError`` when there is no such category, or the counts differ.
    """
    for iou_type in iou_types:
        if iou_type not in _RESULT_FIELDS:
            raise ValueError(f"unknown IoU type {iou_type!r}; expected some of {IOU_TYPES}")
    keypoint_categories = keypoint_category_ids(gt) if "keypoints" in iou_types else []
    ids = _image_ids_of(gt, results)
    unknown_categories = {int(r["category_id"]) for r in results} - set(gt.getCatIds())
    if unknown_categories:
        # COCOeval silently ignores them, which reads as a poor model; most
        # likely the checkpoint's category ids are not the dataset's.
        warnings.warn(
            f"{sum(int(r['category_id']) in unknown_categories for r in results)} detections have "
            f"category ids the ground truth does not list ({sorted(unknown_categories)}); they are ignored",
            stacklevel=2,
        )

    metrics: dict[str, dict[str, float | None]] = {}
    for iou_type in iou_types:
        records = _records_for(iou_type, results, ids)
        with _quiet(verbose):
            detections = _results_as_coco(gt, records)
            evaluator = COCOeval(gt, detections, iou_type)
            if image_ids is not None:
                evaluator.params.imgIds = sorted(int(i) for i in image_ids)
            if iou_type == "keypoints":
                evaluator.params.catIds = keypoint_categories
            evaluator.evaluate()
            evaluator.accumulate()
            if verbose:
                print(f"--- {iou_type} ---")
            evaluator.summarize()
        # pycocotools writes -1 for "no ground truth in this range": undefined, not zero.
        names = _STAT_NAMES[iou_type]
        stats = dict(zip(names, evaluator.stats[: len(names)], strict=True))
        metrics[iou_type] = {
            name: (None if name not in stats or stats[name] < 0 else float(stats[name]))
            for name in METRIC_NAMES
        }
    return metrics


def keypoint_category_ids(gt: COCO) -> list[int]:
    """The ids of ``gt``'s categories with keypoints, checked for COCOeval's keypoint evaluation.

    Raises ``ValueError`` when no category lists ``keypoints`` names, when
    one lists another number than COCO's 17 (OKS needs a constant per
    keypoint; pycocotools has COCO's), or when an annotation of one lacks
    ``keypoints`` or ``num_keypoints``.
    """
    categories = [c for c in gt.dataset["categories"] if c.get("keypoints")]
    if not categories:
        raise ValueError("keypoint evaluation: no ground-truth category lists keypoints")
    for category in categories:
        if len(category["keypoints"]) != _COCO_KEYPOINTS:
            raise ValueError(
                f"keypoint evaluation: category {category['id']} has {len(category['keypoints'])} keypoints; "
                f"COCO's keypoint AP is defined for its {_COCO_KEYPOINTS}"
            )
    ids = sorted(int(c["id"]) for c in categories)
    for ann in gt.loadAnns(gt.getAnnIds(catIds=ids)):
        missing = [key for key in ("keypoints", "num_keypoints") if key not in ann]
        if missing:
            raise ValueError(f"keypoint evaluation: annotation {ann.get('id')} has no {' or '.join(missing)}")
    return ids


def evaluate(
    predictor: BasePredictor,
    json_path: str | os.PathLike[str] | COCO,
    image_dir: str | os.PathLike[str],
    *,
    batch_size: int = 1,
    progress: bool = True,
    max_images: int | None = None,
    iou_types: Sequence[str] | None = None,
    verbose: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Predict every image the annotation file lists and score the detections.

    Images are read from ``image_dir / file_name`` in the file's own order
    (the first ``max_images`` of them when given) and batched ``batch_size``
    at a time. An image that cannot be read, or whose size differs from the
    annotation's ``height``/``width`` (its masks would not line up), is
    reported on stderr by name and left out. ``iou_types`` defaults to
    ``"bbox"``, ``"segm"`` when the model has a mask head and ``"keypoints"``
    when it has a keypoint head and the ground truth has keypoints (with a
    warning when it has none); ``"keypoints"`` asked for explicitly on such a
    ground truth is a ``ValueError``, before anything is predicted.

    Returns ``(metrics, results)``: the metrics dictionary of the module
    docstring, and the detections as COCO result records (``image_id``,
    ``file_name``, ``category_id`` from the predictor's config, ``bbox``
    XYWH in the image's pixels, ``score``, ``segmentation`` RLE, and
    ``keypoints`` ``[x, y, score] * P`` in COCO's pixel indices: the model's
    coordinates less its ``keypoint_head.pixel_offset``, see ``Predictor.coco_keypoints``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_images is not None and max_images < 0:
        raise ValueError(f"max_images must be non-negative, got {max_images}")
    gt = json_path if isinstance(json_path, COCO) else load_ground_truth(json_path)
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"no such image directory: {image_dir}")
    has_keypoints = predictor.config.keypoint_head is not None
    if iou_types is None:
        iou_types = ["bbox"] + ["segm"] * (predictor.config.mask_head is not None)
        if has_keypoints:
            try:
                keypoint_category_ids(gt)
                iou_types.append("keypoints")
            except ValueError as exc:
                warnings.warn(f"keypoint AP is not computed: {exc}", stacklevel=2)
    elif "keypoints" in iou_types:
        if not has_keypoints:
            raise ValueError("keypoint evaluation of a model without a keypoint head")
        keypoint_category_ids(gt)

    entries = gt.dataset["images"][:max_images]
    results: list[dict[str, Any]] = []
    evaluated: list[int] = []
    failed: list[str] = []
    predictions = predictor.predict_files(entries, batch_size=batch_size, progress=progress, desc="evaluate",
                                          read=functools.partial(_read, image_dir))
    with contextlib.closing(predictions):  # closes the progress bar however the loop ends
        for prediction in predictions:
            entry, det = prediction.source, prediction.detections
            if det is None:  # skipped, and reported on stderr
                failed.append(entry["file_name"])
                continue
            records = predictor.coco_results(det, entry["file_name"])
            results.extend({"image_id": entry["id"], **record} for record in records)
            evaluated.append(entry["id"])

    metrics: dict[str, Any] = dict(coco_metrics(gt, results, iou_types, image_ids=evaluated, verbose=verbose))
    metrics["images"] = len(evaluated)
    metrics["images_failed"] = failed
    return metrics, results


def format_table(metrics: dict[str, Any]) -> str:
    """The metrics as a fixed-width table: one row per IoU type, AP columns ×100 with one decimal.

    ::

                AP    AP50    AP75     APs     APm     APl
        bbox  37.9    59.2    41.1    21.9    41.5    48.4
        segm  34.6    56.0    36.8    15.8    37.0    50.8

    Undefined values (``None``) show as ``-``. Keys whose values are not
    dicts (``images``, ``images_failed``) are not part of the table.
    """
    rows = [(name, values) for name, values in metrics.items() if isinstance(values, dict)]
    label_width = max([len(name) for name, _ in rows], default=0)
    lines = [" " * label_width + "".join(f"{name:>8}" for name in METRIC_NAMES)]
    for name, values in rows:
        cells = []
        for metric in METRIC_NAMES:
            value = values.get(metric)
            cells.append(f"{'-' if value is None else f'{100 * value:.1f}':>8}")
        lines.append(f"{name:<{label_width}}" + "".join(cells))
    return "\n".join(lines)


def _read(image_dir: Path, entry: dict[str, Any]) -> np.ndarray:
    """The image of one annotation entry, checked against the size the annotations were made at."""
    path = image_dir / entry["file_name"]
    array = load_image(path)
    height, width = array.shape[:2]
    expected = (entry.get("height"), entry.get("width"))
    if None not in expected and expected != (height, width):
        raise ImageReadError(
            path, f"image is {width}x{height} but the annotations are for {expected[1]}x{expected[0]}"
        )
    return array


def _image_ids_of(gt: COCO, results: Sequence[dict[str, Any]]) -> list[int]:
    """The ground-truth image id of each result, from ``image_id`` or else ``file_name``."""
    by_name: dict[str, int | None] = {}
    for image in gt.dataset["images"]:
        # A name listed twice cannot say which image a result belongs to.
        by_name[image["file_name"]] = None if image["file_name"] in by_name else image["id"]
    known = set(gt.getImgIds())
    ids = []
    for record in results:
        if "image_id" in record:
            image_id = record["image_id"]
            if image_id not in known:
                raise ValueError(f"result for image_id {image_id}, which the ground truth does not list")
        else:
            name = record.get("file_name")
            if name is None:
                raise ValueError("result record with neither image_id nor file_name")
            if name not in by_name:
                raise ValueError(f"result for {name!r}, which the ground truth does not list")
            image_id = by_name[name]
            if image_id is None:
                raise ValueError(f"{name!r} is listed more than once in the ground truth; give image_id")
        ids.append(int(image_id))
    return ids


def _records_for(iou_type: str, results: Sequence[dict[str, Any]], ids: list[int]) -> list[dict[str, Any]]:
    """Fresh records with only the fields ``iou_type`` is scored on.

    Fresh, because ``loadRes`` writes ``id``, ``area`` and ``iscrowd`` into
    the records it is given. Only these fields, because ``loadRes`` takes the
    area used for the small/medium/large bins from the box when a record has
    one; mask AP must bin detections by mask area, as the ground truth is.
    """
    fields = _RESULT_FIELDS[iou_type]
    records = []
    for record, image_id in zip(results, ids, strict=True):
        missing = [key for key in fields[1:] if key not in record]
        if missing:
            raise ValueError(f"{iou_type} evaluation needs {' and '.join(missing)} in every result record")
        if iou_type == "keypoints" and len(record["keypoints"]) != 3 * _COCO_KEYPOINTS:
            raise ValueError(
                f"keypoint evaluation needs {3 * _COCO_KEYPOINTS} numbers (x, y, v for {_COCO_KEYPOINTS} "
                f"keypoints) per result, got {len(record['keypoints'])}"
            )
        records.append({"image_id": image_id, **{key: record[key] for key in fields[1:]}})
    return records


def _results_as_coco(gt: COCO, records: list[dict[str, Any]]) -> COCO:
    """Result records as the COCO object COCOeval compares with ``gt``."""
    if records:
        return gt.loadRes(records)
    # loadRes reads records[0] to tell the result kind, so it fails on an
    # empty list; no detections is an empty annotation list on gt's images.
    empty = COCO()
    empty.dataset = {
        "images": list(gt.dataset["images"]),
        "categories": copy.deepcopy(gt.dataset["categories"]),
        "annotations": [],
    }
    empty.createIndex()
    return empty


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Swallow pycocotools' progress prints unless ``verbose``."""
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield
