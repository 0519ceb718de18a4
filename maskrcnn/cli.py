"""The ``maskrcnn`` command: ``predict``, ``evaluate`` and ``demo``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from .config import ModelConfig

# Fewer images than this run without a progress bar.
PROGRESS_MIN_IMAGES = 4


def _collect_inputs(inputs: Sequence[str]) -> list[tuple[Path, str]]:
    """``(path, file_name)`` per image: names relative to a directory argument, else as given."""
    from .data.images import list_images

    items = []
    for arg in inputs:
        root = Path(arg)
        for path in list_images([root]):
            items.append((path, str(path.relative_to(root)) if root.is_dir() else arg))
    return items


def run_predict(args: argparse.Namespace) -> int:
    from .convert import CheckpointError
    from .data.images import ImageReadError, load_image
    from .engine.predict import load
    from .engine.results import to_coco_results, write_json_atomic
    from .engine.visualize import draw_detections

    if args.batch_size < 1:
        raise SystemExit("--batch-size must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    try:
        items = _collect_inputs(args.images)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}") from e
    try:
        predictor = load(args.weights, device=args.device, format=args.format,
                         score_threshold=args.score_threshold)
    except (CheckpointError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from e
    viz_dir = Path(args.viz) if args.viz else None
    keypoint_head = predictor.config.keypoint_head
    skeleton = keypoint_head.skeleton if keypoint_head is not None else ()
    if viz_dir is not None:
        viz_dir.mkdir(parents=True, exist_ok=True)

    results: list[dict] = []
    failed: list[str] = []
    pending: list[tuple[str, object]] = []
    bar = tqdm(total=len(items), unit="img", disable=len(items) < PROGRESS_MIN_IMAGES, file=sys.stderr)

    def flush() -> None:
        names = [n for n, _ in pending]
        arrays = [a for _, a in pending]
        detections = predictor.predict_arrays(arrays)
        for name, image, det in zip(names, arrays, detections, strict=True):
            results.extend(to_coco_results(name, det.boxes, det.scores, predictor.category_ids(det),
                                           det.masks, predictor.coco_keypoints(det)))
            if viz_dir is not None:
                picture = draw_detections(image, det.boxes, det.names, det.scores, det.masks,
                                          det.keypoints, skeleton)
                picture.save(viz_dir / (Path(name).with_suffix("").as_posix().replace("/", "__") + ".png"))
        bar.update(len(pending))
        pending.clear()

    try:
        for path, name in items:
            try:
                pending.append((name, load_image(path)))
            except ImageReadError as e:
                failed.append(name)
                bar.update(1)
                tqdm.write(f"skipped {e}", file=sys.stderr)
                continue
            if len(pending) == args.batch_size:
                flush()
        if pending:
            flush()
    finally:
        bar.close()
        # Whatever happened, the detections computed so far are kept.
        write_json_atomic(args.out, results)
    done = len(items) - len(failed)
    print(f"{len(results)} detections on {done} image(s) -> {args.out}"
          + (f"; pictures in {viz_dir}" if viz_dir else ""), file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} image(s) could not be read: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .convert import CheckpointError
    from .engine.evaluate import evaluate, format_table, load_ground_truth
    from .engine.predict import load
    from .engine.results import write_json_atomic

    if args.batch_size < 1:
        raise SystemExit("--batch-size must be at least 1")
    if args.max_images is not None and args.max_images < 0:
        raise SystemExit("--max-images must be non-negative")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if not Path(args.images).is_dir():
        raise SystemExit(f"error: no such image directory: {args.images}")
    try:
        gt = load_ground_truth(args.json)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
    try:
        predictor = load(args.weights, device=args.device, format=args.format)
    except (CheckpointError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from e

    metrics, results = evaluate(predictor, gt, args.images, batch_size=args.batch_size,
                                max_images=args.max_images)
    print(format_table(metrics))
    write_json_atomic(args.out, metrics, indent=2)
    if args.results:
        # COCO results records (image_id) that also carry file_name, like predict's output.
        write_json_atomic(args.results, results)
    print(f"{metrics['images']} image(s) evaluated; metrics -> {args.out}"
          + (f"; {len(results)} detections -> {args.results}" if args.results else ""), file=sys.stderr)
    failed = metrics["images_failed"]
    if failed:
        print(f"error: {len(failed)} image(s) could not be evaluated: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def parameter_count(cfg: ModelConfig) -> int:
    """Learnable parameters of the detector ``cfg`` describes (built on the meta device: no memory)."""
    from .model import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    return sum(p.numel() for p in model.parameters())


def run_presets(args: argparse.Namespace) -> int:
    from .config import COCO_IDS_80, PRESETS

    rows = []
    for name, preset in PRESETS.items():
        classes = preset.model.num_classes if preset.model.class_names else len(COCO_IDS_80)
        cfg = preset.model.replace(num_classes=classes, class_names=(), category_ids=())
        rows.append((name, f"{parameter_count(cfg) / 1e6:.1f}M", preset.description))
    width = max(len(r[0]) for r in rows)
    print(f"{'preset':<{width}}  params  description")
    for name, params, description in rows:
        print(f"{name:<{width}}  {params:>6}  {description}")
    print("(parameters with the 80 COCO classes, or the preset's own classes)")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from .engine.demo import demo

    return demo(Path(args.out), iterations=args.iterations)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskrcnn", description="Mask R-CNN instance segmentation.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="segment images with a trained model")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR",
                   help="image files and/or directories (their images in sorted order)")
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="checkpoint: ours, torchvision's (.pth) or Detectron2's (.pkl/.pth)")
    p.add_argument("--format", choices=("maskrcnn", "torchvision", "detectron2"), default=None,
                   help="checkpoint format (default: detected from the file's contents)")
    p.add_argument("--out", default="results.json", metavar="JSON",
                   help="COCO results file to write (default: results.json)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per forward pass")
    p.add_argument("--viz", metavar="DIR", help="write one picture per image with its detections here")
    p.add_argument("--score-threshold", type=float, default=None, metavar="T",
                   help="keep detections scoring above T (default: the model's own, 0.05)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.set_defaults(func=run_predict)

    e = sub.add_parser("evaluate", help="COCO box, mask and keypoint AP on an annotated image set")
    e.add_argument("--json", required=True, metavar="FILE", help="COCO annotation file (instances format)")
    e.add_argument("--images", required=True, metavar="DIR",
                   help="directory holding the annotation file's images (by their file_name)")
    e.add_argument("--weights", required=True, metavar="FILE",
                   help="checkpoint: ours, torchvision's (.pth) or Detectron2's (.pkl/.pth)")
    e.add_argument("--format", choices=("maskrcnn", "torchvision", "detectron2"), default=None,
                   help="checkpoint format (default: detected from the file's contents)")
    e.add_argument("--out", default="metrics.json", metavar="JSON",
                   help="metrics file to write, AP on the 0-1 scale (default: metrics.json)")
    e.add_argument("--results", metavar="JSON", help="also write the detections as a COCO results file")
    e.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per forward pass")
    e.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="evaluate only the first N images of the annotation file")
    e.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    e.set_defaults(func=run_evaluate)

    from .engine.train import add_train_arguments, run_train

    pr = sub.add_parser("presets", help="list the model presets usable as train --preset")
    pr.set_defaults(func=run_presets)

    t = sub.add_parser("train", help="train on a COCO-format dataset")
    add_train_arguments(t)
    t.set_defaults(func=run_train)

    d = sub.add_parser("demo", help="train a small model on synthetic shapes, evaluate, draw predictions")
    d.add_argument("--out", default="demo_output", metavar="DIR")
    d.add_argument("--iterations", type=int, default=None, metavar="N",
                   help="training iterations (default: the demo preset's schedule)")
    d.set_defaults(func=run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    code = args.func(args)
    if args.command == "demo":
        print(f"done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
