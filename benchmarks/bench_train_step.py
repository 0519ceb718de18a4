"""Training step time of the paper's R50-FPN Mask R-CNN, ours against torchvision's, same torch, same run.

    .peer-venv/bin/python benchmarks/bench_train_step.py [--steps 3] [--warmup 2] [--threads 2] \\
        [--dtypes float32,bfloat16] [--json OUT.json]

Both sides run in the peer environment (torch 2.14.1 with torchvision; our
package is imported from this checkout), each configuration in a fresh
subprocess so that its peak memory is its own. The batch is the same for
both: the first two balloon training photos (sorted by file name), resized so
that the shortest edge is 800 pixels (longest at most 1333), with their
instance masks and boxes. Each side normalises with its own defaults.

- torchvision: ``MaskRCNN`` over ``resnet50(norm_layer=FrozenBatchNorm2d,
  zero_init_residual=True)`` with ``trainable_layers=3`` (stem and res2
  frozen), ``num_classes=2``, ``min_size=800, max_size=1333``, torchvision's
  defaults otherwise;
- ours: the same weights, converted by our torchvision importer
  (``convert.torchvision.convert``), so the same settings as torchvision's
  model (its sampler sizes, top-k, RoIAlign sampling), stem and res2 frozen
  (``freeze_at=2``).

Both run channels-last, as our trainer does (torchvision without it measured
3x slower here). The weights are random (seed 0; nothing is downloaded);
``zero_init_residual`` starts every residual branch at zero so that the
activations stay finite through frozen batch norm without statistics. A step is
forward (the losses), backward and an SGD update (lr 0.01, momentum 0.9,
weight decay 1e-4), under ``torch.autocast("cpu", bfloat16)`` for the
bfloat16 rows. The time is the median over ``--steps`` steps after
``--warmup``; the peak memory is the process's peak resident set
(``ru_maxrss``) after the steps, weights and data included.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIDES = ("ours", "torchvision")


def balloon_batch(data: Path, count: int = 2) -> list[dict[str, Any]]:
    """The first ``count`` training photos at the paper's scale: uint8 ``image (H, W, 3)``, ``boxes (M, 4)``
    XYXY, ``masks (M, H, W)`` bool, all at the resized size."""
    import contextlib
    import io

    import numpy as np
    from PIL import Image
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(data / "train.json"))
    images = sorted(coco.dataset["images"], key=lambda im: im["file_name"])[:count]
    out = []
    for info in images:
        photo = Image.open(data / "train" / info["file_name"]).convert("RGB")
        w, h = photo.size
        scale = min(800 / min(h, w), 1333 / max(h, w))
        size = (round(w * scale), round(h * scale))
        masks, boxes = [], []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=info["id"], iscrowd=False)):
            mask = Image.fromarray(coco.annToMask(ann) * 255).resize(size, Image.Resampling.BILINEAR)
            m = np.asarray(mask) >= 128
            ys, xs = np.nonzero(m)
            if len(xs) == 0:
                continue
            masks.append(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        out.append({
            "image": np.asarray(photo.resize(size, Image.Resampling.BILINEAR)),
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "masks": np.stack(masks) if masks else np.zeros((0, size[1], size[0]), bool),
        })
    return out


def ours_step(samples: list[dict[str, Any]]) -> tuple[Any, Any]:
    """Our model and a callable running one training step's forward (the summed loss)."""
    import dataclasses

    import torch

    from maskrcnn.convert.torchvision import convert
    from maskrcnn.data.transforms import pad_batch, prepare_image
    from maskrcnn.model import build_model
    from maskrcnn.structures import ImageBatch, Targets

    cfg, state = convert(torchvision_model().state_dict())
    cfg = cfg.replace(backbone=dataclasses.replace(cfg.backbone, freeze_at=2))
    model = build_model(cfg)
    model.load_state_dict(state)
    model = model.to(memory_format=torch.channels_last).train()
    tensors = [prepare_image(s["image"], cfg.input, resize=False) for s in samples]
    sizes = [(t.shape[1], t.shape[2]) for t in tensors]
    batch = ImageBatch(pad_batch(tensors, cfg.input.size_divisibility).contiguous(
        memory_format=torch.channels_last), sizes, sizes)
    targets = [Targets(torch.from_numpy(s["boxes"]), torch.zeros(len(s["boxes"]), dtype=torch.int64),
                       torch.from_numpy(s["masks"]), seed=i) for i, s in enumerate(samples)]
    return model, lambda: sum(model.loss(batch, targets).values())


def torchvision_model() -> Any:
    """torchvision's R50-FPN Mask R-CNN, seeded: stem and res2 frozen, 2 classes, the paper's scale."""
    import torch
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    resnet = resnet50(norm_layer=FrozenBatchNorm2d, zero_init_residual=True)
    backbone = _resnet_fpn_extractor(resnet, trainable_layers=3)
    return MaskRCNN(backbone, num_classes=2, min_size=800, max_size=1333)


def torchvision_step(samples: list[dict[str, Any]]) -> tuple[Any, Any]:
    import torch

    model = torchvision_model().to(memory_format=torch.channels_last).train()
    images = [torch.from_numpy(s["image"]).permute(2, 0, 1).float() / 255 for s in samples]
    targets = [{"boxes": torch.from_numpy(s["boxes"]),
                "labels": torch.ones(len(s["boxes"]), dtype=torch.int64),
                "masks": torch.from_numpy(s["masks"]).to(torch.uint8)} for s in samples]
    return model, lambda: sum(model(images, targets).values())


def measure(side: str, dtype: str, steps: int, warmup: int, threads: int, data: Path) -> dict[str, Any]:
    """One configuration, in this process: median seconds per step and peak memory."""
    import torch

    torch.set_num_threads(threads)
    samples = balloon_batch(data)
    model, forward = (ours_step if side == "ours" else torchvision_step)(samples)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    times, losses = [], []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = forward()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        elapsed = time.perf_counter() - start
        losses.append(float(loss.detach()))
        print(f"  {side} {dtype} step {i + 1}/{warmup + steps}: {elapsed:.2f} s, loss {losses[-1]:.3f}",
              file=sys.stderr, flush=True)
        if i >= warmup:
            times.append(elapsed)
    return {
        "side": side, "dtype": dtype, "s_per_iter": statistics.median(times), "times": times,
        "losses": losses, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "image_sizes": [list(s["image"].shape[:2]) for s in samples],
        "instances": [len(s["boxes"]) for s in samples],
        "trainable_parameters": sum(p.numel() for p in params),
    }


def table(rows: list[dict[str, Any]]) -> str:
    by = {(r["side"], r["dtype"]): r for r in rows}
    lines = ["| dtype | ours (s/iter) | torchvision (s/iter) | ours / torchvision | ours peak (MB) | "
             "torchvision peak (MB) |", "|---|---:|---:|---:|---:|---:|"]

    def cell(row: dict[str, Any] | None, key: str, digits: int) -> str:
        return "n/a" if row is None else f"{row[key]:.{digits}f}"

    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        ours, peer = by.get(("ours", dtype)), by.get(("torchvision", dtype))
        ratio = f"{ours['s_per_iter'] / peer['s_per_iter']:.2f}" if ours and peer else "n/a"
        lines.append(f"| {dtype} | {cell(ours, 's_per_iter', 2)} | {cell(peer, 's_per_iter', 2)} | {ratio} | "
                     f"{cell(ours, 'peak_rss_mb', 0)} | {cell(peer, 'peak_rss_mb', 0)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    parser.add_argument("--sides", default="ours,torchvision", help="comma-separated: ours, torchvision")
    parser.add_argument("--data", type=Path, default=None,
                        help="balloon folder (default <shared>/data/balloon)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--one", nargs=2, metavar=("SIDE", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from tests.peers import shared_dir

    data = args.data or shared_dir() / "data" / "balloon"
    if args.one:
        print(json.dumps(measure(*args.one, args.steps, args.warmup, args.threads, data)))
        return 0
    try:
        import torchvision  # noqa: F401
    except ImportError:
        sys.exit("torchvision is not importable: run this with the peer environment, "
                 ".peer-venv/bin/python (make peer-venv)")
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for dtype in args.dtypes.split(","):
        for side in args.sides.split(","):
            print(f"timing {side} {dtype} ...", file=sys.stderr, flush=True)
            done = subprocess.run(
                [sys.executable, __file__, "--one", side, dtype, "--steps", str(args.steps), "--warmup",
                 str(args.warmup), "--threads", str(args.threads), "--data", str(data)],
                env=env, stdout=subprocess.PIPE, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    from bench_predict import cpu_model  # beside this script

    first = rows[0]
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"CPU: {cpu_model()}; torch {first['torch']} (both sides), {first['threads']} threads; batch 2 "
          f"balloon photos at {first['image_sizes']} with {first['instances']} instances; median of "
          f"{args.steps} steps after {args.warmup}")
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
