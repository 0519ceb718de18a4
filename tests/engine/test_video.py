"""Video prediction: decoding (containers, odd sizes, rotation), frame selection and batching, the same
detections as for the frames as images, streamed results and annotated videos, and what is kept when a
video is unreadable, corrupt or the run interrupted.

The videos are tiny (64x48, a dozen frames) and made here with PyAV: lossless FFV1 in Matroska and raw
video in AVI, where a decoded frame must equal the frame written, and H.264 in MP4 as phones record.
"""

from __future__ import annotations

import dataclasses
import json
import tracemalloc
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from maskrcnn.engine.predict import BasePredictor, load
from maskrcnn.engine.video import (
    ResultsWriter,
    VideoReader,
    VideoReadError,
    VideoWriter,
    _predict_frames,
    annotated_video_paths,
    is_video,
    open_video,
    predict_video,
    run_video_prediction,
)
from maskrcnn.structures import Detections

from ..helpers import small_config, write_small_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# (codec, pixel format) per container; FFV1 and raw video are lossless and take odd sizes.
LOSSLESS = {".mkv": ("ffv1", "bgr0"), ".avi": ("rawvideo", "bgr24")}
SQUARE = 12  # side of the moving square
BOX = (8.0, 6.0, 40.0, 30.0)  # the fake predictor's detection, XYXY


def frames_of(count: int, width: int = 64, height: int = 48) -> list[np.ndarray]:
    """A red square moving right over a gradient with a little noise, one array per frame."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(40, 200, width)[None, :, None] + np.linspace(0, 30, height)[:, None, None]
    frames = []
    for i in range(count):
        image = np.clip(ramp + rng.normal(0, 4, (height, width, 3)), 0, 255).astype(np.uint8)
        x = (3 * i) % (width - SQUARE)
        image[20 : 20 + SQUARE, x : x + SQUARE] = (230, 20, 20)
        frames.append(image)
    return frames


def write_video(
    path: Path, frames: Sequence[np.ndarray], *, rate: Fraction = Fraction(25), rotation: int | None = None
) -> Path:
    """``frames`` as a video: lossless for .mkv and .avi, H.264 for .mp4."""
    codec, pixels = LOSSLESS.get(path.suffix, ("libx264", "yuv420p"))
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pixels
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_back(path: Path) -> tuple[list[np.ndarray], Fraction | None, tuple[int, int]]:
    """The frames of a video as PyAV decodes them, its average rate and its (width, height)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return frames, stream.average_rate, (stream.width, stream.height)


class FakePredictor(BasePredictor):
    """One fixed detection per frame, recording each batch; raises KeyboardInterrupt at call ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__(small_config())
        self.batches: list[list[np.ndarray]] = []
        self.stop_at = stop_at

    def run(
        self, images: Sequence[np.ndarray], score_threshold: float | None, timings: dict[str, float] | None
    ) -> list[Detections]:
        if self.stop_at is not None and len(self.batches) + 1 == self.stop_at:
            raise KeyboardInterrupt
        self.batches.append([image.copy() for image in images])
        return [Detections(boxes=torch.tensor([BOX]), scores=torch.tensor([0.9]), labels=torch.tensor([1]),
                           class_names=list(self.class_names)) for _ in images]


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize(("suffix", "size"), [(".mkv", (64, 48)), (".avi", (64, 48)), (".mkv", (63, 47))])
def test_frames_decoded_are_the_frames_written(tmp_path: Path, suffix: str, size: tuple[int, int]) -> None:
    written = frames_of(12, *size)
    path = write_video(tmp_path / f"clip{suffix}", written, rate=Fraction(30000, 1001))
    with open_video(path) as video:
        decoded = list(video.frames())
        assert video.rate == Fraction(30000, 1001) and video.decoded == 12
    assert [index for index, _, _ in decoded] == list(range(12))
    assert all(np.array_equal(image, frame) for (_, _, image), frame in zip(decoded, written, strict=True))
    assert [t for _, t, _ in decoded] == pytest.approx([i * 1001 / 30000 for i in range(12)], abs=1e-3)


def test_mp4_decodes_every_frame_close_to_what_was_written(tmp_path: Path) -> None:
    written = frames_of(12)
    with open_video(write_video(tmp_path / "clip.MP4", written)) as video:
        assert video.frame_count == 12
        decoded = [image for _, _, image in video.frames()]
    assert len(decoded) == 12
    errors = [np.abs(a.astype(int) - b).mean() for a, b in zip(decoded, written, strict=True)]
    assert max(errors) < 6  # lossy H.264; a frame out of order or off by one would differ by far more


def test_rotation_metadata_turns_frames_as_a_player_shows_them(tmp_path: Path) -> None:
    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip(f"PyAV {av.__version__} cannot write rotation metadata (18 can)")
    image = np.zeros((48, 64, 3), np.uint8)
    image[:24, :32] = (255, 0, 0)  # red top-left quarter
    path = write_video(tmp_path / "portrait.mp4", [image] * 3, rotation=90)
    with open_video(path) as video:
        decoded = [frame for _, _, frame in video.frames()]
    # 90 degrees counter-clockwise, the display matrix's sense: (48, 64) -> (64, 48), top-left to bottom-left.
    assert decoded[0].shape == (64, 48, 3) and decoded[0].flags.c_contiguous
    assert decoded[0][48, 8, 0] > 200 and decoded[0][8, 8, 0] < 50 and decoded[0][48, 40, 0] < 50


def test_unreadable_files_raise_one_line_naming_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "empty.mov").write_bytes(b"")
    audio = tmp_path / "audio.mkv"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("flac", rate=8000)
        sound = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        sound.sample_rate, sound.pts, sound.time_base = 8000, 0, Fraction(1, 8000)
        for packet in [*stream.encode(sound), *stream.encode()]:
            container.mux(packet)
    expected = {"missing.mp4": "no such file", "empty.mov": "empty file", "garbage.mp4": "not a video",
                "audio.mkv": "no video stream", ".": "is a directory"}
    for name, problem in expected.items():
        with pytest.raises(VideoReadError) as caught:
            open_video(tmp_path / name)
        message = str(caught.value)
        assert message.startswith(str(tmp_path / name)) and problem in message and "\n" not in message
    assert is_video("a/B.MOV") and is_video("x.webm") and not is_video("x.jpg") and not is_video("mp4")


# --------------------------------------------------------------------------- predicting


def test_predict_video_gives_the_detections_of_the_frames_as_images(tmp_path: Path) -> None:
    config = small_config()
    # Few detections, so each forward pass (mostly the mask head over every detection) is fast.
    config = config.replace(
        box_head=dataclasses.replace(config.box_head, detections_per_image=5),
        rpn=dataclasses.replace(config.rpn, pre_nms_topk_test=200, post_nms_topk_test=100),
    )
    predictor = load(write_small_checkpoint(tmp_path / "model.pt", config))
    path = write_video(tmp_path / "clip.mp4", frames_of(7))
    frames = list(predict_video(predictor, path, every=3, score_threshold=0.1))
    assert [f.index for f in frames] == [0, 3, 6]
    assert [f.time for f in frames] == pytest.approx([0.0, 0.12, 0.24])
    with open_video(path) as video:
        decoded = [image for index, _, image in video.frames() if index % 3 == 0]
    for frame, image in zip(frames, decoded, strict=True):
        assert np.array_equal(frame.image, image)
        (alone,) = predictor.predict_arrays([image], score_threshold=0.1)
        assert len(alone) > 0
        assert torch.equal(frame.detections.boxes, alone.boxes)
        assert torch.equal(frame.detections.scores, alone.scores)
        assert predictor.coco_results(frame.detections, "f") == predictor.coco_results(alone, "f")


def test_every_and_batch_size_choose_the_frames_and_group_them(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", frames_of(12))
    predictor = FakePredictor()
    frames = list(predict_video(predictor, path, every=3, batch_size=3))
    assert [f.index for f in frames] == [0, 3, 6, 9]
    assert [len(batch) for batch in predictor.batches] == [3, 1]
    written = frames_of(12)
    sent = [image for batch in predictor.batches for image in batch]
    assert all(np.array_equal(a, written[i]) for a, i in zip(sent, [0, 3, 6, 9], strict=True))
    with pytest.raises(ValueError, match="every"):
        predict_video(predictor, path, every=0)


def test_frames_between_predicted_ones_carry_the_latest_detections(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", frames_of(10))
    with open_video(path) as video:
        frames = list(_predict_frames(FakePredictor(), video, every=4, batch_size=2, score_threshold=None,
                                      between=True))
    assert [f.index for f, _ in frames] == list(range(10))
    assert [i for i, (_, predicted) in enumerate(frames) if predicted] == [0, 4, 8]
    for index, (frame, _) in enumerate(frames):
        assert frame.detections is frames[index - index % 4][0].detections


# --------------------------------------------------------------------------- the predict command


def test_results_and_annotated_videos(tmp_path: Path) -> None:
    rate = Fraction(30000, 1001)
    inputs = {"a.mp4": frames_of(12), "b.mkv": frames_of(9, 63, 47)}
    paths = [write_video(tmp_path / name, frames, rate=rate) for name, frames in inputs.items()]
    out, viz = tmp_path / "out" / "results.json", tmp_path / "viz"
    summary = run_video_prediction(FakePredictor(), [(paths[0], "a.mp4"), paths[1]], out=out, viz_dir=viz,
                                   every=2, batch_size=2, progress=False)
    assert (summary.videos, summary.frames, summary.predicted, summary.detections) == (2, 21, 11, 11)
    assert summary.failed == []
    records = json.loads(out.read_text())
    assert [(r["file_name"], r["frame"]) for r in records] == (
        [("a.mp4", i) for i in range(0, 12, 2)] + [("b.mkv", i) for i in range(0, 9, 2)])
    assert list(records[0])[:3] == ["file_name", "frame", "category_id"]
    assert records[0]["bbox"] == [8.0, 6.0, 32.0, 24.0]
    for name, frames in inputs.items():
        drawn, drawn_rate, size = read_back(viz / (Path(name).stem + ".mp4"))
        assert len(drawn) == len(frames) and drawn_rate == rate  # every frame, at the input's rate
        assert size == (64, 48)  # 63x47 padded to even sides
        for image, frame in zip(drawn, frames, strict=True):
            difference = np.abs(image[: frame.shape[0], : frame.shape[1]].astype(int) - frame).mean(axis=2)
            x0, y0, x1, y1 = (int(v) for v in BOX)
            assert difference[y0 + 2 : y1 - 1, x1].mean() > 40  # the box's right side is drawn
            assert difference[40:, 45:].mean() < 8  # far from the box: the frame as it was
    assert not list(tmp_path.rglob("*.tmp"))


def test_unreadable_and_corrupt_videos_are_reported_and_the_others_go_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    good = write_video(tmp_path / "good.avi", frames_of(5))
    corrupt = write_video(tmp_path / "corrupt.mp4", frames_of(12))
    with av.open(str(corrupt)) as container:  # where the compressed frames 6 to 11 are in the file
        spans = [(p.pos, p.size) for p in container.demux(video=0) if p.size][6:]
    data = bytearray(corrupt.read_bytes())
    for position, size in spans:
        data[position : position + size] = b"\xab" * size
    corrupt.write_bytes(bytes(data))
    out = tmp_path / "results.json"
    summary = run_video_prediction(FakePredictor(), [garbage, corrupt, good], out=out, progress=False)
    assert summary.failed == ["garbage.mp4", "corrupt.mp4"] and summary.videos == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"skipped {garbage}: not a video")
    assert lines[1].startswith(f"stopped {corrupt}: corrupt video data after frame")
    records = json.loads(out.read_text())
    kept = [r["frame"] for r in records if r["file_name"] == "corrupt.mp4"]
    assert 0 < len(kept) < 12 and kept == list(range(len(kept)))  # the frames before the damage
    assert [r["frame"] for r in records if r["file_name"] == "good.avi"] == list(range(5))


def test_interruption_keeps_a_valid_results_file_and_video(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", frames_of(12))
    out, viz = tmp_path / "results.json", tmp_path / "viz"
    with pytest.raises(KeyboardInterrupt, match=r"the 4 detections on the 4 frame\(s\) done so far"):
        run_video_prediction(FakePredictor(stop_at=3), [path], out=out, viz_dir=viz, batch_size=2,
                             progress=False)
    assert [r["frame"] for r in json.loads(out.read_text())] == [0, 1, 2, 3]
    drawn, _, _ = read_back(viz / "clip.mp4")
    assert len(drawn) == 4  # the frames drawn before Ctrl-C, in a video that plays
    assert not list(tmp_path.rglob("*.tmp"))


def test_results_are_streamed_and_memory_does_not_grow_with_the_video(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_video(tmp_path / "long.mkv", frames_of(300))
    # PyAV's arrays live in FFmpeg's buffers, which tracemalloc does not see; numpy's own copies it does.
    to_rgb = VideoReader.to_rgb
    monkeypatch.setattr(VideoReader, "to_rgb", staticmethod(lambda frame: to_rgb(frame).copy()))
    out = tmp_path / "results.json"
    sizes: list[int] = []

    class Watching(FakePredictor):
        def run(self, images: Sequence[np.ndarray], *args: object) -> list[Detections]:
            sizes.append(sum(p.stat().st_size for p in tmp_path.glob(".results.json.*.tmp")))
            self.batches.clear()  # the fake keeps nothing either
            return super().run(images, *args)  # type: ignore[arg-type]

    tracemalloc.start()
    try:
        summary = run_video_prediction(Watching(), [path], out=out, batch_size=4, progress=False)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with open_video(path) as video:
            held = list(video.frames())  # the control: what holding the frames would cost
        _, holding = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.predicted == 300 and len(held) == 300
    assert holding > 2_500_000  # 300 frames of 9 KiB: tracemalloc sees decoded frames
    assert peak < holding / 3
    # Each batch's records are on disk before the next batch is predicted.
    assert len(sizes) == 75 and all(b > a for a, b in zip(sizes, sizes[1:], strict=False))
    assert len(json.loads(out.read_text())) == 300


def test_results_writer_is_valid_json_however_it_ends(tmp_path: Path) -> None:
    with ResultsWriter(tmp_path / "empty.json") as results:
        pass
    assert json.loads((tmp_path / "empty.json").read_text()) == [] and results.count == 0
    out = tmp_path / "sub" / "r.json"
    with pytest.raises(RuntimeError), ResultsWriter(out) as results:
        results.add([{"a": 1}, {"a": 2}])
        results.add([])
        with pytest.raises(ValueError):
            results.add([{"a": 3}, {"a": float("nan")}])  # not JSON: nothing of it written
        results.add([{"a": 4}])
        raise RuntimeError
    assert json.loads(out.read_text()) == [{"a": 1}, {"a": 2}, {"a": 4}] and results.count == 3
    assert not list(tmp_path.rglob("*.tmp"))


def test_annotated_video_paths_never_clash_nor_overwrite_an_input(tmp_path: Path) -> None:
    viz = tmp_path / "viz"
    assert annotated_video_paths(["a/x.mov", "y.mp4"], viz) == [viz / "a/x.mp4", viz / "y.mp4"]
    assert annotated_video_paths(["x.mov", "x.mkv"], viz) == [viz / "x.mov.mp4", viz / "x.mkv.mp4"]
    with pytest.raises(ValueError, match="x.mp4 and X.mp4"):
        annotated_video_paths(["x.mp4", "X.mp4"], viz)
    path = write_video(tmp_path / "clip.mp4", frames_of(2))
    with pytest.raises(ValueError, match="would overwrite it"):
        run_video_prediction(FakePredictor(), [path], out=tmp_path / "r.json", viz_dir=tmp_path)
    assert not (tmp_path / "r.json").exists()


def test_video_writer_refuses_a_frame_of_another_size(tmp_path: Path) -> None:
    writer = VideoWriter(tmp_path / "v.mp4", rate=25)
    writer.close()
    assert not (tmp_path / "v.mp4").exists()  # no frame, no file
    with pytest.raises(ValueError, match="frame 1 is 32x32"), VideoWriter(tmp_path / "v.mp4", rate=25) as w:
        w.write(np.zeros((48, 64, 3), np.uint8))
        w.write(np.zeros((32, 32, 3), np.uint8))
    assert len(read_back(tmp_path / "v.mp4")[0]) == 1
