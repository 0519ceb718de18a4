"""RoIAlign and RoIPool alone: inference (no gradient) and training (forward + backward), per map size.

    .venv/bin/python benchmarks/bench_pooling.py [--rois 512] [--runs 3] [--threads 2]

Random feature maps of a batch of 2 at the R50-FPN's P2 (256x200x272, stride
4) and P4 (256x50x68, stride 16) sizes, channels-last; ``--rois`` random RoIs
(seed 0) spread over both images, 8 to 48 feature pixels on a side; 7x7
output. RoIAlign with torchvision's settings (sampling ratio 2, not aligned).
"Training" is the forward on features that require a gradient, then the
backward of the output's sum. Medians of ``--runs`` after one warm-up run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskrcnn.ops.roi_align import roi_align  # noqa: E402
from maskrcnn.ops.roi_pool import roi_pool  # noqa: E402

MAPS = {"P2 (2x256x200x272)": (200, 272, 1 / 4), "P4 (2x256x50x68)": (50, 68, 1 / 16)}


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    print(f"command: python benchmarks/bench_pooling.py --rois {args.rois} --runs {args.runs} "
          f"--threads {args.threads}; torch {torch.__version__}")
    print()
    print("| map | op | inference (ms) | training: forward + backward (ms) |")
    print("|---|---|---:|---:|")
    for name, (h, w, scale) in MAPS.items():
        features = torch.randn(2, 256, h, w, generator=g).contiguous(memory_format=torch.channels_last)
        corner = torch.rand(args.rois, 2, generator=g) * torch.tensor([w, h]) * 0.8 / scale
        side = (torch.rand(args.rois, 2, generator=g) * 40 + 8) / scale
        rois = torch.cat((torch.randint(0, 2, (args.rois, 1), generator=g).float(), corner, corner + side), 1)
        ops: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
            "RoIAlign": lambda x, r=rois, s=scale: roi_align(x, r, 7, s, 2, False),
            "RoIPool": lambda x, r=rois, s=scale: roi_pool(x, r, 7, s),
        }
        for op, fn in ops.items():
            with torch.no_grad():
                inference = median_seconds(lambda fn=fn, f=features: fn(f), args.runs)

            def train(fn: Callable[[torch.Tensor], torch.Tensor] = fn, f: torch.Tensor = features) -> None:
                x = f.detach().requires_grad_(True)
                fn(x).sum().backward()

            training = median_seconds(train, args.runs)
            print(f"| {name} | {op} | {1000 * inference:.0f} | {1000 * training:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
