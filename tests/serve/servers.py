"""Test support for the server: a fake predictor with known detections, a live server in a thread."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI
from PIL import Image

from maskrcnn.engine.predict import BasePredictor
from maskrcnn.serve.command import listen
from maskrcnn.structures import Detections, MaskCrops

from ..helpers import small_config

# The fake's detections, in the pixels of a FAKE_SIZE image: (class index, score, XYXY box);
# each mask fills its box. Class names are small_config's thing0, thing1, thing2.
FAKE_SIZE = (48, 64)  # (H, W)
FAKE_DETECTIONS = [
    (0, 0.9, (4, 4, 28, 20)),
    (1, 0.7, (34, 8, 60, 40)),
    (0, 0.4, (8, 26, 30, 44)),
    (2, 0.2, (44, 42, 62, 47)),
]


class FakePredictor(BasePredictor):
    """``FAKE_DETECTIONS`` for every image (boxes cut to its size), kept above the threshold as the
    model keeps them; records each batch's size. ``delay`` seconds per batch; ``fail`` raises."""

    def __init__(self, *, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        super().__init__(small_config())
        self.delay = delay
        self.gate = gate  # when given, each batch waits until it is set
        self.started = threading.Event()  # set when a batch starts running
        self.fail = False
        self.batch_sizes: list[int] = []
        self.device = torch.device("cpu")

    def run(self, images: Sequence[np.ndarray], score_threshold: float | None,
            timings: dict[str, float] | None) -> list[Detections]:
        self.batch_sizes.append(len(images))
        self.started.set()
        if self.gate is not None:
            self.gate.wait(30)
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("the fake model failed")
        threshold = self.config.box_head.score_thresh if score_threshold is None else score_threshold
        return [fake_detections(image.shape[:2], threshold, list(self.class_names)) for image in images]


def fake_detections(size: tuple[int, int], threshold: float, class_names: list[str]) -> Detections:
    h, w = size
    rows = [d for d in FAKE_DETECTIONS if d[1] > threshold]
    boxes = torch.tensor([box for _, _, box in rows], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    masks = torch.zeros((len(rows), h, w), dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        masks[i, y0:y1, x0:x1] = True
    return Detections(boxes, torch.tensor([s for _, s, _ in rows]), torch.tensor([c for c, _, _ in rows]),
                      masks=MaskCrops.from_dense(masks), class_names=class_names)


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on a free port; yields its base URL (``http://127.0.0.1:N``)."""
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def png_bytes(image: np.ndarray | Image.Image, **save: Any) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, "PNG", **save)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and header declaring ``width x height`` 1-bit grey, with a few bytes of
    pixel data: what a decompression bomb's header looks like (decoding would need the pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))
