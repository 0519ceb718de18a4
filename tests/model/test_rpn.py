"""``RPN.propose``: proposal selection on hand-made objectness and deltas; ``RPN.loss`` / ``predict``.

One level of stride 8 with a single 16x16 anchor per location, so anchor ``i``
of a ``(H, W)`` map is the square centred at ``(8 x, 8 y)``, row-major.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from maskrcnn.model.anchors import AnchorGenerator
from maskrcnn.model.rpn import RPN, RPNHead, RPNOutput, TopK, best_first
from maskrcnn.ops.boxes import BoxCoder
from maskrcnn.ops.matching import BalancedSampler
from maskrcnn.structures import ImageBatch, Targets


def _rpn(min_box_size: float = 1e-3, *, levels: int = 1) -> RPN:
    anchors = AnchorGenerator(sizes=((16.0,),) * levels, aspect_ratios=(1.0,), strides=(8, 16)[:levels],
                              round_to_int=False)
    return RPN(head=RPNHead(in_channels=1, num_anchors=1), anchor_generator=anchors,
               box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0)),
               sampler=BalancedSampler(0.7, 0.3, 256, 0.5, allow_low_quality_matches=True),
               smooth_l1_beta=1 / 9, nms_thresh=0.7, min_box_size=min_box_size, min_box_size_strict=False,
               train_topk=TopK(2000, 2000), test_topk=TopK(1000, 1000))


def _anchors(rpn: RPN, shapes: list[tuple[int, int]], padded: tuple[int, int]) -> list[torch.Tensor]:
    return rpn.anchor_generator(shapes, padded, torch.device("cpu"))


def test_zero_deltas_give_clipped_anchors_by_decreasing_objectness() -> None:
    rpn = _rpn()
    anchors = _anchors(rpn, [(2, 3)], (16, 24))
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0, 4.0]])
    (props,) = rpn.propose(RPNOutput(logits, torch.zeros(1, 6, 4), anchors), [(16, 24)], TopK(6, 6))
    # Anchors 8 px apart overlap with IoU 1/3 < 0.7: all six stay, ordered by score.
    torch.testing.assert_close(props.scores, torch.sigmoid(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, -1.0])))
    # Anchor 5 is centred at (16, 8): x 8..24, y 0..16 after clipping at the image's top.
    torch.testing.assert_close(props.boxes[0], torch.tensor([8.0, 0.0, 24.0, 16.0]))
    assert props.boxes[:, :2].min() >= 0 and props.boxes[:, 2].max() <= 24 and props.boxes[:, 3].max() <= 16


def test_pre_nms_top_k_is_per_level_and_post_nms_top_k_per_image() -> None:
    rpn = _rpn(levels=2)
    anchors = _anchors(rpn, [(2, 2), (1, 1)], (16, 16))
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0, -5.0]])  # level 0: four anchors; level 1: one
    deltas = torch.zeros(1, 5, 4)
    (props,) = rpn.propose(RPNOutput(logits, deltas, anchors), [(16, 16)], TopK(2, 10))
    # Two from level 0 (scores 4 and 3) and the only one of level 1, however low it scores.
    torch.testing.assert_close(props.scores, torch.sigmoid(torch.tensor([4.0, 3.0, -5.0])))
    (capped,) = rpn.propose(RPNOutput(logits, deltas, anchors), [(16, 16)], TopK(2, 1))
    assert len(capped) == 1


def test_nms_removes_near_duplicates_within_a_level() -> None:
    rpn = _rpn()
    anchors = _anchors(rpn, [(1, 2)], (16, 16))
    deltas = torch.zeros(1, 2, 4)
    deltas[0, 1, 0] = -7.0 / 16.0  # anchor 1 moved 7 px left: IoU with anchor 0 = 15/17 > 0.7
    logits = torch.tensor([[1.0, 2.0]])
    (props,) = rpn.propose(RPNOutput(logits, deltas, anchors), [(32, 32)], TopK(2, 2))
    assert len(props) == 1
    torch.testing.assert_close(props.scores, torch.sigmoid(torch.tensor([2.0])))


def test_each_image_of_a_batch_is_clipped_to_its_own_size_and_tiny_boxes_go() -> None:
    rpn = _rpn(min_box_size=4.0)
    anchors = _anchors(rpn, [(2, 2)], (16, 16))
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    a, b = rpn.propose(RPNOutput(logits, torch.zeros(2, 4, 4), anchors), [(16, 16), (6, 6)], TopK(4, 4))
    assert a.boxes[:, 2:].max() <= 16 and b.boxes[:, 2:].max() <= 6
    # In the 6x6 image the anchors at x = 8 or y = 8 clip to boxes under 4 px wide or high.
    assert len(a) == 4 and len(b) == 1
    torch.testing.assert_close(b.boxes, torch.tensor([[0.0, 0.0, 6.0, 6.0]]))


def test_non_finite_deltas_are_dropped() -> None:
    rpn = _rpn()
    anchors = _anchors(rpn, [(1, 2)], (16, 16))
    deltas = torch.zeros(1, 2, 4)
    deltas[0, 0, 0] = float("nan")
    (props,) = rpn.propose(RPNOutput(torch.tensor([[5.0, 1.0]]), deltas, anchors), [(16, 16)], TopK(2, 2))
    assert len(props) == 1 and torch.isfinite(props.boxes).all()
    torch.testing.assert_close(props.scores, torch.sigmoid(torch.tensor([1.0])))


def test_loss_uses_trainings_top_k_and_predict_inferences() -> None:
    anchors = AnchorGenerator(sizes=((16.0,),), aspect_ratios=(1.0,), strides=(8,), round_to_int=False)
    rpn = RPN(head=RPNHead(in_channels=2, num_anchors=1), anchor_generator=anchors,
              box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0)),
              sampler=BalancedSampler(0.7, 0.3, 16, 0.5, allow_low_quality_matches=True),
              smooth_l1_beta=1 / 9, nms_thresh=1.0, min_box_size=0.0, min_box_size_strict=False,
              train_topk=TopK(pre_nms=7, post_nms=5), test_topk=TopK(pre_nms=4, post_nms=3))
    torch.manual_seed(0)
    features = [torch.randn(1, 2, 6, 6)]  # 36 anchors, none suppressed (NMS threshold 1)
    batch = ImageBatch(torch.zeros(1, 3, 48, 48), [(48, 48)], [(48, 48)])
    target = Targets(torch.tensor([[8.0, 8.0, 24.0, 24.0]]), torch.tensor([0]))
    (train,), losses = rpn.loss(features, batch, [target])
    assert set(losses) == {"loss_rpn_objectness", "loss_rpn_box"}
    assert len(train) == 5
    (test,) = rpn.predict(features, batch)
    assert len(test) == 3
    # Inference's proposals are the best three of training's (same scores, fewer kept).
    torch.testing.assert_close(test.scores, train.scores[:3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_best_first_equals_the_full_stable_sort(dtype):
    """The top-k shortcut picks what a full stable sort's first k would, ties by index, over many rows."""
    generator = torch.Generator().manual_seed(0)
    for case in range(300):
        rows = int(torch.randint(0, 4, (), generator=generator))
        length = int(torch.randint(1, 3000, (), generator=generator))
        k = int(torch.randint(0, length + 50, (), generator=generator))
        levels = int(torch.randint(1, 40, (), generator=generator))  # few distinct values: many ties
        scores = (torch.randint(0, levels, (rows, length), generator=generator).to(torch.float32) / 7
                  + (0 if case % 2 else torch.randn(rows, length, generator=generator))).to(dtype)
        expected = scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
        assert torch.equal(best_first(scores, k), expected), (case, rows, length, k)


def test_best_first_with_nan_keeps_the_sort_order():
    scores = torch.tensor([[0.5, float("nan"), 0.5, 2.0, -1.0]])
    expected = scores.sort(dim=1, descending=True, stable=True).indices[:, :2]
    assert torch.equal(best_first(scores, 2), expected)


@pytest.mark.parametrize("channels_last", [False, True])
def test_head_equals_two_separate_convolutions_forward_and_backward(channels_last):
    """The fused 1x1 convolution gives the objectness and deltas (and gradients) of the two separate ones."""
    torch.manual_seed(0)
    head = RPNHead(in_channels=8, num_anchors=3)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    head = head.to(memory_format=fmt)
    features = [torch.randn(2, 8, h, w).contiguous(memory_format=fmt).requires_grad_()
                for h, w in ((6, 5), (3, 3))]
    logits, deltas = head(features)
    expect_logits, expect_deltas = [], []
    for x in features:
        t = torch.relu(head.conv(x))
        o, d = F.conv2d(t, head.objectness.weight, head.objectness.bias), F.conv2d(t, head.deltas.weight,
                                                                                  head.deltas.bias)
        expect_logits.append(o.permute(0, 2, 3, 1).reshape(2, -1))
        expect_deltas.append(d.view(2, 3, 4, *d.shape[2:]).permute(0, 3, 4, 1, 2).reshape(2, -1, 4))
    torch.testing.assert_close(logits, torch.cat(expect_logits, 1))
    torch.testing.assert_close(deltas, torch.cat(expect_deltas, 1))
    weights = torch.randn_like(logits), torch.randn_like(deltas)
    got = torch.autograd.grad((logits * weights[0]).sum() + (deltas * weights[1]).sum(),
                              [*features, head.objectness.weight, head.deltas.weight])
    want = torch.autograd.grad((torch.cat(expect_logits, 1) * weights[0]).sum()
                               + (torch.cat(expect_deltas, 1) * weights[1]).sum(),
                               [*features, head.objectness.weight, head.deltas.weight])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
