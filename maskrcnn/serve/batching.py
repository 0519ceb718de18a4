"""Micro-batching: requests that arrive together share one forward pass.

A request hands its decoded image and score threshold to
:meth:`MicroBatcher.submit` and awaits its detections. One background task
takes the waiting requests, up to ``max_batch``, waiting at most
:data:`BATCH_WAIT_S` for more after the first, and runs the model once on
them in a worker thread, so the event loop keeps accepting requests while the
model runs. Requests that arrive during a forward pass wait for the next one;
under load, batches fill without any waiting.

Thresholds: the batch runs at the smallest threshold among its requests, and
each request keeps the detections scoring above its own. That is exactly what
the model returns at the higher threshold: the box branch applies the
threshold before per-class NMS and the top-k cap, NMS only lets a box
suppress lower-scored ones, and the cap keeps the highest scores, so the
detections above a higher threshold are the same boxes, masks and scores.

An exception in the model fails every request of its batch (each awaits it)
and the next batch runs as usual.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# How long the first request of a batch waits for others. Long enough for requests sent
# together to arrive together (a few ms on a local network), short against a forward
# pass (tens of ms on a GPU, seconds on a CPU), so a lone request hardly notices it.
BATCH_WAIT_S = 0.005

Run = Callable[[list[np.ndarray], float], Sequence[Any]]
"""The model: ``(images, score_threshold) -> one Detections per image``, called in a worker thread."""


@dataclasses.dataclass
class _Job:
    image: np.ndarray
    threshold: float
    future: asyncio.Future[Any]


def keep_above(detections: Any, threshold: float) -> Any:
    """The detections scoring above ``threshold`` (strictly, as the box branch keeps them)."""
    return detections[detections.scores > threshold]


class MicroBatcher:
    """Gathers :meth:`submit` calls into batches of at most ``max_batch`` for ``run``.

    ``max_queued`` requests may wait at once (further ones get ``QueueFull``),
    which bounds the decoded images held in memory. Use inside a running
    event loop: :meth:`start` before the first request, :meth:`stop` at shutdown.
    """

    def __init__(self, run: Run, *, max_batch: int, max_queued: int, wait_s: float = BATCH_WAIT_S,
                 mixed_thresholds: bool = True) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.run = run
        # Whether requests with other thresholds may share a batch (run at the lowest, each filtered to
        # its own): exact for a model, whose box branch applies the threshold before NMS and its cap;
        # not for tiles, whose merging of neighbours' detections depends on which were found.
        self.mixed_thresholds = mixed_thresholds
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.wait_s = wait_s
        self.batches = 0  # forward passes run (failed ones included)
        self.requests = 0  # images they held
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self._pending: collections.deque[_Job] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        # One thread: forward passes run one at a time (PyTorch spreads each over the cores).
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="maskrcnn-model")
        self._task = asyncio.create_task(self._loop(), name="maskrcnn-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, image: np.ndarray, threshold: float) -> Any:
        """The detections of ``image`` scoring above ``threshold``, from a batched forward pass."""
        if self._task is None or self._arrived is None:
            raise RuntimeError("the batcher is not running (start it in the application's lifespan)")
        if len(self._pending) >= self.max_queued:
            raise asyncio.QueueFull(f"{len(self._pending)} requests are waiting")
        job = _Job(image, threshold, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._arrived.set()
        return await job.future

    async def _loop(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + self.wait_s
            # An Event, not Queue.get under wait_for: a timeout then never loses a request.
            while len(self._pending) < self.max_batch and (remaining := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            if self.mixed_thresholds:
                jobs = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            else:  # the first request's threshold; the others wait for a batch of their own
                first = self._pending[0].threshold
                jobs = [job for job in self._pending if job.threshold == first][: self.max_batch]
                taken = {id(job) for job in jobs}  # by identity: jobs hold arrays, which do not compare
                self._pending = collections.deque(job for job in self._pending if id(job) not in taken)
            jobs = [job for job in jobs if not job.future.done()]  # a client that left cancels its future
            if jobs:
                await self._run_batch(jobs)

    async def _run_batch(self, jobs: list[_Job]) -> None:
        threshold = min(job.threshold for job in jobs)
        self.batches += 1
        self.requests += len(jobs)
        self.batch_sizes[len(jobs)] += 1
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.run, [job.image for job in jobs], threshold)
            if len(results) != len(jobs):
                raise RuntimeError(f"the model returned {len(results)} results for {len(jobs)} images")
        except asyncio.CancelledError:  # stopped while the model ran
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(RuntimeError("the server is shutting down"))
            raise
        except Exception as exc:  # the model failed: every request of the batch gets the error
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        for job, detections in zip(jobs, results, strict=True):
            if job.future.done():
                continue
            try:  # a failure here is that request's, never the loop's (the others would wait forever)
                job.future.set_result(detections if job.threshold == threshold
                                      else keep_above(detections, job.threshold))
            except Exception as exc:
                job.future.set_exception(exc)
