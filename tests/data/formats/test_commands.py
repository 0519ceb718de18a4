"""The command line over every format: dataset convert/stats/show/split, train and evaluate reading them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from maskrcnn.cli import main
from maskrcnn.data.formats import read_source
from tests.helpers import error_line, write_small_checkpoint

SQUARE = [[8.0, 8.0], [40.0, 8.0], [40.0, 30.0], [8.0, 30.0]]
TRIANGLE = [[50.0, 10.0], [90.0, 12.0], [70.0, 50.0]]


def _photo(path: Path, size: tuple[int, int] = (96, 64), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _labelme_folder(root: Path, labels: tuple[str, str] = ("thing2", "thing0"), count: int = 3) -> Path:
    """``count`` photos, each with a LabelMe JSON beside it holding a square and a triangle."""
    for i in range(count):
        _photo(root / f"p{i}.png", seed=i)
        shapes = [{"label": label, "points": points, "group_id": None, "shape_type": "polygon", "flags": {}}
                  for label, points in zip(labels, (SQUARE, TRIANGLE), strict=True)]
        (root / f"p{i}.json").write_text(json.dumps({
            "version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": f"p{i}.png", "imageData": None,
            "imageHeight": 64, "imageWidth": 96,
        }))
    return root


def test_convert_a_labelme_folder_to_coco_and_read_it_as_the_stats_and_show_commands_do(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _labelme_folder(tmp_path / "labelme")
    out = tmp_path / "coco.json"
    assert main(["dataset", "convert", str(source), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "labelme -> coco: 3 image(s), 6 instance(s), 2 class(es) (thing0, thing2)" in err
    assert f"--train-images {source}" in err
    data = json.loads(out.read_text())
    assert [im["file_name"] for im in data["images"]] == ["p0.png", "p1.png", "p2.png"]
    assert [c["name"] for c in data["categories"]] == ["thing0", "thing2"]
    # The written file, and the source itself, read the same way.
    assert main(["dataset", "stats", str(out), "--images", str(source)]) == 0
    from_coco = capsys.readouterr().out
    assert main(["dataset", "stats", str(source)]) == 0
    assert capsys.readouterr().out == from_coco
    assert "thing0" in from_coco and "thing2" in from_coco
    assert main(["dataset", "show", str(source), "--out", str(tmp_path / "show")]) == 0
    assert len(list((tmp_path / "show").glob("*.png"))) == 3
    # --images: file_name is written relative to it.
    assert main(["dataset", "convert", str(source), "--images", str(tmp_path), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["images"][0]["file_name"] == "labelme/p0.png"


@pytest.mark.parametrize("to", ["labelme", "via", "yolo", "cvat", "voc"])
def test_convert_to_each_writable_format_and_back(to: str, tmp_path: Path) -> None:
    source = _labelme_folder(tmp_path / "labelme")
    written = tmp_path / f"as-{to}"
    assert main(["dataset", "convert", str(source), "--to", to, "--out", str(written)]) == 0
    back = tmp_path / "back.json"
    target = written / "data.yaml" if to == "yolo" else written
    images = ["--images", str(source)] if to == "cvat" else []  # CVAT files name images, not paths
    assert main(["dataset", "convert", str(target), *images, "--out", str(back)]) == 0
    original = read_source(source).coco
    again = json.loads(back.read_text())
    assert sorted(c["name"] for c in again["categories"]) == ["thing0", "thing2"]
    assert len(again["images"]) == 3 and len(again["annotations"]) == 6
    names = {c["id"]: c["name"] for c in again["categories"]}
    assert sorted(names[a["category_id"]] for a in again["annotations"]) == sorted(
        ["thing0", "thing2"] * 3)
    assert sum(a["area"] for a in again["annotations"]) == pytest.approx(
        sum(a["area"] for a in original["annotations"]), rel=0.03)


def test_bad_sources_get_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = []
    xml = tmp_path / "annotations.xml"
    xml.write_text("<annotations><version>1.1</version><image id='0' name='a.png'>")
    cases.append((xml, "not well-formed"))
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text("train: images\nval: images\n")
    cases.append((data_yaml, "names"))
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text("names: [a, b\ntrain: images\n")
    cases.append((broken_yaml, "broken.yaml"))
    via = tmp_path / "via_region_data.json"
    via.write_text('{"a.png1": {"filename": "a.png", "regions": [')
    cases.append((via, "via_region_data.json"))
    for path, words in cases:
        code = main(["dataset", "convert", str(path), "--out", str(tmp_path / "out.json")])
        assert code == 1, path
        error_line(capsys.readouterr().err, str(path.name), words)
    assert not (tmp_path / "out.json").exists()
    assert main(["dataset", "convert", str(tmp_path / "nothing"), "--out", str(tmp_path / "out.json")]) == 1
    error_line(capsys.readouterr().err, "nothing", "no such annotation file or folder")
    assert main(["dataset", "convert", str(xml), "--format", "bogus", "--out", "x.json"]) == 2


def test_a_yolo_class_index_out_of_range_is_counted_with_its_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _photo(tmp_path / "images" / "a.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.1 0.1 0.4 0.1 0.4 0.4\n7 0.5 0.5 0.9 0.5 0.9 0.9\n")
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"train": "images", "val": "images",
                                                        "names": ["cat", "dog"]}))
    assert main(["dataset", "convert", str(tmp_path / "data.yaml"), "--out", str(tmp_path / "c.json")]) == 0
    err = capsys.readouterr().err
    assert "1 problems skipped" in err and "a.txt" in err and "line 2" in err and "out of range" in err
    assert len(json.loads((tmp_path / "c.json").read_text())["annotations"]) == 1


def test_evaluate_a_labelme_folder_with_the_models_category_ids(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``evaluate --json`` takes a LabelMe folder (the ids it scores under: test_ground_truth_... below)."""
    weights = write_small_checkpoint(tmp_path / "small.safetensors")  # classes thing0..2, ids 10..12
    source = _labelme_folder(tmp_path / "labelme", count=2)
    results = tmp_path / "results.json"
    code = main(["evaluate", "--json", str(source), "--weights", str(weights),
                 "--out", str(tmp_path / "m.json"), "--results", str(results)])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["images"] == 2 and "segm" in metrics
    assert {r["category_id"] for r in json.loads(results.read_text())} <= {10, 11, 12}


def test_train_reads_a_yolo_data_yaml_its_train_and_val_splits(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    for split, count in (("train", 2), ("val", 1)):
        for i in range(count):
            _photo(tmp_path / "images" / split / f"{split}{i}.png", seed=i)
            (tmp_path / "labels" / split).mkdir(parents=True, exist_ok=True)
            (tmp_path / "labels" / split / f"{split}{i}.txt").write_text(
                "1 0.1 0.1 0.45 0.1 0.45 0.5 0.1 0.5\n0 0.6 0.2 0.9 0.3 0.7 0.8\n")
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "val": "images/val",
                                                        "names": {0: "cat", 1: "dog"}}))
    out = tmp_path / "run"
    code = main([
        "train", "--train", str(tmp_path / "data.yaml"), "--val", str(tmp_path / "data.yaml"),
        "--out", str(out), "--preset", "demo-r18-fpn", "--iterations", "2", "--batch-size", "2",
        "--min-size", "64", "--max-size", "96",
        "--set", "rpn.sampler.batch_size_per_image=32", "box_head.sampler.batch_size_per_image=32",
        "solver.num_workers=0", "solver.checkpoint_period=0",
    ])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "2 images" in err  # the train split only
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["images"] == 1  # validated on the val split
    from maskrcnn import load

    assert load(out / "model_final.pth").config.class_names == ("cat", "dog")


def test_split_a_labelme_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _labelme_folder(tmp_path / "labelme", count=4)
    assert main(["dataset", "split", str(source), "--val", "0.25", "--out", str(tmp_path / "splits")]) == 0
    assert f"--train-images {source}" in capsys.readouterr().err
    train = json.loads((tmp_path / "splits" / "train.json").read_text())
    val = json.loads((tmp_path / "splits" / "val.json").read_text())
    assert (len(train["images"]), len(val["images"])) == (3, 1)
    assert main(["dataset", "stats", str(tmp_path / "splits" / "val.json"), "--images", str(source)]) == 0


def test_ground_truth_takes_the_models_ids_by_name(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """What evaluate and train --val score against: a source's classes under the model's ids."""
    import argparse

    from maskrcnn.cli import _ground_truth, _read_source

    source = _labelme_folder(tmp_path / "labelme")  # thing0 and thing2 -> its own ids 1 and 2
    converted = _read_source(str(source), None, argparse.Namespace())
    data, gt = _ground_truth(converted, ("thing0", "thing1", "thing2"), (10, 11, 12), "--json")
    assert data is not None
    assert {c["name"]: c["id"] for c in gt.dataset["categories"]} == {"thing0": 10, "thing2": 12}
    names = {a["id"]: gt.cats[a["category_id"]]["name"] for a in gt.dataset["annotations"]}
    original = {a["id"]: converted.coco["categories"][0]["name"] for a in converted.coco["annotations"]
                if a["category_id"] == 1}
    assert all(names[i] == name for i, name in original.items())
    # A COCO file numbering the model's classes otherwise is renumbered too, and says so ...
    coco = tmp_path / "coco.json"
    assert main(["dataset", "convert", str(source), "--out", str(coco)]) == 0
    capsys.readouterr()
    converted = _read_source(str(coco), str(source), argparse.Namespace())
    data, gt = _ground_truth(converted, ("thing0", "thing1", "thing2"), (10, 11, 12), "--json")
    assert data is not None and sorted(gt.getCatIds()) == [10, 12]
    assert "matched by name" in capsys.readouterr().err
    # ... and one whose names are not the model's is left as it is.
    data, gt = _ground_truth(converted, ("a", "b"), (1, 2), "--json")
    assert data is None and sorted(gt.getCatIds()) == [1, 2]


def test_a_validation_folder_lacking_a_class_is_numbered_as_the_training_set(tmp_path: Path) -> None:
    import argparse

    from maskrcnn.cli import _validation_set
    from maskrcnn.data.formats import open_dataset

    train = open_dataset(_labelme_folder(tmp_path / "train", labels=("cat", "dog")))
    assert dict(zip(train.class_names, train.category_ids, strict=True)) == {"cat": 1, "dog": 2}
    _labelme_folder(tmp_path / "val", labels=("dog", "dog"), count=1)  # only dogs: its own dog is 1
    args = argparse.Namespace(val_json=str(tmp_path / "val"), val_images=None, data_format="auto",
                              class_attribute=None, split=None)
    validation = _validation_set(args, train, verbose=False)
    assert validation.data is not None
    assert [(c["name"], c["id"]) for c in validation.data["categories"]] == [("dog", 2)]
    assert {a["category_id"] for a in validation.ground_truth().dataset["annotations"]} == {2}


def test_yolo_folders_give_train_their_split_and_other_commands_all(tmp_path: Path) -> None:
    for split, count in (("train", 3), ("val", 2)):
        for i in range(count):
            _photo(tmp_path / "images" / split / f"{split}{i}.png", seed=i)
            (tmp_path / "labels" / split).mkdir(parents=True, exist_ok=True)
            (tmp_path / "labels" / split / f"{split}{i}.txt").write_text("0 0.1 0.1 0.4 0.1 0.4 0.4\n")
    (tmp_path / "classes.txt").write_text("cat\n")
    import argparse

    from maskrcnn.cli import _read_source

    def count(role: str | None) -> int:
        return len(_read_source(str(tmp_path), None, argparse.Namespace(), role=role).coco["images"])

    assert (count("train"), count("val"), count(None)) == (3, 2, 5)


def test_convert_to_from_a_coco_file_skips_what_the_coco_reader_skips(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _photo(tmp_path / "a.png")
    good = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[8, 8, 40, 8, 40, 30]], "iscrowd": 0}
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 96}],
            "categories": [{"id": 1, "name": "cat"}],
            "annotations": [good, {**good, "id": 2, "segmentation": [[1, 1, 5, 5]]},
                            {**good, "id": 3, "category_id": 7}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(data))
    assert main(["dataset", "convert", str(path), "--to", "voc", "--out", str(tmp_path / "voc")]) == 0
    err = capsys.readouterr().err
    assert err.count("annotation(s) left out") == 2  # the 2-point polygon and the unknown category
    back = read_source(tmp_path / "voc").coco
    assert len(back["annotations"]) == 1
    del data["images"][0]["height"]
    path.write_text(json.dumps(data))
    assert main(["dataset", "convert", str(path), "--to", "labelme", "--out", str(tmp_path / "lm")]) == 1
    error_line(capsys.readouterr().err, "coco.json", "height")


def test_split_takes_images_and_an_explicit_coco_format(tmp_path: Path) -> None:
    source = _labelme_folder(tmp_path / "labelme", count=4)
    split = ["dataset", "split", str(source), "--images", str(tmp_path), "--out", str(tmp_path / "s")]
    assert main(split) == 0
    names = [im["file_name"] for im in json.loads((tmp_path / "s" / "train.json").read_text())["images"]]
    assert all(name.startswith("labelme/") for name in names)
    coco = tmp_path / "elsewhere" / "all.json"
    assert main(["dataset", "convert", str(source), "--out", str(coco)]) == 0
    assert main(["dataset", "split", str(coco), "--format", "coco", "--out", str(tmp_path / "s2")]) == 0


def test_a_malformed_json_source_says_where_it_breaks(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "via_region_data.json"
    path.write_text('{"a.png1": {"filename": "a.png",\n "regions": [}')
    assert main(["dataset", "stats", str(path)]) == 1
    error_line(capsys.readouterr().err, str(path), "line 2")
