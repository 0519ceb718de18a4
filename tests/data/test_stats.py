"""``maskrcnn dataset stats``: counts per class, instance sizes against the anchors, problems."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskrcnn.cli import main
from maskrcnn.config import AnchorConfig, InputConfig, ModelConfig
from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.stats import dataset_stats
from tests.helpers import error_line

SIDE = 400
# Box sides (pixels at scale 1) and the size bin each falls in for anchors 32, 64, 128:
# below 16, nearest 32, 64, 128, above 256.
SIDES_AND_BINS = [(10, 0), (30, 1), (50, 2), (120, 3), (300, 4)]


def _write(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    anns, next_id = [], 1
    entries = []
    rng = np.random.default_rng(0)
    for image_id in range(1, 6):
        Image.new("RGB", (SIDE, SIDE)).save(images / f"{image_id}.png")
        entries.append({"id": image_id, "file_name": f"{image_id}.png", "height": SIDE, "width": SIDE})
        for side, _ in SIDES_AND_BINS[: image_id]:  # image k holds the first k sizes
            category = int(rng.integers(1, 4))
            anns.append({"id": next_id, "image_id": image_id, "category_id": category,
                         "bbox": [5, 5, side, side], "area": side * side, "iscrowd": 0})
            next_id += 1
    anns.append({"id": next_id, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 0], "iscrowd": 0})  # bad
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"images": entries, "annotations": anns,
                                "categories": [{"id": c, "name": f"kind{c}"} for c in (1, 2, 3, 4)]}))
    return path, images


def test_counts_and_size_bins(tmp_path: Path) -> None:
    path, images = _write(tmp_path)
    dataset = CocoDataset(path, images)
    model = ModelConfig(num_classes=4, input=InputConfig(min_size=SIDE, max_size=SIDE),
                        anchors=AnchorConfig(sizes=(32.0, 64.0, 128.0)))
    stats = dataset_stats(dataset, model)
    data = json.loads(path.read_text())
    good = [a for a in data["annotations"] if a["bbox"][2] > 0]
    for label, category in enumerate((1, 2, 3, 4)):
        mine = [a for a in good if a["category_id"] == category]
        assert stats.instances_per_class[label] == len(mine)
        assert stats.images_per_class[label] == len({a["image_id"] for a in mine})
    expected_bins = [0] * 5
    for image_id in range(1, 6):
        for _, size_bin in SIDES_AND_BINS[:image_id]:
            expected_bins[size_bin] += 1
    assert stats.size_bins == expected_bins
    assert stats.report.total == 1  # the empty box, counted and skipped


def test_sizes_are_measured_after_the_models_resize(tmp_path: Path) -> None:
    path, images = _write(tmp_path)
    half = ModelConfig(num_classes=4, input=InputConfig(min_size=SIDE // 2, max_size=SIDE // 2),
                       anchors=AnchorConfig(sizes=(32.0, 64.0, 128.0)))
    stats = dataset_stats(CocoDataset(path, images), half)
    # The images resize to half their side, and so do the boxes.
    sides = [s / 2 for s, _ in SIDES_AND_BINS]
    anchors = np.log2([32.0, 64.0, 128.0])
    expected = [0] * 5
    for k, side in enumerate(sides):
        size = np.log2(side)
        nearest = int(np.abs(size - anchors).argmin()) + 1
        expected[0 if size < anchors[0] - 1 else 4 if size > anchors[-1] + 1 else nearest] += 5 - k
        # (size k is in images k + 1 .. 5)
    assert stats.size_bins == expected


def test_command_prints_classes_and_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, images = _write(tmp_path)
    assert main(["dataset", "stats", str(path), "--images", str(images)]) == 0
    out = capsys.readouterr().out
    assert "kind4" in out and "(no instance)" in out
    assert "problems skipped" in out
    broken = tmp_path / "broken.json"
    broken.write_text("[1, 2")
    assert main(["dataset", "stats", str(broken), "--images", str(images)]) == 1
    error_line(capsys.readouterr().err, str(broken))
