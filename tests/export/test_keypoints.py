"""Keypoint decoding exported as one ONNX Loop agrees with ``keypoint_heatmaps_to_xy``.

The graph is exported once per keypoint count with a dynamic number of
detections and run in ONNX Runtime and in OpenVINO (float32) on boxes of
every kind: below a pixel, fractional, 600 x 800 px, starting at negative
coordinates. The resize matrices are PyTorch's bit for bit (one-hot heatmaps
give bitwise equal results); the matrix products round differently in each
runtime, so on random heatmaps a maximum may move to a cell whose eager
value equals the eager maximum to float32 precision, and nowhere else.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime", reason="the deploy extra is not installed")
ov = pytest.importorskip("openvino", reason="the deploy extra is not installed")
onnx = pytest.importorskip("onnx", reason="the deploy extra is not installed")

from maskrcnn.export.keypoints import keypoint_ops  # noqa: E402
from maskrcnn.export.onnx_ops import OPSET  # noqa: E402
from maskrcnn.model.keypoint_head import bicubic_resize_matrices, keypoint_heatmaps_to_xy  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SIDE = 56
NAMES = ["heatmaps", "boxes"]
# Positions in pixels (one float32 ulp at 1000 px is 6e-5) and scores (logits of order 1).
POSITION_ATOL, SCORE_RTOL, SCORE_ATOL = 1e-4, 1e-5, 1e-6
# Box kinds, taken in turn: (x0 range, w range, h range) in pixels.
KINDS = [
    ((-20.0, 200.0), (0.0, 0.9), (0.0, 0.9)),  # below one pixel: one cell
    ((0.0, 300.0), (2.0, 90.0), (2.0, 90.0)),  # fractional
    ((-30.0, 30.0), (600.0, 605.0), (800.0, 805.0)),  # large
    ((-120.0, -10.0), (20.0, 150.0), (20.0, 150.0)),  # starting at negative coordinates
    ((0.0, 100.0), (0.0, 0.9), (30.0, 200.0)),  # thinner than a pixel, tall
]


class _Decode(torch.nn.Module):
    def forward(self, heatmaps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return keypoint_ops().keypoints_from_heatmaps(heatmaps, boxes)


def _boxes(seed: int, d: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(d):
        (lo, hi), (wlo, whi), (hlo, hhi) = KINDS[(seed + i) % len(KINDS)]
        x0, y0 = (lo + (hi - lo) * torch.rand(2, generator=g)).tolist()
        w = wlo + (whi - wlo) * torch.rand(1, generator=g).item()
        h = hlo + (hhi - hlo) * torch.rand(1, generator=g).item()
        rows.append([x0, y0, x0 + w, y0 + h])
    return torch.tensor(rows, dtype=torch.float32).reshape(d, 4)


def _heatmaps(seed: int, d: int, p: int) -> torch.Tensor:
    return torch.randn(d, p, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


class Runtime(NamedTuple):
    decode: Callable[[torch.Tensor, torch.Tensor], np.ndarray]  # (heatmaps, boxes) -> (D, P, 3)
    keypoints: int  # P, fixed in the graph


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """The graph for ``P`` keypoints and any number of detections, exported once per ``P``."""
    folder = tmp_path_factory.mktemp("onnx")

    @functools.cache
    def path(p: int) -> Path:
        program = torch.onnx.export(
            _Decode().eval(), (_heatmaps(0, 5, p), _boxes(0, 5)), dynamo=True, opset_version=OPSET,
            custom_translation_table=keypoint_ops().translations, input_names=NAMES,
            dynamic_shapes={"heatmaps": {0: "d"}, "boxes": {0: "d"}},
        )
        program.save(str(folder / f"keypoints_{p}.onnx"))
        return folder / f"keypoints_{p}.onnx"

    return path


RUNTIMES = [("onnxruntime", 17), ("onnxruntime", 3), ("openvino", 17), ("openvino", 3)]


@pytest.fixture(scope="module", params=RUNTIMES, ids=lambda param: f"{param[0]}-P{param[1]}")
def runtime(request: pytest.FixtureRequest, export: Callable[[int], Path]) -> Runtime:
    name, p = request.param
    path = str(export(p))
    if name == "onnxruntime":
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return Runtime(lambda h, b: session.run(None, {"heatmaps": h.numpy(), "boxes": b.numpy()})[0], p)
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}  # not bf16
    compiled = ov.Core().compile_model(path, "CPU", config)
    return Runtime(lambda h, b: compiled({"heatmaps": h.numpy(), "boxes": b.numpy()})[0], p)


def _resized(heatmap: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """The eager bicubic resize of one ``(S, S)`` heatmap to its box's ``(h, w)`` cells."""
    cols, rows = (box[2:] - box[:2]).clamp(min=1).ceil().long().tolist()
    resize_y = bicubic_resize_matrices(SIDE, torch.tensor([rows]), rows)[0]
    resize_x = bicubic_resize_matrices(SIDE, torch.tensor([cols]), cols)[0]
    return resize_y @ heatmap @ resize_x.T


def _compare(got: np.ndarray, heatmaps: torch.Tensor, boxes: torch.Tensor, *, exact: bool = False) -> int:
    """Check ``got`` against the eager decoding; return how many keypoints moved to a near-tie.

    A keypoint whose position differs must sit on a cell whose eager value is
    the eager maximum to within the score tolerance. ``exact``: none may move,
    and scores are bitwise equal.
    """
    want = keypoint_heatmaps_to_xy(heatmaps, boxes).numpy()
    assert got.shape == want.shape and got.dtype == np.float32
    if exact:
        np.testing.assert_array_equal(got[..., 2], want[..., 2])
    else:
        np.testing.assert_allclose(got[..., 2], want[..., 2], rtol=SCORE_RTOL, atol=SCORE_ATOL)
    moved = np.abs(got[..., :2] - want[..., :2]).max(axis=-1, initial=0) > POSITION_ATOL  # (D, P)
    assert not (exact and moved.any()), f"keypoints moved at {np.argwhere(moved).tolist()}"
    sides = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1)
    pitch = (sides / sides.ceil()).numpy()
    for d, k in np.argwhere(moved):
        resized = _resized(heatmaps[d, k], boxes[d])
        col, row = np.round((got[d, k, :2] - boxes[d, :2].numpy()) / pitch[d] - 0.5).astype(int)
        best = resized.max().item()
        assert abs(resized[row, col].item() - best) <= SCORE_RTOL * abs(best) + SCORE_ATOL, (d, k)
    return int(moved.sum())


def test_one_loop(export: Callable[[int], Path]) -> None:
    graph = onnx.load(str(export(17))).graph
    loops = [n for n in graph.node if n.op_type == "Loop"]
    assert len(loops) == 1
    body = onnx.helper.get_attribute_value(loops[0].attribute[0])
    assert not any(n.op_type in ("Loop", "Scan", "If") for n in body.node)


@pytest.mark.parametrize("d", [0, 1, 5])
def test_random_heatmaps(runtime: Runtime, d: int) -> None:
    decode, p = runtime
    moved = 0
    for seed in range(1, 4):
        heatmaps, boxes = _heatmaps(seed, d, p), _boxes(seed, d)
        moved += _compare(decode(heatmaps, boxes), heatmaps, boxes)
    assert moved <= max(1, 3 * d * p // 50)  # near-ties are rare


def test_one_hot_heatmaps_bitwise(runtime: Runtime) -> None:
    """One input sample per map: each resized value is one product of two matrix entries."""
    (decode, p), d = runtime, 10
    g = torch.Generator().manual_seed(7)
    heatmaps = torch.zeros(d, p, SIDE * SIDE)
    heatmaps.scatter_(2, torch.randint(0, SIDE * SIDE, (d, p, 1), generator=g), 1.0)
    heatmaps = heatmaps.reshape(d, p, SIDE, SIDE)
    boxes = _boxes(7, d)
    _compare(decode(heatmaps, boxes), heatmaps, boxes, exact=True)


def test_ties_take_the_first_maximum(runtime: Runtime) -> None:
    decode, p = runtime
    # All-zero maps: every cell ties, the first (top-left) wins.
    boxes = _boxes(11, 5)
    heatmaps = torch.zeros(5, p, SIDE, SIDE)
    got = decode(heatmaps, boxes)
    _compare(got, heatmaps, boxes, exact=True)
    sides = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1)
    first_cell = boxes[:, None, :2] + 0.5 * sides[:, None] / sides[:, None].ceil()  # (D, 1, 2)
    np.testing.assert_allclose(got[..., :2], first_cell.expand(-1, p, -1).numpy(), rtol=0, atol=POSITION_ATOL)
    # Boxes of exactly S x S px resize by the identity: maps of small integers have many maxima.
    corners = torch.tensor([[0.0, 0.0], [-7.0, 3.0], [100.0, 250.0]])
    boxes = torch.cat((corners, corners + SIDE), dim=1)
    heatmaps = torch.randint(0, 4, (3, p, SIDE, SIDE), generator=torch.Generator().manual_seed(5)).float()
    _compare(decode(heatmaps, boxes), heatmaps, boxes, exact=True)
