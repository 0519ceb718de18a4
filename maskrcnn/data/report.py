"""What a dataset reader found while validating its files: problems counted per kind, a few examples each.

The readers (:class:`~maskrcnn.data.coco.CocoDataset`,
:class:`~maskrcnn.data.instance_png.InstancePngDataset`) skip problems of
single annotations or images instead of failing, and count them in a
:class:`DatasetReport`: a count per kind, up to ``max_examples`` examples
per kind (:class:`Problem`: the file, the annotation id when there is one,
what is wrong), and totals of what was kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DatasetReport", "Problem"]


@dataclass(frozen=True)
class Problem:
    """One example of a skipped problem: where it is and what is wrong."""

    kind: str
    file_name: str
    annotation_id: int | None
    detail: str


@dataclass
class DatasetReport:
    """What a dataset found while validating: problem counts per kind, a few examples each.

    ``num_images``, ``num_instances`` and ``num_crowd`` count what was kept;
    ``num_negatives`` the kept images without instances (they train as negatives).
    """

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[Problem]] = field(default_factory=dict)
    num_images: int = 0
    num_instances: int = 0
    num_crowd: int = 0
    num_negatives: int = 0
    max_examples: int = 5

    def add(self, kind: str, file_name: str, annotation_id: int | None = None, detail: str = "") -> None:
        """Count one problem of ``kind``; keep it as an example while fewer than ``max_examples`` are."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < self.max_examples:
            examples.append(Problem(kind, file_name, annotation_id, detail))

    @property
    def total(self) -> int:
        """Number of problems of all kinds (0 for a clean dataset)."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """Human-readable lines: what was kept, then each problem kind with its examples."""
        lines = [
            f"{self.num_images} images"
            + (f" ({self.num_negatives} without instances: negatives)" if self.num_negatives else "")
            + f", {self.num_instances} instances, {self.num_crowd} crowd regions; "
            + (f"{self.total} problems skipped" if self.total else "no problems")
        ]
        for kind in sorted(self.counts):
            lines.append(f"  {kind}: {self.counts[kind]}")
            for p in self.examples.get(kind, []):
                where = p.file_name or "?"
                if p.annotation_id is not None:
                    where += f" (annotation {p.annotation_id})"
                lines.append(f"    {where}" + (f": {p.detail}" if p.detail else ""))
        return "\n".join(lines)
