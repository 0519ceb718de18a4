"""CPU inference time per stage: our Mask R-CNN against torchvision's, same image, same weights.

Usage::

    .venv/bin/python benchmarks/bench_predict.py [--runs N] [--warmup N] [--threads T]
        [--image PATH] [--size HxW] [--json OUT]

The input is one RGB image resized to ``--size`` (default 800x1066, H x W):
``--image``, else the first image of ``<shared>/data/balloon/val``, else a
deterministic synthetic picture. It is written as a PNG to a temporary
directory with the synthetic torchvision-format weights of the
``torchvision-maskrcnn-r50-fpn`` reference fixture, so both sides read the
same pixels and the same numbers.

Ours is timed in this process: ``Predictor.prepare`` as ``preprocess``, then
``model.predict(batch, timings=...)`` for the other stages. torchvision is
timed in a subprocess run by the peer virtual environment
(``peer_torchvision.py``; create it with ``make peer-venv``). Both sides use
fp32, batch 1, ``--threads`` intra-op threads, ``--warmup`` untimed runs and
report medians over ``--runs`` timed runs, wall clock (``time.perf_counter``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from maskrcnn.engine.predict import load

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for tests/peers.py
from tests.peers import reference_dir, shared_dir, write_fixture_weights  # noqa: E402

STAGES = ("preprocess", "backbone", "rpn", "box_head", "mask_head", "paste")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PEER_PYTHON = ROOT / ".peer-venv" / "bin" / "python"
PEER_SCRIPT = Path(__file__).resolve().parent / "peer_torchvision.py"
FIXTURE = "torchvision-maskrcnn-r50-fpn"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
SUM_TOLERANCE = 0.05


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected HxW, got {text!r}") from err
    return h, w


def synthetic_image(height: int, width: int, seed: int = 0) -> Image.Image:
    """A deterministic picture: smooth seeded noise with filled ellipses and rectangles on top."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    base = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
    noise = rng.integers(-12, 13, size=(height, width, 3))
    image = Image.fromarray(np.clip(np.asarray(base, dtype=np.int64) + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, x1 = sorted(int(v) for v in rng.integers(0, width, size=2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, height, size=2))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    return image


def make_input(source: Path | None, size: tuple[int, int], out: Path) -> tuple[Path, str]:
    """Write the benchmark image to ``out`` as PNG; returns it and a description of its origin."""
    height, width = size
    if source is None:
        val = shared_dir() / "data" / "balloon" / "val"
        files = sorted(p for p in val.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if val.is_dir() else []
        source = files[0] if files else None
    if source is not None:
        image = Image.open(source).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        origin = str(source)
    else:
        image = synthetic_image(height, width)
        origin = "synthetic (seed 0)"
    image.save(out)
    return out, origin


def time_ours(weights: Path, image_path: Path, runs: int, warmup: int, dtype: str = "float32") -> dict:
    predictor = load(weights, dtype=dtype)
    pixels = np.asarray(Image.open(image_path).convert("RGB"))
    model = predictor.model
    totals: list[float] = []
    per_run: list[dict[str, float]] = []
    detections = None
    with torch.no_grad():
        for i in range(warmup + runs):
            stages: dict[str, float] = {}
            start = time.perf_counter()
            batch = predictor.prepare([pixels])
            stages["preprocess"] = time.perf_counter() - start
            detections = model.predict(batch, timings=stages)[0]
            total = time.perf_counter() - start
            if i >= warmup:
                totals.append(total)
                per_run.append(stages)
    assert detections is not None
    gap = max(abs(t - sum(s.values())) / t for t, s in zip(totals, per_run, strict=True))
    if gap > SUM_TOLERANCE:
        warn(f"our stage sum differs from the total by {100 * gap:.1f}%")
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "image_size": list(pixels.shape[:2]),
        "stages": {name: statistics.median(run[name] for run in per_run) for name in STAGES},
        "total": statistics.median(totals),
        "per_run": [{**run, "total": t} for run, t in zip(per_run, totals, strict=True)],
        "stage_sum_max_gap": gap,
        "detections": len(detections),
        "scores": detections.scores.tolist(),
        "boxes": detections.boxes.tolist(),
    }


def time_peer(python: Path, weights: Path, image: Path, runs: int, warmup: int, threads: int) -> dict:
    if not python.exists():
        sys.exit(f"{python} not found: create the peer environment with `make peer-venv`")
    command = [
        str(python), str(PEER_SCRIPT), "--weights", str(weights), "--image", str(image),
        "--runs", str(runs), "--warmup", str(warmup), "--threads", str(threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.stderr.strip():
        sys.stderr.write(done.stderr)
    if done.returncode != 0:
        sys.exit(f"peer benchmark failed (exit {done.returncode}): {' '.join(command)}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        sys.exit(f"peer benchmark printed no JSON line:\n{done.stdout}")
    return json.loads(lines[-1])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def compare_outputs(ours: dict, peer: dict) -> str:
    """One line on how closely the two sides' detections agree (in score order)."""
    if ours["detections"] != peer["detections"]:
        warn(
            f"detection counts differ: ours {ours['detections']}, torchvision {peer['detections']} "
            "(same weights and image; they should match)"
        )
        return f"detections differ: ours {ours['detections']}, torchvision {peer['detections']}"
    if ours["detections"] == 0:
        return "both sides: 0 detections"
    score_diff = float(np.max(np.abs(np.subtract(ours["scores"], peer["scores"]))))
    box_diff = float(np.max(np.abs(np.subtract(ours["boxes"], peer["boxes"]))))
    return (
        f"both sides: {ours['detections']} detections; max |score diff| {score_diff:.2g}, "
        f"max |box diff| {box_diff:.2g} px"
    )


def table(ours: dict, peer: dict, bf16: dict | None = None) -> str:
    """Milliseconds per stage: ours in float32 (and bfloat16), torchvision in float32, and the ratios."""
    head = "| stage | ours (ms) | torchvision (ms) | ours / torchvision |"
    rule = "|---|---:|---:|---:|"
    if bf16 is not None:
        head += " ours bf16 (ms) | ours bf16 / torchvision |"
        rule += "---:|---:|"
    rows = [head, rule]
    names = [*STAGES, "total"]

    def at(side: dict, name: str) -> float:
        return side["total"] if name == "total" else side["stages"][name]

    for name in names:
        a, b = at(ours, name), at(peer, name)
        label = "**total**" if name == "total" else name
        row = f"| {label} | {1000 * a:.1f} | {1000 * b:.1f} | {a / b:.2f} |" if b > 0 else \
            f"| {label} | {1000 * a:.1f} | {1000 * b:.1f} | n/a |"
        if bf16 is not None:
            c = at(bf16, name)
            row += f" {1000 * c:.1f} | {c / b:.2f} |" if b > 0 else f" {1000 * c:.1f} | n/a |"
        rows.append(row)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--image", type=Path, help="source image (default: first balloon val image)")
    parser.add_argument("--size", type=parse_size, default=(800, 1066), help="HxW to resize to")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--bfloat16", action="store_true",
                        help="also time ours with the network in bfloat16 (load(dtype='bfloat16'))")
    parser.add_argument("--peer-python", type=Path, default=DEFAULT_PEER_PYTHON,
                        help="python of the peer environment (default .peer-venv/bin/python)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        tmp_dir = Path(tmp)
        image, origin = make_input(args.image, args.size, tmp_dir / "input.png")
        weights = write_fixture_weights(reference_dir() / FIXTURE, tmp_dir / "maskrcnn_r50_fpn.pth")
        print(f"input: {origin} -> {args.size[0]}x{args.size[1]}; timing ours ...", file=sys.stderr)
        ours = time_ours(weights, image, args.runs, args.warmup)
        bf16 = None
        if args.bfloat16:
            print("timing ours in bfloat16 ...", file=sys.stderr)
            bf16 = time_ours(weights, image, args.runs, args.warmup, dtype="bfloat16")
        print("timing torchvision ...", file=sys.stderr)
        peer = time_peer(args.peer_python, weights, image, args.runs, args.warmup, args.threads)

    agreement = compare_outputs(ours, peer)
    h, w = ours["image_size"]
    print(
        f"CPU: {cpu_model()}; threads: ours {ours['threads']}, torchvision {peer['threads']}; "
        f"torch: ours {ours['torch']}, peer {peer['torch']} (torchvision {peer['torchvision']}); "
        f"image {h}x{w} (HxW), fp32, batch 1; median of {args.runs} runs after {args.warmup} warmup; "
        f"detections: ours {ours['detections']}, torchvision {peer['detections']}"
    )
    print()
    print(table(ours, peer, bf16))
    print()
    print(agreement)

    if args.json is not None:
        record = {
            "cpu": cpu_model(),
            "threads": args.threads,
            "runs": args.runs,
            "warmup": args.warmup,
            "image": origin,
            "image_size": [h, w],
            "ours": ours,
            "ours_bfloat16": bf16,
            "torchvision": peer,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
