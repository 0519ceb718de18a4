"""``detect_boxes``: the box head's inference on hand-made outputs."""

from __future__ import annotations

import math

import torch

from maskrcnn.model.box_head import detect_boxes
from maskrcnn.ops.boxes import BoxCoder

CODER = BoxCoder((10.0, 10.0, 5.0, 5.0))


def _logits(probabilities: list[list[float]]) -> torch.Tensor:
    """Class logits whose softmax is these rows (background first)."""
    return torch.tensor(probabilities).log()


def _detect(logits, deltas, proposals, sizes, **kw):
    settings = dict(box_coder=CODER, score_thresh=0.05, nms_thresh=0.5, detections_per_image=100,
                    min_box_size=1e-2)
    settings.update(kw)
    return detect_boxes(logits, deltas, proposals, sizes, **settings)


def test_zero_deltas_keep_proposals_with_per_class_scores_above_the_threshold() -> None:
    proposals = [torch.tensor([[10.0, 10.0, 30.0, 30.0], [50.0, 50.0, 70.0, 90.0]])]
    # 2 classes; RoI 0: class 0 at 0.7, class 1 at 0.2; RoI 1: class 1 at 0.9, class 0 at 0.04 (dropped).
    logits = _logits([[0.1, 0.7, 0.2], [0.06, 0.04, 0.9]])
    (det,) = _detect(logits, torch.zeros(2, 8), proposals, [(100, 100)])
    torch.testing.assert_close(det.scores, torch.tensor([0.9, 0.7, 0.2]))
    assert det.labels.tolist() == [1, 0, 1]
    torch.testing.assert_close(det.boxes, proposals[0][[1, 0, 0]])


def test_class_specific_deltas_move_each_class_box() -> None:
    proposals = [torch.tensor([[0.0, 0.0, 20.0, 10.0]])]
    deltas = torch.zeros(1, 8)
    deltas[0, 4:] = torch.tensor([10 * 0.5, 0.0, 5 * math.log(2.0), 0.0])  # class 1: shift x by w/2, double w
    logits = _logits([[0.2, 0.4, 0.4]])
    (det,) = _detect(logits, deltas, proposals, [(50, 50)])
    by_label = {int(label): box for label, box in zip(det.labels, det.boxes, strict=True)}
    torch.testing.assert_close(by_label[0], torch.tensor([0.0, 0.0, 20.0, 10.0]))
    # Centre 10 -> 20, width 20 -> 40: x from 0 to 40.
    torch.testing.assert_close(by_label[1], torch.tensor([0.0, 0.0, 40.0, 10.0]))


def test_boxes_are_clipped_nms_is_per_class_and_the_cap_applies() -> None:
    proposals = [torch.tensor([[0.0, 0.0, 40.0, 40.0], [1.0, 1.0, 41.0, 41.0], [-5.0, 30.0, 20.0, 80.0]])]
    logits = _logits([[0.1, 0.8, 0.1], [0.1, 0.6, 0.3], [0.3, 0.1, 0.6]])
    (det,) = _detect(logits, torch.zeros(3, 8), proposals, [(60, 50)])
    # RoIs 0 and 1 overlap (IoU 0.9): per class the lower of the two is suppressed.
    # Class 0: 0.8 (RoI 0) suppresses 0.6 (RoI 1), 0.1 (RoI 2) stays; class 1: 0.6 (RoI 2),
    # and 0.3 (RoI 1) suppresses 0.1 (RoI 0). Suppression never crosses classes: 0.6 of class 1 stays.
    pairs = list(zip(det.labels.tolist(), [round(s, 3) for s in det.scores.tolist()], strict=True))
    assert pairs == [(0, 0.8), (1, 0.6), (1, 0.3), (0, 0.1)]
    assert det.boxes[:, 0].min() >= 0 and det.boxes[:, 3].max() <= 60  # clipped to (H=60, W=50)
    (capped,) = _detect(logits, torch.zeros(3, 8), proposals, [(60, 50)], detections_per_image=2)
    torch.testing.assert_close(capped.scores, torch.tensor([0.8, 0.6]))


def test_images_of_a_batch_are_separate_and_empty_ones_give_empty_detections() -> None:
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.zeros(0, 4),
                 torch.tensor([[5.0, 5.0, 9.0, 9.0]])]
    logits = _logits([[0.1, 0.9, 0.0001], [0.5, 0.0001, 0.4999]])
    dets = _detect(logits, torch.zeros(2, 8), proposals, [(20, 20), (20, 20), (20, 20)])
    assert [len(d) for d in dets] == [1, 0, 1]
    assert dets[0].labels.tolist() == [0] and dets[2].labels.tolist() == [1]
    assert dets[1].boxes.shape == (0, 4)


def test_tiny_and_non_finite_boxes_are_dropped() -> None:
    proposals = [torch.tensor([[10.0, 10.0, 10.005, 20.0], [0.0, 0.0, 10.0, 10.0]])]
    deltas = torch.zeros(2, 4)
    deltas[1, 0] = float("nan")
    logits = _logits([[0.1, 0.9], [0.1, 0.9]])
    (det,) = _detect(logits, deltas, proposals, [(30, 30)])
    assert len(det) == 0
    (kept,) = _detect(logits, deltas, proposals, [(30, 30)], min_box_size=None)
    assert len(kept) == 1  # the 0.005-wide box, kept without a minimum size
