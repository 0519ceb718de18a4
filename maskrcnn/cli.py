"""The ``maskrcnn`` command: ``predict`` and ``demo``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

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
                                           det.masks))
            if viz_dir is not None:
                picture = draw_detections(image, det.boxes, det.names, det.scores, det.masks)
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


def run_demo(args: argparse.Namespace) -> int:
    from .engine.demo import demo

    return demo(Path(args.out))


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

    d = sub.add_parser("demo", help="run the demo and write its pictures")
    d.add_argument("--out", default="demo_output", metavar="DIR")
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
