"""Command-line flag checks shared by the commands that run a model (``predict``, ``evaluate``, ``serve``)."""

from __future__ import annotations

import argparse

import torch

__all__ = ["add_dtype_argument", "device_problem", "dtype_problem", "dtype_warning", "unit_interval"]


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


def add_dtype_argument(p: argparse.ArgumentParser) -> None:
    """``--dtype float32|bfloat16|float16``: the number type the network computes in."""
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="number type of the network (default: float32). bfloat16 is about twice as fast "
                        "on CPUs with AVX512-BF16 or AMX; float16 is for CUDA. Boxes, scores and masks "
                        "are computed in float32 either way")


def dtype_problem(dtype: str, device: str | None) -> str | None:
    """What is wrong with ``--dtype`` on ``--device`` (one line), None when the pair can run."""
    if dtype == "float16" and torch.device(device or "cpu").type == "cpu":
        return "--dtype float16 runs on CUDA only; on the CPU use --dtype bfloat16"
    return None


def dtype_warning(dtype: str, device: str | None, cpu_flags: set[str] | None = None) -> str | None:
    """A warning (one line) when ``--dtype bfloat16`` would run slowly: on a CPU whose flags
    (``/proc/cpuinfo``; ``cpu_flags`` to override) show no bfloat16 instructions, where it is emulated.
    None when it runs natively, or when the CPU's flags cannot be read."""
    if dtype != "bfloat16" or torch.device(device or "cpu").type != "cpu":
        return None
    flags = _cpu_flags() if cpu_flags is None else cpu_flags
    if not flags or flags & {"avx512_bf16", "amx_bf16", "bf16"}:  # x86 AVX512-BF16 or AMX, Arm BF16
        return None
    return ("--dtype bfloat16: this CPU has no bfloat16 instructions (AVX512-BF16, AMX), so bfloat16 is "
            "emulated and likely slower than float32")


def _cpu_flags() -> set[str]:
    """The CPU feature flags Linux lists (x86 ``flags``, Arm ``Features``); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def unit_interval(text: str) -> float:
    """argparse type of a score threshold: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]")
    return value
