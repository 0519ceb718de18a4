"""``maskrcnn predict``: results format, batching order, bad inputs reported and skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskrcnn.cli import main

from .helpers import write_small_checkpoint


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_checkpoint(tmp_path_factory.mktemp("w") / "small.safetensors")


def _photo(path: Path, size: tuple[int, int] = (96, 64), seed: int = 0, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def test_results_are_coco_format_in_input_pixels(weights: Path, tmp_path: Path) -> None:
    image = _photo(tmp_path / "a.png", (96, 64))
    out = tmp_path / "r.json"
    assert main(["predict", str(image), "--weights", str(weights), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results, "the small model is built to detect something"
    for r in results:
        assert set(r) == {"file_name", "category_id", "bbox", "score", "segmentation"}
        assert r["file_name"] == str(image)
        assert r["category_id"] in (10, 11, 12)
        x, y, w, h = r["bbox"]
        assert 0 <= x <= x + w <= 96 + 1e-3 and 0 <= y <= y + h <= 64 + 1e-3
        assert r["segmentation"]["size"] == [64, 96]
        assert isinstance(r["segmentation"]["counts"], str)
    assert all(a["score"] >= b["score"] for a, b in zip(results, results[1:], strict=False))


def test_directory_sorted_and_bad_images_skipped(weights: Path, tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    d.mkdir()
    _photo(d / "b.png", seed=1)
    _photo(d / "a.jpg", seed=2)
    (d / "c.jpg").write_bytes(b"")  # zero bytes
    (d / "d.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")  # corrupt
    Image.new("RGB", (1, 1), (200, 10, 10)).save(d / "e.png")  # 1x1 is valid
    _photo(d / "f.png", mode="RGBA", seed=3)
    Image.fromarray(np.arange(64 * 96, dtype=np.uint16).reshape(64, 96) * 10).save(d / "g.png")  # 16-bit
    out = tmp_path / "r.json"
    viz = tmp_path / "viz"
    code = main(["predict", str(d), "--weights", str(weights), "--out", str(out), "--viz", str(viz),
                 "--batch-size", "2"])
    assert code == 1  # two unreadable images
    names = {r["file_name"] for r in json.loads(out.read_text())}
    assert names <= {"a.jpg", "b.png", "e.png", "f.png", "g.png"}
    assert {p.name for p in viz.iterdir()} == {"a.png", "b.png", "e.png", "f.png", "g.png"}


def test_exif_rotated_jpeg_gives_masks_of_rotated_size(weights: Path, tmp_path: Path) -> None:
    path = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    _photo(tmp_path / "src.png", (96, 64))
    Image.open(tmp_path / "src.png").save(path, exif=exif)
    out = tmp_path / "r.json"
    assert main(["predict", str(path), "--weights", str(weights), "--out", str(out)]) == 0
    for r in json.loads(out.read_text()):
        assert r["segmentation"]["size"] == [96, 64]


def test_batching_does_not_reorder(weights: Path, tmp_path: Path) -> None:
    images = [str(_photo(tmp_path / f"{n}.png", seed=i)) for i, n in enumerate(["z", "m", "a"])]
    out1, out3 = tmp_path / "1.json", tmp_path / "3.json"
    assert main(["predict", *images, "--weights", str(weights), "--out", str(out1)]) == 0
    assert main(["predict", *images, "--weights", str(weights), "--out", str(out3), "--batch-size", "3"]) == 0
    order = [r["file_name"] for r in json.loads(out3.read_text())]
    assert sorted(set(order), key=order.index) == [i for i in images if i in order]
    # Same images of the same size: padding is identical, so batching changes only the
    # order of float sums; detections may swap places where scores nearly tie, nothing more.
    a, b = json.loads(out1.read_text()), json.loads(out3.read_text())
    assert len(a) == len(b)
    unmatched = [
        r for r in a
        if not any(q["file_name"] == r["file_name"] and q["category_id"] == r["category_id"]
                   and max(abs(x - y) for x, y in zip(q["bbox"], r["bbox"], strict=True)) < 1e-2
                   and abs(q["score"] - r["score"]) < 1e-4 for q in b)
    ]
    assert len(unmatched) <= 0.01 * len(a), unmatched[:3]


def test_bad_checkpoint_and_missing_image_are_clear_errors(weights: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(weights.read_bytes()[: 5000])
    image = _photo(tmp_path / "a.png")
    run = subprocess.run([sys.executable, "-m", "maskrcnn.cli", "predict", str(image), "--weights",
                          str(truncated), "--out", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert run.returncode != 0 and str(truncated) in run.stderr
    run = subprocess.run([sys.executable, "-m", "maskrcnn.cli", "predict", str(tmp_path / "nope.jpg"),
                          "--weights", str(weights)], capture_output=True, text=True)
    assert run.returncode != 0 and "nope.jpg" in run.stderr


def test_score_threshold_keeps_only_higher_scores(weights: Path, tmp_path: Path) -> None:
    image = _photo(tmp_path / "a.png")
    out_all, out_hi = tmp_path / "all.json", tmp_path / "hi.json"
    main(["predict", str(image), "--weights", str(weights), "--out", str(out_all)])
    main(["predict", str(image), "--weights", str(weights), "--out", str(out_hi), "--score-threshold", "0.3"])
    everything = json.loads(out_all.read_text())
    high = json.loads(out_hi.read_text())
    assert all(r["score"] > 0.3 for r in high)
    assert len(high) == sum(r["score"] > 0.3 for r in everything)
