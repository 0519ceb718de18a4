"""Tests for maskrcnn.ops.nms against hand cases and a slow greedy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskrcnn.ops.nms import batched_nms, nms


def _reference_iou(boxes: np.ndarray) -> np.ndarray:
    """All-pairs IoU in float64 with numpy, written from the definition."""
    x0, y0, x1, y1 = (boxes[:, k].astype(np.float64) for k in range(4))
    iw = np.clip(np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None]), 0, None)
    ih = np.clip(np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None]), 0, None)
    inter = iw * ih
    area = (x1 - x0) * (y1 - y0)
    union = area[:, None] + area[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _reference_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    """Greedy NMS one box at a time: visit by decreasing score (earlier index first on ties)."""
    iou = _reference_iou(boxes.numpy())
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    suppressed = [False] * len(order)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order:
            if not suppressed[j] and j != i and iou[i, j] > threshold:
                suppressed[j] = True
    return keep


def _reference_batched(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, t: float
) -> list[int]:
    kept = []
    for g in sorted(set(groups.tolist())):
        idx = [i for i in range(len(groups)) if int(groups[i]) == g]
        kept += [idx[k] for k in _reference_nms(boxes[idx], scores[idx], t)]
    return sorted(kept, key=lambda i: (-float(scores[i]), i))


def _clustered_boxes(seed: int, n: int, clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes jittered around a few centres, so that many overlap, with distinct random scores."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(clusters, 2, generator=g) * 200
    sizes = torch.rand(clusters, 2, generator=g) * 40 + 10
    which = torch.randint(clusters, (n,), generator=g)
    c = centres[which] + torch.randn(n, 2, generator=g) * 4
    s = sizes[which] * (1 + 0.2 * torch.randn(n, 2, generator=g)).clamp(min=0.3)
    boxes = torch.cat((c - s / 2, c + s / 2), dim=1)
    scores = torch.rand(n, generator=g)
    return boxes, scores


def test_hand_case() -> None:
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # 0: score 0.9
            [1.0, 1.0, 11.0, 11.0],  # 1: IoU with 0 = 81 / 119 > 0.5 -> suppressed
            [5.0, 0.0, 15.0, 10.0],  # 2: IoU with 0 = 50 / 150 < 0.5 -> kept
            [50.0, 50.0, 60.0, 60.0],  # 3: disjoint, highest score
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    keep = nms(boxes, scores, 0.5)
    assert keep.dtype == torch.int64
    assert keep.tolist() == [3, 0, 2]
    # With a threshold above 81/119 nothing is suppressed.
    assert nms(boxes, scores, 0.7).tolist() == [3, 0, 1, 2]
    # With a threshold below 1/3, box 2 goes too.
    assert nms(boxes, scores, 0.3).tolist() == [3, 0]


def test_chain_is_greedy() -> None:
    # A > B > C by score. IoU(A, B) = IoU(B, C) = 70 / 130 > 0.5, IoU(A, C) = 40 / 160 < 0.5.
    # A suppresses B; C would be suppressed by B, but B is gone, so C stays.
    boxes = torch.tensor([[6.0, 0.0, 16.0, 10.0], [0.0, 0.0, 10.0, 10.0], [3.0, 0.0, 13.0, 10.0]])
    scores = torch.tensor([0.7, 0.9, 0.8])  # C, A, B
    assert nms(boxes, scores, 0.5).tolist() == [1, 0]


def test_long_chain() -> None:
    # Twenty boxes each shifted by 1 from the previous, decreasing scores:
    # IoU of neighbours 9/11 > 0.5, of boxes two apart 8/12 > 0.5, three apart 7/13 > 0.5,
    # four apart 6/14 < 0.5. Greedy keeps every fourth box.
    boxes = torch.tensor([[float(i), 0.0, i + 10.0, 10.0] for i in range(20)])
    scores = torch.linspace(1.0, 0.0, 20)
    assert nms(boxes, scores, 0.5).tolist() == [0, 4, 8, 12, 16]


@pytest.mark.parametrize(
    ("threshold", "seeds"), [(0.5, range(50)), (0.3, range(50, 60)), (0.7, range(60, 70))]
)
def test_matches_slow_reference_on_random_clusters(threshold: float, seeds: range) -> None:
    for seed in seeds:
        boxes, scores = _clustered_boxes(seed, 200, clusters=8)
        assert nms(boxes, scores, threshold).tolist() == _reference_nms(boxes, scores, threshold), seed


def test_ties_are_stable() -> None:
    # Identical boxes with equal scores: the earlier index is kept.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3 + [[20.0, 20.0, 30.0, 30.0]] * 2)
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.9])
    assert nms(boxes, scores, 0.5).tolist() == [4, 0]
    # Disjoint boxes with equal scores come out in index order.
    boxes = torch.tensor([[10.0 * i, 0.0, 10.0 * i + 5, 5.0] for i in range(6)])
    assert nms(boxes, torch.full((6,), 0.3), 0.5).tolist() == [0, 1, 2, 3, 4, 5]


def test_empty_input() -> None:
    keep = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64
    keep = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64


def test_inputs_not_mutated() -> None:
    boxes, scores = _clustered_boxes(0, 50, clusters=3)
    b, s = boxes.clone(), scores.clone()
    nms(boxes, scores, 0.5)
    assert torch.equal(boxes, b) and torch.equal(scores, s)


def test_batched_nms_small_matches_per_group_reference() -> None:
    for seed in range(10):
        boxes, scores = _clustered_boxes(100 + seed, 300, clusters=6)
        groups = torch.randint(5, (300,), generator=torch.Generator().manual_seed(seed))
        keep = batched_nms(boxes, scores, groups, 0.5)
        assert keep.tolist() == _reference_batched(boxes, scores, groups, 0.5), seed


def test_batched_nms_above_all_pairs_limit_matches_per_group_reference() -> None:
    # 5000 boxes > the 4096-box all-pairs limit: the group-by-group path.
    boxes, scores = _clustered_boxes(7, 5000, clusters=40)
    groups = torch.randint(7, (5000,), generator=torch.Generator().manual_seed(7))
    keep = batched_nms(boxes, scores, groups, 0.5)
    assert keep.tolist() == _reference_batched(boxes, scores, groups, 0.5)
    # Also equal to running nms on each group and merging by score.
    merged = []
    for g in range(7):
        idx = (groups == g).nonzero(as_tuple=True)[0]
        merged.append(idx[nms(boxes[idx], scores[idx], 0.5)])
    merged = torch.cat(merged)
    merged = merged[torch.sort(scores[merged], descending=True, stable=True).indices]
    assert keep.tolist() == merged.tolist()


@pytest.mark.parametrize("copies", [3, 600])
def test_batched_nms_groups_never_suppress_each_other(copies: int) -> None:
    # The same box in seven groups: one survivor per group. 7 x 600 = 4200 boxes
    # exercises the group-by-group path, 21 boxes the all-pairs one.
    n = 7 * copies
    boxes = torch.tensor([[5.0, 5.0, 25.0, 25.0]]).repeat(n, 1)
    scores = torch.linspace(1.0, 0.1, n)
    groups = torch.arange(n) % 7
    keep = batched_nms(boxes, scores, groups, 0.5)
    assert keep.tolist() == list(range(7))


def _disjoint_row(n: int) -> torch.Tensor:
    x = torch.arange(n, dtype=torch.float32) * 20
    return torch.stack((x, torch.zeros(n), x + 10, torch.full((n,), 10.0)), dim=1)


def test_batched_nms_ties_below_limit_earlier_index_first() -> None:
    # Disjoint boxes, equal scores, groups not in index order: index order wins.
    boxes = _disjoint_row(6)
    groups = torch.tensor([1, 0, 2, 1, 0, 2])
    keep = batched_nms(boxes, torch.full((6,), 0.5), groups, 0.5)
    assert keep.tolist() == [0, 1, 2, 3, 4, 5]


def test_batched_nms_ties_above_limit_earlier_index_first() -> None:
    n = 4200
    boxes = _disjoint_row(n)
    groups = (torch.arange(n) + 1) % 3  # index 0 is in group 1, index 2 in group 0
    keep = batched_nms(boxes, torch.full((n,), 0.5), groups, 0.5)
    assert keep.tolist() == list(range(n))
