"""``POST /predict`` answers what torchvision computes: the peer's fixture checked with ``compare.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'maskrcnn[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

from maskrcnn.engine.predict import load  # noqa: E402
from maskrcnn.serve.app import create_app  # noqa: E402

from ..helpers import run_compare  # noqa: E402
from ..peers import shared_dir, write_fixture_weights  # noqa: E402

FIXTURE = shared_dir() / "reference" / "torchvision-maskrcnn-r50-fpn"


@pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"no reference fixture at {FIXTURE}")
def test_the_servers_answers_match_torchvision(tmp_path: Path) -> None:
    """Each image uploaded on its own (the fixture's batch of two included: the peers pad a batch to its
    largest image, and compare.py's tolerance is the one every equality check here uses)."""
    weights = write_fixture_weights(FIXTURE, tmp_path / "weights.pth")
    app = create_app(load(weights), weights_name=weights.name, max_batch=1)
    expected = json.loads((FIXTURE / "expected.json").read_text())
    records = []
    with TestClient(app) as client:
        for call in expected["calls"]:
            for name in call["images"]:
                with (FIXTURE / "images" / name).open("rb") as handle:
                    answer = client.post("/predict", files={"image": (name, handle, "image/png")})
                assert answer.status_code == 200, answer.text
                body = answer.json()
                for detection in body["detections"]:
                    assert detection.pop("category")
                    assert detection["file_name"] == name
                records += body["detections"]
    results = tmp_path / "results.json"
    results.write_text(json.dumps(records))
    holds, text = run_compare(shared_dir() / "reference" / "compare.py", FIXTURE / "expected.json", results)
    assert holds, text
