"""Detectron2's model zoo: the architecture (FPN, C4, DC5), depth and ResNeXt width come from the tensors.

State dicts with Detectron2's own names and shapes are built from the
fixtures' ``spec.json`` (made by Detectron2's code from its zoo configs:
``tests/reference/detectron2-maskrcnn-*`` and the shared R50-FPN one). The
R101 forms of C4 and DC5 are their R50 specs with res4's 23 blocks. Tensors
are expanded zeros: inference reads shapes only, so nothing is allocated.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from maskrcnn.config import detectron2_r50_c4, detectron2_r50_dc5, detectron2_r50_fpn
from maskrcnn.convert import (
    CheckpointError,
    compare_state,
    detectron2,
    expected_state_shapes,
    load_checkpoint,
)
from tests.peers import reference_dir, save_detectron2_pickle

OURS = Path(__file__).resolve().parents[1] / "reference"


def _spec(fixture: str) -> dict[str, tuple[int, ...]]:
    path = OURS / fixture / "spec.json"
    if not path.is_file():
        path = reference_dir() / fixture / "spec.json"
    if not path.is_file():
        pytest.skip(f"{fixture}/spec.json is absent")
    return {name: tuple(shape) for name, shape, _ in json.loads(path.read_text())}


def _deepen_res4(spec: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """An R50 spec made R101: res4's blocks 6..22 are copies of block 5."""
    out = dict(spec)
    block5 = re.compile(r"(.*\.res4\.)5(\..*)")
    for name, shape in spec.items():
        m = block5.fullmatch(name)
        if m:
            out.update({f"{m.group(1)}{i}{m.group(2)}": shape for i in range(6, 23)})
    return out


def _zeros(spec: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    return {name: torch.zeros(()).expand(shape) for name, shape in spec.items()}


# (zoo config, fixture holding its spec, whether to deepen res4 to R101, architecture, depth, groups, width)
ZOO = [
    ("mask_rcnn_R_50_FPN_3x", "detectron2-maskrcnn-r50-fpn", False, "fpn", 50, 1, 64),
    ("mask_rcnn_R_101_FPN_3x", "detectron2-maskrcnn-r101-fpn", False, "fpn", 101, 1, 64),
    ("mask_rcnn_X_101_32x8d_FPN_3x", "detectron2-maskrcnn-x101-32x8d-fpn", False, "fpn", 101, 32, 8),
    ("mask_rcnn_R_50_C4_3x", "detectron2-maskrcnn-r50-c4", False, "c4", 50, 1, 64),
    ("mask_rcnn_R_101_C4_3x", "detectron2-maskrcnn-r50-c4", True, "c4", 101, 1, 64),
    ("mask_rcnn_R_50_DC5_3x", "detectron2-maskrcnn-r50-dc5", False, "dc5", 50, 1, 64),
    ("mask_rcnn_R_101_DC5_3x", "detectron2-maskrcnn-r50-dc5", True, "dc5", 101, 1, 64),
]
BASES = {"fpn": detectron2_r50_fpn, "c4": detectron2_r50_c4, "dc5": detectron2_r50_dc5}


@pytest.mark.parametrize(("zoo", "fixture", "deepen", "arch", "depth", "groups", "width"), ZOO,
                         ids=[z[0] for z in ZOO])
def test_zoo_architecture_is_read_off_the_tensors(
    zoo: str, fixture: str, deepen: bool, arch: str, depth: int, groups: int, width: int
) -> None:
    spec = _spec(fixture)
    spec = _deepen_res4(spec) if deepen else spec
    assert detectron2.detect_architecture(spec) == arch
    cfg, state = detectron2.convert(_zeros(spec))
    assert cfg.architecture == arch
    b = cfg.backbone
    assert (b.depth, b.groups, b.width_per_group) == (depth, groups, width)
    # Everything else is the zoo config's: Detectron2's numbers for that architecture,
    # with the Caffe2 stride placement and pixel std of its ResNeXt configs.
    base = BASES[arch]()
    if groups > 1:
        base = base.replace(input=dataclasses.replace(base.input, pixel_std=detectron2.RESNEXT_PIXEL_STD))
    backbone = dataclasses.replace(base.backbone, depth=depth, groups=groups, width_per_group=width,
                                   stride_in_1x1=groups == 1)
    assert cfg == base.replace(backbone=backbone)
    assert cfg.num_classes == 80 and cfg.mask_head is not None
    mismatch = compare_state(expected_state_shapes(cfg), state)
    assert mismatch.ok, mismatch.describe()


def test_c4_and_dc5_numbers_are_detectron2s() -> None:
    c4, dc5 = detectron2_r50_c4(), detectron2_r50_dc5()
    for cfg in (c4, dc5):
        # Base-RCNN-C4 / -DilatedC5: RPN 6000 -> 1000 at test; a plain ResNet backbone pads to no multiple.
        assert (cfg.rpn.pre_nms_topk_test, cfg.rpn.post_nms_topk_test) == (6000, 1000)
        assert cfg.input.size_divisibility == 1
        assert cfg.anchors.sizes == (32.0, 64.0, 128.0, 256.0, 512.0)
    assert (c4.box_head.num_fc, c4.box_head.pooler.resolution, c4.mask_head.pooler.resolution) == (0, 14, 14)
    assert (c4.mask_head.conv_dims, c4.mask_head.deconv_dim) == ((), 256)
    assert (dc5.box_head.num_fc, dc5.box_head.pooler.resolution) == (2, 7)
    assert dc5.mask_head.conv_dims == (256,) * 4
    s = expected_state_shapes(c4)
    assert s["rpn.head.conv.weight"] == (1024, 1024, 3, 3)
    assert s["roi_shared.0.conv1.weight"] == (512, 1024, 1, 1)
    assert s["box.head.cls_score.weight"] == (81, 2048)
    assert s["mask.head.deconv.weight"] == (2048, 256, 2, 2)
    assert s["mask.head.predictor.weight"] == (80, 256, 1, 1)
    s = expected_state_shapes(dc5)
    assert s["rpn.head.conv.weight"] == (2048, 2048, 3, 3)
    assert s["backbone.body.layer4.0.conv2.weight"] == (512, 512, 3, 3)
    assert s["box.head.fc1.weight"] == (1024, 2048 * 7 * 7)
    assert s["mask.head.convs.0.weight"] == (256, 2048, 3, 3)


def test_mixed_architectures_are_an_error() -> None:
    spec = _spec("detectron2-maskrcnn-r50-c4")
    spec["backbone.fpn_lateral2.weight"] = (256, 256, 1, 1)
    mixed = r"mixes the tensors of several architectures: C4 \(roi_heads\.res5\..*FPN \(backbone\.fpn_"
    with pytest.raises(ValueError, match=mixed):
        detectron2.convert(_zeros(spec))


def test_c4_checkpoint_with_fpn_sized_tensors_names_the_architecture(tmp_path: Path) -> None:
    # A C4 model zoo file whose RPN head is an FPN one: the error names the architecture read
    # off the tensors and what does not fit it.
    spec = _spec("detectron2-maskrcnn-r50-c4")
    spec["proposal_generator.rpn_head.conv.weight"] = (256, 256, 3, 3)
    arrays = {name: np.zeros(shape, np.float32) for name, shape in spec.items()}
    path = tmp_path / "model_final_c4.pkl"
    save_detectron2_pickle(path, arrays)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "do not fit its architecture (ResNet-50 C4, 80 classes, box and mask heads)" in msg
    assert "rpn.head.conv.weight is (256, 256, 3, 3), expected (1024, 1024, 3, 3)" in msg
