"""Prediction split over the processes of a ``torchrun`` group, merged back in input order.

``torchrun --nproc-per-node N -m maskrcnn predict|evaluate ...`` starts N
processes; each predicts a share of the inputs on its own device and the
first process (rank 0) receives every prediction, in input order, and is the
only one that writes the results, prints, draws progress bars and computes
AP. The results are exactly a single process's, bit for bit: this is
Detectron2's distributed inference (``inference_on_dataset`` then
``comm.gather``), made exact.

Exact needs the same batches. Images batched together are padded to a common
size, and the padding changes the features near an image's border (and the
kernels a convolution picks can depend on the batch): an image's detections
depend on the images it is batched with, in their last bits. So the unit of
work is not an input but the batch a single process would form: ``B``
consecutive *readable* inputs (``Predictor.predict_files`` gives an unreadable
one no place in a batch). Which inputs are readable is only known by reading
them, so the processes go in rounds (``W`` processes, batch size ``B``):

1. each process reads the ``B`` inputs it claims, ``[start + rank*B, start + (rank+1)*B)``,
   the round's window being ``[start, start + W*B)``;
2. the processes exchange which of them could not be read (``all_gather``);
3. every process plans the round alike (:func:`plan_round`): the batches a
   single process forms there, batch ``k`` predicted by process ``k % W``;
4. the predictions go to rank 0 (``gather``), which yields them in input order.

With every input readable, process ``k``'s batch is exactly what it read:
no image is read twice. An unreadable input shifts the batches after it; the
next round then starts at the first input of the batch left unfinished, so
the claims line up with the batches again and only that round's reads past
it are repeated. Contiguous shards (process ``k`` takes the ``k``-th ``1/W``)
would need the same plan and, worse, would hold every result of the later
shards on rank 0 until the earlier ones finish; round by round, rank 0
writes results as they come, keeps at most ``W*B`` images' detections, and a
Ctrl-C keeps an in-order prefix of the results.

What each process writes of its own inputs (``predict --viz`` pictures) it
writes itself, through ``on_predicted``, where the image is. Objects go
between processes over gloo, also when the group runs NCCL (as Detectron2's
``comm`` does): detections are CPU tensors, and pickles staged through GPU
memory would only cost memory.

Shape shorthand: ``W`` processes (world size), ``B`` batch size, ``n`` inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch.distributed as dist
from tqdm import tqdm

from .. import dist as mdist
from ..data.images import ImageReadError
from ..structures import Detections
from .predict import BasePredictor, Prediction, _as_array

Source = TypeVar("Source")
Item = TypeVar("Item")


# --------------------------------------------------------------------------- the processes


class Exchange(Protocol):
    """The two collectives sharded prediction needs; every process calls them in the same order."""

    @property
    def rank(self) -> int:
        """This process's place, 0 to ``world - 1``; rank 0 is the main process."""
        ...

    @property
    def world(self) -> int:
        """The number of processes, ``W``."""
        ...

    def all_gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, indexed by rank, on every process."""
        ...

    def gather(self, obj: Any) -> list[Any] | None:
        """Every process's ``obj``, indexed by rank, on rank 0; None on the others."""
        ...


@dataclasses.dataclass(frozen=True)
class OneProcess:
    """The exchange of a process alone (no ``torchrun``)."""

    rank: int = 0
    world: int = 1

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj]

    def gather(self, obj: Any) -> list[Any] | None:
        return [obj]


@dataclasses.dataclass(frozen=True)
class DistributedExchange:
    """The exchange of a ``torch.distributed`` group: pickled objects over ``group`` (gloo)."""

    rank: int
    world: int
    group: Any = None  # None: the default group

    def all_gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def gather(self, obj: Any) -> list[Any] | None:
        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out


def is_main(exchange: Exchange) -> bool:
    """Whether this is the process that writes, prints and scores (rank 0)."""
    return exchange.rank == 0


@contextlib.contextmanager
def process_group(device: str | None = None) -> Iterator[Exchange]:
    """The processes this command runs in: ``torchrun``'s group when it started this one, else one.

    Joins the group (``maskrcnn.dist.setup_distributed``: NCCL for ``--device cuda``, gloo on CPUs)
    and leaves it at the end of the block, when it joined it. Objects are
    exchanged over a gloo group of the same processes.
    """
    joined = not dist.is_initialized()
    mdist.setup_distributed(device)
    try:
        if not mdist.is_distributed():
            yield OneProcess()
            return
        # Pickles over gloo, on the CPU, whatever the backend of the default group.
        group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        yield DistributedExchange(rank=mdist.rank(), world=mdist.world_size(), group=group)
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


def process_device(device: str | None, exchange: Exchange) -> str | None:
    """This process's device for ``--device``: plain ``cuda`` is its own GPU (``LOCAL_RANK``)
    when there are several processes; anything else (``cpu``, ``cuda:N``) as given."""
    if exchange.world > 1 and device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


@contextlib.contextmanager
def quiet_unless_main(exchange: Exchange) -> Iterator[None]:
    """Inside the block, a process other than rank 0 prints nothing: no progress bars, notes or
    warnings (stdout and stderr go nowhere; an error still ends the command with its one line)."""
    if is_main(exchange):
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class Round:
    """What one round does (:func:`plan_round`); indices are the inputs' positions, ``0 <= i < n``."""

    batches: tuple[tuple[int, ...], ...]  # a single process's batches settled here; k-th on rank k % W
    skipped: tuple[int, ...]  # unreadable inputs settled here (reported once, in their place)
    next_start: int  # the next round's window starts here
    carry: tuple[int, ...]  # readable inputs before next_start that open the next round's first batch


def claim(start: int, rank: int, world: int, batch_size: int, total: int) -> range:
    """The inputs process ``rank`` reads in the round whose window starts at ``start``:
    ``[start + rank*B, start + (rank+1)*B)`` within ``[0, total)``; the window is ``W*B`` long."""
    return range(min(start + rank * batch_size, total), min(start + (rank + 1) * batch_size, total))


def plan_round(
    start: int, carry: Sequence[int], readable: Sequence[bool], *, batch_size: int, total: int
) -> Round:
    """The batches of a round, given which inputs of its window could be read.

    ``readable[j]`` says whether input ``start + j`` could be read; the window
    ends at ``end = start + len(readable) <= total``. ``carry``: readable
    inputs before ``start`` that the previous round left unbatched. A single
    process batches ``carry`` then the window's readable inputs ``B`` at a
    time; the full batches are settled now, and the last short one too when
    the window reaches the last input. The readable inputs left over ``L``
    (fewer than ``B``) wait for the next round: it starts at ``L[0]``, so that
    its claims line up with the batches again (``L`` and the inputs after it
    are read once more), unless that would not move on (``L[0]`` is
    ``start`` or earlier: fewer than ``B`` readable inputs from ``start`` to
    ``end``); then it starts at ``end`` and carries ``L``. Unreadable inputs
    before the next start are settled. Every round starts further on than the
    last, so at most ``n`` rounds (``ceil(n / (W*B))`` when all are readable)
    settle every input, each once; the batches of all rounds, in order, are
    exactly a single process's.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    end = start + len(readable)
    if end > total:
        raise ValueError(f"window [{start}, {end}) goes past the {total} inputs")
    stream = [*carry, *(start + j for j, ok in enumerate(readable) if ok)]
    full = len(stream) - len(stream) % batch_size
    batches = [tuple(stream[k : k + batch_size]) for k in range(0, full, batch_size)]
    rest = stream[full:]
    if rest and end == total:  # the last inputs: a single process predicts the short batch too
        batches.append(tuple(rest))
        rest = []
    left: tuple[int, ...] = ()
    if rest and rest[0] > start:
        next_start = rest[0]
    else:
        next_start, left = end, tuple(rest)
    skipped = tuple(start + j for j, ok in enumerate(readable) if not ok and start + j < next_start)
    return Round(batches=tuple(batches), skipped=skipped, next_start=next_start, carry=left)


class InOrder(Generic[Item]):
    """Items put by index in any order, taken in index order (0, 1, 2, ...) as soon as each is there."""

    def __init__(self) -> None:
        self.next = 0  # the index taken next
        self.waiting: dict[int, Item] = {}

    def put(self, index: int, item: Item) -> None:
        if index < self.next or index in self.waiting:
            raise ValueError(f"index {index} put twice")
        self.waiting[index] = item

    def ready(self) -> Iterator[Item]:
        """The items from ``next`` on with no gap, each taken once."""
        while self.next in self.waiting:
            item = self.waiting.pop(self.next)
            self.next += 1
            yield item


# --------------------------------------------------------------------------- the predictor


class ShardedPredictor(BasePredictor):
    """``predictor`` with the inputs of :meth:`predict_files` split over ``exchange``'s processes.

    Alone (``world == 1``) it is ``predictor`` itself. Every process calls
    :meth:`predict_files` with the same sources and arguments; rank 0 gets
    every input's :class:`Prediction`, in input order, the others none. What
    else it is asked (``config``, ``coco_results``, ``predict_arrays``...) is
    ``predictor``'s, in this process.
    """

    def __init__(self, predictor: BasePredictor, exchange: Exchange) -> None:
        super().__init__(predictor.config, score_threshold=predictor.score_threshold)
        self.predictor = predictor
        self.exchange = exchange

    def run(
        self, images: Sequence[np.ndarray], score_threshold: float | None, timings: dict[str, float] | None
    ) -> list[Detections]:
        return self.predictor.run(images, score_threshold, timings)

    def coco_results(self, detections: Detections, file_name: str) -> list[dict[str, Any]]:
        return self.predictor.coco_results(detections, file_name)

    def predict_files(
        self,
        sources: Iterable[Source],
        *,
        batch_size: int = 1,
        score_threshold: float | None = None,
        read: Callable[[Source], np.ndarray] | None = None,
        report: bool = True,
        progress: bool = False,
        desc: str | None = None,
        on_predicted: Callable[[Prediction[Source]], None] | None = None,
    ) -> Iterator[Prediction[Source]]:
        """``Predictor.predict_files`` over the processes (see the module docstring).

        Rank 0 yields one :class:`Prediction` per source, in input order, with
        the detections a single process gives, bit for bit, and ``image``
        None (the pixels stay where they were read); a skipped source has
        ``error`` set and, with ``report``, its ``skipped PATH: what is
        wrong`` line goes to stderr once, in its turn. The other processes
        yield nothing. ``on_predicted`` is called in the process that
        predicted a source, with its image, before rank 0 yields it: the place
        for per-input files (a picture of the detections). ``progress``: a
        bar on rank 0 over all sources. Alone, this is ``predictor.predict_files``
        with ``on_predicted`` called on each prediction that has detections.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if self.exchange.world == 1:
            for prediction in self.predictor.predict_files(
                    sources, batch_size=batch_size, score_threshold=score_threshold, read=read, report=report,
                    progress=progress, desc=desc):
                if on_predicted is not None and prediction.detections is not None:
                    on_predicted(prediction)
                yield prediction
            return
        read_image: Callable[[Source], np.ndarray] = read or _as_array  # type: ignore[assignment]
        yield from self._rounds(list(sources), batch_size=batch_size, score_threshold=score_threshold,
                                read=read_image, report=report, progress=progress, desc=desc,
                                on_predicted=on_predicted)

    def _rounds(
        self,
        sources: list[Source],
        *,
        batch_size: int,
        score_threshold: float | None,
        read: Callable[[Source], np.ndarray],
        report: bool,
        progress: bool,
        desc: str | None,
        on_predicted: Callable[[Prediction[Source]], None] | None,
    ) -> Iterator[Prediction[Source]]:
        rank, world, total = self.exchange.rank, self.exchange.world, len(sources)
        main = is_main(self.exchange)
        order: InOrder[Prediction[Source]] = InOrder()
        bar = tqdm(total=total, unit="img", desc=desc, disable=not (progress and main), file=sys.stderr)
        start = 0  # the round's window starts here
        carry: tuple[int, ...] = ()  # readable inputs before it not yet batched
        try:
            while start < total:
                # 1. Read this process's claim; ImageReadError pickles badly: (path, problem) travels.
                images: dict[int, np.ndarray] = {}
                problems: dict[int, tuple[str, str]] = {}
                for i in claim(start, rank, world, batch_size, total):
                    try:
                        images[i] = read(sources[i])
                    except ImageReadError as error:
                        problems[i] = (str(error.path), error.problem)
                # 2. Which inputs of the window could not be read, on every process.
                for part in self.exchange.all_gather(problems):
                    problems.update(part)
                end = min(start + world * batch_size, total)
                # 3. The same plan everywhere; this process's batches are every W-th.
                plan = plan_round(start, carry, [i not in problems for i in range(start, end)],
                                  batch_size=batch_size, total=total)
                done: list[tuple[int, Detections]] = []
                for batch in plan.batches[rank::world]:
                    # Inputs another process claimed (the batches moved past an unreadable one) are read
                    # again here: reading is deterministic.
                    arrays = [images.pop(i) if i in images else read(sources[i]) for i in batch]
                    found = self.predictor.predict_arrays(arrays, score_threshold=score_threshold)
                    for i, array, detections in zip(batch, arrays, found, strict=True):
                        if on_predicted is not None:
                            on_predicted(Prediction(i, sources[i], array, detections=detections))
                        done.append((i, detections))
                # 4. Everything settled this round to rank 0, then out in input order.
                parts = self.exchange.gather(done)
                start, carry = plan.next_start, plan.carry  # (when start reaches the end, carry is empty)
                if parts is None:
                    continue
                for part in parts:
                    for i, detections in part:
                        order.put(i, Prediction(i, sources[i], None, detections=detections))
                for i in plan.skipped:
                    order.put(i, Prediction(i, sources[i], None, error=ImageReadError(*problems[i])))
                for prediction in order.ready():
                    if prediction.error is not None and report:
                        tqdm.write(f"skipped {prediction.error}", file=sys.stderr)
                    yield prediction
                    bar.update(1)
        finally:
            bar.close()


def drain(predictions: Iterable[Any]) -> None:
    """Run a process's share of a sharded prediction to its end (a process other than rank 0)."""
    for _ in predictions:
        pass
