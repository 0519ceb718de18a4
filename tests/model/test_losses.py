"""The training losses: the detector's loss contract, images without objects, mask targets, mask loss.

The detector is the CPU demo architecture (ResNet-18-FPN, group norm) on
64 x 64 inputs with three classes, so a loss and its backward take a fraction
of a second.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch.nn import functional as F

from maskrcnn.config import demo_model
from maskrcnn.model import MaskRCNN, build_model
from maskrcnn.model.box_head import box_head_loss, sample_rois
from maskrcnn.model.mask_head import mask_loss, mask_targets
from maskrcnn.model.rpn import RPNOutput, rpn_loss
from maskrcnn.ops.boxes import BoxCoder
from maskrcnn.ops.matching import BalancedSampler
from maskrcnn.structures import Detections, ImageBatch, RoISamples, Targets

LOSS_KEYS = {"loss_rpn_objectness", "loss_rpn_box", "loss_classifier", "loss_box", "loss_mask"}
# Detectron2's binarised targets, on a 28 x 28 grid.
D2 = {"size": 28, "rule": "detectron2"}
NUM_CLASSES = 3
SIDE = 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> MaskRCNN:
    torch.manual_seed(0)
    return build_model(demo_model().replace(num_classes=NUM_CLASSES))


def _box_targets(boxes: list[list[int]], labels: list[int], seed: int | None, side: int = SIDE) -> Targets:
    """Targets whose masks fill their boxes (integer pixel edges)."""
    masks = torch.zeros((len(boxes), side, side), dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = 1
    return Targets(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.int64),
        masks=masks,
        seed=seed,
    )


def _empty_targets(seed: int | None, side: int = SIDE) -> Targets:
    return Targets(
        boxes=torch.zeros((0, 4)),
        labels=torch.zeros((0,), dtype=torch.int64),
        masks=torch.zeros((0, side, side), dtype=torch.uint8),
        seed=seed,
    )


def _batch(n: int, seed: int = 0) -> ImageBatch:
    g = torch.Generator().manual_seed(seed)
    return ImageBatch(torch.randn(n, 3, SIDE, SIDE, generator=g), [(SIDE, SIDE)] * n, [(SIDE, SIDE)] * n)


def _snapshot(t: Targets) -> Targets:
    return Targets(t.boxes.clone(), t.labels.clone(), None if t.masks is None else t.masks.clone(),
                   None, t.crowd_boxes.clone(), t.seed)


def _assert_same_targets(a: Targets, b: Targets) -> None:
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.masks, b.masks) and torch.equal(a.crowd_boxes, b.crowd_boxes)
    assert a.seed == b.seed


# ------------------------------------------------------------------ the contract


def test_loss_contract_keys_finite_gradients_and_inputs_untouched(model: MaskRCNN):
    batch = _batch(2)
    targets = [
        _box_targets([[8, 8, 40, 40], [30, 20, 60, 50]], [0, 2], seed=11),
        _box_targets([[4, 10, 30, 60]], [1], seed=12),
    ]
    batch_before = batch.tensor.clone()
    sizes_before = (list(batch.image_sizes), list(batch.original_sizes))
    targets_before = [_snapshot(t) for t in targets]

    model.zero_grad(set_to_none=True)
    losses = model.loss(batch, targets)
    assert set(losses) == LOSS_KEYS
    for name, value in losses.items():
        assert value.shape == (), name
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value), name
        assert value.item() >= 0, name
    # Ground truth everywhere: every term is active.
    assert all(v.item() > 0 for v in losses.values()), losses
    sum(losses.values()).backward()

    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable, "the demo model trains every layer (freeze_at=0)"
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    nonfinite = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not nonfinite, nonfinite

    assert torch.equal(batch.tensor, batch_before)
    assert (batch.image_sizes, batch.original_sizes) == sizes_before
    for t, before in zip(targets, targets_before, strict=True):
        _assert_same_targets(t, before)


def test_forward_is_loss(model: MaskRCNN):
    batch = _batch(1, seed=3)
    targets = [_box_targets([[10, 12, 50, 44]], [2], seed=5)]
    a = model(batch, targets)
    b = model.loss(batch, targets)
    assert set(a) == LOSS_KEYS
    for k in LOSS_KEYS:
        assert torch.equal(a[k], b[k]), k


def test_loss_is_reproducible_with_target_seeds(model: MaskRCNN):
    batch = _batch(2, seed=1)
    targets = [_box_targets([[8, 8, 40, 40]], [0], seed=21), _box_targets([[20, 4, 60, 36]], [1], seed=22)]
    torch.manual_seed(1)
    a = model.loss(batch, targets)
    torch.manual_seed(2)  # the global RNG plays no part when every image has a seed
    b = model.loss(batch, targets)
    for k in LOSS_KEYS:
        assert torch.equal(a[k], b[k]), k


def test_images_without_ground_truth(model: MaskRCNN):
    batch = _batch(2, seed=2)
    targets = [_empty_targets(seed=1), _empty_targets(seed=2)]
    model.zero_grad(set_to_none=True)
    losses = model.loss(batch, targets)
    assert set(losses) == LOSS_KEYS
    for key in ("loss_rpn_box", "loss_box", "loss_mask"):
        assert losses[key].item() == 0.0, key
    for key in ("loss_rpn_objectness", "loss_classifier"):
        assert losses[key].item() > 0, key
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
    # The mask loss is an exact zero that still reaches the mask head.
    assert all(p.grad is not None for p in model.mask.head.parameters())


def test_mixed_batch_with_one_empty_image(model: MaskRCNN):
    batch = _batch(2, seed=4)
    targets = [_empty_targets(seed=1), _box_targets([[8, 8, 40, 40]], [0], seed=2)]
    losses = model.loss(batch, targets)
    assert set(losses) == LOSS_KEYS
    assert all(torch.isfinite(v) and v.item() > 0 for v in losses.values()), losses


def test_predict_one_detections_per_image_with_consistent_lengths():
    torch.manual_seed(0)
    model = build_model(demo_model().replace(num_classes=NUM_CLASSES))
    # Push the classifier towards foreground so that random weights detect something.
    with torch.no_grad():
        model.box.head.cls_score.bias.copy_(torch.tensor([-4.0] + [2.0] * NUM_CLASSES))
    model.eval()
    g = torch.Generator().manual_seed(0)
    # Network input 64 x 64 (and 64 x 48 in a 64 x 64 padded batch), user images of other sizes.
    tensor = torch.randn(2, 3, SIDE, SIDE, generator=g)
    batch = ImageBatch(tensor, [(SIDE, SIDE), (SIDE, 48)], [(96, 80), (50, 37)])
    before = tensor.clone()
    results = model.predict(batch)
    assert torch.equal(batch.tensor, before)
    assert isinstance(results, list) and len(results) == 2
    assert sum(len(d) for d in results) > 0, "the pushed classifier should give detections"
    for det, (h, w) in zip(results, batch.original_sizes, strict=True):
        assert isinstance(det, Detections)
        d = len(det)
        assert det.boxes.shape == (d, 4)
        assert det.scores.shape == (d,)
        assert det.labels.shape == (d,) and det.labels.dtype == torch.int64
        assert det.masks is not None and det.masks.shape == (d, h, w)
        assert det.masks.dense().dtype == torch.bool
        assert ((det.labels >= 0) & (det.labels < NUM_CLASSES)).all()
        assert ((det.scores >= 0) & (det.scores <= 1)).all()
        assert d <= model.box.detections_per_image


# ------------------------------------------------------------------ the pieces, by hand


def test_rpn_loss_with_zero_logits_and_no_ground_truth():
    # 10 x 10 anchors on a grid; zero logits give BCE log 2 whatever the labels.
    xs = torch.arange(10.0) * 10
    anchors = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), dim=-1).reshape(-1, 2)
    anchors = torch.cat((anchors, anchors + 10), dim=1)  # (100, 4)
    logits = torch.zeros(1, 100, requires_grad=True)
    deltas = torch.zeros(1, 100, 4, requires_grad=True)
    losses = rpn_loss(
        RPNOutput(logits, deltas, [anchors]), [_empty_targets(seed=0)],
        box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0)),
        sampler=BalancedSampler(0.7, 0.3, 32, 0.5, allow_low_quality_matches=True), smooth_l1_beta=1 / 9,
    )
    assert losses["loss_rpn_box"].item() == 0.0
    assert losses["loss_rpn_objectness"].item() == pytest.approx(math.log(2), rel=1e-6)
    sum(losses.values()).backward()
    # 32 sampled anchors (all background), each weighing 1/32 of d(BCE)/dz = sigmoid(0) - 0.
    assert int((logits.grad != 0).sum()) == 32
    torch.testing.assert_close(logits.grad[logits.grad != 0], torch.full((32,), 0.5 / 32))


def test_sample_rois_always_has_the_ground_truth_as_positives():
    gt = _box_targets([[10, 10, 30, 30], [40, 40, 60, 60]], [2, 0], seed=3)
    samples = sample_rois(
        [torch.zeros((0, 4))], [gt], box_coder=BoxCoder((10.0, 10.0, 5.0, 5.0)),
        sampler=BalancedSampler(0.5, 0.5, 16, 0.25),
    )
    (s,) = samples
    assert isinstance(s, RoISamples) and len(s) == 2
    order = s.gt_index.tolist()
    assert sorted(order) == [0, 1]
    assert torch.equal(s.boxes, gt.boxes[s.gt_index])
    assert s.classes.tolist() == [gt.labels[i].item() + 1 for i in order]  # label + 1: 0 is background
    assert torch.equal(s.box_targets, torch.zeros(2, 4))  # each gt box regresses onto itself


def test_box_head_loss_by_hand():
    # Two images, R = 3 + 2 RoIs, K = 2; zero logits -> cross-entropy log(3) per RoI.
    samples = [
        RoISamples(torch.zeros(3, 4), torch.tensor([2, 0, 0]), torch.zeros(3, dtype=torch.int64),
                   torch.tensor([[0.5, 0.0, 0.0, 0.0], [0.0] * 4, [0.0] * 4])),
        RoISamples(torch.zeros(2, 4), torch.tensor([1, 0]), torch.zeros(2, dtype=torch.int64),
                   torch.tensor([[0.0, 0.0, 2.0, 0.0], [0.0] * 4])),
    ]
    logits = torch.zeros(5, 3)
    deltas = torch.zeros(5, 8)
    deltas[0, 0:4] = 9.0  # class 1's deltas of a class-2 RoI: must not count
    losses = box_head_loss(logits, deltas, samples, smooth_l1_beta=0.0)
    assert losses["loss_classifier"].item() == pytest.approx(math.log(3), rel=1e-6)
    # L1 over the positives' own-class deltas (|0 - 0.5| + |0 - 2|), divided by all 5 RoIs.
    assert losses["loss_box"].item() == pytest.approx(2.5 / 5, rel=1e-6)


# ------------------------------------------------------------------ mask targets


def _samples(boxes: list[list[float]], gt_index: list[int], classes: list[int] | None = None) -> RoISamples:
    n = len(boxes)
    return RoISamples(
        boxes=torch.tensor(boxes, dtype=torch.float32),
        classes=torch.tensor(classes if classes is not None else [1] * n),
        gt_index=torch.tensor(gt_index),
        box_targets=torch.zeros(n, 4),
    )


def _mask_image(*rects: tuple[int, int, int, int], side: int = SIDE) -> torch.Tensor:
    """``(side, side)`` uint8 with ones in the given ``(row0, row1, col0, col1)`` (inclusive) rectangles."""
    m = torch.zeros((side, side), dtype=torch.uint8)
    for r0, r1, c0, c1 in rects:
        m[r0 : r1 + 1, c0 : c1 + 1] = 1
    return m


def _targets_with_masks(masks: list[torch.Tensor]) -> Targets:
    return Targets(boxes=torch.zeros((len(masks), 4)), labels=torch.zeros(len(masks), dtype=torch.int64),
                   masks=torch.stack(masks))


def test_mask_target_of_the_objects_own_box_is_all_ones():
    # Ones in rows 8..23, cols 16..47: box (16, 8, 48, 24). RoIAlign (aligned, adaptive) samples
    # x at 15.5 + (q + (i + 0.5) / 2) * 32 / 28: the outermost samples fall 0.79 px inside the
    # first and last columns, interpolating to 0.79; every bin averages >= 0.89 along x and
    # >= 0.79 along y (one sample per bin there), so the product is >= 0.70 > 0.5 everywhere.
    mask = _mask_image((8, 23, 16, 47))
    out = mask_targets([_samples([[16.0, 8.0, 48.0, 24.0]], [0])], [_targets_with_masks([mask])], **D2)
    assert out.shape == (1, 28, 28) and out.dtype == torch.bool
    assert out.all()


def test_mask_target_of_a_roi_twice_as_wide_is_left_half_ones():
    # Ones in rows 8..23, cols 16..31: box (16, 8, 32, 24); the RoI (16, 8, 48, 24) is twice as wide.
    # Along x, bins are 8/7 px with 2 samples each at 15.5 + (8q + 2)/7 and 15.5 + (8q + 6)/7.
    #   q = 13: samples at 30.64 (value 1) and 31.21 (between col 31 = 1 and 32 = 0: 0.79) -> 0.89
    #   q = 14: samples at 31.79 (0.21) and 32.36 (0) -> 0.11
    # so columns 0..13 are ones and 14..27 zeros; along y every bin is >= 0.79 (previous test).
    mask = _mask_image((8, 23, 16, 31))
    out = mask_targets([_samples([[16.0, 8.0, 48.0, 24.0]], [0])], [_targets_with_masks([mask])], **D2)[0]
    expected = torch.zeros(28, 28, dtype=torch.bool)
    expected[:, :14] = True
    assert torch.equal(out, expected)


def test_mask_target_with_one_pixel_bins_is_an_exact_crop():
    # A 28 x 28 RoI has 1-px bins and one sample per bin at x0 - 0.5 + q + 0.5 = x0 + q: the
    # pixel centres themselves, so the target is the mask cropped to the RoI, pixel for pixel.
    mask = _mask_image((8, 23, 16, 31))
    out = mask_targets([_samples([[10.0, 3.0, 38.0, 31.0]], [0])], [_targets_with_masks([mask])], **D2)[0]
    assert torch.equal(out, mask[3:31, 10:38].bool())


def test_mask_target_of_an_l_shape_is_an_l():
    # An L: a vertical bar (rows 8..47, cols 8..19) and a foot (rows 36..47, cols 8..43), edges on
    # even pixels. A 56 x 56 RoI at the origin gives 2-px bins with 2 samples per axis at pixel
    # centres 2q and 2q + 1, so each target pixel is the mean of a 2 x 2 block: 0 or 1.
    mask = _mask_image((8, 47, 8, 19), (36, 47, 8, 43))
    out = mask_targets([_samples([[0.0, 0.0, 56.0, 56.0]], [0])], [_targets_with_masks([mask])], **D2)[0]
    expected = torch.zeros(28, 28, dtype=torch.bool)
    expected[4:24, 4:10] = True  # the bar
    expected[18:24, 4:22] = True  # the foot
    assert torch.equal(out, expected)
    # Not symmetric: the transposed L is a different target.
    assert not torch.equal(out, expected.T)


def test_mask_targets_use_each_rois_matched_instance_in_order():
    top = _mask_image((0, 13, 0, 27))
    left = _mask_image((0, 27, 0, 13))
    # Image 0 has instances [top, left]; image 1 has [left]. Only positive RoIs get targets.
    samples = [
        _samples([[0.0, 0.0, 28.0, 28.0]] * 3, [1, 0, 0], classes=[2, 1, 0]),
        _samples([[0.0, 0.0, 28.0, 28.0]], [0], classes=[3]),
    ]
    out = mask_targets(samples, [_targets_with_masks([top, left]), _targets_with_masks([left])], **D2)
    assert out.shape == (3, 28, 28)
    for got, want in zip(out, [left, top, left], strict=True):
        assert torch.equal(got, want[:28, :28].bool())


def test_mask_targets_without_positives_are_empty():
    samples = [_samples([[0.0, 0.0, 28.0, 28.0]], [0], classes=[0])]
    out = mask_targets(samples, [_targets_with_masks([_mask_image((0, 5, 0, 5))])], **D2)
    assert out.shape == (0, 28, 28)


# ------------------------------------------------------------------ mask loss


def test_mask_loss_by_hand_on_a_2x2_example():
    # One RoI of class 2 (of K = 2): only channel 1 counts.
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
    logits[0, 0] = torch.tensor([[5.0, -5.0], [7.0, 1.0]])
    target = torch.tensor([[[1, 0], [0, 1]]], dtype=torch.bool)
    expected = (
        math.log(2)  # target 1 at logit 0: -log sigmoid(0)
        + math.log(1 + math.exp(2))  # target 0 at logit 2: -log(1 - sigmoid(2))
        + math.log(1 + math.exp(-1))  # target 0 at logit -1
        + math.log(1 + math.exp(-3))  # target 1 at logit 3
    ) / 4
    loss = mask_loss(logits, torch.tensor([2]), target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_mask_loss_uses_only_the_ground_truth_class_channel():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 28, 28, generator=g, requires_grad=True)
    classes = torch.tensor([1, 3, 2, 3])
    targets = torch.rand(4, 28, 28, generator=g) > 0.5
    loss = mask_loss(logits, classes, targets)

    other = logits.detach().clone()
    own = torch.zeros(4, 3, dtype=torch.bool)
    own[torch.arange(4), classes - 1] = True
    other[~own] = torch.randn(int((~own).sum()), 28, 28, generator=g) * 10
    assert mask_loss(other, classes, targets).item() == loss.item()

    loss.backward()
    assert (logits.grad[~own] == 0).all()
    assert (logits.grad[own] != 0).any()
    # The same as averaging the per-pixel sigmoid cross-entropy of the own channels.
    reference = F.binary_cross_entropy_with_logits(logits.detach()[own], targets.float())
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)


def test_mask_loss_without_positives_is_an_exact_zero_with_gradient():
    logits = torch.randn(0, 3, 28, 28, requires_grad=True)
    loss = mask_loss(logits, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 28, 28, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None


def test_loss_does_not_change_model_state(model: MaskRCNN):
    state = copy.deepcopy(model.state_dict())
    model.loss(_batch(1), [_box_targets([[8, 8, 40, 40]], [0], seed=1)])
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_softmax_mask_loss_by_hand() -> None:
    from maskrcnn.model.mask_head import mask_loss

    # One RoI of class 2 (of K = 2), a 1x2 mask: pixel 0 inside, pixel 1 outside.
    # Channels: background, class 1, class 2.
    logits = torch.tensor([[[[0.0, 1.0]], [[2.0, 0.0]], [[1.0, -1.0]]]])
    targets = torch.tensor([[[1, 0]]], dtype=torch.uint8)
    # Pixel 0 targets class 2 (channel 2); pixel 1 targets background (channel 0).
    p0 = -math.log(math.exp(1.0) / (math.exp(0.0) + math.exp(2.0) + math.exp(1.0)))
    p1 = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(0.0) + math.exp(-1.0)))
    loss = mask_loss(logits, torch.tensor([2]), targets, "softmax")
    assert float(loss) == pytest.approx((p0 + p1) / 2, rel=1e-6)


def test_class_agnostic_mask_loss_by_hand() -> None:
    from maskrcnn.model.mask_head import mask_loss

    logits = torch.tensor([[[[0.5, -1.0]]], [[[2.0, 0.0]]]])  # two RoIs, one mask channel
    targets = torch.tensor([[[1, 0]], [[0, 1]]], dtype=torch.uint8)

    def bce(z: float, t: int) -> float:
        p = 1 / (1 + math.exp(-z))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    expected = (bce(0.5, 1) + bce(-1.0, 0) + bce(2.0, 0) + bce(0.0, 1)) / 4
    # The class does not matter: one mask serves every class.
    for classes in ([1, 3], [2, 2]):
        loss = mask_loss(logits, torch.tensor(classes), targets, "class_agnostic")
        assert float(loss) == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------ images without instances, every variant


def _assert_negative_losses(losses: dict[str, torch.Tensor], zero: tuple[str, ...]) -> None:
    assert all(torch.isfinite(v) for v in losses.values()), losses
    for key in zero:
        assert losses[key].item() == 0.0, key
    for key in ("loss_rpn_objectness", "loss_classifier"):
        assert losses[key].item() > 0, key


def _assert_finite_gradients(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


def test_crowd_only_images_are_negatives(model: MaskRCNN):
    # No instance, one crowd region each: what a COCO image with only iscrowd annotations gives.
    targets = [_empty_targets(seed=1), _empty_targets(seed=2)]
    targets[0].crowd_boxes = torch.tensor([[4.0, 4.0, 40.0, 40.0]])
    targets[1].crowd_boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0]])  # covers the whole image
    model.zero_grad(set_to_none=True)
    losses = model.loss(_batch(2, seed=5), targets)
    _assert_negative_losses(losses, ("loss_rpn_box", "loss_box", "loss_mask"))
    sum(losses.values()).backward()
    _assert_finite_gradients(model)


def test_empty_images_without_masks_or_keypoints_fields(model: MaskRCNN):
    # Targets built by hand with no mask tensor at all: the mask loss is still an exact 0.
    targets = [Targets(torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64), seed=3)]
    losses = model.loss(_batch(1, seed=6), targets)
    _assert_negative_losses(losses, ("loss_rpn_box", "loss_box", "loss_mask"))


def test_keypoint_model_on_images_without_instances():
    from maskrcnn.config import KeypointHeadConfig, PoolerConfig

    torch.manual_seed(0)
    head = KeypointHeadConfig(pooler=PoolerConfig(resolution=7), conv_dims=(16, 16), num_keypoints=4,
                              keypoint_names=(), flip_pairs=(), skeleton=())
    kp_model = build_model(demo_model().replace(num_classes=1, keypoint_head=head))
    empty = [_empty_targets(seed=1), _empty_targets(seed=2)]
    empty[0].keypoints = torch.zeros((0, 4, 3))  # as the datasets give it; the other has none
    kp_model.zero_grad(set_to_none=True)
    losses = kp_model.loss(_batch(2, seed=7), empty)
    assert set(losses) == LOSS_KEYS | {"loss_keypoint"}
    _assert_negative_losses(losses, ("loss_rpn_box", "loss_box", "loss_mask", "loss_keypoint"))
    sum(losses.values()).backward()
    _assert_finite_gradients(kp_model)
    # The exact zero still reaches the keypoint head (data-parallel training needs every parameter used).
    assert all(p.grad is not None for p in kp_model.keypoint.head.parameters())


def test_rpn_loss_when_every_anchor_is_ignored():
    # Anchors all inside a crowd region of an image without instances: nothing is sampled.
    anchors = torch.tensor([[10.0, 10.0, 20.0, 20.0], [12.0, 12.0, 18.0, 30.0]])
    logits = torch.zeros(1, 2, requires_grad=True)
    deltas = torch.zeros(1, 2, 4, requires_grad=True)
    crowd = dataclasses.replace(_empty_targets(seed=0), crowd_boxes=torch.tensor([[0.0, 0.0, 64.0, 64.0]]))
    losses = rpn_loss(
        RPNOutput(logits, deltas, [anchors]), [crowd], box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0)),
        sampler=BalancedSampler(0.7, 0.3, 32, 0.5, allow_low_quality_matches=True), smooth_l1_beta=1 / 9,
    )
    assert all(v.item() == 0.0 for v in losses.values()), losses
    sum(losses.values()).backward()
    assert torch.equal(logits.grad, torch.zeros(1, 2))


def test_sample_rois_without_proposals_or_ground_truth():
    samples = sample_rois(
        [torch.zeros((0, 4)), torch.tensor([[1.0, 1.0, 9.0, 9.0], [2.0, 2.0, 30.0, 30.0]])],
        [_empty_targets(seed=1), _empty_targets(seed=2)], box_coder=BoxCoder((10.0, 10.0, 5.0, 5.0)),
        sampler=BalancedSampler(0.5, 0.5, 16, 0.25),
    )
    assert [len(s) for s in samples] == [0, 2]
    assert samples[1].classes.tolist() == [0, 0] and not samples[1].foreground.any()
    logits = torch.zeros(2, NUM_CLASSES + 1, requires_grad=True)
    deltas = torch.zeros(2, 4 * NUM_CLASSES, requires_grad=True)
    losses = box_head_loss(logits, deltas, samples, smooth_l1_beta=0.0)
    assert losses["loss_box"].item() == 0.0
    assert losses["loss_classifier"].item() == pytest.approx(math.log(NUM_CLASSES + 1), rel=1e-6)
    assert mask_targets(samples, [_empty_targets(1), _empty_targets(2)], **D2).shape == (0, 28, 28)


def test_unknown_mask_representation_is_refused() -> None:
    from maskrcnn.model.mask_head import mask_probabilities

    logits = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="unknown mask representation 'sigmod'"):
        mask_loss(logits, torch.tensor([1, 2]), torch.zeros(2, 4, 4), "sigmod")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown mask representation 'sigmod'"):
        mask_probabilities(logits, torch.tensor([0, 1]), "sigmod")  # type: ignore[arg-type]
