"""Keypoint R-CNN's head: heatmap decoding, training targets, the loss, and the detector with keypoints."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch.nn import functional as F

from maskrcnn.config import PRESETS, KeypointHeadConfig, ModelConfig, torchvision_keypoint_r50_fpn
from maskrcnn.model import build_model
from maskrcnn.model.keypoint_head import (
    KeypointHead,
    bicubic_resize_matrices,
    keypoint_cells,
    keypoint_heatmaps_to_xy,
    keypoint_loss,
    keypoint_targets,
)
from maskrcnn.structures import ImageBatch, RoISamples, Targets

S = 56  # heatmap side


pytestmark = pytest.mark.usefixtures("one_thread")


def _slow_decode(heatmaps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The definition, one box at a time: bicubic resize to ceil(box), argmax, cell centre back to pixels."""
    out = []
    sides = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1)  # float32, as the peers compute them
    for maps, (x0, y0), (w, h) in zip(heatmaps, boxes[:, :2], sides, strict=True):
        cw, ch = math.ceil(w), math.ceil(h)
        resized = F.interpolate(maps[:, None], size=(ch, cw), mode="bicubic", align_corners=False)[:, 0]
        score, pos = resized.flatten(1).max(dim=1)
        x = (pos % cw + 0.5) * (w / cw) + x0
        y = (pos // cw + 0.5) * (h / ch) + y0
        out.append(torch.stack((x, y, score), dim=1))
    return torch.stack(out)


# ---------------------------------------------------------------------------
# The head and decoding.


def test_head_shapes() -> None:
    head = KeypointHead(in_channels=8, conv_dims=(16, 16), num_keypoints=5)
    assert head(torch.randn(3, 8, 14, 14)).shape == (3, 5, 56, 56)
    assert head(torch.zeros(0, 8, 14, 14)).shape == (0, 5, 56, 56)


def test_single_peak_lands_on_its_pixel() -> None:
    heatmaps = torch.full((1, 2, S, S), -5.0)
    heatmaps[0, 0, 30, 12] = 7.0  # keypoint 0: row 30, column 12
    heatmaps[0, 1, 0, 55] = 3.0  # keypoint 1: the top-right cell
    # A 56 x 56 box: the resize is the identity and a cell is a pixel.
    kp = keypoint_heatmaps_to_xy(heatmaps, torch.tensor([[10.0, 20.0, 66.0, 76.0]]))
    assert kp.shape == (1, 2, 3)
    torch.testing.assert_close(kp[0, 0], torch.tensor([10 + 12.5, 20 + 30.5, 7.0]))
    torch.testing.assert_close(kp[0, 1], torch.tensor([10 + 55.5, 20 + 0.5, 3.0]))
    # A box twice as large: the peak's cell covers two pixels; the maximum is on one of them.
    kp = keypoint_heatmaps_to_xy(heatmaps[:, :1], torch.tensor([[10.0, 20.0, 122.0, 132.0]]))
    assert 10 + 2 * 12 <= kp[0, 0, 0] <= 10 + 2 * 13 and 20 + 2 * 30 <= kp[0, 0, 1] <= 20 + 2 * 31


def test_resize_matrices_are_bicubic_interpolation() -> None:
    image = torch.randn(1, 1, 7, 7)
    sizes = torch.tensor([3, 7, 19])
    matrices = bicubic_resize_matrices(7, sizes, 19)
    for m, n in zip(matrices, sizes.tolist(), strict=True):
        expected = F.interpolate(image, size=(n, n), mode="bicubic", align_corners=False)[0, 0]
        torch.testing.assert_close(m[:n] @ image[0, 0] @ m[:n].T, expected, atol=1e-5, rtol=1e-5)
        assert torch.all(m[n:] == 0)


def test_decoding_matches_the_per_box_definition() -> None:
    g = torch.Generator().manual_seed(0)
    n = 12
    heatmaps = 3 * torch.randn(n, 4, S, S, generator=g)
    x0y0 = 100 * torch.rand(n, 2, generator=g)
    sides = torch.cat((torch.tensor([[0.3, 0.7], [1.0, 1.0], [56.0, 56.0], [2.5, 80.2]]),
                       1 + 150 * torch.rand(n - 4, 2, generator=g)))
    boxes = torch.cat((x0y0, x0y0 + sides), dim=1)
    expected = _slow_decode(heatmaps, boxes)
    for chunk in (1 << 24, 1):  # one group, or one detection per group
        got = keypoint_heatmaps_to_xy(heatmaps, boxes, max_elements=chunk)
        torch.testing.assert_close(got[..., :2], expected[..., :2], atol=1e-4, rtol=0)
        torch.testing.assert_close(got[..., 2], expected[..., 2], atol=1e-3, rtol=1e-4)
    assert keypoint_heatmaps_to_xy(heatmaps[:0], boxes[:0]).shape == (0, 4, 3)


# ---------------------------------------------------------------------------
# Targets and loss.


def test_keypoint_cells_by_hand() -> None:
    roi = torch.tensor([[10.0, 20.0, 38.0, 48.0]])  # 28 x 28: two cells per pixel
    keypoints = torch.tensor([[
        [15.3, 30.9, 2.0],  # cell (row floor(10.9 * 2), col floor(5.3 * 2)) = (21, 10)
        [38.0, 48.0, 1.0],  # on the right and bottom edges: the last cell
        [9.0, 30.0, 2.0],  # left of the RoI
        [15.0, 30.0, 0.0],  # not labelled
    ]])  # fmt: skip
    index, valid = keypoint_cells(keypoints, roi, S)
    assert valid.tolist() == [[True, True, False, False]]
    assert index.tolist() == [[21 * S + 10, 55 * S + 55, 0, 0]]


def test_keypoint_targets_follow_the_matched_instance() -> None:
    # Two instances; the one positive RoI is matched to the second, the other RoI is background.
    kps = torch.zeros((2, 3, 3))
    kps[1, 0] = torch.tensor([20.5, 25.5, 2.0])
    targets = Targets(torch.tensor([[0.0, 0.0, 8.0, 8.0], [20.0, 20.0, 48.0, 48.0]]), torch.tensor([0, 0]),
                      keypoints=kps)
    samples = RoISamples(
        boxes=torch.tensor([[20.0, 20.0, 48.0, 48.0], [0.0, 0.0, 5.0, 5.0]]),
        classes=torch.tensor([1, 0]),
        gt_index=torch.tensor([1, 0]),
        box_targets=torch.zeros((2, 4)),
    )
    index, valid = keypoint_targets([samples], [targets], size=S, num_keypoints=3)
    assert index.shape == valid.shape == (1, 3)
    assert valid.tolist() == [[True, False, False]]
    assert index[0, 0] == 11 * S + 1  # (25.5 - 20) * 2 = 11, (20.5 - 20) * 2 = 1
    # No keypoint annotations at all: the positive RoI has nothing to learn.
    bare = Targets(targets.boxes, targets.labels)
    index, valid = keypoint_targets([samples], [bare], size=S, num_keypoints=3)
    assert valid.shape == (1, 3) and not valid.any()


def test_loss_is_the_cross_entropy_of_visible_keypoints() -> None:
    heatmaps = torch.tensor([
        [[[1.0, 2.0], [3.0, 4.0]], [[9.0, 0.0], [0.0, 0.0]]],  # RoI 0: keypoint 0 in cell 3; 1 unseen
        [[[0.0, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, -1.0]]],  # RoI 1: keypoint 1 in cell 0
    ], requires_grad=True)  # fmt: skip
    index = torch.tensor([[3, 1], [0, 0]])
    valid = torch.tensor([[True, False], [False, True]])
    loss = keypoint_loss(heatmaps, index, valid)
    ce0 = math.log(math.exp(1) + math.exp(2) + math.exp(3) + math.exp(4)) - 4
    ce1 = math.log(math.exp(2) + 2 + math.exp(-1)) - 2
    assert loss.item() == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    loss.backward()
    # Invisible keypoints (and the unseen slot's logits) get no gradient.
    assert torch.all(heatmaps.grad[0, 1] == 0) and torch.all(heatmaps.grad[1, 0] == 0)
    assert heatmaps.grad[0, 0].abs().sum() > 0


def test_loss_without_visible_keypoints_is_zero_with_gradients() -> None:
    heatmaps = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = keypoint_loss(heatmaps, torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(heatmaps.grad == 0)


# ---------------------------------------------------------------------------
# Config and the detector.


def test_keypoint_config_round_trips_through_json() -> None:
    cfg = torchvision_keypoint_r50_fpn()
    assert cfg.keypoint_head is not None and cfg.keypoint_head.heatmap_size == 56
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert ModelConfig().keypoint_head is None
    assert ModelConfig.from_dict(json.loads(json.dumps(ModelConfig().to_dict()))) == ModelConfig()
    assert PRESETS["r50-fpn-keypoints"].model == cfg
    with pytest.raises(ValueError, match="keypoint pair"):
        KeypointHeadConfig(num_keypoints=3, keypoint_names=(), flip_pairs=((1, 3),), skeleton=())


def test_keypoint_model_losses_and_predictions() -> None:
    cfg = PRESETS["r50-fpn-keypoints"].model
    cfg = cfg.replace(input=dataclasses.replace(cfg.input, min_size=64, max_size=96, train_min_sizes=(64,)))
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = ImageBatch(torch.randn(1, 3, 64, 96), [(64, 96)], [(128, 192)])
    keypoints = torch.zeros((1, 17, 3))
    keypoints[0, :5] = torch.tensor([[30.5, 15.5, 2], [40.5, 20.5, 2], [50.5, 25.5, 1], [60.5, 30.5, 2],
                                     [70.5, 35.5, 0]])
    target = Targets(torch.tensor([[20.0, 10.0, 80.0, 50.0]]), torch.tensor([0]), keypoints=keypoints, seed=0)
    losses = model.loss(batch, [target])
    assert set(losses) == {"loss_rpn_objectness", "loss_rpn_box", "loss_classifier", "loss_box",
                           "loss_keypoint"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_keypoint"] > 0
    losses["loss_keypoint"].backward()
    assert model.keypoint.head.predictor.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        model.box.head.cls_score.bias.copy_(torch.tensor([-4.0, 4.0]))  # some confident detections
    (det,) = model.predict(batch)
    assert len(det) > 0 and det.masks is None
    assert det.keypoints is not None and det.keypoints.shape == (len(det), 17, 3)
    # Decoded keypoints lie in their boxes (widened to 1 input pixel, 2 original ones), and both
    # are in the original image's pixels (2x the input).
    x, y = det.keypoints[..., 0], det.keypoints[..., 1]
    b = det.boxes[:, None]
    right = b[..., 0] + (b[..., 2] - b[..., 0]).clamp(min=2)
    bottom = b[..., 1] + (b[..., 3] - b[..., 1]).clamp(min=2)
    assert torch.all((x >= b[..., 0] - 1e-3) & (x <= right + 1e-3))
    assert torch.all((y >= b[..., 1] - 1e-3) & (y <= bottom + 1e-3))
    assert det[torch.tensor([0])].keypoints.shape == (1, 17, 3)
    (same,) = model.predict(ImageBatch(batch.tensor, [(64, 96)], [(64, 96)]))
    torch.testing.assert_close(det.keypoints[..., :2], 2 * same.keypoints[..., :2])
    torch.testing.assert_close(det.keypoints[..., 2], same.keypoints[..., 2])
