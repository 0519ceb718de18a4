"""Prediction split over processes gives exactly a single process's results, in input order.

The plan (``plan_round``) against a single process's batching over many random
input counts, world sizes, batch sizes and unreadable inputs; the whole
protocol in threads standing for processes, against ``Predictor.predict_files``;
and ``maskrcnn predict`` / ``evaluate`` under ``torchrun`` with two CPU
processes against one process: the same bytes, the same AP.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.config import PRESETS
from maskrcnn.data.images import ImageReadError
from maskrcnn.engine.predict import BasePredictor, Prediction, load
from maskrcnn.engine.sharding import InOrder, OneProcess, ShardedPredictor, claim, plan_round
from maskrcnn.structures import Detections

from ..helpers import small_config, write_small_checkpoint

# --------------------------------------------------------------------------- the plan


def single_process_batches(readable: Sequence[bool], batch_size: int) -> list[tuple[int, ...]]:
    """A single process's batches: the readable inputs, ``batch_size`` at a time, in order."""
    indices = [i for i, ok in enumerate(readable) if ok]
    return [tuple(indices[k : k + batch_size]) for k in range(0, len(indices), batch_size)]


def run_plan(readable: Sequence[bool], world: int,
             batch_size: int) -> tuple[list[tuple[int, ...]], list[int], int]:
    """All rounds of the plan: its batches in order, the skipped inputs settled, the number of
    rounds; checks on the way that the first batches of a round are the claims when they can be."""
    total = len(readable)
    start = 0
    carry: tuple[int, ...] = ()
    batches: list[tuple[int, ...]] = []
    skipped: list[int] = []
    rounds = 0
    while start < total:
        end = min(start + world * batch_size, total)
        plan = plan_round(start, carry, readable[start:end], batch_size=batch_size, total=total)
        assert plan.next_start > start, "every round moves on"
        assert all(i < plan.next_start for batch in plan.batches for i in batch)
        if not carry and all(readable[start:end]):
            # Every input readable: process k predicts what it read, nothing is read twice.
            assert list(plan.batches) == [tuple(claim(start, k, world, batch_size, total))
                                          for k in range(len(plan.batches))]
        assert len(plan.batches) <= world + 1
        batches += plan.batches
        skipped += plan.skipped
        start, carry = plan.next_start, plan.carry
        rounds += 1
    assert carry == (), "nothing is left over at the end"
    return batches, skipped, rounds


def test_plan_of_three_processes_around_an_unreadable_input() -> None:
    """Inputs 0..9, input 2 unreadable, batches of 2 on 3 processes: a single process's batches
    are (0, 1), (3, 4), (5, 6), (7, 8), (9,)."""
    readable = [i != 2 for i in range(10)]
    first = plan_round(0, (), readable[0:6], batch_size=2, total=10)
    # The window 0..5 holds (0, 1), (3, 4) and the start of (5, 6): the next round starts at 5.
    assert first.batches == ((0, 1), (3, 4))
    assert first.skipped == (2,)
    assert (first.next_start, first.carry) == (5, ())
    second = plan_round(5, (), readable[5:10], batch_size=2, total=10)
    assert second.batches == ((5, 6), (7, 8), (9,))
    assert (second.skipped, second.next_start, second.carry) == ((), 10, ())


def test_plan_carries_a_batch_that_cannot_fill_its_window() -> None:
    """Input 0 readable, then five unreadable: a batch of 4 cannot be formed in the window; starting
    again at 0 would not move on, so 0 is carried and the next window starts after this one."""
    readable = [True, False, False, False, False, False, True, True, True, True]
    plan = plan_round(0, (), readable[0:6], batch_size=4, total=10)
    assert plan.batches == ()
    assert (plan.skipped, plan.next_start, plan.carry) == ((1, 2, 3, 4, 5), 6, (0,))
    last = plan_round(6, plan.carry, readable[6:10], batch_size=4, total=10)
    assert last.batches == ((0, 6, 7, 8), (9,))


@pytest.mark.parametrize("seed", range(4))
def test_plan_gives_a_single_process_batches_whatever_the_inputs(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(500):
        total = rng.randint(0, 40)
        world, batch_size = rng.randint(1, 5), rng.randint(1, 5)
        unreadable = rng.choice((0.0, 0.1, 0.4, 0.8, 1.0))
        readable = [rng.random() >= unreadable for _ in range(total)]
        batches, skipped, rounds = run_plan(readable, world, batch_size)
        case = (total, world, batch_size, readable)
        assert batches == single_process_batches(readable, batch_size), case
        assert sorted(skipped) == [i for i, ok in enumerate(readable) if not ok], case
        assert len(set(skipped)) == len(skipped), case
        assert rounds <= total, case
        if all(readable):
            assert rounds == -(-total // (world * batch_size)), case


def test_plan_refuses_a_window_past_the_inputs() -> None:
    with pytest.raises(ValueError, match="past the 3 inputs"):
        plan_round(2, (), [True, True], batch_size=1, total=3)


def test_in_order_gives_items_by_index_as_soon_as_there_is_no_gap() -> None:
    rng = random.Random(0)
    for total in range(30):
        order: InOrder[int] = InOrder()
        indices = list(range(total))
        rng.shuffle(indices)
        out: list[int] = []
        for index in indices:
            order.put(index, 10 * index)
            out += order.ready()
            assert out == [10 * i for i in range(len(out))]
        assert out == [10 * i for i in range(total)]
    order = InOrder()
    order.put(0, 0)
    list(order.ready())
    with pytest.raises(ValueError, match="index 0 put twice"):
        order.put(0, 0)


# --------------------------------------------------------------------------- the protocol, in threads


class _Threads:
    """What threads standing for processes share: one slot each, and a barrier."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.slots: list[Any] = [None] * world
        self.barrier = threading.Barrier(world, timeout=20)


class _ThreadExchange:
    """``Exchange`` between threads (objects are shared, not pickled)."""

    def __init__(self, shared: _Threads, rank: int) -> None:
        self.shared, self.rank, self.world = shared, rank, shared.world

    def all_gather(self, obj: Any) -> list[Any]:
        self.shared.slots[self.rank] = obj
        self.shared.barrier.wait()
        out = list(self.shared.slots)
        self.shared.barrier.wait()  # everyone has copied before anyone writes again
        return out

    def gather(self, obj: Any) -> list[Any] | None:
        out = self.all_gather(obj)
        return out if self.rank == 0 else None


class _BatchRecorder(BasePredictor):
    """Answers each image with detections that say which batch it was predicted in.

    An "image" is ``np.full((1, 1, 3), index)``; each detection's box is
    ``(index, first index of the batch, batch length, 0)``, so equal
    detections mean equal batches.
    """

    def __init__(self) -> None:
        super().__init__(small_config())
        self.batches: list[tuple[int, ...]] = []
        self.lock = threading.Lock()

    def run(self, images: Sequence[np.ndarray], score_threshold: float | None,
            timings: dict[str, float] | None) -> list[Detections]:
        batch = tuple(int(image[0, 0, 0]) for image in images)
        with self.lock:
            self.batches.append(batch)
        return [Detections(boxes=torch.tensor([[float(i), float(batch[0]), float(len(batch)), 0.0]]),
                           scores=torch.tensor([0.5]), labels=torch.tensor([0])) for i in batch]


def _reader(unreadable: set[int], reads: Counter[int]) -> Any:
    lock = threading.Lock()

    def read(source: int) -> np.ndarray:
        with lock:
            reads[source] += 1
        if source in unreadable:
            raise ImageReadError(f"img{source}.png", "not an image")
        return np.full((1, 1, 3), source, dtype=np.int64)

    return read


def _in_threads(world: int, sources: list[int], unreadable: set[int], batch_size: int
                ) -> tuple[list[Prediction[int]], list[tuple[int, ...]], Counter[int], list[tuple[int, int]]]:
    """Rank 0's predictions, the batches run on all ranks, the reads, and ``(rank, index)`` of each
    ``on_predicted`` call."""
    shared = _Threads(world)
    recorder = _BatchRecorder()
    reads: Counter[int] = Counter()
    read = _reader(unreadable, reads)
    owned: list[tuple[int, int]] = []
    results: dict[int, list[Prediction[int]]] = {}
    errors: list[BaseException] = []

    def process(rank: int) -> None:
        def on_predicted(prediction: Prediction[int]) -> None:
            assert prediction.image is not None and int(prediction.image[0, 0, 0]) == prediction.index
            owned.append((rank, prediction.index))

        exchange = _ThreadExchange(shared, rank) if world > 1 else OneProcess()
        try:
            results[rank] = list(ShardedPredictor(recorder, exchange).predict_files(
                sources, batch_size=batch_size, read=read, on_predicted=on_predicted))
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)
            shared.barrier.abort()

    threads = [threading.Thread(target=process, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert all(results[rank] == [] for rank in range(1, world)), "only rank 0 gets predictions"
    return results[0], recorder.batches, reads, owned


@pytest.mark.parametrize(("world", "batch_size", "unreadable"), [
    (1, 2, {3}),
    (2, 1, set()),
    (2, 2, set()),
    (2, 2, {0, 3}),
    (3, 2, {2}),
    (3, 3, {1, 2, 4, 5, 6, 7, 8, 9}),
    (4, 1, {11}),
    (2, 4, set(range(12))),
])
def test_threads_as_processes_predict_exactly_as_one(world: int, batch_size: int, unreadable: set[int],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    sources = list(range(12))
    alone = _BatchRecorder()
    expected = list(alone.predict_files(sources, batch_size=batch_size, read=_reader(unreadable, Counter()),
                                        report=False))
    capsys.readouterr()

    got, batches, reads, owned = _in_threads(world, sources, unreadable, batch_size)

    assert [p.index for p in got] == sources and [p.source for p in got] == sources
    for mine, theirs in zip(got, expected, strict=True):
        assert (mine.detections is None) == (theirs.detections is None)
        if theirs.detections is not None:
            assert mine.detections is not None
            assert torch.equal(mine.detections.boxes, theirs.detections.boxes), mine.index
        else:
            assert str(mine.error) == str(theirs.error) == f"img{mine.index}.png: not an image"
    assert sorted(batches) == sorted(alone.batches), "the same batches, wherever they ran"
    # Each skipped input is reported once, in its place.
    skipped = [line for line in capsys.readouterr().err.splitlines() if line.startswith("skipped")]
    assert skipped == [f"skipped img{i}.png: not an image" for i in sorted(unreadable)]
    # Pictures and such are made once per predicted input, by the process that predicted it.
    assert sorted(index for _, index in owned) == [i for i in sources if i not in unreadable]
    if world > 1 and not unreadable:
        assert all(count == 1 for count in reads.values()), "every input read once"
        assert {(rank, i) for rank, i in owned} == {
            ((i // batch_size) % world, i) for i in sources}, "batch k runs on process k % W"


# --------------------------------------------------------------------------- torchrun, two CPU processes

SIZES = [(120, 160), (160, 120), (100, 140), (128, 128), (90, 200), (150, 110)]


def _images(folder: Path) -> list[Path]:
    """Random pixels at different sizes (so images batched together are padded), seeded."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for k, (height, width) in enumerate(SIZES):
        path = folder / f"img{k}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def _both(args: list[str], one: Path, two: Path, cwd: Path
          ) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """``maskrcnn ARGS`` by one process, then by two under torchrun (``{out}``: each one's folder)."""
    alone = _run([sys.executable, "-m", "maskrcnn", *(a.format(out=one) for a in args)], cwd)
    shared = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "maskrcnn", *(a.format(out=two) for a in args)], cwd)
    return alone, shared


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's narrow ResNet-18-FPN with small RoI budgets (a tenth of a second for two images),
    its images resized as ``small_config``'s: still padded differently in different batches."""
    base, small = PRESETS["demo-r18-fpn"].model, small_config()
    config = base.replace(num_classes=3, class_names=small.class_names, category_ids=small.category_ids,
                          input=small.input, rpn=dataclasses.replace(base.rpn, post_nms_topk_test=100),
                          box_head=dataclasses.replace(base.box_head, detections_per_image=20))
    return write_small_checkpoint(tmp_path_factory.mktemp("w") / "small.safetensors", config)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")
def test_predict_in_two_processes_writes_what_one_writes(weights: Path, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    _images(folder)
    (folder / "img2b.png").write_bytes(b"not a png")  # unreadable, third in sorted order
    one, two = tmp_path / "one", tmp_path / "two"
    alone, shared = _both(["predict", str(folder), "--weights", str(weights), "--batch-size", "2",
                           "--out", "{out}/results.json", "--viz", "{out}/pictures"], one, two, tmp_path)
    # The unreadable image makes both fail (status 1), after writing the others' results.
    assert alone.returncode == 1, alone.stderr
    assert shared.returncode != 0, shared.stderr
    for run in (alone, shared):
        assert run.stderr.count("skipped ") == 1 and "img2b.png" in run.stderr, run.stderr
        assert run.stderr.count("detections on 6 image(s)") == 1, run.stderr
    results = (one / "results.json").read_bytes()
    assert json.loads(results), "the small model is built to detect something"
    assert (two / "results.json").read_bytes() == results
    pictures = sorted(p.name for p in (one / "pictures").iterdir())
    assert pictures == [f"img{k}.png" for k in range(len(SIZES))]
    assert sorted(p.name for p in (two / "pictures").iterdir()) == pictures
    for name in pictures:
        assert (two / "pictures" / name).read_bytes() == (one / "pictures" / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")
def test_evaluate_in_two_processes_scores_what_one_scores(weights: Path, tmp_path: Path) -> None:
    paths = _images(tmp_path / "images")
    # Ground truth: a few of the model's own boxes, moved a little, so that AP is neither 0 nor 1.
    torch.manual_seed(0)
    found = load(weights)([str(p) for p in paths])
    assert isinstance(found, list)
    rng = np.random.default_rng(1)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, (path, detections) in enumerate(zip(paths, found, strict=True), start=1):
        height, width = Image.open(path).size[::-1]
        images.append({"id": image_id, "file_name": path.name, "height": height, "width": width})
        for box, label in zip(detections.boxes[:4].tolist(), detections.labels[:4].tolist(), strict=True):
            x0, y0, x1, y1 = (v + float(rng.normal(0, 2)) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 10 + label,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                "iscrowd": 0, "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
    categories = [{"id": 10 + k, "name": f"thing{k}"} for k in range(3)]
    data = tmp_path / "val.json"
    data.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))

    one, two = tmp_path / "one", tmp_path / "two"
    alone, shared = _both(["evaluate", "--json", str(data), "--images", str(tmp_path / "images"),
                           "--weights", str(weights), "--batch-size", "2", "--out", "{out}/metrics.json",
                           "--results", "{out}/results.json"], one, two, tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert shared.returncode == 0, shared.stderr
    metrics = json.loads((one / "metrics.json").read_text())
    assert metrics["images"] == len(SIZES) and 0 < metrics["bbox"]["AP"] < 1, metrics
    assert (two / "metrics.json").read_bytes() == (one / "metrics.json").read_bytes()
    assert (two / "results.json").read_bytes() == (one / "results.json").read_bytes()
    # The table is printed once, by rank 0.
    assert shared.stdout.count("bbox") == alone.stdout.count("bbox") == 1, shared.stdout
