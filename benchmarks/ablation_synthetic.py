"""The paper's ablations (Table 2) on the synthetic shapes, with the same budget for each variant.

    .venv/bin/python benchmarks/ablation_synthetic.py --out ablation [--iterations 900]

Each variant trains the ``demo-r18-fpn`` preset from scratch on the demo's
1000 training images (seed 0) with one change, evaluates COCO AP on the 100
held-out images, and the script prints a markdown table: variant, the
``--set`` overrides, seconds per iteration (median of the logged windows after
the first), box and mask AP.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from maskrcnn.cli import main as cli_main
from maskrcnn.data.synthetic import make_demo_dataset

C4_HEAD = [
    "architecture=c4",
    "box_head.pooler.resolution=14", "box_head.pooler.sampling_ratio=0", "box_head.pooler.aligned=true",
    "box_head.num_fc=0",
    "mask_head.pooler.resolution=14", "mask_head.pooler.sampling_ratio=0", "mask_head.pooler.aligned=true",
    "mask_head.conv_dims=[]", "mask_head.deconv_dim=64",
]

VARIANTS: dict[str, list[str]] = {
    "FPN, RoIAlign, per-class sigmoid (baseline)": [],
    "RoIPool instead of RoIAlign": ["box_head.pooler.kind=roi_pool", "mask_head.pooler.kind=roi_pool"],
    "softmax across classes instead of sigmoid": ["mask_head.representation=softmax"],
    "C4 head (res5 on 14x14 RoIAlign) instead of FPN": C4_HEAD,
}


def run(name: str, sets: list[str], data: tuple[Path, Path, Path, Path], out: Path, iterations: int) -> dict:
    train_json, train_dir, val_json, val_dir = data
    args = ["train", "--train-json", str(train_json), "--train-images", str(train_dir),
            "--val-json", str(val_json), "--val-images", str(val_dir), "--out", str(out),
            "--preset", "demo-r18-fpn", "--iterations", str(iterations)]
    if sets:
        args += ["--set", *sets]
    start = time.perf_counter()
    code = cli_main(args)
    if code != 0:
        raise SystemExit(f"{name}: train exited with {code}")
    minutes = (time.perf_counter() - start) / 60
    metrics = json.loads((out / "final_metrics.json").read_text())
    windows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [w["seconds_per_iteration"] for w in windows if "seconds_per_iteration" in w][1:]
    return {"variant": name, "sets": sets, "s_per_it": statistics.median(speeds),
            "minutes": minutes, "box_ap": metrics["bbox"]["AP"], "mask_ap": metrics["segm"]["AP"]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=900)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = make_demo_dataset(args.out / "data", train_images=1000, val_images=100, seed=0)
    rows = []
    for i, (name, sets) in enumerate(VARIANTS.items()):
        if args.only and name not in args.only:
            continue
        rows.append(run(name, sets, data, args.out / f"variant{i}", args.iterations))
        (args.out / "ablation.json").write_text(json.dumps(rows, indent=2))
    print(f"\nsynthetic shapes, demo-r18-fpn from scratch, {args.iterations} iterations x 8 images each\n")
    print("| variant | s/it | box AP | mask AP |")
    print("|---|---:|---:|---:|")
    for r in rows:
        box, mask = 100 * r["box_ap"], 100 * r["mask_ap"]
        print(f"| {r['variant']} | {r['s_per_it']:.2f} | {box:.1f} | {mask:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
