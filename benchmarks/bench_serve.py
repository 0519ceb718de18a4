"""Load test of ``maskrcnn serve``: throughput, latency and batch sizes under concurrent clients.

Usage::

    .venv/bin/python benchmarks/bench_serve.py [--weights FILE | --paper-size] [--requests N]
        [--clients 1 4 16] [--max-batch N] [--threads T] [--size HxW]

The server runs in its own process, started as ``maskrcnn serve --port 0``
(the command's own code, through a small launcher while the command line does
not list ``serve``), with ``--weights``, else a checkpoint written to a
temporary folder with seeded random weights that detect things everywhere:
the paper's R50-FPN on images resized to 128 px by default (a forward pass
takes one to three seconds on 2 CPU cores: the random weights make the 100
detections the box branch allows, and the RoI heads' work grows with them,
not with the image), or at the paper's 800 px with ``--paper-size``.

For each number of clients, that many threads send ``--requests`` requests in
all (each the same synthetic ``--size`` PNG, as multipart uploads with
urllib), each thread one request at a time. Per request: the latency, wall
clock from sending to the whole answer read. The server's ``/health``
counters before and after give the forward passes run, hence the mean batch
size. A markdown table goes to stdout; the run fails unless every request got
a 200 with its detections and the server counted every one of them.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, for tests/helpers.py
from maskrcnn.checkpoint import save_model  # noqa: E402
from maskrcnn.config import ModelConfig  # noqa: E402
from tests.helpers import random_state, small_config  # noqa: E402

# ``maskrcnn serve`` as cli.py runs it, for a command line that does not list serve yet.
LAUNCHER = """
import argparse, sys
from maskrcnn.serve.command import add_serve_parser
parser = argparse.ArgumentParser(prog="maskrcnn")
commands = parser.add_subparsers(dest="command", required=True)
add_serve_parser(commands, argparse.ArgumentParser(add_help=False))
args = parser.parse_args(sys.argv[1:])
try:
    sys.exit(args.func(args))
except KeyboardInterrupt:
    sys.exit(130)
"""
STARTUP_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 300
WARMUP_REQUESTS = 2


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected HxW, got {text!r}") from err
    return h, w


def write_checkpoint(folder: Path, *, paper_size: bool) -> Path:
    """Seeded random weights (a few confident detections per image) for the tiny or the paper's input."""
    config = small_config()
    if paper_size:
        config = ModelConfig(num_classes=config.num_classes, class_names=config.class_names,
                             category_ids=config.category_ids)  # the paper's 800-px input
    path = folder / ("r50-fpn-800.safetensors" if paper_size else "r50-fpn-128.safetensors")
    save_model(path, config, random_state(config))
    return path


def synthetic_png(size: tuple[int, int]) -> bytes:
    h, w = size
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(90, 160, (h, w, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w * 3 // 4)), int(rng.integers(0, h * 3 // 4))
        box = (x0, y0, x0 + int(rng.integers(w // 8, w // 3)), y0 + int(rng.integers(h // 8, h // 3)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def serve_command(weights: Path, args: argparse.Namespace) -> list[str]:
    flags = ["--weights", str(weights), "--port", "0", "--max-batch", str(args.max_batch)]
    from maskrcnn.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    if "serve" in commands.choices:
        return [sys.executable, "-m", "maskrcnn", "serve", *flags]
    return [sys.executable, "-c", LAUNCHER, "serve", *flags]


def start_server(command: list[str], threads: int | None) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    lines: list[str] = []
    found: list[str] = []

    def read() -> None:  # the start line gives the URL; the rest of stderr is kept for errors
        for line in process.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if not found and (match := re.search(r"at (http://\S+/) ", line)):
                found.append(match.group(1).rstrip("/"))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not found:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit("the server did not start:\n" + "".join(lines))
        time.sleep(0.05)
    return process, found[0]


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
        return json.loads(response.read())


def multipart(png: bytes, name: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def predict(url: str, body: bytes, content_type: str) -> tuple[float, bool]:
    """One request: its latency in seconds, and whether it came back 200 with detections."""
    request = urllib.request.Request(f"{url}/predict", data=body, method="POST",
                                     headers={"Content-Type": content_type})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            answer = json.loads(response.read())
        ok = response.status == 200 and isinstance(answer.get("detections"), list)
    except Exception as error:  # noqa: BLE001 - a failed request is counted, and said
        print(f"request failed: {error}", file=sys.stderr)
        ok = False
    return time.perf_counter() - start, ok


def run_load(url: str, body: bytes, content_type: str, *, clients: int, requests: int) -> dict[str, Any]:
    before = health(url)
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    remaining = [requests]

    def client() -> None:
        nonlocal failures
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            latency, ok = predict(url, body, content_type)
            with lock:
                latencies.append(latency)
                failures += not ok

    start = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    after = health(url)
    served, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    return {
        "clients": clients, "requests": len(latencies), "failed": failures, "served": served,
        "throughput": len(latencies) / elapsed,
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p95_ms": 1000 * float(np.percentile(latencies, 95)),
        "mean_batch": served / batches if batches else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="checkpoint to serve (default: a synthetic one)")
    parser.add_argument("--paper-size", action="store_true",
                        help="the synthetic checkpoint at the paper's 800-px input (default: 128 px)")
    parser.add_argument("--requests", type=int, default=16,
                        help="requests per number of clients (default 16: about 30 s a row on 2 CPU cores)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients")
    parser.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch")
    parser.add_argument("--threads", type=int, default=None, help="the server's intra-op threads")
    parser.add_argument("--size", type=parse_size, default=(480, 640), metavar="HxW", help="the image's size")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        weights = args.weights or write_checkpoint(Path(folder), paper_size=args.paper_size)
        command = serve_command(weights, args)
        shown = ["<launcher of maskrcnn serve>" if part == LAUNCHER else part for part in command]
        print(f"$ {' '.join(shown)}", file=sys.stderr)
        process, url = start_server(command, args.threads)
        try:
            body, content_type = multipart(synthetic_png(args.size), "bench.png")
            for _ in range(WARMUP_REQUESTS):
                predict(url, body, content_type)
            rows = [run_load(url, body, content_type, clients=clients, requests=args.requests)
                    for clients in args.clients]
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()

    print(f"`maskrcnn serve` on {weights.name}, --max-batch {args.max_batch}, image {args.size[0]}x"
          f"{args.size[1]} PNG; torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs\n")
    print("| clients | requests | failed | throughput (req/s) | p50 (ms) | p95 (ms) | mean batch |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['failed']} | {r['throughput']:.2f} "
              f"| {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['mean_batch']:.2f} |")
    lost = [r for r in rows if r["failed"] or r["requests"] != args.requests or r["served"] != args.requests]
    if lost:
        print(f"FAILED: requests lost or failed: {lost}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
