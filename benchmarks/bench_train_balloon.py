"""Train from scratch on the balloon set, ours against torchvision's own code, same data, budget and schedule.

Usage::

    .venv/bin/python benchmarks/bench_train_balloon.py --out DIR [--iterations N] [--batch-size B]
        [--min-size S] [--max-size S] [--preset demo-r18-fpn] [--threads 2] [--set KEY=VALUE ...]
        [--resnet-width 32|64] [--decay-all] [--match-init] [--skip-ours] [--skip-peer] [--force]

Data: ``<shared>/data/balloon/{train.json,train/,val.json,val/}`` (61 training
and 13 validation images, one category), or ``--data DIR``.

Ours runs ``maskrcnn train`` (``python -m maskrcnn.cli train``) in a
subprocess with the preset, batch size, iterations, sizes and ``--set``
overrides given here, validating on the val set at the end; the numbers come
from its ``final_metrics.json`` and ``metrics.jsonl``. The model and solver
configs that command line resolves to (``maskrcnn.engine.configure.configure``:
learning rate and warm-up scaled to the batch size) are written to
``OUT/settings.json``, and ``peer_train_torchvision.py`` is run by the peer
environment with that file, so both sides train the same architecture with
the same schedule, input size, flip probability, seed and number of loader
workers. Neither side loads pretrained weights.

Seconds per iteration, on both sides: the median over the logging windows
(``solver.log_period`` iterations, 10 for the demo preset) after the first
one, of each window's mean wall time per iteration (data wait included); the
first window is left out since it holds start-up. Train minutes are the
whole training loop; wall minutes the whole subprocess (start, training,
final validation, writing files).

Output: a markdown table (framework, model and parameters, iterations x
batch, s/it, minutes, val box and mask AP x100), the exact commands and the
versions; ``OUT/summary.json`` has the raw numbers, ``OUT/table.md`` the
table, ``OUT/ours/`` our training output, ``OUT/peer.json`` the peer's line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import maskrcnn
from maskrcnn.config import PRESETS
from maskrcnn.data.coco import CocoDataset
from maskrcnn.engine.configure import configure
from maskrcnn.model import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for tests/peers.py
from tests.peers import shared_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PEER_PYTHON = ROOT / ".peer-venv" / "bin" / "python"
PEER_SCRIPT = Path(__file__).resolve().parent / "peer_train_torchvision.py"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+uncommitted changes" if dirty else "")


def window_statistic(windows: list[float]) -> float | None:
    """Median of the per-window seconds per iteration, the first window left out (when there are others)."""
    if not windows:
        return None
    return statistics.median(windows[1:] or windows)


def run(command: list[str], env: dict[str, str], stdout_path: Path) -> tuple[int, float, str]:
    """Run with stderr passed through (progress), stdout saved; returns (exit status, seconds, stdout)."""
    print("$ " + shlex.join(command), file=sys.stderr, flush=True)
    start = time.perf_counter()
    with stdout_path.open("w") as out:
        code = subprocess.run(command, env=env, stdout=out, check=False).returncode
    return code, time.perf_counter() - start, stdout_path.read_text()


def train_args(args: argparse.Namespace, data: Path, out: Path) -> list[str]:
    argv = ["train", "--train-json", str(data / "train.json"), "--train-images", str(data / "train"),
            "--val-json", str(data / "val.json"), "--val-images", str(data / "val"),
            "--out", str(out), "--preset", args.preset, "--batch-size", str(args.batch_size),
            "--min-size", str(args.min_size), "--max-size", str(args.max_size), "--device", "cpu"]
    if args.iterations is not None:
        argv += ["--iterations", str(args.iterations)]
    if args.set:
        argv += ["--set", *args.set]
    return argv


def run_ours(args: argparse.Namespace, data: Path, out: Path, env: dict[str, str], cfg: Any
             ) -> dict[str, Any]:
    ours_dir = out / "ours"
    if ours_dir.exists() and any(ours_dir.iterdir()):
        if not args.force:
            raise SystemExit(f"error: {ours_dir} is not empty (its metrics.jsonl would be appended to); "
                             "use another --out or --force to delete it")
        shutil.rmtree(ours_dir)
    command = [sys.executable, "-m", "maskrcnn.cli", *train_args(args, data, ours_dir)]
    code, seconds, _ = run(command, env, out / "ours_stdout.txt")
    if code != 0:
        raise SystemExit(f"error: our training failed with exit status {code}")
    metrics = json.loads((ours_dir / "final_metrics.json").read_text())
    lines = (ours_dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    train_rows = [r for r in rows if "seconds_per_iteration" in r]
    windows = [r["seconds_per_iteration"] for r in train_rows]
    train_seconds, previous = 0.0, 0
    for r in train_rows:
        train_seconds += r["seconds_per_iteration"] * (r["iteration"] - previous)
        previous = r["iteration"]
    model = build_model(cfg)
    return {
        "framework": "ours",
        "command": "OMP_NUM_THREADS=" + env["OMP_NUM_THREADS"] + " " + shlex.join(command),
        "iterations": previous,
        "batch_size": args.batch_size,
        "seconds_per_iteration": window_statistic(windows),
        "window_seconds_per_iteration": windows,
        "train_seconds": train_seconds,
        "wall_seconds": seconds,
        "metrics": metrics,
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": train_rows[-1].get("total_loss") if train_rows else None,
        "versions": {"maskrcnn": f"{maskrcnn.__version__} ({git_revision()})", "torch": torch.__version__,
                     "python": platform.python_version()},
    }


def run_peer(args: argparse.Namespace, data: Path, out: Path, env: dict[str, str]) -> dict[str, Any]:
    python = Path(args.peer_python)
    if not python.is_file():
        raise SystemExit(f"error: {python}: no peer environment (make peer-venv)")
    command = [str(python), str(PEER_SCRIPT), "--settings", str(out / "settings.json"),
               "--train-json", str(data / "train.json"), "--train-images", str(data / "train"),
               "--val-json", str(data / "val.json"), "--val-images", str(data / "val"),
               "--threads", str(args.threads), "--resnet-width", str(args.resnet_width),
               "--out", str(out / "peer.json")]
    if args.decay_all:
        command.append("--decay-all")
    if args.match_init:
        command.append("--match-init")
    code, seconds, stdout = run(command, env, out / "peer_stdout.txt")
    if code != 0:
        raise SystemExit(f"error: the torchvision run failed with exit status {code}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["median_seconds_per_iteration_after_10"] = result.pop("seconds_per_iteration")
    result["seconds_per_iteration"] = window_statistic(result["window_seconds_per_iteration"])
    result["wall_seconds_measured_outside"] = seconds
    result["command"] = "OMP_NUM_THREADS=" + env["OMP_NUM_THREADS"] + " " + shlex.join(command)
    return result


def ap(metrics: dict[str, Any], kind: str) -> str:
    value = metrics.get(kind, {}).get("AP")
    return "-" if value is None else f"{100 * value:.1f}"


def table(rows: list[dict[str, Any]], model_names: dict[str, str]) -> str:
    lines = ["| framework | model (params) | iterations x batch | s/it | train min | wall min "
             "| val box AP | val mask AP |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spi = r["seconds_per_iteration"]
        lines.append(
            f"| {r['framework']} | {model_names[r['framework']]} ({r['parameters'] / 1e6:.2f} M) "
            f"| {r['iterations']} x {r['batch_size']} | {'-' if spi is None else f'{spi:.2f}'} "
            f"| {r['train_seconds'] / 60:.1f} | {r['wall_seconds'] / 60:.1f} "
            f"| {ap(r['metrics'], 'bbox')} | {ap(r['metrics'], 'segm')} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--iterations", type=int, default=None,
                   help="iterations (default: the preset's schedule scaled to the batch size)")
    p.add_argument("--batch-size", type=int, default=4, help="images per iteration (default 4)")
    p.add_argument("--min-size", type=int, default=384, help="shortest edge, training and test (default 384)")
    p.add_argument("--max-size", type=int, default=512, help="longest-edge cap (default 512)")
    p.add_argument("--preset", default="demo-r18-fpn", choices=sorted(PRESETS))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides passed to maskrcnn train --set (and so to the peer's settings)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of each side (default 2)")
    p.add_argument("--data", type=Path, default=None, help="balloon folder (default <shared>/data/balloon)")
    p.add_argument("--peer-python", default=str(DEFAULT_PEER_PYTHON))
    p.add_argument("--resnet-width", type=int, default=32, choices=(32, 64),
                   help="peer ResNet-18 stem width (32 = ours; 64 = torchvision's resnet18 unchanged)")
    p.add_argument("--decay-all", action="store_true",
                   help="peer: weight decay on biases and norms too (torchvision reference default)")
    p.add_argument("--match-init", action="store_true",
                   help="peer: box head and class/box/mask predictors initialised as ours "
                        "(default: torchvision's)")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--force", action="store_true", help="delete an existing OUT/ours first")
    args = p.parse_args()

    data = args.data or shared_dir() / "data" / "balloon"
    for name in ("train.json", "train", "val.json", "val"):
        if not (data / name).exists():
            raise SystemExit(f"error: {data / name}: missing (the balloon set is expected there; see --data)")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    # The configs our command line resolves to; the peer reads the same file.
    dataset = CocoDataset(data / "train.json", data / "train")
    try:
        cfg, solver = configure(dataset, preset=args.preset, batch_size=args.batch_size,
                                iterations=args.iterations, min_sizes=[args.min_size],
                                max_size=args.max_size, overrides=list(args.set))
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: {e}") from e
    (out / "settings.json").write_text(json.dumps({"model": cfg.to_dict(), "solver": solver.to_dict()},
                                                  indent=2))
    print(f"{len(dataset)} training images; {solver.iterations} iterations x {solver.batch_size}, "
          f"lr {solver.lr:g}, warm-up {solver.warmup_iters}, decays at "
          f"{[round(s * solver.iterations) for s in solver.steps]}, size {args.min_size}/{args.max_size}",
          file=sys.stderr)

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    rows = []
    if not args.skip_ours:
        rows.append(run_ours(args, data, out, env, cfg))
    if not args.skip_peer:
        rows.append(run_peer(args, data, out, env))
    if not rows:
        print("nothing to run (--skip-ours and --skip-peer)", file=sys.stderr)
        return 0

    width = cfg.backbone.base_channels
    names = {
        "ours": f"R18-FPN GN w{width}, FPN {cfg.fpn.out_channels}",
        "torchvision": f"R18-FPN GN w{args.resnet_width}, FPN {cfg.fpn.out_channels}",
    }
    md = table(rows, names)
    peer = next((r for r in rows if r["framework"] == "torchvision"), None)
    versions = [f"maskrcnn {maskrcnn.__version__} ({git_revision()}), torch {torch.__version__}"]
    if peer is not None:
        v = peer["versions"]
        versions.append(f"peer: torch {v['torch']}, torchvision {v['torchvision']}")
    report = "\n".join([
        f"balloon, from scratch: {args.preset} at {args.min_size}/{args.max_size}, "
        f"{solver.iterations} iterations x {solver.batch_size} images, lr {solver.lr:g} "
        f"(warm-up {solver.warmup_iters}, x{solver.gamma:g} at "
        f"{[round(s * solver.iterations) for s in solver.steps]}), {args.threads} threads, {cpu_model()}",
        "",
        md,
        "",
        "s/it: median of the per-window means after the first window of "
        f"{solver.log_period} iterations; AP x100 on the {data.name} val set (COCOeval).",
        "",
        *[f"{r['framework']}: {r['command']}" for r in rows],
        "",
        "; ".join(versions),
    ])
    print(report)
    (out / "table.md").write_text(report + "\n")
    summary = {"settings": {"model": cfg.to_dict(), "solver": solver.to_dict()}, "cpu": cpu_model(),
               "threads": args.threads, "runs": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
