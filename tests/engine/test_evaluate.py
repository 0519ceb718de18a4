"""COCO evaluation: perfect, hopeless and empty results on a hand-built ground truth; end to end."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from maskrcnn.cli import main
from maskrcnn.config import (
    COCO_KEYPOINT_NAMES,
    COCO_SKELETON,
    KeypointHeadConfig,
    MaskHeadConfig,
    torchvision_keypoint_r50_fpn,
)
from maskrcnn.engine.evaluate import (
    METRIC_NAMES,
    coco_metrics,
    evaluate,
    format_table,
    load_ground_truth,
)
from maskrcnn.engine.predict import Predictor, load
from maskrcnn.structures import Detections, MaskCrops

from ..helpers import error_line, with_input, write_small_checkpoint

# pycocotools' annToMask (used here to build perfect results) trips a numpy 2 deprecation.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

# Polygons (x, y pairs) in 200x160 images, one per area bin: small < 32² = 1024 px,
# medium up to 96² = 9216 px, large beyond.
SMALL = [10, 10, 30, 10, 30, 28, 10, 28]  # 20x18 = 360 px
MEDIUM = [60, 20, 120, 30, 110, 70, 55, 60]  # quadrilateral, ~2400 px
LARGE = [20, 40, 180, 40, 190, 150, 30, 150, 10, 95]  # pentagon, ~17000 px
TRIANGLE = [140, 100, 190, 150, 140, 150]  # 50x50 / 2 = 1250 px: medium


def _annotation(ann_id: int, image_id: int, category_id: int, polygon: list[float],
                height: int, width: int) -> dict[str, Any]:
    rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
    xs, ys = polygon[0::2], polygon[1::2]
    return {
        "id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": [polygon],
        "area": float(mask_utils.area(rle)), "iscrowd": 0,
        "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
    }


def _dataset(categories: tuple[int, ...], size: tuple[int, int] = (200, 160),
             scale: tuple[float, float] = (1.0, 1.0)) -> dict[str, Any]:
    """Three images: all three area bins, small + medium, large + medium; category ids as given.

    ``scale`` multiplies the polygons' x and y.
    """
    width, height = size
    layout = {  # image ids not 1..3 on purpose, nor in sorted order
        12: [(SMALL, 1), (MEDIUM, 0), (LARGE, 0)],
        7: [(SMALL, 0), (MEDIUM, 1)],
        3: [(LARGE, 1), (TRIANGLE, 0)],
    }
    images, annotations = [], []
    for image_id, instances in layout.items():
        images.append({"id": image_id, "file_name": f"img{image_id}.png", "height": height, "width": width})
        for polygon, which in instances:
            scaled = [v * scale[i % 2] for i, v in enumerate(polygon)]
            category = categories[which % len(categories)]
            annotations.append(_annotation(len(annotations) + 1, image_id, category, scaled, height, width))
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"class{c}"} for c in categories],
    }


@pytest.fixture
def gt(tmp_path: Path) -> COCO:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_dataset((1, 5))))
    return load_ground_truth(path)


def _perfect_results(gt: COCO) -> list[dict[str, Any]]:
    """Every ground-truth instance as a detection with score 1.0 and its own box and mask."""
    results = []
    for ann in gt.dataset["annotations"]:
        rle = mask_utils.encode(np.asfortranarray(gt.annToMask(ann)))
        results.append({
            "image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0,
            "bbox": list(ann["bbox"]),
            "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        })
    return results


def _all(metrics: dict[str, float | None], value: float) -> bool:
    return set(metrics) == set(METRIC_NAMES) and all(v == pytest.approx(value) for v in metrics.values())


def test_ground_truth_fed_back_scores_one(gt: COCO, capsys: pytest.CaptureFixture[str]) -> None:
    results = _perfect_results(gt)
    before = copy.deepcopy(results)
    metrics = coco_metrics(gt, results)
    assert set(metrics) == {"bbox", "segm"}
    assert _all(metrics["bbox"], 1.0) and _all(metrics["segm"], 1.0), metrics
    assert results == before, "the caller's records are not modified"
    assert capsys.readouterr().out == "", "pycocotools' summary stays out of stdout"


def test_verbose_prints_the_summary(gt: COCO, capsys: pytest.CaptureFixture[str]) -> None:
    coco_metrics(gt, _perfect_results(gt), ("bbox",), verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_results_may_name_images_by_file_name(gt: COCO) -> None:
    names = {image["id"]: image["file_name"] for image in gt.dataset["images"]}
    results = []
    for record in _perfect_results(gt):
        record["file_name"] = names[record.pop("image_id")]
        results.append(record)
    metrics = coco_metrics(gt, results)
    assert _all(metrics["bbox"], 1.0) and _all(metrics["segm"], 1.0)

    with pytest.raises(ValueError, match="nope.png"):
        coco_metrics(gt, [{**results[0], "file_name": "nope.png"}])
    with pytest.raises(ValueError, match="image_id 99"):
        coco_metrics(gt, [{**_perfect_results(gt)[0], "image_id": 99}])


def test_boxes_moved_away_score_zero_box_ap_only(gt: COCO) -> None:
    results = _perfect_results(gt)
    for record in results:
        record["bbox"][0] += 1000.0
    metrics = coco_metrics(gt, results)
    assert _all(metrics["bbox"], 0.0), metrics["bbox"]
    assert _all(metrics["segm"], 1.0), "mask AP does not look at the boxes"


def test_no_results_score_zero(gt: COCO) -> None:
    metrics = coco_metrics(gt, [])
    assert _all(metrics["bbox"], 0.0) and _all(metrics["segm"], 0.0), metrics


def test_subset_of_images_and_undefined_bins(gt: COCO) -> None:
    # Image 7 has a small and a medium instance, no large one: APl is undefined there.
    results = [r for r in _perfect_results(gt) if r["image_id"] == 7]
    metrics = coco_metrics(gt, results, ("segm",), image_ids=[7])
    assert set(metrics) == {"segm"}
    assert metrics["segm"]["APl"] is None
    assert all(metrics["segm"][name] == pytest.approx(1.0) for name in METRIC_NAMES if name != "APl")
    # The same detections over all three images miss the other images' instances.
    assert coco_metrics(gt, results, ("segm",))["segm"]["AP"] < 0.5


def test_a_missed_instance_lowers_ap(gt: COCO) -> None:
    results = _perfect_results(gt)[1:]
    metrics = coco_metrics(gt, results)
    for iou_type in ("bbox", "segm"):
        assert 0.0 < metrics[iou_type]["AP"] < 1.0


def test_unknown_category_warns(gt: COCO) -> None:
    results = _perfect_results(gt)
    results[0]["category_id"] = 2
    with pytest.warns(UserWarning, match=r"category ids .*\[2\]"):
        coco_metrics(gt, results)


def test_unknown_iou_type_is_refused(gt: COCO) -> None:
    with pytest.raises(ValueError, match="captions"):
        coco_metrics(gt, [], ("captions",))


def test_ground_truth_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_ground_truth(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON file"):
        load_ground_truth(bad)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="no categories list"):
        load_ground_truth(bad)


def test_format_table() -> None:
    metrics = {
        "bbox": {"AP": 0.37912, "AP50": 0.592, "AP75": 0.4105, "APs": 0.219, "APm": 0.415, "APl": 0.48449},
        "segm": {"AP": 0.346, "AP50": 0.56, "AP75": 0.368, "APs": None, "APm": 0.37, "APl": 1.0},
        "images": 5000,
        "images_failed": [],
    }
    assert format_table(metrics) == (
        "          AP    AP50    AP75     APs     APm     APl\n"
        "bbox    37.9    59.2    41.0    21.9    41.5    48.4\n"
        "segm    34.6    56.0    36.8       -    37.0   100.0"
    )


# --- end to end with a small random-weights model (categories 10, 11, 12) ---------------------------

SMALL_MODEL_CATEGORIES = (10, 11, 12)
E2E_SIZE = (160, 120)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_checkpoint(tmp_path_factory.mktemp("w") / "small.safetensors")


@pytest.fixture(scope="module")
def predictor(weights: Path) -> Predictor:
    return load(weights)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A JSON and an image directory: three random-pixel images with small, medium and large instances."""
    root = tmp_path_factory.mktemp("coco")
    width, height = E2E_SIZE
    # Polygons scaled from 200x160 to 160x120 still leave an instance in every area bin.
    data = _dataset(SMALL_MODEL_CATEGORIES, size=E2E_SIZE, scale=(0.8, 0.75))
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for image in data["images"]:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / image["file_name"])
    json_path = root / "instances.json"
    json_path.write_text(json.dumps(data))
    return json_path, images


def _check_schema(metrics: dict[str, Any], images: int) -> None:
    assert set(metrics) == {"bbox", "segm", "images", "images_failed"}
    for iou_type in ("bbox", "segm"):
        assert set(metrics[iou_type]) == set(METRIC_NAMES)
        for value in metrics[iou_type].values():
            assert isinstance(value, float) and 0.0 <= value <= 1.0, metrics
    assert metrics["images"] == images


class _Oracle:
    """A stand-in predictor that answers each image, in the annotation file's order, with its ground truth."""

    def __init__(self, gt: COCO) -> None:
        self.gt = gt
        self.config = SimpleNamespace(mask_head=MaskHeadConfig(), keypoint_head=None)
        self.categories = sorted(gt.getCatIds())  # contiguous label -> category id
        self.queue = [image["id"] for image in gt.dataset["images"]]

    coco_keypoints = Predictor.coco_keypoints
    coco_results = Predictor.coco_results
    predict_files = Predictor.predict_files  # batching and skipping as the real predictor does

    def category_ids(self, detections: Detections) -> list[int]:
        return [self.categories[label] for label in detections.labels.tolist()]

    def predict_arrays(self, images: list[np.ndarray], *,
                       score_threshold: float | None = None) -> list[Detections]:
        out = []
        for array in images:
            image_id = self.queue.pop(0)
            anns = self.gt.loadAnns(self.gt.getAnnIds(imgIds=[image_id]))
            assert array.shape == (self.gt.imgs[image_id]["height"], self.gt.imgs[image_id]["width"], 3)
            xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
            out.append(Detections(
                boxes=torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1),  # XYWH -> XYXY
                scores=torch.linspace(1.0, 0.5, len(anns)),
                labels=torch.tensor([self.categories.index(a["category_id"]) for a in anns]),
                masks=MaskCrops.from_dense(torch.from_numpy(np.stack([self.gt.annToMask(a) for a in anns]))),
            ))
        return out


def test_evaluate_with_perfect_predictions_scores_one(dataset: tuple[Path, Path]) -> None:
    """Boxes to XYWH in image pixels, labels to category ids, masks to RLE, images in order."""
    json_path, images = dataset
    gt = load_ground_truth(json_path)
    metrics, results = evaluate(_Oracle(gt), gt, images, batch_size=2, progress=False)  # type: ignore[arg-type]
    assert _all(metrics["bbox"], 1.0) and _all(metrics["segm"], 1.0), metrics
    assert metrics["images"] == 3 and metrics["images_failed"] == []
    assert len(results) == len(gt.dataset["annotations"])


def test_evaluate_end_to_end(predictor: Predictor, dataset: tuple[Path, Path]) -> None:
    json_path, images = dataset
    # Two images (one forward pass) keep the test fast; image 12 has an instance in every area bin.
    metrics, results = evaluate(predictor, json_path, images, batch_size=2, progress=False, max_images=2)
    _check_schema(metrics, images=2)
    assert metrics["images_failed"] == []
    assert results, "the small model is built to detect something"
    names = {7: "img7.png", 3: "img3.png", 12: "img12.png"}
    width, height = E2E_SIZE
    for r in results:
        assert r["category_id"] in SMALL_MODEL_CATEGORIES
        assert r["file_name"] == names[r["image_id"]]
        x, y, w, h = r["bbox"]
        assert 0 <= x <= x + w <= width + 1e-3 and 0 <= y <= y + h <= height + 1e-3
        assert r["segmentation"]["size"] == [height, width]
    # In the JSON's order: image 12 first, then 7.
    order = list(dict.fromkeys(r["image_id"] for r in results))
    assert order == [i for i in (12, 7) if i in order]
    # The metrics are those of the results returned, over the images evaluated.
    assert coco_metrics(load_ground_truth(json_path), results, image_ids=[12, 7]) == {
        k: metrics[k] for k in ("bbox", "segm")
    }


def test_evaluate_skips_bad_images(predictor: Predictor, dataset: tuple[Path, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    json_path, images = dataset
    data = json.loads(json_path.read_text())
    data["images"][:0] = [
        {"id": 40, "file_name": "gone.png", "height": 120, "width": 160},
        {"id": 41, "file_name": "img7.png", "height": 100, "width": 160},  # not the file's size
    ]
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps(data))
    # The first three entries: two bad ones, then image 12 (which has an instance in every area bin).
    metrics, results = evaluate(predictor, bad_json, images, progress=False, max_images=3)
    assert metrics["images"] == 1
    assert metrics["images_failed"] == ["gone.png", "img7.png"]
    err = capsys.readouterr().err
    assert "gone.png" in err and "160x120 but the annotations are for 160x100" in err
    assert results and {r["image_id"] for r in results} == {12}
    # Only the evaluated image counts: its instances alone are the ground truth.
    gt = load_ground_truth(bad_json)
    assert coco_metrics(gt, results, image_ids=[12]) == {k: metrics[k] for k in ("bbox", "segm")}


def test_cli_evaluate(weights: Path, dataset: tuple[Path, Path], tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    json_path, images = dataset
    out = tmp_path / "out" / "metrics.json"
    raw = tmp_path / "detections.json"
    code = main(["evaluate", "--json", str(json_path), "--images", str(images), "--weights", str(weights),
                 "--out", str(out), "--results", str(raw), "--max-images", "1"])
    assert code == 0
    metrics = json.loads(out.read_text())
    _check_schema(metrics, images=1)
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == list(METRIC_NAMES)
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["bbox", "segm"]
    detections = json.loads(raw.read_text())
    assert detections and all(r["image_id"] == 12 for r in detections)
    # The raw detections file is a COCO results file: scoring it again gives the same numbers.
    rescored = coco_metrics(load_ground_truth(json_path), detections, image_ids=[12])
    assert rescored == {k: metrics[k] for k in ("bbox", "segm")}


def test_cli_evaluate_errors(weights: Path, dataset: tuple[Path, Path], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    json_path, images = dataset
    base = ["evaluate", "--out", str(tmp_path / "m.json")]
    assert main([*base, "--json", str(tmp_path / "missing.json"), "--images", str(images),
                 "--weights", str(weights)]) == 1
    error_line(capsys.readouterr().err, "no such annotation file", "missing.json")
    assert main([*base, "--json", str(json_path), "--images", str(tmp_path / "nodir"),
                 "--weights", str(weights)]) == 1
    error_line(capsys.readouterr().err, "no such image directory", "nodir")
    assert main([*base, "--json", str(json_path), "--images", str(images),
                 "--weights", str(tmp_path / "nothing.safetensors")]) == 1
    error_line(capsys.readouterr().err, "nothing.safetensors")
    assert not (tmp_path / "m.json").exists()


# --- keypoint AP (OKS) -----------------------------------------------------------------------------

PERSON = 1
# Boxes (x, y, w, h) of people in 200x160 images, with the keypoints COCO leaves unlabelled (v = 0).
PEOPLE: dict[int, list[tuple[tuple[int, int, int, int], tuple[int, ...]]]] = {
    5: [((20, 10, 120, 140), ()), ((150, 20, 40, 70), (0, 1, 2, 3, 4))],  # large, medium
    9: [((30, 30, 50, 60), (15, 16)), ((120, 60, 60, 80), tuple(range(17)))],  # medium; no keypoints: ignored
}


def _keypoint_dataset(size: tuple[int, int] = (200, 160)) -> dict[str, Any]:
    """Two images of people with COCO's 17 keypoints, and a dog (a category without keypoints)."""
    width, height = size
    rng = np.random.default_rng(1)
    images, annotations = [], []
    for image_id, people in PEOPLE.items():
        name = f"person{image_id}.png"
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for (x, y, w, h), unlabelled in people:
            keypoints: list[int] = []
            for k in range(17):
                if k in unlabelled:
                    keypoints += [0, 0, 0]
                else:
                    keypoints += [int(x + rng.integers(0, w)), int(y + rng.integers(0, h)), 2]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": PERSON, "iscrowd": 0,
                "bbox": [x, y, w, h], "area": 0.7 * w * h,
                "keypoints": keypoints, "num_keypoints": 17 - len(unlabelled),
            })
    annotations.append({"id": len(annotations) + 1, "image_id": 9, "category_id": 3, "iscrowd": 0,
                        "bbox": [5, 100, 40, 30], "area": 1000.0})
    return {
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": PERSON, "name": "person", "supercategory": "person",
             "keypoints": list(COCO_KEYPOINT_NAMES),
             "skeleton": [[a + 1, b + 1] for a, b in COCO_SKELETON]},  # 1-based in COCO's files
            {"id": 3, "name": "dog"},
        ],
    }


@pytest.fixture
def keypoint_gt(tmp_path: Path) -> COCO:
    path = tmp_path / "person_keypoints.json"
    path.write_text(json.dumps(_keypoint_dataset()))
    return load_ground_truth(path)


def _keypoint_results(gt: COCO) -> list[dict[str, Any]]:
    """Every person with labelled keypoints as a detection with score 1.0 and its own keypoints."""
    return [
        {"image_id": ann["image_id"], "category_id": PERSON, "score": 1.0,
         "keypoints": list(ann["keypoints"])}
        for ann in gt.dataset["annotations"]
        if ann["category_id"] == PERSON and ann["num_keypoints"] > 0
    ]


def test_keypoints_fed_back_score_one(keypoint_gt: COCO) -> None:
    results = _keypoint_results(keypoint_gt)
    before = copy.deepcopy(results)
    metrics = coco_metrics(keypoint_gt, results, ("keypoints",))
    assert set(metrics) == {"keypoints"}
    assert set(metrics["keypoints"]) == set(METRIC_NAMES)
    assert metrics["keypoints"]["APs"] is None, "COCO's keypoint evaluation has no small bin"
    assert all(metrics["keypoints"][name] == pytest.approx(1.0) for name in METRIC_NAMES if name != "APs")
    assert results == before
    assert format_table(metrics).splitlines()[1].split() == ["keypoints", "100.0", "100.0", "100.0", "-",
                                                             "100.0", "100.0"]


def test_keypoints_moved_away_score_near_zero(keypoint_gt: COCO) -> None:
    results = _keypoint_results(keypoint_gt)
    for record in results:
        record["keypoints"][0::3] = [x + 500.0 for x in record["keypoints"][0::3]]
    metrics = coco_metrics(keypoint_gt, results, ("keypoints",), image_ids=[5, 9])
    assert metrics["keypoints"]["AP"] == pytest.approx(0.0)
    assert metrics["keypoints"]["AP"] < 0.1 and metrics["keypoints"]["AP50"] < 0.1


def test_keypoints_a_few_pixels_off_lower_ap(keypoint_gt: COCO) -> None:
    results = _keypoint_results(keypoint_gt)
    for record in results:
        record["keypoints"][1::3] = [y + 4.0 for y in record["keypoints"][1::3]]
    ap = coco_metrics(keypoint_gt, results, ("keypoints",))["keypoints"]
    assert 0.0 < ap["AP"] < 1.0 and ap["AP50"] == pytest.approx(1.0)


def test_keypoint_evaluation_errors(gt: COCO, keypoint_gt: COCO) -> None:
    with pytest.raises(ValueError, match="no ground-truth category lists keypoints"):
        coco_metrics(gt, [], ("keypoints",))
    record = _keypoint_results(keypoint_gt)[0]
    with pytest.raises(ValueError, match="51 numbers"):
        coco_metrics(keypoint_gt, [{**record, "keypoints": record["keypoints"][:-3]}], ("keypoints",))
    with pytest.raises(ValueError, match="needs keypoints"):
        coco_metrics(keypoint_gt, [{k: v for k, v in record.items() if k != "keypoints"}], ("keypoints",))
    data = _keypoint_dataset()
    data["categories"][0]["keypoints"] = data["categories"][0]["keypoints"][:5]
    five = COCO()
    five.dataset = data
    five.createIndex()
    with pytest.raises(ValueError, match="category 1 has 5 keypoints"):
        coco_metrics(five, [], ("keypoints",))
    data = _keypoint_dataset()
    del data["annotations"][1]["num_keypoints"]
    partial = COCO()
    partial.dataset = data
    partial.createIndex()
    with pytest.raises(ValueError, match="annotation 2 has no num_keypoints"):
        coco_metrics(partial, [], ("keypoints",))


@pytest.fixture(scope="module")
def keypoint_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A JSON and an image directory: the two keypoint images as random pixels."""
    root = tmp_path_factory.mktemp("coco_keypoints")
    data = _keypoint_dataset()
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for image in data["images"]:
        Image.fromarray(rng.integers(0, 256, (image["height"], image["width"], 3), dtype=np.uint8)).save(
            images / image["file_name"]
        )
    json_path = root / "person_keypoints.json"
    json_path.write_text(json.dumps(data))
    return json_path, images


class _KeypointOracle:
    """A keypoint model's stand-in: the people with keypoints, as a model gives them (pixel i at i + 0.5)."""

    def __init__(self, gt: COCO) -> None:
        self.gt = gt
        self.config = SimpleNamespace(mask_head=None, keypoint_head=KeypointHeadConfig())
        self.queue = [image["id"] for image in gt.dataset["images"]]

    coco_keypoints = Predictor.coco_keypoints
    coco_results = Predictor.coco_results
    predict_files = Predictor.predict_files  # batching and skipping as the real predictor does

    def category_ids(self, detections: Detections) -> list[int]:
        return [PERSON] * len(detections)

    def predict_arrays(self, images: list[np.ndarray], *,
                       score_threshold: float | None = None) -> list[Detections]:
        out = []
        for _ in images:
            ids = self.gt.getAnnIds(imgIds=[self.queue.pop(0)], catIds=[PERSON])
            anns = [a for a in self.gt.loadAnns(ids) if a["num_keypoints"] > 0]
            xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
            keypoints = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float32).reshape(-1, 17, 3)
            keypoints[..., :2] += 0.5
            keypoints[..., 2] = 3.0  # a score, not a visibility
            out.append(Detections(
                boxes=torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1),
                scores=torch.ones(len(anns)),
                labels=torch.zeros(len(anns), dtype=torch.int64),
                keypoints=keypoints,
            ))
        return out


def test_evaluate_keypoint_model_writes_coco_pixel_indices(keypoint_dataset: tuple[Path, Path]) -> None:
    json_path, images = keypoint_dataset
    gt = load_ground_truth(json_path)
    metrics, results = evaluate(_KeypointOracle(gt), gt, images, progress=False)  # type: ignore[arg-type]
    assert set(metrics) == {"bbox", "keypoints", "images", "images_failed"}, "no segm without a mask head"
    assert all(metrics["keypoints"][name] == pytest.approx(1.0) for name in METRIC_NAMES if name != "APs")
    expected = [a for a in gt.dataset["annotations"] if a["category_id"] == PERSON and a["num_keypoints"] > 0]
    assert len(results) == len(expected)
    for record, ann in zip(results, expected, strict=True):
        assert record["image_id"] == ann["image_id"]
        # Back to COCO's pixel indices (less 0.5); the third value is the model's score.
        assert record["keypoints"][0::3] == pytest.approx(ann["keypoints"][0::3])
        assert record["keypoints"][1::3] == pytest.approx(ann["keypoints"][1::3])
        assert record["keypoints"][2::3] == [3.0] * 17


def test_evaluate_keypoints_need_keypoint_ground_truth(dataset: tuple[Path, Path]) -> None:
    json_path, images = dataset
    gt = load_ground_truth(json_path)
    oracle = _KeypointOracle(load_ground_truth(json_path))
    with pytest.raises(ValueError, match="no ground-truth category lists keypoints"):
        evaluate(oracle, gt, images, progress=False, iou_types=("keypoints",))  # type: ignore[arg-type]
    # By default a keypoint model on a ground truth without keypoints gets box AP, and a warning.
    with pytest.warns(UserWarning, match="keypoint AP is not computed"):
        metrics, _ = evaluate(oracle, gt, images, progress=False, max_images=0)  # type: ignore[arg-type]
    assert set(metrics) == {"bbox", "images", "images_failed"}
    with pytest.raises(ValueError, match="without a keypoint head"):
        evaluate(_Oracle(gt), gt, images, progress=False, iou_types=("bbox", "keypoints"))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def keypoint_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's Keypoint R-CNN layout with seeded random weights, on 64-96 px inputs.

    At most 10 detections per image: the keypoint head's eight 512-channel convolutions per
    detection are most of a forward's time on a CPU.
    """
    config = with_input(torchvision_keypoint_r50_fpn(), min_size=64, max_size=96)
    config = config.replace(box_head=dataclasses.replace(config.box_head, detections_per_image=10))
    return write_small_checkpoint(tmp_path_factory.mktemp("kw") / "keypoints.safetensors", config)


def _check_keypoint_schema(metrics: dict[str, Any], images: int) -> None:
    assert set(metrics) == {"bbox", "keypoints", "images", "images_failed"}
    for iou_type in ("bbox", "keypoints"):
        assert set(metrics[iou_type]) == set(METRIC_NAMES)
        for value in metrics[iou_type].values():
            assert value is None or (isinstance(value, float) and 0.0 <= value <= 1.0), metrics
    assert metrics["keypoints"]["APs"] is None
    assert metrics["images"] == images and metrics["images_failed"] == []


@pytest.mark.usefixtures("one_thread")
def test_evaluate_keypoint_model_end_to_end(keypoint_weights: Path, keypoint_dataset: tuple[Path, Path],
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    json_path, images = keypoint_dataset
    out = tmp_path / "metrics.json"
    raw = tmp_path / "detections.json"
    code = main(["evaluate", "--json", str(json_path), "--images", str(images),
                 "--weights", str(keypoint_weights), "--out", str(out), "--results", str(raw),
                 "--batch-size", "2"])
    assert code == 0
    metrics = json.loads(out.read_text())
    _check_keypoint_schema(metrics, images=2)
    table = capsys.readouterr().out
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["bbox", "keypoints"]
    detections = json.loads(raw.read_text())
    assert detections, "the random model is pushed to detect something"
    for record in detections:
        assert record["category_id"] == PERSON and len(record["keypoints"]) == 51
    # The detections file holds the keypoints evaluated: scoring it again gives the same numbers.
    rescored = coco_metrics(load_ground_truth(json_path), detections, ("bbox", "keypoints"), image_ids=[5, 9])
    assert rescored == {k: metrics[k] for k in ("bbox", "keypoints")}


# ------------------------------------------------------------------ images without ground truth


def _write_gt(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return path


def test_image_without_ground_truth_counts_only_false_positives(tmp_path: Path) -> None:
    data = _dataset((1, 5))
    data["images"].append({"id": 99, "file_name": "empty.png", "height": 160, "width": 200})
    gt = load_ground_truth(_write_gt(tmp_path, data))
    perfect = _perfect_results(gt)
    metrics = coco_metrics(gt, perfect)
    assert _all(metrics["bbox"], 1.0) and _all(metrics["segm"], 1.0), metrics
    # A confident detection on the empty image is a false positive ranked first.
    false_positive = {**perfect[0], "image_id": 99}
    lower = [{**r, "score": 0.9} for r in perfect]
    worse = coco_metrics(gt, [false_positive, *lower], image_ids=[3, 7, 12, 99])
    assert worse["bbox"]["AP"] < 1.0 and worse["segm"]["AP"] < 1.0


def test_file_without_annotations_is_all_negatives(tmp_path: Path) -> None:
    data = _dataset((1, 5))
    del data["annotations"]
    gt = load_ground_truth(_write_gt(tmp_path, data))
    assert gt.getAnnIds() == []
    detection = {"image_id": 3, "category_id": 1, "score": 0.9, "bbox": [10, 10, 20, 20],
                 "segmentation": mask_utils.frPyObjects([[10, 10, 30, 10, 30, 30]], 160, 200)[0]}
    detection["segmentation"]["counts"] = detection["segmentation"]["counts"].decode()
    for results in ([], [detection]):
        metrics = coco_metrics(gt, results)
        # No ground truth anywhere: AP is undefined (None), not a crash and not 0.
        assert all(v is None for kind in ("bbox", "segm") for v in metrics[kind].values()), metrics


def test_ground_truth_that_cocoeval_cannot_score_is_left_out_with_a_warning(tmp_path: Path) -> None:
    data = _dataset((1, 5))
    good = len(data["annotations"])
    first = data["annotations"][0]
    rle = mask_utils.frPyObjects(first["segmentation"], 160, 200)[0]
    counts = rle["counts"].decode()
    data["annotations"] += [
        {**first, "id": 100, "segmentation": {"size": [160, 200], "counts": counts[:-1] + "`"}},  # truncated
        {**first, "id": 101, "segmentation": {"size": [160, 200], "counts": counts[:-2]}},  # short of pixels
        {**first, "id": 102, "segmentation": [[1, 2, 3]]},
        {**first, "id": 1},  # a repeated id
        {**first, "id": 103, "image_id": 404},
        "not an annotation",
    ]
    no_area = {k: v for k, v in first.items() if k != "area"}
    data["annotations"][0] = no_area  # pycocotools needs 'area': it is computed
    with pytest.warns(UserWarning, match=r"6 ground-truth annotations left out \(.*3 with a malformed seg"):
        gt = load_ground_truth(_write_gt(tmp_path, data))
    assert len(gt.getAnnIds()) == good and gt.anns[1]["area"] == pytest.approx(first["area"])
    metrics = coco_metrics(gt, _perfect_results(gt))
    assert _all(metrics["bbox"], 1.0) and _all(metrics["segm"], 1.0), metrics
