"""Running an exported model: ONNX Runtime or OpenVINO behind the predictor's interface.

``load_onnx("model.onnx")`` reads the config from the file's metadata and
returns an ``OnnxPredictor``: the same call, ``predict_files`` and
``Detections`` as the PyTorch ``Predictor``, so ``maskrcnn predict`` and
``evaluate`` (and the pictures) work unchanged. Images of one batch are put
in one zero canvas, each in its top-left corner with its size beside it;
the graph's flat outputs are split back per image and the masks cropped to
each image.

Runtimes: ``"onnxruntime"`` (CPU execution provider) and ``"openvino"`` (CPU
plugin). OpenVINO computes in bfloat16 on CPUs that have it unless told
otherwise; ``precision="f32"`` (the default) keeps float32, which the
equality tests use; ``"bf16"`` is faster where the CPU supports it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from ..config import ModelConfig
from ..engine.predict import BasePredictor
from ..structures import Detections, MaskCrops
from .onnx_file import read_config

Runtime = Literal["onnxruntime", "openvino"]
Precision = Literal["f32", "bf16"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)
# What ``load`` treats as an exported model rather than a checkpoint.
ONNX_SUFFIXES = (".onnx",)

OUTPUT_NAMES = {"boxes", "scores", "labels", "image_index", "masks", "keypoints"}

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def onnxruntime_runner(path: Path, threads: int | None) -> Runner:
    """An ONNX Runtime session on the CPU as a function of the input feeds."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are about its own graph rewrites
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feeds), strict=True))

    return run


def openvino_runner(path: Path, threads: int | None, precision: Precision) -> Runner:
    """An OpenVINO model compiled for the CPU as a function of the input feeds."""
    import openvino as ov

    config: dict[str, str] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    # An output can carry several tensor names in OpenVINO; take the graph's output name.
    outputs = [(o, min(o.get_names() & OUTPUT_NAMES or {o.get_any_name()})) for o in compiled.outputs]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = request.infer(feeds)
        return {name: np.asarray(results[o]) for o, name in outputs}

    return run


class OnnxPredictor(BasePredictor):
    """Runs an exported model (``maskrcnn export``) in ONNX Runtime or OpenVINO."""

    def __init__(
        self, runner: Runner, config: ModelConfig, *, runtime: str, score_threshold: float | None = None
    ) -> None:
        super().__init__(config, score_threshold=score_threshold)
        self.runner = runner
        self.runtime = runtime
        self.device = torch.device("cpu")

    def run(
        self, images: Sequence[np.ndarray], score_threshold: float | None, timings: dict[str, float] | None
    ) -> list[Detections]:
        threshold = self.config.box_head.score_thresh if score_threshold is None else score_threshold
        canvas, sizes = pad_images(images)
        start = time.perf_counter()
        out = self.runner({"images": canvas, "sizes": sizes,
                           "score_threshold": np.array(threshold, dtype=np.float32)})
        if timings is not None:
            timings[self.runtime] = timings.get(self.runtime, 0.0) + time.perf_counter() - start
        return split_outputs(out, sizes, list(self.config.class_names))


def pad_images(images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(H_i, W_i, 3)`` uint8 images -> one zero canvas ``(N, H, W, 3)`` and the sizes ``(N, 2)`` int64."""
    sizes = np.array([im.shape[:2] for im in images], dtype=np.int64).reshape(-1, 2)
    canvas = np.zeros((len(images), *sizes.max(axis=0), 3), dtype=np.uint8)
    for i, im in enumerate(images):
        canvas[i, : im.shape[0], : im.shape[1]] = im
    return canvas, sizes


def split_outputs(out: dict[str, np.ndarray], sizes: np.ndarray, class_names: list[str]) -> list[Detections]:
    """The graph's flat outputs (image-major) -> one ``Detections`` per image, masks cropped to it."""
    image_index = out["image_index"]
    bounds = np.searchsorted(image_index, np.arange(len(sizes) + 1))
    results = []
    for i, (h, w) in enumerate(sizes.tolist()):
        rows = slice(bounds[i], bounds[i + 1])
        masks = out.get("masks")
        keypoints = out.get("keypoints")
        results.append(Detections(
            boxes=torch.from_numpy(out["boxes"][rows].copy()),
            scores=torch.from_numpy(out["scores"][rows].copy()),
            labels=torch.from_numpy(out["labels"][rows].astype(np.int64)),
            masks=None if masks is None else MaskCrops.from_dense(torch.from_numpy(masks[rows, :h, :w] != 0)),
            keypoints=None if keypoints is None else torch.from_numpy(keypoints[rows].copy()),
            class_names=class_names,
        ))
    return results


def load_onnx(
    path: str | os.PathLike[str],
    *,
    runtime: str = "onnxruntime",
    score_threshold: float | None = None,
    threads: int | None = None,
    precision: str = "f32",
) -> OnnxPredictor:
    """A predictor for a file written by ``maskrcnn export``, run by ``runtime``."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if precision not in get_args(Precision):
        raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(get_args(Precision))}")
    path = Path(path)
    config = read_config(path)
    if runtime == "openvino":
        runner = openvino_runner(path, threads, precision)  # type: ignore[arg-type]  # checked above
    else:
        runner = onnxruntime_runner(path, threads)
    return OnnxPredictor(runner, config, runtime=runtime, score_threshold=score_threshold)

