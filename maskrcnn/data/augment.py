"""Training (and evaluation) transforms: ``Sample`` -> network input and ``Targets``.

Training draws, for each image, a shortest-edge size from
``InputConfig.train_min_sizes`` (multi-scale training; the long side stays
capped at ``max_size``) and flips horizontally with probability
``flip_prob``. The image goes through exactly the inference transform
(:func:`~maskrcnn.data.transforms.prepare_image`, the configured resize rule
and normalisation) with that size, so training and test inputs match.

Shapes: image ``(H, W, 3)`` uint8 -> ``(3, h, w)`` float32 normalised;
``boxes (M, 4)`` and ``crowd_boxes (G, 4)`` XYXY scaled by ``(w / W, h / H)``
per axis (the actual ratio of the integer sizes, not the nominal scale);
``masks (M, H, W)`` -> ``(M, h, w)`` uint8 by nearest-neighbour sampling at
pixel centres (``nearest-exact``: output pixel ``j`` reads input pixel
``floor((j + 0.5) * W / w)``, the pixel under its centre); ``keypoints
(M, P, 3)``: ``x, y`` scaled like the boxes, visibility kept.

A flip of an image of width ``w`` maps continuous ``x`` to ``w - x``: a
box ``(x0, y0, x1, y1)`` becomes ``(w - x1, y0, w - x0, y1)``, mask columns
reverse, and labelled keypoints move to ``w - x`` and trade places with
their mirror twin (``flip_pairs``: left eye <-> right eye), since after a
flip the left eye is where the right one was. Unlabelled keypoints
(visibility 0) stay ``(0, 0, 0)``.

Randomness comes only from the ``rng`` passed in (a ``torch.Generator`` or a
``numpy.random.Generator``), drawn in a fixed order (size index, then flip),
so a transform is a pure function of the sample and the rng's state.

Images without instances (``M = 0``: unannotated, crowd-only, or whose
annotations were all invalid) go through the same steps and give ``Targets``
with ``(0, 4)`` boxes, ``(0, h, w)`` masks and ``(0, P, 3)`` keypoints: a
negative for every stage of training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ..config import InputConfig
from ..structures import Sample, Targets
from .transforms import prepare_image, resized_size

Rng = torch.Generator | np.random.Generator


def train_transform(
    sample: Sample,
    cfg: InputConfig,
    rng: Rng,
    *,
    flip_pairs: Sequence[tuple[int, int]] = (),
) -> tuple[Tensor, Targets]:
    """Random-size resize, normalise and random horizontal flip of one sample.

    Returns the ``(3, h, w)`` normalised image and its ``Targets`` in the
    resized (and possibly flipped) image's pixels.
    """
    if not cfg.train_min_sizes:
        raise ValueError("InputConfig.train_min_sizes is empty")
    min_size = cfg.train_min_sizes[_integer(rng, len(cfg.train_min_sizes))]
    flip = _uniform(rng) < cfg.flip_prob
    return _transform(sample, cfg, min_size=min_size, flip=flip, flip_pairs=flip_pairs)


def eval_transform(sample: Sample, cfg: InputConfig) -> tuple[Tensor, Targets]:
    """The test-time resize (``cfg.min_size``) of a sample and its targets, no flip (validation losses)."""
    return _transform(sample, cfg, min_size=cfg.min_size, flip=False, flip_pairs=())


def _transform(
    sample: Sample,
    cfg: InputConfig,
    *,
    min_size: int,
    flip: bool,
    flip_pairs: Sequence[tuple[int, int]],
) -> tuple[Tensor, Targets]:
    height, width = sample.image.shape[:2]
    h, w = resized_size(height, width, cfg, min_size=min_size)
    image = prepare_image(sample.image.numpy(), cfg, min_size=min_size)
    ann = sample.annotations
    scale_x, scale_y = w / width, h / height

    boxes = _scale_boxes(ann.boxes, scale_x, scale_y)
    crowd = _scale_boxes(ann.crowd_boxes, scale_x, scale_y)
    masks = None
    if ann.masks is not None:
        masks = resize_masks(ann.masks, h, w)
    keypoints = None
    if ann.keypoints is not None:
        keypoints = ann.keypoints.to(torch.float32).clone()
        keypoints[..., 0] *= scale_x
        keypoints[..., 1] *= scale_y

    if flip:
        image = image.flip(-1)
        boxes = flip_boxes(boxes, w)
        crowd = flip_boxes(crowd, w)
        masks = None if masks is None else masks.flip(-1)
        keypoints = None if keypoints is None else flip_keypoints(keypoints, w, flip_pairs)

    targets = Targets(
        boxes=boxes,
        labels=ann.labels.to(torch.int64).clone(),
        masks=masks,
        keypoints=keypoints,
        crowd_boxes=crowd,
    )
    return image.contiguous(), targets


def resize_masks(masks: Tensor, height: int, width: int) -> Tensor:
    """``(M, H, W)`` masks -> ``(M, height, width)`` uint8 by nearest pixel centre (``M`` may be 0)."""
    if masks.shape[0] == 0:
        # interpolate refuses empty batches; an image without instances has none to resize.
        return torch.zeros((0, height, width), dtype=torch.uint8, device=masks.device)
    # (M, H, W) -> (1, M, H, W) for interpolate, which resizes the last two dims.
    return F.interpolate(masks[None].to(torch.uint8), size=(height, width), mode="nearest-exact")[0]


def _scale_boxes(boxes: Tensor, scale_x: float, scale_y: float) -> Tensor:
    """``(B, 4)`` XYXY boxes scaled per axis (a new float32 tensor)."""
    factors = torch.tensor([scale_x, scale_y, scale_x, scale_y], dtype=torch.float32)
    return boxes.to(torch.float32) * factors


def flip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror ``(B, 4)`` XYXY boxes in an image of ``width``: ``(x0, x1) -> (width - x1, width - x0)``."""
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


def flip_keypoints(keypoints: Tensor, width: int, flip_pairs: Sequence[tuple[int, int]]) -> Tensor:
    """Mirror ``(M, P, 3)`` keypoints: labelled ``x -> width - x``, then swap each ``(left, right)`` pair."""
    flipped = keypoints.clone()
    labelled = flipped[..., 2] > 0
    flipped[..., 0] = torch.where(labelled, width - flipped[..., 0], flipped[..., 0])
    order = list(range(keypoints.shape[1]))
    for left, right in flip_pairs:
        if not (0 <= left < len(order) and 0 <= right < len(order)):
            raise ValueError(
                f"keypoint flip pair ({left}, {right}) is out of range for {len(order)} keypoints per "
                f"instance: the dataset's keypoints are not the model's"
            )
        order[left], order[right] = right, left
    return flipped[:, order]


def _integer(rng: Rng, n: int) -> int:
    """A uniform draw from ``0 .. n-1``."""
    if isinstance(rng, torch.Generator):
        return int(torch.randint(n, (1,), generator=rng).item())
    return int(rng.integers(n))


def _uniform(rng: Rng) -> float:
    """A uniform draw from ``[0, 1)``."""
    if isinstance(rng, torch.Generator):
        return float(torch.rand((), generator=rng).item())
    return float(rng.random())
