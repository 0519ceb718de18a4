"""The few ``torch.distributed`` facts the rest of the package needs.

Training under ``torchrun`` starts one process per device; each sees part of
the global batch. Loss normalisers (numbers of sampled anchors, RoIs, mask
pixels) are summed over all processes with ``global_normaliser`` so that a
loss means the same whatever way the batch is split: after
DistributedDataParallel averages the gradients, they equal those of one
process holding the whole batch.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def global_normaliser(count: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    """``count`` summed over processes, divided by their number (at least 1).

    Dividing a process's summed loss by this, then averaging gradients over
    processes, divides the batch's total loss by the batch's total count.
    """
    total = torch.as_tensor(count, dtype=torch.float32, device=device).reshape(())
    if is_distributed():
        total = total.clone()
        dist.all_reduce(total)
        total = total / dist.get_world_size()
    return total.clamp(min=1.0 / world_size())


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over processes (for logging)."""
    if not is_distributed() or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(values, t.tolist(), strict=True))


def setup_distributed(device: str | None = None) -> None:
    """Join the process group that ``torchrun`` describes in the environment (no-op otherwise).

    NCCL on GPUs (each process on its ``LOCAL_RANK`` device), gloo on CPUs.
    ``device`` is the command's ``--device``: a CPU run takes gloo even on a
    machine with GPUs (None: GPUs when there are any).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        on_gpu = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
        backend = "nccl" if on_gpu else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
