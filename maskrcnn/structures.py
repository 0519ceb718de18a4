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
from typing import TypeVar

import torch
from torch import Tensor

_T = TypeVar("_T")


def _map_tensors(value: _T, fn: Callable[[Tensor], Tensor]) -> _T:
    """A new dataclass like ``value`` with ``fn`` applied to each tensor field.

    ``None`` stays ``None`` and other fields are shallow copies (a list of
    sizes is a new list). The copy is built by the class's constructor, so
    ground truth checks its shapes again.
    """
    changes = {}
    for f in fields(value):  # type: ignore[arg-type]
        item = getattr(value, f.name)
        changes[f.name] = fn(item) if isinstance(item, Tensor) else copy.copy(item)
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
    class indices. ``masks`` is ``(D, H, W)`` bool at the image's resolution
    when the model has a mask head; ``keypoints`` is ``(D, P, 3)`` with
    ``(x, y, score)`` per keypoint when it has a keypoint head.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: Tensor | None = None
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
