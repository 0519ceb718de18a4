"""Tests for maskrcnn.structures: ground truth checks its shapes when it is built; moving and indexing."""

from __future__ import annotations

import pytest
import torch

from maskrcnn.structures import Annotations, Detections, ImageBatch, Targets


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


# ---------------------------------------------------------------------------
# Moving and indexing, over the dataclass fields.


def _detections(d: int = 4, *, with_masks: bool = True) -> Detections:
    g = torch.Generator().manual_seed(d)
    return Detections(
        boxes=torch.rand((d, 4), generator=g),
        scores=torch.rand((d,), generator=g),
        labels=torch.arange(d),
        masks=torch.rand((d, 5, 6), generator=g) > 0.5 if with_masks else None,
        keypoints=None if with_masks else torch.rand((d, 3, 3), generator=g),
        class_names=["cat", "dog", "eel", "fox"],
    )


def test_to_keeps_every_value() -> None:
    batch = ImageBatch(torch.rand(2, 3, 8, 8), [(8, 6), (5, 8)], [(16, 12), (10, 16)])
    moved = batch.to("cpu")
    assert torch.equal(moved.tensor, batch.tensor)
    assert moved.image_sizes == batch.image_sizes and moved.original_sizes == batch.original_sizes
    assert moved.image_sizes is not batch.image_sizes  # lists are copies
    for dets in (_detections(), _detections(with_masks=False)):
        moved_dets = dets.to(torch.device("cpu"))
        for name in ("boxes", "scores", "labels", "masks", "keypoints"):
            a, b = getattr(moved_dets, name), getattr(dets, name)
            assert (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
        assert moved_dets.class_names == dets.class_names
    t = Targets(**_fields(), seed=7).to("cpu")
    for name, value in _fields().items():
        assert torch.equal(getattr(t, name), value)
    assert t.seed == 7
    bare = Targets(torch.zeros((2, 4)), torch.zeros((2,), dtype=torch.int64)).to("cpu")
    assert bare.masks is None and bare.keypoints is None and bare.seed is None


@pytest.mark.parametrize(
    "index",
    [torch.tensor([True, False, True, True]), torch.tensor([3, 0]), torch.tensor([], dtype=torch.int64),
     slice(1, 3), slice(None, None, 2)],
    ids=["bool-mask", "index-tensor", "empty-index", "slice", "stepped-slice"],
)
@pytest.mark.parametrize("with_masks", [True, False])
def test_indexing_selects_every_per_instance_field(index: torch.Tensor | slice, with_masks: bool) -> None:
    dets = _detections(with_masks=with_masks)
    picked = dets[index]
    rows = torch.arange(len(dets))[index].tolist()
    assert len(picked) == len(rows)
    for name in ("boxes", "scores", "labels", "masks", "keypoints"):
        full, part = getattr(dets, name), getattr(picked, name)
        if full is None:
            assert part is None  # None fields stay None
        else:
            assert part is not None and torch.equal(part, full[rows])
    assert picked.labels.tolist() == rows  # the same instances in every field
    assert picked.class_names == dets.class_names
    assert picked.names == [dets.class_names[i] for i in rows]


def test_to_and_indexing_leave_the_original_alone() -> None:
    dets = _detections()
    before = {name: getattr(dets, name).clone() for name in ("boxes", "scores", "labels", "masks")}
    dets[torch.tensor([0, 1])].boxes.zero_()
    dets.to("cpu")
    for name, value in before.items():
        assert torch.equal(getattr(dets, name), value)


def test_shape_checks_still_raise_on_a_copy() -> None:
    t = Targets(**_fields())
    t.labels = torch.zeros((3,), dtype=torch.int64)  # made inconsistent after construction
    with pytest.raises(ValueError, match=r"Targets.labels must be \(M,\) = \(2,\)"):
        t.to("cpu")
    with pytest.raises(ValueError, match=r"Targets.boxes must be \(M, 4\)"):
        Targets(torch.zeros((2, 5)), torch.zeros((2,), dtype=torch.int64))
