"""Whole models exported with ``maskrcnn export`` compute what the PyTorch model computes.

- each shared peer fixture (torchvision, Detectron2, Keypoint R-CNN) exported
  and run in ONNX Runtime passes the fixture's ``compare.py`` at its batch
  sizes; OpenVINO passes it on the torchvision fixture;
- the demo model that maskrcnn v0.1 trained (a checkpoint of an earlier
  version) exported: blank images alone and in batches of 2 and 4 give no
  detections and leave the other images' detections equal to PyTorch's;
  its COCO AP on the demo's held-out images is the one v0.1 measured;
- a file that is not ONNX, an ONNX file without our metadata, a checkpoint
  that does not load: one line each and a non-zero exit status.

Exports take about 50 s each, so each model is exported once per session.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import maskrcnn
from maskrcnn.cli import main
from maskrcnn.data.images import load_image
from maskrcnn.data.synthetic import make_demo_dataset
from maskrcnn.engine.evaluate import evaluate
from maskrcnn.structures import Detections
from tests.helpers import error_line, predict_fixture_and_compare
from tests.peers import write_fixture_weights

pytest.importorskip("onnxruntime", reason="the deploy extra is not installed")
pytestmark = pytest.mark.usefixtures("one_thread")

V01 = Path(__file__).resolve().parents[1] / "fixtures" / "v0.1"
FIXTURES = ["torchvision-maskrcnn-r50-fpn", "detectron2-maskrcnn-r50-fpn", "torchvision-keypointrcnn-r50-fpn"]


def _export(weights: Path, out: Path) -> Path:
    assert main(["export", "--weights", str(weights), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def exported_fixture(reference: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each shared fixture's synthetic weights as the peer's file, exported (lazily, once)."""

    class Exports(dict[str, Path]):
        def __missing__(self, name: str) -> Path:
            folder = tmp_path_factory.mktemp(name)
            suffix = ".pkl" if name.startswith("detectron2") else ".pth"
            weights = write_fixture_weights(reference / name, folder / f"weights{suffix}")
            self[name] = _export(weights, folder / "model.onnx")
            return self[name]

    return Exports()


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(V01 / "demo-v0.1.safetensors", tmp_path_factory.mktemp("demo") / "demo.onnx")


@pytest.mark.parametrize("fixture", FIXTURES)
def test_exported_fixture_matches_peer_in_onnxruntime(
    fixture: str, exported_fixture: dict[str, Path], reference: Path, tmp_path: Path
) -> None:
    out = predict_fixture_and_compare(reference / fixture, reference / "compare.py", tmp_path,
                                      weights=exported_fixture[fixture])
    print(f"{fixture} in onnxruntime:\n{out}")


def test_exported_fixture_matches_peer_in_openvino(
    exported_fixture: dict[str, Path], reference: Path, tmp_path: Path
) -> None:
    pytest.importorskip("openvino", reason="the deploy extra is not installed")
    fixture = "torchvision-maskrcnn-r50-fpn"
    out = predict_fixture_and_compare(reference / fixture, reference / "compare.py", tmp_path,
                                      weights=exported_fixture[fixture], runtime="openvino")
    print(f"{fixture} in openvino:\n{out}")


def test_metadata_carries_the_config(demo_onnx: Path) -> None:
    exported = maskrcnn.load(demo_onnx)
    original = maskrcnn.load(V01 / "demo-v0.1.safetensors")
    assert exported.config == original.config
    assert exported.class_names == original.class_names and len(exported.class_names) == 4


def _assert_same_detections(got: Detections, want: Detections) -> None:
    """Equal up to the order of exactly tied scores: every detection has its twin (label, box, mask)."""
    assert len(got) == len(want)
    torch.testing.assert_close(got.scores, want.scores, rtol=0, atol=1e-5)
    unused = set(range(len(got)))
    for i in range(len(want)):
        twins = [j for j in unused if int(got.labels[j]) == int(want.labels[i])
                 and abs(float(got.scores[j] - want.scores[i])) <= 1e-5
                 and float((got.boxes[j] - want.boxes[i]).abs().max()) <= 1e-3]
        assert twins, f"detection {i} of {len(want)} has no twin"
        j = twins[0]
        unused.remove(j)
        assert got.masks is not None and want.masks is not None
        a, b = got.masks[j : j + 1].dense()[0], want.masks[i : i + 1].dense()[0]
        union = int((a | b).sum())
        assert union == 0 or int((a & b).sum()) / union >= 0.99


@pytest.mark.parametrize("batch", [[None], [None, 0], [1, None, 2, None]], ids=["1", "2", "4"])
def test_blank_images_give_nothing_and_leave_the_others_equal(
    batch: list[int | None], demo_onnx: Path, tmp_path: Path
) -> None:
    _, _, _, val_dir = make_demo_dataset(tmp_path, train_images=1, val_images=3, seed=5)
    photos = [np.asarray(load_image(p)) for p in sorted(val_dir.iterdir())]
    blank = np.full_like(photos[0], 127)
    images = [blank if i is None else photos[i] for i in batch]
    exported = maskrcnn.load(demo_onnx)
    original = maskrcnn.load(V01 / "demo-v0.1.safetensors")
    for threshold in (None, 0.5):  # the model's own (0.05), and the demo's
        got = exported.predict_arrays(images, score_threshold=threshold)
        want = original.predict_arrays(images, score_threshold=threshold)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            if batch[i] is not None:
                assert threshold is not None or len(w) > 0
                _assert_same_detections(g, w)
            elif threshold is not None:
                assert len(g) == 0 and len(w) == 0
                assert g.masks is not None and g.masks.shape == (0, *blank.shape[:2])
            # A flat image at 0.05: this group-norm model's faint detections there depend on float
            # rounding (PyTorch's own channels-last and contiguous layouts give different ones).


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_exported_demo_model_gives_v01s_coco_ap(runtime: str, demo_onnx: Path, tmp_path: Path) -> None:
    pytest.importorskip(runtime, reason="the deploy extra is not installed")
    record = json.loads((V01 / "demo-v0.1.json").read_text())
    _, _, val_json, val_dir = make_demo_dataset(tmp_path, train_images=1, val_images=record["val_images"],
                                                seed=record["seed"])
    metrics, _ = evaluate(maskrcnn.load(demo_onnx, runtime=runtime), val_json, val_dir, batch_size=4,
                          progress=False)
    # Within 0.1 AP point (AP on the 0-1 scale).
    assert metrics["bbox"]["AP"] == pytest.approx(record["bbox_AP"], abs=0.001)
    assert metrics["segm"]["AP"] == pytest.approx(record["segm_AP"], abs=0.001)


def test_score_threshold_applies_before_nms_as_in_pytorch(demo_onnx: Path, tmp_path: Path) -> None:
    _, _, _, val_dir = make_demo_dataset(tmp_path, train_images=1, val_images=2, seed=9)
    paths = sorted(val_dir.iterdir())
    for threshold in (0.0, 0.3, 0.9):
        got = maskrcnn.load(demo_onnx, score_threshold=threshold)(paths, batch_size=2)
        want = maskrcnn.load(V01 / "demo-v0.1.safetensors", score_threshold=threshold)(paths, batch_size=2)
        for g, w in zip(got, want, strict=True):
            _assert_same_detections(g, w)


# --------------------------------------------------------------------------- bad input


def test_a_file_that_is_not_onnx_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "model.onnx"
    fake.write_text("not a model\n" * 10)
    image = tmp_path / "image.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["predict", str(image), "--weights", str(fake), "--out", str(tmp_path / "r.json")]) == 1
    error_line(capsys.readouterr().err, str(fake), "ONNX")


def test_an_onnx_file_without_our_metadata_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(other))
    assert main(["evaluate", "--json", str(tmp_path / "none.json"), "--images", str(tmp_path),
                 "--weights", str(other)]) == 1
    err = capsys.readouterr().err
    assert "none.json" in err  # the annotation file is checked first
    image = tmp_path / "image.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["predict", str(image), "--weights", str(other), "--out", str(tmp_path / "r.json")]) == 1
    error_line(capsys.readouterr().err, str(other), "maskrcnn export")


def test_exporting_a_checkpoint_that_does_not_load_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"\x80\x04garbage")
    assert main(["export", "--weights", str(broken), "--out", str(tmp_path / "m.onnx")]) == 1
    error_line(capsys.readouterr().err, str(broken))
    assert not (tmp_path / "m.onnx").exists()
    missing = tmp_path / "missing.pth"
    assert main(["export", "--weights", str(missing), "--out", str(tmp_path / "m.onnx")]) == 1
    error_line(capsys.readouterr().err, "missing.pth")


def test_export_and_runtime_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = V01 / "demo-v0.1.safetensors"
    assert main(["export", "--weights", str(weights), "--out", str(tmp_path / "m.pt")]) == 2
    error_line(capsys.readouterr().err, "--out", ".onnx")
    out = str(tmp_path / "m.onnx")
    assert main(["export", "--weights", str(weights), "--out", out, "--opset", "11"]) == 2
    error_line(capsys.readouterr().err, "--opset 11")
    image = tmp_path / "image.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["predict", str(image), "--weights", str(weights), "--runtime", "openvino",
                 "--out", str(tmp_path / "r.json")]) == 2
    error_line(capsys.readouterr().err, "maskrcnn export --weights")
