"""Peer checkpoints -> (config, our state dict): names, shapes, class slots, detection, errors.

Full-size synthetic checkpoints are built from the peers' key lists in
``../shared/reference/*/spec.json`` (random values, fixed seed) and written
in each peer's own file format, so the whole path from file to validated
state dict runs as it does on a downloaded checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from maskrcnn.checkpoint import save_model
from maskrcnn.config import (
    BackboneConfig,
    KeypointHeadConfig,
    ModelConfig,
    detectron2_r50_fpn,
    torchvision_keypoint_r50_fpn,
    torchvision_r50_fpn,
)
from maskrcnn.convert import (
    CheckpointError,
    compare_state,
    detect_format,
    detectron2,
    expected_state_shapes,
    infer_config,
    load_checkpoint,
    torchvision,
)
from maskrcnn.model import build_model
from tests.peers import save_detectron2_pickle, save_torchvision_state

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
TV = "torchvision-maskrcnn-r50-fpn"
TV_KEYPOINT = "torchvision-keypointrcnn-r50-fpn"
D2 = "detectron2-maskrcnn-r50-fpn"

Spec = list[tuple[str, tuple[int, ...], str]]


def _spec(name: str) -> Spec:
    path = REFERENCE / name / "spec.json"
    if not path.is_file():
        pytest.skip(f"peer reference {path} is absent (the shared/reference folder beside the repository)")
    return [(n, tuple(shape), dtype) for n, shape, dtype in json.loads(path.read_text())]


def _synthetic(spec: Spec, seed: int) -> dict[str, Tensor]:
    """Random float32 tensors (zeros for integer counters) of the spec's names and shapes."""
    g = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(shape, generator=g) if dtype == "float32" else torch.zeros(shape, dtype=torch.int64)
        for name, shape, dtype in spec
    }


def _fake(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Tensors of the right shapes using no memory (for config inference, which reads shapes only)."""
    return {name: torch.zeros(()).expand(shape) for name, shape in shapes.items()}


def _assert_fits(cfg: ModelConfig, state: Mapping[str, Tensor]) -> None:
    expected = expected_state_shapes(cfg)
    assert set(state) == set(expected)
    for name, shape in expected.items():
        assert tuple(state[name].shape) == shape, name
        assert state[name].dtype == torch.float32, name


# ---------------------------------------------------------------------------
# Fixtures: one full-size checkpoint per peer, written once per module.


@pytest.fixture(scope="module")
def tv_state() -> dict[str, Tensor]:
    return _synthetic(_spec(TV), seed=0)


@pytest.fixture(scope="module")
def tv_file(tv_state: dict[str, Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tv") / "maskrcnn_resnet50_fpn_coco.pth"
    save_torchvision_state(path, tv_state)
    return path


@pytest.fixture(scope="module")
def tv_loaded(tv_file: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    return load_checkpoint(tv_file)


@pytest.fixture(scope="module")
def d2_arrays() -> dict[str, np.ndarray]:
    return {name: t.numpy() for name, t in _synthetic(_spec(D2), seed=1).items()}


@pytest.fixture(scope="module")
def d2_file(d2_arrays: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("d2") / "model_final_f10217.pkl"
    save_detectron2_pickle(path, d2_arrays)
    return path


@pytest.fixture(scope="module")
def d2_loaded(d2_file: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    return load_checkpoint(d2_file)


# ---------------------------------------------------------------------------
# The shape contract (no files).


def test_expected_shapes_r50_by_hand() -> None:
    s = expected_state_shapes(torchvision_r50_fpn())
    assert s["backbone.body.conv1.weight"] == (64, 3, 7, 7)
    assert s["backbone.body.bn1.running_var"] == (64,)
    assert s["backbone.body.layer1.0.conv1.weight"] == (64, 64, 1, 1)
    assert s["backbone.body.layer1.0.conv3.weight"] == (256, 64, 1, 1)
    assert s["backbone.body.layer1.1.conv1.weight"] == (64, 256, 1, 1)
    assert s["backbone.body.layer2.0.downsample.0.weight"] == (512, 256, 1, 1)
    assert s["backbone.body.layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert "backbone.body.layer3.5.conv1.weight" in s and "backbone.body.layer3.6.conv1.weight" not in s
    assert "backbone.body.layer1.1.downsample.0.weight" not in s
    assert s["backbone.fpn.lateral.3.weight"] == (256, 2048, 1, 1)
    assert s["backbone.fpn.output.0.weight"] == (256, 256, 3, 3)
    assert s["rpn.head.objectness.weight"] == (3, 256, 1, 1)
    assert s["rpn.head.deltas.bias"] == (12,)
    assert s["box.head.fc1.weight"] == (1024, 256 * 7 * 7)
    assert s["box.head.cls_score.weight"] == (91, 1024)
    assert s["box.head.bbox_pred.weight"] == (360, 1024)
    assert s["mask.head.convs.3.weight"] == (256, 256, 3, 3)
    assert s["mask.head.deconv.weight"] == (256, 256, 2, 2)
    assert s["mask.head.predictor.weight"] == (90, 256, 1, 1)
    assert not any(k.endswith("num_batches_tracked") for k in s)


def test_expected_shapes_resnext101_without_masks() -> None:
    cfg = ModelConfig(backbone=BackboneConfig(depth=101, groups=32, width_per_group=8), mask_head=None)
    s = expected_state_shapes(cfg)
    assert s["backbone.body.layer1.0.conv1.weight"] == (256, 64, 1, 1)
    assert s["backbone.body.layer1.0.conv2.weight"] == (256, 8, 3, 3)  # 32 groups of 8 channels
    assert s["backbone.body.layer1.0.conv3.weight"] == (256, 256, 1, 1)
    assert s["backbone.body.layer4.0.conv2.weight"] == (2048, 64, 3, 3)
    assert "backbone.body.layer3.22.conv1.weight" in s and "backbone.body.layer3.23.conv1.weight" not in s
    assert not any(k.startswith("mask.head.") for k in s)


def test_expected_key_count_matches_both_peers() -> None:
    tv = [n for n, _, _ in _spec(TV) if not n.endswith("num_batches_tracked")]
    assert len(expected_state_shapes(torchvision_r50_fpn())) == len(tv) == len(_spec(D2))


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"backbone": BackboneConfig(depth=101)},
        {"backbone": BackboneConfig(depth=101, groups=32, width_per_group=8)},
        {"backbone": BackboneConfig(depth=152, groups=64, width_per_group=4)},
        {"num_classes": 3, "class_names": ("class_1", "class_2", "class_3"), "category_ids": (1, 2, 3)},
        {"mask_head": None},
    ],
    ids=["r50", "r101", "x101_32x8d", "x152_64x4d", "3_classes", "no_masks"],
)
def test_infer_config_recovers_the_architecture(changes: dict) -> None:
    base = torchvision_r50_fpn()
    cfg = base.replace(**changes)
    state = _fake(expected_state_shapes(cfg))
    assert infer_config(base, state) == cfg
    assert compare_state(expected_state_shapes(cfg), state).ok


def test_infer_config_rejects_unknown_depth() -> None:
    state = _fake(expected_state_shapes(torchvision_r50_fpn()))
    state = {k: v for k, v in state.items() if not k.startswith("backbone.body.layer3.5.")}
    with pytest.raises(ValueError, match=r"\(3, 4, 5, 3\) blocks per stage"):
        infer_config(torchvision_r50_fpn(), state)


def test_compare_state_summarises_long_lists() -> None:
    expected = expected_state_shapes(torchvision_r50_fpn())
    state = _fake({k: v for k, v in expected.items() if ".downsample." not in k})
    report = compare_state(expected, state)
    assert len(report.missing) == 4 * 5 and not report.unexpected and not report.wrong_shape
    text = report.describe()
    assert text.startswith("20 missing: backbone.body.layer1.0.downsample.0.weight, ")
    assert text.endswith("... and 10 more")


# ---------------------------------------------------------------------------
# torchvision.


def test_torchvision_converts_every_key(tv_loaded: tuple[ModelConfig, dict[str, Tensor]]) -> None:
    cfg, state = tv_loaded
    assert cfg == torchvision_r50_fpn()
    assert cfg.num_classes == 90 and cfg.category_ids[0] == 1 and cfg.class_names[11] == "N/A"
    _assert_fits(cfg, state)


def test_torchvision_tensors_land_in_the_right_slots(
    tv_state: dict[str, Tensor], tv_loaded: tuple[ModelConfig, dict[str, Tensor]]
) -> None:
    _, ours = tv_loaded
    same = {
        "backbone.body.layer3.4.bn2.running_mean": "backbone.body.layer3.4.bn2.running_mean",
        "backbone.fpn.lateral.2.weight": "backbone.fpn.inner_blocks.2.0.weight",
        "backbone.fpn.output.1.bias": "backbone.fpn.layer_blocks.1.0.bias",
        "rpn.head.conv.weight": "rpn.head.conv.0.0.weight",
        "rpn.head.objectness.weight": "rpn.head.cls_logits.weight",
        "rpn.head.deltas.bias": "rpn.head.bbox_pred.bias",
        "box.head.fc1.weight": "roi_heads.box_head.fc6.weight",
        "box.head.fc2.bias": "roi_heads.box_head.fc7.bias",
        "box.head.cls_score.weight": "roi_heads.box_predictor.cls_score.weight",
        "mask.head.convs.2.weight": "roi_heads.mask_head.2.0.weight",
        "mask.head.deconv.weight": "roi_heads.mask_predictor.conv5_mask.weight",
    }
    for our_name, tv_name in same.items():
        assert torch.equal(ours[our_name], tv_state[tv_name]), our_name
    # Background's regression rows (0..3) and mask logit (0) are dropped; class k keeps rows 4k..4k+3.
    tv_deltas = tv_state["roi_heads.box_predictor.bbox_pred.weight"]
    assert torch.equal(ours["box.head.bbox_pred.weight"][0], tv_deltas[4])
    assert torch.equal(ours["box.head.bbox_pred.weight"], tv_deltas[4:])
    tv_deltas_bias = tv_state["roi_heads.box_predictor.bbox_pred.bias"]
    assert torch.equal(ours["box.head.bbox_pred.bias"], tv_deltas_bias[4:])
    tv_logits = tv_state["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    assert torch.equal(ours["mask.head.predictor.weight"][0], tv_logits[1])
    assert torch.equal(ours["mask.head.predictor.weight"], tv_logits[1:])
    tv_logit_bias = tv_state["roi_heads.mask_predictor.mask_fcn_logits.bias"]
    assert torch.equal(ours["mask.head.predictor.bias"], tv_logit_bias[1:])


def _old_layout(name: str) -> str:
    """torchvision's key names before convolutions were wrapped in Conv2dNormActivation."""
    name = re.sub(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.0\.", r"backbone.fpn.\1_blocks.\2.", name)
    name = name.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
    m = re.match(r"^roi_heads\.mask_head\.(\d+)\.0\.(.*)$", name)
    return f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.{m[2]}" if m else name


def test_torchvision_old_layout(
    tv_state: dict[str, Tensor], tv_loaded: tuple[ModelConfig, dict[str, Tensor]], tmp_path: Path
) -> None:
    old = {_old_layout(k): v for k, v in tv_state.items()}
    assert "roi_heads.mask_head.mask_fcn1.weight" in old and "rpn.head.conv.weight" in old
    assert "backbone.fpn.inner_blocks.0.weight" in old and "backbone.fpn.layer_blocks.3.bias" in old
    path = tmp_path / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    save_torchvision_state(path, old)
    cfg, state = load_checkpoint(path)
    new_cfg, new_state = tv_loaded
    assert cfg == new_cfg
    assert state.keys() == new_state.keys()
    assert all(torch.equal(state[k], new_state[k]) for k in state)


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_torchvision_wrapped(tv_state: dict[str, Tensor], tmp_path: Path, wrapper: str) -> None:
    path = tmp_path / "wrapped.pth"
    torch.save({wrapper: tv_state, "epoch": 26}, path)
    cfg, state = load_checkpoint(path)
    assert cfg == torchvision_r50_fpn()
    _assert_fits(cfg, state)


def test_torchvision_custom_classes_and_no_masks(tv_state: dict[str, Tensor], tmp_path: Path) -> None:
    """A fine-tuned Faster R-CNN with 3 classes: generic class names, no mask head."""
    mask = ("roi_heads.mask_head.", "roi_heads.mask_predictor.")
    state = {k: v for k, v in tv_state.items() if not k.startswith(mask)}
    for name, rows in [("cls_score", 4), ("bbox_pred", 16)]:
        for p in ("weight", "bias"):
            key = f"roi_heads.box_predictor.{name}.{p}"
            state[key] = state[key][:rows].clone()
    path = tmp_path / "fasterrcnn_3_classes.pth"
    save_torchvision_state(path, state)
    cfg, ours = load_checkpoint(path)
    assert cfg.num_classes == 3 and cfg.mask_head is None
    assert cfg.class_names == ("class_1", "class_2", "class_3") and cfg.category_ids == (1, 2, 3)
    _assert_fits(cfg, ours)
    theirs = state["roi_heads.box_predictor.bbox_pred.weight"]
    assert torch.equal(ours["box.head.bbox_pred.weight"], theirs[4:])


def test_torchvision_keypoint_checkpoint_converts_and_loads_strictly(tmp_path: Path) -> None:
    path = tmp_path / "keypointrcnn_resnet50_fpn_coco.pth"
    theirs = _synthetic(_spec(TV_KEYPOINT), seed=2)
    save_torchvision_state(path, theirs)
    cfg, ours = load_checkpoint(path)
    assert cfg == torchvision_keypoint_r50_fpn()
    assert cfg.num_classes == 1 and cfg.class_names == ("person",) and cfg.category_ids == (1,)
    assert cfg.mask_head is None and cfg.keypoint_head is not None and cfg.keypoint_head.num_keypoints == 17
    _assert_fits(cfg, ours)
    # The Sequential's convs at places 0, 2, ..., 14 (ReLUs between them) are our convs 0..7.
    for i in range(8):
        theirs_conv = theirs[f"roi_heads.keypoint_head.{2 * i}.weight"]
        assert torch.equal(ours[f"keypoint.head.convs.{i}.weight"], theirs_conv)
    assert torch.equal(ours["keypoint.head.predictor.weight"],
                       theirs["roi_heads.keypoint_predictor.kps_score_lowres.weight"])
    assert torch.equal(ours["box.head.cls_score.weight"], theirs["roi_heads.box_predictor.cls_score.weight"])
    # (8, 1024) -> (4, 1024): the background's 4 rows dropped.
    bbox_pred = theirs["roi_heads.box_predictor.bbox_pred.weight"]
    assert torch.equal(ours["box.head.bbox_pred.weight"], bbox_pred[4:])
    with torch.device("meta"):
        model = build_model(cfg)
    model.load_state_dict(ours, strict=True, assign=True)


def test_keypoint_count_is_read_off_the_predictor() -> None:
    five = dataclasses.replace(KeypointHeadConfig(), num_keypoints=5, keypoint_names=(), flip_pairs=(),
                               skeleton=(), conv_dims=(64, 64))
    shapes = expected_state_shapes(torchvision_keypoint_r50_fpn().replace(keypoint_head=five))
    assert shapes["keypoint.head.predictor.weight"] == (64, 5, 4, 4)
    # On torchvision's keypoint base the head keeps torchvision's pixel convention (offset 0).
    assert infer_config(torchvision_keypoint_r50_fpn(), _fake(shapes)).keypoint_head == dataclasses.replace(
        five, pixel_offset=0.0
    )
    assert infer_config(torchvision_r50_fpn(), _fake(shapes)).keypoint_head == five
    no_keypoints = expected_state_shapes(torchvision_r50_fpn())
    assert infer_config(torchvision_keypoint_r50_fpn(), _fake(no_keypoints)).keypoint_head is None


def test_torchvision_v2_is_refused() -> None:
    with pytest.raises(ValueError, match="_fpn_v2"):
        torchvision.convert({"backbone.body.conv1.weight": None, "roi_heads.box_head.0.0.weight": None})


# ---------------------------------------------------------------------------
# Detectron2.


def test_detectron2_converts_every_key(d2_loaded: tuple[ModelConfig, dict[str, Tensor]]) -> None:
    cfg, state = d2_loaded
    assert cfg == detectron2_r50_fpn()
    _assert_fits(cfg, state)


def test_detectron2_tensors_land_in_the_right_slots(
    d2_arrays: dict[str, np.ndarray], d2_loaded: tuple[ModelConfig, dict[str, Tensor]]
) -> None:
    _, ours = d2_loaded

    def d2(name: str) -> Tensor:
        return torch.from_numpy(d2_arrays[name])

    same = {
        "backbone.body.conv1.weight": "backbone.bottom_up.stem.conv1.weight",
        "backbone.body.bn1.running_var": "backbone.bottom_up.stem.conv1.norm.running_var",
        "backbone.body.layer1.0.bn1.weight": "backbone.bottom_up.res2.0.conv1.norm.weight",
        "backbone.body.layer3.5.conv2.weight": "backbone.bottom_up.res4.5.conv2.weight",
        "backbone.body.layer4.2.bn3.running_mean": "backbone.bottom_up.res5.2.conv3.norm.running_mean",
        "backbone.body.layer2.0.downsample.0.weight": "backbone.bottom_up.res3.0.shortcut.weight",
        "backbone.body.layer2.0.downsample.1.bias": "backbone.bottom_up.res3.0.shortcut.norm.bias",
        "backbone.fpn.lateral.0.weight": "backbone.fpn_lateral2.weight",
        "backbone.fpn.output.3.bias": "backbone.fpn_output5.bias",
        "rpn.head.conv.weight": "proposal_generator.rpn_head.conv.weight",
        "rpn.head.objectness.bias": "proposal_generator.rpn_head.objectness_logits.bias",
        "rpn.head.deltas.weight": "proposal_generator.rpn_head.anchor_deltas.weight",
        "box.head.fc1.weight": "roi_heads.box_head.fc1.weight",
        "box.head.bbox_pred.weight": "roi_heads.box_predictor.bbox_pred.weight",
        "box.head.bbox_pred.bias": "roi_heads.box_predictor.bbox_pred.bias",
        "mask.head.convs.0.weight": "roi_heads.mask_head.mask_fcn1.weight",
        "mask.head.convs.3.bias": "roi_heads.mask_head.mask_fcn4.bias",
        "mask.head.deconv.weight": "roi_heads.mask_head.deconv.weight",
        "mask.head.predictor.weight": "roi_heads.mask_head.predictor.weight",
    }
    for our_name, d2_name in same.items():
        assert torch.equal(ours[our_name], d2(d2_name)), our_name
    # Background moves from the last row (80) to the first; classes follow in order.
    for p in ("weight", "bias"):
        theirs = d2(f"roi_heads.box_predictor.cls_score.{p}")
        mine = ours[f"box.head.cls_score.{p}"]
        assert torch.equal(mine[0], theirs[80])
        assert torch.equal(mine[1], theirs[0])
        assert torch.equal(mine[1:], theirs[:80])


def test_detectron2_pth_with_extras(d2_arrays: dict[str, np.ndarray], tmp_path: Path) -> None:
    """A Detectron2 trainer checkpoint: tensors inside {"model": ...}, plus non-weight buffers."""
    model = {k: torch.from_numpy(v) for k, v in d2_arrays.items()}
    model["pixel_mean"] = torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)
    model["pixel_std"] = torch.ones(3, 1, 1)
    model["proposal_generator.anchor_generator.cell_anchors.0"] = torch.zeros(3, 4)
    path = tmp_path / "model_0004999.pth"
    torch.save({"model": model, "optimizer": {"state": {}, "param_groups": []}, "iteration": 4999}, path)
    cfg, state = load_checkpoint(path)
    assert cfg == detectron2_r50_fpn()
    _assert_fits(cfg, state)


@pytest.mark.parametrize("protocol", [2, 5])
def test_detectron2_pickle_protocols(d2_arrays: dict[str, np.ndarray], tmp_path: Path, protocol: int) -> None:
    """Protocol 2 (Python 2 compatible: bytes as latin-1 strings) and 5 (out-of-band buffers)."""
    path = tmp_path / f"protocol{protocol}.pkl"
    save_detectron2_pickle(path, d2_arrays, protocol=protocol)
    cfg, state = load_checkpoint(path)
    _assert_fits(cfg, state)


def test_detectron2_resnext_gets_caffe2_settings(d2_arrays: dict[str, np.ndarray]) -> None:
    state = dict(d2_arrays)
    state["backbone.bottom_up.res2.0.conv2.weight"] = np.zeros((256, 8, 3, 3), np.float32)
    cfg, _ = detectron2.convert(state)
    assert (cfg.backbone.groups, cfg.backbone.width_per_group) == (32, 8)
    assert cfg.backbone.stride_in_1x1 is False
    assert cfg.input.pixel_std == detectron2.RESNEXT_PIXEL_STD


# ---------------------------------------------------------------------------
# Detection, override, and our own format.


def test_detect_format(tv_state: dict[str, Tensor], d2_arrays: dict[str, np.ndarray]) -> None:
    assert detect_format(tv_state) == "torchvision"
    assert detect_format({"model": tv_state}) == "torchvision"
    assert detect_format({"model": d2_arrays, "__author__": "Detectron2 Model Zoo"}) == "detectron2"
    assert detect_format({"format": "maskrcnn", "config": {}, "model": {}}) == "maskrcnn"
    with pytest.raises(ValueError, match="no known checkpoint layout.*conv.weight"):
        detect_format({"conv.weight": torch.zeros(1), "conv.bias": torch.zeros(1)})
    with pytest.raises(ValueError, match="holds a list"):
        detect_format([1, 2])


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_own_format_auto_detected(
    tv_loaded: tuple[ModelConfig, dict[str, Tensor]], tmp_path: Path, suffix: str
) -> None:
    cfg, state = tv_loaded
    path = save_model(tmp_path / f"converted{suffix}", cfg, state)
    cfg2, state2 = load_checkpoint(path)
    assert cfg2 == cfg
    assert state2.keys() == state.keys() and all(torch.equal(state2[k], state[k]) for k in state)


def test_explicit_format_overrides_detection(tv_file: Path) -> None:
    cfg, _ = load_checkpoint(tv_file, format="torchvision")
    assert cfg == torchvision_r50_fpn()
    # Read as Detectron2's, torchvision's FPN names are unknown: reported, not guessed.
    with pytest.raises(CheckpointError, match="detectron2 checkpoint") as info:
        load_checkpoint(tv_file, format="detectron2")
    msg = str(info.value)
    assert str(tv_file) in msg
    assert "26 missing: backbone.fpn.lateral.0.weight" in msg
    assert "38 unexpected: backbone.fpn.inner_blocks.0.0.weight" in msg
    # Same predictor names in both: read as Detectron2's, torchvision's background rows are kept.
    assert "box.head.bbox_pred.weight is (364, 1024), expected (360, 1024)" in msg
    with pytest.raises(CheckpointError, match="not a maskrcnn checkpoint"):
        load_checkpoint(tv_file, format="maskrcnn")
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        load_checkpoint(tv_file, format="mmdetection")


# ---------------------------------------------------------------------------
# Broken files.


@pytest.mark.parametrize("kind", ["torchvision", "detectron2", "safetensors"])
def test_truncated_checkpoint(
    kind: str, tv_file: Path, d2_file: Path, tv_loaded: tuple[ModelConfig, dict[str, Tensor]], tmp_path: Path
) -> None:
    if kind == "torchvision":
        whole = tv_file.read_bytes()
    elif kind == "detectron2":
        whole = d2_file.read_bytes()
    else:
        whole = save_model(tmp_path / "whole.safetensors", *tv_loaded).read_bytes()
    suffix = {"torchvision": ".pth", "detectron2": ".pkl", "safetensors": ".safetensors"}[kind]
    path = tmp_path / f"half{suffix}"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: ")


def test_wrong_architecture_lists_every_problem(tv_state: dict[str, Tensor], tmp_path: Path) -> None:
    state = dict(tv_state)
    del state["roi_heads.box_head.fc7.bias"]
    state["roi_heads.box_head.fc8.weight"] = torch.zeros(4, 4)
    state["rpn.head.conv.0.0.weight"] = torch.zeros(256, 256, 1, 1)
    path = tmp_path / "edited.pth"
    save_torchvision_state(path, state)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: the torchvision checkpoint's tensors do not fit")
    assert "ResNet-50 FPN, 90 classes" in msg
    assert "1 missing: box.head.fc2.bias" in msg
    assert "1 unexpected: roi_heads.box_head.fc8.weight" in msg
    wrong = "rpn.head.conv.weight is (256, 256, 1, 1), expected (256, 256, 3, 3)"
    assert f"1 with the wrong shape: {wrong}" in msg


def test_not_a_checkpoint(tmp_path: Path) -> None:
    cases: dict[str, bytes] = {
        "random.pth": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "notes.pth": b"these are not the weights you are looking for\n",
        "empty.pkl": b"",
        "list.pkl": pickle.dumps([1, 2, 3]),
        # A pickle that would build an arbitrary object is refused, not run.
        "object.pkl": pickle.dumps({"model": {"x": pathlib.PurePosixPath("/etc")}}),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert str(info.value).startswith(f"{path}: "), name
    with pytest.raises(CheckpointError, match="refusing to unpickle pathlib"):
        load_checkpoint(tmp_path / "object.pkl")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pth")


def test_unknown_layout_lists_example_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet50.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}, path)
    examples = r"no known checkpoint layout.*2 entries: conv1\.weight, fc\.weight"
    with pytest.raises(CheckpointError, match=examples):
        load_checkpoint(path)


def test_bare_state_dict_of_ours_gets_a_hint(
    tv_loaded: tuple[ModelConfig, dict[str, Tensor]], tmp_path: Path
) -> None:
    _, state = tv_loaded
    path = tmp_path / "bare.pth"
    torch.save({k: state[k] for k in ("box.head.cls_score.weight", "box.head.cls_score.bias")}, path)
    with pytest.raises(CheckpointError, match="bare maskrcnn state dict"):
        load_checkpoint(path)


class _NotATensor:
    """A Python object that ``weights_only`` loading refuses."""


def test_torch_file_with_python_objects_is_refused_without_unsafe_advice(tmp_path: Path) -> None:
    path = tmp_path / "pickled_object.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": _NotATensor()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "could run code" in message
    assert "weights_only" not in message and "\n" not in message
