"""Prediction on videos: frames decoded with PyAV, predicted in batches, results and pictures streamed.

A video is read one frame at a time (:class:`VideoReader`, opened by
:func:`open_video`), so memory follows a batch of frames, never the length of
the video. Conventions:

- Frames are numbered from 0 in decoding (= presentation) order; a frame's
  ``time`` is its presentation time in seconds from the first frame of the
  stream (``index / rate`` when the file gives no timestamp).
- A frame is an ``(H, W, 3)`` uint8 RGB array, the same kind of array
  ``Predictor.predict_arrays`` takes for an image, so detections are in the
  frame's pixels (boxes XYXY, as everywhere in the package).
- Rotation metadata (the display matrix phones write into portrait videos)
  is applied when it is a multiple of 90 degrees: frames come out the way a
  player shows them, ``H`` and ``W`` swapped for 90 and 270. Mirroring flags
  in the matrix and other angles are ignored.
- ``every=N`` predicts frames ``0, N, 2N, ...``; the frames in between are
  decoded (codecs need them) but not converted unless a picture is drawn.

:func:`predict_video` yields one :class:`VideoFrame` per predicted frame.
:func:`run_video_prediction` is what ``maskrcnn predict VIDEO...`` runs: it
writes one COCO result record per detection, with ``"frame"`` added, through a
:class:`ResultsWriter` (a JSON array written as it grows and closed into a
valid file whatever stops the run), and with ``viz_dir`` an annotated copy of
each video (:class:`VideoWriter`) that keeps every frame and the frame rate:
a frame between two predicted ones is drawn with the detections of the
latest predicted frame before it.

A video that cannot be read raises :class:`VideoReadError` (``"PATH: what is
wrong"``); :func:`run_video_prediction` reports it on one line and goes on
with the other videos.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..data.images import ImageReadError
from ..structures import Detections

if TYPE_CHECKING:
    import av

    from .predict import BasePredictor

VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm"})
"""Lower-case suffixes (with the dot) of the files that ``predict`` treats as videos."""

DEFAULT_RATE = Fraction(30)
"""Frames per second assumed for an annotated video when the input states no usable rate."""

# Bits per pixel per frame for the MPEG-4 Part 2 fallback encoder, whose own default
# (200 kbit/s whatever the size) smears the labels: 0.15 gives 9 Mbit/s at 1080p30.
_MPEG4_BITS_PER_PIXEL = 0.15
# MPEG-4 Part 2 refuses time bases with a denominator above 16 bits.
_MPEG4_MAX_RATE_DENOMINATOR = 65535


class VideoReadError(ImageReadError):
    """A file could not be read as a video; ``str(error)`` is ``"PATH: what is wrong"``.

    A subclass of ``ImageReadError``, so code that reports unreadable inputs
    (the CLI, ``predict_files``' callers) reports it the same way.
    """


def is_video(path: str | os.PathLike[str]) -> bool:
    """Whether ``path``'s suffix is one of :data:`VIDEO_EXTENSIONS` (any case); the file is not read."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


# --------------------------------------------------------------------------- reading


class VideoReader:
    """An open video file: its first video stream, decoded frame by frame. Build one with :func:`open_video`.

    ``frame_count`` (``None`` when the file does not say; containers such as
    Matroska often do not) and ``rate`` (frames per second, ``None`` when
    unknown) come from the file's headers. ``decoded`` counts the frames
    decoded so far. Close it (or use it as a context manager) to free the
    decoder.
    """

    def __init__(self, path: Path, container: av.container.InputContainer, stream: av.VideoStream) -> None:
        self.path = path
        self._container = container
        self._stream = stream
        self.frame_count: int | None = stream.frames or None
        self.rate: Fraction | None = _usable_rate(stream.average_rate, stream.guessed_rate, stream.base_rate)
        self.decoded = 0
        self._started = False

    def frames(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """``(index, time in seconds, (H, W, 3) uint8 RGB image)`` of every frame, in order.

        Raises :class:`VideoReadError` where the data is corrupt (after
        yielding the frames before it) or when no frame at all can be decoded.
        A video can be read once.
        """
        for index, time, frame in self.decode():
            yield index, time, self.to_rgb(frame)

    def decode(self) -> Iterator[tuple[int, float, av.VideoFrame]]:
        """Like :meth:`frames`, with PyAV's frames, not yet converted (see :meth:`to_rgb`)."""
        import av

        if self._started:
            raise RuntimeError(f"{self.path}: a VideoReader reads its video once; open it again")
        self._started = True
        stream = self._stream
        start = stream.start_time or 0  # in the stream's time base, as the frames' pts
        frames = self._container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.FFmpegError as error:
                where = f"after frame {self.decoded - 1}; the frames before it were read" if self.decoded \
                    else "in the first frame"
                raise VideoReadError(self.path, f"corrupt video data {where} ({_reason(error)})") from error
            index = self.decoded
            self.decoded += 1
            time_base = _fraction(frame.time_base)
            if frame.pts is not None and time_base:
                time = float((frame.pts - start) * time_base)
            else:
                time = index / float(self.rate or DEFAULT_RATE)
            yield index, time, frame
        if self.decoded == 0:
            raise VideoReadError(self.path, "no frame could be decoded (truncated or empty video stream)")

    @staticmethod
    def to_rgb(frame: av.VideoFrame) -> np.ndarray:
        """A decoded frame as an ``(H, W, 3)`` uint8 RGB array, turned as its rotation metadata says."""
        image = frame.to_ndarray(format="rgb24")
        # frame.rotation: the display matrix's counter-clockwise angle in degrees, in [-180, 180];
        # np.rot90 turns counter-clockwise for positive k.
        quarter_turns, rest = divmod(float(frame.rotation), 90.0)
        if rest > 45.0:
            quarter_turns, rest = quarter_turns + 1, rest - 90.0
        if abs(rest) < 1.0 and int(quarter_turns) % 4:
            image = np.ascontiguousarray(np.rot90(image, k=int(quarter_turns) % 4))
        return image

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_video(path: str | os.PathLike[str]) -> VideoReader:
    """Open a video file for reading; :class:`VideoReadError` when it cannot be read as a video.

    Any container and codec the PyAV wheel's FFmpeg reads is accepted,
    whatever the file's suffix. Only the header is read here: corrupt frame
    data shows up while decoding.
    """
    import av

    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise VideoReadError(path, "no such file") from None
    except OSError as exc:
        raise VideoReadError(path, f"cannot access file: {exc}") from exc
    if path.is_dir():
        raise VideoReadError(path, "is a directory, not a video file")
    if size == 0:
        raise VideoReadError(path, "empty file (0 bytes)")
    try:
        container = av.open(str(path), mode="r")
    except av.FFmpegError as error:
        raise VideoReadError(path, f"not a video FFmpeg can read ({size} bytes; {_reason(error)})") from None
    except OSError as error:
        raise VideoReadError(path, f"cannot open: {error}") from error
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise VideoReadError(path, f"holds no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        container.close()
        raise VideoReadError(path, "its video codec is not one this FFmpeg build decodes")
    stream.thread_type = "AUTO"  # frame and slice threads: decoding keeps up with larger videos
    return VideoReader(path, container, stream)


def _usable_rate(*candidates: Any) -> Fraction | None:
    """The first positive rate among ``candidates`` (PyAV's rates: Fractions, None when unknown)."""
    for candidate in candidates:
        rate = _fraction(candidate)
        if rate is not None and rate > 0:
            return rate
    return None


def _fraction(value: Any) -> Fraction | None:
    """A PyAV rational as a Fraction; None for None or an unset (0/1) one.

    PyAV 18 gives Fractions or None; PyAV 19 gives its own rational type, 0/1 when unset.
    """
    if not value:
        return None
    return Fraction(value.numerator, value.denominator)


def _reason(error: BaseException) -> str:
    """FFmpeg's own words for an error, without PyAV's errno and file name decorations."""
    return getattr(error, "strerror", None) or str(error)


# --------------------------------------------------------------------------- predicting


@dataclasses.dataclass(frozen=True)
class VideoFrame:
    """One frame of a video and its detections (see the module docstring for the conventions)."""

    index: int  # 0-based, in the video's order
    time: float  # seconds from the first frame
    image: np.ndarray  # (H, W, 3) uint8 RGB, the pixels the detections are in
    detections: Detections


def predict_video(
    predictor: BasePredictor,
    path: str | os.PathLike[str],
    *,
    every: int = 1,
    batch_size: int = 1,
    score_threshold: float | None = None,
) -> Iterator[VideoFrame]:
    """Detections of frames ``0, every, 2 * every, ...`` of a video, one :class:`VideoFrame` each, in order.

    Frames go through ``predictor.predict_arrays`` ``batch_size`` at a time;
    ``score_threshold`` is as there. The file is opened at once
    (:class:`VideoReadError` if it cannot be); corrupt data met while decoding
    raises :class:`VideoReadError` after the frames before it are yielded.
    At most one batch of frames is held.
    """
    _check_steps(every, batch_size)
    video = open_video(path)

    def frames() -> Iterator[VideoFrame]:
        with video:
            for frame, _ in _predict_frames(predictor, video, every=every, batch_size=batch_size,
                                            score_threshold=score_threshold, between=False):
                yield frame

    return frames()


def _predict_frames(
    predictor: BasePredictor,
    video: VideoReader,
    *,
    every: int,
    batch_size: int,
    score_threshold: float | None,
    between: bool,
) -> Iterator[tuple[VideoFrame, bool]]:
    """``(frame, predicted)`` for the predicted frames, and with ``between`` for every frame.

    A frame between two predicted ones carries the detections of the latest
    predicted frame before it. Frames wait from the first frame of a batch
    until the batch is predicted: at most ``batch_size`` frames, or
    ``(batch_size - 1) * every + 1`` with ``between``.
    """
    pending: list[tuple[int, float, np.ndarray]] = []  # starts with a frame to predict
    wanted = 0  # frames to predict in pending
    latest: Detections | None = None

    def run_pending() -> Iterator[tuple[VideoFrame, bool]]:
        nonlocal latest, wanted
        arrays = [image for index, _, image in pending if index % every == 0]
        found = iter(predictor.predict_arrays(arrays, score_threshold=score_threshold) if arrays else [])
        for index, time, image in pending:
            predicted = index % every == 0
            if predicted:
                latest = next(found)
            assert latest is not None  # frame 0 is predicted, and comes first
            yield VideoFrame(index, time, image, latest), predicted
        pending.clear()
        wanted = 0

    for index, time, frame in video.decode():
        predicted = index % every == 0
        if not (predicted or between):
            continue  # not converted: decoding alone is the cost of a skipped frame
        image = video.to_rgb(frame)
        if not predicted and not pending:  # its detections are known already
            assert latest is not None
            yield VideoFrame(index, time, image, latest), False
            continue
        pending.append((index, time, image))
        wanted += predicted
        if wanted == batch_size:
            yield from run_pending()
    yield from run_pending()


def _check_steps(every: int, batch_size: int) -> None:
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


# --------------------------------------------------------------------------- writing


class VideoWriter:
    """Writes RGB frames to an MP4 file at a constant frame rate.

    H.264 (libx264, its default quality: CRF 23, preset medium) where the
    PyAV wheel has it, else MPEG-4 Part 2. Both store yuv420p, whose chroma
    is subsampled 2x2, so the sides must be even: a frame with an odd side
    gets its last row or column repeated once (the file is one pixel larger
    than the frames). Frame ``i`` is shown at ``i / rate`` seconds, so the
    file has the frames written and lasts ``frames / rate`` seconds.

    The file is opened at the first frame (its size sets the video's; every
    frame must have it), written under a temporary name and renamed to
    ``path`` by :meth:`close`, which also finishes a video cut short (an
    exception, Ctrl-C) so that what was written plays. With no frame written
    no file is made.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, rate: Fraction | float, codec: str | None = None
    ) -> None:
        self.path = Path(path)
        self.rate = Fraction(rate).limit_denominator(1_000_000)
        if self.rate <= 0:
            raise ValueError(f"{self.path}: frame rate must be positive, got {rate}")
        self.codec = codec or default_codec()
        self.frames = 0
        self._size: tuple[int, int] | None = None  # (H, W) of the frames given
        self._container: av.container.OutputContainer | None = None
        self._stream: av.VideoStream | None = None
        self._tmp: Path | None = None

    def write(self, image: np.ndarray | Image.Image) -> None:
        """Append one ``(H, W, 3)`` uint8 RGB frame (an array or a PIL image)."""
        import av

        array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"{self.path}: expected an (H, W, 3) uint8 frame, got shape {array.shape} "
                             f"dtype {array.dtype}")
        if self._size is None:
            self._open(array.shape[0], array.shape[1])
        elif array.shape[:2] != self._size:
            raise ValueError(f"{self.path}: frame {self.frames} is {array.shape[1]}x{array.shape[0]}, "
                             f"the video is {self._size[1]}x{self._size[0]}")
        assert self._container is not None and self._stream is not None
        height, width = array.shape[:2]
        if height % 2 or width % 2:
            array = np.pad(array, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
        frame.pts = self.frames  # in units of 1 / rate: one tick per frame
        frame.time_base = self._stream.codec_context.time_base
        for packet in self._stream.encode(frame):  # converted to the stream's yuv420p here
            self._container.mux(packet)
        self.frames += 1

    def _open(self, height: int, width: int) -> None:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A name of our own beside the target, as files.write_atomically names its temporaries.
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        rate = self.rate
        if self.codec == "mpeg4":
            rate = rate.limit_denominator(_MPEG4_MAX_RATE_DENOMINATOR)
        container = av.open(str(self._tmp), mode="w", format="mp4")
        try:
            stream = container.add_stream(self.codec, rate=rate)
            stream.width, stream.height = width + width % 2, height + height % 2
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = 1 / rate
            if self.codec == "mpeg4":
                stream.bit_rate = int(_MPEG4_BITS_PER_PIXEL * stream.width * stream.height * rate)
        except BaseException:
            container.close()
            self._tmp.unlink(missing_ok=True)
            raise
        self._container, self._stream, self._size = container, stream, (height, width)

    def close(self) -> None:
        """Flush the encoder, finish the file and move it to ``path``. Safe to call twice."""
        container, stream, tmp = self._container, self._stream, self._tmp
        if container is None or stream is None or tmp is None:
            return
        self._container = self._stream = None
        try:
            try:
                for packet in stream.encode():  # frames the encoder still holds (B-frame lookahead)
                    container.mux(packet)
            finally:
                container.close()
        except BaseException:
            tmp.unlink(missing_ok=True)  # an unfinished file plays nowhere
            raise
        os.replace(tmp, self.path)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.cache
def default_codec() -> str:
    """``libx264`` when this PyAV build can encode H.264 with it, else ``mpeg4``."""
    import av

    try:
        av.Codec("libx264", "w")
    except Exception:  # av.codec.codec.UnknownCodecError: a build without libx264
        return "mpeg4"
    return "libx264"


class ResultsWriter:
    """A JSON array of result records, streamed to disk as they come; valid JSON once closed.

    Records go to a temporary file beside ``path`` (named as
    ``files.write_atomically`` names its temporaries, so
    ``files.remove_stale_temporaries`` clears one a killed process left),
    one record per line, flushed at each :meth:`add`. :meth:`close` ends the
    array and renames the file to ``path``; used as a context manager it
    closes however the block ends (Ctrl-C and errors included), so ``path``
    then holds every record added before. ``count`` is the number of records
    added. A record that is not JSON (NaN, infinity) raises ``ValueError``
    from :meth:`add` and nothing of that call is written.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.count = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        self._file: TextIO | None = open(self._tmp, "w", encoding="utf-8")  # closed by close()
        self._file.write("[")

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        """Append ``records`` to the array (and to the file, flushed)."""
        if self._file is None:
            raise ValueError(f"{self.path}: results already closed")
        lines = [json.dumps(record, allow_nan=False) for record in records]  # all or none
        if not lines:
            return
        self._file.write(("\n" if self.count == 0 else ",\n") + ",\n".join(lines))
        self._file.flush()
        self.count += len(lines)

    def close(self) -> None:
        """End the array, write it to disk and rename it to ``path``. Safe to call twice."""
        handle, self._file = self._file, None
        if handle is None:
            return
        try:
            handle.write("\n]\n" if self.count else "]\n")
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            handle.close()
            self._tmp.unlink(missing_ok=True)
            raise
        handle.close()
        os.replace(self._tmp, self.path)

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- the predict command


@dataclasses.dataclass
class VideoSummary:
    """What :func:`run_video_prediction` did."""

    videos: int = 0  # videos read to their end
    frames: int = 0  # frames decoded, over all videos
    predicted: int = 0  # frames predicted
    detections: int = 0  # result records written
    failed: list[str] = dataclasses.field(default_factory=list)  # names of videos not read to their end

    @property
    def failures(self) -> int:
        return len(self.failed)


def annotated_video_paths(file_names: Sequence[str], directory: str | os.PathLike[str]) -> list[Path]:
    """Where ``--viz`` writes the annotated copy of each video: no two videos share one.

    ``directory / file_name`` with the suffix replaced by ``.mp4`` (``a/x.mov`` ->
    ``a/x.mp4``); videos whose names differ only by their suffix (``x.mov`` and
    ``x.mkv``) keep it (``x.mov.mp4``, ``x.mkv.mp4``). Names that still clash,
    also case-insensitively, raise ``ValueError`` naming both videos.
    """
    directory = Path(directory)
    stems = [Path(name).with_suffix(".mp4").as_posix().casefold() for name in file_names]
    relative = [Path(name).with_suffix(".mp4") if stems.count(stem) == 1 else Path(name + ".mp4")
                for name, stem in zip(file_names, stems, strict=True)]
    owner: dict[str, str] = {}
    for name, rel in zip(file_names, relative, strict=True):
        key = rel.as_posix().casefold()
        if key in owner:
            raise ValueError(f"the annotated videos of {owner[key]} and {name} would both be "
                             f"{directory / rel}; rename one of the videos or predict them separately")
        owner[key] = name
    return [directory / rel for rel in relative]


def run_video_prediction(
    predictor: BasePredictor,
    videos: Sequence[Path | tuple[Path, str]],
    *,
    out: str | os.PathLike[str] | ResultsWriter,
    viz_dir: str | os.PathLike[str] | None = None,
    every: int = 1,
    batch_size: int = 1,
    score_threshold: float | None = None,
    skeleton: Sequence[tuple[int, int]] | None = None,
    progress: bool = True,
) -> VideoSummary:
    """Predict videos one after the other, streaming result records and annotated videos.

    ``videos``: paths, or ``(path, file_name)`` pairs naming each video in the
    results (a bare path is named by its file name). Each detection of a
    predicted frame becomes ``predictor.coco_results(detections, file_name)``'s
    record with ``"frame"`` (the frame's index) added after ``file_name``.
    ``out`` is a results file (a :class:`ResultsWriter` is opened on it and
    closed at the end, also when interrupted) or an open ``ResultsWriter``
    (added to, left open: images and videos can share one). With ``viz_dir``,
    each video's annotated copy goes to :func:`annotated_video_paths`, every
    frame drawn (``draw_detections``, ``skeleton`` defaulting to the model's)
    with the detections of the latest predicted frame, at the input's frame
    rate (:data:`DEFAULT_RATE` when it has none).

    A video that cannot be read, or whose data turns out corrupt, is reported
    on stderr in one line and counted in ``failed`` (the records and frames
    before the corrupt data are kept); the others go on. Ctrl-C finishes the
    results and the annotated video cut short, then propagates; when this
    function owns the results file the KeyboardInterrupt says what is in it.
    ``progress``: a bar on stderr per video counting frames, with frames per second.
    Raises ``ValueError`` before anything is read for a bad ``every`` or
    ``batch_size``, clashing annotated videos, or one that would overwrite its input.
    """
    _check_steps(every, batch_size)
    items = [(Path(v), Path(v).name) if not isinstance(v, tuple) else (Path(v[0]), v[1]) for v in videos]
    pictures: list[Path | None] = [None] * len(items)
    if viz_dir is not None:
        pictures = list(annotated_video_paths([name for _, name in items], viz_dir))
        for (path, _), picture in zip(items, pictures, strict=True):
            assert picture is not None
            if os.path.abspath(picture) == os.path.abspath(path) or (
                    picture.exists() and path.exists() and os.path.samefile(picture, path)):
                raise ValueError(f"{path}: its annotated video would overwrite it; "
                                 "choose another folder for the annotated videos")
    if skeleton is None:
        head = getattr(predictor.config, "keypoint_head", None)
        skeleton = head.skeleton if head is not None else ()

    results = out if isinstance(out, ResultsWriter) else ResultsWriter(out)
    summary = VideoSummary()
    try:
        for (path, name), picture in zip(items, pictures, strict=True):
            _run_one(predictor, path, name, picture, results, summary, every=every, batch_size=batch_size,
                     score_threshold=score_threshold, skeleton=skeleton, progress=progress)
    except KeyboardInterrupt as interrupt:
        if results is out:
            raise
        results.close()
        raise type(interrupt)(f"interrupted; the {results.count} detections on the {summary.predicted} "
                              f"frame(s) done so far are in {results.path}") from interrupt
    finally:
        if results is not out:
            results.close()
    return summary


def _run_one(
    predictor: BasePredictor,
    path: Path,
    name: str,
    picture: Path | None,
    results: ResultsWriter,
    summary: VideoSummary,
    *,
    every: int,
    batch_size: int,
    score_threshold: float | None,
    skeleton: Sequence[tuple[int, int]],
    progress: bool,
) -> None:
    """One video of :func:`run_video_prediction`; ``summary`` is updated as frames are done."""
    from .visualize import draw_detections

    try:
        video = open_video(path)
    except VideoReadError as error:
        tqdm.write(f"skipped {error}", file=sys.stderr)
        summary.failed.append(name)
        return
    bar = tqdm(total=video.frame_count, unit="frame", desc=name, disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    writer = VideoWriter(picture, rate=video.rate or DEFAULT_RATE) if picture is not None else None
    counted = summary.frames  # frames of the earlier videos
    try:
        frames = _predict_frames(predictor, video, every=every, batch_size=batch_size,
                                 score_threshold=score_threshold, between=writer is not None)
        for frame, predicted in frames:
            det = frame.detections
            if predicted:
                records = predictor.coco_results(det, name)
                results.add({"file_name": r["file_name"], "frame": frame.index, **r} for r in records)
                summary.predicted += 1
                summary.detections += len(records)
            if writer is not None:
                writer.write(draw_detections(frame.image, det.boxes, det.names, det.scores, det.masks,
                                             det.keypoints, skeleton))
            bar.update(frame.index + 1 - bar.n)
        summary.videos += 1
    except VideoReadError as error:
        tqdm.write(f"stopped {error}", file=sys.stderr)
        summary.failed.append(name)
    finally:
        summary.frames = counted + video.decoded
        bar.update(video.decoded - bar.n)
        bar.close()
        video.close()
        if writer is not None:
            writer.close()
