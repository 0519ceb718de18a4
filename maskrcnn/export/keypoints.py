"""Keypoint decoding (``keypoint_heatmaps_to_xy``) as one operator that exports to an ONNX ``Loop``.

Each detection's ``S x S`` heatmaps are resized bicubically to its box's
``ceil(h) x ceil(w)`` cells and the maximum is taken. The sizes differ from
one detection to the next, and one dense tensor over all of them would hold
``D * P * Hmax * Wmax`` values (gigabytes for large boxes), so the graph
loops over the detections: an ONNX ``Loop`` with trip count ``D`` whose body
builds that detection's two resize matrices (``bicubic_resize_matrices``,
from ``Range``, comparisons and ``Where`` rather than a scatter), resizes
with two ``MatMul`` s, takes the first maximum (``ArgMax``,
``select_last_index=0``) and emits ``(P, 3)`` as a scan output; the ``Loop``
stacks them to ``(D, P, 3)``, ``(0, P, 3)`` when there are no detections.
Every shape in the body has a fixed rank, as OpenVINO needs.

The body repeats the eager float32 operations in the eager order (the Keys
kernel polynomials, ``in / out`` as PyTorch's ``reciprocal(out) * in``, the
tap weights summed in tap order, ``(Ry @ H) @ Rx^T``, ``x0 + (i + 0.5) *
(w / ceil(w))``), so the resize matrices are bitwise PyTorch's in ONNX
Runtime and OpenVINO. The matrix products round in each runtime's own
summation order (differences of a few 1e-7 on logits of order 1), which can
move a maximum only between cells whose values agree to that precision;
OpenVINO may also fuse the last multiply-add (positions within one ulp).

Shapes: ``heatmaps (D, P, S, S)`` float32, ``boxes (D, 4)`` float32
``(x0, y0, x1, y1)`` in pixels -> ``(D, P, 3)`` float32 ``(x, y, score)``.

The operator is registered with ``torch.library`` when ``keypoint_ops()`` is
first called, never at import.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..model.keypoint_head import BICUBIC_A, keypoint_heatmaps_to_xy


@functools.cache
def keypoint_ops() -> SimpleNamespace:
    """The exportable keypoint decoder and its ONNX translation (registered once, on first use).

    Returns ``keypoints_from_heatmaps(heatmaps, boxes) -> (D, P, 3)`` (the
    eager ``keypoint_heatmaps_to_xy``) and ``translations``, to merge into
    the ``custom_translation_table`` of ``torch.onnx.export``.
    """
    import onnx_ir as ir
    from onnxscript import opset18 as op

    @torch.library.custom_op("maskrcnn::keypoints_from_heatmaps", mutates_args=())
    def keypoints_from_heatmaps(heatmaps: Tensor, boxes: Tensor) -> Tensor:
        return keypoint_heatmaps_to_xy(heatmaps, boxes)

    @keypoints_from_heatmaps.register_fake
    def _(heatmaps: Tensor, boxes: Tensor) -> Tensor:
        return heatmaps.new_empty((heatmaps.shape[0], heatmaps.shape[1], 3), dtype=torch.float32)

    def keypoints_from_heatmaps_onnx(heatmaps: Any, boxes: Any) -> Any:
        p, s = heatmaps.shape[1], heatmaps.shape[3]
        if not isinstance(p, int) or not isinstance(s, int):
            raise ValueError(f"keypoint heatmaps need a static count and side, got shape {heatmaps.shape}")
        # For all detections at once, outside the loop, as the eager code computes them:
        # sides (D, 2) = max(x1y1 - x0y0, 1) as (w, h), cells = ceil(sides), cell size sides / cells.
        corners = op.Slice(boxes, [0], [2], [1])
        sides = op.Max(op.Sub(op.Slice(boxes, [2], [4], [1]), corners), op.Constant(value_float=1.0))
        cells = op.Ceil(sides)
        pitch = op.Div(sides, cells)
        trips = op.Squeeze(op.Shape(heatmaps, start=0, end=1), [0])
        body = _loop_body(ir, heatmaps, corners, cells, pitch, p, s)
        # No loop-carried values, one scan output. ``op.Loop`` insists on at least one
        # ``v_initial``; the Op itself takes the empty variadic by name. The condition is
        # written out (always true): an omitted trailing input would be dropped from the node.
        go = op.Constant(value=ir.tensor(np.array(True)))
        return op["Loop"](trips, go, v_initial=(), body=body)

    return SimpleNamespace(
        keypoints_from_heatmaps=keypoints_from_heatmaps,
        translations={torch.ops.maskrcnn.keypoints_from_heatmaps.default: keypoints_from_heatmaps_onnx},
    )


def _loop_body(ir: Any, heatmaps: Any, corners: Any, cells: Any, pitch: Any, p: int, s: int) -> Any:
    """The ``Loop`` body graph ``(d, cond) -> (cond, keypoints (P, 3))`` for detection ``d``.

    It reads ``heatmaps (D, P, S, S)`` and the per-detection ``corners``,
    ``cells`` and ``pitch``, ``(D, 2)`` float32 as ``(x, y)``, from the
    enclosing graph, as ONNX subgraphs may.
    """
    tape = ir.tape.Tape()
    float32, int64 = ir.DataType.FLOAT, ir.DataType.INT64

    def node(op_type: str, *inputs: Any, **attributes: Any) -> Any:
        return tape.op(op_type, list(inputs), attributes=attributes or None)

    def f32(value: float) -> Any:
        return node("Constant", value=ir.tensor(np.asarray(value, dtype=np.float32)))

    def i64(value: int | list[int]) -> Any:
        return node("Constant", value=ir.tensor(np.asarray(value, dtype=np.int64)))

    def add(a: Any, b: Any) -> Any:
        return node("Add", a, b)

    def sub(a: Any, b: Any) -> Any:
        return node("Sub", a, b)

    def mul(a: Any, b: Any) -> Any:
        return node("Mul", a, b)

    # Keys' kernel, each float32 operation as in keypoint_head's _cubic_inner / _cubic_outer.
    a = BICUBIC_A

    def cubic_inner(x: Any) -> Any:  # ((A + 2) x - (A + 3)) x x + 1
        return add(mul(mul(sub(mul(x, f32(a + 2)), f32(a + 3)), x), x), f32(1.0))

    def cubic_outer(x: Any) -> Any:  # ((A x - 5A) x + 8A) x - 4A
        return sub(mul(add(mul(sub(mul(x, f32(a)), f32(5 * a)), x), f32(8 * a)), x), f32(4 * a))

    source = node("Range", i64(0), i64(s), i64(1))  # (S,) input sample indices

    def resize_matrix(size: Any, count: Any, *, transposed: bool) -> Any:
        """``bicubic_resize_matrices`` for one output size ``n``: ``(n, S)``, or ``(S, n)`` transposed."""
        dst = node("Cast", node("Range", i64(0), count, i64(1)), to=float32)  # (n,)
        # ``in_size / sizes`` in PyTorch is ``sizes.reciprocal() * in_size``, not a division.
        scale = mul(node("Reciprocal", size), f32(s))
        src = sub(mul(scale, add(dst, f32(0.5))), f32(0.5))
        first = node("Floor", src)
        t = sub(src, first)
        weights = (cubic_outer(add(t, f32(1.0))), cubic_inner(t), cubic_inner(sub(f32(1.0), t)),
                   cubic_outer(sub(f32(2.0), t)))
        start = node("Cast", first, to=int64)
        output_axis, sample_axis = (1, 0) if transposed else (0, 1)
        samples = node("Unsqueeze", source, i64([output_axis]))  # (1, S), or (S, 1) transposed
        # The taps first - 1 .. first + 2, clamped to the border, as one-hot rows weighted and
        # added in tap order, as scatter_add_ adds them: the same float32 sums.
        matrix = None
        for offset, weight in zip((-1, 0, 1, 2), weights, strict=True):
            tap = node("Clip", add(start, i64(offset)), i64(0), i64(s - 1))
            hit = node("Equal", node("Unsqueeze", tap, i64([sample_axis])), samples)
            term = node("Where", hit, node("Unsqueeze", weight, i64([sample_axis])), f32(0.0))
            matrix = term if matrix is None else add(matrix, term)
        return matrix

    index = ir.Value(name="d", type=ir.TensorType(int64), shape=ir.Shape([]))
    cond = ir.Value(name="cond_in", type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]))

    def pick(table: Any) -> tuple[Any, Any]:  # table[d, 0], table[d, 1]: scalars
        entry = node("Gather", table, index, axis=0)
        return node("Gather", entry, i64(0), axis=0), node("Gather", entry, i64(1), axis=0)

    width_f, height_f = pick(cells)
    width, height = node("Cast", width_f, to=int64), node("Cast", height_f, to=int64)
    resize_y = resize_matrix(height_f, height, transposed=False)  # (h, S)
    resize_x_t = resize_matrix(width_f, width, transposed=True)  # (S, w)
    maps = node("Gather", heatmaps, index, axis=0)  # (P, S, S)
    # (h, S) @ (P, S, S) @ (S, w) -> (P, h, w) -> (P, h * w), row-major as the eager argmax sees it
    maps = node("MatMul", node("MatMul", resize_y, maps), resize_x_t)
    flat = node("Reshape", maps, i64([p, -1]))
    position = node("ArgMax", flat, axis=1, keepdims=1, select_last_index=0)  # (P, 1): the first maximum
    score = node("GatherElements", flat, position, axis=1)
    cell_x = node("Cast", node("Mod", position, width), to=float32)
    cell_y = node("Cast", node("Div", position, width), to=float32)
    # Cells back to pixels as _decode: x0 + (i + 0.5) * (w / ceil(w)).
    pitch_x, pitch_y = pick(pitch)
    x0, y0 = pick(corners)
    x = add(mul(add(cell_x, f32(0.5)), pitch_x), x0)
    y = add(mul(add(cell_y, f32(0.5)), pitch_y), y0)
    keypoints = node("Concat", x, y, score, axis=1)  # (P, 3)
    # Typed outputs: with no detections the Loop makes its (0, P, 3) result from these.
    keypoints.type, keypoints.shape = ir.TensorType(float32), ir.Shape([p, 3])
    cond_out = node("Identity", cond)
    cond_out.type, cond_out.shape = cond.type, ir.Shape([])
    return ir.Graph([index, cond], [cond_out, keypoints], nodes=tape.nodes, name="keypoints_loop_body")
