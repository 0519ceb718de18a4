"""``maskrcnn demo`` end to end with a handful of iterations: every promised file appears.

The full demo (``make demo``) is what reaches mask AP >= 0.5; this checks the
plumbing in a fraction of the time.
"""

from __future__ import annotations

import json
from pathlib import Path

from maskrcnn.cli import main


def test_demo_writes_metrics_curve_pictures_and_model(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--iterations", "6"]) == 0
    metrics = json.loads((out / "train" / "final_metrics.json").read_text())
    assert set(metrics["bbox"]) == set(metrics["segm"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert (out / "train" / "loss_curve.png").stat().st_size > 0
    assert (out / "train" / "model_final.pth").is_file()
    assert len(list((out / "pictures").glob("*.png"))) == 8
    assert (out / "data" / "train.json").is_file() and (out / "data" / "val.json").is_file()
