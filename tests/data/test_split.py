"""``maskrcnn dataset split``: by image, seeded, every class on both sides where it can be."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from maskrcnn.cli import main
from maskrcnn.data.split import split_coco
from maskrcnn.data.validation import DatasetError
from tests.helpers import error_line


def _dataset(seed: int, images: int, classes: int, max_instances: int = 4) -> dict:
    """A COCO file of ``images`` images whose instances draw classes with very unequal frequencies."""
    rng = random.Random(seed)
    weights = [2.0**-i for i in range(classes)]  # some classes are rare
    anns, next_id = [], 1
    for image_id in range(1, images + 1):
        for _ in range(rng.randint(0, max_instances)):  # some images have none
            category = rng.choices(range(classes), weights)[0] + 1
            anns.append({"id": next_id, "image_id": image_id, "category_id": category,
                         "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0})
            next_id += 1
    return {"info": {"description": "test"},
            "images": [{"id": i, "file_name": f"{i}.png", "height": 8, "width": 8}
                       for i in range(1, images + 1)],
            "annotations": anns,
            "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(classes)]}


@pytest.mark.parametrize("seed", range(40))
def test_split_is_a_partition_by_image_with_classes_on_both_sides(seed: int) -> None:
    rng = random.Random(1000 + seed)
    data = _dataset(seed, images=rng.randint(2, 60), classes=rng.randint(1, 8))
    fraction = rng.choice([0.1, 0.2, 0.5, 0.8])
    train, val, summary = split_coco(data, fraction, seed)
    train_ids = {im["id"] for im in train["images"]}
    val_ids = {im["id"] for im in val["images"]}
    assert train_ids and val_ids and not train_ids & val_ids
    assert train_ids | val_ids == {im["id"] for im in data["images"]}
    # Every annotation goes with its image.
    split_ids = sorted(a["id"] for a in train["annotations"] + val["annotations"])
    assert split_ids == [a["id"] for a in data["annotations"]]
    assert all(a["image_id"] in train_ids for a in train["annotations"])
    assert all(a["image_id"] in val_ids for a in val["annotations"])
    # A class annotating two or more images is on both sides.
    images_of: dict[int, set[int]] = {}
    for a in data["annotations"]:
        images_of.setdefault(a["category_id"], set()).add(a["image_id"])
    for category, members in images_of.items():
        if len(members) >= 2:
            assert members & train_ids and members & val_ids, f"class {category} on one side only"
    assert summary.classes_on_both_sides == summary.classes_that_can_be
    # The share is the fraction's, unless covering the classes took more.
    target = min(max(round(fraction * len(data["images"])), 1), len(data["images"]) - 1)
    assert len(val_ids) == target or len(val_ids) <= summary.classes_that_can_be
    assert train["categories"] == val["categories"] == data["categories"]
    assert train["info"] == data["info"]


def test_the_seed_decides_the_split() -> None:
    data = _dataset(0, images=50, classes=3)
    first, _, _ = split_coco(data, 0.2, seed=7)
    again, _, _ = split_coco(data, 0.2, seed=7)
    other, _, _ = split_coco(data, 0.2, seed=8)
    assert first == again
    assert first["images"] != other["images"]


def test_malformed_files_are_refused() -> None:
    with pytest.raises(DatasetError, match="no integer or string 'id'"):
        split_coco({"images": [{"file_name": "a.png"}, {"id": 2}]}, 0.5, 0)
    with pytest.raises(DatasetError, match="used twice"):
        split_coco({"images": [{"id": 1}, {"id": 1}]}, 0.5, 0)
    with pytest.raises(DatasetError, match="at least two"):
        split_coco({"images": [{"id": 1}]}, 0.5, 0)
    with pytest.raises(DatasetError, match="'images' is missing"):
        split_coco({"annotations": []}, 0.5, 0)


def test_command_writes_both_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "all.json"
    source.write_text(json.dumps(_dataset(3, images=20, classes=4)))
    out = tmp_path / "s"
    assert main(["dataset", "split", str(source), "--val", "0.25", "--seed", "1", "--out", str(out)]) == 0
    train = json.loads((tmp_path / "s" / "train.json").read_text())
    val = json.loads((tmp_path / "s" / "val.json").read_text())
    assert len(train["images"]) + len(val["images"]) == 20 and len(val["images"]) >= 5
    assert "validation image(s)" in capsys.readouterr().err


def test_command_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert main(["dataset", "split", str(broken), "--out", str(tmp_path / "s")]) == 1
    error_line(capsys.readouterr().err, str(broken), "JSON")
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"images": [{"id": 1}], "categories": []}))
    assert main(["dataset", "split", str(one), "--out", str(tmp_path / "s")]) == 1
    error_line(capsys.readouterr().err, str(one), "two")
    assert main(["dataset", "split", str(one), "--val", "1.5", "--out", str(tmp_path / "s")]) == 2
    error_line(capsys.readouterr().err, "--val 1.5")
    assert not (tmp_path / "s").exists()
