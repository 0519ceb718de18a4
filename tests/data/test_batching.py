"""Tests for maskrcnn.data.batching: seeded infinite sampling, sharding, grouping, the loader."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from maskrcnn.config import InputConfig
from maskrcnn.data.batching import (
    AspectRatioGroupedBatchSampler,
    InfiniteSampler,
    build_train_loader,
    collate,
)
from maskrcnn.structures import Annotations, Sample, Targets


class TinyDataset:
    """``size`` small images, landscape (12 wide, 8 high) for even indices, portrait for odd.

    Image ``i`` has one box whose label is ``i``, so a batch says which indices it holds.
    """

    def __init__(self, size: int = 12) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def _shape(self, index: int) -> tuple[int, int]:
        return (8, 12) if index % 2 == 0 else (12, 8)

    def __getitem__(self, index: int) -> Sample:
        h, w = self._shape(index)
        image = torch.from_numpy(np.random.default_rng(index).integers(0, 256, (h, w, 3), dtype=np.uint8))
        masks = torch.zeros((1, h, w), dtype=torch.uint8)
        masks[0, 1:4, 0:3] = 1
        annotations = Annotations(
            boxes=torch.tensor([[0.0, 1.0, 3.0, 4.0]]),
            labels=torch.tensor([index]),
            masks=masks,
        )
        return Sample(image, annotations, image_id=index, file_name=f"{index}.png")

    def aspect_ratios(self) -> list[float]:
        return [w / h for h, w in map(self._shape, range(self.size))]


CFG = InputConfig(train_min_sizes=(8, 10, 12), max_size=100, flip_prob=0.5)


def _take(loader: torch.utils.data.DataLoader, n: int) -> list[tuple[list[torch.Tensor], list[Targets]]]:
    return list(itertools.islice(loader, n))


def _indices(batches: list[tuple[list[torch.Tensor], list[Targets]]]) -> list[list[int]]:
    return [[int(t.labels[0]) for t in targets] for _, targets in batches]


def _assert_same(
    a: list[tuple[list[torch.Tensor], list[Targets]]], b: list[tuple[list[torch.Tensor], list[Targets]]]
) -> None:
    assert len(a) == len(b)
    for (images_a, targets_a), (images_b, targets_b) in zip(a, b, strict=True):
        assert len(images_a) == len(images_b)
        for x, y in zip(images_a, images_b, strict=True):
            assert torch.equal(x, y)
        for s, t in zip(targets_a, targets_b, strict=True):
            assert torch.equal(s.boxes, t.boxes) and torch.equal(s.labels, t.labels)
            assert torch.equal(s.masks, t.masks)  # type: ignore[arg-type]


# ------------------------------------------------------------ InfiniteSampler


def test_infinite_sampler_is_a_stream_of_seeded_permutations() -> None:
    stream = list(itertools.islice(InfiniteSampler(5, seed=3), 15))
    for epoch in range(3):
        assert sorted(stream[5 * epoch : 5 * epoch + 5]) == [0, 1, 2, 3, 4]
    assert stream[:5] != stream[5:10] or stream[5:10] != stream[10:]  # epochs are reshuffled
    assert list(itertools.islice(InfiniteSampler(5, seed=3), 15)) == stream
    assert list(itertools.islice(InfiniteSampler(5, seed=4), 15)) != stream
    assert list(itertools.islice(InfiniteSampler(3, shuffle=False), 7)) == [0, 1, 2, 0, 1, 2, 0]


def test_ranks_take_alternate_positions_of_one_stream_and_are_disjoint() -> None:
    shared = list(itertools.islice(InfiniteSampler(7, seed=1), 28))
    rank0 = list(itertools.islice(InfiniteSampler(7, seed=1, rank=0, world_size=2), 14))
    rank1 = list(itertools.islice(InfiniteSampler(7, seed=1, rank=1, world_size=2), 14))
    assert rank0 == shared[0::2] and rank1 == shared[1::2]
    # Within the first epoch (positions 0..6) the ranks see disjoint indices that cover the dataset.
    first0, first1 = set(shared[0:7:2]), set(shared[1:7:2])
    assert first0.isdisjoint(first1) and first0 | first1 == set(range(7))
    assert set(rank0[:4]) == first0 and set(rank1[:3]) == first1


@pytest.mark.parametrize("world_size", [1, 3])
def test_start_continues_the_same_stream(world_size: int) -> None:
    for rank in range(world_size):
        full = list(itertools.islice(InfiniteSampler(5, 9, rank=rank, world_size=world_size), 20))
        for start in (1, 4, 7, 13):  # within and across epoch boundaries
            resumed = InfiniteSampler(5, 9, rank=rank, world_size=world_size, start=start)
            assert list(itertools.islice(resumed, 20 - start)) == full[start:]
        later = InfiniteSampler(5, 9, rank=rank, world_size=world_size)
        later.set_start(6)
        assert list(itertools.islice(later, 4)) == full[6:10]


def test_infinite_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="empty"):
        InfiniteSampler(0)
    with pytest.raises(ValueError, match="rank"):
        InfiniteSampler(4, rank=2, world_size=2)


# ------------------------------------------------------------ grouping


def test_grouped_batches_hand_case_and_leftovers() -> None:
    ratios = [2.0, 0.5, 2.0, 0.5, 1.0, 1.5]  # 1.0 counts as landscape
    assert list(AspectRatioGroupedBatchSampler(range(6), ratios, 2)) == [[0, 2], [1, 3], [4, 5]]
    assert list(AspectRatioGroupedBatchSampler(range(6), ratios, 3)) == [[0, 2, 4], [5], [1, 3]]
    assert list(AspectRatioGroupedBatchSampler(range(6), ratios, 3, drop_last=True)) == [[0, 2, 4]]


def test_grouped_batches_never_mix_groups_with_an_infinite_sampler() -> None:
    ratios = [0.5 + (i % 3) * 0.4 for i in range(11)]  # 0.5, 0.9 portrait; 1.3 landscape
    batches = list(itertools.islice(AspectRatioGroupedBatchSampler(InfiniteSampler(11, 2), ratios, 4), 30))
    assert all(len(b) == 4 for b in batches)
    for batch in batches:
        assert len({ratios[i] >= 1 for i in batch}) == 1


# ------------------------------------------------------------ loader


def test_collate_keeps_lists() -> None:
    image, targets = torch.zeros(3, 2, 2), Targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    images, all_targets = collate([(image, targets), (image, targets)])
    assert images == [image, image] and all_targets == [targets, targets]


def test_loader_yields_grouped_augmented_batches() -> None:
    batches = _take(build_train_loader(TinyDataset(), CFG, batch_size=3, num_workers=0, seed=0), 12)
    for images, targets in batches:
        assert len(images) == len(targets) == 3
        assert len({im.shape[2] >= im.shape[1] for im in images}) == 1  # never mixed orientation
        for image, target in zip(images, targets, strict=True):
            assert image.dtype == torch.float32 and image.shape[0] == 3
            assert min(image.shape[1:]) in CFG.train_min_sizes
            assert target.masks is not None and target.masks.shape[1:] == image.shape[1:]
    # 12 iterations of 3 = 3 epochs of 12 images: infinite, and flips do happen.
    flipped = [t.boxes[0, 0].item() > 0 for _, targets in batches for t in targets]
    assert any(flipped) and not all(flipped)


def test_loader_is_deterministic_and_independent_of_workers() -> None:
    def run(seed: int, workers: int) -> list[tuple[list[torch.Tensor], list[Targets]]]:
        return _take(build_train_loader(TinyDataset(), CFG, batch_size=2, num_workers=workers, seed=seed), 8)

    reference = run(5, 0)
    _assert_same(reference, run(5, 0))
    _assert_same(reference, run(5, 2))
    assert _indices(run(6, 0)) != _indices(reference)


@pytest.mark.parametrize("grouped", [True, False])
def test_resuming_gives_the_batches_from_k_on(grouped: bool) -> None:
    def loader(start: int) -> torch.utils.data.DataLoader:
        return build_train_loader(
            TinyDataset(9),
            CFG,
            batch_size=2,
            num_workers=0,
            seed=1,
            start_iteration=start,
            group_by_aspect_ratio=grouped,
        )

    full = _take(loader(0), 12)
    for k in (1, 5, 7):
        _assert_same(_take(loader(k), 12 - k), full[k:])


def test_two_ranks_see_disjoint_indices() -> None:
    def indices(rank: int) -> list[list[int]]:
        loader = build_train_loader(
            TinyDataset(12),
            CFG,
            batch_size=2,
            num_workers=0,
            seed=3,
            rank=rank,
            world_size=2,
            group_by_aspect_ratio=False,
        )
        return _indices(_take(loader, 3))

    rank0, rank1 = (set(itertools.chain(*indices(r))) for r in (0, 1))
    assert len(rank0) == len(rank1) == 6
    assert rank0.isdisjoint(rank1) and rank0 | rank1 == set(range(12))
