"""Prediction: a loaded model that takes images and returns typed detections.

``Predictor`` owns the model, its config (input transform, class names,
category ids) and a device. It accepts file paths, PIL images, numpy arrays
and tensors (see ``data.images.to_rgb_array`` for the conventions), batches
them in the order given, and returns one ``Detections`` per image in that
image's pixels.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..config import ModelConfig
from ..data.images import load_image, to_rgb_array
from ..data.transforms import make_batch
from ..model import MaskRCNN, build_model
from ..model.mask_rcnn import InferenceSettings
from ..structures import Detections, ImageBatch

ImageLike = str | os.PathLike[str] | Image.Image | np.ndarray | torch.Tensor


class Predictor:
    """Runs a Mask R-CNN on images. Build one with ``maskrcnn.load(path)``."""

    def __init__(
        self,
        model: MaskRCNN,
        config: ModelConfig,
        *,
        device: str | torch.device = "cpu",
        score_threshold: float | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        # Convolutions run faster on channels-last tensors (measured 21% less
        # time for a whole R50-FPN prediction on the CPU); the values are the same.
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        # None: the model's own threshold (0.05 for the peers' checkpoints).
        self.score_threshold = check_score_threshold(score_threshold)

    def inference_settings(self, score_threshold: float | None = None) -> InferenceSettings:
        """The model's inference settings with ``score_threshold`` (else the predictor's) as the
        box head's score threshold: a new object, the model's own is left as it is."""
        threshold = check_score_threshold(score_threshold)
        if threshold is None:
            threshold = self.score_threshold
        settings = self.model.inference
        if threshold is None or threshold == settings.score_thresh:
            return settings
        # The threshold is applied where the box head applies its own, before per-class
        # NMS and the top-k cap, as the peers do: a higher one keeps exactly the
        # detections above it that the model would return, a lower one returns more.
        return dataclasses.replace(settings, score_thresh=threshold)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    def coco_keypoints(self, detections: Detections) -> np.ndarray | None:
        """``(D, K, 3)`` keypoints as COCO results have them: pixel indices, then the score."""
        head = self.config.keypoint_head
        if detections.keypoints is None or head is None:
            return None
        keypoints = detections.keypoints.detach().cpu().numpy().astype(np.float64)
        keypoints[..., :2] -= head.pixel_offset
        return keypoints

    def category_ids(self, detections: Detections) -> list[int]:
        """The dataset's category id of each detection (COCO ids for COCO checkpoints)."""
        return [self.config.category_id(int(label)) for label in detections.labels]

    def prepare(self, images: Sequence[np.ndarray]) -> ImageBatch:
        """``(H, W, 3)`` uint8 RGB arrays -> the model's input batch on the predictor's device."""
        batch = make_batch(list(images), self.config.input, self.device)
        batch.tensor = batch.tensor.contiguous(memory_format=torch.channels_last)
        return batch

    def predict_arrays(
        self,
        images: Sequence[np.ndarray],
        *,
        score_threshold: float | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[Detections]:
        """One forward pass over ``(H, W, 3)`` uint8 RGB arrays batched together.

        ``score_threshold`` in [0, 1] overrides the predictor's for this call.
        """
        batch = self.prepare(images)
        model = _with_settings(self.model, self.inference_settings(score_threshold))
        detections = model.predict(batch, timings=timings)
        names = list(self.config.class_names)
        return [dataclasses.replace(d.to("cpu"), class_names=names) for d in detections]

    def __call__(
        self,
        images: ImageLike | Sequence[ImageLike],
        *,
        batch_size: int = 1,
        score_threshold: float | None = None,
    ) -> Detections | list[Detections]:
        """Detections of one image, or a list for a list of images (batched ``batch_size`` at a time).

        ``score_threshold`` in [0, 1] overrides the predictor's for this call.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        single = not isinstance(images, list | tuple)
        items: list[ImageLike] = [images] if single else list(images)  # type: ignore[list-item]
        arrays = [_as_array(x) for x in items]
        results: list[Detections] = []
        for start in range(0, len(arrays), batch_size):
            chunk = arrays[start : start + batch_size]
            results += self.predict_arrays(chunk, score_threshold=score_threshold)
        return results[0] if single else results


def check_score_threshold(value: float | None) -> float | None:
    """``value`` as a float in [0, 1] (None stays None), else ValueError."""
    if value is None:
        return None
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"score threshold must be in [0, 1], got {value:g}")
    return value


def _with_settings(model: MaskRCNN, settings: InferenceSettings) -> MaskRCNN:
    """``model``, or a shallow copy of it that runs with other inference settings.

    The copy shares every parameter, buffer and submodule with ``model`` (no
    memory, no copying of weights); only its ``inference`` attribute differs,
    so the caller's model is never changed.
    """
    if settings is model.inference:
        return model
    view = copy.copy(model)
    view.inference = settings
    return view


def _as_array(image: ImageLike) -> np.ndarray:
    if isinstance(image, str | os.PathLike):
        return load_image(Path(image))
    return to_rgb_array(image)


def load(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    format: str | None = None,
    score_threshold: float | None = None,
) -> Predictor:
    """Load a checkpoint (ours, torchvision's or Detectron2's, detected from its keys) for prediction."""
    from ..convert import load_checkpoint

    config, state = load_checkpoint(path, format=format)
    model = build_model(config)
    model.load_state_dict(state, strict=True)
    return Predictor(model, config, device=device, score_threshold=score_threshold)


def batches(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
