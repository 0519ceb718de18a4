"""``maskrcnn demo``: prediction with synthetic weights on the reference sample images.

Until training lands (issue 3), the demo shows the inference path end to
end: it writes torchvision-format synthetic weights as ``../shared/reference``
defines them, imports them through the checkpoint converter, segments the
sample photos and writes ``results.json`` and one picture per image. The
weights are random, so the detections mean nothing; the pictures show what
``predict --viz`` draws.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..cli import main as cli_main
from .reference import reference_dir, write_fixture_weights

FIXTURE = "torchvision-maskrcnn-r50-fpn"


def demo(out: Path) -> int:
    fixture = reference_dir() / FIXTURE
    if not fixture.is_dir():
        print(f"error: the demo needs the reference fixtures at {fixture.parent} "
              "(set MASKRCNN_SHARED to the folder that holds reference/)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    weights = write_fixture_weights(fixture, out / "synthetic_torchvision_r50_fpn.pth")
    print(f"wrote synthetic torchvision weights to {weights}", file=sys.stderr)
    return cli_main([
        "predict", str(fixture / "images"), "--weights", str(weights),
        "--out", str(out / "results.json"), "--viz", str(out / "pictures"), "--score-threshold", "0.5",
    ])
