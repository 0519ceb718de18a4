"""The micro-batcher: requests of other thresholds share a batch only where filtering is exact."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'maskrcnn[serve]'")

from maskrcnn.engine.tiles import TiledPredictor  # noqa: E402
from maskrcnn.serve.batching import MicroBatcher  # noqa: E402


class Found:
    """Stand-in detections: remembers the threshold they were computed at; filtering keeps that."""

    def __init__(self, run_at: float) -> None:
        self.run_at = run_at
        self.scores = torch.tensor([0.2, 0.6])

    def __getitem__(self, keep: torch.Tensor) -> Found:
        return self


def _batches(thresholds: list[float], mixed: bool) -> list[tuple[int, float]]:
    """(images, threshold) of each forward pass for requests arriving together."""
    calls: list[tuple[int, float]] = []

    def run(images: Sequence[np.ndarray], threshold: float) -> list[Found]:
        calls.append((len(images), threshold))
        return [Found(threshold)] * len(images)

    async def main() -> list[Found]:
        batcher = MicroBatcher(run, max_batch=8, max_queued=64, wait_s=0.05, mixed_thresholds=mixed)
        await batcher.start()
        try:
            return list(await asyncio.gather(*(batcher.submit(np.zeros((2, 2, 3), np.uint8), t)
                                               for t in thresholds)))
        finally:
            await batcher.stop()

    answers = asyncio.run(main())
    if not mixed:  # every request was run at its own threshold
        assert [a.run_at for a in answers] == thresholds
    return calls


def test_mixed_thresholds_share_a_batch_run_at_the_lowest() -> None:
    assert _batches([0.5, 0.1, 0.5, 0.3], mixed=True) == [(4, 0.1)]


def test_tiles_batch_only_requests_of_one_threshold() -> None:
    assert sorted(_batches([0.5, 0.1, 0.5, 0.3], mixed=False)) == [(1, 0.1), (1, 0.3), (2, 0.5)]
    assert TiledPredictor.filters_by_threshold_exactly is False


def test_a_failure_after_the_model_is_that_requests_alone() -> None:
    """Filtering that fails answers its request with the error; the batcher goes on."""

    class Broken:
        scores = None

    def run(images: Sequence[np.ndarray], threshold: float) -> list[object]:
        return [Broken()] * len(images)

    async def main() -> list[object]:
        batcher = MicroBatcher(run, max_batch=8, max_queued=64, wait_s=0.05)
        await batcher.start()
        try:
            first = await asyncio.wait_for(asyncio.gather(
                batcher.submit(np.zeros((2, 2, 3), np.uint8), 0.1),
                batcher.submit(np.zeros((2, 2, 3), np.uint8), 0.5), return_exceptions=True), 10)
            again = await asyncio.wait_for(batcher.submit(np.zeros((2, 2, 3), np.uint8), 0.1), 10)
            return [*first, again]
        finally:
            await batcher.stop()

    low, high, again = asyncio.run(main())
    assert isinstance(low, Broken) and isinstance(high, TypeError) and isinstance(again, Broken)
