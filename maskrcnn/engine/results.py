"""Detections as COCO-style result records, and safe JSON writing.

A record is what COCO's results format holds for one detection, keyed by
``file_name`` instead of ``image_id`` (prediction runs on files, not on a
dataset; the evaluator maps names to ids)::

    {"file_name": "a.jpg", "category_id": 18, "bbox": [x, y, w, h], "score": 0.93,
     "segmentation": {"size": [H, W], "counts": "..."},   # when masks are given
     "keypoints": [x1, y1, s1, x2, y2, s2, ...]}          # when keypoints are given

Boxes come in as XYXY absolute pixels (the package convention) and go out as
COCO's XYWH. Numbers are plain Python floats at full precision (no rounding).
Masks are COCO run-length encoded (uncompressed-counts RLE as produced by
``pycocotools.mask.encode``, with ``counts`` as a ``str`` so the record is
JSON-serialisable).

Shape shorthand: ``D`` detections, ``H, W`` image size, ``P`` keypoints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from ..files import write_atomically
from ..structures import MaskCrops


def encode_mask(mask: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """Run-length encode one ``(H, W)`` mask as ``{"size": [H, W], "counts": str}``.

    Any nonzero value counts as foreground. ``pycocotools.mask.decode`` gives
    the mask back (after ``counts`` is encoded to bytes, or as is: it accepts
    both).
    """
    array = to_numpy(mask)
    if array.ndim != 2:
        raise ValueError(f"expected one (H, W) mask, got shape {array.shape}")
    return _encode_masks(array[None])[0]


def to_coco_results(
    file_name: str,
    boxes: np.ndarray | torch.Tensor,
    scores: np.ndarray | torch.Tensor,
    category_ids: Sequence[int],
    masks: MaskCrops | np.ndarray | torch.Tensor | None = None,
    keypoints: np.ndarray | torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """One COCO result record per detection of one image, in the order given.

    ``boxes (D, 4)`` XYXY pixels, ``scores (D,)``, ``category_ids`` ``D``
    dataset category ids (already mapped from contiguous labels),
    ``masks``: :class:`~maskrcnn.structures.MaskCrops`, or ``(D, H, W)``
    full-image masks (nonzero = foreground), or None to omit
    ``"segmentation"``; ``keypoints (D, P, 3)`` as ``(x, y, score)`` or None
    to omit ``"keypoints"``. The third keypoint value is written as the
    keypoint's score (a float), where COCO ground truth has a visibility flag;
    COCO's keypoint evaluation does not read it from results.
    """
    boxes_np = to_numpy(boxes).astype(np.float64).reshape(-1, 4)
    scores_np = to_numpy(scores).astype(np.float64).reshape(-1)
    count = boxes_np.shape[0]
    if scores_np.shape[0] != count or len(category_ids) != count:
        raise ValueError(
            f"inconsistent detection counts: {count} boxes, {scores_np.shape[0]} scores, "
            f"{len(category_ids)} category ids"
        )
    masks_np = None if masks is None or isinstance(masks, MaskCrops) else to_numpy(masks)
    if masks_np is not None and (masks_np.ndim != 3 or masks_np.shape[0] != count):
        raise ValueError(f"expected masks of shape ({count}, H, W), got {masks_np.shape}")
    if isinstance(masks, MaskCrops) and len(masks) != count:
        raise ValueError(f"expected {count} masks, got {len(masks)}")
    keypoints_np = None if keypoints is None else to_numpy(keypoints).astype(np.float64)
    if keypoints_np is not None and (
        keypoints_np.ndim != 3 or keypoints_np.shape[0] != count or keypoints_np.shape[2] != 3
    ):
        raise ValueError(f"expected keypoints of shape ({count}, P, 3), got {keypoints_np.shape}")
    if count == 0:
        return []

    # XYXY -> XYWH.
    xywh = boxes_np.copy()
    xywh[:, 2:] -= boxes_np[:, :2]
    rles = encode_crops(masks) if isinstance(masks, MaskCrops) else (
        None if masks_np is None else _encode_masks(masks_np))

    records: list[dict[str, Any]] = []
    for i in range(count):
        record: dict[str, Any] = {
            "file_name": file_name,
            "category_id": int(category_ids[i]),
            "bbox": [float(v) for v in xywh[i]],
            "score": float(scores_np[i]),
        }
        if rles is not None:
            record["segmentation"] = rles[i]
        if keypoints_np is not None:
            record["keypoints"] = [float(v) for v in keypoints_np[i].reshape(-1)]  # (P, 3) -> 3P
        records.append(record)
    return records


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = None) -> None:
    """Write ``obj`` as JSON to ``path`` so that readers see the old file or the new one, never half.

    The JSON goes to a hidden temporary file in the same directory, is flushed
    to disk, then renamed over ``path`` (``files.write_atomically``). On any
    failure the temporary file is removed and ``path`` is untouched. Missing
    parent directories are created. The file gets the usual permissions (0o666
    less the umask). NaN and infinity are refused with ``ValueError``: they are
    not JSON.
    """
    def dump(temp: Path) -> None:
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=indent, allow_nan=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())

    write_atomically(Path(path), dump)


def encode_crops(masks: MaskCrops) -> list[dict[str, Any]]:
    """COCO compressed RLE of each mask of ``masks``, without making any full-image mask.

    COCO runs go down each column, left to right. Columns outside a crop's
    window are background, so the runs are those of the window's columns
    (each a whole image column: background above and below the crop) with
    the columns before and after added to the first and last runs. Memory:
    one window's columns at a time.
    """
    h, w = masks.size
    out = []
    for (x0, y0, x1, y1), crop in zip(masks.windows.tolist(), masks.crops, strict=True):
        columns = np.zeros((x1 - x0, h), dtype=np.uint8)  # (window columns, H): column-major order
        columns[:, y0:y1] = crop.detach().cpu().numpy().T
        flat = columns.reshape(-1)
        changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        bounds = np.concatenate([[0], changes, [flat.size]])
        runs = np.diff(bounds).tolist()
        if flat.size == 0:
            runs = []
        elif flat[0]:  # COCO's runs start with background
            runs = [0, *runs]
        before, after = x0 * h, (w - x1) * h
        if not runs:
            runs = [before + after]
        else:
            runs[0] += before
            if len(runs) % 2:  # ends with background: the columns after join it
                runs[-1] += after
            elif after:
                runs.append(after)
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w)
        rle["counts"] = rle["counts"].decode("ascii")
        out.append(rle)
    return out


def _encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """RLE-encode ``(D, H, W)`` masks in one pycocotools call."""
    # pycocotools wants (H, W, D) uint8 in Fortran (column-major) order, the
    # order COCO's run lengths are counted in.
    stacked = np.asfortranarray((masks != 0).astype(np.uint8).transpose(1, 2, 0))
    encoded = mask_utils.encode(stacked)
    return [
        {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in encoded
    ]


def to_numpy(value: np.ndarray | torch.Tensor) -> np.ndarray:
    """A tensor (any device, any float type) or array as a numpy array."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()  # bfloat16 has no numpy twin
        return value.numpy()
    return np.asarray(value)
