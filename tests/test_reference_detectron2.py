"""Every Mask R-CNN of Detectron2's model zoo computes Detectron2's function once imported.

The fixtures under ``tests/reference/detectron2-maskrcnn-*`` were made with
Detectron2's own code (``../shared/reference/tools/make_d2_reference.py``, its
model-zoo configs, synthetic weights): R50-C4, R50-DC5, R101-FPN and
X101-32x8d-FPN, on images the shared R50-FPN fixture does not use, all in
``tests/reference/images``: a portrait photo (``rocket_portrait``, skimage's
rocket turned upright), a small square image upscaled (``color``, 371x370),
a landscape one (``motorcycle_left``), a large one downscaled (``retina``,
1411x1411), and batches mixing portrait, landscape and square images. C4 and
DC5 have their class logits scaled by 6 (``"scale"`` in ``expected.json``) so
that synthetic scores pass 0.05.

Random weights make flat regions of an image and the zero padding of a
batch give anchors and RoIs exactly (or within 1e-6) the same scores; which
of them NMS keeps then depends on tie order and last-bit rounding, which no
second implementation reproduces. Seeds and calls were picked so that no
proposal depends on the order of exact ties
(``tests/reference/tools/check_d2_ties.py``), and X101-FPN, whose large
receptive fields make near-ties common, runs on single photos
(its ``color`` call matched 94% and a portrait-landscape batch 93%, with
every matched score within 2e-6).

Each test writes the fixture's weights as a model-zoo ``.pkl``, lets
``maskrcnn predict`` detect the architecture from the tensors, and requires
``compare.py`` to hold. Full-size models at 800 px on the CPU: a minute or
more each.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import predict_fixture_and_compare

HERE = Path(__file__).resolve().parent / "reference"
FIXTURES = sorted(p.name for p in HERE.glob("detectron2-maskrcnn-*") if (p / "expected.json").is_file())


def test_fixtures_are_present() -> None:
    assert {"detectron2-maskrcnn-r50-c4", "detectron2-maskrcnn-r50-dc5", "detectron2-maskrcnn-r101-fpn",
            "detectron2-maskrcnn-x101-32x8d-fpn"} <= set(FIXTURES)


@pytest.mark.slow
@pytest.mark.parametrize("fixture", FIXTURES)
def test_zoo_checkpoint_matches_detectron2(fixture: str, reference: Path, tmp_path: Path) -> None:
    images = HERE / "images"
    out = predict_fixture_and_compare(HERE / fixture, reference / "compare.py", tmp_path, images=images)
    print(f"{fixture}:\n{out}")
