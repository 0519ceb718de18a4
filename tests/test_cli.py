"""``maskrcnn predict``: results format, batching order, bad inputs reported and skipped, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.checkpoint import save_model
from maskrcnn.cli import main

from .helpers import error_line, random_state, small_config, write_small_checkpoint


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_checkpoint(tmp_path_factory.mktemp("w") / "small.safetensors")


def _photo(path: Path, size: tuple[int, int] = (96, 64), seed: int = 0, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def test_results_are_coco_format_in_input_pixels(weights: Path, tmp_path: Path) -> None:
    image = _photo(tmp_path / "a.png", (96, 64))
    out = tmp_path / "r.json"
    assert main(["predict", str(image), "--weights", str(weights), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results, "the small model is built to detect something"
    for r in results:
        assert set(r) == {"file_name", "category_id", "bbox", "score", "segmentation"}
        assert r["file_name"] == "a.png"  # relative to the folder of the inputs
        assert r["category_id"] in (10, 11, 12)
        x, y, w, h = r["bbox"]
        assert 0 <= x <= x + w <= 96 + 1e-3 and 0 <= y <= y + h <= 64 + 1e-3
        assert r["segmentation"]["size"] == [64, 96]
        assert isinstance(r["segmentation"]["counts"], str)
    assert all(a["score"] >= b["score"] for a, b in zip(results, results[1:], strict=False))


def test_directory_sorted_and_bad_images_skipped(weights: Path, tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    d.mkdir()
    _photo(d / "b.png", seed=1)
    _photo(d / "a.jpg", seed=2)
    (d / "c.jpg").write_bytes(b"")  # zero bytes
    (d / "d.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")  # corrupt
    Image.new("RGB", (1, 1), (200, 10, 10)).save(d / "e.png")  # 1x1 is valid
    _photo(d / "f.png", mode="RGBA", seed=3)
    Image.fromarray(np.arange(64 * 96, dtype=np.uint16).reshape(64, 96) * 10).save(d / "g.png")  # 16-bit
    out = tmp_path / "r.json"
    viz = tmp_path / "viz"
    code = main(["predict", str(d), "--weights", str(weights), "--out", str(out), "--viz", str(viz),
                 "--batch-size", "2"])
    assert code == 1  # two unreadable images
    names = {r["file_name"] for r in json.loads(out.read_text())}
    assert names <= {"a.jpg", "b.png", "e.png", "f.png", "g.png"}
    assert {p.name for p in viz.iterdir()} == {"a.png", "b.png", "e.png", "f.png", "g.png"}


def test_exif_rotated_jpeg_gives_masks_of_rotated_size(weights: Path, tmp_path: Path) -> None:
    path = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    _photo(tmp_path / "src.png", (96, 64))
    Image.open(tmp_path / "src.png").save(path, exif=exif)
    out = tmp_path / "r.json"
    assert main(["predict", str(path), "--weights", str(weights), "--out", str(out)]) == 0
    for r in json.loads(out.read_text()):
        assert r["segmentation"]["size"] == [96, 64]


def test_batching_does_not_reorder(weights: Path, tmp_path: Path) -> None:
    images = [str(_photo(tmp_path / f"{n}.png", seed=i)) for i, n in enumerate(["z", "m", "a"])]
    out1, out3 = tmp_path / "1.json", tmp_path / "3.json"
    assert main(["predict", *images, "--weights", str(weights), "--out", str(out1)]) == 0
    assert main(["predict", *images, "--weights", str(weights), "--out", str(out3), "--batch-size", "3"]) == 0
    order = [r["file_name"] for r in json.loads(out3.read_text())]
    assert sorted(set(order), key=order.index) == [n for n in ("z.png", "m.png", "a.png") if n in order]
    # Same images of the same size: padding is identical, so batching changes only the
    # order of float sums; detections may swap places where scores nearly tie, nothing more.
    a, b = json.loads(out1.read_text()), json.loads(out3.read_text())
    assert len(a) == len(b)
    unmatched = [
        r for r in a
        if not any(q["file_name"] == r["file_name"] and q["category_id"] == r["category_id"]
                   and max(abs(x - y) for x, y in zip(q["bbox"], r["bbox"], strict=True)) < 1e-2
                   and abs(q["score"] - r["score"]) < 1e-4 for q in b)
    ]
    assert len(unmatched) <= 0.01 * len(a), unmatched[:3]


def test_bad_checkpoint_and_missing_image_are_clear_errors(weights: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(weights.read_bytes()[: 5000])
    image = _photo(tmp_path / "a.png")
    run = subprocess.run([sys.executable, "-m", "maskrcnn.cli", "predict", str(image), "--weights",
                          str(truncated), "--out", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert run.returncode != 0 and str(truncated) in run.stderr
    run = subprocess.run([sys.executable, "-m", "maskrcnn.cli", "predict", str(tmp_path / "nope.jpg"),
                          "--weights", str(weights)], capture_output=True, text=True)
    assert run.returncode != 0 and "nope.jpg" in run.stderr


def test_score_threshold_keeps_only_higher_scores(weights: Path, tmp_path: Path) -> None:
    image = _photo(tmp_path / "a.png")
    out_all, out_hi = tmp_path / "all.json", tmp_path / "hi.json"
    main(["predict", str(image), "--weights", str(weights), "--out", str(out_all)])
    main(["predict", str(image), "--weights", str(weights), "--out", str(out_hi), "--score-threshold", "0.3"])
    everything = json.loads(out_all.read_text())
    high = json.loads(out_hi.read_text())
    assert all(r["score"] > 0.3 for r in high)
    assert len(high) == sum(r["score"] > 0.3 for r in everything)


# ------------------------------------------------------------------ errors, exit codes, file names


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_same_file_names_in_two_folders_stay_apart(weights: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for folder, seed in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        _photo(tmp_path / folder / "x.png", seed=seed)
    out, viz = tmp_path / "r.json", tmp_path / "viz"
    code, _ = _run(["predict", str(tmp_path / "a"), str(tmp_path / "b"), "--weights", str(weights),
                    "--out", str(out), "--viz", str(viz)], capsys)
    assert code == 0
    assert {r["file_name"] for r in json.loads(out.read_text())} == {"a/x.png", "b/x.png"}
    assert sorted(p.relative_to(viz).as_posix() for p in viz.rglob("*.png")) == ["a/x.png", "b/x.png"]


def test_same_stem_with_two_extensions_gives_two_pictures(weights: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "imgs"
    d.mkdir()
    _photo(d / "x.jpg", seed=1)
    _photo(d / "x.png", seed=2)
    viz = tmp_path / "viz"
    code, _ = _run(["predict", str(d), "--weights", str(weights), "--out", str(tmp_path / "r.json"),
                    "--viz", str(viz)], capsys)
    assert code == 0
    assert sorted(p.name for p in viz.iterdir()) == ["x.jpg.png", "x.png.png"]


def test_clashing_inputs_are_errors_not_overwrites(weights: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "imgs"
    d.mkdir()
    image = _photo(d / "x.png")
    code, err = _run(["predict", str(d), str(image), "--weights", str(weights),
                      "--out", str(tmp_path / "r.json")], capsys)
    assert code == 2
    error_line(err, "x.png", "twice")
    # Pictures that differ only by case would overwrite each other on macOS and Windows.
    _photo(d / "X.png", seed=3)
    code, err = _run(["predict", str(d), "--weights", str(weights), "--out", str(tmp_path / "r.json"),
                      "--viz", str(tmp_path / "viz")], capsys)
    assert code == 1
    error_line(err, "X.png", "x.png")
    assert not (tmp_path / "viz").exists()


def test_score_threshold_below_the_models_own_returns_lower_scores(tmp_path: Path) -> None:
    # Background strongly preferred: every detection scores about 0.02, below the model's 0.05.
    config = small_config()
    state = random_state(config)
    state["box.head.cls_score.weight"] = torch.zeros_like(state["box.head.cls_score.weight"])
    state["box.head.cls_score.bias"] = torch.tensor([2.0] + [-2.0] * config.num_classes)
    low = save_model(tmp_path / "low.safetensors", config, state)
    image = _photo(tmp_path / "a.png")
    default, lowered = tmp_path / "default.json", tmp_path / "lowered.json"
    assert main(["predict", str(image), "--weights", str(low), "--out", str(default)]) == 0
    assert main(["predict", str(image), "--weights", str(low), "--out", str(lowered),
                 "--score-threshold", "0.001"]) == 0
    assert json.loads(default.read_text()) == []
    scores = [r["score"] for r in json.loads(lowered.read_text())]
    assert scores and all(0.001 < s < 0.05 for s in scores)


@pytest.mark.parametrize("value", ["2", "-0.1", "nan", "x"])
def test_score_threshold_outside_zero_one_is_a_usage_error(weights: Path, tmp_path: Path, value: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    image = _photo(tmp_path / "a.png")
    code, err = _run(["predict", str(image), "--weights", str(weights), "--score-threshold", value,
                      "--out", str(tmp_path / "r.json")], capsys)
    assert code == 2
    error_line(err, "--score-threshold")


def test_empty_folder_is_an_error_for_predict(weights: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    empty, notes = tmp_path / "empty", tmp_path / "notes"
    empty.mkdir()
    notes.mkdir()
    (notes / "readme.txt").write_text("no images here")
    for folder in (empty, notes):
        code, err = _run(["predict", str(folder), "--weights", str(weights),
                          "--out", str(tmp_path / "r.json")], capsys)
        assert code == 1
        error_line(err, str(folder))
    assert not (tmp_path / "r.json").exists()


def test_empty_image_set_is_an_error_for_evaluate(weights: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    gt = {"images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 96}], "annotations": [],
          "categories": [{"id": 10, "name": "thing0"}]}
    listed, unlisted = tmp_path / "gt.json", tmp_path / "none.json"
    listed.write_text(json.dumps(gt))
    unlisted.write_text(json.dumps({**gt, "images": []}))
    base = ["evaluate", "--weights", str(weights), "--out", str(tmp_path / "m.json")]
    code, err = _run([*base, "--json", str(listed), "--images", str(empty)], capsys)
    assert code == 1
    error_line(err, str(empty))
    _photo(empty / "a.png", (96, 64))
    code, err = _run([*base, "--json", str(unlisted), "--images", str(empty)], capsys)
    assert code == 1
    error_line(err, str(unlisted), "no images")
    assert not (tmp_path / "m.json").exists()


def test_random_bytes_checkpoint_gets_one_line_without_unsafe_advice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    image = _photo(tmp_path / "a.png")
    code, err = _run(["predict", str(image), "--weights", str(junk), "--out", str(tmp_path / "r.json")],
                     capsys)
    assert code == 1
    error_line(err, str(junk))
    assert "weights_only" not in err


def test_debug_shows_the_traceback(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["predict", str(empty), "--weights", str(weights), "--out", str(tmp_path / "r.json")]
    code, err = _run(["--debug", *args], capsys)
    assert code == 1 and "Traceback" in err and str(empty) in err.splitlines()[-1]
    code, err = _run([*args, "--debug"], capsys)
    assert code == 1 and "Traceback" in err


def test_device_cuda_without_a_gpu_is_a_usage_error(weights: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    image = _photo(tmp_path / "a.png")
    code, err = _run(["predict", str(image), "--weights", str(weights), "--device", "cuda"], capsys)
    assert code == 2
    error_line(err, "--device cuda")


def test_python_dash_m_maskrcnn(weights: Path, tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "maskrcnn", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "predict" in run.stdout
    run = subprocess.run([sys.executable, "-m", "maskrcnn", "predict", str(tmp_path / "nothing"),
                          "--weights", str(weights)], capture_output=True, text=True)
    assert run.returncode == 1
    error_line(run.stderr, "nothing")


def test_dataset_show_draws_every_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``dataset show``: one picture per image, the ground truth drawn (not the bare image), labels only."""
    from maskrcnn.data.synthetic import make_demo_dataset

    _, _, val_json, val_dir = make_demo_dataset(tmp_path / "data", train_images=1, val_images=3, seed=2)
    out = tmp_path / "show"
    command = ["dataset", "show", str(val_json), "--images", str(val_dir), "--out", str(out)]
    assert main(command) == 0
    pictures = sorted(out.glob("*.png"))
    assert len(pictures) == 3
    for picture in pictures:
        drawn = np.asarray(Image.open(picture).convert("RGB"))
        original = np.asarray(Image.open(val_dir / picture.name).convert("RGB"))
        assert drawn.shape == original.shape and (drawn != original).any()
    assert "3 picture(s)" in capsys.readouterr().err
    assert main([*command, "--max-images", "0"]) == 2
    error_line(capsys.readouterr().err, "--max-images")


def test_dataset_show_draws_crowd_regions_and_only_labelled_keypoints(tmp_path: Path) -> None:
    """A crowd region is drawn as a box of its own; an unlabelled keypoint (0, 0, 0) leaves its place bare."""
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((60, 80, 3), 40, np.uint8)).save(images / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 60, "width": 80}],
        "categories": [{"id": 1, "name": "person", "keypoints": ["nose", "eye"]}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 20, 30, 30], "iscrowd": 0,
             "segmentation": [[20, 20, 50, 20, 50, 50, 20, 50]], "keypoints": [30, 30, 2, 0, 0, 0],
             "num_keypoints": 1},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [60, 5, 15, 15], "iscrowd": 1,
             "segmentation": [[60, 5, 75, 5, 75, 20, 60, 20]]},
        ],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    assert main(["dataset", "show", str(path), "--images", str(images), "--out", str(tmp_path / "show")]) == 0
    drawn = np.asarray(Image.open(tmp_path / "show" / "a.png").convert("RGB")).astype(int)
    assert (drawn[5:21, 60] != 40).any()  # the crowd box's left edge
    assert (drawn[30, 30] == 255).all()  # the labelled nose: a white dot
    assert (drawn[0:3, 0:3] == 40).all()  # nothing drawn for the unlabelled eye at (0, 0)


def test_predict_takes_videos_and_images_together(weights: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """One results file: the image's records, then the video's with "frame"; an annotated video beside
    the picture."""
    from tests.engine.test_video import frames_of, read_back, write_video

    inputs = tmp_path / "in"
    inputs.mkdir()
    _photo(inputs / "a.png")
    write_video(inputs / "clip.mkv", frames_of(6))
    out, viz = tmp_path / "r.json", tmp_path / "viz"
    assert main(["predict", str(inputs), "--weights", str(weights), "--every", "2", "--out", str(out),
                 "--viz", str(viz)]) == 0
    records = json.loads(out.read_text())
    images = [r for r in records if r["file_name"] == "a.png"]
    frames = [r for r in records if r["file_name"] == "clip.mkv"]
    assert images and all("frame" not in r for r in images)
    assert frames and {r["frame"] for r in frames} <= {0, 2, 4}
    assert (viz / "a.png").is_file()
    annotated, _, _ = read_back(viz / "clip.mp4")
    assert len(annotated) == 6
    assert "3 frame(s) of 1 video(s)" in capsys.readouterr().err


@pytest.mark.parametrize("flags, words", [
    (["--tile-overlap", "8"], "--tile-overlap needs --tile"),
    (["--tile", "16"], "--tile must be at least"),
    (["--tile", "64", "--tile-overlap", "64"], "--tile-overlap 64"),
    (["--max-detections", "0"], "--max-detections"),
    (["--every", "0"], "--every"),
])
def test_tile_and_video_flags_are_checked_first(weights: Path, tmp_path: Path, flags: list[str], words: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _photo(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "--weights", str(weights), *flags]) == 2
    error_line(capsys.readouterr().err, words)


def test_predict_tiled_and_capped(weights: Path, tmp_path: Path) -> None:
    _photo(tmp_path / "a.png", size=(300, 200))
    out = tmp_path / "r.json"
    assert main(["predict", str(tmp_path / "a.png"), "--weights", str(weights), "--tile", "128",
                 "--max-detections", "5", "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert 0 < len(records) <= 5
    assert all(r["segmentation"]["size"] == [200, 300] for r in records)


def test_a_video_that_cannot_be_read_is_named_and_the_others_are_counted(
        weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.engine.test_video import frames_of, write_video

    write_video(tmp_path / "good.mkv", frames_of(2))
    (tmp_path / "bad.mp4").write_bytes(bytes(range(256)) * 8)
    out = tmp_path / "r.json"
    assert main(["predict", str(tmp_path / "good.mkv"), str(tmp_path / "bad.mp4"), "--weights", str(weights),
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "2 frame(s) of 1 video(s)" in err
    error_line(err, "bad.mp4")
    assert {r["file_name"] for r in json.loads(out.read_text())} <= {"good.mkv"}
