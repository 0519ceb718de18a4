"""Images of any size: cut into tiles, each predicted at scale 1, merged back by their masks.

A model resizes its input to its own scale (800-1333 pixels for the COCO
models), so a 10000-pixel aerial photo would shrink twelvefold and its
objects vanish. :class:`TiledPredictor` instead cuts the image into
``size x size`` tiles that overlap by ``overlap`` pixels and runs each at
its own pixels (no resize: the model sees the image at full resolution),
``batch`` tiles per forward pass.

Tiles: along each axis they start every ``size - overlap`` pixels, the last
one flush with the image's edge, so every tile is ``size`` wide unless the
image is narrower (then one tile of the image's width). Detections of a
tile are moved into the image (boxes shifted, masks kept cropped to their
windows: :class:`~maskrcnn.structures.MaskCrops`), and memory follows the
detections, never the image area times their number.

Merging across seams: an object cut by a tile's edge is found in pieces by
the tiles that share it, and an object inside an overlap is found whole by
each. Both tiles see every pixel of their overlap, so two detections of the
same class from two tiles are one object when their masks agree there: the
IoU of the two masks within the intersection of the two tiles is at least
``merge_iou`` (masks, not boxes: a box IoU is small for the two halves of a
cut object, while their masks coincide in the overlap). Groups are joined
transitively (an object across four tiles). A merged detection has the
union of the boxes, the highest score and that member's keypoints, and one
mask stitched from the members: each pixel from the member whose tile owns it
(each tile owns its core, the pixels up to the middle of its overlaps), so
neither the seams nor the members' disagreements bloat it. A detection no
other tile matched keeps its mask and box as its tile found them. The
model's detection cap applies per tile; ``max_detections`` caps the whole
image (highest scores first).

Shapes: one image ``(H, W, 3)`` uint8 in, one ``Detections`` out in its pixels.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..structures import Detections, MaskCrops
from .predict import BasePredictor, Predictor

__all__ = [
    "DEFAULT_MERGE_IOU", "DEFAULT_TILE_OVERLAP", "CappedPredictor", "TiledPredictor", "add_tile_arguments",
    "check_tile_arguments", "merge_tiles", "tile_windows", "tiled_predictor",
]

# The smallest tile side: an FPN's coarsest level (stride 64) needs a few cells.
MIN_TILE = 32
# Tiles overlap by this many pixels unless told otherwise: objects up to about this size are
# seen whole by some tile.
DEFAULT_TILE_OVERLAP = 64
# An image of fewer tiles than this is predicted without a progress bar.
PROGRESS_MIN_TILES = 16
# Two tile detections of one class are one object when their masks' IoU within the two
# tiles' common area is at least this (the usual "same object" bar of COCO's AP50).
DEFAULT_MERGE_IOU = 0.5


def _starts(length: int, size: int, stride: int) -> list[int]:
    """Tile starts along one axis: every ``stride``, the last flush with the end."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size, stride))
    return [*starts, length - size]


def tile_windows(height: int, width: int, size: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """The ``(x0, y0, x1, y1)`` tiles covering an image (rule in the module docstring), row by row."""
    if size < 1:
        raise ValueError(f"tile size must be at least 1, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"tile overlap must be in [0, {size}) for tiles of {size}, got {overlap}")
    stride = size - overlap
    return [(x, y, min(x + size, width), min(y + size, height))
            for y in _starts(height, size, stride) for x in _starts(width, size, stride)]


def _window_iou(a: MaskCrops, i: int, b: MaskCrops, j: int, region: tuple[int, int, int, int]) -> float:
    """IoU of mask ``i`` of ``a`` and mask ``j`` of ``b`` within ``region`` (x0, y0, x1, y1)."""
    rx0, ry0, rx1, ry1 = region
    planes = []
    for masks, k in ((a, i), (b, j)):
        x0, y0, x1, y1 = masks.windows[k].tolist()
        plane = torch.zeros((ry1 - ry0, rx1 - rx0), dtype=torch.bool)
        cx0, cy0, cx1, cy1 = max(x0, rx0), max(y0, ry0), min(x1, rx1), min(y1, ry1)
        if cx0 < cx1 and cy0 < cy1:
            plane[cy0 - ry0 : cy1 - ry0, cx0 - rx0 : cx1 - rx0] = masks.crops[k][cy0 - y0 : cy1 - y0,
                                                                                  cx0 - x0 : cx1 - x0]
        planes.append(plane)
    union = int((planes[0] | planes[1]).sum())
    return int((planes[0] & planes[1]).sum()) / union if union else 0.0


def _cores(tiles: Sequence[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Each tile's core: the pixels it owns, up to the middle of its overlap with each neighbour.

    The cores of a grid partition the image, so a mask stitched from its
    tiles' cores takes every pixel from exactly one tile: the one that sees
    it farthest from its own edges.
    """
    def bounds(spans: set[tuple[int, int]]) -> dict[tuple[int, int], tuple[int, int]]:
        ordered = sorted(spans)
        out = {}
        for k, (lo, hi) in enumerate(ordered):
            start = 0 if k == 0 else (lo + ordered[k - 1][1]) // 2
            end = hi if k == len(ordered) - 1 else (ordered[k + 1][0] + hi) // 2
            out[(lo, hi)] = (max(start, lo), min(max(end, start), hi))
        return out

    xs = bounds({(t[0], t[2]) for t in tiles})
    ys = bounds({(t[1], t[3]) for t in tiles})
    return [(*xs[(t[0], t[2])][:1], *ys[(t[1], t[3])][:1], xs[(t[0], t[2])][1], ys[(t[1], t[3])][1])
            for t in tiles]


def _stitched_mask(masks: MaskCrops, members: list[int], tiles: list[int],
                   cores: list[tuple[int, int, int, int]]) -> tuple[tuple[int, int, int, int], Tensor]:
    """The window and crop of one object's mask from its tile detections ``members``.

    Member ``k`` (from tile ``tiles[k]``) gives its pixels except those in the
    core of another tile of the group, which gives its own there: every pixel
    from the member that sees it farthest from its edges. A single detection
    keeps its whole mask. The window is cut to what is left (an empty mask: an
    empty window at the first member's corner).
    """
    group_tiles = {tiles[k] for k in members}
    pieces = []
    for k in members:
        x0, y0, x1, y1 = masks.windows[k].tolist()
        piece = masks.crops[k].clone()
        for t in group_tiles - {tiles[k]}:
            c0, d0, c1, d1 = cores[t]
            a0, b0, a1, b1 = max(x0, c0), max(y0, d0), min(x1, c1), min(y1, d1)
            if a0 < a1 and b0 < b1:
                piece[b0 - y0 : b1 - y0, a0 - x0 : a1 - x0] = False
        pieces.append((x0, y0, x1, y1, piece))
    x0, y0 = min(p[0] for p in pieces), min(p[1] for p in pieces)
    x1, y1 = max(p[2] for p in pieces), max(p[3] for p in pieces)
    crop = torch.zeros((y1 - y0, x1 - x0), dtype=torch.bool)
    for a0, b0, a1, b1, piece in pieces:
        crop[b0 - y0 : b1 - y0, a0 - x0 : a1 - x0] |= piece
    rows, cols = torch.nonzero(crop.any(1)).flatten(), torch.nonzero(crop.any(0)).flatten()
    if len(rows) == 0:
        return (x0, y0, x0, y0), crop[:0, :0]
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return (x0 + left, y0 + top, x0 + right, y0 + bottom), crop[top:bottom, left:right]


def merge_tiles(
    parts: Sequence[tuple[tuple[int, int, int, int], Detections]],
    size: tuple[int, int],
    *,
    merge_iou: float = DEFAULT_MERGE_IOU,
    max_detections: int | None = None,
) -> Detections:
    """One image's detections from its tiles' ``(window, detections in the tile's pixels)``.

    Rules in the module docstring. Without masks (a box-only model) two tile
    detections merge when their boxes' IoU within the common area reaches ``merge_iou``.
    """
    h, w = size
    boxes, scores, labels, keypoints, crops, tile_of = [], [], [], [], [], []
    names: list[str] = []
    for t, ((x0, y0, _, _), det) in enumerate(parts):
        names = names or det.class_names
        shift = torch.tensor([x0, y0, x0, y0], dtype=det.boxes.dtype)
        boxes.append(det.boxes + shift)
        scores.append(det.scores)
        labels.append(det.labels)
        if det.keypoints is not None:
            keypoints.append(det.keypoints + torch.tensor([x0, y0, 0.0], dtype=det.keypoints.dtype))
        if det.masks is not None:
            crops.append(det.masks.shifted(x0, y0, size))
        tile_of.extend([t] * len(det))
    if not parts:
        return Detections(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                          MaskCrops.empty(size), class_names=names)
    all_boxes, all_scores, all_labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    all_masks = MaskCrops.cat(crops, size) if crops else None
    all_keypoints = torch.cat(keypoints) if keypoints else None
    tiles = [window for window, _ in parts]

    # Union-find over detections: same class, different tiles, agreeing where both tiles see.
    parent = list(range(len(all_scores)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_tile: list[list[int]] = [[] for _ in tiles]
    for i, t in enumerate(tile_of):
        by_tile[t].append(i)
    corners = np.asarray(tiles, dtype=np.int64).reshape(-1, 4)
    for a in range(len(tiles)):
        # The later tiles that share pixels with tile a (its neighbours), all at once.
        rx0 = np.maximum(corners[a, 0], corners[a + 1 :, 0])
        ry0 = np.maximum(corners[a, 1], corners[a + 1 :, 1])
        rx1 = np.minimum(corners[a, 2], corners[a + 1 :, 2])
        ry1 = np.minimum(corners[a, 3], corners[a + 1 :, 3])
        for k in np.flatnonzero((rx0 < rx1) & (ry0 < ry1)).tolist():
            b = a + 1 + k
            region = (int(rx0[k]), int(ry0[k]), int(rx1[k]), int(ry1[k]))
            in_a = [i for i in by_tile[a] if _touches(all_boxes[i], region)]
            in_b = [j for j in by_tile[b] if _touches(all_boxes[j], region)]
            for i in in_a:
                for j in in_b:
                    if all_labels[i] != all_labels[j] or root(i) == root(j):
                        continue
                    if all_masks is not None:
                        iou = _window_iou(all_masks, i, all_masks, j, region)
                    else:
                        iou = _box_iou_in(all_boxes[i], all_boxes[j], region)
                    if iou >= merge_iou:
                        parent[root(j)] = root(i)

    groups: dict[int, list[int]] = {}
    for i in range(len(parent)):
        groups.setdefault(root(i), []).append(i)
    cores = _cores(tiles)
    merged_boxes, merged_scores, merged_labels, merged_keypoints = [], [], [], []
    windows, merged_crops = [], []
    for members in groups.values():
        best = max(members, key=lambda k: float(all_scores[k]))
        # The union of the members' boxes: each tile's box of a cut object ends at its edge.
        member_boxes = all_boxes[members]
        merged_boxes.append(torch.cat([member_boxes[:, :2].min(0).values,
                                       member_boxes[:, 2:].max(0).values]))
        merged_scores.append(all_scores[best])
        merged_labels.append(all_labels[best])
        if all_keypoints is not None:
            merged_keypoints.append(all_keypoints[best])
        if all_masks is not None:
            window, crop = _stitched_mask(all_masks, members, tile_of, cores)
            windows.append(window)
            merged_crops.append(crop)
    if not merged_scores:
        no_masks = None if all_masks is None else MaskCrops.empty(size)
        return Detections(all_boxes, all_scores, all_labels, no_masks, all_keypoints, class_names=names)
    order = torch.argsort(torch.stack(merged_scores), descending=True, stable=True)
    if max_detections is not None:
        order = order[:max_detections]
    keep = order.tolist()
    masks = None
    if all_masks is not None:
        masks = MaskCrops(torch.tensor([windows[k] for k in keep], dtype=torch.int64).reshape(-1, 4),
                          [merged_crops[k] for k in keep], (h, w))
    return Detections(
        boxes=torch.stack(merged_boxes)[order].reshape(-1, 4),
        scores=torch.stack(merged_scores)[order],
        labels=torch.stack(merged_labels)[order],
        masks=masks,
        keypoints=torch.stack(merged_keypoints)[order] if merged_keypoints else None,
        class_names=names,
    )


def _touches(box: Tensor, region: tuple[int, int, int, int]) -> bool:
    x0, y0, x1, y1 = box.tolist()
    return x0 < region[2] and x1 > region[0] and y0 < region[3] and y1 > region[1]


def _box_iou_in(a: Tensor, b: Tensor, region: tuple[int, int, int, int]) -> float:
    """IoU of two boxes, each cut to ``region``."""
    lo, hi = torch.tensor(region[:2], dtype=a.dtype), torch.tensor(region[2:], dtype=a.dtype)
    a = torch.cat([a[:2].clamp(min=lo, max=hi), a[2:].clamp(min=lo, max=hi)])
    b = torch.cat([b[:2].clamp(min=lo, max=hi), b[2:].clamp(min=lo, max=hi)])
    inter = (torch.minimum(a[2:], b[2:]) - torch.maximum(a[:2], b[:2])).clamp(min=0).prod()
    union = (a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter
    return float(inter / union) if float(union) > 0 else 0.0


class _Wrapping(BasePredictor):
    """A predictor around another: what it does not define (``device``, ``runtime``...) is the other's."""

    predictor: BasePredictor

    def __getattr__(self, name: str) -> Any:
        if name == "predictor":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.predictor, name)


class TiledPredictor(_Wrapping):
    # Merging depends on which neighbours were found, so a higher threshold is not a filter.
    filters_by_threshold_exactly = False

    """A PyTorch predictor run tile by tile (see the module docstring); the same interface as any predictor.

    ``size``: the tile side in pixels; ``overlap``: pixels shared by neighbouring
    tiles (at least the size of the objects cut by a seam is best); ``batch``:
    tiles per forward pass; ``max_detections``: the cap for a whole image.
    """

    def __init__(self, predictor: BasePredictor, *, size: int, overlap: int = 64, batch: int = 1,
                 max_detections: int | None = None, merge_iou: float = DEFAULT_MERGE_IOU,
                 progress: bool = True) -> None:
        if not isinstance(predictor, Predictor):
            raise ValueError("tiles run in PyTorch (--runtime torch): an exported model resizes its input "
                             "inside the graph, and tiles must run at their own scale")
        tile_windows(size, size, size, overlap)  # checks size and overlap
        if batch < 1:
            raise ValueError(f"tile batch must be at least 1, got {batch}")
        if max_detections is not None and max_detections < 1:
            raise ValueError(f"max detections must be at least 1, got {max_detections}")
        super().__init__(predictor.config, score_threshold=predictor.score_threshold)
        self.predictor = predictor
        self.size, self.overlap, self.batch = size, overlap, batch
        self.max_detections, self.merge_iou = max_detections, merge_iou
        self.progress = progress  # a bar over the tiles of an image that has many

    def run(
        self, images: Sequence[np.ndarray], score_threshold: float | None, timings: dict[str, float] | None
    ) -> list[Detections]:
        return [self._one(image, score_threshold) for image in images]

    def _one(self, image: np.ndarray, score_threshold: float | None) -> Detections:
        h, w = image.shape[:2]
        windows = tile_windows(h, w, self.size, self.overlap)
        parts: list[tuple[tuple[int, int, int, int], Detections]] = []
        with tqdm(total=len(windows), unit="tile", desc=f"tiles of {w}x{h}", leave=False, file=sys.stderr,
                  disable=not self.progress or len(windows) < PROGRESS_MIN_TILES) as bar:
            for start in range(0, len(windows), self.batch):
                chunk = windows[start : start + self.batch]
                tiles = [np.ascontiguousarray(image[y0:y1, x0:x1]) for x0, y0, x1, y1 in chunk]
                found = self.predictor.run(tiles, score_threshold, None, resize=False)
                parts.extend(zip(chunk, found, strict=True))
                bar.update(len(chunk))
        return merge_tiles(parts, (h, w), merge_iou=self.merge_iou, max_detections=self.max_detections)


class CappedPredictor(_Wrapping):
    """A predictor whose detections are cut to the ``cap`` highest scores of each image."""

    def __init__(self, predictor: BasePredictor, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"max detections must be at least 1, got {cap}")
        super().__init__(predictor.config, score_threshold=predictor.score_threshold)
        self.predictor, self.cap = predictor, cap

    def run(
        self, images: Sequence[np.ndarray], score_threshold: float | None, timings: dict[str, float] | None
    ) -> list[Detections]:
        found = self.predictor.run(images, score_threshold, timings)
        return [d[torch.argsort(d.scores, descending=True, stable=True)[: self.cap]] for d in found]


def add_tile_arguments(p: argparse.ArgumentParser) -> None:
    """``--tile``, ``--tile-overlap``, ``--max-detections`` (predict, evaluate, serve)."""
    p.add_argument("--tile", type=int, default=None, metavar="SIZE",
                   help="cut each image into SIZE x SIZE tiles run at the image's own scale (not "
                        "resized), detections merged across the seams by their masks: for images larger "
                        "than the model's input (aerial, microscopy)")
    p.add_argument("--tile-overlap", type=int, default=None, metavar="PIXELS",
                   help=f"pixels shared by neighbouring tiles (default {DEFAULT_TILE_OVERLAP})")
    p.add_argument("--max-detections", type=int, default=None, metavar="N",
                   help="keep the N best detections of each image (the model's own cap applies per tile)")


def check_tile_arguments(args: argparse.Namespace) -> None:
    """``ValueError`` (one line, naming the flag) for tile flags that cannot work, before anything is read."""
    if args.max_detections is not None and args.max_detections < 1:
        raise ValueError(f"--max-detections must be at least 1, got {args.max_detections}")
    if args.tile is None:
        if args.tile_overlap is not None:
            raise ValueError("--tile-overlap needs --tile SIZE")
        return
    if args.tile < MIN_TILE:
        raise ValueError(f"--tile must be at least {MIN_TILE}, got {args.tile}")
    overlap = DEFAULT_TILE_OVERLAP if args.tile_overlap is None else args.tile_overlap
    if not 0 <= overlap < args.tile:
        raise ValueError(f"--tile-overlap {overlap}: give 0 to {args.tile - 1} pixels for tiles of "
                         f"{args.tile}")
    exported = str(getattr(args, "weights", "")).lower().endswith(".onnx")
    if getattr(args, "runtime", None) not in (None, "torch") or exported:
        raise ValueError("--tile runs the model in PyTorch: give a checkpoint, not an exported .onnx model")


def tiled_predictor(predictor: BasePredictor, args: argparse.Namespace) -> BasePredictor:
    """``predictor`` run tile by tile when ``args.tile`` says so, capped by ``args.max_detections``."""
    if args.tile is None:
        return predictor if args.max_detections is None else CappedPredictor(predictor, args.max_detections)
    overlap = DEFAULT_TILE_OVERLAP if args.tile_overlap is None else args.tile_overlap
    return TiledPredictor(predictor, size=args.tile, overlap=overlap, batch=getattr(args, "batch_size", 1),
                          max_detections=args.max_detections)
