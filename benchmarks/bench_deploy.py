"""CPU inference time of our Mask R-CNN in PyTorch, ONNX Runtime and OpenVINO, against torchvision's.

Usage::

    .venv/bin/python benchmarks/bench_deploy.py [--runs 5] [--warmup 2] [--threads 2]
        [--image PATH] [--size 800x1066] [--json OUT] [--onnx FILE [--reuse-onnx]]
        [--peer-python .peer-venv/bin/python]

One image (as in ``bench_predict.py``: the first balloon val image, else a
synthetic picture, resized to ``--size``, H x W), R50-FPN with the synthetic
torchvision-format weights of the ``torchvision-maskrcnn-r50-fpn`` reference
fixture, batch 1, ``--threads`` threads everywhere, ``--warmup`` untimed runs
then the median of ``--runs`` timed runs (wall clock, ``time.perf_counter``).
Each path is timed end to end, ``predict_arrays([image])`` (pixels in,
``Detections`` with full-image masks out):

- ``PyTorch``: ours, ``maskrcnn.engine.predict.load(weights)``, ``torch.set_num_threads``;
- ``export``: ``export_onnx`` once (its time and the file size), as ``maskrcnn export`` does;
- ``ONNX Runtime``: ``load_onnx(file, runtime="onnxruntime", threads=T)``;
- ``OpenVINO f32`` and ``OpenVINO bf16`` (the latter only when the CPU plugin
  lists ``BF16`` among its ``OPTIMIZATION_CAPABILITIES``);
- ``torchvision``: ``maskrcnn_resnet50_fpn`` with the same weights, timed in a
  subprocess of the peer environment (``peer_torchvision.py``; ``make peer-venv``),
  skipped with a note when that environment is missing.

Agreement with ours in PyTorch, as ``<shared>/reference/compare.py`` matches:
each PyTorch detection (by descending score) takes the unmatched detection of
the same class with the highest box IoU, if that IoU is >= 0.98; the matched
fraction is min(matched / PyTorch's count, matched / the path's count); then
the largest score difference and the mean mask IoU over the matched pairs.
torchvision's labels (its 91-class ids) are compared with our labels mapped
to category ids (``config.category_id``); its subprocess prints no masks, so
its mask IoU is n/a.

Prints versions, CPU model and the command line, then a markdown table;
``--json OUT`` also writes the raw numbers. Exits 1 when a float32 path's
matched fraction is below 0.97 (bf16's agreement is reported, not required).
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout: benchmarks/ and tests/ are not installed
from benchmarks.bench_predict import (  # noqa: E402
    DEFAULT_PEER_PYTHON,
    FIXTURE,
    cpu_model,
    make_input,
    parse_size,
    time_peer,
    warn,
)
from maskrcnn.engine.predict import BasePredictor, load  # noqa: E402
from tests.peers import reference_dir, write_fixture_weights  # noqa: E402

MIN_MATCHED = 0.97
MIN_BOX_IOU = 0.98


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def agreement(ref: dict, pred: dict) -> dict:
    """Greedy matching of ``pred`` to ``ref`` (see the module docstring); dicts of numpy arrays.

    Each holds ``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)`` (category ids)
    and ``masks (D, H, W)`` bool or None.
    """
    n_ref, n_pred = len(ref["scores"]), len(pred["scores"])
    if n_ref == 0 and n_pred == 0:
        return {"matched": 0, "fraction": 1.0, "score_diff": 0.0, "mask_iou": 1.0}
    iou = box_iou(ref["boxes"], pred["boxes"]) if n_ref and n_pred else np.zeros((n_ref, n_pred))
    iou = np.where(ref["labels"][:, None] == pred["labels"][None, :], iou, 0.0)
    used: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for i in np.argsort(-ref["scores"], kind="stable"):
        for j in np.argsort(-iou[i], kind="stable"):
            if iou[i, j] < MIN_BOX_IOU:
                break
            if int(j) not in used:
                used.add(int(j))
                pairs.append((int(i), int(j)))
                break
    fraction = min(len(pairs) / max(n_ref, 1), len(pairs) / max(n_pred, 1))
    score_diff = max((abs(float(ref["scores"][i]) - float(pred["scores"][j])) for i, j in pairs), default=0.0)
    mask_iou: float | None = None
    if ref["masks"] is not None and pred["masks"] is not None:
        ious = []
        for i, j in pairs:
            a, b = ref["masks"][i], pred["masks"][j]
            union = np.logical_or(a, b).sum()
            ious.append(float(np.logical_and(a, b).sum() / union) if union else 1.0)
        mask_iou = float(np.mean(ious)) if ious else None
    return {"matched": len(pairs), "fraction": fraction, "score_diff": score_diff, "mask_iou": mask_iou}


def as_arrays(predictor: BasePredictor, detections) -> dict:
    """``Detections`` -> numpy arrays, labels as the config's category ids (torchvision's ids here)."""
    return {
        "boxes": detections.boxes.numpy().astype(np.float64).reshape(-1, 4),
        "scores": detections.scores.numpy().astype(np.float64),
        "labels": np.array(predictor.category_ids(detections), dtype=np.int64),
        "masks": None if detections.masks is None else detections.masks.dense().numpy(),
    }


def time_predictor(predictor: BasePredictor, image: np.ndarray, runs: int, warmup: int) -> dict:
    """Median wall time of ``predict_arrays([image])``; the detections of the last run."""
    times: list[float] = []
    detections = None
    with torch.no_grad():
        for i in range(warmup + runs):
            start = time.perf_counter()
            detections = predictor.predict_arrays([image])[0]
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times.append(elapsed)
    assert detections is not None
    return {"median": statistics.median(times), "times": times,
            "detections": as_arrays(predictor, detections)}


def run_path(
    name: str, make: Callable[[], BasePredictor], image: np.ndarray, args: argparse.Namespace
) -> dict:
    print(f"{name}: loading ...", file=sys.stderr)
    start = time.perf_counter()
    predictor = make()
    load_s = time.perf_counter() - start
    print(f"{name}: timing ({args.warmup} warmup + {args.runs} runs) ...", file=sys.stderr)
    result = time_predictor(predictor, image, args.runs, args.warmup)
    del predictor
    gc.collect()  # one model in memory at a time
    return {"load_s": load_s, **result}


def export(weights: Path, out: Path) -> float:
    """``export_onnx`` as ``maskrcnn export`` calls it; returns its wall time (model building excluded)."""
    from maskrcnn.convert import load_checkpoint
    from maskrcnn.export.onnx_file import export_onnx
    from maskrcnn.model import build_model

    config, state = load_checkpoint(weights)
    model = build_model(config)
    model.load_state_dict(state, strict=True)
    start = time.perf_counter()
    export_onnx(model, config, out, source=weights.name)
    elapsed = time.perf_counter() - start
    del model
    gc.collect()
    return elapsed


def openvino_bf16() -> tuple[bool, str]:
    import openvino as ov

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in capabilities, ", ".join(capabilities)


def versions() -> dict[str, str]:
    found = {"torch": torch.__version__}
    for module in ("onnxruntime", "openvino", "onnx"):
        try:
            found[module] = __import__(module).__version__
        except ImportError:
            found[module] = "not installed"
    return found


def peer_arrays(peer: dict) -> dict:
    return {
        "boxes": np.array(peer["boxes"], dtype=np.float64).reshape(-1, 4),
        "scores": np.array(peer["scores"], dtype=np.float64),
        "labels": np.array(peer["labels"], dtype=np.int64),
        "masks": None,
    }


def table(rows: list[dict], peer_ms: float | None) -> str:
    lines = [
        "| path | median ms | x torchvision | detections | matched | max score diff | mean mask IoU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ms = row.get("ms")
        cells = [row["path"]]
        cells.append("–" if ms is None else f"{ms:,.0f}")
        cells.append(f"{ms / peer_ms:.2f}" if ms is not None and peer_ms and row.get("ratio", True) else "–")
        cells.append(str(row["detections"]) if "detections" in row else "–")
        agree = row.get("agreement")
        if agree is None:
            cells += ["–", "–", "–"]
        else:
            cells.append(f"{agree['fraction']:.3f} ({agree['matched']})")
            cells.append(f"{agree['score_diff']:.1e}")
            cells.append("n/a" if agree["mask_iou"] is None else f"{agree['mask_iou']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per path (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every runtime (default 2)")
    parser.add_argument("--image", type=Path, help="source image (default: first balloon val image)")
    parser.add_argument("--size", type=parse_size, default=(800, 1066), help="HxW to resize to (800x1066)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--onnx", type=Path,
                        help="write the exported model here and keep it (default: a temporary file)")
    parser.add_argument("--reuse-onnx", action="store_true",
                        help="with --onnx: use that file if it exists instead of exporting (no export row); "
                             "only for the same weights and code")
    parser.add_argument("--peer-python", type=Path, default=DEFAULT_PEER_PYTHON,
                        help="python of the peer environment (default .peer-venv/bin/python)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if args.reuse_onnx and args.onnx is None:
        parser.error("--reuse-onnx needs --onnx FILE")

    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["bench_deploy", *argv])
    torch.set_num_threads(args.threads)
    found_versions = versions()
    bf16, capabilities = openvino_bf16()
    rows: list[dict] = []
    record: dict = {"command": command, "cpu": cpu_model(), "threads": args.threads, "runs": args.runs,
                    "warmup": args.warmup, "versions": found_versions,
                    "openvino_cpu_capabilities": capabilities, "paths": {}}
    notes: list[str] = []
    peer = None

    with tempfile.TemporaryDirectory(prefix="bench_deploy_") as tmp:
        tmp_dir = Path(tmp)
        image_path, origin = make_input(args.image, args.size, tmp_dir / "input.png")
        pixels = np.asarray(Image.open(image_path).convert("RGB"))
        weights = write_fixture_weights(reference_dir() / FIXTURE, tmp_dir / "maskrcnn_r50_fpn.pth")
        onnx_path = args.onnx if args.onnx is not None else tmp_dir / "maskrcnn_r50_fpn.onnx"
        record["image"] = origin
        record["image_size"] = list(pixels.shape[:2])
        print(f"input: {origin} -> {pixels.shape[0]}x{pixels.shape[1]}", file=sys.stderr)

        ours = run_path("PyTorch", lambda: load(weights), pixels, args)
        reference = ours["detections"]
        record["paths"]["pytorch"] = ours
        rows.append({"path": "ours, PyTorch", "ms": 1000 * ours["median"],
                     "detections": len(reference["scores"]), "agreement": agreement(reference, reference)})

        if args.reuse_onnx and onnx_path.is_file():
            notes.append(f"export: reused {onnx_path} (not exported in this run)")
            size_mib = onnx_path.stat().st_size / 2**20
            rows.append({"path": f"export to ONNX: reused file, {size_mib:.1f} MiB", "ms": None})
        else:
            print("exporting to ONNX (about a minute) ...", file=sys.stderr)
            onnx_path.parent.mkdir(parents=True, exist_ok=True)
            export_s = export(weights, onnx_path)
            size_mib = onnx_path.stat().st_size / 2**20
            record["export"] = {"seconds": export_s, "size_mib": size_mib}
            rows.append({"path": f"export to ONNX (once; file {size_mib:.1f} MiB)", "ms": 1000 * export_s,
                         "ratio": False})

        from maskrcnn.export.runtime import load_onnx

        deployed = [
            ("ours, ONNX Runtime", "onnxruntime", "f32"),
            ("ours, OpenVINO f32", "openvino", "f32"),
            ("ours, OpenVINO bf16", "openvino", "bf16"),
        ]
        for name, runtime, precision in deployed:
            key = f"{runtime}_{precision}" if runtime == "openvino" else runtime
            if precision == "bf16" and not bf16:
                rows.append({"path": f"{name}: not supported by this CPU (no BF16 in OpenVINO's "
                                     "capabilities)", "ms": None})
                record["paths"][key] = None
                continue
            result = run_path(
                name,
                lambda runtime=runtime, precision=precision: load_onnx(
                    onnx_path, runtime=runtime, threads=args.threads, precision=precision),
                pixels, args)
            record["paths"][key] = result
            rows.append({"path": name, "ms": 1000 * result["median"],
                         "detections": len(result["detections"]["scores"]),
                         "agreement": agreement(reference, result["detections"])})

        if not args.peer_python.exists():
            notes.append(f"torchvision: skipped, {args.peer_python} not found "
                         "(create it with `make peer-venv`)")
            rows.append({"path": "torchvision, PyTorch: skipped (no peer environment)", "ms": None})
        else:
            print("torchvision (peer subprocess): timing ...", file=sys.stderr)
            try:
                peer = time_peer(args.peer_python, weights, image_path, args.runs, args.warmup, args.threads)
            except SystemExit as e:  # time_peer exits with a message on failure
                notes.append(f"torchvision: failed: {e.code}")
                rows.append({"path": "torchvision, PyTorch: failed (see notes)", "ms": None})
            else:
                peer_dets = peer_arrays(peer)
                record["paths"]["torchvision"] = {k: v for k, v in peer.items()
                                                  if k not in ("boxes", "scores", "labels")}
                rows.append({"path": "torchvision, PyTorch", "ms": 1000 * peer["total"],
                             "detections": peer["detections"], "agreement": agreement(reference, peer_dets)})
                notes.append("torchvision's mask IoU: n/a, peer_torchvision.py prints no masks")

    peer_ms = 1000 * peer["total"] if peer is not None else None
    h, w = pixels.shape[:2]
    version_line = ", ".join(f"{k} {v}" for k, v in found_versions.items())
    if peer is not None:
        version_line += f"; peer: torch {peer['torch']}, torchvision {peer['torchvision']}"
    print(f"command: {command}")
    print(f"CPU: {record['cpu']}; OpenVINO CPU capabilities: {capabilities}")
    print(f"versions: {version_line}")
    print(f"R50-FPN ({FIXTURE} synthetic weights), image {h}x{w} (HxW) from {origin}, batch 1, "
          f"{args.threads} threads, median of {args.runs} runs after {args.warmup} warmup, "
          "predict_arrays end to end")
    print()
    print(table(rows, peer_ms))
    print()
    loads = [f"{name} {record['paths'][key]['load_s']:.1f} s" for name, key in
             (("PyTorch", "pytorch"), ("ONNX Runtime", "onnxruntime"), ("OpenVINO f32", "openvino_f32"),
              ("OpenVINO bf16", "openvino_bf16")) if record["paths"].get(key)]
    print(f"load (not timed above): {', '.join(loads)}")
    print(f"matched: fraction of detections paired with ours in PyTorch (same class, box IoU >= "
          f"{MIN_BOX_IOU}), min over both sides; the pair count in brackets")
    for note in notes:
        print(f"note: {note}")

    # bf16 is a speed option with bfloat16's 8-bit mantissa: reported, not held to float32's agreement.
    failures = [row["path"] for row in rows if "bf16" not in row["path"]
                and row.get("agreement") is not None and row["agreement"]["fraction"] < MIN_MATCHED]
    if args.json is not None:
        for result in record["paths"].values():
            if result and "detections" in result and isinstance(result["detections"], dict):
                dets = result["detections"]
                result["detections"] = {"count": len(dets["scores"]), "scores": dets["scores"].tolist(),
                                        "labels": dets["labels"].tolist(), "boxes": dets["boxes"].tolist()}
        record["table"] = [{k: v for k, v in row.items() if k != "ratio"} for row in rows]
        record["disagreeing"] = failures
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    if failures:
        warn(f"detections disagree with ours in PyTorch (matched fraction < {MIN_MATCHED}): "
             f"{', '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
