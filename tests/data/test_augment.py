"""Tests for maskrcnn.data.augment: multi-scale resize, flip, and what they do to targets."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from maskrcnn.config import InputConfig
from maskrcnn.data.augment import eval_transform, flip_boxes, train_transform
from maskrcnn.data.transforms import prepare_image, resized_size
from maskrcnn.structures import Annotations, Sample


def _sample(
    height: int,
    width: int,
    boxes: list[list[float]],
    masks: torch.Tensor | None = None,
    keypoints: torch.Tensor | None = None,
    crowd: list[list[float]] | None = None,
) -> Sample:
    image = torch.from_numpy(
        np.random.default_rng(height * 1000 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    )
    annotations = Annotations(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.arange(len(boxes), dtype=torch.int64),
        masks=masks,
        keypoints=keypoints,
        crowd_boxes=torch.tensor(crowd or [], dtype=torch.float32).reshape(-1, 4),
    )
    return Sample(image, annotations, image_id=1, file_name="x.png")


def _cfg(sizes: tuple[int, ...], flip_prob: float, **kwargs: object) -> InputConfig:
    return InputConfig(train_min_sizes=sizes, flip_prob=flip_prob, max_size=1000, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------ resize


def test_resized_size_min_size_override_keeps_default() -> None:
    cfg = InputConfig(min_size=10, max_size=1000)
    assert resized_size(15, 31, cfg) == (10, 20)
    assert resized_size(15, 31, InputConfig(min_size=800, max_size=1000), min_size=10) == (10, 20)
    assert resized_size(15, 31, cfg, min_size=None) == resized_size(15, 31, cfg)
    # The long side stays capped: 30 / 15 * 60 = 120 > 90, so the long side becomes 90.
    assert resized_size(30, 60, InputConfig(max_size=90), min_size=60) == (45, 90)


def test_resize_scales_boxes_by_the_actual_ratio_of_sizes() -> None:
    # torchvision rule: 15x31 -> 10x20 (floor(31 * 2/3) = 20), so x scales by
    # 20/31 (not 2/3) and y by 10/15: x 3.1 -> 2, 31 -> 20; y 1.5 -> 1, 15 -> 10.
    sample = _sample(15, 31, [[3.1, 1.5, 31.0, 15.0]], crowd=[[0.0, 0.0, 15.5, 7.5]])

    image, targets = train_transform(sample, _cfg((10,), 0.0), torch.Generator().manual_seed(0))

    assert image.shape == (3, 10, 20) and image.dtype == torch.float32
    torch.testing.assert_close(targets.boxes, torch.tensor([[2.0, 1.0, 20.0, 10.0]]))
    torch.testing.assert_close(targets.crowd_boxes, torch.tensor([[0.0, 0.0, 10.0, 5.0]]))
    assert targets.labels.tolist() == [0]


def test_detectron2_rule_rounds_sides_and_boxes_follow() -> None:
    # Detectron2 rule: 15x31 -> 10 x int(20.67 + 0.5) = 21: x scales by 21/31.
    sample = _sample(15, 31, [[0.0, 0.0, 31.0, 15.0]])
    cfg = _cfg((10,), 0.0, resize_rule="detectron2")

    image, targets = train_transform(sample, cfg, torch.Generator().manual_seed(0))

    assert image.shape == (3, 10, 21)
    torch.testing.assert_close(targets.boxes, torch.tensor([[0.0, 0.0, 21.0, 10.0]]))


def test_masks_are_resized_by_nearest_pixel_centre() -> None:
    # Halving: output pixel j reads input pixel floor((j + 0.5) * 2) = 1, 3.
    masks = torch.zeros((1, 4, 4), dtype=torch.uint8)
    masks[0, 0:2, 0:2] = 1
    masks[0, 3, 3] = 1
    sample = _sample(4, 4, [[0.0, 0.0, 2.0, 2.0]], masks=masks)

    _, targets = train_transform(sample, _cfg((2,), 0.0), torch.Generator().manual_seed(0))

    assert targets.masks is not None and targets.masks.dtype == torch.uint8
    assert targets.masks.tolist() == [[[1, 0], [0, 1]]]


def test_image_is_the_inference_transform_at_the_drawn_size() -> None:
    sample = _sample(15, 31, [])
    for rule in ("torchvision", "detectron2"):
        cfg = _cfg((12,), 0.0, resize_rule=rule)
        image, _ = train_transform(sample, cfg, torch.Generator().manual_seed(0))
        assert torch.equal(image, prepare_image(sample.image.numpy(), cfg, min_size=12))
        evaluated, _ = eval_transform(sample, cfg)
        assert torch.equal(evaluated, prepare_image(sample.image.numpy(), cfg))


def test_sizes_are_drawn_from_train_min_sizes() -> None:
    sample = _sample(20, 20, [[0.0, 0.0, 10.0, 10.0]])
    cfg = _cfg((8, 16), 0.0)
    generator = torch.Generator().manual_seed(0)
    seen = {train_transform(sample, cfg, generator)[0].shape[1] for _ in range(30)}
    assert seen == {8, 16}


# ------------------------------------------------------------ flip


def _flip_sample() -> Sample:
    # 4x6 image, min size 4: no resize. A 2x2 mask in the left two columns.
    masks = torch.zeros((1, 4, 6), dtype=torch.uint8)
    masks[0, 1:3, 0:2] = 1
    keypoints = torch.tensor([[[1.5, 1.5, 2.0], [0.5, 2.5, 1.0], [0.0, 0.0, 0.0]]])  # left, right, unlabelled
    return _sample(
        4, 6, [[0.0, 1.0, 2.0, 3.0]], masks=masks, keypoints=keypoints, crowd=[[1.0, 0.0, 3.0, 2.0]]
    )


def test_flip_moves_mask_box_crowd_and_swaps_keypoint_pairs() -> None:
    sample = _flip_sample()
    before = copy.deepcopy(sample)

    image, targets = train_transform(
        sample, _cfg((4,), 1.0), torch.Generator().manual_seed(0), flip_pairs=[(0, 1)]
    )

    assert targets.boxes.tolist() == [[4.0, 1.0, 6.0, 3.0]]
    assert targets.crowd_boxes.tolist() == [[3.0, 0.0, 5.0, 2.0]]
    expected = torch.zeros((1, 4, 6), dtype=torch.uint8)
    expected[0, 1:3, 4:6] = 1
    assert targets.masks is not None and torch.equal(targets.masks, expected)
    # The old right keypoint, mirrored to x = 6 - 0.5, is now the left one, and vice versa.
    assert targets.keypoints is not None
    assert targets.keypoints.tolist() == [[[5.5, 2.5, 1.0], [4.5, 1.5, 2.0], [0.0, 0.0, 0.0]]]
    assert torch.equal(image, prepare_image(sample.image.numpy(), _cfg((4,), 1.0), min_size=4).flip(-1))
    # The input sample is untouched.
    assert torch.equal(sample.image, before.image)
    assert torch.equal(sample.annotations.boxes, before.annotations.boxes)
    assert torch.equal(sample.annotations.keypoints, before.annotations.keypoints)  # type: ignore[arg-type]
    assert torch.equal(sample.annotations.masks, before.annotations.masks)  # type: ignore[arg-type]


def test_no_flip_when_probability_is_zero() -> None:
    sample = _flip_sample()
    _, targets = train_transform(
        sample, _cfg((4,), 0.0), torch.Generator().manual_seed(0), flip_pairs=[(0, 1)]
    )
    assert targets.boxes.tolist() == [[0.0, 1.0, 2.0, 3.0]]
    assert torch.equal(targets.keypoints, sample.annotations.keypoints)  # type: ignore[arg-type]


def test_flip_boxes_is_an_involution() -> None:
    boxes = torch.tensor([[0.0, 1.0, 2.5, 3.0], [1.0, 0.0, 10.0, 4.0]])
    assert flip_boxes(boxes, 10).tolist() == [[7.5, 1.0, 10.0, 3.0], [0.0, 0.0, 9.0, 4.0]]
    assert torch.equal(flip_boxes(flip_boxes(boxes, 10), 10), boxes)


# ------------------------------------------------------------ randomness


@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_same_rng_state_same_result_and_both_outcomes_occur(kind: str) -> None:
    sample = _flip_sample()
    cfg = _cfg((4, 8), 0.5)

    def rng(seed: int) -> torch.Generator | np.random.Generator:
        return torch.Generator().manual_seed(seed) if kind == "torch" else np.random.default_rng(seed)

    outcomes = set()
    for seed in range(40):
        image_a, targets_a = train_transform(sample, cfg, rng(seed))
        image_b, targets_b = train_transform(sample, cfg, rng(seed))
        assert torch.equal(image_a, image_b) and torch.equal(targets_a.boxes, targets_b.boxes)
        outcomes.add((image_a.shape[1], targets_a.boxes[0, 0].item() > 0))
    assert outcomes == {(4, False), (4, True), (8, False), (8, True)}


# ------------------------------------------------------------ images without instances


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
@pytest.mark.parametrize("crowd", [None, [[2.0, 3.0, 9.0, 7.0]]])
def test_image_without_instances_gives_empty_targets(
    flip_prob: float, crowd: list[list[float]] | None
) -> None:
    # Unannotated (no crowd) and crowd-only images: zero masks and keypoints resize and flip.
    masks = torch.zeros((0, 10, 16), dtype=torch.uint8)
    keypoints = torch.zeros((0, 17, 3))
    sample = _sample(10, 16, [], masks=masks, keypoints=keypoints, crowd=crowd)
    cfg = _cfg((20,), flip_prob)

    image, targets = train_transform(sample, cfg, np.random.default_rng(0), flip_pairs=[(1, 2)])

    assert image.shape == (3, 20, 32)
    assert targets.boxes.shape == (0, 4) and targets.labels.shape == (0,)
    assert targets.masks is not None and targets.masks.shape == (0, 20, 32)
    assert targets.masks.dtype == torch.uint8
    assert targets.keypoints is not None and targets.keypoints.shape == (0, 17, 3)
    assert len(targets.crowd_boxes) == (0 if crowd is None else 1)
    _, evaluated = eval_transform(sample, cfg)
    assert evaluated.masks is not None and evaluated.masks.shape[0] == 0
