"""Checkpoints written by earlier versions of this project keep loading and give the same results.

The files in ``tests/fixtures/v0.1`` were written by maskrcnn v0.1 (commit
3eb57e6, checkpoint format version 1), with the scripts beside them, and hold
what v0.1 predicted or measured with them:

- three small models with seeded weights, one per container and kind: an FPN
  Keypoint R-CNN (``.pth`` with training state), an FPN Mask R-CNN with the
  softmax mask representation (``.pth``), a C4 Mask R-CNN (``.safetensors``);
  v0.1's detections on one photo are in ``expected.json``;
- the demo model trained 300 iterations on the synthetic shapes (weights
  stored in float16 to halve the file), with its COCO AP on the 100 held-out
  images of the demo dataset (seed 0) in ``demo-v0.1.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import maskrcnn
from maskrcnn.checkpoint import FORMAT_VERSION
from maskrcnn.convert import CheckpointError, load_checkpoint
from maskrcnn.data.images import load_image
from maskrcnn.data.synthetic import make_demo_dataset
from maskrcnn.engine.evaluate import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURES = Path(__file__).parent / "fixtures" / "v0.1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
IMAGE = Path(__file__).parent / "reference" / "images" / EXPECTED["image"]


def test_this_version_writes_a_newer_format() -> None:
    assert FORMAT_VERSION == 2


@pytest.mark.parametrize("name", sorted(EXPECTED["files"]))
def test_v01_checkpoint_predicts_as_v01_did(name: str) -> None:
    expected = EXPECTED["files"][name]
    det = maskrcnn.load(FIXTURES / name)(load_image(IMAGE))
    assert det.labels.tolist() == expected["labels"]
    torch.testing.assert_close(det.scores, torch.tensor(expected["scores"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(det.boxes, torch.tensor(expected["boxes"]), atol=1e-3, rtol=0)
    if "mask_pixels" in expected:
        assert det.masks is not None
        assert det.masks.areas().tolist() == expected["mask_pixels"]
    else:
        assert det.masks is None
    if "keypoints" in expected:
        assert det.keypoints is not None
        torch.testing.assert_close(det.keypoints, torch.tensor(expected["keypoints"]), atol=1e-3, rtol=0)
    else:
        assert det.keypoints is None


def test_v01_configs_are_upgraded_field_by_field() -> None:
    cfg, state = load_checkpoint(FIXTURES / "softmax-fpn-v0.1.pth")
    assert cfg.mask_head is not None
    assert cfg.mask_head.representation == "softmax"  # v0.1's mask_head.loss
    assert cfg.mask_head.target_rule == "detectron2"  # the rule v0.1 trained every model with
    assert cfg.rpn.sampler.fg_iou_thresh == 0.7 and cfg.rpn.sampler.allow_low_quality_matches
    assert cfg.box_head.sampler.batch_size_per_image == 512
    assert not cfg.box_head.sampler.allow_low_quality_matches
    assert "mask.head.predictor.weight" in state and not any(k.startswith("mask_head.") for k in state)
    kp_cfg, kp_state = load_checkpoint(FIXTURES / "keypoints-fpn-v0.1.pth")
    assert kp_cfg.keypoint_head is not None and kp_cfg.mask_head is None
    assert "keypoint.head.predictor.weight" in kp_state


def test_a_checkpoint_from_a_future_version_is_refused(tmp_path: Path) -> None:
    payload = torch.load(FIXTURES / "softmax-fpn-v0.1.pth", weights_only=True)
    payload["version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "future.pth")
    with pytest.raises(CheckpointError, match=f"version {FORMAT_VERSION + 1} is newer than this code.s"):
        load_checkpoint(tmp_path / "future.pth")


def test_v01_demo_checkpoint_gives_the_same_coco_ap(tmp_path: Path) -> None:
    record = json.loads((FIXTURES / "demo-v0.1.json").read_text())
    _, _, val_json, val_dir = make_demo_dataset(
        tmp_path, train_images=1, val_images=record["val_images"], seed=record["seed"]
    )
    predictor = maskrcnn.load(FIXTURES / "demo-v0.1.safetensors")
    metrics, _ = evaluate(predictor, val_json, val_dir, batch_size=4, progress=False)
    # Within 0.3 AP points (AP on the 0-1 scale).
    assert metrics["bbox"]["AP"] == pytest.approx(record["bbox_AP"], abs=0.003)
    assert metrics["segm"]["AP"] == pytest.approx(record["segm_AP"], abs=0.003)
    assert np.isfinite(metrics["segm"]["AP"]) and metrics["segm"]["AP"] > 0.05  # a trained model
