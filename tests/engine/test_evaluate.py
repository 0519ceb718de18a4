"""COCO evaluation: perfect, hopeless and empty results on a hand-built ground truth; end to end."""

from __future__ import annotations

import copy
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
from maskrcnn.config import MaskHeadConfig
from maskrcnn.engine.evaluate import (
    METRIC_NAMES,
    coco_metrics,
    evaluate,
    format_table,
    load_ground_truth,
)
from maskrcnn.engine.predict import Predictor, load
from maskrcnn.structures import Detections

from ..helpers import write_small_checkpoint

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
    with pytest.raises(ValueError, match="keypoints"):
        coco_metrics(gt, [], ("keypoints",))


def test_ground_truth_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_ground_truth(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON file"):
        load_ground_truth(bad)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="annotations or categories"):
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
        self.config = SimpleNamespace(mask_head=MaskHeadConfig())
        self.categories = sorted(gt.getCatIds())  # contiguous label -> category id
        self.queue = [image["id"] for image in gt.dataset["images"]]

    def category_ids(self, detections: Detections) -> list[int]:
        return [self.categories[label] for label in detections.labels.tolist()]

    def predict_arrays(self, images: list[np.ndarray]) -> list[Detections]:
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
                masks=torch.from_numpy(np.stack([self.gt.annToMask(a) for a in anns])).bool(),
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


def test_cli_evaluate_errors(weights: Path, dataset: tuple[Path, Path], tmp_path: Path) -> None:
    json_path, images = dataset
    base = ["evaluate", "--out", str(tmp_path / "m.json")]
    with pytest.raises(SystemExit, match="no such annotation file: .*missing.json"):
        main([*base, "--json", str(tmp_path / "missing.json"), "--images", str(images),
              "--weights", str(weights)])
    with pytest.raises(SystemExit, match="no such image directory"):
        main([*base, "--json", str(json_path), "--images", str(tmp_path / "nodir"),
              "--weights", str(weights)])
    with pytest.raises(SystemExit, match="error: .*nothing.safetensors"):
        main([*base, "--json", str(json_path), "--images", str(images),
              "--weights", str(tmp_path / "nothing.safetensors")])
    assert not (tmp_path / "m.json").exists()
