"""The optimiser's schedule: learning rate by iteration, and which parameters decay.

The learning rate of iteration ``i`` (the paper's schedule, Section 3.1)::

    lr(i) = lr * warmup(i) * gamma ** (number of decay steps <= i)
    warmup(i) = factor + (1 - factor) * i / warmup_iters   for i < warmup_iters

with the decay steps given as fractions of the run (``solver.steps``), so a
schedule scaled to another batch size decays at the same point of it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import SolverConfig


def lr_factor(iteration: int, solver: SolverConfig) -> float:
    """Multiplier of the base learning rate at ``iteration`` (warm-up times step decay)."""
    factor = 1.0
    if iteration < solver.warmup_iters:
        alpha = iteration / solver.warmup_iters
        factor = solver.warmup_factor * (1 - alpha) + alpha
    decays = sum(iteration >= round(step * solver.iterations) for step in solver.steps)
    return factor * solver.gamma**decays


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weights, not on biases and normalisation parameters (as Detectron2 does).

    Decaying a normalisation layer's scale or any bias toward 0 only fights
    the normalisation; these parameters are few and do not overfit.
    """
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            norm = isinstance(module, nn.GroupNorm | nn.BatchNorm2d | nn.SyncBatchNorm)
            (no_decay if norm or name == "bias" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
