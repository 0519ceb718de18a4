"""Equality with the peers: synthetic weights in the peer's file format, ``maskrcnn predict``
on each call's images with the call's batch size, and the fixture's ``compare.py`` must hold.

The shared fixtures (``../shared/reference``) hold a square image and a batch of two
landscape ones. The project's own (``tests/reference``, made with the same tools and
the peers' own code) add what those miss: torchvision's P6 anchor stride (a padded
side that is an odd multiple of 32), a portrait image batched with landscape and
square ones, a grayscale image whose long side caps the resize, and large images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest

from tests.helpers import predict_fixture_and_compare, run_compare

SHARED_FIXTURES = [
    "torchvision-maskrcnn-r50-fpn", "detectron2-maskrcnn-r50-fpn", "torchvision-keypointrcnn-r50-fpn",
]
OWN = Path(__file__).resolve().parent / "reference"
OWN_FIXTURES = ["torchvision-maskrcnn-r50-fpn-sizes", "torchvision-keypointrcnn-r50-fpn-sizes"]


@pytest.mark.parametrize("fixture", SHARED_FIXTURES + OWN_FIXTURES)
def test_predict_matches_peer(fixture: str, reference: Path, tmp_path: Path) -> None:
    fixture_dir = (OWN if fixture in OWN_FIXTURES else reference) / fixture
    images = OWN / "images" if fixture in OWN_FIXTURES else None  # the project's fixtures share one folder
    out = predict_fixture_and_compare(fixture_dir, reference / "compare.py", tmp_path, images=images)
    print(f"{fixture}:\n{out}")


def test_two_empty_masks_agree_in_the_comparison(reference: Path, tmp_path: Path) -> None:
    """compare.py as shipped fails a peer against its own output when a mask is empty; ours does not.

    An output compared with itself must hold; and a changed score must still fail.
    """
    empty = mask_util.encode(np.zeros((4, 6, 1), np.uint8, order="F"))[0]
    full = mask_util.encode(np.ones((4, 6, 1), np.uint8, order="F"))[0]
    dets = [{"box": [0.0, 0.0, 3.0, 2.0], "score": 0.9, "label": 1,
             "mask_rle": {"size": empty["size"], "counts": empty["counts"].decode()}},
            {"box": [1.0, 1.0, 5.0, 4.0], "score": 0.8, "label": 2,
             "mask_rle": {"size": full["size"], "counts": full["counts"].decode()}}]
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps({"calls": [{"images": ["a.png"], "outputs": [
        {"image": "a.png", "height": 4, "width": 6, "detections": dets}]}]}))

    def results(score_shift: float) -> Path:
        path = tmp_path / f"results{score_shift}.json"
        path.write_text(json.dumps([
            {"file_name": "a.png", "category_id": d["label"], "score": d["score"] + score_shift,
             "bbox": [d["box"][0], d["box"][1], d["box"][2] - d["box"][0], d["box"][3] - d["box"][1]],
             "segmentation": d["mask_rle"]} for d in dets]))
        return path

    assert run_compare(reference / "compare.py", expected, results(0.0))[0]
    assert not run_compare(reference / "compare.py", expected, results(0.01))[0]
