"""Typed data passed between the stages of the detector.

Conventions, stated once for the whole package:

- Boxes are ``(x0, y0, x1, y1)`` (XYXY) in absolute pixels, float32. Inside the
  model they are in the pixels of the resized network input; the detections a
  user receives are in the pixels of the image they passed in.
- Labels are contiguous foreground indices ``0 .. K-1``. The classifier has
  ``K + 1`` outputs with background at index 0; ``ModelConfig.category_ids``
  maps a label to the dataset's category id (COCO ids for COCO checkpoints).

Shape shorthand: ``N`` images, ``R`` RoIs, ``D`` detections, ``K`` classes,
``S`` mask side.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

import torch
from torch import Tensor

_T = TypeVar("_T")


def _map_tensors(value: _T, fn: Callable[[Any], Any]) -> _T:
    """A new dataclass like ``value`` with ``fn`` applied to each tensor (and ``MaskCrops``) field.

    ``None`` stays ``None`` and other fields are shallow copies (a list of
    sizes is a new list). The copy is built by the class's constructor, so
    ground truth checks its shapes again.
    """
    changes = {}
    for f in fields(value):  # type: ignore[arg-type]
        item = getattr(value, f.name)
        changes[f.name] = fn(item) if isinstance(item, Tensor | MaskCrops) else copy.copy(item)
    return replace(value, **changes)  # type: ignore[type-var]


class _Movable:
    """``to(device)`` for a dataclass: every tensor field moved."""

    def to(self: _T, device: torch.device | str) -> _T:
        return _map_tensors(self, lambda t: t.to(device))


class _Instances(_Movable):
    """``to(device)`` and indexing for a dataclass whose tensor fields all hold one row per instance.

    ``x[index]`` (a bool mask, an index tensor or a slice) selects the same
    instances from every tensor field.
    """

    def __getitem__(self: _T, index: Tensor | slice) -> _T:
        return _map_tensors(self, lambda t: t[index])


@dataclass
class MaskCrops:
    """Binary masks of ``D`` instances of one ``(H, W)`` image, each kept only over its window.

    Memory follows the objects, not the image: a 6000x4000 photo with 100
    detections holds 100 box-sized crops, not 2.4 GB of full-image masks.
    ``windows (D, 4)`` int64 ``[x0, y0, x1, y1]``: the pixel columns
    ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1`` of the image that crop ``i``
    covers (``0 <= x0 <= x1 <= W``); ``crops`` the ``D`` bool tensors
    ``(y1 - y0, x1 - x0)``; every pixel outside a window is background.
    ``size`` is the image's ``(H, W)``. :meth:`dense` builds the full
    ``(D, H, W)`` masks for whoever asks for them.
    """

    windows: Tensor
    crops: list[Tensor]
    size: tuple[int, int]

    def __post_init__(self) -> None:
        if self.windows.shape != (len(self.crops), 4):
            raise ValueError(f"MaskCrops: windows {tuple(self.windows.shape)} for {len(self.crops)} crops")

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(D, H, W)``, the shape of :meth:`dense`."""
        return (len(self.crops), self.size[0], self.size[1])

    @classmethod
    def empty(cls, size: tuple[int, int], device: torch.device | str = "cpu") -> MaskCrops:
        return cls(torch.zeros((0, 4), dtype=torch.int64, device=device), [], (int(size[0]), int(size[1])))

    @classmethod
    def from_dense(cls, masks: Tensor) -> MaskCrops:
        """Full ``(D, H, W)`` masks (nonzero = foreground), each cropped to the extent of its pixels."""
        masks = masks.bool()
        d, h, w = masks.shape
        rows, cols = masks.any(dim=2), masks.any(dim=1)  # (D, H), (D, W)
        windows, crops = [], []
        for i in range(d):
            ys, xs = torch.nonzero(rows[i]).flatten(), torch.nonzero(cols[i]).flatten()
            if len(ys) == 0:
                windows.append((0, 0, 0, 0))
                crops.append(masks.new_zeros((0, 0)))
                continue
            y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
            windows.append((x0, y0, x1, y1))
            crops.append(masks[i, y0:y1, x0:x1].clone())
        device = masks.device
        return cls(torch.tensor(windows, dtype=torch.int64, device=device).reshape(-1, 4), crops, (h, w))

    def dense(self) -> Tensor:
        """The full ``(D, H, W)`` bool masks (memory D x H x W: ask only when the image is small)."""
        out = torch.zeros(self.shape, dtype=torch.bool, device=self.windows.device)
        for i, (x0, y0, x1, y1) in enumerate(self.windows.tolist()):
            out[i, y0:y1, x0:x1] = self.crops[i]
        return out

    def areas(self) -> Tensor:
        """Foreground pixels of each mask, ``(D,)`` int64."""
        return torch.tensor([int(c.sum()) for c in self.crops], dtype=torch.int64)

    def shifted(self, dx: int, dy: int, size: tuple[int, int]) -> MaskCrops:
        """The same masks placed ``dx`` columns right and ``dy`` rows down in an image of ``size``,
        cut to it (how a tile's masks go back into the whole image)."""
        h, w = size
        windows, crops = [], []
        for (x0, y0, x1, y1), crop in zip(self.windows.tolist(), self.crops, strict=True):
            nx0, ny0, nx1, ny1 = max(x0 + dx, 0), max(y0 + dy, 0), min(x1 + dx, w), min(y1 + dy, h)
            nx1, ny1 = max(nx1, nx0), max(ny1, ny0)
            windows.append((nx0, ny0, nx1, ny1))
            top, left = ny0 - (y0 + dy), nx0 - (x0 + dx)
            crops.append(crop[top : top + ny1 - ny0, left : left + nx1 - nx0])
        return MaskCrops(torch.tensor(windows, dtype=torch.int64).reshape(-1, 4), crops, (int(h), int(w)))

    def to(self, device: torch.device | str) -> MaskCrops:
        return MaskCrops(self.windows.to(device), [c.to(device) for c in self.crops], self.size)

    def __getitem__(self, index: Tensor | slice) -> MaskCrops:
        rows = torch.arange(len(self.crops))[index.cpu() if isinstance(index, Tensor) else index]
        picked = rows.reshape(-1).tolist()
        return MaskCrops(self.windows[rows.to(self.windows.device)].reshape(-1, 4),
                         [self.crops[i] for i in picked], self.size)

    @staticmethod
    def cat(parts: list[MaskCrops], size: tuple[int, int]) -> MaskCrops:
        """The masks of several ``MaskCrops`` of one image, in order."""
        if not parts:
            return MaskCrops.empty(size)
        return MaskCrops(torch.cat([p.windows for p in parts]).reshape(-1, 4),
                         [c for p in parts for c in p.crops], (int(size[0]), int(size[1])))


@dataclass
class ImageBatch(_Movable):
    """Images resized, normalised and padded to one tensor.

    ``tensor`` is ``(N, 3, H, W)``; image ``i`` occupies
    ``tensor[i, :, :h_i, :w_i]`` with ``(h_i, w_i) = image_sizes[i]`` and zeros
    beyond. ``original_sizes[i]`` is the ``(h, w)`` the user passed in, which
    detections are mapped back to.
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return self.tensor.shape[0]

    @property
    def padded_size(self) -> tuple[int, int]:
        """``(H, W)`` of the padded batch."""
        return self.tensor.shape[-2], self.tensor.shape[-1]


@dataclass
class Proposals:
    """Region proposals of one image: ``boxes (R, 4)`` and objectness ``scores (R,)``."""

    boxes: Tensor
    scores: Tensor

    def __len__(self) -> int:
        return self.boxes.shape[0]


@dataclass
class Detections(_Instances):
    """Final detections of one image.

    ``boxes (D, 4)``, ``scores (D,)`` in [0, 1], ``labels (D,)`` int64 contiguous
    class indices. ``masks`` (when the model has a mask head) are the binary
    masks at the image's resolution, each kept over its window only
    (:class:`MaskCrops`: ``masks.dense()`` gives ``(D, H, W)`` bool);
    ``keypoints`` is ``(D, P, 3)`` with ``(x, y, score)`` per keypoint when
    it has a keypoint head.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: MaskCrops | None = None
    keypoints: Tensor | None = None
    class_names: list[str] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return self.boxes.shape[0]

    @property
    def names(self) -> list[str]:
        """The class name of each detection (empty strings when unknown)."""
        return [
            self.class_names[i] if i < len(self.class_names) else "" for i in self.labels.tolist()
        ]


@dataclass
class Annotations:
    """Ground truth of one image as a dataset reads it, in the image's own pixels.

    ``boxes (M, 4)`` float32 XYXY, ``labels (M,)`` int64 contiguous class
    indices, ``masks (M, H, W)`` uint8 {0, 1} or None, ``keypoints (M, P, 3)``
    float32 ``(x, y, visibility)`` or None. ``crowd_boxes (G, 4)`` are
    ``iscrowd`` regions: not instances to detect, but places where a
    detection is not counted as a mistake (ignored in matching and evaluation).
    ``M = 0`` is an image without instances (a negative). The shapes are
    checked when built (``check_instance_shapes``: ``ValueError``).
    """

    boxes: Tensor
    labels: Tensor
    masks: Tensor | None = None
    keypoints: Tensor | None = None
    crowd_boxes: Tensor = field(default_factory=lambda: torch.zeros((0, 4)))

    def __post_init__(self) -> None:
        check_instance_shapes(self)

    def __len__(self) -> int:
        return self.boxes.shape[0]


@dataclass
class Sample:
    """One dataset item: an ``(H, W, 3)`` uint8 RGB image tensor and its annotations."""

    image: Tensor
    annotations: Annotations
    image_id: int
    file_name: str


@dataclass
class Targets(_Movable):
    """Ground truth of one image for training, in network-input pixels (after resize and flip).

    Same fields as ``Annotations``; ``masks`` are ``(M, h, w)`` at the
    resized image's size (unpadded). ``seed``, when set, makes the random
    sampling of this image's anchors and RoIs a function of the image's place
    in the data stream, not of the process that trains on it: the same
    training whether the batch is split over one process or several, and
    after a resume. Shapes are checked when built, as for ``Annotations``.
    """

    boxes: Tensor
    labels: Tensor
    masks: Tensor | None = None
    keypoints: Tensor | None = None
    crowd_boxes: Tensor = field(default_factory=lambda: torch.zeros((0, 4)))
    seed: int | None = None

    def __post_init__(self) -> None:
        check_instance_shapes(self)

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def generator(self, salt: int = 0) -> torch.Generator | None:
        """A CPU generator seeded from ``seed`` (None: use the global RNG)."""
        if self.seed is None:
            return None
        return torch.Generator().manual_seed((self.seed * 1_000_003 + salt) % (2**63))


def check_instance_shapes(gt: Annotations | Targets) -> None:
    """Raise ``ValueError`` naming the field unless the ground truth's shapes agree.

    ``boxes (M, 4)``, ``labels (M,)`` of an integer type, ``masks (M, H, W)``,
    ``keypoints (M, P, 3)`` and ``crowd_boxes (G, 4)``: one ``M`` for every
    per-instance field. ``M = 0`` (an image without instances) is valid.
    Checked once, when the ground truth is built, so that a mismatch names
    its cause rather than surfacing as an indexing error inside a loss.
    """
    name = type(gt).__name__
    tensors = {"boxes": gt.boxes, "labels": gt.labels, "masks": gt.masks, "keypoints": gt.keypoints,
               "crowd_boxes": gt.crowd_boxes}
    for key, value in tensors.items():
        if value is not None and not isinstance(value, Tensor):
            raise ValueError(f"{name}.{key} must be a tensor, not {type(value).__name__}")
    if gt.boxes.dim() != 2 or gt.boxes.shape[1] != 4:
        raise ValueError(f"{name}.boxes must be (M, 4), got {tuple(gt.boxes.shape)}")
    m = gt.boxes.shape[0]
    if gt.labels.shape != (m,):
        raise ValueError(f"{name}.labels must be (M,) = ({m},) like the boxes, got {tuple(gt.labels.shape)}")
    if gt.labels.is_floating_point() or gt.labels.is_complex() or gt.labels.dtype == torch.bool:
        raise ValueError(f"{name}.labels must be integers, got {gt.labels.dtype}")
    if gt.masks is not None and (gt.masks.dim() != 3 or gt.masks.shape[0] != m):
        raise ValueError(f"{name}.masks must be (M, H, W) with M = {m} like the boxes, "
                         f"got {tuple(gt.masks.shape)}")
    if gt.keypoints is not None and (
        gt.keypoints.dim() != 3 or gt.keypoints.shape[0] != m or gt.keypoints.shape[2] != 3
    ):
        raise ValueError(f"{name}.keypoints must be (M, P, 3) with M = {m} like the boxes, "
                         f"got {tuple(gt.keypoints.shape)}")
    if gt.crowd_boxes.dim() != 2 or gt.crowd_boxes.shape[1] != 4:
        raise ValueError(f"{name}.crowd_boxes must be (G, 4), got {tuple(gt.crowd_boxes.shape)}")


@dataclass
class RoISamples:
    """Training RoIs of one image, sampled from proposals plus the ground-truth boxes.

    ``boxes (S, 4)``; ``classes (S,)`` the classifier's target (0 background,
    ``label + 1`` foreground); ``gt_index (S,)`` the matched ground-truth
    instance (meaningful where foreground); ``box_targets (S, 4)`` encoded
    regression targets towards it.
    """

    boxes: Tensor
    classes: Tensor
    gt_index: Tensor
    box_targets: Tensor

    def __len__(self) -> int:
        return self.boxes.shape[0]

    @property
    def foreground(self) -> Tensor:
        return self.classes > 0
