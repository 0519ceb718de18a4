"""Every preset builds, computes its losses and predicts on a small image; parameter counts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from maskrcnn.cli import parameter_count
from maskrcnn.config import PRESETS, torchvision_r50_fpn
from maskrcnn.model import build_model
from maskrcnn.structures import ImageBatch, Targets

pytestmark = pytest.mark.usefixtures("one_thread")


def test_r50_fpn_has_torchvisions_parameters_less_the_background_rows() -> None:
    # torchvision's maskrcnn_resnet50_fpn (91 classes) has 44,401,393 parameters; it keeps
    # box-regression (4 x 1024 + 4) and mask-logit (256 + 1) outputs for the background,
    # which no loss ever trains and which we do not store.
    cfg = PRESETS["r50-fpn"].model.replace(num_classes=90)
    assert parameter_count(cfg) == 44_401_393 - (4 * 1024 + 4) - (256 + 1)
    assert parameter_count(torchvision_r50_fpn()) == parameter_count(cfg)
    assert f"{parameter_count(cfg) / 1e6:.1f}M" == "44.4M"


# What each preset must hold, written out so that a preset that loses a branch fails.
BRANCHES = {name: {"mask"} for name in PRESETS} | {"r50-fpn-keypoints": {"keypoint"}}
LOSSES = {"mask": {"loss_mask"}, "keypoint": {"loss_keypoint"}}


def test_every_preset_has_its_branches() -> None:
    assert set(BRANCHES) == set(PRESETS)
    for name, preset in PRESETS.items():
        model = build_model(preset.model.replace(num_classes=3, class_names=(), category_ids=()))
        assert {b for b in ("mask", "keypoint") if getattr(model, b) is not None} == BRANCHES[name], name


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_trains_and_predicts_on_a_small_image(name: str) -> None:
    preset = PRESETS[name]
    small = dataclasses.replace(preset.model.input, min_size=64, max_size=96, train_min_sizes=(64,))
    cfg = preset.model.replace(num_classes=3, class_names=(), category_ids=(), input=small)
    torch.manual_seed(0)
    model = build_model(cfg)
    image = torch.randn(1, 3, 64, 96)
    batch = ImageBatch(image, [(64, 96)], [(64, 96)])
    masks = torch.zeros(1, 64, 96, dtype=torch.uint8)
    masks[0, 10:40, 20:70] = 1
    target = Targets(torch.tensor([[20.0, 10.0, 70.0, 40.0]]), torch.tensor([1]), masks)
    losses = model.loss(batch, [target])
    expected = {"loss_rpn_objectness", "loss_rpn_box", "loss_classifier", "loss_box"}
    expected |= set().union(*(LOSSES[b] for b in BRANCHES[name]))
    assert set(losses) == expected  # exactly its branches: none lost, none extra
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    (det,) = model.predict(batch)
    assert det.boxes.shape[0] == det.scores.shape[0] == det.labels.shape[0]
    if "mask" in BRANCHES[name]:
        assert det.masks is not None and det.masks.shape == (len(det), 64, 96)
        assert det.masks.dense().dtype == torch.bool
    else:
        assert det.masks is None
    if "keypoint" in BRANCHES[name]:
        assert cfg.keypoint_head is not None and det.keypoints is not None
        assert det.keypoints.shape == (len(det), cfg.keypoint_head.num_keypoints, 3)
    else:
        assert det.keypoints is None


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_and_prints(name: str) -> None:
    with torch.device("meta"):
        model = build_model(PRESETS[name].model)
    text = repr(model)
    assert text.startswith("MaskRCNN(")
    assert "FrozenBatchNorm2d(" in text or "GroupNorm(" in text
