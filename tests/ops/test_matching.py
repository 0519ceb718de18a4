"""Tests for maskrcnn.ops.matching: the IoU matcher and the balanced sampler, on hand-made boxes."""

from __future__ import annotations

import pytest
import torch

from maskrcnn.ops.matching import BACKGROUND, FOREGROUND, IGNORE, match, sample_balanced

FG, BG, IGN = FOREGROUND, BACKGROUND, IGNORE

# Three 10 x 10 ground-truth boxes (area 100), far apart.
GT = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # g0
        [20.0, 0.0, 30.0, 10.0],  # g1
        [0.0, 20.0, 10.0, 30.0],  # g2
    ]
)

# Candidates whose IoU with the ground truth is easy to compute by hand: each
# lies inside one gt box and shares its width, so IoU = own area / 100.
CANDIDATES = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # c0: g0, IoU 1.0          -> foreground (g0)
        [0.0, 0.0, 10.0, 8.0],  # c1: g0, IoU 80/100 = 0.8 -> foreground (g0)
        [20.0, 0.0, 30.0, 5.0],  # c2: g1, IoU 0.5          -> ignored
        [20.0, 0.0, 30.0, 2.0],  # c3: g1, IoU 0.2          -> background
        [50.0, 50.0, 60.0, 60.0],  # c4: nothing, IoU 0     -> background
        [0.0, 20.0, 10.0, 27.0],  # c5: g2, IoU 0.7 exactly -> foreground (>= fg_thresh)
        [0.0, 20.0, 10.0, 23.0],  # c6: g2, IoU 0.3 exactly -> ignored (not < bg_thresh)
    ]
)


def _match(candidates: torch.Tensor, gt: torch.Tensor, **kwargs: object):
    options = {"fg_thresh": 0.7, "bg_thresh": 0.3, "allow_low_quality": False}
    options.update(kwargs)
    return match(candidates, gt, **options)  # type: ignore[arg-type]


def test_thresholds_label_foreground_ignore_background():
    m = _match(CANDIDATES, GT)
    assert m.label.dtype == torch.int64 and m.index.dtype == torch.int64
    assert m.label.tolist() == [FG, FG, IGN, BG, BG, FG, IGN]
    fg = m.label == FG
    assert m.index[fg].tolist() == [0, 0, 2]


def test_low_quality_matches_make_each_objects_best_candidate_positive():
    # Without the rule no candidate reaches 0.7 for g1 (its best is c2 at 0.5).
    m = _match(CANDIDATES, GT, allow_low_quality=True)
    # c2 is g1's best (0.5) -> foreground; c5 is g2's best (0.7) and was already;
    # c6 (0.3, not g2's best) stays ignored, c3 stays background.
    assert m.label.tolist() == [FG, FG, FG, BG, BG, FG, IGN]
    assert m.index[2].item() == 1


def test_low_quality_at_iou_0_4_and_ties():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    candidates = torch.tensor(
        [
            [0.0, 0.0, 10.0, 4.0],  # IoU 0.4: the best ...
            [0.0, 6.0, 10.0, 10.0],  # ... tied with this one, IoU 0.4
            [0.0, 0.0, 10.0, 2.0],  # IoU 0.2
            [40.0, 40.0, 50.0, 50.0],  # IoU 0
        ]
    )
    assert _match(candidates, gt).label.tolist() == [IGN, IGN, BG, BG]
    m = _match(candidates, gt, allow_low_quality=True)
    assert m.label.tolist() == [FG, FG, BG, BG]
    assert m.index[:2].tolist() == [0, 0]


def test_low_quality_never_claims_a_candidate_with_no_overlap():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    candidates = torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 50.0, 50.0]])
    m = _match(candidates, gt, allow_low_quality=True)
    # g1 overlaps nothing: its "best" IoU is 0, which claims no candidate.
    assert m.label.tolist() == [FG, BG]


def test_no_ground_truth_means_all_background():
    m = _match(CANDIDATES, torch.zeros((0, 4)), allow_low_quality=True)
    assert m.label.tolist() == [BG] * len(CANDIDATES)
    assert m.index.shape == (len(CANDIDATES),)


def test_no_candidates():
    m = _match(torch.zeros((0, 4)), GT)
    assert m.label.shape == (0,) and m.index.shape == (0,)


def test_no_candidates_with_low_quality_matches():
    m = _match(torch.zeros((0, 4)), GT, allow_low_quality=True)
    assert m.label.shape == (0,) and m.index.shape == (0,)


def test_crowd_region_ignores_background_inside_it_but_not_foreground():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    crowd = torch.tensor([[0.0, 0.0, 40.0, 40.0]])  # a crowd region around the object
    candidates = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # foreground, wholly inside the crowd: stays foreground
            [20.0, 20.0, 30.0, 30.0],  # background, wholly inside: ignored
            [31.0, 31.0, 41.0, 41.0],  # background, 81 % inside (>= 0.7): ignored
            [32.0, 32.0, 42.0, 42.0],  # background, 64 % inside (< 0.7): background
            [60.0, 60.0, 70.0, 70.0],  # background, outside: background
            [0.0, 0.0, 10.0, 5.0],  # IoU 0.5, ignored anyway
        ]
    )
    assert _match(candidates, gt).label.tolist() == [FG, BG, BG, BG, BG, IGN]
    m = _match(candidates, gt, crowd_boxes=crowd, crowd_ioa_thresh=0.7)
    assert m.label.tolist() == [FG, IGN, IGN, BG, BG, IGN]
    # An empty crowd tensor changes nothing.
    assert _match(candidates, gt, crowd_boxes=torch.zeros((0, 4))).label.tolist() == [FG, BG, BG, BG, BG, IGN]


def test_crowd_region_with_no_ground_truth():
    crowd = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    candidates = torch.tensor([[20.0, 20.0, 30.0, 30.0], [60.0, 60.0, 70.0, 70.0]])
    m = _match(candidates, torch.zeros((0, 4)), crowd_boxes=crowd)
    assert m.label.tolist() == [IGN, BG]


# ---------------------------------------------------------------- sampling


def _labels(num_pos: int, num_neg: int, num_ignore: int, seed: int = 0) -> torch.Tensor:
    """A shuffled label vector with the given counts."""
    label = torch.tensor([FG] * num_pos + [BG] * num_neg + [IGN] * num_ignore)
    return label[torch.randperm(label.numel(), generator=torch.Generator().manual_seed(seed))]


def _check_sample(label: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> None:
    assert (label[pos] == FG).all() and (label[neg] == BG).all()
    both = torch.cat((pos, neg))
    assert both.unique().numel() == both.numel(), "an index was sampled twice"


def test_sampler_respects_budget_and_positive_fraction():
    label = _labels(40, 200, 30)
    pos, neg = sample_balanced(label, batch_size=64, positive_fraction=0.25,
                               generator=torch.Generator().manual_seed(1))
    _check_sample(label, pos, neg)
    assert pos.numel() == 16  # 64 * 0.25
    assert neg.numel() == 48  # the rest of the budget


def test_sampler_takes_all_positives_when_fewer_and_fills_with_negatives():
    label = _labels(3, 200, 30)
    pos, neg = sample_balanced(label, batch_size=64, positive_fraction=0.5,
                               generator=torch.Generator().manual_seed(1))
    _check_sample(label, pos, neg)
    assert sorted(pos.tolist()) == sorted((label == FG).nonzero().flatten().tolist())
    assert neg.numel() == 61


def test_sampler_with_too_few_of_both_takes_everything():
    label = _labels(3, 5, 10)
    pos, neg = sample_balanced(label, batch_size=64, positive_fraction=0.5)
    _check_sample(label, pos, neg)
    assert (pos.numel(), neg.numel()) == (3, 5)


def test_sampler_with_no_positives_takes_only_negatives_up_to_budget():
    label = _labels(0, 100, 0)
    pos, neg = sample_balanced(label, batch_size=16, positive_fraction=0.25)
    assert pos.numel() == 0 and neg.numel() == 16
    _check_sample(label, pos, neg)


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_sampler_is_reproducible_with_a_seeded_generator(fraction: float):
    label = _labels(50, 300, 20)

    def draw(seed: int) -> tuple[list[int], list[int]]:
        pos, neg = sample_balanced(label, batch_size=32, positive_fraction=fraction,
                                   generator=torch.Generator().manual_seed(seed))
        return pos.tolist(), neg.tolist()

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
    # The global RNG plays no part when a generator is given.
    torch.manual_seed(0)
    a = draw(3)
    torch.manual_seed(123)
    assert draw(3) == a


# ---------------------------------------------------------------- images without instances


@pytest.mark.parametrize("allow_low_quality", [False, True])
def test_image_without_instances_samples_only_background(allow_low_quality: bool):
    # A 20 x 20 grid of 8-pixel anchors over a 160-pixel image, an unannotated image.
    xy = torch.arange(20.0) * 8
    corners = torch.stack(torch.meshgrid(xy, xy, indexing="xy"), dim=-1).reshape(-1, 2)
    anchors = torch.cat((corners, corners + 8), dim=1)  # (400, 4)
    m = _match(anchors, torch.zeros((0, 4)), allow_low_quality=allow_low_quality,
               crowd_boxes=torch.zeros((0, 4)))
    assert (m.label == BG).all() and m.index.shape == (400,)
    pos, neg = sample_balanced(m.label, batch_size=256, positive_fraction=0.5,
                               generator=torch.Generator().manual_seed(0))
    assert pos.numel() == 0 and neg.numel() == 256  # the budget, all background
    _check_sample(m.label, pos, neg)


def test_crowd_only_image_covering_everything_samples_nothing():
    anchors = torch.tensor([[0.0, 0.0, 8.0, 8.0], [30.0, 30.0, 50.0, 50.0]])
    m = _match(anchors, torch.zeros((0, 4)), allow_low_quality=True,
               crowd_boxes=torch.tensor([[0.0, 0.0, 64.0, 64.0]]))
    assert m.label.tolist() == [IGN, IGN]
    pos, neg = sample_balanced(m.label, batch_size=256, positive_fraction=0.5)
    assert pos.numel() == neg.numel() == 0
