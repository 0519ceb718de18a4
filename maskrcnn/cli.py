"""The ``maskrcnn`` command: ``predict``, ``evaluate``, ``export``, ``train``, ``dataset split``,
``presets`` and ``demo``.

A user's mistake gets one line on stderr, ``maskrcnn COMMAND: error: ...``,
saying what is wrong, with which file or flag, and what to do. Exit status:

- 0: done;
- 1: a failure: a file that cannot be used (checkpoint, dataset, image),
  an empty input set, a run that failed (also when some images were skipped);
- 2: a usage error: an unknown flag, a bad value (``--batch-size 0``,
  ``--score-threshold 2``, ``--device cuda`` without a GPU);
- 130 (Ctrl-C) and 143 (SIGTERM): interrupted; what was done so far is kept
  (``train`` saves a checkpoint and says how to resume).

``--debug`` (anywhere on the command line) adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import os
import shlex
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from .config import ModelConfig
from .engine.flags import add_dtype_argument, device_problem, dtype_problem, dtype_warning, unit_interval
from .engine.tiles import add_tile_arguments, check_tile_arguments, tiled_predictor
from .serve.command import add_serve_parser

# Fewer images than this run without a progress bar.
PROGRESS_MIN_IMAGES = 4

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM
# A message longer than this is cut (the full text is in the --debug traceback).
MAX_MESSAGE_CHARS = 600


class UsageError(Exception):
    """The command line is wrong (a flag's value, flags that go together): exit status 2."""


class Failure(Exception):
    """The command cannot do its work (a bad file, nothing to work on): exit status 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that ``finally`` blocks and checkpoints run."""


# --------------------------------------------------------------------------- checks


def _at_least(flag: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise UsageError(f"{flag} must be at least {minimum}, got {value}")


def _device(name: str | None) -> str | None:
    """A ``--device`` value that this machine can run on (None: the default)."""
    problem = None if name is None else device_problem(name)
    if problem:
        raise UsageError(problem)
    return name


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of the commands that run a trained model: ``predict`` and ``evaluate``."""
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="checkpoint: ours, torchvision's (.pth) or Detectron2's (.pkl/.pth), "
                        "or a model written by `maskrcnn export` (.onnx)")
    _add_format_argument(p)
    p.add_argument("--runtime", choices=("torch", "onnxruntime", "openvino"), default=None,
                   help="what runs the model (default: torch for checkpoints, onnxruntime for .onnx files)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per forward pass")
    p.add_argument("--score-threshold", type=unit_interval, default=None, metavar="T",
                   help="keep detections scoring above T, any T in [0, 1] (default: the model's own, 0.05)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_dtype_argument(p)


def _add_format_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("maskrcnn", "torchvision", "detectron2"), default=None,
                   help="checkpoint format (default: detected from the file's contents)")


def _check_model_arguments(args: argparse.Namespace) -> None:
    """Usage errors in ``add_model_arguments``' flags, found before anything is read."""
    _at_least("--batch-size", args.batch_size, 1)
    _device(args.device)
    problem = dtype_problem(args.dtype, args.device)
    if problem:
        raise UsageError(problem)
    slow = dtype_warning(args.dtype, args.device)
    if slow and os.environ.get("RANK", "0") == "0":  # once, also under torchrun
        print(f"warning: {slow}", file=sys.stderr)


def _load_predictor(args: argparse.Namespace) -> Any:
    """The predictor that ``add_model_arguments``' flags describe."""
    from .engine.predict import load

    if not Path(args.weights).is_file():
        raise Failure(f"{args.weights}: no such checkpoint file (--weights)")
    try:
        return load(args.weights, device=args.device or "cpu", format=args.format,
                    score_threshold=args.score_threshold, runtime=args.runtime, dtype=args.dtype)
    except ValueError as e:  # a runtime that does not run this file, a device or type it has not
        raise UsageError(f"{e} (--runtime, --device, --dtype)") from e
    except ImportError as e:
        raise Failure(f"{args.weights} needs {e.name or 'a package'} to run: "
                      "pip install 'maskrcnn[deploy]'") from e


# --------------------------------------------------------------------------- export


def run_export(args: argparse.Namespace) -> int:
    from .convert import load_checkpoint
    from .model import build_model

    weights, out = Path(args.weights), Path(args.out)
    if not weights.is_file():
        raise Failure(f"{weights}: no such checkpoint file (--weights)")
    if weights.suffix.lower() == ".onnx":
        raise UsageError(f"{weights}: already an exported model; give the checkpoint it came from "
                         "(--weights)")
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"--out {out}: the file's name must end in .onnx")
    try:
        from .export.graph import ExportError
        from .export.onnx_file import export_onnx
    except ImportError as e:
        raise Failure(f"exporting needs {e.name or 'the deploy extra'}: "
                      "pip install 'maskrcnn[deploy]'") from e
    config, state = load_checkpoint(weights, format=args.format)
    model = build_model(config)
    model.load_state_dict(state, strict=True)
    print(f"exporting {weights} to ONNX (about a minute)...", file=sys.stderr)
    start = time.perf_counter()
    try:
        export_onnx(model, config, out, opset=args.opset, source=weights.name)
    except ExportError as e:
        raise Failure(f"{weights}: {e}; this model cannot be exported") from e
    except ValueError as e:
        raise UsageError(f"--opset {args.opset}: {e}") from e
    size = out.stat().st_size / 2**20
    print(f"{weights} -> {out} ({size:.0f} MiB, {time.perf_counter() - start:.0f} s); run it with: "
          f"maskrcnn predict IMAGES --weights {out}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- predict


def run_predict(args: argparse.Namespace) -> int:
    from .data.images import collect_images
    from .engine.sharding import ShardedPredictor, drain, is_main, process_group, quiet_unless_main
    from .engine.video import VIDEO_EXTENSIONS, is_video
    from .engine.visualize import picture_paths

    _check_model_arguments(args)
    _at_least("--every", args.every, 1)
    _check_tile_arguments(args)
    try:
        items = collect_images(args.images, also=VIDEO_EXTENSIONS)
    except FileNotFoundError as e:
        raise Failure(f"{e}; give image or video files, or folders that hold them") from e
    except ValueError as e:
        raise UsageError(str(e)) from e
    if not items:
        folders = ", ".join(args.images)
        raise Failure(f"{folders}: no images or videos found (files ending in .jpg, .png, .bmp, .tif, .webp, "
                      ".mp4, .mov, .avi, .mkv, .webm, ... directly inside a folder; subfolders are not "
                      "searched)")
    videos = [(path, name) for path, name in items if is_video(path)]
    items = [(path, name) for path, name in items if not is_video(path)]
    viz_dir = Path(args.viz) if args.viz else None
    pictures: list[Path] = []
    if viz_dir is not None:
        try:
            pictures = picture_paths([name for _, name in items], viz_dir)
        except ValueError as e:
            raise Failure(str(e)) from e
    # Under torchrun, each process predicts its share of the images and draws their pictures; rank 0
    # gets every image's detections in input order and alone writes the results and prints (and
    # predicts the videos, after the images).
    with process_group(args.device) as exchange, quiet_unless_main(exchange):
        predictor = _tiled(_load_predictor(_for_this_process(args, exchange)), args)
        keypoint_head = predictor.config.keypoint_head
        skeleton = keypoint_head.skeleton if keypoint_head is not None else ()
        draw = functools.partial(_save_picture, pictures, skeleton) if viz_dir else None
        predictions = ShardedPredictor(predictor, exchange).predict_files(
            [path for path, _ in items], batch_size=args.batch_size,
            progress=len(items) >= PROGRESS_MIN_IMAGES, on_predicted=draw)
        if not is_main(exchange):
            drain(predictions)
            return 0
        return _write_predictions(args, predictor, predictions, items, videos, viz_dir, skeleton)


def _for_this_process(args: argparse.Namespace, exchange: Any) -> argparse.Namespace:
    """``args`` with ``--device cuda`` made this process's own GPU under torchrun."""
    from .engine.sharding import process_device

    return argparse.Namespace(**{**vars(args), "device": process_device(args.device, exchange)})


def _save_picture(pictures: Sequence[Path], skeleton: Sequence[tuple[int, int]], prediction: Any) -> None:
    """``--viz``: the picture of one image's detections, written where it was predicted."""
    from .engine.visualize import draw_detections

    det, path = prediction.detections, pictures[prediction.index]
    picture = draw_detections(prediction.image, det.boxes, det.names, det.scores, det.masks, det.keypoints,
                              skeleton)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def _write_predictions(args: argparse.Namespace, predictor: Any, predictions: Any, items: Sequence[Any],
                       videos: Sequence[Any], viz_dir: Path | None,
                       skeleton: Sequence[tuple[int, int]]) -> int:
    """``predict``'s results file (images in input order, then videos) and summary; the exit status."""
    from .engine.video import ResultsWriter, run_video_prediction

    failed: list[str] = []
    done: list[str] = []
    with ResultsWriter(args.out) as results:
        try:
            with contextlib.closing(predictions):  # closes the progress bar however the loop ends
                for prediction in predictions:
                    index, det = prediction.index, prediction.detections
                    name = items[index][1]
                    if det is None:  # skipped, and reported on stderr
                        failed.append(name)
                        continue
                    results.add(predictor.coco_results(det, name))
                    done.append(name)
            summary = None
            if videos:
                try:
                    summary = run_video_prediction(predictor, videos, out=results, viz_dir=viz_dir,
                                                   every=args.every, batch_size=args.batch_size,
                                                   skeleton=skeleton)
                except ValueError as e:
                    raise Failure(str(e)) from e
        except KeyboardInterrupt as e:
            # The results so far are kept: the writer closes the file with what it holds.
            raise KeyboardInterrupt(f"interrupted; the {results.count} detections done so far are in "
                                    f"{args.out}") from e
    what = f"{len(done)} image(s)"
    if summary is not None:
        what += f" and {summary.predicted} frame(s) of {summary.videos} video(s)"
    print(f"{results.count} detections on {what} -> {args.out}"
          + (f"; pictures in {viz_dir}" if viz_dir else ""), file=sys.stderr)
    if summary is not None:
        failed.extend(summary.failed)
    if failed:
        raise Failure(f"{len(failed)} input(s) could not be read and were skipped: {', '.join(failed)}")
    return 0


def _check_tile_arguments(args: argparse.Namespace) -> None:
    try:
        check_tile_arguments(args)
    except ValueError as e:
        raise UsageError(str(e)) from e


def _tiled(predictor: Any, args: argparse.Namespace) -> Any:
    try:
        return tiled_predictor(predictor, args)
    except ValueError as e:
        raise UsageError(str(e)) from e


# --------------------------------------------------------------------------- evaluate


def run_evaluate(args: argparse.Namespace) -> int:
    from .engine.evaluate import evaluate, format_table
    from .engine.results import write_json_atomic
    from .engine.sharding import ShardedPredictor, is_main, process_group, quiet_unless_main

    _check_model_arguments(args)
    _check_tile_arguments(args)
    _at_least("--max-images", args.max_images, 1)
    # Under torchrun, each process predicts its share of the images; rank 0 gets every image's
    # detections in the annotations' order and alone scores them, writes and prints. (The others'
    # `evaluate` scores no image, in no time, and they return.)
    with process_group(args.device) as exchange, quiet_unless_main(exchange):
        converted = _read_source(args.json, args.images, args, role="val", flag="--json")
        image_dir = converted.image_dir
        entries = converted.coco.get("images")
        entries = entries[: args.max_images] if isinstance(entries, list) else []
        if not entries:
            raise Failure(f"{args.json}: lists no images; nothing to evaluate")
        names = [str(entry.get("file_name", "")) if isinstance(entry, dict) else "" for entry in entries]
        if not any((image_dir / name).is_file() for name in names if name):
            raise Failure(f"{image_dir}: none of the {len(names)} image(s) that {args.json} lists is in this "
                          f"folder (e.g. {names[0] or '?'}); give the folder they are in as --images")
        predictor = _tiled(_load_predictor(_for_this_process(args, exchange)), args)
        config = predictor.config
        _, gt = _ground_truth(converted, config.class_names, config.category_ids, "--json")

        metrics, results = evaluate(ShardedPredictor(predictor, exchange), gt, image_dir,
                                    batch_size=args.batch_size, max_images=args.max_images)
        if not is_main(exchange):
            return 0
    print(format_table(metrics))
    write_json_atomic(args.out, metrics, indent=2)
    if args.results:
        # COCO results records (image_id) that also carry file_name, like predict's output.
        write_json_atomic(args.results, results)
    print(f"{metrics['images']} image(s) evaluated; metrics -> {args.out}"
          + (f"; {len(results)} detections -> {args.results}" if args.results else ""), file=sys.stderr)
    failed = metrics["images_failed"]
    if failed:
        raise Failure(f"{len(failed)} image(s) could not be evaluated and were left out: {', '.join(failed)}")
    return 0


# --------------------------------------------------------------------------- dataset


def run_dataset_split(args: argparse.Namespace) -> int:
    from .data.coco import read_json
    from .data.split import split_coco
    from .data.validation import DatasetError
    from .engine.results import write_json_atomic

    if not 0.0 < args.val < 1.0:
        raise UsageError(f"--val {args.val:g}: give the validation share as a fraction between 0 and 1")
    source = Path(args.json)
    fmt = args.data_format if args.data_format != "auto" else _detected(source)
    converted = None
    if fmt not in ("coco", None):  # another format: converted first (a COCO file is split as it is)
        converted = _read_source(args.json, args.images, args)
        if converted.report.total:
            print(converted.report.summary(), file=sys.stderr)
    try:
        data = read_json(source) if converted is None else converted.coco
        train, val, summary = split_coco(data, args.val, args.seed)
    except DatasetError as e:
        message = str(e)
        raise Failure(message if message.startswith(str(source)) else f"{source}: {message}") from e
    out = Path(args.out)
    for name, content in (("train.json", train), ("val.json", val)):
        write_json_atomic(out / name, content)
    s = summary
    print(f"{s.train_images} training image(s) ({s.train_instances} annotations), {s.val_images} validation "
          f"image(s) ({s.val_instances}); {s.classes_on_both_sides} of the {s.classes_that_can_be} classes "
          f"with two or more images on both sides ({s.classes} classes in all) -> {out / 'train.json'}, "
          f"{out / 'val.json'}", file=sys.stderr)
    if s.left_out:
        print(f"{s.left_out} annotation(s) name an image the file does not list and were left out",
              file=sys.stderr)
    if converted is not None:
        print(f"file_name is relative to {converted.image_dir}: train with --train-images "
              f"{_quoted(converted.image_dir)}", file=sys.stderr)
    return 0


def _quoted(path: Any) -> str:
    """A path as a shell word, for the commands this program suggests."""
    return shlex.quote(str(path))


def _detected(path: Path) -> str | None:
    """The detected format of ``path``, None when none fits (the reader then says why)."""
    from .data.formats import DatasetError, detect_format

    try:
        return detect_format(path)
    except DatasetError:
        return None


def run_dataset_convert(args: argparse.Namespace) -> int:
    """``maskrcnn dataset convert``: any known format -> COCO JSON (or ``--to`` another format)."""
    from .data.formats import WRITABLE, DatasetError, write_coco, write_source
    from .data.validation import clean_ground_truth

    if args.to != "coco" and args.to not in WRITABLE:
        raise UsageError(f"--to {args.to}: not one of coco, {', '.join(WRITABLE)}")
    out = Path(args.out)
    if args.to == "coco" and out.is_dir():
        raise UsageError(f"--out {out}: is a folder; give the COCO JSON file to write")
    converted = _read_source(args.source, args.images, args)
    if converted.format == "coco" and args.to == "coco":
        raise UsageError(f"{args.source}: is already COCO JSON; give --to to write another format")
    if converted.format == "coco":
        # Written as the COCO reader would read it: annotations it cannot use left out, counted.
        try:
            skipped = clean_ground_truth(converted.coco, str(converted.source))
        except DatasetError as e:
            raise Failure(str(e)) from e
        for why, count in sorted(skipped.items()):
            print(f"{converted.source}: {count} annotation(s) left out: {why}", file=sys.stderr)
    else:
        print(converted.report.summary(), file=sys.stderr)
    classes = [c.get("name") for c in converted.coco.get("categories", []) if isinstance(c, dict)]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            if args.to == "coco":
                write_coco(converted, out)
                written = out
            else:
                written = write_source(converted.coco, converted.image_dir, args.to, out)
    except DatasetError as e:
        raise Failure(str(e)) from e
    except OSError as e:
        raise Failure(f"{out}: cannot be written: {e.strerror or e}") from e
    for warning in caught:  # what the format cannot hold, one line each
        print(f"warning: {_one_line(str(warning.message))}", file=sys.stderr)
    images = len(converted.coco.get("images", []))
    instances = len(converted.coco.get("annotations", []))
    print(f"{converted.format} -> {args.to}: {images} image(s), {instances} instance(s), {len(classes)} "
          f"class(es) ({', '.join(map(str, classes[:10]))}{', ...' if len(classes) > 10 else ''}) "
          f"-> {written}",
          file=sys.stderr)
    if args.to == "coco":
        print(f"file_name is relative to {converted.image_dir}: train with --train {_quoted(written)} "
              f"--train-images {_quoted(converted.image_dir)}", file=sys.stderr)
    elif args.to == "cvat":
        print(f"CVAT names the images by file name and they were not copied: read it with --images "
              f"{_quoted(converted.image_dir)}", file=sys.stderr)
    return 0


def _preset_names() -> list[str]:
    from .config import PRESETS

    return list(PRESETS)


def run_dataset_stats(args: argparse.Namespace) -> int:
    from .config import PRESETS
    from .data.stats import dataset_stats, format_stats

    dataset = _load_dataset(args.data, args.images, args)
    print(format_stats(dataset_stats(dataset, PRESETS[args.preset].model)))
    return 0


def _ground_truth_picture(sample: Any, class_names: Sequence[str]) -> Any:
    """One image's instances (masks, boxes, class names, labelled keypoints) and crowd regions
    (boxes named "crowd (ignored)") drawn as ``predict --viz`` draws detections."""
    from .engine.visualize import draw_detections

    gt = sample.annotations
    image = sample.image.numpy()
    height, width = image.shape[:2]
    crowd = gt.crowd_boxes.numpy().reshape(-1, 4)
    names = [class_names[int(label)] for label in gt.labels] + ["crowd (ignored)"] * len(crowd)
    boxes = np.concatenate([gt.boxes.numpy().reshape(-1, 4), crowd])
    masks = np.concatenate([gt.masks.bool().numpy(), np.zeros((len(crowd), height, width), bool)])
    keypoints = None
    if gt.keypoints is not None and gt.keypoints.numel():
        points = gt.keypoints.numpy().astype(np.float64).copy()
        points[points[..., 2] <= 0, :2] = np.nan  # not labelled: not drawn
        keypoints = np.concatenate([points, np.full((len(crowd), points.shape[1], 3), np.nan)])
    return draw_detections(image, boxes, names, None, masks, keypoints)


def run_dataset_show(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .data.images import ImageReadError
    from .engine.visualize import picture_paths

    _at_least("--max-images", args.max_images, 1)
    dataset = _load_dataset(args.data, args.images, args)
    print(dataset.report.summary().splitlines()[0], file=sys.stderr)
    count = len(dataset) if args.max_images is None else min(args.max_images, len(dataset))
    pictures = picture_paths(dataset.file_names[:count], args.out)
    failed = []
    for index in tqdm(range(count), unit="img", desc="show", disable=count < PROGRESS_MIN_IMAGES,
                      file=sys.stderr):
        try:
            sample = dataset[index]
        except (ImageReadError, ValueError) as e:
            tqdm.write(f"skipped {e}", file=sys.stderr)
            failed.append(dataset.file_names[index])
            continue
        picture = _ground_truth_picture(sample, dataset.class_names)
        pictures[index].parent.mkdir(parents=True, exist_ok=True)
        picture.save(pictures[index])
    print(f"{count - len(failed)} picture(s) of the ground truth -> {args.out}", file=sys.stderr)
    if failed:
        raise Failure(f"{len(failed)} image(s) could not be read and were skipped: {', '.join(failed)}")
    return 0


# --------------------------------------------------------------------------- train


def _add_source_arguments(p: argparse.ArgumentParser, *, format_flag: str = "--format",
                          split: bool = True) -> None:
    """Flags that say how to read an annotated dataset in any format."""
    from .data.formats import FORMATS

    p.add_argument(format_flag, dest="data_format", default="auto", choices=("auto", *FORMATS),
                   help="annotation format (default: detected from the path)")
    p.add_argument("--class-attribute", metavar="NAME",
                   help="VIA: the region attribute that holds the class (default: the only one, or one "
                        "named class/label/name/category/type)")
    if split:
        p.add_argument("--split", metavar="NAME",
                       help="YOLO data.yaml key (train, val, test) or VOC ImageSets/Segmentation list "
                            "to read")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``maskrcnn train``."""
    from .config import PRESETS

    p.add_argument("--train", "--train-json", dest="train_json", required=True, metavar="DATA",
                   help="training annotations: COCO JSON, LabelMe folder, VIA JSON, YOLO data.yaml or "
                        "folder, "
                        "CVAT XML, VOC folder or instance-PNG class file (format detected from the path)")
    p.add_argument("--train-images", metavar="DIR",
                   help="folder of the training images (default: where the annotations say)")
    p.add_argument("--val", "--val-json", dest="val_json", metavar="DATA",
                   help="validation annotations, any format --train takes (a data.yaml's 'val' split)")
    p.add_argument("--val-images", metavar="DIR",
                   help="folder of the validation images (default: as --train)")
    _add_source_arguments(p, format_flag="--data-format", split=False)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (checkpoints, logs, model_final)")
    p.add_argument("--preset", default="r50-fpn", choices=sorted(PRESETS), help="architecture and schedule")
    p.add_argument("--weights", metavar="FILE",
                   help="initial weights: ours, torchvision's or Detectron2's (tensors that fit are loaded)")
    p.add_argument("--iterations", type=int, metavar="N",
                   help="iterations (default: the preset's schedule scaled to the batch size)")
    p.add_argument("--batch-size", type=int, metavar="B", help="images per iteration over all processes")
    p.add_argument("--min-size", type=int, nargs="+", metavar="S",
                   help="training shortest-edge size(s); the first is also the test size")
    p.add_argument("--max-size", type=int, metavar="S", help="longest-edge cap")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config fields, e.g. rpn.nms_thresh=0.6 solver.base_lr=0.01")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last_checkpoint.pth (if there is none, start at 0 and say so)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")


def _read_source(path: str, images: str | None, args: argparse.Namespace, *, role: str | None = None,
                 flag: str = "") -> Any:
    """Read an annotated dataset in any format (``--data-format``, ``--class-attribute``, ``--split``)
    into a ``Converted`` COCO dict; a user's mistake becomes a one-line ``Failure``.

    ``role`` (``"train"`` or ``"val"``): the split a YOLO or VOC source gives when ``--split``
    does not say (``train --train`` and ``--val``, ``evaluate``); other commands read the source whole.
    """
    from .data.formats import DatasetError, default_split, detect_format, read_source

    fmt = getattr(args, "data_format", "auto")
    where = f" ({flag})" if flag else ""
    try:
        if images is not None and not Path(images).is_dir():
            raise DatasetError(f"{images}: no such image directory")
        fmt = detect_format(path) if fmt == "auto" else fmt
        split = getattr(args, "split", None) or (default_split(path, fmt, role) if role else None)
        return read_source(path, format=fmt, images=images, split=split,
                           class_attribute=getattr(args, "class_attribute", None))
    except DatasetError as e:
        raise Failure(f"{e}{where}") from e
    except OSError as e:
        raise Failure(f"{path}: cannot be read: {e.strerror or e}{where}") from e


def _load_dataset(path: str, images: str | None, args: argparse.Namespace | None = None, *,
                  role: str | None = None, flag: str = "") -> Any:
    """A ``CocoDataset`` over a dataset in any format (see ``_read_source``)."""
    from .data.formats import DatasetError, dataset_of

    converted = _read_source(path, images, args or argparse.Namespace(), role=role, flag=flag)
    try:
        return dataset_of(converted)
    except DatasetError as e:
        raise Failure(str(e)) from e


def _ground_truth(converted: Any, class_names: Sequence[str], category_ids: Sequence[int], flag: str,
                  verbose: bool = True) -> tuple[dict[str, Any] | None, Any]:
    """A source's ground truth for scoring a model: ``(data, COCO)``, its classes numbered as the model's.

    A converted source numbers its classes itself, and two COCO files made
    apart (a training and a validation folder, one lacking a class) can
    number them differently: where a class name of the model is in the
    source under another id, the source takes the model's ids, by name
    (``align_categories``). ``data`` is the instances dict when it differs
    from the file on disk (converted or renumbered), None otherwise.
    """
    from .data.formats import align_categories, categories_differ
    from .engine.evaluate import ground_truth_from_dict, load_ground_truth

    if converted.format == "coco":
        try:
            gt = load_ground_truth(converted.source)
        except FileNotFoundError as e:
            raise Failure(f"{e} ({flag})") from e
        except ValueError as e:
            raise Failure(f"{e}; give a COCO instances file ({flag})") from e
        if not categories_differ(gt.dataset, class_names, category_ids):
            return None, gt
        if verbose:
            print(f"note: {converted.source} numbers some of the model's classes differently; they are "
                  f"matched by name", file=sys.stderr)
        data = gt.dataset
    else:
        if converted.report.total and verbose:
            print(f"{flag} {converted.source}: {converted.report.summary()}", file=sys.stderr)
        data = converted.coco
    if class_names:
        align_categories(data, class_names, category_ids or tuple(range(1, len(class_names) + 1)))
    elif verbose:
        print("warning: the model has no class names; its category ids are taken to be the "
              "annotations' own (1..K in the source's class order)", file=sys.stderr)
    try:
        gt = ground_truth_from_dict(copy.deepcopy(data), str(converted.source))
    except ValueError as e:
        raise Failure(f"{e} ({flag})") from e
    return data, gt


def _validation_set(args: argparse.Namespace, dataset: Any, verbose: bool) -> Any:
    """``--val`` (any format) as a ``ValidationSet``, its classes numbered as the training set's."""
    from .engine.train import ValidationSet

    converted = _read_source(args.val_json, args.val_images, args, role="val", flag="--val")
    data, _ = _ground_truth(converted, dataset.class_names, dataset.category_ids, "--val", verbose)
    return ValidationSet(converted.source, converted.image_dir, data=data)


def run_train(args: argparse.Namespace) -> int:
    """``maskrcnn train``: returns the exit status."""
    from . import dist as mdist
    from .engine.configure import configure
    from .engine.train import FINAL_MODEL, LAST_CHECKPOINT, Trainer

    # The command line first: nothing is read before it is known to be usable.
    if args.val_images is not None and args.val_json is None:
        raise UsageError("--val-images needs --val (the validation annotations)")
    _at_least("--batch-size", args.batch_size, 1)
    _at_least("--iterations", args.iterations, 1)
    for size in args.min_size or ():
        _at_least("--min-size", size, 1)
    _at_least("--max-size", args.max_size, 1)
    _device(args.device)
    inputs = (("--train", args.train_json, None), ("--train-images", args.train_images, True),
              ("--val", args.val_json, None), ("--val-images", args.val_images, True),
              ("--weights", args.weights, False))
    for flag, path, folder in inputs:
        if path is None:
            continue
        kind = Path.exists if folder is None else Path.is_dir if folder else Path.is_file
        found = kind(Path(path))
        if not found:
            what = "file or folder" if folder is None else "folder" if folder else "file"
            raise Failure(f"{path}: no such {what} ({flag})")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file; give a folder for the run's outputs")

    mdist.setup_distributed()
    world = mdist.world_size()
    if args.batch_size is not None and args.batch_size % world:
        raise UsageError(f"--batch-size {args.batch_size} does not split over {world} processes")
    rank0 = mdist.rank() == 0
    dataset = _load_dataset(args.train_json, args.train_images, args, role="train", flag="--train")
    if rank0:
        print(dataset.report.summary(), file=sys.stderr)
    if len(dataset) == 0:
        raise Failure(f"{args.train_json}: no usable training image (see the problems above); "
                      f"check the annotations and that {dataset.image_dir} holds the images (--train-images)")
    validation = None
    if args.val_json:
        # Read and checked now, rather than at the first validation, hours later.
        validation = _validation_set(args, dataset, rank0)
    try:
        cfg, solver = configure(dataset, preset=args.preset, batch_size=args.batch_size,
                                iterations=args.iterations, min_sizes=args.min_size or (),
                                max_size=args.max_size, overrides=args.set)  # --set errors name the key
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from e
    try:
        _check_model(cfg)
    except (ValueError, TypeError) as e:
        raise UsageError(f"the model's configuration is invalid: {e} (check --set, --min-size and "
                         "--max-size)") from e
    if solver.batch_size % world:
        raise UsageError(f"the batch size {solver.batch_size} does not split over {world} processes; "
                         "give --batch-size")

    trainer = Trainer(model_cfg=cfg, solver=solver, dataset=dataset, out_dir=out,
                      validation=validation, init_weights=Path(args.weights) if args.weights else None,
                      device=args.device)
    if args.weights and rank0:
        _report_initial_weights(args.weights, trainer.skipped_weights, trainer.num_weights)
    checkpoint = out / LAST_CHECKPOINT
    if args.resume:
        if trainer.resume():
            if rank0:
                print(f"resumed from iteration {trainer.iteration} ({checkpoint})", file=sys.stderr)
        elif rank0:
            print(f"--resume: no checkpoint yet ({checkpoint} does not exist); starting from iteration 0",
                  file=sys.stderr)
    elif checkpoint.is_file() and rank0:
        print(f"warning: {checkpoint} is replaced by this new run; to continue it instead, "
              "stop now and add --resume", file=sys.stderr)
    try:
        metrics = trainer.train()
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if rank0:
        print(f"wrote {out / FINAL_MODEL}", file=sys.stderr)
        if metrics is not None:
            from .engine.evaluate import format_table

            print(format_table(metrics))
    return 0


def _check_model(cfg: ModelConfig) -> None:
    """Build the model on the meta device (no memory): a bad --set value fails here, in one line."""
    from .model import build_model

    with torch.device("meta"):
        build_model(cfg)


# Below this fraction of the model's tensors loaded, --weights is most likely the wrong checkpoint.
MIN_FITTING_WEIGHTS = 0.5


def _report_initial_weights(path: str, skipped: list[str], total: int) -> None:
    loaded = total - len(skipped)
    if loaded < MIN_FITTING_WEIGHTS * total:
        print(f"warning: --weights {path}: only {loaded} of the model's {total} tensors fit (names and "
              f"shapes); the other {len(skipped)} start from scratch. Is it a checkpoint of this --preset's "
              "architecture?", file=sys.stderr)
    elif skipped:
        print(f"initial weights: {len(skipped)} of {total} tensors left at their initialisation "
              f"(e.g. {', '.join(skipped[:4])})", file=sys.stderr)


# --------------------------------------------------------------------------- presets, demo


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

    _at_least("--iterations", args.iterations, 1)
    start = time.perf_counter()
    code = demo(Path(args.out), iterations=args.iterations)
    print(f"done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return code


# --------------------------------------------------------------------------- parser and errors


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="maskrcnn", description="Mask R-CNN instance segmentation.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    # --debug is accepted after the command too; SUPPRESS keeps a subcommand from resetting it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", parents=[common], help="segment images and videos with a trained model")
    p.add_argument("images", nargs="+", metavar="INPUT",
                   help="image or video files (mp4, mov, avi, mkv, webm) and/or folders (in sorted order)")
    add_model_arguments(p)
    add_tile_arguments(p)
    p.add_argument("--out", default="results.json", metavar="JSON",
                   help="COCO results file to write (default: results.json); video detections have \"frame\"")
    p.add_argument("--viz", metavar="DIR",
                   help="write one picture per image, and one annotated .mp4 per video, with its "
                        "detections here")
    p.add_argument("--every", type=int, default=1, metavar="N",
                   help="videos: predict every N-th frame (the annotated video keeps every frame)")
    p.set_defaults(func=run_predict)

    e = sub.add_parser("evaluate", parents=[common],
                       help="COCO box, mask and keypoint AP on an annotated image set")
    e.add_argument("--json", "--data", dest="json", required=True, metavar="DATA",
                   help="the annotations: COCO JSON or any format `dataset convert` reads (detected)")
    e.add_argument("--images", metavar="DIR",
                   help="folder holding the annotations' images (default: where the annotations say)")
    _add_source_arguments(e, format_flag="--data-format")
    add_tile_arguments(e)
    add_model_arguments(e)
    e.add_argument("--out", default="metrics.json", metavar="JSON",
                   help="metrics file to write, AP on the 0-1 scale (default: metrics.json)")
    e.add_argument("--results", metavar="JSON", help="also write the detections as a COCO results file")
    e.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="evaluate only the first N images of the annotation file")
    e.set_defaults(func=run_evaluate)

    x = sub.add_parser("export", parents=[common],
                       help="write a model as one ONNX file (whole pipeline) for ONNX Runtime / OpenVINO")
    x.add_argument("--weights", required=True, metavar="FILE",
                   help="checkpoint: ours, torchvision's (.pth) or Detectron2's (.pkl/.pth)")
    _add_format_argument(x)
    x.add_argument("--out", required=True, metavar="FILE", help="the ONNX file to write (.onnx)")
    x.add_argument("--opset", type=int, default=18, metavar="N", help="ONNX opset, 18 to 21 (default: 18)")
    x.set_defaults(func=run_export)

    add_serve_parser(sub, common, usage_error=UsageError, failure=Failure)

    ds = sub.add_parser("dataset", help="work on a dataset: convert, stats, show, split")
    dsub = ds.add_subparsers(dest="dataset_command", required=True)
    cv = dsub.add_parser("convert", parents=[common],
                         help="LabelMe, VIA, YOLO-seg, CVAT, VOC or instance PNGs -> COCO JSON (or back)")
    cv.add_argument("source", metavar="SRC", help="the annotations: a file or folder in any known format")
    _add_source_arguments(cv)
    cv.add_argument("--images", metavar="DIR",
                    help="folder of the images; file_name is written relative to it (default: the source's "
                         "own folder)")
    cv.add_argument("--out", required=True, metavar="PATH",
                    help="the COCO JSON file to write (with --to: that format's file or folder)")
    cv.add_argument("--to", default="coco", metavar="FORMAT",
                    help="write this format instead of COCO JSON: labelme, via, yolo, cvat or voc")
    cv.set_defaults(func=run_dataset_convert)
    sp = dsub.add_parser("split", parents=[common],
                         help="split a dataset into COCO train.json and val.json, by image")
    sp.add_argument("json", metavar="DATA",
                    help="the annotations to split (COCO JSON or any format convert reads)")
    sp.add_argument("--images", metavar="DIR",
                    help="folder of the images, for a source other than COCO (default: where it says)")
    _add_source_arguments(sp)
    sp.add_argument("--val", type=float, default=0.2, metavar="FRACTION",
                    help="share of the images for validation, between 0 and 1 (default 0.2)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the random order (default 0)")
    sp.add_argument("--out", required=True, metavar="DIR", help="folder for train.json and val.json")
    sp.set_defaults(func=run_dataset_split)
    st = dsub.add_parser("stats", parents=[common],
                         help="images, instances per class, sizes against the anchors, problems")
    st.add_argument("data", metavar="DATA", help="the annotations, in any format convert reads")
    st.add_argument("--images", metavar="DIR",
                    help="folder of the images (default: where the annotations say)")
    _add_source_arguments(st)
    st.add_argument("--preset", default="r50-fpn", choices=sorted(_preset_names()),
                    help="the model whose input size and anchors the sizes are measured against")
    st.set_defaults(func=run_dataset_stats)
    sh = dsub.add_parser("show", parents=[common],
                         help="draw the ground truth of each image, as predict --viz draws detections")
    sh.add_argument("data", metavar="DATA", help="the annotations, in any format convert reads")
    sh.add_argument("--images", metavar="DIR",
                    help="folder of the images (default: where the annotations say)")
    _add_source_arguments(sh)
    sh.add_argument("--out", required=True, metavar="DIR", help="folder for the pictures (PNG)")
    sh.add_argument("--max-images", type=int, default=None, metavar="N", help="draw only the first N images")
    sh.set_defaults(func=run_dataset_show)

    pr = sub.add_parser("presets", parents=[common], help="list the model presets usable as train --preset")
    pr.set_defaults(func=run_presets)

    t = sub.add_parser("train", parents=[common], help="train on a COCO-format dataset")
    add_train_arguments(t)
    t.set_defaults(func=run_train)

    d = sub.add_parser("demo", parents=[common],
                       help="train a small model on synthetic shapes, evaluate, draw predictions")
    d.add_argument("--out", default="demo_output", metavar="DIR")
    d.add_argument("--iterations", type=int, default=None, metavar="N",
                   help="training iterations (default: the demo preset's schedule)")
    d.set_defaults(func=run_demo)
    return parser


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` (a KeyboardInterrupt) while the command runs.

    Python's default is to die at once, which skips ``finally`` blocks:
    temporary files of atomic writes stay behind, training saves nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line(text: str) -> str:
    """A message as one line: its lines joined, cut when very long."""
    line = "; ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())
    return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 1] + "…"


# torch.load's error for files it cannot read advises loading with weights_only=False,
# which runs any code the file holds: never pass that on.
_UNSAFE_ADVICE = "weights_only"


def _checkpoint_message(error: Any) -> str:
    problem = str(error.problem)
    if _UNSAFE_ADVICE in problem:
        problem = ("cannot read checkpoint: not a torch, safetensors or Detectron2 pickle file of weights "
                   "(damaged, truncated or not a checkpoint); download or save it again")
    return f"{error.path}: {problem}"


def _describe(error: BaseException, command: str) -> tuple[str, int]:
    """The one-line message and exit status of an exception that ended a command."""
    from .convert import CheckpointError
    from .data.coco import DatasetError
    from .data.images import ImageReadError

    if isinstance(error, UsageError):
        return str(error), EXIT_USAGE
    if isinstance(error, KeyboardInterrupt):
        code = EXIT_TERMINATED if isinstance(error, Terminated) or isinstance(error.__cause__, Terminated) \
            else EXIT_INTERRUPTED
        return _interrupted_message(error, command), code
    if isinstance(error, CheckpointError):
        return _checkpoint_message(error), EXIT_FAILURE
    if isinstance(error, Failure | ImageReadError | DatasetError | OSError):
        return str(error), EXIT_FAILURE
    if isinstance(error, FloatingPointError):  # training stopped on non-finite losses; says what to do
        return str(error), EXIT_FAILURE
    return (f"unexpected {type(error).__name__}: {error} (this may be a bug: rerun with --debug for the "
            "traceback and report it)"), EXIT_FAILURE


def _interrupted_message(error: KeyboardInterrupt, command: str) -> str:
    from .engine.train import TrainingInterrupted

    if isinstance(error, TrainingInterrupted):
        if command == "demo":
            return f"interrupted at iteration {error.iteration}; the demo starts afresh when run again"
        if error.checkpoint is None:
            return (f"interrupted at iteration {error.iteration} before a checkpoint could be saved; "
                    "rerun the same command with --resume to continue from the last one saved")
        return (f"interrupted at iteration {error.iteration}; checkpoint saved to {error.checkpoint}. "
                "To continue, run the same command with --resume")
    return str(error).strip() or "interrupted"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has printed
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        with sigterm_as_interrupt():
            return args.func(args)
    except SystemExit:
        raise
    except BaseException as error:  # noqa: BLE001 - every error becomes one line (and a status)
        message, code = _describe(error, args.command)
        if args.debug:
            traceback.print_exc()
        command = " ".join(filter(None, (args.command, getattr(args, "dataset_command", None))))
        print(f"maskrcnn {command}: {'' if code >= EXIT_INTERRUPTED else 'error: '}{_one_line(message)}",
              file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
