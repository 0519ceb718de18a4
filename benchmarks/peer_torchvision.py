"""Per-stage CPU timing of torchvision's Mask R-CNN, the peer that ``bench_predict.py`` compares with.

Run with the peer virtual environment (``make peer-venv``), never with ours::

    .peer-venv/bin/python benchmarks/peer_torchvision.py --weights W.pth --image I.png \
        --runs 5 --warmup 2 --threads 2

It builds ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)``,
loads the state dict ``W``, and times ``model([image])`` with the image as a
float CHW tensor in [0, 1]. Stages are delimited by forward (pre-)hooks that
record ``time.perf_counter()``, using the same names as our predictor:

- ``preprocess``: ``model.transform`` (resize, normalise, batch)
- ``backbone``: ``model.backbone`` (ResNet + FPN)
- ``rpn``: ``model.rpn``
- ``box_head``: start of ``model.roi_heads`` until ``roi_heads.mask_roi_pool`` starts
  (box RoIAlign, box head, per-class NMS)
- ``mask_head``: from ``mask_roi_pool`` to the end of ``model.roi_heads``
- ``paste``: ``model.transform.postprocess`` (box rescale, mask pasting)

Prints one JSON line on stdout: medians per stage and of the total (seconds),
every run's numbers, versions, and the detections of the last run. This
script imports nothing from ``maskrcnn``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.models.detection import maskrcnn_resnet50_fpn

STAGES = ("preprocess", "backbone", "rpn", "box_head", "mask_head", "paste")

# The stage sum may fall short of the total by the glue between the hooked
# calls; more than this fraction means a stage boundary is missing.
SUM_TOLERANCE = 0.05


class StageMarks:
    """Timestamps set by hooks; ``stages()`` turns one forward pass's marks into durations."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    def hook(self, name: str):
        def record(*_args) -> None:
            self.t[name] = time.perf_counter()

        return record

    def stages(self) -> dict[str, float]:
        t = self.t
        return {
            "preprocess": t["transform_end"] - t["transform_start"],
            "backbone": t["backbone_end"] - t["backbone_start"],
            "rpn": t["rpn_end"] - t["rpn_start"],
            "box_head": t["mask_pool_start"] - t["roi_start"],
            "mask_head": t["roi_end"] - t["mask_pool_start"],
            "paste": t["paste_end"] - t["paste_start"],
        }


def instrument(model: torch.nn.Module) -> StageMarks:
    marks = StageMarks()
    model.transform.register_forward_pre_hook(marks.hook("transform_start"))
    model.transform.register_forward_hook(marks.hook("transform_end"))
    model.backbone.register_forward_pre_hook(marks.hook("backbone_start"))
    model.backbone.register_forward_hook(marks.hook("backbone_end"))
    model.rpn.register_forward_pre_hook(marks.hook("rpn_start"))
    model.rpn.register_forward_hook(marks.hook("rpn_end"))
    model.roi_heads.register_forward_pre_hook(marks.hook("roi_start"))
    model.roi_heads.mask_roi_pool.register_forward_pre_hook(marks.hook("mask_pool_start"))
    model.roi_heads.register_forward_hook(marks.hook("roi_end"))

    postprocess = model.transform.postprocess  # bound method

    def timed_postprocess(*args, **kwargs):
        marks.t["paste_start"] = time.perf_counter()
        out = postprocess(*args, **kwargs)
        marks.t["paste_end"] = time.perf_counter()
        return out

    model.transform.postprocess = timed_postprocess  # instance attribute shadows the method
    return marks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="torchvision state dict (.pth)")
    parser.add_argument("--image", required=True, help="RGB image file")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    torch.set_num_threads(args.threads)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    marks = instrument(model)

    # np.array copies: torch.from_numpy warns about (and must not alias) PIL's read-only buffer.
    pixels = np.array(Image.open(args.image).convert("RGB"))
    image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255

    totals: list[float] = []
    per_run: list[dict[str, float]] = []
    output: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i in range(args.warmup + args.runs):
            marks.t.clear()
            start = time.perf_counter()
            output = model([image])[0]
            total = time.perf_counter() - start
            if i >= args.warmup:
                totals.append(total)
                per_run.append(marks.stages())

    stage_sums = [sum(run.values()) for run in per_run]
    worst_gap = max(abs(total - s) / total for total, s in zip(totals, stage_sums, strict=True))
    if worst_gap > SUM_TOLERANCE:
        print(
            f"warning: torchvision stage sum differs from the total by {100 * worst_gap:.1f}% "
            f"(> {100 * SUM_TOLERANCE:.0f}%)",
            file=sys.stderr,
        )

    result = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "image_size": list(pixels.shape[:2]),
        "runs": args.runs,
        "warmup": args.warmup,
        "stages": {name: statistics.median(run[name] for run in per_run) for name in STAGES},
        "total": statistics.median(totals),
        "per_run": [{**run, "total": total} for run, total in zip(per_run, totals, strict=True)],
        "stage_sum_max_gap": worst_gap,
        "detections": int(output["boxes"].shape[0]),
        "scores": output["scores"].tolist(),
        "labels": output["labels"].tolist(),
        "boxes": output["boxes"].tolist(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
