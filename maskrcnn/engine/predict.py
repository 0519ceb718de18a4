"""Prediction: a loaded model that takes images and returns typed detections.

``Predictor`` owns the model, its config (input transform, class names,
category ids) and a device. It accepts file paths, PIL images, numpy arrays
and tensors (see ``data.images.to_rgb_array`` for the conventions), batches
them in the order given, and returns one ``Detections`` per image in that
image's pixels.

``Predictor.predict_files`` is the one loop over many images (used by
``__call__``, ``maskrcnn predict`` and ``evaluate``): it reads them a batch at a
time, skips and reports those that cannot be read, and yields one
``Prediction`` per input in input order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..config import ModelConfig
from ..data.images import ImageReadError, load_image, to_rgb_array
from ..data.transforms import make_batch
from ..model import MaskRCNN, build_model
from ..model.precision import cast_for_inference, check_dtype, dtype_name, network_dtype, parse_dtype
from ..structures import Detections, ImageBatch

ImageLike = str | os.PathLike[str] | Image.Image | np.ndarray | torch.Tensor

Source = TypeVar("Source")


@dataclasses.dataclass(frozen=True)
class Prediction(Generic[Source]):
    """What :meth:`Predictor.predict_files` yields for one input: its detections, or why it was skipped.

    Exactly one of ``detections`` and ``error`` is set.
    """

    index: int  # the input's position among the inputs
    source: Source  # the input as given: a path, an in-memory image, an annotation entry...
    image: np.ndarray | None  # (H, W, 3) uint8 RGB, the pixels the detections are in; None when skipped
    detections: Detections | None = None
    error: ImageReadError | None = None  # str(error) is "PATH: what is wrong"


class BasePredictor:
    """What every predictor shares: the config, the score threshold, batching over files.

    Subclasses run the model in ``predict_arrays``: ``Predictor`` in PyTorch,
    ``export.runtime.OnnxPredictor`` in ONNX Runtime or OpenVINO.
    """

    # Whether the detections at a threshold are exactly those above it among the detections at any
    # lower one (true of the model: its threshold comes before NMS, which only suppresses lower
    # scores, and before its cap); servers then batch requests of different thresholds together.
    filters_by_threshold_exactly = True

    def __init__(self, config: ModelConfig, *, score_threshold: float | None = None) -> None:
        self.config = config
        # None: the model's own threshold (0.05 for the peers' checkpoints).
        self.score_threshold = check_score_threshold(score_threshold)

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

    def coco_results(self, detections: Detections, file_name: str) -> list[dict[str, Any]]:
        """One image's detections as the COCO result records ``predict`` writes: ``file_name``,
        ``category_id``, ``bbox`` XYWH, ``score``, ``segmentation`` RLE, ``keypoints`` where the model
        has them."""
        from .results import to_coco_results

        return to_coco_results(file_name, detections.boxes, detections.scores, self.category_ids(detections),
                               detections.masks, self.coco_keypoints(detections))

    def predict_video(
        self,
        path: str | os.PathLike[str],
        *,
        every: int = 1,
        batch_size: int = 1,
        score_threshold: float | None = None,
    ) -> Iterator[Any]:
        """The frames of a video file (mp4, mov, avi, mkv, webm), every ``every``-th one predicted:
        yields ``VideoFrame`` (``index``, ``time``, ``image``, ``detections``), streaming; see
        :func:`maskrcnn.engine.video.predict_video`."""
        from .video import predict_video

        return predict_video(self, path, every=every, batch_size=batch_size, score_threshold=score_threshold)

    def predict_arrays(
        self,
        images: Sequence[np.ndarray],
        *,
        score_threshold: float | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[Detections]:
        """One forward pass over ``(H, W, 3)`` uint8 RGB arrays batched together.

        ``score_threshold`` in [0, 1] overrides the predictor's for this call.
        It is applied where the box branch applies its own, before per-class
        NMS and the top-k cap, as the peers do: a higher one keeps exactly the
        detections above it that the model would return, a lower one returns
        more. ``timings`` receives seconds per stage where the runner reports them.
        """
        threshold = check_score_threshold(score_threshold)
        threshold = self.score_threshold if threshold is None else threshold
        return self.run(images, threshold, timings)

    def run(
        self, images: Sequence[np.ndarray], score_threshold: float | None, timings: dict[str, float] | None
    ) -> list[Detections]:
        """The model on a batch (``score_threshold`` None: the model's own); per subclass."""
        raise NotImplementedError

    def __call__(
        self,
        images: ImageLike | Sequence[ImageLike],
        *,
        batch_size: int = 1,
        score_threshold: float | None = None,
    ) -> Detections | list[Detections]:
        """Detections of one image, or a list for a list of images (batched ``batch_size`` at a time).

        ``score_threshold`` in [0, 1] overrides the predictor's for this call.
        A file that cannot be read raises its ``ImageReadError`` (the list
        answers the inputs one to one); ``predict_files`` skips such files instead.
        """
        single = not isinstance(images, list | tuple)
        items: list[ImageLike] = [images] if single else list(images)  # type: ignore[list-item]
        results: list[Detections] = []
        for prediction in self.predict_files(items, batch_size=batch_size, score_threshold=score_threshold,
                                             report=False):
            if prediction.error is not None:
                raise prediction.error
            results.append(prediction.detections)  # type: ignore[arg-type]  # set when error is None
        return results[0] if single else results

    def predict_files(
        self,
        sources: Iterable[Source],
        *,
        batch_size: int = 1,
        score_threshold: float | None = None,
        read: Callable[[Source], np.ndarray] | None = None,
        report: bool = True,
        progress: bool = False,
        desc: str | None = None,
    ) -> Iterator[Prediction[Source]]:
        """Predict many images ``batch_size`` at a time; one :class:`Prediction` per source, in input order.

        ``read`` turns a source into an ``(H, W, 3)`` uint8 RGB array (default:
        a path is read from disk, an in-memory image converted; see
        ``data.images``) and raises ``ImageReadError`` for a source that cannot
        be used. Such a source does not stop the run: it takes no place in a
        batch, is yielded in its turn with ``error`` set and, when ``report``,
        a line ``skipped PATH: what is wrong`` goes to stderr as it is found.
        Any other error propagates. ``score_threshold`` is as in ``predict_arrays``.
        ``progress`` shows a bar on stderr (labelled ``desc``) that counts
        skipped sources too. Sources are read as the batches need them, so at
        most one batch of images is held at a time.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        read_image: Callable[[Source], np.ndarray] = read or _as_array  # type: ignore[assignment]
        total = len(sources) if isinstance(sources, Sized) else None
        bar = tqdm(total=total, unit="img", desc=desc, disable=not progress, file=sys.stderr)
        # The sources since the last forward pass: the readable ones wait for a full batch,
        # the skipped ones among them for their turn.
        pending: list[Prediction[Source]] = []

        def run_pending() -> Iterator[Prediction[Source]]:
            arrays = [p.image for p in pending if p.image is not None]
            found = iter(self.predict_arrays(arrays, score_threshold=score_threshold) if arrays else [])
            for p in pending:
                yield p if p.image is None else dataclasses.replace(p, detections=next(found))
                bar.update(1)
            pending.clear()

        try:
            readable = 0  # images in pending
            for index, source in enumerate(sources):
                try:
                    pending.append(Prediction(index, source, read_image(source)))
                    readable += 1
                except ImageReadError as error:
                    if report:
                        tqdm.write(f"skipped {error}", file=sys.stderr)
                    pending.append(Prediction(index, source, None, error=error))
                # A full batch, or skipped sources with no image before them to wait for.
                if readable in (0, batch_size):
                    yield from run_pending()
                    readable = 0
            yield from run_pending()
        finally:
            bar.close()


class Predictor(BasePredictor):
    """Runs a Mask R-CNN in PyTorch. Build one with ``maskrcnn.load(path)``."""

    def __init__(
        self,
        model: MaskRCNN,
        config: ModelConfig,
        *,
        device: str | torch.device | None = None,
        score_threshold: float | None = None,
    ) -> None:
        super().__init__(config, score_threshold=score_threshold)
        # None: where the model is (a training model stays on its device).
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        # The caller's model, on the predictor's device; its mode is left alone (each
        # prediction runs in eval mode and restores the modes it found).
        self.model = model.to(self.device)
        # The network's number type (``load(dtype=...)`` casts it); the input is given the same.
        self.dtype = network_dtype(self.model)

    def prepare(self, images: Sequence[np.ndarray], *, resize: bool = True) -> ImageBatch:
        """``(H, W, 3)`` uint8 RGB arrays -> the model's input batch on the predictor's device
        (``resize=False``: at the images' own size, not the config's input size)."""
        batch = make_batch(list(images), self.config.input, self.device, resize=resize)
        batch.tensor = batch.tensor.to(self.dtype).contiguous(memory_format=torch.channels_last)
        return batch

    def run(
        self, images: Sequence[np.ndarray], score_threshold: float | None, timings: dict[str, float] | None,
        *, resize: bool = True,
    ) -> list[Detections]:
        batch = self.prepare(images, resize=resize)
        with evaluation_mode(self.model):
            detections = self.model.predict(batch, score_threshold=score_threshold, timings=timings)
        names = list(self.config.class_names)
        return [dataclasses.replace(d.to("cpu"), class_names=names) for d in detections]



@contextlib.contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block; every submodule's own mode is restored after it."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def check_score_threshold(value: float | None) -> float | None:
    """``value`` as a float in [0, 1] (None stays None), else ValueError."""
    if value is None:
        return None
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"score threshold must be in [0, 1], got {value:g}")
    return value


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
    runtime: str | None = None,
    dtype: str | torch.dtype | None = None,
) -> BasePredictor:
    """Load a model for prediction.

    A checkpoint (ours, torchvision's or Detectron2's, detected from its
    keys) runs in PyTorch; a file written by ``maskrcnn export`` (``.onnx``)
    runs in ONNX Runtime, or in OpenVINO with ``runtime="openvino"``.

    ``dtype`` (``"float32"``, the default, ``"bfloat16"``, or ``"float16"`` on
    CUDA) is the type the network computes in; boxes, scores and masks stay
    float32 (see ``model.precision``). Exported models compute in float32.
    """
    dtype = parse_dtype(dtype)
    check_dtype(dtype, device)
    from ..export.runtime import ONNX_SUFFIXES, RUNTIMES, load_onnx

    exported = Path(path).suffix.lower() in ONNX_SUFFIXES
    if runtime is None:
        runtime = "onnxruntime" if exported else "torch"
    if runtime not in ("torch", *RUNTIMES):
        raise ValueError(f"unknown runtime {runtime!r}: expected torch, {', '.join(RUNTIMES)}")
    if runtime != "torch":
        if not exported:
            raise ValueError(f"{path}: the {runtime} runtime runs exported models (.onnx); export this "
                             f"checkpoint first: maskrcnn export --weights {path} --out model.onnx")
        if torch.device(device).type != "cpu":
            raise ValueError(f"exported models run on the CPU here, not on {device}")
        if dtype != torch.float32:
            raise ValueError(f"{path}: exported models compute in float32 here; --dtype {dtype_name(dtype)} "
                             "is for checkpoints run in torch")
        return load_onnx(path, runtime=runtime, score_threshold=score_threshold)
    if exported:
        raise ValueError(f"{path}: an exported model runs in onnxruntime or openvino, not in torch")
    from ..convert import load_checkpoint

    config, state = load_checkpoint(path, format=format)
    model = build_model(config)
    model.load_state_dict(state, strict=True)
    # Convolutions run faster on channels-last tensors (measured 21% less time for a whole
    # R50-FPN prediction on the CPU); the values are the same. The model is the predictor's own.
    model = cast_for_inference(model.to(memory_format=torch.channels_last).eval(), dtype)
    return Predictor(model, config, device=device, score_threshold=score_threshold)
