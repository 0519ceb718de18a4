"""Fuzzing the COCO loader: seeded random mutations of a real annotation file.

The base file is synthetic shapes output (polygons and compressed RLE, four
categories) with keypoints added to one category. Each mutation deletes
keys, changes types, truncates or scrambles RLE strings, writes negative,
NaN, infinite or huge numbers, swaps sizes, duplicates ids, breaks
polygons, or cuts the JSON text itself. Every mutated file must either load
(its problems counted in the report) or raise ``DatasetError``; nothing
else may escape. For the files that load, every item goes through the
first training step's data path (dataset item -> augmentation -> targets),
and a handful through a loss and backward on a small model. A quarter of
the mutations are also read as evaluation ground truth and scored.

Plain seeded ``random``: the same mutations on every run.
"""

from __future__ import annotations

import copy
import json
import math
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from maskrcnn.config import InputConfig, demo_model
from maskrcnn.data.augment import train_transform
from maskrcnn.data.coco import CocoDataset, DatasetError
from maskrcnn.data.synthetic import generate
from maskrcnn.model import build_model
from maskrcnn.structures import ImageBatch, Targets

NUM_MUTATIONS = 400
NUM_LOSSES = 8
SIDE = 64

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]

# Values a mutation may put anywhere: every JSON type, and numbers at the edges.
ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2.5, -3.7, 1e308, -1e308, 10**30, 10**400, float("nan"), float("inf"),
    float("-inf"), "", "1", "abc", "NaN", [], [1], [1, 2, 3, 4], [[1, 2]], {}, {"a": 1},
    {"size": [1, 1], "counts": "0"}, {"size": [SIDE, SIDE], "counts": [SIDE * SIDE]},
]
# Keys whose values matter most; mutations pick them more often than other nodes.
HOT_KEYS = {"counts", "size", "segmentation", "bbox", "id", "image_id", "category_id", "height", "width",
            "iscrowd", "keypoints", "file_name", "images", "annotations", "categories", "area"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("fuzz")
    json_path = generate(root, num_images=6, image_size=(SIDE, SIDE), seed=7, max_objects=3)
    data = json.loads(json_path.read_text())
    # Keypoints on the first category, so that their checks are exercised too.
    data["categories"][0]["keypoints"] = ["a", "b", "c"]
    rng = random.Random(0)
    for ann in data["annotations"]:
        if ann["category_id"] == data["categories"][0]["id"]:
            x, y, w, h = ann["bbox"]
            ann["keypoints"] = [v for _ in range(3)
                                for v in (x + rng.random() * w, y + rng.random() * h, rng.choice([0, 1, 2]))]
    assert any(isinstance(a["segmentation"], dict) for a in data["annotations"]), "no RLE to mutate"
    assert any(isinstance(a["segmentation"], list) for a in data["annotations"]), "no polygon to mutate"
    return data, root / "train"


def _nodes(value: Any, parent: Any = None, key: Any = None) -> list[tuple[Any, Any]]:
    """Every ``(container, key)`` below ``value`` (depth first)."""
    found = [] if parent is None else [(parent, key)]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _nodes(v, value, k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _nodes(v, value, i)
    return found


def _scramble(text: str, rng: random.Random) -> str:
    """A compressed RLE string truncated, cut short, or with random characters in it."""
    how = rng.randrange(4)
    if how == 0 and text:
        return text[: rng.randrange(len(text))]
    if how == 1:
        position = rng.randrange(len(text) + 1)
        noise = "".join(chr(rng.randrange(256)) for _ in range(rng.randint(1, 3)))
        return text[:position] + noise + text[position:]
    if how == 2 and text:
        chars = list(text)
        chars[rng.randrange(len(chars))] = chr(rng.randrange(32, 128))
        return "".join(chars)
    return text + rng.choice(["`", "0", "o", "\x00", "\u00e9"])


def _mutate(data: dict[str, Any], rng: random.Random) -> None:
    """One random change, in place."""
    nodes = _nodes(data)
    hot = [(c, k) for c, k in nodes if k in HOT_KEYS]
    parent, key = rng.choice(hot if hot and rng.random() < 0.6 else nodes)
    value = parent[key]
    how = rng.randrange(8)
    if how == 0:  # delete the key or element
        del parent[key]
    elif how == 1 or (how == 2 and not isinstance(value, str)):  # anything else in its place
        parent[key] = copy.deepcopy(rng.choice(ODD_VALUES))
    elif how == 2:  # a string scrambled (RLE counts, file names)
        parent[key] = _scramble(value, rng)
    elif how == 3 and isinstance(value, (int, float)) and not isinstance(value, bool):
        parent[key] = rng.choice([-value, value * 1e6, value + 0.5, -1, 0, float("nan"), 2**31, 2**64])
    elif how == 4 and isinstance(value, list) and len(value) >= 2:  # swap two elements (sizes...)
        i, j = rng.sample(range(len(value)), 2)
        value[i], value[j] = value[j], value[i]
    elif how == 5 and isinstance(value, list) and value:  # a duplicated or dropped element
        if rng.random() < 0.5:
            value.append(copy.deepcopy(rng.choice(value)))
        else:
            del value[rng.randrange(len(value))]
    elif how == 6:  # a repeated id
        entries = data.get("annotations") if rng.random() < 0.5 else data.get("images")
        if isinstance(entries, list) and len(entries) >= 2:
            a, b = rng.sample(range(len(entries)), 2)
            if isinstance(entries[a], dict) and isinstance(entries[b], dict):
                entries[a]["id"] = entries[b].get("id")
    else:  # a list or dict wrapped in the wrong container (non-list polygons...)
        parent[key] = rng.choice([[value], {"value": value}, str(value)[:20]])


def _targets_of(ds: CocoDataset, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, Targets]:
    cfg = InputConfig(min_size=SIDE, max_size=SIDE, train_min_sizes=(48, SIDE), flip_prob=0.5)
    sample = ds[index]
    # The model's flip pairs fit its keypoints; a mutation may have changed the dataset's number.
    flip_pairs = [(0, 2)] if len(ds.keypoint_names) == 3 else []
    image, targets = train_transform(sample, cfg, rng, flip_pairs=flip_pairs)
    m = len(targets)
    assert targets.masks is not None and targets.masks.shape == (m, *image.shape[1:])
    assert torch.isfinite(targets.boxes).all() and torch.isfinite(targets.crowd_boxes).all()
    assert bool(((targets.labels >= 0) & (targets.labels < len(ds.class_names))).all())
    if targets.keypoints is not None:
        assert torch.isfinite(targets.keypoints).all()
    return image, targets


def test_mutated_annotation_files_load_or_raise_a_dataset_error(
    base: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    data, image_dir = base
    torch.manual_seed(0)
    model = build_model(demo_model().replace(num_classes=len(data["categories"])))
    outcomes = {"loaded": 0, "error": 0, "problems": 0, "losses": 0}
    details: set[str] = set()
    for number in range(NUM_MUTATIONS):
        rng = random.Random(number)
        mutated = copy.deepcopy(data)
        for _ in range(rng.randint(1, 3)):
            _mutate(mutated, rng)
        text = json.dumps(mutated)
        if rng.random() < 0.05:  # the file itself cut short
            text = text[: rng.randrange(len(text))]
        path = tmp_path / f"mutation{number}.json"
        path.write_text(text)
        try:
            ds = CocoDataset(path, image_dir)
        except DatasetError as exc:
            message = str(exc)
            assert message.startswith(str(path)) and "\n" not in message, message
            outcomes["error"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"mutation {number}: {type(exc).__name__}: {exc}")
        outcomes["loaded"] += 1
        outcomes["problems"] += ds.report.total > 0
        for examples in ds.report.examples.values():
            details.update(e.detail for e in examples)
        augment_rng = np.random.default_rng(number)
        for index in range(len(ds)):
            try:
                image, targets = _targets_of(ds, index, augment_rng)
            except Exception as exc:  # noqa: BLE001
                pytest.fail(f"mutation {number}, item {index}: {type(exc).__name__}: {exc}")
            if outcomes["losses"] < NUM_LOSSES and index == 0 and ds.report.total > 0:
                batch = ImageBatch(image[None], [tuple(image.shape[1:])], [tuple(image.shape[1:])])
                losses = model.loss(batch, [targets])
                assert all(math.isfinite(v.item()) for v in losses.values()), (number, losses)
                sum(losses.values()).backward()
                outcomes["losses"] += 1
    # The mutations reach every outcome: errors, files with problems counted, and losses.
    assert outcomes["error"] > 20 and outcomes["problems"] > 100, outcomes
    assert outcomes["losses"] == NUM_LOSSES, outcomes
    # Among the problems: corrupt compressed RLE strings, and strings whose runs miss pixels.
    assert any(d.startswith("corrupt compressed RLE") for d in details)
    assert any(d.startswith("RLE counts sum to") for d in details)
    assert all(len(d) < 200 for d in details), max(details, key=len)


def test_mutated_ground_truth_loads_for_evaluation_or_raises_a_dataset_error(
    base: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    # The validation during training reads its file with load_ground_truth: the same mutations
    # must give either a ground truth that COCOeval scores, or a DatasetError.
    from maskrcnn.engine.evaluate import coco_metrics, load_ground_truth

    data, _ = base
    detections = []
    for ann in data["annotations"]:
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list):
            segmentation = mask_utils.merge(mask_utils.frPyObjects(segmentation, SIDE, SIDE))
            segmentation = {"size": [SIDE, SIDE], "counts": segmentation["counts"].decode()}
        detections.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 0.9,
                           "bbox": ann["bbox"], "segmentation": segmentation})
    scored = 0
    for number in range(0, NUM_MUTATIONS, 4):
        rng = random.Random(number)
        mutated = copy.deepcopy(data)
        for _ in range(rng.randint(1, 3)):
            _mutate(mutated, rng)
        path = tmp_path / f"mutation{number}.json"
        path.write_text(json.dumps(mutated))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # annotations left out: expected
                gt = load_ground_truth(path)
                known = set(gt.getImgIds())
                results = [d for d in detections if d["image_id"] in known]
                metrics = coco_metrics(gt, results)
        except DatasetError:
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"mutation {number}: {type(exc).__name__}: {exc}")
        assert set(metrics) == {"bbox", "segm"}
        scored += 1
    assert scored > 50
