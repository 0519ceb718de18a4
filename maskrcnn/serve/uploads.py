"""Reading an upload: the ``multipart/form-data`` body in memory, then its image.

:func:`read_form` streams the request body through python-multipart's parser
and keeps every part in memory: nothing is written to disk (Starlette's own
form parser spools files over 1 MB to a temporary file), and the size limit
holds while the body arrives, not after it has all been read.

:func:`decode_image` turns the image bytes into the ``(H, W, 3)`` uint8 RGB
array that ``maskrcnn predict`` makes of the same file (``data.images.load_image``:
the same conversion rules and EXIF orientation), after checking the pixel
count that the header declares, so that a decompression bomb (a small file
whose header says billions of pixels) is refused before any pixel is decoded.

Every problem is an :class:`UploadError`: an HTTP status and a one-line message.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from collections.abc import AsyncIterator

import numpy as np
from PIL import Image, ImageOps
from python_multipart.multipart import MultipartParser, parse_options_header

# load_image reads paths only; these are the steps it takes after opening the file,
# shared so that an upload and the same file on disk give the same array.
from ..data.images import _declared_bit_depth, _pil_to_rgb

IMAGE_FIELD = "image"
"""The multipart field that holds the image."""

# What the form may hold besides the image: its boundaries, part headers and the
# small text fields (score_threshold). The body may exceed the image limit by this much.
FORM_OVERHEAD_BYTES = 64 * 1024
# A text field longer than this is not a number anyone meant to send.
MAX_FIELD_BYTES = 1024
# Parts per form: the image and a few fields; more is not a form this server reads.
MAX_PARTS = 16
# The file name echoed in results is cut to this many characters (a file system's name limit).
MAX_NAME_CHARS = 255
DEFAULT_FILE_NAME = "upload"


class UploadError(Exception):
    """A request the server refuses: ``status`` (4xx) and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass
class Form:
    """A parsed form: the image's bytes and base name (None when absent), and the text fields."""

    image: bytes | None = None
    file_name: str | None = None
    fields: dict[str, str] = dataclasses.field(default_factory=dict)


def megabytes(count: int) -> str:
    """``count`` bytes as MiB for messages: ``"20 MB"``, ``"0.5 MB"``."""
    return f"{count / 2**20:g} MB"


def base_name(file_name: str | None) -> str:
    """The last component of an uploaded file's name (``/`` or ``\\`` separated), never a path.

    ``"../../etc/passwd"`` -> ``"passwd"``; an empty name, ``"."`` or ``".."`` -> ``"upload"``.
    """
    name = (file_name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    name = "".join(ch for ch in name if ch.isprintable())
    if name in ("", ".", ".."):
        return DEFAULT_FILE_NAME
    return name[:MAX_NAME_CHARS]


async def read_form(
    content_type: str | None, content_length: str | None, body: AsyncIterator[bytes], *, max_image_bytes: int
) -> Form:
    """Parse a ``multipart/form-data`` body (the chunks of ``body``) in memory.

    Refuses with :class:`UploadError`: another content type (400), a body
    longer than ``max_image_bytes`` plus :data:`FORM_OVERHEAD_BYTES` (413, from
    ``Content-Length`` before reading when it is given), an image part over
    ``max_image_bytes`` (413), a malformed body, two images, too many parts
    or an oversized text field (400).
    """
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadError(400, f"send the image as multipart/form-data in the field {IMAGE_FIELD!r} "
                               f"(e.g. curl -F {IMAGE_FIELD}=@photo.jpg URL/predict); got "
                               f"{content_type or 'no content type'}")
    max_body = max_image_bytes + FORM_OVERHEAD_BYTES
    too_big = UploadError(413, f"upload over the limit of {megabytes(max_image_bytes)} (--max-upload-mb)")
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise UploadError(400, f"bad Content-Length header: {content_length!r}") from None
        if declared > max_body:
            raise too_big

    form = Form()
    state = _PartState()

    def on_part_begin() -> None:
        state.reset()
        state.parts += 1
        if state.parts > MAX_PARTS:
            raise UploadError(400, f"the form has more than {MAX_PARTS} parts; send the image and its fields")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_name += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.header_value += data[start:end]

    def on_header_end() -> None:
        if bytes(state.header_name).lower() == b"content-disposition":
            state.disposition = bytes(state.header_value)
        state.header_name, state.header_value = bytearray(), bytearray()

    def on_headers_finished() -> None:
        _, params = parse_options_header(state.disposition)
        state.name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        state.filename = None if filename is None else filename.decode("utf-8", "replace")
        if state.name == IMAGE_FIELD and form.image is not None:
            raise UploadError(400, f"the form has two {IMAGE_FIELD!r} fields; send one image per request")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state.data += data[start:end]
        if state.name == IMAGE_FIELD:
            if len(state.data) > max_image_bytes:
                raise too_big
        elif len(state.data) > MAX_FIELD_BYTES:
            raise UploadError(400, f"form field {state.name!r} is over {MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        if state.name == IMAGE_FIELD:
            form.image = bytes(state.data)
            form.file_name = base_name(state.filename)
        elif state.name:
            form.fields[state.name] = state.data.decode("utf-8", "replace")

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
    })
    received = 0
    try:
        async for chunk in body:
            received += len(chunk)
            if received > max_body:
                raise too_big
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # python-multipart's MultipartParseError and friends: a malformed body
        raise UploadError(400, f"malformed multipart body: {exc}") from exc
    return form


@dataclasses.dataclass
class _PartState:
    """What :func:`read_form`'s callbacks know about the part being parsed."""

    parts: int = 0
    header_name: bytearray = dataclasses.field(default_factory=bytearray)
    header_value: bytearray = dataclasses.field(default_factory=bytearray)
    disposition: bytes = b""
    name: str = ""
    filename: str | None = None
    data: bytearray = dataclasses.field(default_factory=bytearray)

    def reset(self) -> None:
        self.header_name, self.header_value, self.data = bytearray(), bytearray(), bytearray()
        self.disposition, self.name, self.filename = b"", "", None


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 RGB array of an image file's bytes, as ``load_image`` reads the file.

    The header's pixel count is checked against ``max_pixels`` before any
    pixel is decoded (413). PIL's own decompression-bomb guard
    (``Image.MAX_IMAGE_PIXELS``: a warning above it, an error above twice it)
    is a 413 as well. Empty, not an image, truncated or corrupt: 400.

    Not thread-safe: it swaps the process's warning filters to turn PIL's
    warning into an error, so call it from one thread at a time.
    """
    if not data:
        raise UploadError(400, f"empty upload (0 bytes) in the field {IMAGE_FIELD!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.UnidentifiedImageError:
            raise UploadError(400, f"not an image PIL can read ({len(data)} bytes)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb(exc) from exc
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... on a bad header
            raise UploadError(400, f"cannot open the image: {exc}") from exc
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise UploadError(413, f"image of {width}x{height} = {width * height:,} pixels is over the "
                                       f"limit of {max_pixels:,} (--max-pixels)")
            try:
                # As load_image: decode every pixel now (a truncated file fails here), then orient.
                image.load()
                bits = _declared_bit_depth(image)
                image = ImageOps.exif_transpose(image)
            except MemoryError:
                raise
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise _bomb(exc) from exc
            except Exception as exc:
                raise UploadError(400, f"corrupt or truncated image data: {exc}") from exc
            try:
                return _pil_to_rgb(image, declared_bits=bits)
            except ValueError as exc:
                raise UploadError(400, str(exc)) from exc


def _bomb(error: Exception) -> UploadError:
    return UploadError(413, f"refused as too large by PIL's decompression-bomb guard: {error}")
