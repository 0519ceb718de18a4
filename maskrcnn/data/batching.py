"""Training data order and batches: infinite seeded sampling, aspect-ratio grouping, the loader.

- :class:`InfiniteSampler`: an endless stream of dataset indices made of
  seeded permutations (epoch ``e`` is a permutation seeded by ``(seed, e)``),
  sharded by rank: rank ``r`` of ``world_size`` takes stream positions
  ``r, r + world_size, r + 2 * world_size, ...`` of the one shared stream, so
  ranks see disjoint indices within an epoch. ``start`` skips the first
  ``start`` indices *of this rank* in O(1).
- :class:`AspectRatioGroupedBatchSampler`: batches of images that are all
  landscape (``w / h >= 1``) or all portrait (``< 1``), as Detectron2 and
  torchvision do, so padding a batch to one size wastes little.
- :func:`build_train_loader`: a ``DataLoader`` yielding, forever,
  ``(images, targets)``: ``images`` a list of ``N`` normalised ``(3, h_i, w_i)``
  float tensors (not stacked: the model pads) and ``targets`` a list of ``N``
  :class:`~maskrcnn.structures.Targets`.

Determinism and resuming. The order of indices depends only on the seed,
rank and world size. The ``j``-th image of the batch of iteration ``i`` on
rank ``r`` has global sample index ``(i * batch_size + j) * world_size + r``:
its position in the one stream that all ranks interleave, the same position
it has in a single process whose batch is the whole global batch. That index
seeds its augmentation and its ``Targets.seed`` (the RPN's and RoI head's
sampling), so results depend neither on the number of workers nor on how
the global batch is split over processes.
``start_iteration=k`` gives exactly the batches ``k, k + 1, ...`` of a run
started at 0: the batch sampler replays the first ``k`` batches of indices
(integers only, no image is read; the grouping carries state from batch to
batch, so it cannot be jumped over) and drops them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import InputConfig
from ..structures import Sample, Targets
from .augment import train_transform

# Streams of random numbers drawn from the same seed for different purposes.
_PERMUTATION_STREAM = 0
_AUGMENTATION_STREAM = 1
_SAMPLING_STREAM = 2


class TrainingDataset(Protocol):
    """What the training loader needs from a dataset (``CocoDataset``, ``InstancePngDataset``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...

    def aspect_ratios(self) -> list[float]: ...


def _derived_seed(*values: int) -> int:
    """A 64-bit seed mixed from non-negative integers (numpy's ``SeedSequence`` hashing)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, dtype=np.uint64)[0])


class InfiniteSampler(Sampler[int]):
    """Endless stream of seeded permutations of ``range(size)``, sharded by rank.

    ``shuffle=False`` repeats ``0 .. size-1``. ``start`` (or :meth:`set_start`)
    is the number of indices this rank has already consumed: a resumed run
    continues exactly where the first one stopped.
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        if size <= 0:
            raise ValueError(f"cannot sample from an empty dataset (size {size})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0 .. world_size-1 = {world_size - 1}")
        if seed < 0 or start < 0:
            raise ValueError(f"seed ({seed}) and start ({start}) must be non-negative")
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.start = start

    def set_start(self, start: int) -> None:
        """Begin the next iteration after this rank's first ``start`` indices."""
        if start < 0:
            raise ValueError(f"start must be non-negative, got {start}")
        self.start = start

    def permutation(self, epoch: int) -> list[int]:
        """The order of epoch ``epoch`` of the shared (unsharded) stream."""
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(_derived_seed(self.seed, _PERMUTATION_STREAM, epoch))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        position = self.start * self.world_size + self.rank  # in the shared stream
        while True:
            epoch = position // self.size
            order = self.permutation(epoch)
            end = (epoch + 1) * self.size
            while position < end:
                yield order[position - epoch * self.size]
                position += self.world_size


class AspectRatioGroupedBatchSampler(Sampler[list[int]]):
    """Batches of indices whose images are all landscape (``w / h >= 1``) or all portrait.

    Indices from ``sampler`` wait in the bucket of their group until it holds
    ``batch_size``; that batch is then yielded. With an infinite sampler it
    never ends. When a finite sampler (e.g. ``DistributedSampler``) runs out,
    the partly filled buckets are yielded as smaller batches (landscape
    first), unless ``drop_last``.
    """

    def __init__(
        self,
        sampler: Iterable[int],
        aspect_ratios: Sequence[float],
        batch_size: int,
        *,
        drop_last: bool = False,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sampler = sampler
        self.groups = [0 if ratio >= 1.0 else 1 for ratio in aspect_ratios]
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[list[int]]:
        buckets: tuple[list[int], list[int]] = ([], [])
        for index in self.sampler:
            bucket = buckets[self.groups[index]]
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()
        if not self.drop_last:
            yield from (bucket for bucket in buckets if bucket)


def collate(samples: list[tuple[Tensor, Targets]]) -> tuple[list[Tensor], list[Targets]]:
    """``[(image, targets), ...]`` -> ``([images], [targets])``; nothing is stacked (sizes differ)."""
    return [image for image, _ in samples], [targets for _, targets in samples]


def augmentation_rng(seed: int, sample_index: int) -> np.random.Generator:
    """The generator that augments the sample at global position ``sample_index`` of a run."""
    return np.random.default_rng(_derived_seed(seed, _AUGMENTATION_STREAM, sample_index))


class _AugmentedDataset(Dataset[tuple[Tensor, Targets]]):
    """Reads ``dataset[index]`` and applies the training transform seeded by the sample's global index."""

    def __init__(
        self,
        dataset: TrainingDataset,
        cfg: InputConfig,
        seed: int,
        flip_pairs: Sequence[tuple[int, int]],
    ) -> None:
        self.dataset = dataset
        self.cfg = cfg
        self.seed = seed
        self.flip_pairs = tuple(flip_pairs)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Targets]:  # type: ignore[override]
        index, sample_index = key
        rng = augmentation_rng(self.seed, sample_index)
        image, targets = train_transform(self.dataset[index], self.cfg, rng, flip_pairs=self.flip_pairs)
        targets.seed = _derived_seed(self.seed, _SAMPLING_STREAM, sample_index) >> 1
        return image, targets


class _NumberedBatches(Sampler[list[tuple[int, int]]]):
    """Batches from iteration ``start_iteration`` on, each index paired with its global sample index.

    ``batches`` starts at iteration 0 when ``replay`` (its first
    ``start_iteration`` batches are drawn and dropped), else at ``start_iteration``.
    """

    def __init__(
        self,
        batches: Iterable[list[int]],
        *,
        batch_size: int,
        rank: int,
        world_size: int,
        start_iteration: int,
        replay: bool,
    ) -> None:
        self.batches = batches
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.start_iteration = start_iteration
        self.replay = replay

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches = iter(self.batches)
        if self.replay:
            # Rebuilds the grouping state; only integers, no image is read.
            for _ in itertools.islice(batches, self.start_iteration):
                pass
        for iteration, batch in enumerate(batches, start=self.start_iteration):
            first = iteration * self.batch_size
            yield [(index, (first + j) * self.world_size + self.rank) for j, index in enumerate(batch)]


class _ConsecutiveBatches(Sampler[list[int]]):
    """Consecutive ``batch_size``-long batches of an (infinite) sampler."""

    def __init__(self, sampler: Iterable[int], batch_size: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        batch: list[int] = []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch
                batch = []


def build_train_loader(
    dataset: TrainingDataset,
    cfg: InputConfig,
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_iteration: int = 0,
    flip_pairs: Sequence[tuple[int, int]] = (),
    group_by_aspect_ratio: bool = True,
) -> DataLoader:
    """An endless loader of ``(images, targets)`` batches of ``batch_size`` (per rank).

    Deterministic given ``seed``, ``rank`` and ``world_size`` whatever
    ``num_workers``; ``start_iteration`` resumes (module docstring).
    ``flip_pairs`` are the keypoint index pairs swapped by a horizontal flip.
    """
    if start_iteration < 0:
        raise ValueError(f"start_iteration must be non-negative, got {start_iteration}")
    sampler = InfiniteSampler(len(dataset), seed, shuffle=True, rank=rank, world_size=world_size)
    if group_by_aspect_ratio:
        batches: Iterable[list[int]] = AspectRatioGroupedBatchSampler(
            sampler, dataset.aspect_ratios(), batch_size, drop_last=True
        )
    else:
        # Without grouping a batch is just the next batch_size indices, so the
        # sampler can jump straight to the resumed position.
        sampler.set_start(start_iteration * batch_size)
        batches = _ConsecutiveBatches(sampler, batch_size)
    numbered = _NumberedBatches(
        batches,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        start_iteration=start_iteration,
        replay=group_by_aspect_ratio,
    )
    return DataLoader(
        _AugmentedDataset(dataset, cfg, seed, flip_pairs),
        batch_sampler=numbered,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
    )
