"""What a training run shows of itself: the metrics log, TensorBoard scalars, the loss curve.

Files in the run's output folder::

    metrics.jsonl    one JSON object per logged iteration (and per validation)
    tensorboard/     the same numbers as TensorBoard scalars (when TensorBoard is installed)
    loss_curve.png   the loss terms and their total against iterations

Only rank 0 of a distributed run writes them (the trainer decides).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..files import write_atomically

METRICS = "metrics.jsonl"


class Monitor:
    """Appends records to ``out/metrics.jsonl`` and to TensorBoard (opened on the first record)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self._writer: Any = None  # None: not opened yet; False: TensorBoard is not installed

    def append(self, record: dict[str, Any]) -> None:
        """Log one record; ``record["iteration"]`` is the TensorBoard step of its numbers."""
        with open(self.out / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            for key, value in record.items():
                if key != "iteration" and isinstance(value, int | float):
                    writer.add_scalar(key, value, record["iteration"])

    def close(self) -> None:
        if self._writer:
            self._writer.close()
        self._writer = None

    def _tensorboard(self) -> Any:
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # TensorBoard is optional at run time
                self._writer = False
            else:
                self._writer = SummaryWriter(str(self.out / "tensorboard"))
        return self._writer or None


def read_metrics(out: Path) -> list[dict[str, Any]]:
    """The records of ``out/metrics.jsonl`` (none when there is no such file)."""
    path = out / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(out: Path, records: list[dict[str, Any]]) -> None:
    """Replace ``out/metrics.jsonl`` by ``records`` (atomically: a resume cuts it back)."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    write_atomically(out / METRICS, lambda tmp: tmp.write_text(text))


def plot_losses(history: list[dict[str, Any]], path: Path) -> Path | None:
    """The loss terms and their total against iterations, as a PNG (None: nothing logged yet)."""
    rows = [h for h in history if "total_loss" in h]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    its = [h["iteration"] for h in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for key in sorted(k for k in rows[0] if k.startswith("loss_")) + ["total_loss"]:
        values = [h.get(key, math.nan) for h in rows]
        ax.plot(its, values, label=key.replace("loss_", ""), linewidth=2.2 if key == "total_loss" else 1.2)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("training losses")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
