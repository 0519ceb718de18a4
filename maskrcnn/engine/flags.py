"""Command-line flag checks shared by the commands that run a model (``predict``, ``evaluate``, ``serve``)."""

from __future__ import annotations

import argparse

import torch

__all__ = ["device_problem", "unit_interval"]


def device_problem(name: str) -> str | None:
    """What is wrong with ``--device name`` on this machine (one line), None when it can run there."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return f"--device {name}: not a device; use cpu, cuda or cuda:N"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device {name}: no CUDA device is available here; use --device cpu"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    elif device.type != "cpu":
        return f"--device {name}: use cpu, cuda or cuda:N"
    return None


def unit_interval(text: str) -> float:
    """argparse type of a score threshold: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]")
    return value
