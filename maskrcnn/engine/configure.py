"""The model and solver configs of a training run: a preset fitted to a dataset and a command line.

Used by ``maskrcnn train`` and ``maskrcnn demo`` (and the training
benchmark), so that the same flags give the same run everywhere:

1. the preset's model, with the dataset's classes;
2. ``batch_size``: the learning rate scales linearly with it (``SolverConfig.lr``),
   and the schedule inversely, so the run sees as many images as the preset's;
3. ``iterations``: the run's length, the warm-up capped by it;
4. ``min_sizes`` / ``max_size``: the training sizes (the first is also the test size);
5. ``overrides``: ``--set key=value``, ``solver.``-prefixed keys to the solver
   and the others to the model, last (they win).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from ..config import PRESETS, ModelConfig, SolverConfig
from ..overrides import apply_overrides


class NamedClasses(Protocol):
    """What a training set tells the config: its class names and their dataset ids."""

    @property
    def class_names(self) -> Sequence[str]: ...

    @property
    def category_ids(self) -> Sequence[int]: ...


def configure(
    dataset: NamedClasses,
    *,
    preset: str,
    batch_size: int | None = None,
    iterations: int | None = None,
    min_sizes: Sequence[int] = (),
    max_size: int | None = None,
    overrides: Sequence[str] = (),
) -> tuple[ModelConfig, SolverConfig]:
    """``(model config, solver config)`` of a training run; see the module docstring.

    An unknown preset is a KeyError; a bad override or value a ValueError
    that names it.
    """
    chosen = PRESETS[preset]
    cfg = chosen.model.replace(
        num_classes=len(dataset.class_names),
        class_names=tuple(dataset.class_names),
        category_ids=tuple(dataset.category_ids),
    )
    solver = chosen.solver
    if batch_size is not None and batch_size != solver.batch_size:
        # As many images seen, and as long a warm-up in images, as the preset's schedule.
        solver = dataclasses.replace(
            solver, batch_size=batch_size,
            iterations=round(solver.iterations * solver.batch_size / batch_size),
            warmup_iters=round(solver.warmup_iters * solver.batch_size / batch_size),
        )
    if iterations is not None:
        solver = dataclasses.replace(solver, iterations=iterations,
                                     warmup_iters=min(solver.warmup_iters, iterations))
    inp = cfg.input
    if min_sizes:
        inp = dataclasses.replace(inp, min_size=min_sizes[0], train_min_sizes=tuple(min_sizes))
    if max_size:
        inp = dataclasses.replace(inp, max_size=max_size)
    cfg = cfg.replace(input=inp)
    solver_sets = [s.removeprefix("solver.") for s in overrides if s.startswith("solver.")]
    model_sets = [s for s in overrides if not s.startswith("solver.")]
    return apply_overrides(cfg, model_sets), apply_overrides(solver, solver_sets)
