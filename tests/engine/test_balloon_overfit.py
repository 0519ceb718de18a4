"""Overfitting real photos: train on 4 balloon images, evaluate on the same 4 (slow; CI runs it).

A detector that cannot memorise four images has a broken loss, target or
sampling somewhere; this catches what the unit tests cannot, on real data
with polygon masks. From scratch (no pretrained weights can be downloaded),
with the small demo preset at 256-384 pixels.

The training set is read in the balloon set's original form, a VGG Image
Annotator 1.x region file (``via_region_data.json``: regions keyed "0",
"1"..., whole-pixel polygons, no class attribute), made here from the COCO
file the way VIA stores it; the evaluation scores against the COCO file.
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


def via_region_file(coco_path: Path, image_dir: Path, out: Path) -> Path:
    """A COCO polygon file as VIA 1.x writes its region export: whole pixels, regions keyed by position."""
    data = json.loads(coco_path.read_text())
    regions: dict[int, dict[str, dict]] = {im["id"]: {} for im in data["images"]}
    for a in data["annotations"]:
        for part in a["segmentation"]:
            shape = {"name": "polygon", "all_points_x": [round(v) for v in part[0::2]],
                     "all_points_y": [round(v) for v in part[1::2]]}
            image_regions = regions[a["image_id"]]
            image_regions[str(len(image_regions))] = {"shape_attributes": shape, "region_attributes": {}}
    via = {}
    for im in data["images"]:
        size = (image_dir / im["file_name"]).stat().st_size
        via[f"{im['file_name']}{size}"] = {"fileref": "", "size": size, "filename": im["file_name"],
                                          "base64_img_data": "", "file_attributes": {},
                                          "regions": regions[im["id"]]}
    out.write_text(json.dumps(via))
    return out


@pytest.mark.slow
def test_overfits_four_balloon_photos_read_from_their_via_form(tmp_path: Path) -> None:
    if not (BALLOON / "train.json").is_file():
        pytest.skip(f"balloon data not found at {BALLOON}")
    subset = _subset(BALLOON / "train.json", tmp_path / "four.json", NUM_IMAGES)
    via = via_region_file(subset, BALLOON / "train", tmp_path / "via_region_data.json")
    out = tmp_path / "run"
    code = main([
        "train", "--train", str(via), "--train-images", str(BALLOON / "train"),
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
