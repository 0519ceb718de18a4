"""Large images: a mosaic of demo images scores as its images do when tiled, and memory stays bounded.

The demo model (v0.1's trained checkpoint, 128-pixel input) resizes a
512-pixel mosaic of sixteen demo images down to 128 pixels, where its
objects vanish; tiles run it at the mosaic's own scale.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn.data.images import load_image
from maskrcnn.data.synthetic import make_demo_dataset
from maskrcnn.engine.evaluate import evaluate
from maskrcnn.engine.predict import load
from maskrcnn.engine.tiles import TiledPredictor
from tests.test_checkpoint_versions import FIXTURES

DEMO = FIXTURES / "demo-v0.1.safetensors"


def _mosaic(val_json: Path, val_dir: Path, grid: int, out: Path) -> Path:
    """The first ``grid * grid`` images side by side, and their annotations moved with them."""
    data = json.loads(val_json.read_text())
    images = sorted(data["images"], key=lambda im: im["id"])[: grid * grid]
    h, w = images[0]["height"], images[0]["width"]
    canvas = np.zeros((grid * h, grid * w, 3), np.uint8)
    annotations = []
    for k, image in enumerate(images):
        r, c = divmod(k, grid)
        canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = load_image(val_dir / image["file_name"])
        for a in (a for a in data["annotations"] if a["image_id"] == image["id"]):
            seg = a["segmentation"]
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            else:
                rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
            big = np.zeros((grid * h, grid * w), np.uint8)
            big[r * h : (r + 1) * h, c * w : (c + 1) * w] = mask_utils.decode(rle)
            moved = mask_utils.encode(np.asfortranarray(big))
            moved["counts"] = moved["counts"].decode("ascii")
            annotations.append({**a, "id": len(annotations) + 1, "image_id": 1, "segmentation": moved,
                                "bbox": [a["bbox"][0] + c * w, a["bbox"][1] + r * h, *a["bbox"][2:]]})
    Image.fromarray(canvas).save(out / "mosaic.png")
    (out / "mosaic.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "mosaic.png", "height": grid * h, "width": grid * w}],
        "annotations": annotations, "categories": data["categories"]}))
    return out / "mosaic.json"


def test_a_tiled_mosaic_scores_near_its_images_one_by_one(tmp_path: Path) -> None:
    _, _, val_json, val_dir = make_demo_dataset(tmp_path / "data", train_images=1, val_images=16, seed=3)
    mosaic = _mosaic(val_json, val_dir, 4, tmp_path)
    predictor = load(DEMO)
    one_by_one, _ = evaluate(predictor, val_json, val_dir, progress=False)
    untiled, _ = evaluate(predictor, mosaic, tmp_path, progress=False)
    tiled, _ = evaluate(TiledPredictor(predictor, size=128, overlap=64, batch=8), mosaic, tmp_path,
                        progress=False)
    reference = one_by_one["segm"]["AP"]
    assert reference > 0.2, one_by_one
    assert untiled["segm"]["AP"] < 0.05 * reference, untiled  # shrunk to 128 pixels: nothing found
    # Measured 0.235 against 0.267 (0.88x) with this 300-iteration model; objects cut by a seam or
    # seen next to other images' backgrounds are found less well than alone.
    assert tiled["segm"]["AP"] >= 0.8 * reference, (tiled["segm"], reference)


@pytest.mark.slow
def test_a_3840_pixel_image_with_thousands_of_objects_stays_under_3_gib(tmp_path: Path) -> None:
    """900 demo images (about 2,300 objects) in one 3840x3840 image, tiled: peak memory of the
    command, detections written."""
    _, _, val_json, val_dir = make_demo_dataset(tmp_path / "data", train_images=1, val_images=900, seed=1)
    objects = len(json.loads(val_json.read_text())["annotations"])
    names = sorted(im["file_name"] for im in json.loads(val_json.read_text())["images"])
    rows = [np.concatenate([load_image(val_dir / n) for n in names[r * 30 : (r + 1) * 30]], axis=1)
            for r in range(30)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(tmp_path / "big.png")
    script = (
        "import resource, sys; from maskrcnn.cli import main; code = main(sys.argv[1:]); "
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, "predict", str(tmp_path / "big.png"), "--weights", str(DEMO),
         "--tile", "512", "--tile-overlap", "32", "--batch-size", "2", "--out", str(tmp_path / "r.json")],
        capture_output=True, text=True, check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    peak_mib = int(run.stdout.split("PEAK")[-1]) / 1024  # ru_maxrss is in KiB on Linux
    detections = json.loads((tmp_path / "r.json").read_text())
    assert objects > 2000 and len(detections) > 1000, (objects, len(detections))
    assert peak_mib < 3 * 1024, peak_mib
