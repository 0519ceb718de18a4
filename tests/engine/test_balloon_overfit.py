"""Overfitting real photos: train on 4 balloon images, evaluate on the same 4 (slow; CI runs it).

A detector that cannot memorise four images has a broken loss, target or
sampling somewhere; this catches what the unit tests cannot, on real data
with polygon masks. From scratch (no pretrained weights can be downloaded),
with the small demo preset at 256-384 pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maskrcnn.cli import main
from tests.peers import shared_dir

BALLOON = shared_dir() / "data" / "balloon"
NUM_IMAGES = 4


def _subset(src: Path, dst: Path, count: int) -> Path:
    data = json.loads(src.read_text())
    images = sorted(data["images"], key=lambda im: im["id"])[:count]
    ids = {im["id"] for im in images}
    data["images"] = images
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    dst.write_text(json.dumps(data))
    return dst


@pytest.mark.slow
def test_overfits_four_balloon_photos(tmp_path: Path) -> None:
    if not (BALLOON / "train.json").is_file():
        pytest.skip(f"balloon data not found at {BALLOON}")
    subset = _subset(BALLOON / "train.json", tmp_path / "four.json", NUM_IMAGES)
    out = tmp_path / "run"
    code = main([
        "train", "--train-json", str(subset), "--train-images", str(BALLOON / "train"),
        "--out", str(out), "--preset", "demo-r18-fpn", "--iterations", "400", "--batch-size", "4",
        "--min-size", "256", "--max-size", "384",
        "--set", "solver.num_workers=0", "solver.checkpoint_period=0", "solver.base_lr=0.08",
    ])
    assert code == 0
    metrics_path = tmp_path / "metrics.json"
    code = main(["evaluate", "--json", str(subset), "--images", str(BALLOON / "train"),
                 "--weights", str(out / "model_final.pth"), "--out", str(metrics_path)])
    assert code == 0
    metrics = json.loads(metrics_path.read_text())
    assert metrics["segm"]["AP"] >= 0.5, metrics
