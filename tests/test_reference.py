"""Equality with the peers: synthetic weights in the peer's file format, ``maskrcnn predict``
on each call's images with the call's batch size, and the fixture's ``compare.py`` must hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from maskrcnn.cli import main
from maskrcnn.engine.reference import write_fixture_weights

FIXTURES = ["torchvision-maskrcnn-r50-fpn", "detectron2-maskrcnn-r50-fpn", "torchvision-keypointrcnn-r50-fpn"]


@pytest.mark.parametrize("fixture", FIXTURES)
def test_predict_matches_peer(fixture: str, reference: Path, tmp_path: Path) -> None:
    fixture_dir = reference / fixture
    suffix = ".pkl" if fixture.startswith("detectron2") else ".pth"
    weights = write_fixture_weights(fixture_dir, tmp_path / f"weights{suffix}")
    expected = json.loads((fixture_dir / "expected.json").read_text())
    merged = []
    for i, call in enumerate(expected["calls"]):
        out = tmp_path / f"call{i}.json"
        images = [str(fixture_dir / "images" / name) for name in call["images"]]
        code = main(["predict", *images, "--weights", str(weights), "--out", str(out),
                     "--batch-size", str(len(images))])
        assert code == 0
        merged += json.loads(out.read_text())
    results = tmp_path / "results.json"
    results.write_text(json.dumps(merged))
    run = subprocess.run(
        [sys.executable, str(reference / "compare.py"), str(fixture_dir / "expected.json"), str(results)],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().splitlines()[-1].startswith("holds")
