"""Reading images from disk and normalising in-memory images to one format.

Everything the detector consumes from a user is turned into the same thing: a
``(H, W, 3)`` ``uint8`` RGB numpy array, a fresh array that never aliases the
caller's data.

- :func:`list_images` expands the command line's files and directories, and
  :func:`collect_images` names each image uniquely for results.
- :func:`load_image` reads one file. It decodes the whole image up front, so a
  truncated or corrupt file fails here with an :class:`ImageReadError` that
  names the file, rather than deep inside a batch. It applies the EXIF
  orientation, so a phone photo comes out the way it is displayed.
- :func:`read_image_size` reads only a file's header: the size :func:`load_image`
  would return (EXIF orientation applied), for checking a dataset's sizes
  without decoding its images.
- :func:`to_rgb_array` accepts what the Python API accepts: a PIL image, a
  numpy array or a torch tensor.

Conversion rules (the same for files and in-memory images):

- Alpha (RGBA, LA, palette transparency) is dropped, not composited: the colour
  channels are kept as they are.
- Integer images deeper than 8 bits are scaled by their bit depth, not clipped:
  a 16-bit value ``v`` becomes ``round(v / 257)``, so 65535 -> 255 and
  ``257 * k -> k``. For 32-bit ``I`` images the depth comes from the TIFF
  ``BitsPerSample`` tag when there is one, else 16 bits when every value fits
  in 16 bits, else 31 (the positive range of int32); negatives become 0.
- Float (``F``) PIL images are taken to be on the 0..255 scale and clipped.
  Float numpy arrays and torch tensors are taken to be on the 0..1 scale.
- Multi-frame files (GIF, TIFF) give their first frame.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
)
"""Lower-case suffixes (with the dot) that :func:`list_images` picks out of a directory."""

# Float arrays may overshoot [0, 1] a little after resampling (bicubic
# ringing); that much is clipped. Anything further out is a different
# convention (0..255 floats, mean/std-normalised input) and is refused.
_FLOAT_RANGE_SLACK = 0.05

_TIFF_BITS_PER_SAMPLE = 258
_EXIF_ORIENTATION = 0x0112
# EXIF orientations 5..8 rotate by 90 degrees (with or without a mirror): height and width swap.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


class ImageReadError(Exception):
    """A file could not be read as an image; ``str(error)`` is ``"PATH: what is wrong"``."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


def list_images(inputs: Sequence[str | Path], *, also: Collection[str] = ()) -> list[Path]:
    """Expand files and directories into a list of image paths.

    Paths keep the order they are given in. A directory expands, in place, to
    the image files directly inside it (not recursively), chosen by suffix
    (:data:`IMAGE_EXTENSIONS`, case-insensitive), sorted by file name
    (plain string order: ``b10.jpg`` before ``b2.jpg``); ``also``: more
    suffixes to take from a directory (``predict`` adds the video ones). Hidden files (names
    starting with ``.``, such as macOS ``._IMG.jpg`` sidecars) are skipped in a
    directory. A file named explicitly is kept whatever its suffix; whether it
    is an image is :func:`load_image`'s business. Duplicates are kept.

    Raises ``FileNotFoundError`` naming the first path that does not exist.
    """
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(
                sorted(
                    child
                    for child in path.iterdir()
                    if (child.suffix.lower() in IMAGE_EXTENSIONS or child.suffix.lower() in also)
                    and not child.name.startswith(".")
                    and child.is_file()
                )
            )
        elif path.exists():
            paths.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")
    return paths


def collect_images(inputs: Sequence[str | Path], *, also: Collection[str] = ()) -> list[tuple[Path, str]]:
    """``(path, file_name)`` of every image of the command line's files and folders.

    Images come in the order of :func:`list_images`. ``file_name`` is the
    image's path relative to the common folder of the inputs (a folder
    argument counts as itself, a file as the folder holding it), with ``/``
    separators: ``predict photos/`` and ``predict photos/a.jpg`` both name
    ``a.jpg``, and ``predict a/ b/`` names ``a/x.png`` and ``b/x.png``. Two
    different files therefore never share a name. The same file reached
    twice (``photos/ photos/a.jpg``) raises ``ValueError`` naming it; a
    missing path raises ``FileNotFoundError``. An empty list is returned
    when no input holds an image; saying so is the caller's business.
    """
    paths = list_images(inputs, also=also)
    if not paths:
        return []
    # os.path.abspath, not Path.resolve: a symlinked file keeps its own name.
    roots = [os.path.abspath(item) if Path(item).is_dir() else os.path.dirname(os.path.abspath(item))
             for item in inputs]
    root = os.path.commonpath(roots)
    items: list[tuple[Path, str]] = []
    seen: dict[str, Path] = {}
    for path in paths:
        name = Path(os.path.relpath(os.path.abspath(path), root)).as_posix()
        if name in seen:
            raise ValueError(f"{path}: given twice (also as {seen[name]}); name each image once")
        seen[name] = path
        items.append((path, name))
    return items


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as a ``(H, W, 3)`` ``uint8`` RGB array.

    The image is fully decoded, rotated/flipped by its EXIF orientation tag,
    and converted to RGB by the rules in the module docstring. Any failure to
    read it (missing, empty, not an image, truncated, corrupt) raises
    :class:`ImageReadError` carrying the path.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot access file: {exc}") from exc
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")

    try:
        image = Image.open(path)
    except Image.UnidentifiedImageError:
        raise ImageReadError(path, f"not an image PIL can read ({size} bytes)") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"refused as too large: {exc}") from exc
    except OSError as exc:
        raise ImageReadError(path, f"cannot open: {exc}") from exc

    with image:
        try:
            # Image.open only reads the header; load() decodes every pixel, so
            # truncated or corrupt data fails now. PIL's decoders raise a mix
            # of OSError, SyntaxError, ValueError, EOFError, zlib.error and
            # struct.error, hence the broad catch around the PIL calls only.
            image.load()
            bits = _declared_bit_depth(image)
            image = ImageOps.exif_transpose(image)
        except MemoryError:
            raise
        except Exception as exc:
            raise ImageReadError(path, f"corrupt or truncated image data: {exc}") from exc
        try:
            return _pil_to_rgb(image, declared_bits=bits)
        except ValueError as exc:
            raise ImageReadError(path, str(exc)) from exc


def read_image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image as :func:`load_image` returns it, from the header only.

    The EXIF orientation is applied (5..8 swap the sides). Raises ``OSError``
    (PIL's ``UnidentifiedImageError`` included) when the header cannot be read.
    """
    with Image.open(path) as image:
        width, height = image.size
        try:
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # a broken EXIF block; load_image would ignore it as well
            orientation = 1
    if orientation in _TRANSPOSING_ORIENTATIONS:
        return width, height
    return height, width


def to_rgb_array(image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    """Convert an in-memory image to a new ``(H, W, 3)`` ``uint8`` RGB array.

    Accepted inputs:

    - a PIL image of any mode (rules in the module docstring). Its EXIF
      orientation is *not* applied: the result has the pixels as stored, which
      is what ``numpy.asarray(image)`` shows. Use :func:`load_image` for files.
    - a numpy array, channels last: ``(H, W)`` grey, ``(H, W, 1)``,
      ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA (alpha dropped);
    - a torch tensor, channels first: ``(H, W)``, ``(1, H, W)``,
      ``(3, H, W)`` or ``(4, H, W)``, on any device.

    Array and tensor dtypes: ``uint8`` as is; ``uint16`` scaled by ``1/257``;
    floating point taken to be in **[0, 1]** and scaled by 255 (values within
    0.05 of the range are clipped, NaN becomes 0). Anything else (other
    shapes, a batch, other dtypes, floats clearly outside [0, 1]) raises
    ``ValueError`` quoting the shape or dtype.
    """
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, declared_bits=None)
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4):
            tensor = tensor.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
        elif tensor.ndim != 2:
            raise ValueError(
                f"expected an image tensor of shape (H, W) or (C, H, W) with C in 1, 3, 4; "
                f"got shape {tuple(tensor.shape)} (tensors are channels-first, one image at a time)"
            )
        if tensor.is_floating_point():
            tensor = tensor.float()  # float16/bfloat16 have no (or no exact) numpy twin
        return _array_to_rgb(tensor.numpy())
    if isinstance(image, np.ndarray):
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
            raise ValueError(
                f"expected an image array of shape (H, W) or (H, W, C) with C in 1, 3, 4; "
                f"got shape {image.shape} (numpy arrays are channels-last, one image at a time)"
            )
        return _array_to_rgb(image)
    raise TypeError(f"expected a PIL image, numpy array or torch tensor; got {type(image).__name__}")


def _declared_bit_depth(image: Image.Image) -> int | None:
    """Bits per sample a TIFF declares (for 32-bit ``I`` images), else None."""
    tags = getattr(image, "tag_v2", None)
    if tags is None or _TIFF_BITS_PER_SAMPLE not in tags:
        return None
    bits = tags[_TIFF_BITS_PER_SAMPLE]
    if isinstance(bits, tuple):
        bits = bits[0]
    return int(bits)


def _pil_to_rgb(image: Image.Image, *, declared_bits: int | None) -> np.ndarray:
    """Convert a decoded PIL image of any mode to ``(H, W, 3)`` uint8."""
    mode = image.mode
    if mode.startswith("I;16"):
        # I;16, I;16L, I;16B, I;16N: one 16-bit sample per pixel.
        return _grey_to_rgb(_scale_integers(np.asarray(image), bits=16))
    if mode == "I":
        values = np.asarray(image)
        if declared_bits is not None and 8 < declared_bits <= 32:
            bits = min(declared_bits, 31)
        elif values.size == 0 or (values.min() >= 0 and values.max() <= 0xFFFF):
            bits = 16
        else:
            bits = 31
        return _grey_to_rgb(_scale_integers(values, bits=bits))
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        return _grey_to_rgb(np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8))
    if mode != "RGB":
        # PIL's own conversions: L, 1, P (palette looked up; transparency
        # ignored), LA/RGBA/RGBa/PA (alpha dropped), CMYK, YCbCr, LAB, HSV.
        try:
            image = image.convert("RGB")
        except ValueError as exc:
            raise ValueError(f"cannot convert image mode {mode} to RGB: {exc}") from exc
    return np.array(image, dtype=np.uint8)  # np.array copies: the result owns its memory


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    """Convert an ``(H, W)`` or ``(H, W, C)`` array (C in 1, 3, 4) to ``(H, W, 3)`` uint8."""
    if array.dtype == np.uint8:
        values = array
    elif array.dtype == np.uint16:
        values = _scale_integers(array, bits=16)
    elif np.issubdtype(array.dtype, np.floating):
        values = _scale_unit_floats(array)
    else:
        raise ValueError(
            f"unsupported image dtype {array.dtype} (shape {array.shape}); "
            f"expected uint8, uint16 or floating point in [0, 1]"
        )
    if values.ndim == 2:
        return _grey_to_rgb(values)
    if values.shape[2] == 1:
        return _grey_to_rgb(values[:, :, 0])
    return values[:, :, :3].copy()  # drops alpha; copy() is C-contiguous and owns its memory


def _scale_integers(values: np.ndarray, *, bits: int) -> np.ndarray:
    """Map integers on ``0 .. 2**bits - 1`` linearly onto ``0 .. 255``, rounding; negatives -> 0."""
    # For 16 bits the divisor is exactly 257, so 257 * k maps to exactly k.
    divisor = (2**bits - 1) / 255
    scaled = np.rint(np.clip(values.astype(np.float64), 0, None) / divisor)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _scale_unit_floats(values: np.ndarray) -> np.ndarray:
    """Map floats on [0, 1] to ``uint8`` 0..255; refuse values clearly on another scale."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0)
    if values.size and (values.min() < -_FLOAT_RANGE_SLACK or values.max() > 1 + _FLOAT_RANGE_SLACK):
        raise ValueError(
            f"float image values must be in [0, 1]; got range [{values.min():g}, {values.max():g}] "
            f"(shape {values.shape}); pass uint8 for 0..255 data"
        )
    return np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """``(H, W)`` -> ``(H, W, 3)`` by repeating the channel (a new array)."""
    return np.repeat(grey[:, :, None], 3, axis=2)
