"""The HTTP application: a predictor behind ``GET /``, ``GET /health`` and ``POST /predict``.

``POST /predict`` takes the image as the multipart field ``image`` (any
format ``maskrcnn predict`` reads) and an optional field ``score_threshold``
in [0, 1] (default: the predictor's), and answers::

    {"width": W, "height": H, "detections": [
        {"file_name": "photo.jpg", "category_id": 18, "category": "dog",
         "bbox": [x, y, w, h], "score": 0.93,
         "segmentation": {"size": [H, W], "counts": "..."},   # COCO compressed RLE
         "keypoints": [x1, y1, s1, ...]},                      # when the model has them
        ...]}

each detection the COCO result record ``maskrcnn predict`` writes for the same
file, plus its class name, in the uploaded image's pixels. ``file_name`` is
the upload's base name, echoed and never used as a path: nothing is written.

Every error is ``{"error": "one line"}``: 400 for a bad upload (not an image,
empty, malformed form, missing field), 413 over ``max_upload_bytes`` or
``max_pixels``, 422 for a bad ``score_threshold``, 503 when too many requests
wait, 500 when the model fails (for that batch's requests only; the server
goes on serving).

Work off the event loop: the model runs in the batcher's thread
(:mod:`.batching`), decoding uploads and encoding masks as RLE in one more
thread, so the loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import importlib.resources
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from .batching import MicroBatcher
from .limits import DEFAULT_MAX_BATCH, DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB
from .uploads import IMAGE_FIELD, UploadError, decode_image, read_form

DEFAULT_MAX_UPLOAD_BYTES = int(DEFAULT_MAX_UPLOAD_MB * 2**20)
# Requests that may wait for the model, in batches: beyond that a request gets 503 at once
# rather than holding its decoded image in memory for minutes.
QUEUED_BATCHES = 16
THRESHOLD_FIELD = "score_threshold"

logger = logging.getLogger(__name__)


def create_app(
    predictor: Any,
    *,
    weights_name: str,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FastAPI:
    """The application serving ``predictor``.

    ``predictor`` is a ``maskrcnn.engine.predict.BasePredictor`` or any object
    with its ``predict_arrays(images, score_threshold=)``, ``coco_results(detections,
    file_name)``, ``config`` (``class_names``, ``box_head.score_thresh``) and
    ``score_threshold`` (None: the config's); ``device`` and ``runtime`` are
    reported when it has them. ``weights_name`` is what ``/health`` calls the model.
    The batcher and worker threads live in the app's lifespan: run it under
    uvicorn, or a ``TestClient`` used as a context manager.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    default_threshold = _default_threshold(predictor)
    page = (importlib.resources.files(__package__) / "static" / "index.html").read_text(encoding="utf-8")

    def run(images: list[np.ndarray], threshold: float) -> Any:
        return predictor.predict_arrays(images, score_threshold=threshold)

    batcher = MicroBatcher(run, max_batch=max_batch, max_queued=QUEUED_BATCHES * max_batch,
                           mixed_thresholds=getattr(predictor, "filters_by_threshold_exactly", True))
    # Decoding uploads and encoding results: one thread (decode_image swaps warning filters,
    # which is safe from one thread only; one image decoded at a time bounds its memory).
    workers: dict[str, concurrent.futures.ThreadPoolExecutor] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        workers["io"] = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="maskrcnn-io")
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            workers.pop("io").shutdown(wait=True)

    app = FastAPI(title="Mask R-CNN", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
        return error_response(422, "; ".join(problems) or "invalid request")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": weights_name,
            "classes": list(predictor.config.class_names),
            "device": str(getattr(predictor, "device", "cpu")),
            "runtime": getattr(predictor, "runtime", "torch"),
            # The network's number type (exported models compute in float32).
            "dtype": str(getattr(predictor, "dtype", "float32")).removeprefix("torch."),
            "score_threshold": default_threshold,
            "max_batch": max_batch,
            "max_upload_mb": max_upload_bytes / 2**20,
            "max_pixels": max_pixels,
            "requests": batcher.requests,
            "batches": batcher.batches,
        }

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        loop = asyncio.get_running_loop()
        try:
            form = await read_form(request.headers.get("content-type"), request.headers.get("content-length"),
                                   request.stream(), max_image_bytes=max_upload_bytes)
            if form.image is None:
                raise UploadError(400, f"no image: send it as the multipart form field {IMAGE_FIELD!r} "
                                       f"(e.g. curl -F {IMAGE_FIELD}=@photo.jpg URL/predict)")
            threshold = parse_threshold(form.fields.get(THRESHOLD_FIELD), default_threshold)
            image = await loop.run_in_executor(
                workers["io"], functools.partial(decode_image, form.image, max_pixels=max_pixels))
        except UploadError as exc:
            return error_response(exc.status, exc.message)
        try:
            detections = await batcher.submit(image, threshold)
        except asyncio.QueueFull:
            return error_response(503, f"busy: {batcher.max_queued} requests are waiting for the model; "
                                       "retry later")
        except Exception as exc:
            logger.exception("prediction failed")
            return error_response(500, f"prediction failed: {type(exc).__name__}: {exc}")
        file_name = form.file_name or "upload"
        try:
            records = await loop.run_in_executor(workers["io"], _records, predictor, detections, file_name)
        except Exception as exc:
            logger.exception("encoding the results failed")
            return error_response(500, f"encoding the results failed: {type(exc).__name__}: {exc}")
        height, width = image.shape[:2]
        return JSONResponse({"width": width, "height": height, "detections": records})

    return app


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": message}`` with ``status``; the message joined onto one line."""
    line = "; ".join(part.strip() for part in str(message).splitlines() if part.strip())
    return JSONResponse({"error": line}, status_code=status, headers=headers)


def parse_threshold(text: str | None, default: float) -> float:
    """A request's ``score_threshold`` field as a number in [0, 1] (absent or blank: ``default``); 422."""
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:  # also refuses NaN and infinities
        raise UploadError(422, f"{THRESHOLD_FIELD} must be a number in [0, 1], got {text.strip()[:40]!r}")
    return value


def _default_threshold(predictor: Any) -> float:
    """The threshold of a request that gives none: the predictor's, else its model's own."""
    threshold = getattr(predictor, "score_threshold", None)
    if threshold is None:
        threshold = predictor.config.box_head.score_thresh
    return float(threshold)


def _records(predictor: Any, detections: Any, file_name: str) -> list[dict[str, Any]]:
    """The COCO result records of one image's detections, each with its class name."""
    records = predictor.coco_results(detections, file_name)
    return [{**record, "category": name} for record, name in zip(records, detections.names, strict=True)]
