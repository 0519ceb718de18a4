"""Tests for maskrcnn.data.images: listing, loading and converting images."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.data.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    collect_images,
    list_images,
    load_image,
    to_rgb_array,
)

EXIF_ORIENTATION = 0x0112


def _noise_png_bytes(side: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- list_images


def test_list_images_expands_directory_sorted_and_filtered(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ["b.png", "a.JPG", "d.jpeg", "c.txt", ".hidden.png", "e.webp"]:
        (folder / name).write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "sub" / "inner.png").write_bytes(b"x")
    (folder / "dir.png").mkdir()  # a directory with an image-like name is not a file
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"x")

    listed = list_images([notes, str(folder)])

    assert listed == [notes] + [folder / n for n in ["a.JPG", "b.png", "d.jpeg", "e.webp"]]


def test_list_images_keeps_given_order_and_duplicates(tmp_path: Path) -> None:
    first, second = tmp_path / "z.png", tmp_path / "a.png"
    first.write_bytes(b"x")
    second.write_bytes(b"x")
    assert list_images([first, second, first]) == [first, second, first]


def test_collect_images_names_relative_to_the_common_folder(tmp_path: Path) -> None:
    for name in ("a/x.png", "b/x.png", "b/y.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    named = collect_images([tmp_path / "b" / "y.jpg", tmp_path / "a", tmp_path / "b" / "x.png"])
    assert [name for _, name in named] == ["b/y.jpg", "a/x.png", "b/x.png"]
    # One folder, or files of one folder: names inside it, the same either way.
    assert [name for _, name in collect_images([tmp_path / "b"])] == ["x.png", "y.jpg"]
    assert [name for _, name in collect_images([tmp_path / "b" / "y.jpg"])] == ["y.jpg"]
    with pytest.raises(ValueError, match="y.jpg: given twice"):
        collect_images([tmp_path / "b", f"{tmp_path}/a/../b/y.jpg"])
    assert collect_images([tmp_path]) == []  # only subfolders: no images


def test_list_images_missing_path_raises_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        list_images([missing])


def test_image_extensions_are_lowercase_with_dot() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"} == set(
        IMAGE_EXTENSIONS
    )


# ------------------------------------------------------------ unreadable files


def test_random_bytes_named_jpg_is_an_image_read_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError, match="not an image PIL can read") as info:
        load_image(path)
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: ")


def test_truncated_png_fails_at_load_time(tmp_path: Path) -> None:
    data = _noise_png_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated") as info:
        load_image(path)
    assert info.value.path == path


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty file \(0 bytes\)"):
        load_image(path)


def test_missing_file_and_directory_are_image_read_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="is a directory"):
        load_image(tmp_path)


# ------------------------------------------------------------ readable files


def test_one_pixel_image_loads(tmp_path: Path) -> None:
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (12, 34, 56)).save(path)
    loaded = load_image(path)
    assert loaded.shape == (1, 1, 3)
    assert loaded.dtype == np.uint8
    assert loaded[0, 0].tolist() == [12, 34, 56]


def test_rgba_drops_alpha_keeping_colour(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    pixels = np.array([[[200, 100, 50, 0], [10, 20, 30, 128]]], dtype=np.uint8)
    Image.fromarray(pixels, "RGBA").save(path)
    assert load_image(path).tolist() == [[[200, 100, 50], [10, 20, 30]]]


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    values = np.array([[0, 257 * 100, 65535, 128]], dtype=np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"  # the case under test
    loaded = load_image(path)
    assert loaded.shape == (1, 4, 3)
    # 128 / 257 = 0.498 rounds to 0; clipping instead of scaling would give 128.
    assert loaded[0, :, 0].tolist() == [0, 100, 255, 0]
    assert (loaded == loaded[:, :, :1]).all()


def test_32_bit_integer_tiff_uses_declared_depth(tmp_path: Path) -> None:
    path = tmp_path / "deep.tif"
    values = np.array([[0, 2**31 - 1, 2**30]], dtype=np.int32)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I"
    assert load_image(path)[0, :, 0].tolist() == [0, 255, 128]


def test_float_tiff_is_clipped_to_0_255(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[-5.0, 99.6, 300.0]], dtype=np.float32)).save(path)
    assert Image.open(path).mode == "F"
    assert load_image(path)[0, :, 1].tolist() == [0, 100, 255]


def test_grayscale_is_repeated_over_channels(tmp_path: Path) -> None:
    path = tmp_path / "grey.png"
    Image.fromarray(np.array([[0, 77], [200, 255]], dtype=np.uint8), "L").save(path)
    loaded = load_image(path)
    assert loaded.shape == (2, 2, 3)
    assert loaded[:, :, 2].tolist() == [[0, 77], [200, 255]]
    assert (loaded == loaded[:, :, :1]).all()


@pytest.mark.parametrize("transparency", [None, 1])
def test_palette_is_looked_up(tmp_path: Path, transparency: int | None) -> None:
    path = tmp_path / "palette.png"
    image = Image.fromarray(np.array([[0, 1], [1, 2]], dtype=np.uint8), "P")
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    if transparency is None:
        image.save(path)
    else:
        image.save(path, transparency=transparency)
    loaded = load_image(path)
    assert loaded.tolist() == [[[255, 0, 0], [0, 255, 0]], [[0, 255, 0], [0, 0, 255]]]


def test_cmyk_jpeg_converts_to_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)  # pure red in CMYK
    loaded = load_image(path)
    assert loaded.shape == (8, 8, 3)
    assert np.abs(loaded.astype(int) - [255, 0, 0]).max() <= 8


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 40 wide x 20 high with a red block in the top-left corner.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)

    loaded = load_image(path)

    assert loaded.shape == (40, 20, 3)
    # Clockwise rotation takes the top-left corner to the top-right corner.
    top_right = loaded[1:6, 13:18].astype(int)
    assert (top_right[..., 0] > 200).all() and (top_right[..., 1:] < 50).all()
    for corner in (loaded[1:6, 1:6], loaded[34:39, 1:6], loaded[34:39, 13:18]):
        assert corner.max() < 50


# ----------------------------------------------------------------- to_rgb_array


def test_to_rgb_array_pil_modes() -> None:
    assert to_rgb_array(Image.new("L", (3, 2), 9)).tolist() == [[[9, 9, 9]] * 3] * 2
    assert to_rgb_array(Image.new("RGBA", (1, 1), (1, 2, 3, 4))).tolist() == [[[1, 2, 3]]]
    assert to_rgb_array(Image.new("1", (1, 1), 1)).tolist() == [[[255, 255, 255]]]


def test_to_rgb_array_numpy_layouts() -> None:
    grey = np.array([[0, 10], [20, 30]], dtype=np.uint8)
    expected = np.repeat(grey[:, :, None], 3, axis=2)
    assert np.array_equal(to_rgb_array(grey), expected)
    assert np.array_equal(to_rgb_array(grey[:, :, None]), expected)
    rgba = np.concatenate([expected, np.full((2, 2, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(to_rgb_array(rgba), expected)


def test_to_rgb_array_numpy_dtypes() -> None:
    assert to_rgb_array(np.array([[65535, 257 * 3]], dtype=np.uint16))[0, :, 0].tolist() == [255, 3]
    assert to_rgb_array(np.array([[0.0, 0.5, 1.0, 1.02, np.nan]]))[0, :, 0].tolist() == [0, 128, 255, 255, 0]


def test_to_rgb_array_returns_a_new_array() -> None:
    source = np.zeros((2, 2, 3), dtype=np.uint8)
    result = to_rgb_array(source)
    result[0, 0, 0] = 99
    assert source[0, 0, 0] == 0


def test_to_rgb_array_tensors_are_channels_first() -> None:
    chw = torch.zeros(3, 2, 4)
    chw[0, 1, 3] = 1.0  # red at row 1, column 3
    result = to_rgb_array(chw)
    assert result.shape == (2, 4, 3)
    assert result[1, 3].tolist() == [255, 0, 0]
    assert result.sum() == 255
    as_uint8 = torch.tensor([[[5, 6]], [[7, 8]], [[9, 10]]], dtype=torch.uint8)  # (3, 1, 2)
    assert to_rgb_array(as_uint8).tolist() == [[[5, 7, 9], [6, 8, 10]]]
    assert to_rgb_array(torch.full((1, 2, 2), 0.5, dtype=torch.bfloat16)).tolist() == [[[128] * 3] * 2] * 2


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 5, 2), np.uint8),
        np.zeros((3, 4, 5), np.uint8),  # channels-first numpy
        np.zeros((1, 4, 5, 3), np.uint8),  # a batch
        torch.zeros(6, 5, 3),  # channels-last tensor
        torch.zeros(1, 3, 4, 5),
    ],
)
def test_to_rgb_array_rejects_other_shapes_quoting_them(bad: np.ndarray | torch.Tensor) -> None:
    with pytest.raises(ValueError, match=re.escape(str(tuple(bad.shape)))):
        to_rgb_array(bad)


def test_to_rgb_array_rejects_0_255_floats_and_other_dtypes() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_rgb_array(np.full((2, 2, 3), 200.0))
    with pytest.raises(ValueError, match="int64"):
        to_rgb_array(np.zeros((2, 2, 3), dtype=np.int64))
    with pytest.raises(TypeError):
        to_rgb_array([[0, 1]])  # type: ignore[arg-type]
