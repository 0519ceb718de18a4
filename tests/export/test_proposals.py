"""Dense proposal selection equals ``RPN.propose``, in PyTorch and exported to ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from maskrcnn.export.proposals import select_proposals
from maskrcnn.model.anchors import AnchorGenerator
from maskrcnn.model.rpn import RPN, RPNHead, RPNOutput, TopK
from maskrcnn.ops.boxes import BoxCoder
from maskrcnn.ops.matching import BalancedSampler

pytestmark = pytest.mark.usefixtures("one_thread")

STRIDES = (8, 16, 32)
CODER = BoxCoder((1.0, 1.0, 1.0, 1.0))


def _rpn(seed: int, min_box_size: float, strict: bool) -> RPN:
    torch.manual_seed(seed)
    anchors = AnchorGenerator(sizes=((32.0,), (64.0,), (128.0,)), aspect_ratios=(0.5, 1.0, 2.0),
                              strides=STRIDES, round_to_int=True)
    head = RPNHead(in_channels=16, num_anchors=3)
    with torch.no_grad():  # spread logits and deltas, and no exact ties between logits
        for conv in (head.conv, head.objectness, head.deltas):
            conv.weight.normal_(std=0.3)
            conv.bias.normal_(std=0.5)
    return RPN(head=head, anchor_generator=anchors, box_coder=CODER,
               sampler=BalancedSampler(0.7, 0.3, 256, 0.5), smooth_l1_beta=0.1, nms_thresh=0.7,
               min_box_size=min_box_size, min_box_size_strict=strict,
               train_topk=TopK(2000, 2000), test_topk=TopK(1000, 1000))


def _outputs(rpn: RPN, seed: int, height: int, width: int, images: int) -> RPNOutput:
    g = torch.Generator().manual_seed(seed)
    features = [torch.randn(images, 16, height // s, width // s, generator=g) for s in STRIDES]
    with torch.no_grad():
        return rpn(features, (height, width))


def _dense(out: RPNOutput, rpn: RPN, sizes: list[tuple[int, int]], topk: TopK):
    return select_proposals(out.logits, out.deltas, out.anchors, torch.tensor(sizes), box_coder=CODER,
                            pre_nms=topk.pre_nms, post_nms=topk.post_nms, nms_thresh=rpn.nms_thresh,
                            min_box_size=rpn.min_box_size, min_box_size_strict=rpn.min_box_size_strict)


def _assert_same(dense: tuple[torch.Tensor, ...], eager: list, atol: float = 1e-4) -> None:
    boxes, scores, valid = (torch.as_tensor(t) for t in dense)
    for i, want in enumerate(eager):
        count = len(want)
        assert int(valid[i].sum()) == count and bool(valid[i, :count].all())
        torch.testing.assert_close(boxes[i, :count], want.boxes, rtol=0, atol=atol)
        torch.testing.assert_close(scores[i, :count], want.scores, rtol=0, atol=1e-6)
        assert bool((scores[i, count:] == 0).all())


@pytest.mark.parametrize("topk", [TopK(50, 80), TopK(5, 100), TopK(200, 60)], ids=str)
@pytest.mark.parametrize(("min_box_size", "strict"), [(1e-3, False), (0.0, True), (6.0, False)])
def test_equals_rpn_propose(topk: TopK, min_box_size: float, strict: bool) -> None:
    rpn = _rpn(0, min_box_size, strict)
    for seed, (height, width) in enumerate([(64, 96), (96, 64), (128, 128)]):
        out = _outputs(rpn, seed, height, width, images=2)
        sizes = [(height - 7, width - 5), (height - 30, width - 20)]  # each image inside the padded batch
        _assert_same(_dense(out, rpn, sizes, topk), rpn.propose(out, sizes, topk))


def test_exported_to_onnxruntime_equals_rpn_propose(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="the deploy extra is not installed")
    from maskrcnn.export.onnx_ops import OPSET, export_ops

    rpn, topk = _rpn(1, 1e-3, False), TopK(40, 70)

    class Select(torch.nn.Module):
        def forward(self, logits, deltas, a0, a1, a2, sizes):  # noqa: ANN001, ANN202
            return _dense(RPNOutput(logits, deltas, [a0, a1, a2]), rpn, sizes, topk)

    def inputs(out: RPNOutput, sizes: list[tuple[int, int]]) -> tuple[torch.Tensor, ...]:
        return (out.logits, out.deltas, *out.anchors, torch.tensor(sizes))

    example = _outputs(rpn, 0, 64, 96, images=2)
    names = ["logits", "deltas", "a0", "a1", "a2", "sizes"]
    program = torch.onnx.export(
        Select(), inputs(example, [(60, 90), (50, 70)]), dynamo=True, opset_version=OPSET, input_names=names,
        custom_translation_table=export_ops().translations,
        dynamic_shapes={"logits": {0: "n", 1: "t"}, "deltas": {0: "n", 1: "t"}, "a0": {0: "t0"},
                        "a1": {0: "t1"}, "a2": {0: "t2"}, "sizes": {0: "n"}},
    )
    program.save(str(tmp_path / "proposals.onnx"))
    session = ort.InferenceSession(str(tmp_path / "proposals.onnx"), providers=["CPUExecutionProvider"])
    for seed, (height, width, images) in enumerate([(96, 128, 1), (64, 64, 3), (128, 96, 2)], start=1):
        out = _outputs(rpn, seed, height, width, images)
        sizes = [(height - 3 * i, width - 5 * i) for i in range(images)]
        feeds = {name: t.numpy() for name, t in zip(names, inputs(out, sizes), strict=True)}
        got = session.run(None, feeds)
        assert got[2].dtype == np.bool_
        _assert_same(tuple(got), rpn.propose(out, sizes, topk), atol=2e-4)
