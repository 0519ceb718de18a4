"""Drawing detections on an image for people to look at.

:func:`draw_detections` paints, for each detection, a translucent mask with a
darker contour, the box outline, keypoints joined by a skeleton, and a label
``"name 0.93"`` on a filled tag above the box. Mask, outline, keypoints and
tag share one colour per detection, taken in turn from :data:`PALETTE`, so
neighbouring instances of the same class are told apart. Sizes (font, line
width, dot radius) scale with the image so a label is legible on a phone
photo and does not swamp a thumbnail.

Detections are drawn from the lowest score to the highest, so the most
confident one ends up on top where they overlap; labels are drawn after all
masks, boxes and keypoints so no outline crosses a label.

Shape shorthand: ``D`` detections, ``H, W`` image size, ``P`` keypoints.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..structures import MaskCrops
from .results import to_numpy

Color = tuple[int, int, int]

# Saturated hues far apart from each other first; the pale and dark variants
# come only after 10 detections. Cycled when there are more detections.
PALETTE: tuple[Color, ...] = (
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (0, 130, 200),  # blue
    (255, 200, 20),  # yellow
    (145, 30, 180),  # purple
    (70, 220, 230),  # cyan
    (245, 130, 48),  # orange
    (240, 50, 230),  # magenta
    (170, 220, 50),  # lime
    (0, 128, 128),  # teal
    (250, 170, 190),  # pink
    (150, 90, 40),  # brown
    (120, 120, 255),  # periwinkle
    (128, 0, 0),  # maroon
    (170, 255, 195),  # mint
    (128, 128, 0),  # olive
    (0, 0, 128),  # navy
    (255, 215, 180),  # apricot
)

MASK_ALPHA = 0.5
"""Opacity of the mask colour over the image."""

CONTOUR_DARKEN = 0.6
"""The mask contour is the detection colour times this factor."""

# Sizes relative to the geometric mean of the image sides: 14 px text and
# 2 px lines on a 640x480 image, 36 px and 4 px on 1920x1080.
_FONT_SIZE_PER_PIXEL = 0.025
_MIN_FONT_SIZE = 10
_LINE_WIDTH_DIVISOR = 320
# Label text is black on a background brighter than this (ITU-R BT.601
# luma, 0..255), white otherwise.
_LIGHT_BACKGROUND_LUMA = 150


def picture_paths(file_names: Sequence[str], directory: str | os.PathLike[str]) -> list[Path]:
    """Where ``--viz`` writes the picture of each image: no two images share one.

    An image's picture is ``directory / file_name`` with the extension
    replaced by ``.png`` (``a/x.jpg`` -> ``a/x.png``, subfolders kept). Images
    whose names differ only by their extension (``x.jpg`` and ``x.png``) keep
    it instead (``x.jpg.png`` and ``x.png.png``). Names that still clash,
    also when compared case-insensitively (as macOS and Windows file systems
    do), raise ``ValueError`` naming both images: a picture is never
    overwritten by another image's.
    """
    directory = Path(directory)
    stems = [Path(name).with_suffix(".png").as_posix().casefold() for name in file_names]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    relative = [
        Path(name).with_suffix(".png") if counts[stem] == 1 else Path(name + ".png")
        for name, stem in zip(file_names, stems, strict=True)
    ]
    owner: dict[str, str] = {}
    for name, rel in zip(file_names, relative, strict=True):
        key = rel.as_posix().casefold()
        if key in owner:
            raise ValueError(
                f"the pictures of {owner[key]} and {name} would both be {directory / rel}; "
                "rename one of the images or predict them separately"
            )
        owner[key] = name
    return [directory / rel for rel in relative]


def color_for(index: int) -> Color:
    """The palette colour of the ``index``-th drawn detection (cycled)."""
    return PALETTE[index % len(PALETTE)]


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray | torch.Tensor,
    labels: Sequence[str],
    scores: np.ndarray | torch.Tensor | None,
    masks: MaskCrops | np.ndarray | torch.Tensor | None = None,
    keypoints: np.ndarray | torch.Tensor | None = None,
    skeleton: Sequence[tuple[int, int]] | None = None,
    score_threshold: float = 0.0,
) -> Image.Image:
    """Draw detections on a copy of ``image`` and return it as an RGB PIL image.

    ``image (H, W, 3)`` uint8 RGB (not modified); ``boxes (D, 4)`` XYXY
    pixels; ``labels`` ``D`` class names; ``scores (D,)`` (None for ground
    truth: labels without scores, colours in the given order); ``masks (D, H, W)``
    full-image masks (bool, or probabilities thresholded at 0.5);
    ``keypoints (D, P, 3)`` as ``(x, y, score)``, all drawn whatever their
    score except those with a NaN coordinate; ``skeleton`` pairs of keypoint indices (0-based) to join with
    lines. Detections with ``score < score_threshold`` are left out; the
    colours go to the remaining ones in descending score order, so the best
    detection is always red. With nothing to draw the result equals the input.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got shape {image.shape} dtype {image.dtype}")
    height, width = image.shape[:2]
    boxes_np = to_numpy(boxes).astype(np.float64).reshape(-1, 4)
    count = boxes_np.shape[0]
    scores_np = np.zeros(count) if scores is None else to_numpy(scores).astype(np.float64).reshape(-1)
    if scores_np.shape[0] != count or len(labels) != count:
        raise ValueError(
            f"inconsistent counts: {count} boxes, {scores_np.shape[0]} scores, {len(labels)} labels"
        )
    if isinstance(masks, MaskCrops):
        if masks.shape != (count, height, width):
            raise ValueError(f"expected masks of shape {(count, height, width)}, got {masks.shape}")
        windows = masks.windows.tolist()
        placed = [(y0, x0, crop.detach().cpu().numpy().astype(bool))
                  for (x0, y0, _, _), crop in zip(windows, masks.crops, strict=True)]
    elif masks is not None:
        masks_np = to_numpy(masks)
        if masks_np.shape != (count, height, width):
            raise ValueError(f"expected masks of shape {(count, height, width)}, got {masks_np.shape}")
        masks_np = masks_np if masks_np.dtype == bool else masks_np > 0.5
        placed = [(0, 0, m) for m in masks_np]
    keypoints_np = None if keypoints is None else to_numpy(keypoints).astype(np.float64)
    if keypoints_np is not None and (
        keypoints_np.ndim != 3 or keypoints_np.shape[0] != count or keypoints_np.shape[2] != 3
    ):
        raise ValueError(f"expected keypoints of shape ({count}, P, 3), got {keypoints_np.shape}")

    # Best first for colour assignment; drawn in reverse so the best is on top.
    kept = [int(i) for i in np.argsort(-scores_np, kind="stable") if scores_np[i] >= score_threshold]
    colors = {i: color_for(rank) for rank, i in enumerate(kept)}
    draw_order = kept[::-1]

    scale = math.sqrt(height * width)
    line_width = max(1, round(scale / _LINE_WIDTH_DIVISOR))

    canvas = image.copy()
    if masks is not None:
        for i in draw_order:
            y0, x0, mask = placed[i]
            _blend_mask(canvas, y0, x0, mask, colors[i], contour_width=line_width)
    result = Image.fromarray(canvas, "RGB")
    if not kept:
        return result

    draw = ImageDraw.Draw(result)
    for i in draw_order:
        x0, y0, x1, y1 = boxes_np[i].tolist()
        draw.rectangle([x0, y0, x1, y1], outline=colors[i], width=line_width)
        if keypoints_np is not None:
            _draw_keypoints(draw, keypoints_np[i], skeleton or (), colors[i], line_width)

    font = _font(max(_MIN_FONT_SIZE, round(_FONT_SIZE_PER_PIXEL * scale)))
    for i in draw_order:
        text = labels[i] if scores is None else f"{labels[i]} {scores_np[i]:.2f}"
        _draw_label(draw, text, boxes_np[i], colors[i], font, (height, width))
    return result


def _blend_mask(canvas: np.ndarray, y0: int, x0: int, mask: np.ndarray, color: Color, *,
                contour_width: int) -> None:
    """Blend ``color`` into ``canvas`` (in place) where ``mask`` (placed at row ``y0``, column ``x0``)
    is set, and outline it."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return
    cols = np.flatnonzero(mask.any(axis=0))
    # Work on the mask's bounding box only: most masks cover a small part of the image.
    inside = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    region = canvas[y0 + rows[0] : y0 + rows[-1] + 1, x0 + cols[0] : x0 + cols[-1] + 1]
    tint = np.asarray(color, dtype=np.float32)
    blended = region[inside].astype(np.float32) * (1 - MASK_ALPHA) + tint * MASK_ALPHA
    region[inside] = np.rint(blended).astype(np.uint8)
    contour = inside & ~_erode(inside, contour_width)
    region[contour] = np.rint(tint * CONTOUR_DARKEN).astype(np.uint8)


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion by a 3x3 cross, ``steps`` times; outside the array counts as background."""
    eroded = mask
    for _ in range(steps):
        padded = np.pad(eroded, 1, constant_values=False)
        eroded = (
            padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        )
    return eroded


def _draw_keypoints(
    draw: ImageDraw.ImageDraw,
    points: np.ndarray,
    skeleton: Sequence[tuple[int, int]],
    color: Color,
    line_width: int,
) -> None:
    """Skeleton lines in the detection colour, then white dots ringed in that colour on top.

    White centres stay visible on the mask, which has the same hue as the lines.
    """
    drawn = np.isfinite(points[:, :2]).all(axis=1)  # NaN: a keypoint not labelled (ground truth)
    for a, b in skeleton:
        if a < len(points) and b < len(points) and drawn[a] and drawn[b]:
            draw.line([tuple(points[a, :2]), tuple(points[b, :2])], fill=color, width=line_width)
    radius = 2 * line_width + 1
    for x, y, _ in points[drawn].tolist():
        draw.ellipse(
            [x - radius, y - radius, x + radius, y + radius],
            fill=(255, 255, 255),
            outline=color,
            width=line_width,
        )


def _draw_label(
    draw: ImageDraw.ImageDraw,
    text: str,
    box: np.ndarray,
    color: Color,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    image_size: tuple[int, int],
) -> None:
    """A filled tag with ``text`` just above the box, or just inside it at the top of the image."""
    height, width = image_size
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, (bottom - top) // 4)
    tag_w, tag_h = right - left + 2 * pad, bottom - top + 2 * pad
    x0, y0 = float(box[0]), float(box[1])
    y = y0 - tag_h if y0 - tag_h >= 0 else y0
    y = min(max(y, 0.0), max(height - tag_h, 0))
    x = min(max(x0, 0.0), max(width - tag_w, 0))
    draw.rectangle([x, y, x + tag_w - 1, y + tag_h - 1], fill=color)
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luma > _LIGHT_BACKGROUND_LUMA else (255, 255, 255)
    # textbbox's (left, top) offset is where the glyphs start relative to the anchor.
    draw.text((x + pad - left, y + pad - top), text, fill=ink, font=font)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` pixels, or its fixed bitmap font where sizing is unsupported."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()
