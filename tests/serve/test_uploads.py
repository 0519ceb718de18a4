"""An upload's bytes decode to the array ``maskrcnn predict`` reads from the same file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("python_multipart", reason="the serve extra is missing: pip install 'maskrcnn[serve]'")

from maskrcnn.data.images import load_image  # noqa: E402
from maskrcnn.serve.uploads import UploadError, base_name, decode_image  # noqa: E402


def _images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rgba = Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (20, 30), dtype=np.uint8)]), "RGBA")
    deep = Image.fromarray(rng.integers(0, 65536, (20, 30), dtype=np.uint16))  # 16-bit grey
    return {"rgb.png": Image.fromarray(rgb), "rgba.png": rgba, "grey16.png": deep,
            "palette.gif": Image.fromarray(rgb).convert("P"), "bits.bmp": Image.fromarray(rgb).convert("1"),
            "rgb.tif": Image.fromarray(rgb), "cmyk.jpg": Image.fromarray(rgb).convert("CMYK")}


@pytest.mark.parametrize("name", sorted(_images()))
def test_an_upload_decodes_as_the_file_loads(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    image = _images()[name]
    exif = image.getexif()
    exif[0x0112] = 8  # rotated: load_image turns it, and so must the upload
    oriented = name.endswith((".jpg", ".png", ".tif"))  # the formats that carry EXIF here
    if oriented:
        image.save(path, exif=exif.tobytes())
    else:
        image.save(path)
    expected = load_image(path)
    assert expected.shape[:2] == ((30, 20) if oriented else (20, 30))
    decoded = decode_image(path.read_bytes(), max_pixels=10**6)
    assert decoded.dtype == np.uint8 and decoded.shape == expected.shape
    assert np.array_equal(decoded, expected)


def test_the_pixel_limit_is_checked_on_the_header() -> None:
    buffer = io.BytesIO()
    Image.new("L", (200, 100)).save(buffer, "PNG")
    assert decode_image(buffer.getvalue(), max_pixels=20_000).shape == (100, 200, 3)
    with pytest.raises(UploadError, match=r"200x100 = 20,000 pixels is over the limit of 19,999") as error:
        decode_image(buffer.getvalue(), max_pixels=19_999)
    assert error.value.status == 413


@pytest.mark.parametrize(("sent", "kept"), [
    ("photo.jpg", "photo.jpg"), ("../../etc/passwd", "passwd"), ("C:\\Users\\me\\a b.png", "a b.png"),
    ("dir/", "upload"), ("..", "upload"), ("", "upload"), (None, "upload"), ("a\x00b\n.png", "ab.png"),
])
def test_only_the_base_name_is_kept(sent: str | None, kept: str) -> None:
    assert base_name(sent) == kept
