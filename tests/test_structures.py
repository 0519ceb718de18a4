"""Tests for maskrcnn.structures: ground truth checks its shapes when it is built."""

from __future__ import annotations

import pytest
import torch

from maskrcnn.structures import Annotations, Targets


def _fields(m: int = 2, side: int = 8) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.zeros((m, 4)),
        "labels": torch.zeros((m,), dtype=torch.int64),
        "masks": torch.zeros((m, side, side), dtype=torch.uint8),
        "keypoints": torch.zeros((m, 5, 3)),
        "crowd_boxes": torch.zeros((1, 4)),
    }


@pytest.mark.parametrize("cls", [Targets, Annotations])
@pytest.mark.parametrize("m", [0, 2])
def test_consistent_shapes_are_accepted(cls: type, m: int) -> None:
    gt = cls(**_fields(m))
    assert len(gt) == m
    assert len(cls(torch.zeros((m, 4)), torch.zeros((m,), dtype=torch.int64))) == m


@pytest.mark.parametrize("cls", [Targets, Annotations])
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("boxes", torch.zeros((2, 5)), r"boxes must be \(M, 4\), got \(2, 5\)"),
        ("boxes", torch.zeros(8), r"boxes must be \(M, 4\), got \(8,\)"),
        ("labels", torch.zeros((3,), dtype=torch.int64), r"labels must be \(M,\) = \(2,\).*got \(3,\)"),
        ("labels", torch.zeros((2, 1), dtype=torch.int64), r"labels must be \(M,\)"),
        ("labels", torch.zeros((2,)), r"labels must be integers, got torch.float32"),
        ("masks", torch.zeros((3, 8, 8)), r"masks must be \(M, H, W\) with M = 2.*got \(3, 8, 8\)"),
        ("masks", torch.zeros((8, 8)), r"masks must be \(M, H, W\)"),
        ("keypoints", torch.zeros((1, 5, 3)), r"keypoints must be \(M, P, 3\) with M = 2"),
        ("keypoints", torch.zeros((2, 5, 2)), r"keypoints must be \(M, P, 3\)"),
        ("crowd_boxes", torch.zeros((1, 3)), r"crowd_boxes must be \(G, 4\)"),
        ("boxes", [[0.0, 0.0, 1.0, 1.0]] * 2, r"boxes must be a tensor, not list"),
    ],
)
def test_mismatched_shapes_are_named(cls: type, field: str, value: object, message: str) -> None:
    fields: dict[str, object] = dict(_fields())
    fields[field] = value
    with pytest.raises(ValueError, match=f"{cls.__name__}.{message}"):
        cls(**fields)


def test_to_keeps_the_checked_shapes() -> None:
    t = Targets(**_fields(), seed=3)
    moved = t.to("cpu")
    assert moved.seed == 3 and moved.masks is not None and moved.masks.shape == (2, 8, 8)
