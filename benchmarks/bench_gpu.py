"""GPU checks and benchmarks of our Mask R-CNN against torchvision, in one prepared run (issue 11).

Usage (see benchmarks/README.md for the device machine's command line)::

    python benchmarks/bench_gpu.py [--device cuda] [--out DIR] [--budget-s 450]
    python benchmarks/bench_gpu.py --device cpu --quick      # the smoke test: every section, tiny

Sections, in this order (``--sections`` picks some):

``check``
    CUDA tests. First a training step: the losses and gradient norm of one
    forward/backward on the device (float32, TF32 off) against the CPU's on
    the same two images and targets, and AMP steps (float16 autocast, gradient
    scaler, SGD) that must give finite losses and change every trainable
    weight. Then every reference fixture (the shared ones and the project's
    own under ``tests/reference``) predicted on the device in float32 with
    TF32 off, each call's images as one batch: ``compare.py`` must hold, as
    ``tests/test_reference.py`` requires on the CPU. The torchvision R50-FPN
    fixture is also run, for information, in float32 with PyTorch's default
    TF32 convolutions (how the inference figures below run), bfloat16 and
    float16.
``infer``
    R50-FPN inference, images per second, in float32, float16 and bfloat16 at
    batch 1 and 8, ours and torchvision's ``MaskRCNN`` on the same weights
    (the ``torchvision-maskrcnn-r50-fpn`` fixture's) and the same 8 photos
    (``tests/reference/images``, resized to ``--size``). Timed: uint8
    ``(H, W, 3)`` arrays on the host in, detections on the device out (ours:
    ``Predictor.prepare`` + ``model.predict``; torchvision: upload, ``/255``,
    ``model(images)``). Also ours with the detections copied to the host
    (``predict_arrays``, what ``maskrcnn predict`` pays), and ours per stage.
    Ours computes in the low precisions by ``load(dtype=...)``; torchvision by
    ``torch.autocast``, the way its reference scripts use it.
``train``
    Training iterations per second at batch 8 (``--train-batch``) with AMP
    (float16 autocast and a gradient scaler, as our ``Trainer`` does on CUDA),
    SGD with momentum, on the same 8 photos with synthetic targets (6
    instances each: boxes and elliptic masks), data already on the device: the
    step alone. torchvision's model is built as ``maskrcnn_resnet50_fpn``
    builds it for COCO weights (frozen batch norm, 3 trainable ResNet stages),
    as ours with ``freeze_at=2``.
``ops``
    RoIAlign (forward, and forward + backward) and NMS alone against
    torchvision's kernels on the same inputs, with the agreement of the
    outputs (relative error, kept indices).

Timing follows .library/device/METHOD.md: warm-up runs first, then timed runs
(CUDA events after a synchronisation; ``perf_counter`` on the CPU) until a
minimum count and a time target are both reached; medians. Ours and
torchvision alternate in halves (ours, torchvision, torchvision, ours) so that
drift in the card's clocks falls on both. A time budget (``--budget-s``)
skips what would not fit, saying so; each section keeps a share of it for
those after it (``SHARES``). A configuration that raises is recorded and the
run goes on.

Output: markdown tables on stdout (device, versions, settings, every figure);
progress on stderr; with ``--out DIR`` (default ``$OUT`` when set)
``bench_gpu.json`` (every timed run) and ``bench_gpu.md``, rewritten after
each section so that a run cut short keeps what it measured. Exit 1 when a
check fails or a section raised, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout: ``maskrcnn`` and ``tests`` without an install

from maskrcnn.config import InputConfig  # noqa: E402
from maskrcnn.convert import load_checkpoint  # noqa: E402
from maskrcnn.data.images import load_image  # noqa: E402
from maskrcnn.data.transforms import make_batch  # noqa: E402
from maskrcnn.engine.predict import Predictor, load  # noqa: E402
from maskrcnn.engine.schedule import parameter_groups  # noqa: E402
from maskrcnn.model import build_model  # noqa: E402
from maskrcnn.ops.nms import batched_nms as our_batched_nms  # noqa: E402
from maskrcnn.ops.nms import nms as our_nms  # noqa: E402
from maskrcnn.ops.roi_align import roi_align as our_roi_align  # noqa: E402
from maskrcnn.structures import ImageBatch, Targets  # noqa: E402

TV_FIXTURE = "torchvision-maskrcnn-r50-fpn"
SHARED_FIXTURES = (TV_FIXTURE, "detectron2-maskrcnn-r50-fpn", "torchvision-keypointrcnn-r50-fpn")
OWN_REFERENCE = ROOT / "tests" / "reference"
PHOTOS = OWN_REFERENCE / "images"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
GIB = 1024**3
# A float32 step on the device and on the CPU: losses may differ by the order of sums and by
# which near-tied proposals the RPN keeps; more than this relative difference is a fault.
LOSS_RTOL = 2e-2
# AMP steps tried before one must update the weights (the gradient scaler may skip the first ones).
AMP_ATTEMPTS = 5


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much of everything to run: the full GPU run or the CPU smoke test (``--quick``)."""

    size: tuple[int, int]  # H x W of the benchmark photos
    images: int  # distinct photos rotated through
    batches: tuple[int, ...]
    dtypes: tuple[str, ...]
    warmup: int
    min_runs: int
    max_runs: int
    target_s: float  # per side and configuration, both halves together
    train_batch: int
    train_warmup: int
    train_min_steps: int
    train_max_steps: int
    train_target_s: float
    check_size: tuple[int, int]  # the CPU-vs-device training check's images
    fixtures: tuple[str, ...] | None  # None: every fixture found
    fixture_calls: int | None  # calls of each fixture run (None: all)
    stage_runs: int  # runs of ours with a synchronisation after each stage
    ops_scale: float  # 1: the model's sizes; smaller for the smoke test
    op_runs: tuple[int, int, float]  # min runs, max runs, target seconds per side
    budget_s: float  # default --budget-s


FULL = Plan(size=(800, 1066), images=8, batches=(1, 8), dtypes=("float32", "float16", "bfloat16"),
            warmup=3, min_runs=10, max_runs=200, target_s=4.0,
            train_batch=8, train_warmup=3, train_min_steps=10, train_max_steps=60, train_target_s=10.0,
            check_size=(384, 512), fixtures=None, fixture_calls=None, stage_runs=3, ops_scale=1.0,
            op_runs=(10, 200, 1.0), budget_s=450.0)
QUICK = Plan(size=(160, 224), images=2, batches=(1, 2), dtypes=("float32", "float16", "bfloat16"),
             warmup=0, min_runs=2, max_runs=2, target_s=0.0,
             train_batch=2, train_warmup=1, train_min_steps=2, train_max_steps=2, train_target_s=0.0,
             check_size=(128, 160), fixtures=(TV_FIXTURE,), fixture_calls=1, stage_runs=1, ops_scale=0.1,
             op_runs=(2, 2, 0.0), budget_s=900.0)


class Budget:
    """Seconds left of ``--budget-s``, counted from the start of the script."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds
        self.seconds = seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds

    def share(self, reserved: float) -> Budget:
        """What is left once ``reserved`` (a fraction of the whole budget) is kept for later sections."""
        return Budget(max(0.0, self.left() - reserved * self.seconds))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the record


class Report:
    """The JSON record and the markdown sections, written to ``out`` after every section."""

    def __init__(self, out: Path | None) -> None:
        self.out = out
        self.record: dict[str, Any] = {"errors": [], "notes": []}
        self.sections: list[tuple[str, list[str]]] = []
        self.failed_checks: list[str] = []

    def section(self, title: str, lines: list[str]) -> None:
        self.sections = [(t, body) for t, body in self.sections if t != title] + [(title, lines)]
        self.save()

    def note(self, text: str) -> None:
        log(f"note: {text}")
        self.record["notes"].append(text)

    def error(self, where: str, error: BaseException) -> str:
        text = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        log(f"ERROR in {where}: {text}")
        traceback.print_exception(error, file=sys.stderr)
        self.record["errors"].append({"where": where, "error": text, "traceback": traceback.format_exc()})
        return text.replace("|", "/")[:200]  # for a table cell

    def markdown(self) -> str:
        parts = []
        for title, lines in self.sections:
            parts.append(f"### {title}" if title else "")
            parts.extend(lines)
            parts.append("")
        return "\n".join(parts).strip() + "\n"

    def save(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "bench_gpu.json").write_text(json.dumps(self.record, indent=1, default=str) + "\n")
        (self.out / "bench_gpu.md").write_text(self.markdown())


@contextlib.contextmanager
def guarded(report: Report, where: str) -> Iterator[dict[str, Any]]:
    """Run a block; an exception is recorded (``state["error"]``) instead of ending the run."""
    state: dict[str, Any] = {"error": None}
    try:
        yield state
    except Exception as e:  # noqa: BLE001 - one failing configuration must not lose the others
        state["error"] = report.error(where, e)
        with contextlib.suppress(Exception):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.empty_cache()


# --------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(fn: Callable[[int], object], i: int, device: torch.device) -> float:
    """Seconds of ``fn(i)``: CUDA events around it (after a synchronisation) on CUDA, else wall clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(i)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    start_s = time.perf_counter()
    fn(i)
    return time.perf_counter() - start_s


def measure(fn: Callable[[int], object], device: torch.device, *, warmup: int, min_runs: int, max_runs: int,
            target_s: float, budget: Budget, first: int = 0) -> list[float]:
    """``warmup`` untimed calls, then timed ones until ``min_runs`` and ``target_s`` are both reached
    (at most ``max_runs``; fewer, but at least one, when the budget runs out). ``fn`` gets a running index."""
    for i in range(warmup):
        fn(first + i)
    synchronize(device)
    times: list[float] = []
    begin = time.perf_counter()
    i = first + warmup
    while len(times) < max_runs:
        elapsed = time.perf_counter() - begin
        # Slow calls stop at three runs and twice the target rather than at min_runs.
        enough = (len(times) >= min_runs and elapsed >= target_s) or (
            len(times) >= 3 and elapsed >= 2 * target_s)
        if enough or (times and budget.left() < 0):
            break
        times.append(timed_call(fn, i, device))
        i += 1
    return times


def measure_pair(fa: Callable[[int], object], fb: Callable[[int], object] | None, device: torch.device, *,
                 warmup: int, min_runs: int, max_runs: int, target_s: float, budget: Budget
                 ) -> tuple[list[float], list[float] | None, float | None, float | None]:
    """Times of ``fa`` and ``fb`` measured in halves A B B A (``fb`` None: A alone, in two halves), and
    each side's peak of allocated device memory over its halves (None off CUDA)."""
    half = {"min_runs": max(1, math.ceil(min_runs / 2)), "max_runs": max(1, math.ceil(max_runs / 2)),
            "target_s": target_s / 2, "budget": budget}
    times: dict[str, list[float]] = {"a": [], "b": []}
    peaks: dict[str, float | None] = {"a": None, "b": None}
    again = min(warmup, 1)  # the second halves: one more warm-up run after the other side's
    order = [("a", fa, warmup, 0), ("b", fb, warmup, 0), ("b", fb, again, 10_000), ("a", fa, again, 10_000)]
    for side, fn, w, first in order:
        if fn is None:
            continue
        reset_peak(device)
        times[side] += measure(fn, device, warmup=w, first=first, **half)
        peak = peak_gib(device)
        peaks[side] = peak if peaks[side] is None or peak is None else max(peaks[side], peak)
    return times["a"], (times["b"] if fb is not None else None), peaks["a"], peaks["b"]


def stats(times: list[float], per_call: int = 1) -> dict[str, Any]:
    """Median and spread of call times in seconds; ``per_call`` items (images) per call."""
    median = statistics.median(times)
    ordered = sorted(times)
    return {
        "runs": len(times),
        "median_s": median,
        "min_s": ordered[0],
        "p90_s": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "per_s": per_call / median if median > 0 else float("nan"),
        "times_s": times,
    }


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


@contextlib.contextmanager
def tf32(enabled: bool | None) -> Iterator[None]:
    """cuDNN convolutions and cuBLAS matmuls in TF32 (True) or in full float32 (False) inside the block;
    None leaves PyTorch's settings (by default TF32 convolutions, float32 matmuls) as they are.

    The legacy flags, read and restored: the package sets neither, and PyTorch
    refuses to read them once the newer ``fp32_precision`` API has been mixed in.
    """
    if enabled is None:
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# --------------------------------------------------------------------------- inputs


def photos(size: tuple[int, int], count: int, folder: Path = PHOTOS) -> tuple[list[np.ndarray], str]:
    """``count`` RGB uint8 photos resized (PIL bilinear) to ``size``; synthetic pictures when none exist."""
    height, width = size
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() \
        else []
    if files:
        chosen = [files[i % len(files)] for i in range(count)]
        # np.array copies: writable arrays, as a decoder hands them over (torch.from_numpy warns otherwise).
        arrays = [np.array(Image.open(p).convert("RGB").resize((width, height), Image.Resampling.BILINEAR))
                  for p in chosen]
        return arrays, f"{', '.join(p.name for p in chosen)} ({folder.relative_to(ROOT)})"
    rng = np.random.default_rng(0)
    arrays = []
    for _ in range(count):
        coarse = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        arrays.append(np.array(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)))
    return arrays, "synthetic smooth noise (seed 0)"


@dataclasses.dataclass
class Instances:
    """Synthetic ground truth of one image: ``boxes (M, 4)`` XYXY pixels, ``labels (M,)`` in 0..K-1
    (ours; torchvision's are one more), ``masks (M, H, W)`` uint8 ellipses inscribed in the boxes."""

    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray


def synthetic_instances(size: tuple[int, int], count: int, num_classes: int, seed: int) -> Instances:
    height, width = size
    rng = np.random.default_rng(seed)
    side = np.exp(rng.uniform(np.log(24), np.log(min(height, width) * 0.6), count))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), count))
    w = np.minimum(side * np.sqrt(aspect), width - 2)
    h = np.minimum(side / np.sqrt(aspect), height - 2)
    x0 = rng.uniform(0, width - w)
    y0 = rng.uniform(0, height - h)
    boxes = np.stack([x0, y0, x0 + w, y0 + h], axis=1).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    cx, cy = (x0 + w / 2)[:, None, None], (y0 + h / 2)[:, None, None]
    inside = ((xx - cx) / (w[:, None, None] / 2)) ** 2 + ((yy - cy) / (h[:, None, None] / 2)) ** 2 <= 1.0
    labels = rng.integers(0, num_classes, count).astype(np.int64)
    return Instances(boxes, labels, inside.astype(np.uint8))


def our_targets(instances: list[Instances], device: torch.device) -> list[Targets]:
    return [Targets(boxes=torch.from_numpy(t.boxes), labels=torch.from_numpy(t.labels),
                    masks=torch.from_numpy(t.masks), seed=i).to(device) for i, t in enumerate(instances)]


def torchvision_targets(instances: list[Instances], device: torch.device) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": torch.from_numpy(t.boxes).to(device),
             "labels": torch.from_numpy(t.labels + 1).to(device),  # torchvision's 0 is the background
             "masks": torch.from_numpy(t.masks).to(device)} for t in instances]


def training_batch(arrays: list[np.ndarray], cfg: InputConfig, device: torch.device) -> ImageBatch:
    """The photos as our trainer feeds them: normalised at their own size, padded, channels-last."""
    batch = make_batch(arrays, cfg, device, resize=False)
    batch.tensor = batch.tensor.contiguous(memory_format=torch.channels_last)
    return batch


def torchvision_inputs(arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """uint8 HWC host arrays -> float CHW in [0, 1] on the device, as torchvision's models take images."""
    return [torch.from_numpy(a).to(device).permute(2, 0, 1).float().div_(255) for a in arrays]


# --------------------------------------------------------------------------- torchvision


def import_torchvision(device: torch.device) -> tuple[Any, str | None]:
    """torchvision with its compiled ops working on ``device``, or None and why not."""
    try:
        import torchvision
        from torchvision.ops import nms
    except Exception as e:  # noqa: BLE001 - absent, or built for another torch
        return None, f"torchvision is not importable here ({type(e).__name__}: {e})"
    try:
        nms(torch.zeros((1, 4), device=device), torch.zeros(1, device=device), 0.5)
    except Exception as e:  # noqa: BLE001 - the compiled ops did not load for this device
        return None, (f"torchvision {torchvision.__version__}'s ops do not run on {device} "
                      f"({type(e).__name__}: {e})")
    return torchvision, None


def torchvision_model(weights: Path, device: torch.device, size: tuple[int, int] | None) -> torch.nn.Module:
    """torchvision's Mask R-CNN R50-FPN as ``maskrcnn_resnet50_fpn`` builds it for COCO weights: frozen
    batch norm and ResNet stages 2-4 trainable (stem and layer1 frozen), 91 classes; then ``weights``.

    ``size``: the test resize set so that an image of that size is not resized (the smoke test's small
    images; None keeps torchvision's min 800 / max 1333)."""
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3)
    model = MaskRCNN(backbone, num_classes=91)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    if size is not None:
        model.transform.min_size = (min(size),)
        model.transform.max_size = max(size)
    return model.to(device)


def resize_to(predictor: Predictor, size: tuple[int, int] | None) -> None:
    """Our predictor's test resize set so that an image of ``size`` is not resized (None: as loaded)."""
    if size is not None:
        cfg = predictor.config
        predictor.config = cfg.replace(input=dataclasses.replace(cfg.input, min_size=min(size),
                                                                 max_size=max(size)))


# --------------------------------------------------------------------------- environment


def environment(device: torch.device, torchvision: Any, tv_problem: str | None) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torchvision": torchvision.__version__ if torchvision is not None else None,
        "torchvision_problem": tv_problem,
        "numpy": np.__version__,
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / GIB, 1),
                "multiprocessors": props.multi_processor_count,
                "capability": f"{props.major}.{props.minor}"}
        with contextlib.suppress(Exception):
            query = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu"
            done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=20)
            if done.returncode == 0:
                env["nvidia_smi"] = {"query": query, "answer": done.stdout.strip()}
    with contextlib.suppress(Exception):
        done = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True, timeout=10)
        if done.returncode == 0:
            env["commit"] = done.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout
            env["changed_files"] = len(dirty.splitlines())
    return env


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def header_lines(env: dict[str, Any], args: argparse.Namespace, plan: Plan, photo_origin: str) -> list[str]:
    if env["device"].startswith("cuda"):
        device = (f"**{env['gpu']}** ({env['multiprocessors']} SMs, {env['gpu_memory_gib']} GiB, compute "
                  f"capability {env['capability']})")
        smi = env.get("nvidia_smi", {}).get("answer")
        if smi:
            device += f"; nvidia-smi: {smi}"
    else:
        device = f"CPU only: {env['cpu']}, {env['cpu_threads']} threads"
    tv = env["torchvision"] or f"absent ({env['torchvision_problem']})"
    commit = env.get("commit", "unknown commit")
    if env.get("changed_files"):
        commit += f" (+{env['changed_files']} changed files)"
    h, w = plan.size
    return [
        f"Device: {device}.",
        f"Software: torch {env['torch']} (CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}), torchvision {tv}, "
        f"Python {env['python']}, numpy {env['numpy']}; maskrcnn at {commit}.",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`"
        + (" (quick: smoke-test sizes, the figures mean nothing)" if args.quick else ""),
        f"Settings: float32 runs with PyTorch's defaults (cuDNN TF32 {env['cudnn_tf32']}, matmul TF32 "
        f"{env['matmul_tf32']}), cudnn.benchmark {env['cudnn_benchmark']}; images {h}x{w} (HxW): "
        f"{photo_origin}. Times: {plan.warmup} warm-up runs, then at least {plan.min_runs} timed runs and "
        f"{plan.target_s:g} s per side, medians; ours and torchvision alternate in halves (A B B A); "
        + ("CUDA events after a synchronisation." if env["device"].startswith("cuda") else "wall clock."),
    ]


# --------------------------------------------------------------------------- check: fixtures


COMPARE_LINE = re.compile(
    r"^(?P<image>\S+): ref (?P<ref>\d+) pred (?P<pred>\d+) matched (?P<matched>\d+) max score diff "
    r"(?P<score>\S+) (?:mean mask IoU (?P<iou>\S+)|keypoints within 1 px (?P<kp>\S+)) (?P<ok>ok|FAIL)$")


def fixture_dirs(shared: Path, only: tuple[str, ...] | None) -> list[tuple[Path, Path]]:
    """(fixture folder, its images' folder) of every fixture with an ``expected.json``."""
    found: list[tuple[Path, Path]] = []
    for name in SHARED_FIXTURES:
        found.append((shared / "reference" / name, shared / "reference" / name / "images"))
    for path in sorted(OWN_REFERENCE.glob("*")):
        if (path / "expected.json").is_file():
            found.append((path, PHOTOS))
    if only is not None:
        found = [f for f in found if f[0].name in only]
    return found


def weights_for(fixture: Path, cache: Path) -> Path:
    """The fixture's synthetic weights in its peer's file format (written once per run)."""
    from tests.peers import write_fixture_weights

    suffix = ".pkl" if fixture.name.startswith("detectron2") else ".pth"
    path = cache / f"{fixture.name}{suffix}"
    if not path.is_file():
        write_fixture_weights(fixture, path)
    return path


def predict_fixture(fixture: Path, images: Path, weights: Path, device: torch.device, dtype: str,
                    work: Path, calls: int | None) -> tuple[bool, str, list[dict[str, Any]]]:
    """Each call of the fixture (the first ``calls``; None: all) as one batch on ``device``, checked by
    compare.py against those calls' expected outputs: its verdict, its output, its per-image rows."""
    from tests.helpers import run_compare

    predictor = load(weights, device=device, dtype=dtype)
    expected = json.loads((fixture / "expected.json").read_text())
    expected_path = fixture / "expected.json"
    if calls is not None and calls < len(expected["calls"]):
        expected["calls"] = expected["calls"][:calls]
        expected_path = work / f"{fixture.name}-expected-{calls}-calls.json"
        expected_path.write_text(json.dumps(expected))
    results: list[dict[str, Any]] = []
    for call in expected["calls"]:
        arrays = [load_image(images / name) for name in call["images"]]
        for name, det in zip(call["images"], predictor.predict_arrays(arrays), strict=True):
            results.extend(predictor.coco_results(det, name))
    out = work / f"{fixture.name}-{dtype}-results.json"
    out.write_text(json.dumps(results))
    compare = fixture.parent / "compare.py"
    holds, text = run_compare(compare if compare.is_file() else compare_script(), expected_path, out)
    rows = [m.groupdict() for m in map(COMPARE_LINE.match, text.splitlines()) if m]
    return holds, text, rows


def compare_script() -> Path:
    from tests.peers import reference_dir

    return reference_dir() / "compare.py"


def fixture_row(name: str, precision: str, holds: bool | None, rows: list[dict[str, Any]], required: bool,
                error: str | None = None) -> str:
    if error is not None:
        return f"| {name} | {precision} | – | – | – | – | – | error: {error} |"
    ref = sum(int(r["ref"]) for r in rows)
    pred = sum(int(r["pred"]) for r in rows)
    fractions = [min(int(r["matched"]) / max(int(r["ref"]), 1), int(r["matched"]) / max(int(r["pred"]), 1))
                 if int(r["ref"]) or int(r["pred"]) else 1.0 for r in rows]
    score = max((float(r["score"]) for r in rows), default=0.0)
    kp = any(r["kp"] is not None for r in rows)
    agreement = min((float(r["kp"] if kp else r["iou"]) for r in rows), default=1.0)
    verdict = ("holds" if holds else "**falls short**") if required else ("holds" if holds else "falls short")
    kind = "keypoints within 1 px" if kp else "mean mask IoU"
    return (f"| {name} | {precision} | {len(rows)} | {ref} / {pred} | {min(fractions, default=1.0):.3f} | "
            f"{score:.1e} | {agreement:.4f} ({kind}) | {verdict}{'' if required else ' (for information)'} |")


def check_fixtures(args: argparse.Namespace, plan: Plan, device: torch.device, report: Report,
                   budget: Budget, cache: Path) -> list[str]:
    lines = ["| fixture | precision | images | detections ref / ours | worst matched fraction | "
             "max score diff | worst image's agreement | compare.py |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    record: list[dict[str, Any]] = []
    only = tuple(args.fixtures) if args.fixtures else plan.fixtures
    fixtures = fixture_dirs(args.shared, only)
    for name in sorted(set(only or ()) - {f[0].name for f in fixtures}):
        report.note(f"--fixtures {name}: no such fixture (shared: {', '.join(SHARED_FIXTURES)}; own: the "
                    f"folders of {OWN_REFERENCE.relative_to(ROOT)} with an expected.json)")
        report.failed_checks.append(f"fixture {name}: not found")
    missing = [f[0] for f in fixtures if not (f[0] / "expected.json").is_file()]
    for path in missing:
        report.note(f"{path}: fixture missing; carry the shared reference folder (--shared, MASKRCNN_SHARED)")
        report.failed_checks.append(f"fixture {path.name} missing")
    runs: list[tuple[Path, Path, str, bool, bool]] = []  # fixture, images, dtype, strict fp32, required
    for fixture, images in fixtures:
        if fixture in missing:
            continue
        runs.append((fixture, images, "float32", True, True))
        if fixture.name == TV_FIXTURE and not args.quick:
            runs.append((fixture, images, "float32", False, False))
            if device.type == "cuda":
                runs += [(fixture, images, d, False, False) for d in ("bfloat16", "float16")]
    runs.sort(key=lambda run: not run[4])  # the required runs first, should the budget run short
    for fixture, images, dtype, strict, required in runs:
        precision = dtype + (" (TF32 off)" if strict and dtype == "float32" else "")
        if dtype == "float32" and not strict:
            precision = "float32 (TF32 convolutions, PyTorch's default)"
        if not budget.allows(20):
            lines.append(fixture_row(fixture.name, precision, None, [], required, "skipped: time budget"))
            if required:
                report.failed_checks.append(f"fixture {fixture.name} {precision}: not run (time budget)")
            continue
        log(f"check: {fixture.name} in {precision} on {device}")
        start = time.perf_counter()
        with guarded(report, f"check {fixture.name} {precision}") as state, \
                tf32(False if strict else None):
            weights = weights_for(fixture, cache)
            holds, text, rows = predict_fixture(fixture, images, weights, device, dtype, cache,
                                                plan.fixture_calls)
            lines.append(fixture_row(fixture.name, precision, holds, rows, required))
            record.append({"fixture": fixture.name, "dtype": dtype, "tf32": not strict, "required": required,
                           "holds": holds, "compare": text, "seconds": time.perf_counter() - start})
            if required and not holds:
                report.failed_checks.append(f"fixture {fixture.name} {precision}: compare.py falls short")
        if state["error"] is not None:
            lines.append(fixture_row(fixture.name, precision, None, [], required, state["error"]))
            record.append({"fixture": fixture.name, "dtype": dtype, "error": state["error"]})
            if required:
                report.failed_checks.append(f"fixture {fixture.name} {precision}: {state['error']}")
    report.record.setdefault("checks", {})["fixtures"] = record
    return lines


# --------------------------------------------------------------------------- check: a training step


def our_training_model(weights: Path, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """Ours as ``Trainer`` builds it from a checkpoint: config and weights of the file, channels-last."""
    cfg, state = load_checkpoint(weights)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.load_state_dict(state, strict=True)
    model.to(device, memory_format=torch.channels_last)
    model.train()
    return model, cfg


def losses_and_grad_norm(model: torch.nn.Module, batch: ImageBatch, targets: list[Targets]
                         ) -> tuple[dict[str, float], float]:
    model.zero_grad(set_to_none=True)
    losses = model(batch, targets)
    sum(losses.values()).backward()
    norms = [p.grad.detach().double().norm() for p in model.parameters() if p.grad is not None]
    return {k: float(v.detach()) for k, v in losses.items()}, float(torch.stack(norms).norm())


def check_training_step(plan: Plan, device: torch.device, report: Report, weights: Path) -> list[str]:
    """Device against CPU on one forward/backward in float32 (TF32 off); then one AMP step on the device."""
    lines: list[str] = []
    record: dict[str, Any] = {}
    arrays, _ = photos(plan.check_size, 2)
    with tf32(False):
        cpu_model_, cfg = our_training_model(weights, torch.device("cpu"))
        instances = [synthetic_instances(plan.check_size, 6, cfg.num_classes, seed) for seed in range(2)]
        log("check: a training forward/backward on the CPU")
        cpu = torch.device("cpu")
        cpu_losses, cpu_norm = losses_and_grad_norm(
            cpu_model_, training_batch(arrays, cfg.input, cpu), our_targets(instances, cpu))
        model = copy.deepcopy(cpu_model_).to(device)
        del cpu_model_
        log(f"check: the same forward/backward on {device}")
        batch, targets = training_batch(arrays, cfg.input, device), our_targets(instances, device)
        dev_losses, dev_norm = losses_and_grad_norm(model, batch, targets)
    worst = max(abs(dev_losses[k] - v) / max(abs(v), 1e-6) for k, v in cpu_losses.items())
    norm_diff = abs(dev_norm - cpu_norm) / max(cpu_norm, 1e-12)
    agree = worst <= LOSS_RTOL and norm_diff <= LOSS_RTOL and all(map(math.isfinite, dev_losses.values()))
    record["float32"] = {"cpu": cpu_losses, "device": dev_losses, "cpu_grad_norm": cpu_norm,
                         "device_grad_norm": dev_norm, "worst_loss_rel_diff": worst,
                         "grad_norm_rel_diff": norm_diff}
    lines.append(f"- float32 forward/backward, {device} against the CPU (2 images {plan.check_size[0]}x"
                 f"{plan.check_size[1]}, 6 synthetic instances each, TF32 off): worst loss relative "
                 f"difference {worst:.1e}, gradient norm {dev_norm:.4g} against {cpu_norm:.4g} "
                 f"({norm_diff:.1e}): "
                 + ("agree" if agree else f"**differ** (tolerance {LOSS_RTOL:g})"))
    lines.append("  - losses, device / CPU: " + ", ".join(
        f"{k} {dev_losses[k]:.5g} / {v:.5g}" for k, v in cpu_losses.items()))
    if not agree:
        report.failed_checks.append("training step: device and CPU losses differ")

    # Steps as Trainer takes them on CUDA: float16 autocast, gradient scaler, SGD. The scaler starts at
    # 2**16 and skips a step whose float16 gradients overflow (halving its scale), so a few may pass
    # before one updates the weights.
    use_amp = device.type == "cuda"
    optimizer = torch.optim.SGD(parameter_groups(model, 1e-4), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    trainable = [p for p in model.parameters() if p.requires_grad]
    attempts: list[dict[str, Any]] = []
    for _ in range(AMP_ATTEMPTS):
        before = [p.detach().clone() for p in trainable]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            losses = model(batch, targets)
        scaler.scale(sum(losses.values())).backward()
        grads_finite = all(bool(torch.isfinite(p.grad).all()) for p in trainable if p.grad is not None)
        scaler.step(optimizer)
        scaler.update()
        attempts.append({
            "losses": {k: float(v.detach()) for k, v in losses.items()},
            "grads_finite": grads_finite,
            "changed": sum(not torch.equal(a, p.detach()) for a, p in zip(before, trainable, strict=True)),
            "missing_grads": sum(p.grad is None for p in trainable),
            "scale": scaler.get_scale() if use_amp else None,
        })
        if attempts[-1]["changed"]:
            break
    last = attempts[-1]
    finite = all(math.isfinite(v) for a in attempts for v in a["losses"].values())
    ok = finite and last["changed"] == len(trainable) and last["missing_grads"] == 0
    step = "AMP (float16 autocast, gradient scaler)" if use_amp else "float32 (no AMP off CUDA)"
    record["step"] = {"amp": use_amp, "trainable": len(trainable), "attempts": attempts, "ok": ok}
    skipped = len(attempts) - 1 if last["changed"] else len(attempts)
    lines.append(f"- SGD steps, {step}, on {device}: losses "
                 + ", ".join(f"{k} {v:.4g}" for k, v in last["losses"].items())
                 + f"; {last['changed']} of {len(trainable)} trainable tensors changed"
                 + (f" after {skipped} step(s) that the gradient scaler skipped (float16 overflow)"
                    if skipped else "")
                 + (": ok" if ok else ": **failed**"))
    if not ok:
        report.failed_checks.append("training step: AMP steps not finite, or the weights did not change")
    report.record.setdefault("checks", {})["train_step"] = record
    del model, optimizer
    return lines


# --------------------------------------------------------------------------- inference


STAGES = ("prepare", "backbone", "rpn", "box_head", "mask_head", "paste")


def time_inference(predictor: Predictor, tv_model: torch.nn.Module | None, batches: list[list[np.ndarray]],
                   dtype: str, device: torch.device, plan: Plan, budget: Budget) -> dict[str, Any]:
    """One precision and batch size: ours and torchvision alternating, ours to the host, ours per stage."""
    batch_size = len(batches[0])
    found: dict[str, int] = {}
    autocast = dtype != "float32"

    def ours(i: int) -> None:
        dets = predictor.model.predict(predictor.prepare(batches[i % len(batches)]))
        found["ours"] = sum(len(d) for d in dets)

    def theirs(i: int) -> None:
        assert tv_model is not None
        with torch.no_grad(), torch.autocast(device.type, dtype=DTYPES[dtype], enabled=autocast):
            out = tv_model(torchvision_inputs(batches[i % len(batches)], device))
        found["torchvision"] = sum(int(o["boxes"].shape[0]) for o in out)

    def ours_to_host(i: int) -> None:
        predictor.predict_arrays(batches[i % len(batches)])

    kw = {"warmup": plan.warmup, "min_runs": plan.min_runs, "max_runs": plan.max_runs,
          "target_s": plan.target_s, "budget": budget}
    entry: dict[str, Any] = {"dtype": dtype, "batch": batch_size}
    a, b, peak_a, peak_b = measure_pair(ours, theirs if tv_model is not None else None, device, **kw)
    entry["ours"] = stats(a, batch_size) | {"peak_gib": peak_a,
                                             "detections_per_image": found["ours"] / batch_size}
    if b is not None:
        entry["torchvision"] = stats(b, batch_size) | {
            "peak_gib": peak_b, "detections_per_image": found["torchvision"] / batch_size}
    entry["ours_to_host"] = stats(measure(ours_to_host, device, **(kw | {"warmup": min(plan.warmup, 1)})),
                                  batch_size)
    stages: list[dict[str, float]] = []
    for i in range(plan.stage_runs):
        t: dict[str, float] = {}
        synchronize(device)
        start = time.perf_counter()
        batch = predictor.prepare(batches[i % len(batches)])
        synchronize(device)
        t["prepare"] = time.perf_counter() - start
        predictor.model.predict(batch, timings=t)
        stages.append(t)
    entry["ours_stages_s"] = {k: statistics.median(s.get(k, 0.0) for s in stages) for k in stages[0]}
    return entry


def bench_inference(plan: Plan, device: torch.device, report: Report, budget: Budget, weights: Path,
                    torchvision: Any, arrays: list[np.ndarray], size_override: tuple[int, int] | None
                    ) -> list[str]:
    lines = ["| precision | batch | ours img/s | torchvision img/s | ours / torchvision | ours img/s, "
             "detections to host | peak GiB ours / torchvision | detections per image ours / torchvision |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    stage_lines = ["| precision | batch | " + " | ".join([*STAGES, "sum"]) + " |",
                   "|---|---:" + "|---:" * (len(STAGES) + 1) + "|"]
    record: list[dict[str, Any]] = []
    tv_model = None
    if torchvision is not None:
        with guarded(report, "inference: torchvision model") as state:
            tv_model = torchvision_model(weights, device, size_override).eval()
        if state["error"] is not None:
            tv_model = None
    n = len(arrays)
    for dtype in plan.dtypes:
        if dtype == "float16" and device.type != "cuda":
            report.note("inference float16: CUDA only (ours refuses it on the CPU); skipped")
            continue
        if not budget.allows(25):
            lines.append(f"| {dtype} | – | skipped: time budget | | | | | |")
            continue
        predictor = None
        with guarded(report, f"inference: load ours {dtype}") as state:
            predictor = load(weights, device=device, dtype=dtype)
            assert isinstance(predictor, Predictor)
            resize_to(predictor, size_override)
        if predictor is None or state["error"] is not None:
            lines.append(f"| {dtype} | – | error: {state['error']} | | | | | |")
            continue
        for batch_size in plan.batches:
            if not budget.allows(15):
                lines.append(f"| {dtype} | {batch_size} | skipped: time budget | | | | | |")
                continue
            log(f"inference: {dtype}, batch {batch_size}")
            # Distinct photos in every batch as far as they go: batch 1 rotates through all of them.
            batches = [[arrays[(i * batch_size + j) % n] for j in range(batch_size)]
                       for i in range(max(1, n // batch_size))]
            entry: dict[str, Any] = {"dtype": dtype, "batch": batch_size}
            with guarded(report, f"inference {dtype} batch {batch_size}") as state:
                entry = time_inference(predictor, tv_model, batches, dtype, device, plan, budget)
            record.append(entry)
            if state["error"] is not None:
                entry["error"] = state["error"]
                lines.append(f"| {dtype} | {batch_size} | error: {state['error']} | | | | | |")
                continue
            lines.append(inference_row(entry))
            st = entry["ours_stages_s"]
            stage_lines.append(f"| {dtype} | {batch_size} | " + " | ".join(
                f"{1000 * st.get(k, 0.0):.1f}" for k in STAGES) + f" | {1000 * sum(st.values()):.1f} |")
        predictor = None  # the next precision's model replaces it on the device
        reset_peak(device)
    tv_model = None
    reset_peak(device)
    report.record["inference"] = record
    ratios = [e["ours"]["per_s"] / e["torchvision"]["per_s"] for e in record if "torchvision" in e]
    lines.append("")
    if ratios:
        met = sum(r >= 1.0 for r in ratios)
        lines.append(f"Goal (ours img/s >= torchvision's): met in {met} of {len(ratios)} rows.")
    else:
        lines.append("No torchvision figures: "
                     + (report.record["env"].get("torchvision_problem") or "see the errors"))
    lines += ["", f"Ours per stage (ms, median of {plan.stage_runs} runs with a synchronisation after each "
              "stage):", "",
              *stage_lines]
    return lines


def inference_row(e: dict[str, Any]) -> str:
    ours, tv, host = e["ours"], e.get("torchvision"), e["ours_to_host"]
    peak = (f"{ours['peak_gib']:.2f} / {tv['peak_gib']:.2f}" if tv and ours["peak_gib"] is not None
            else f"{ours['peak_gib']:.2f} / –" if ours["peak_gib"] is not None else "–")
    tv_rate = f"{tv['per_s']:.1f}" if tv else "–"
    ratio = f"{ours['per_s'] / tv['per_s']:.2f}" if tv else "–"
    dets = f"{ours['detections_per_image']:.0f} / " + (f"{tv['detections_per_image']:.0f}" if tv else "–")
    return (f"| {e['dtype']} | {e['batch']} | {ours['per_s']:.1f} | {tv_rate} | {ratio} | "
            f"{host['per_s']:.1f} | {peak} | {dets} |")


# --------------------------------------------------------------------------- training


def bench_training(plan: Plan, device: torch.device, report: Report, budget: Budget, weights: Path,
                   torchvision: Any, arrays: list[np.ndarray], size_override: tuple[int, int] | None
                   ) -> list[str]:
    use_amp = device.type == "cuda"
    precision = "AMP (float16 autocast, gradient scaler)" if use_amp else "float32 (no AMP off CUDA)"
    b = plan.train_batch
    images = [arrays[i % len(arrays)] for i in range(b)]
    lines = [f"Batch {b}, {precision}, SGD (lr 1e-3, momentum 0.9, weight decay 1e-4 on weights), images "
             f"{plan.size[0]}x{plan.size[1]} with 6 synthetic instances each, on the device before timing; "
             f"{plan.train_warmup} warm-up steps, then at least {plan.train_min_steps} steps and "
             f"{plan.train_target_s:g} s; each step ends by reading the summed loss (a synchronisation, as a "
             "training loop's logging does).", "",
             "| side | s/it (median) | it/s | img/s | ours / torchvision (it/s) | peak GiB | "
             "loss first / last |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    record: dict[str, Any] = {"batch": b, "amp": use_amp}
    sides: list[tuple[str, Callable[[], Callable[[int], float]]]] = []

    def sgd_step(
        model: torch.nn.Module, losses_of: Callable[[], dict[str, torch.Tensor]]
    ) -> Callable[[int], float]:
        """One SGD step of ``model`` (AMP when asked) on the losses ``losses_of()`` returns."""
        optimizer = torch.optim.SGD(parameter_groups(model, 1e-4), lr=1e-3, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=use_amp)

        def step(_: int) -> float:
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                losses = losses_of()
            total = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            return float(total.detach())

        return step

    def ours_step() -> Callable[[int], float]:
        model, cfg = our_training_model(weights, device)
        instances = [synthetic_instances(plan.size, 6, cfg.num_classes, seed) for seed in range(b)]
        batch, targets = training_batch(images, cfg.input, device), our_targets(instances, device)
        return sgd_step(model, lambda: model(batch, targets))

    def tv_step() -> Callable[[int], float]:
        model = torchvision_model(weights, device, size_override).train()
        instances = [synthetic_instances(plan.size, 6, 90, seed) for seed in range(b)]
        targets = torchvision_targets(instances, device)
        inputs = torchvision_inputs(images, device)
        return sgd_step(model, lambda: model(inputs, targets))

    sides.append(("ours", ours_step))
    if torchvision is not None:
        sides.append(("torchvision", tv_step))
    results: dict[str, dict[str, Any]] = {}
    for name, build in sides:
        if not budget.allows(30):
            lines.append(f"| {name} | skipped: time budget | | | | | |")
            continue
        log(f"training: {name}, batch {b}")
        with guarded(report, f"training {name}") as state:
            reset_peak(device)
            step = build()
            seen: list[float] = []

            def run(i: int, step: Callable[[int], float] = step, seen: list[float] = seen) -> None:
                seen.append(step(i))

            times = measure(run, device, warmup=plan.train_warmup, min_runs=plan.train_min_steps,
                            max_runs=plan.train_max_steps, target_s=plan.train_target_s, budget=budget)
            results[name] = stats(times, b) | {"peak_gib": peak_gib(device), "losses": seen,
                                               "nonfinite": sum(not math.isfinite(x) for x in seen)}
            del step, run  # the model and its optimizer go before the other side's are built
        reset_peak(device)
        if state["error"] is not None:
            lines.append(f"| {name} | error: {state['error']} | | | | | |")
    for name, r in results.items():
        tv = results.get("torchvision")
        ratio = f"{tv['median_s'] / r['median_s']:.2f}" if tv and name == "ours" else "–"
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "–"
        nonfinite = f" ({r['nonfinite']} non-finite)" if r["nonfinite"] else ""
        lines.append(f"| {name} | {r['median_s']:.3f} | {1 / r['median_s']:.2f} | {b / r['median_s']:.1f} | "
                     f"{ratio} | {peak} | {r['losses'][0]:.3g} / {r['losses'][-1]:.3g}{nonfinite} |")
    record |= results
    report.record["training"] = record
    return lines


# --------------------------------------------------------------------------- ops


@dataclasses.dataclass(frozen=True)
class RoICase:
    name: str
    images: int
    channels: int
    height: int  # feature map
    width: int
    rois: int
    output: int
    sampling: int
    aligned: bool
    scale: float  # spatial scale: 1 / stride
    box_sizes: tuple[float, float]  # RoI sides in input pixels (log-uniform)
    dtype: str = "float32"
    backward: bool = False


@dataclasses.dataclass(frozen=True)
class NMSCase:
    name: str
    boxes: int
    groups: int  # 0: plain nms; else batched_nms over this many groups (levels, classes)
    iou: float


def roi_cases(s: float) -> list[RoICase]:
    """RoIAlign as the model uses it: P2 of an 800x1088 batch (stride 4) with small RoIs, P4 with large."""
    r = max(8, int(1000 * s))
    h2, w2, h4, w4 = max(8, int(200 * s)), max(8, int(272 * s)), max(4, int(50 * s)), max(4, int(68 * s))
    c = 256 if s >= 1 else max(16, int(256 * s))
    p2 = {"images": 1, "channels": c, "height": h2, "width": w2, "rois": r, "scale": 0.25,
          "box_sizes": (16.0, 112.0)}
    return [
        RoICase("box 7x7, sampling 2, unaligned (torchvision)", output=7, sampling=2, aligned=False, **p2),
        RoICase("box 7x7, adaptive, aligned (Detectron2)", output=7, sampling=0, aligned=True, **p2),
        RoICase("mask 14x14, sampling 2, unaligned", output=14, sampling=2, aligned=False, **p2),
        RoICase("mask 14x14, adaptive, aligned", output=14, sampling=0, aligned=True, **p2),
        RoICase("box 7x7 on P4 (stride 16), RoIs 224-448 px", images=1, channels=c, height=h4, width=w4,
                rois=r, output=7, sampling=2, aligned=False, scale=1 / 16, box_sizes=(224.0, 448.0)),
        RoICase("box 7x7, batch of 8, 8x the RoIs", output=7, sampling=2, aligned=False,
                **(p2 | {"images": 8, "rois": 8 * r})),
        RoICase("box 7x7, sampling 2, unaligned, float16", output=7, sampling=2, aligned=False,
                dtype="float16", **p2),
        RoICase("box 7x7, sampling 2, unaligned, bfloat16", output=7, sampling=2, aligned=False,
                dtype="bfloat16", **p2),
        RoICase("box 7x7, forward + backward", output=7, sampling=2, aligned=False, backward=True, **p2),
        RoICase("mask 14x14, forward + backward", output=14, sampling=2, aligned=False, backward=True, **p2),
    ]


def nms_cases(s: float) -> list[NMSCase]:
    def n(count: int) -> int:
        return max(16, int(count * s))

    return [
        NMSCase("nms, 1000 boxes, IoU 0.7", n(1000), 0, 0.7),
        NMSCase("RPN: batched by 5 levels, 4,741 boxes, IoU 0.7", n(4741), 5, 0.7),
        NMSCase("box head: batched by 90 classes, 20,000 boxes, IoU 0.5", n(20000), 90, 0.5),
        NMSCase("nms, 20,000 boxes, IoU 0.5", n(20000), 0, 0.5),
    ]


def random_rois(gen: torch.Generator, case: RoICase, img_h: float, img_w: float) -> torch.Tensor:
    lo, hi = math.log(case.box_sizes[0]), math.log(case.box_sizes[1])
    side = torch.exp(lo + (hi - lo) * torch.rand(case.rois, generator=gen))
    aspect = torch.exp(math.log(0.5) + math.log(4.0) * torch.rand(case.rois, generator=gen))
    w, h = side * aspect.sqrt(), side / aspect.sqrt()
    cx, cy = torch.rand(case.rois, generator=gen) * img_w, torch.rand(case.rois, generator=gen) * img_h
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, img_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, img_h)
    index = torch.randint(0, case.images, (case.rois, 1), generator=gen).float()
    return torch.cat([index, boxes], 1)


def clustered_boxes(gen: torch.Generator, count: int, img_h: float = 800, img_w: float = 1088
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes jittered around ``count / 8`` objects (so that many overlap), and distinct random scores."""
    objects = max(1, count // 8)
    side = torch.exp(math.log(16) + math.log(400 / 16) * torch.rand(objects, generator=gen))
    centre = torch.rand(objects, 2, generator=gen) * torch.tensor([img_w, img_h])
    pick = torch.randint(0, objects, (count,), generator=gen)
    s = side[pick] * torch.exp(0.15 * torch.randn(count, generator=gen))
    aspect = torch.exp(0.3 * torch.randn(count, generator=gen))
    c = centre[pick] + 0.15 * side[pick, None] * torch.randn(count, 2, generator=gen)
    w, h = s * aspect.sqrt(), s / aspect.sqrt()
    boxes = torch.stack([c[:, 0] - w / 2, c[:, 1] - h / 2, c[:, 0] + w / 2, c[:, 1] + h / 2], 1)
    return boxes, torch.rand(count, generator=gen)


def probe(fn: Callable[[int], object]) -> str | None:
    """None when ``fn(0)`` runs; else its error in one line (an op a kernel does not support, say)."""
    try:
        fn(0)
    except Exception as e:  # noqa: BLE001 - reported in the table instead
        text = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return text.replace("|", "/")[:160]
    return None


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    if not torch.isfinite(a64).all():
        return float("nan")
    return float((a64 - b64).norm() / b64.norm().clamp(min=1e-30))


SETS = 3  # input sets that timed runs rotate through, so that repeated runs do not time the cache


def time_roi_case(case: RoICase, device: torch.device, gen: torch.Generator, tv_ops: Any,
                  kw: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Ours and torchvision's RoIAlign on the same features and RoIs: times and agreement."""
    entry: dict[str, Any] = {"op": "roi_align", **dataclasses.asdict(case)}
    dtype = DTYPES[case.dtype]
    img_h, img_w = case.height / case.scale, case.width / case.scale
    inputs = []
    for _ in range(SETS):
        f = torch.randn(case.images, case.channels, case.height, case.width, generator=gen).to(device, dtype)
        rois = random_rois(gen, case, img_h, img_w).to(device)
        # Each side in its model's layout: ours channels-last, torchvision's contiguous NCHW.
        mine, theirs = f.contiguous(memory_format=torch.channels_last), f.contiguous()
        if case.backward:
            mine.requires_grad_(True)
            theirs.requires_grad_(True)
        inputs.append((mine, theirs, rois))
    args = (case.output, case.scale, case.sampling, case.aligned)
    shape = (case.rois, case.channels, case.output, case.output)
    grads = [torch.randn(shape, generator=gen).to(device, dtype) for _ in range(SETS)]

    def run(fn: Callable[..., torch.Tensor], which: int, i: int) -> torch.Tensor:
        x, rois = inputs[i % SETS][which], inputs[i % SETS][2]
        out = fn(x, rois, *args)
        if case.backward:
            x.grad = None
            out.backward(grads[i % SETS])
        return out

    def ours(i: int) -> torch.Tensor:
        return run(our_roi_align, 0, i)

    def tv_roi_align(x: torch.Tensor, rois: torch.Tensor, *rest: Any) -> torch.Tensor:
        # torchvision's kernels take the RoIs in the features' type (its model casts both to float32
        # under autocast); ours takes float32 RoIs with features of any type.
        return tv_ops.roi_align(x, rois.to(x.dtype), *rest)

    def theirs(i: int) -> torch.Tensor:
        return run(tv_roi_align, 1, i)

    tv_problem = probe(theirs) if tv_ops is not None else "absent"
    ours_t, tv_t, _, _ = measure_pair(ours, theirs if tv_problem is None else None, device, **kw)
    entry["ours"] = stats(ours_t)
    if tv_t is None:
        return entry, "–" if tv_ops is None else f"torchvision: {tv_problem}"
    entry["torchvision"] = stats(tv_t)
    entry["rel_error"] = rel_error(ours(0), theirs(0))
    agreement = f"rel. error {entry['rel_error']:.1e}"
    if case.backward:
        entry["grad_rel_error"] = rel_error(inputs[0][0].grad, inputs[0][1].grad)
        agreement += f", gradient {entry['grad_rel_error']:.1e}"
    return entry, agreement


def time_nms_case(case: NMSCase, device: torch.device, gen: torch.Generator, tv_ops: Any,
                  kw: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Ours and torchvision's (batched) NMS on the same boxes: times and whether they keep the same boxes."""
    entry: dict[str, Any] = {"op": "nms", **dataclasses.asdict(case)}
    inputs = []
    for _ in range(SETS):
        boxes, scores = clustered_boxes(gen, case.boxes)
        groups = torch.randint(0, max(case.groups, 1), (case.boxes,), generator=gen)
        inputs.append((boxes.to(device), scores.to(device), groups.to(device)))

    def ours(i: int) -> torch.Tensor:
        boxes, scores, groups = inputs[i % SETS]
        if case.groups:
            return our_batched_nms(boxes, scores, groups, case.iou)
        return our_nms(boxes, scores, case.iou)

    def theirs(i: int) -> torch.Tensor:
        boxes, scores, groups = inputs[i % SETS]
        if case.groups:
            return tv_ops.batched_nms(boxes, scores, groups, case.iou)
        return tv_ops.nms(boxes, scores, case.iou)

    ours_t, tv_t, _, _ = measure_pair(ours, theirs if tv_ops is not None else None, device, **kw)
    entry["ours"] = stats(ours_t)
    if tv_t is None:
        return entry, "–"
    entry["torchvision"] = stats(tv_t)
    same = []
    entry["kept"] = []
    for i in range(SETS):
        a, b = ours(i).cpu(), theirs(i).cpu()
        same.append(torch.equal(a, b))
        entry["kept"].append([len(a), len(b)])
    entry["same_keep"] = all(same)
    kept = entry["kept"][0]
    if all(same):
        return entry, f"same kept indices ({kept[0]} of {case.boxes})"
    return entry, f"**kept indices differ** ({sum(same)} of {SETS} inputs equal; kept {kept[0]} / {kept[1]})"


def bench_ops(plan: Plan, device: torch.device, report: Report, budget: Budget, torchvision: Any
              ) -> list[str]:
    min_runs, max_runs, target = plan.op_runs
    kw = {"warmup": max(2, plan.warmup), "min_runs": min_runs, "max_runs": max_runs, "target_s": target,
          "budget": budget}
    tv_ops = torchvision.ops if torchvision is not None else None
    lines = ["| op | case | ours ms | torchvision ms | ours speed / torchvision's | agreement |",
             "|---|---|---:|---:|---:|---|"]
    record: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(0)
    cases: list[tuple[str, RoICase | NMSCase]] = [("RoIAlign", c) for c in roi_cases(plan.ops_scale)]
    cases += [("NMS", c) for c in nms_cases(plan.ops_scale)]
    for op, case in cases:
        if not budget.allows(8):
            lines.append(f"| {op} | {case.name} | skipped: time budget | | | |")
            continue
        log(f"ops: {op} {case.name}")
        entry: dict[str, Any] = {"op": op, "name": case.name}
        agreement = ""
        with guarded(report, f"ops {op} {case.name}") as state:
            if isinstance(case, RoICase):
                entry, agreement = time_roi_case(case, device, gen, tv_ops, kw)
            else:
                entry, agreement = time_nms_case(case, device, gen, tv_ops, kw)
                if entry.get("same_keep") is False:
                    report.failed_checks.append(f"NMS {case.name}: kept indices differ from torchvision's")
        record.append(entry)
        if state["error"] is not None:
            entry["error"] = state["error"]
            lines.append(f"| {op} | {case.name} | error: {state['error']} | | | |")
        else:
            lines.append(op_row(op, case.name, entry, agreement))
        reset_peak(device)
    report.record["ops"] = record
    return lines


def op_row(op: str, name: str, entry: dict[str, Any], agreement: str) -> str:
    ours = entry["ours"]["median_s"] * 1000
    tv = entry.get("torchvision")
    tv_ms = f"{tv['median_s'] * 1000:.3g}" if tv else "–"
    speed = f"{tv['median_s'] * 1000 / ours:.2f}" if tv else "–"
    return f"| {op} | {name} | {ours:.3g} | {tv_ms} | {speed} | {agreement} |"


# --------------------------------------------------------------------------- main


SECTIONS = ("check", "infer", "train", "ops")
# Fractions of the budget kept for each section while the ones before it run (what a section leaves
# unused goes to the next). Estimated on an H200: checks 1-2 min, inference 2-3, training and ops 1 each.
SHARES = {"check": 0.27, "infer": 0.36, "train": 0.19, "ops": 0.18}


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected HxW, got {text!r}") from err
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"{text}: both sides must be at least 32 pixels")
    return h, w


def default_shared() -> Path:
    """``$MASKRCNN_SHARED``, else ``.device-shared`` in the checkout (a carried copy), else ``../shared``."""
    if os.environ.get("MASKRCNN_SHARED"):
        return Path(os.environ["MASKRCNN_SHARED"])
    carried = ROOT / ".device-shared"
    return carried if (carried / "reference").is_dir() else ROOT.parent / "shared"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda (default when available), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true",
                        help="every section at tiny sizes and counts: the smoke test, on any device")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="NAME",
                        help=f"what to run, of {', '.join(SECTIONS)} (default: all, in that order)")
    parser.add_argument("--fixtures", nargs="+", metavar="NAME",
                        help="reference fixtures to check (default: all; --quick: torchvision's R50-FPN)")
    parser.add_argument("--shared", type=Path, default=None,
                        help="folder holding reference/ (default: $MASKRCNN_SHARED, else .device-shared in "
                             "the "
                             "checkout when present, else ../shared)")
    parser.add_argument("--size", type=parse_size, default=None,
                        help="HxW of the benchmark images (800x1066)")
    parser.add_argument("--train-batch", type=int, default=None, help="images per training step (8)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for the whole run; what would not fit is skipped and said so "
                             f"(default {FULL.budget_s:g}, --quick {QUICK.budget_s:g})")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="torch.backends.cudnn.benchmark = True")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    out = os.environ.get("OUT")
    parser.add_argument("--out", type=Path, default=Path(out) if out else None,
                        help="write bench_gpu.json and bench_gpu.md here (default: $OUT when set)")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, f"bench_gpu.py: error: --device {device}: CUDA is not available here "
                       f"(torch {torch.__version__}); use --device cpu --quick for the smoke test\n")
    if device.type not in ("cuda", "cpu"):
        parser.exit(2, f"bench_gpu.py: error: --device {device}: expected cuda, cuda:N or cpu\n")
    if device.type == "cpu" and not args.quick:
        log("note: the full plan on the CPU takes very long; --quick is the CPU smoke test")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    plan = QUICK if args.quick else FULL
    if args.size:
        plan = dataclasses.replace(plan, size=args.size)
    if args.train_batch:
        plan = dataclasses.replace(plan, train_batch=args.train_batch)
    args.shared = (args.shared or default_shared()).resolve()
    os.environ["MASKRCNN_SHARED"] = str(args.shared)  # tests.peers reads the weight synthesiser there

    if args.budget_s is None:
        args.budget_s = plan.budget_s
    budget = Budget(args.budget_s)
    report = Report(args.out)
    torchvision, tv_problem = import_torchvision(device)
    env = environment(device, torchvision, tv_problem)
    report.record |= {"command": sys.argv, "started": datetime.datetime.now().isoformat(timespec="seconds"),
                      "env": env, "plan": dataclasses.asdict(plan), "shared": str(args.shared)}
    if tv_problem:
        report.note(f"{tv_problem}: the torchvision columns are empty")
    size_override = None if plan.size == (800, 1066) else plan.size
    arrays, origin = photos(plan.size, plan.images)
    title = "## GPU checks and benchmarks: ours against torchvision (`benchmarks/bench_gpu.py`)"
    report.section("", [title, "", *header_lines(env, args, plan, origin)])
    log(f"device {env.get('gpu', env['cpu'])}; torch {env['torch']}; torchvision {env['torchvision']}; "
        f"budget {args.budget_s:g} s")

    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        cache = Path(tmp)
        weights: Path | None = None
        with guarded(report, "weights of the torchvision R50-FPN fixture") as state:
            weights = weights_for(args.shared / "reference" / TV_FIXTURE, cache)
        if weights is None:
            report.failed_checks.append(f"no weights: {state['error']} (--shared {args.shared})")
        for name in [n for n in SECTIONS if n in args.sections]:
            later = [n for n in SECTIONS if n in args.sections and SECTIONS.index(n) > SECTIONS.index(name)]
            part = budget.share(sum(SHARES[n] for n in later))
            log(f"section {name}: {part.left():.0f} s of the budget")
            if name == "check":
                lines: list[str] = []
                if weights is not None and part.allows(20):
                    with guarded(report, "check: training step") as state:
                        lines += ["Training step:", "", *check_training_step(plan, device, report, weights),
                                  ""]
                    if state["error"] is not None:
                        lines += [f"Training step: error: {state['error']}", ""]
                        report.failed_checks.append(f"training step: {state['error']}")
                else:
                    report.failed_checks.append("training step: not run (no weights, or the time budget)")
                lines += check_fixtures(args, plan, device, report, part, cache)
                report.section("CUDA checks: a training step, and the reference fixtures (compare.py)"
                               if device.type == "cuda" else "Checks (on the CPU)", lines)
            elif name == "infer" and weights is not None:
                report.section("Inference: R50-FPN, host uint8 images in, detections on the device out",
                               bench_inference(plan, device, report, part, weights, torchvision, arrays,
                                               size_override))
            elif name == "train" and weights is not None:
                report.section("Training: R50-FPN steps", bench_training(
                    plan, device, report, part, weights, torchvision, arrays, size_override))
            elif name == "ops":
                report.section("Ops alone: RoIAlign and NMS against torchvision's kernels",
                               bench_ops(plan, device, report, part, torchvision))

    report.record["failed_checks"] = report.failed_checks
    report.record["seconds"] = args.budget_s - budget.left()
    checks = "all passed" if not report.failed_checks else "FAILED: " + "; ".join(report.failed_checks)
    verdict = [f"Checks: {checks}."
               f" Errors: {len(report.record['errors'])}. Notes: {len(report.record['notes'])}"
               + (" (" + "; ".join(report.record["notes"]) + ")" if report.record["notes"] else "")
               + f". Wall time {args.budget_s - budget.left():.0f} s."]
    report.section("Summary", verdict)
    print(report.markdown())
    return 1 if report.failed_checks or report.record["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
