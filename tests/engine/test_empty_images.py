"""Training and evaluation on datasets where most images have no instance (negatives everywhere).

Images without instances come in several kinds: unannotated, crowd-only,
left without instances because all their annotations were invalid, and a
file without ``annotations`` at all. Each must train (as an all-background
image) and evaluate. The runs use the demo preset on synthetic 64 x 64
images with small RPN and RoI batches, on one thread.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from maskrcnn.config import PRESETS, ModelConfig, SolverConfig
from maskrcnn.data import coco
from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.synthetic import generate
from maskrcnn.engine.train import Trainer, ValidationSet

from ..helpers import tiny_demo_config

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # pycocotools' compiled decode trips a numpy 2 deprecation in evaluation.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]


def _model_cfg(dataset: CocoDataset) -> ModelConfig:
    return tiny_demo_config(dataset, pre_nms_topk_test=200, post_nms_topk_test=50)


def _solver(iterations: int) -> SolverConfig:
    return dataclasses.replace(
        PRESETS["demo-r18-fpn"].solver, iterations=iterations, batch_size=2, warmup_iters=2, steps=(),
        checkpoint_period=0, log_period=1, num_workers=0, eval_period=0, amp=False,
    )


def _train(
    dataset: CocoDataset, json_path: Path, image_dir: Path, out: Path, iterations: int, progress: bool = False
) -> dict[str, Any]:
    trainer = Trainer(model_cfg=_model_cfg(dataset), solver=_solver(iterations), dataset=dataset, out_dir=out,
                      validation=ValidationSet(json_path, image_dir), progress=progress)
    metrics = trainer.train()
    assert metrics is not None and trainer.iteration == iterations
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    losses = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in losses] == list(range(1, iterations + 1))
    for record in losses:
        assert all(math.isfinite(v) for k, v in record.items() if k.startswith("loss_") or k == "total_loss")
    assert (out / "model_final.pth").is_file() and (out / "final_metrics.json").is_file()
    return metrics


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("shapes")
    json_path = generate(root, num_images=12, image_size=(64, 64), seed=3)
    return json.loads(json_path.read_text()), root / "train"


def test_training_on_mostly_empty_images_finishes_and_evaluates(
    shapes: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    data, image_dir = shapes
    data = json.loads(json.dumps(data))
    annotated = {1, 2, 3}  # 3 of 12 images keep their instances
    crowd_only, all_invalid = 4, 5
    anns = []
    for ann in data["annotations"]:
        if ann["image_id"] in annotated:
            anns.append(ann)
        elif ann["image_id"] == crowd_only:
            anns.append({**ann, "iscrowd": 1})
        elif ann["image_id"] == all_invalid:  # a truncated compressed RLE: skipped at load time
            anns.append({**ann, "segmentation": {"size": [64, 64], "counts": "0`"}})
    data["annotations"] = anns
    json_path = tmp_path / "mostly_empty.json"
    json_path.write_text(json.dumps(data))
    dataset = CocoDataset(json_path, image_dir)
    assert len(dataset) == 12
    bad = sum(a["image_id"] == all_invalid for a in anns)
    assert bad > 0 and dataset.report.counts == {coco.BAD_SEGMENTATION: bad}
    empty = sum(len(dataset[i].annotations) == 0 for i in range(len(dataset)))
    assert empty == 9

    # The validation reads the same file: the bad annotations are left out of the ground truth too.
    with pytest.warns(UserWarning, match=f"{bad} ground-truth annotations left out"):
        metrics = _train(dataset, json_path, image_dir, tmp_path / "run", iterations=8)

    assert metrics["images"] == 12 and metrics["images_failed"] == []
    for kind in ("bbox", "segm"):
        assert metrics[kind]["AP"] is not None and 0.0 <= metrics[kind]["AP"] <= 1.0


def test_training_on_a_file_without_annotations(shapes: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    data, image_dir = shapes
    data = {"images": data["images"][:4], "categories": data["categories"]}
    json_path = tmp_path / "no_annotations.json"
    json_path.write_text(json.dumps(data))
    dataset = CocoDataset(json_path, image_dir)
    assert len(dataset) == 4 and dataset.report.num_instances == 0

    # With progress shown, the validation line prints undefined APs too.
    metrics = _train(dataset, json_path, image_dir, tmp_path / "run", iterations=2, progress=True)

    # Nothing to find: AP is undefined, and every image was evaluated.
    assert metrics["images"] == 4
    assert all(v is None for kind in ("bbox", "segm") for v in metrics[kind].values())
