"""Does bfloat16 autocast training learn as float32 does? The demo trained both ways, held-out AP compared.

    .venv/bin/python benchmarks/bf16_training.py [--iterations N] [--out DIR]

Trains the demo preset (``demo-r18-fpn``, synthetic shapes, the data and
schedule of ``maskrcnn demo``, seed 0) twice from the same initial weights:
once in float32, once with ``solver.bf16_cpu`` (the forward under
``torch.autocast("cpu", torch.bfloat16)``; weights, gradients and the update
stay float32). Both are evaluated in float32 on the 100 held-out images; the
table gives box and mask AP, the difference, and the seconds per iteration.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskrcnn.data.coco import CocoDataset  # noqa: E402
from maskrcnn.data.synthetic import make_demo_dataset  # noqa: E402
from maskrcnn.engine.configure import configure  # noqa: E402
from maskrcnn.engine.demo import PRESET, TRAIN_IMAGES, VAL_IMAGES  # noqa: E402
from maskrcnn.engine.train import Trainer, ValidationSet  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=None, help="default: the demo preset's schedule")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bf16_training"))
    args = parser.parse_args(argv)
    train_json, train_dir, val_json, val_dir = make_demo_dataset(
        args.out / "data", train_images=TRAIN_IMAGES, val_images=VAL_IMAGES, seed=0)
    dataset = CocoDataset(train_json, train_dir)
    rows = {}
    for name, bf16 in (("float32", False), ("bfloat16 autocast", True)):
        cfg, solver = configure(dataset, preset=PRESET, iterations=args.iterations)
        solver = dataclasses.replace(solver, bf16_cpu=bf16)
        start = time.perf_counter()
        trainer = Trainer(model_cfg=cfg, solver=solver, dataset=dataset, out_dir=args.out / name.split()[0],
                          validation=ValidationSet(val_json, val_dir))
        metrics = trainer.train()
        assert metrics is not None
        rows[name] = {"box": metrics["bbox"]["AP"], "mask": metrics["segm"]["AP"],
                      "s_per_iter": (time.perf_counter() - start) / solver.iterations,
                      "iterations": solver.iterations}
        print(name, json.dumps(rows[name]), file=sys.stderr, flush=True)
    flags = f" --iterations {args.iterations}" if args.iterations else ""
    print(f"command: python benchmarks/bf16_training.py{flags}")
    print()
    print("| training | iterations | box AP | mask AP | s/iter (incl. validation) |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['iterations']} | {100 * r['box']:.1f} | {100 * r['mask']:.1f} | "
              f"{r['s_per_iter']:.2f} |")
    full, half = rows["float32"], rows["bfloat16 autocast"]
    print(f"\nbfloat16 - float32: box AP {100 * (half['box'] - full['box']):+.1f}, "
          f"mask AP {100 * (half['mask'] - full['mask']):+.1f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
