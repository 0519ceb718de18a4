"""The HTTP API: answers equal to the predictor's own, thresholds, refused uploads, batching, errors."""

from __future__ import annotations

import concurrent.futures
import io
import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'maskrcnn[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

from maskrcnn.data.images import load_image  # noqa: E402
from maskrcnn.engine.predict import BasePredictor, load  # noqa: E402
from maskrcnn.serve.app import create_app  # noqa: E402
from maskrcnn.serve.batching import keep_above  # noqa: E402

from ..helpers import write_small_checkpoint  # noqa: E402
from .servers import FAKE_DETECTIONS, FakePredictor, live_server, png_bytes, png_header_only  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> BasePredictor:
    """The tiny R50-FPN (128-px input) with seeded weights that detect things everywhere."""
    return load(write_small_checkpoint(tmp_path_factory.mktemp("serve") / "small.safetensors"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 96x128 JPEG stored sideways: its EXIF orientation (6) turns it to 128x96 when read."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[EXIF_ORIENTATION] = 6
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    image.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    return path


@pytest.fixture(scope="module")
def client(predictor: BasePredictor) -> Iterator[TestClient]:
    with TestClient(create_app(predictor, weights_name="small.safetensors", max_batch=4)) as client:
        yield client


def post(client: TestClient, data: bytes, name: str = "photo.jpg", **fields: str) -> Any:
    return client.post("/predict", files={"image": (name, data, "application/octet-stream")}, data=fields)


def test_health_names_the_model(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    health = response.json()
    assert health["model"] == "small.safetensors"
    assert health["classes"] == ["thing0", "thing1", "thing2"]
    assert (health["device"], health["runtime"], health["dtype"]) == ("cpu", "torch", "float32")
    assert health["score_threshold"] == 0.05 and health["max_batch"] == 4


def test_predict_equals_the_predictor_on_the_same_file(client: TestClient, predictor: BasePredictor,
                                                       photo: Path) -> None:
    response = post(client, photo.read_bytes())
    assert response.status_code == 200, response.text
    body = response.json()
    image = load_image(photo)  # EXIF orientation applied: 128 rows, 96 columns
    assert (body["height"], body["width"]) == image.shape[:2] == (128, 96)
    detections = predictor.predict_arrays([image])[0]
    expected = predictor.coco_results(detections, "photo.jpg")
    assert len(expected) > 0
    assert [{k: v for k, v in d.items() if k != "category"} for d in body["detections"]] == expected
    names = ["thing0", "thing1", "thing2"]
    assert [d["category"] for d in body["detections"]] == [names[i] for i in detections.labels.tolist()]
    assert all(d["segmentation"]["size"] == [128, 96] for d in body["detections"])


def test_score_threshold_gives_what_the_model_gives_at_it(client: TestClient, predictor: BasePredictor,
                                                          photo: Path) -> None:
    image = load_image(photo)
    low = predictor.predict_arrays([image], score_threshold=0.05)[0]
    threshold = float(np.median(low.scores.numpy()))  # half the detections go
    high = predictor.predict_arrays([image], score_threshold=threshold)[0]
    assert 0 < len(high) < len(low)
    # What a batch at a lower threshold does for a request with a higher one.
    assert predictor.coco_results(keep_above(low, threshold), "a") == predictor.coco_results(high, "a")
    response = post(client, photo.read_bytes(), score_threshold=repr(threshold))
    assert response.status_code == 200, response.text
    records = [{k: v for k, v in d.items() if k != "category"} for d in response.json()["detections"]]
    assert records == predictor.coco_results(high, "photo.jpg")


@pytest.fixture
def fake() -> FakePredictor:
    return FakePredictor()


@pytest.fixture
def fake_client(fake: FakePredictor) -> Iterator[TestClient]:
    app = create_app(fake, weights_name="fake.pt", max_batch=4, max_upload_bytes=100_000, max_pixels=10_000)
    with TestClient(app) as client:
        yield client


def grey(h: int = 48, w: int = 64) -> bytes:
    return png_bytes(np.full((h, w, 3), 128, dtype=np.uint8))


def test_fake_detections_carry_class_names(fake_client: TestClient) -> None:
    body = post(fake_client, grey(), "a.png", score_threshold="0.3").json()
    assert [(d["category"], d["category_id"], d["score"]) for d in body["detections"]] == [
        ("thing0", 10, pytest.approx(0.9)), ("thing1", 11, pytest.approx(0.7)),
        ("thing0", 10, pytest.approx(0.4))]
    assert body["detections"][0]["bbox"] == [4.0, 4.0, 24.0, 16.0]


def test_bad_uploads_get_one_line_errors_and_the_server_goes_on(fake_client: TestClient) -> None:
    png = grey()
    cases = {
        "not an image": (post(fake_client, b"%PDF-1.4 not an image"), 400, "not an image"),
        "empty": (post(fake_client, b""), 400, "empty"),
        "truncated": (post(fake_client, png[: len(png) // 2]), 400, "truncated"),
        "too big": (post(fake_client, b"\0" * 200_000), 413, "--max-upload-mb"),  # by Content-Length
        "image too big": (post(fake_client, b"\0" * 120_000), 413, "--max-upload-mb"),  # while parsing
        "bomb": (post(fake_client, png_header_only(9000, 9000)), 413, "81,000,000 pixels"),
        "bigger bomb": (post(fake_client, png_header_only(100_000, 100_000)), 413, "decompression-bomb"),
        "too many pixels": (post(fake_client, grey(120, 100)), 413, "12,000 pixels"),
    }
    for what, (response, status, words) in cases.items():
        assert response.status_code == status, what
        error = response.json()["error"]
        assert words in error and "\n" not in error, (what, error)
        assert set(response.json()) == {"error"}
    assert post(fake_client, png).status_code == 200


def test_pils_own_bomb_guard_is_a_4xx(fake: FakePredictor) -> None:
    """With --max-pixels above PIL's guard, PIL's error (over twice MAX_IMAGE_PIXELS) and its warning
    (over MAX_IMAGE_PIXELS) are refusals too, before any pixel is decoded."""
    app = create_app(fake, weights_name="fake.pt", max_pixels=10**12)
    with TestClient(app) as client:
        for side in (100_000, 10_000):  # 10^10 pixels: PIL's error; 10^8: its warning
            response = post(client, png_header_only(side, side))
            assert response.status_code == 413
            assert "decompression-bomb guard" in response.json()["error"]
        assert post(client, grey()).status_code == 200
    assert fake.batch_sizes == [1]


@pytest.mark.parametrize("value", ["abc", "-0.1", "1.5", "nan", "inf"])
def test_a_bad_score_threshold_is_422(fake_client: TestClient, value: str) -> None:
    response = post(fake_client, grey(), score_threshold=value)
    assert response.status_code == 422
    assert response.json()["error"].startswith("score_threshold must be a number in [0, 1]")


def test_requests_without_the_image_field_are_400(fake_client: TestClient) -> None:
    response = fake_client.post("/predict", files={"picture": ("a.png", grey())})
    assert response.status_code == 400 and "'image'" in response.json()["error"]
    response = fake_client.post("/predict", data={"score_threshold": "0.5"})  # not multipart
    assert response.status_code == 400 and "multipart/form-data" in response.json()["error"]
    response = fake_client.post("/predict", content=b"--x\r\nbroken", headers={
        "content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 400 and set(response.json()) == {"error"}
    for response in (fake_client.get("/nowhere"), fake_client.get("/predict")):
        assert response.status_code in (404, 405) and set(response.json()) == {"error"}


def test_the_upload_name_is_a_base_name_and_nothing_is_written(
    fake_client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the server made a temporary file")

    for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr("starlette.formparsers.SpooledTemporaryFile", refuse, raising=False)
    # Over 1 MB: where Starlette's own form parser would spool the upload to disk.
    noise = np.random.default_rng(0).integers(0, 256, (640, 600, 3), dtype=np.uint8)
    big = png_bytes(noise, compress_level=0)
    assert len(big) > 2**20
    app = create_app(FakePredictor(), weights_name="fake.pt", max_pixels=10**6)
    with TestClient(app) as client:
        for sent, echoed in [("../../etc/passwd", "passwd"), ("..\\..\\boot.ini", "boot.ini"),
                             ("/abs/dir/x.png", "x.png"), ("..", "upload")]:
            response = post(client, big if sent == ".." else grey(), sent)
            assert response.status_code == 200, response.text
            assert {d["file_name"] for d in response.json()["detections"]} == {echoed}
    assert list(tmp_path.iterdir()) == []


def test_a_model_failure_is_500_for_its_batch_only(fake: FakePredictor, fake_client: TestClient) -> None:
    fake.fail = True
    response = post(fake_client, grey())
    assert response.status_code == 500
    assert response.json() == {"error": "prediction failed: RuntimeError: the fake model failed"}
    fake.fail = False
    assert post(fake_client, grey()).status_code == 200


def _post_url(url: str, data: bytes, name: str, threshold: str) -> dict[str, Any]:
    """POST a multipart form with urllib (a client of its own, as a browser would be)."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="score_threshold"\r\n\r\n'
               f"{threshold}\r\n".encode())
    body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
               "Content-Type: image/png\r\n\r\n".encode())
    body.write(data + f"\r\n--{boundary}--\r\n".encode())
    request = urllib.request.Request(f"{url}/predict", data=body.getvalue(), method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise AssertionError(error.read().decode()) from error


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer() -> None:
    fake = FakePredictor(delay=0.2)  # the first batch runs while the others arrive
    app = create_app(fake, weights_name="fake.pt", max_batch=4)
    thresholds = ["0.1", "0.5", "0.8", "0.3"] * 2
    sizes = [(40 + i, 50 + 2 * i) for i in range(8)]  # each answer says whose image it was
    with live_server(app) as url:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(_post_url, url, grey(h, w), f"img{i}.png", thresholds[i])
                       for i, (h, w) in enumerate(sizes)]
            answers = [f.result() for f in futures]
        with urllib.request.urlopen(f"{url}/health") as response:
            health = json.loads(response.read())
    assert sum(fake.batch_sizes) == 8 and max(fake.batch_sizes) > 1, fake.batch_sizes
    assert max(fake.batch_sizes) <= 4
    assert (health["requests"], health["batches"]) == (8, len(fake.batch_sizes))
    for i, answer in enumerate(answers):
        assert (answer["height"], answer["width"]) == sizes[i]
        threshold = float(thresholds[i])
        assert [d["score"] for d in answer["detections"]] == pytest.approx(
            [s for _, s, _ in FAKE_DETECTIONS if s > threshold])
        assert {d["file_name"] for d in answer["detections"]} <= {f"img{i}.png"}


def test_requests_beyond_the_queue_get_503() -> None:
    """One request runs (held by a gate), one waits in the queue, the third is turned away at once."""
    gate = threading.Event()
    fake = FakePredictor(gate=gate)
    app = create_app(fake, weights_name="fake.pt", max_batch=1)
    batcher = app.state.batcher
    batcher.max_queued = 1  # one request waits while one runs
    with live_server(app) as url, concurrent.futures.ThreadPoolExecutor(3) as pool:
        try:
            running = pool.submit(_status, url)
            assert fake.started.wait(30), "the first request never reached the model"
            waiting = pool.submit(_status, url)
            deadline = time.monotonic() + 30
            while len(batcher._pending) < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(batcher._pending) == 1, "the second request never reached the queue"
            assert _status(url) == 503
        finally:
            gate.set()
        assert (running.result(), waiting.result()) == (200, 200)


def _status(url: str) -> int:
    try:
        _post_url(url, grey(), "a.png", "0.5")
        return 200
    except AssertionError as error:
        assert "busy" in str(error)
        return 503
