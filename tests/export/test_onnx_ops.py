"""Our RoIAlign and grouped NMS, exported as ONNX RoiAlign / NonMaxSuppression, agree with PyTorch.

Each graph is exported once with dynamic sizes and then run on cases of
other sizes, empty ones included, in ONNX Runtime and in OpenVINO (float32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime", reason="the deploy extra is not installed")
ov = pytest.importorskip("openvino", reason="the deploy extra is not installed")
onnx = pytest.importorskip("onnx", reason="the deploy extra is not installed")

from maskrcnn.export.onnx_ops import OPSET, export_ops  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["features", "rois", "boxes", "scores"]
IOU, SCORE, CAP = 0.5, 0.05, 20


class _Ops(torch.nn.Module):
    def __init__(self, aligned: bool, sampling_ratio: int) -> None:
        super().__init__()
        self.aligned, self.sampling_ratio = aligned, sampling_ratio

    def forward(self, features: torch.Tensor, rois: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor):
        ops = export_ops()
        pooled = ops.roi_align(features, rois, 7, 0.25, self.sampling_ratio, self.aligned)
        return pooled, ops.nms_grouped(boxes, scores, IOU, SCORE, CAP)


def _case(seed: int, rois: int, boxes: int, groups: int, *, integer_boxes: bool) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 4, 13, 17, generator=g)
    xy = torch.rand(rois, 2, generator=g) * 70 - 5
    wh = torch.rand(rois, 2, generator=g) * 40
    wh[: rois // 3] *= 0.02  # below one feature pixel
    r = torch.cat((torch.randint(0, 2, (rois, 1), generator=g).float(), xy, xy + wh), dim=1)
    bxy = torch.rand(groups, boxes, 2, generator=g) * 50
    bwh = torch.rand(groups, boxes, 2, generator=g) * 30 + 1
    if integer_boxes:
        bxy, bwh = bxy.round(), bwh.round()
    b = torch.cat((bxy, bxy + bwh), dim=2)
    s = (torch.rand(groups, boxes, generator=g) * 10).round() / 10  # many equal scores
    return features, r, b, s


CASES = [(30, 40, 3), (0, 0, 1), (1, 5, 2), (60, 120, 4), (7, 1, 1), (3, 0, 2)]


@pytest.fixture(scope="module", params=[(False, 2), (True, 0), (False, 0)], ids=str)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[_Ops, Path]:
    module = _Ops(*request.param)
    program = torch.onnx.export(
        module, _case(0, 30, 40, 3, integer_boxes=True), dynamo=True, opset_version=OPSET,
        custom_translation_table=export_ops().translations, input_names=NAMES,
        dynamic_shapes={"features": {0: "n", 2: "h", 3: "w"}, "rois": {0: "r"},
                        "boxes": {0: "g", 1: "b"}, "scores": {0: "g", 1: "b"}},
    )
    path = tmp_path_factory.mktemp("onnx") / "ops.onnx"
    program.save(str(path))
    return module, path


def _feeds(case: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    return {name: t.numpy() for name, t in zip(NAMES, case, strict=True)}


def test_every_attribute_is_written(exported: tuple[_Ops, Path]) -> None:
    module, path = exported
    nodes = {n.op_type: n for n in onnx.load(str(path)).graph.node}
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in nodes["RoiAlign"].attribute}
    mode = b"half_pixel" if module.aligned else b"output_half_pixel"
    assert attributes["coordinate_transformation_mode"] == mode
    assert attributes["sampling_ratio"] == module.sampling_ratio and attributes["mode"] == b"avg"
    assert len(nodes["NonMaxSuppression"].input) == 5


@pytest.mark.parametrize(("seed", "size"), list(enumerate(CASES, start=1)))
def test_onnxruntime_equals_pytorch(
    exported: tuple[_Ops, Path], seed: int, size: tuple[int, int, int]
) -> None:
    module, path = exported
    case = _case(seed, *size, integer_boxes=True)  # exact IoU ties too: ONNX Runtime suppresses at IoU > thr
    pooled, keep = module(*case)
    got_pooled, got_keep = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, _feeds(case))
    np.testing.assert_allclose(got_pooled, pooled.numpy(), rtol=0, atol=2e-6)
    np.testing.assert_array_equal(got_keep, keep.numpy())


@pytest.mark.parametrize(("seed", "size"), list(enumerate(CASES, start=1)))
def test_openvino_equals_pytorch(exported: tuple[_Ops, Path], seed: int, size: tuple[int, int, int]) -> None:
    module, path = exported
    # OpenVINO suppresses at IoU >= thr: boxes with float corners never meet the threshold exactly.
    case = _case(seed, *size, integer_boxes=False)
    pooled, keep = module(*case)
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(_feeds(case))
    np.testing.assert_allclose(result[0], pooled.numpy(), rtol=0, atol=2e-6)
    np.testing.assert_array_equal(result[1], keep.numpy())
