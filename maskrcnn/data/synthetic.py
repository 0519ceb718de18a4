"""Synthetic instance-segmentation data: coloured shapes on cluttered backgrounds.

The demo, the tests and the benchmarks need a dataset that is small, free,
deterministic and still a real segmentation problem. Each image shows one to
a few shapes from :data:`CLASSES` (circle, triangle, square, star) drawn over
a cluttered background, written as PNG files plus a COCO ``instances`` JSON
that :mod:`pycocotools` reads.

What makes it a detection problem rather than a colour lookup:

- Every object draws its colour from the same distribution whatever its class,
  with a texture (solid, stripes, noise or gradient), a size of about 15-50 %
  of the image side, a random rotation and a mild random aspect ratio.
- Backgrounds are smooth two-colour gradients with soft blobs, pixel noise and
  a few lines and arcs that are not instances.
- Objects overlap; later objects hide earlier ones.

Ground truth is the *visible* mask. A shape drawn later occludes the ones
drawn before it, so instance ``i`` keeps ``full_i & ~(full_{i+1} | ... )``.
Instances left with less than ``min_visible_fraction`` of their in-image area
or fewer than ``min_visible_pixels`` pixels are not annotated (they stay in
the picture, as hidden objects do in real data). The box is the tight box of
the visible mask and the area is its pixel count.

Segmentation format (both are standard COCO and decode with ``annToMask``):

- a polygon ``[[x1, y1, x2, y2, ...]]`` for an unoccluded polygonal shape
  (triangle, square, star) that lies wholly inside the image;
- compressed RLE (``{"size": [H, W], "counts": str}``) of the visible mask
  otherwise: circles (curved outlines), and any occluded or border-truncated
  shape.

Masks are rasterised by pycocotools' own polygon rasteriser, not by PIL: the
two disagree on boundary pixels (PIL also fills the outline; tens of pixels
per shape at 128 x 128), and using the COCO one makes a polygon annotation
decode to exactly the pixels that were painted. Objects are painted through
their masks, so the image and the ground truth agree pixel for pixel.

Determinism: image ``i`` of a split depends only on ``(seed, split, i)``
(a numpy ``Generator`` seeded with those three), so it is the same whatever
``num_images`` is and on every platform numpy supports.

Shape shorthand: ``H, W`` image height and width, ``V`` polygon vertices.
"""

from __future__ import annotations

import json
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from tqdm import tqdm

CLASSES: tuple[str, ...] = ("circle", "triangle", "square", "star")
"""Class names; the COCO category id of ``CLASSES[k]`` is ``k + 1``."""

_CURVED: frozenset[str] = frozenset({"circle"})
"""Classes whose outline is curved: always annotated as RLE, never as a polygon."""

# Progress bars only for runs long enough to be worth watching.
_PROGRESS_THRESHOLD = 200

# Colours: an object's colour is redrawn (up to this many tries, keeping the
# most distinct) until its mean RGB differs from the canvas beneath it by at
# least this Euclidean distance, so that shapes are visible, not camouflaged.
_COLOUR_TRIES = 10
_COLOUR_MIN_DISTANCE = 90.0

# Polygon coordinates are written with this many decimals, and the masks are
# rasterised from the rounded coordinates, so the JSON decodes exactly.
_COORD_DECIMALS = 2

_TEXTURES: tuple[str, ...] = ("solid", "stripes", "noise", "gradient")


@dataclass(frozen=True)
class SyntheticObject:
    """One drawn shape, in drawing order (later objects are on top).

    ``polygon`` is ``(V, 2)`` XY in pixels (rounded as written to the JSON);
    ``full_mask`` is the shape's ``(H, W)`` bool mask inside the image before
    occlusion, ``visible_mask`` what is left after the objects drawn later.
    ``annotated`` says whether the object made it into the annotations.
    """

    category_id: int
    polygon: np.ndarray
    full_mask: np.ndarray
    visible_mask: np.ndarray
    annotated: bool

    @property
    def class_name(self) -> str:
        return CLASSES[self.category_id - 1]


@dataclass(frozen=True)
class SyntheticImage:
    """A rendered ``(H, W, 3)`` uint8 RGB image and its objects in drawing order."""

    image: np.ndarray
    objects: list[SyntheticObject]

    @property
    def annotated(self) -> list[SyntheticObject]:
        return [obj for obj in self.objects if obj.annotated]


# ------------------------------------------------------------------ geometry


def shape_polygon(
    class_name: str,
    *,
    center: tuple[float, float],
    radius: float,
    angle: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """The ``(V, 2)`` XY outline of one shape of outer radius ``radius`` (pixels).

    ``angle`` (radians) rotates the shape about ``center``; ``rng`` draws the
    per-instance variation (aspect ratio, vertex jitter, star depth).
    """
    if class_name == "circle":
        # An ellipse of mild aspect, as a polygon fine enough (about 2 px per
        # edge) that its rasterisation looks round.
        aspect = rng.uniform(0.8, 1.0)
        n = max(24, int(np.pi * radius))
        t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
        local = np.stack([radius * np.cos(t), aspect * radius * np.sin(t)], axis=1)
    elif class_name == "triangle":
        # Roughly equilateral: each corner moved by up to 12 degrees and 15 %
        # of the radius, so triangles vary but stay triangles.
        t = np.arange(3) * (2.0 * np.pi / 3.0) + rng.uniform(-0.2, 0.2, size=3)
        r = radius * rng.uniform(0.85, 1.0, size=3)
        local = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    elif class_name == "square":
        # A rectangle of aspect 0.75..1 whose half-diagonal is ``radius``.
        aspect = rng.uniform(0.75, 1.0)
        half_w = radius / np.sqrt(1.0 + aspect**2)
        half_h = aspect * half_w
        local = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    elif class_name == "star":
        # Five points; inner radius 38-55 % of the outer one.
        inner = radius * rng.uniform(0.38, 0.55)
        t = np.arange(10) * (np.pi / 5.0)
        r = np.where(np.arange(10) % 2 == 0, radius, inner)
        local = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    else:
        raise ValueError(f"unknown shape {class_name!r}; expected one of {CLASSES}")
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, sin], [-sin, cos]])  # row vectors: p @ R rotates by -angle
    return local @ rotation + np.asarray(center, dtype=np.float64)


def polygon_mask(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W)`` bool mask of a ``(V, 2)`` XY polygon, rasterised as pycocotools does."""
    rles = mask_utils.frPyObjects([polygon.reshape(-1).tolist()], height, width)
    with warnings.catch_warnings():
        # pycocotools' decode trips a NumPy 2 deprecation on every call; the
        # result is right, the message is noise.
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(rles[0]).astype(bool)


def visible_masks(full_masks: list[np.ndarray]) -> list[np.ndarray]:
    """Each mask minus every mask after it: what stays visible when drawn in order."""
    visible: list[np.ndarray] = [np.zeros((0, 0), dtype=bool)] * len(full_masks)
    cover: np.ndarray | None = None
    for i in range(len(full_masks) - 1, -1, -1):
        visible[i] = full_masks[i] if cover is None else full_masks[i] & ~cover
        cover = full_masks[i].copy() if cover is None else cover | full_masks[i]
    return visible


def keep_instance(
    full_mask: np.ndarray, visible_mask: np.ndarray, *, min_visible_fraction: float, min_visible_pixels: int
) -> bool:
    """Whether a partly hidden instance is still worth annotating (never when nothing is visible)."""
    full = int(full_mask.sum())
    seen = int(visible_mask.sum())
    return seen > 0 and seen >= min_visible_pixels and seen >= min_visible_fraction * full


# ------------------------------------------------------------------ painting


def _linear_ramp(height: int, width: int, angle: float) -> np.ndarray:
    """``(H, W)`` values in [0, 1] increasing along direction ``angle``."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = xx * np.cos(angle) + yy * np.sin(angle)
    ramp -= ramp.min()
    return ramp / max(float(ramp.max()), 1e-6)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """``(H, W, 3)`` float32 clutter: gradient, soft blobs, noise, lines and arcs."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    ramp = _linear_ramp(height, width, rng.uniform(0, 2 * np.pi))
    canvas = c0 + (c1 - c0) * ramp[..., None]

    # Soft blobs: Gaussian bumps of colour with no edge, so never mistaken
    # for a shape, but they break up the gradient.
    side = min(height, width)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        sigma = rng.uniform(0.05, 0.2) * side
        delta = rng.uniform(-70, 70, size=3).astype(np.float32)
        # Only within 3 sigma, where the bump is above 1 % of its peak.
        y0, y1 = max(int(cy - 3 * sigma), 0), min(int(cy + 3 * sigma) + 1, height)
        x0, x1 = max(int(cx - 3 * sigma), 0), min(int(cx + 3 * sigma) + 1, width)
        yy = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
        xx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
        bump = np.exp(-(yy**2 + xx**2) / (2 * sigma**2))
        canvas[y0:y1, x0:x1] += delta * bump[..., None]
    canvas += rng.uniform(2.0, 10.0) * rng.standard_normal(canvas.shape, dtype=np.float32)

    # Lines and arcs: sharp-edged clutter that is not an instance. Arcs are
    # at most 240 degrees so they never close into a circle.
    pil = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(rng.integers(1, 5)):
        x0, x1 = rng.uniform(-0.2, 1.2, size=2) * width
        y0, y1 = rng.uniform(-0.2, 1.2, size=2) * height
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 4)))
    for _ in range(rng.integers(0, 3)):
        r = rng.uniform(0.1, 0.3) * side
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        start = rng.uniform(0, 360)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.arc(
            [cx - r, cy - r, cx + r, cy + r],
            start=start,
            end=start + rng.uniform(60, 240),
            fill=colour,
            width=int(rng.integers(1, 3)),
        )
    return np.asarray(pil, dtype=np.float32).copy()


def _texture(rng: np.random.Generator, base: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(height, width, 3)`` float32 fill for the box of one object, around colour ``base``."""
    kind = _TEXTURES[rng.integers(len(_TEXTURES))]
    if kind == "solid":
        return np.broadcast_to(base, (height, width, 3))
    if kind == "noise":
        return base + rng.uniform(12.0, 30.0) * rng.standard_normal((height, width, 3), dtype=np.float32)
    # Stripes and gradients pair the base with a second colour near it: far
    # enough to see, close enough that the object reads as one thing.
    other = np.clip(base + rng.uniform(-90, 90, size=3), 0, 255).astype(np.float32)
    ramp = _linear_ramp(height, width, rng.uniform(0, 2 * np.pi))
    if kind == "stripes":
        period = rng.uniform(4.0, 10.0)
        diagonal = float(np.hypot(height, width))
        ramp = ((ramp * diagonal / period) % 1.0 < 0.5).astype(np.float32)
    return base + (other - base) * ramp[..., None]


def _pick_colour(rng: np.random.Generator, beneath: np.ndarray) -> np.ndarray:
    """A random colour far from ``beneath`` (mean RGB of the canvas under the object)."""
    best, best_distance = np.zeros(3, dtype=np.float32), -1.0
    for _ in range(_COLOUR_TRIES):
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        distance = float(np.linalg.norm(colour - beneath))
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= _COLOUR_MIN_DISTANCE:
            break
    return best


# ------------------------------------------------------------------ scenes


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    # crc32, not hash(): str hashes are salted per process.
    return np.random.default_rng([seed, zlib.crc32(split.encode("utf-8")), index])


def render_image(
    seed: int,
    index: int,
    *,
    image_size: tuple[int, int] = (128, 128),
    split: str = "train",
    min_objects: int = 1,
    max_objects: int = 4,
    size_range: tuple[float, float] = (0.15, 0.5),
    min_visible_fraction: float = 0.2,
    min_visible_pixels: int = 30,
) -> SyntheticImage:
    """Render image ``index`` of ``split`` for ``seed``, in memory (what :func:`generate` writes).

    ``size_range`` bounds an object's outer diameter as a fraction of the
    shorter image side. See :func:`generate` for the other arguments.
    """
    height, width = image_size
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    rng = _image_rng(seed, split, index)
    canvas = _background(rng, height, width)
    side = min(height, width)

    placed: list[tuple[int, np.ndarray, np.ndarray]] = []  # (category id, polygon, full mask)
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        category = int(rng.integers(len(CLASSES)))
        radius = 0.5 * side * rng.uniform(*size_range)
        # Centres anywhere at least half a radius inside the border, so some
        # shapes are cut by it. Placement ignores the other objects: about a
        # fifth of the objects end up partly occluded and about 1 % hidden
        # enough to be dropped (measured at the defaults).
        center = (rng.uniform(0.5 * radius, width - 0.5 * radius),
                  rng.uniform(0.5 * radius, height - 0.5 * radius))
        polygon = shape_polygon(
            CLASSES[category], center=center, radius=radius, angle=rng.uniform(0, 2 * np.pi), rng=rng
        ).round(_COORD_DECIMALS)
        mask = polygon_mask(polygon, height, width)
        if not mask.any():
            continue  # a shape of a pixel or two on a tiny image can miss every pixel centre
        colour = _pick_colour(rng, canvas[mask].mean(axis=0))
        # Texture only the object's box: (h, w) crop of the canvas.
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        crop, inside = canvas[box], mask[box]
        crop[inside] = _texture(rng, colour, *inside.shape)[inside]
        placed.append((category + 1, polygon, mask))

    # Sensor noise over everything; it changes no mask.
    canvas += rng.uniform(1.0, 4.0) * rng.standard_normal(canvas.shape, dtype=np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    full = [p[2] for p in placed]
    objects = [
        SyntheticObject(
            category_id=category_id,
            polygon=polygon,
            full_mask=mask,
            visible_mask=seen,
            annotated=keep_instance(
                mask, seen, min_visible_fraction=min_visible_fraction, min_visible_pixels=min_visible_pixels
            ),
        )
        for (category_id, polygon, mask), seen in zip(placed, visible_masks(full), strict=True)
    ]
    return SyntheticImage(image=image, objects=objects)


def coco_segmentation(obj: SyntheticObject) -> list[list[float]] | dict[str, Any]:
    """The COCO ``segmentation`` of an object: its polygon when that is exact, else RLE."""
    height, width = obj.visible_mask.shape
    polygon = obj.polygon
    inside = bool(
        (polygon[:, 0] >= 0).all() and (polygon[:, 0] <= width).all()
        and (polygon[:, 1] >= 0).all() and (polygon[:, 1] <= height).all()
    )
    exact = inside and obj.class_name not in _CURVED and np.array_equal(obj.visible_mask, obj.full_mask)
    if exact:
        return [[float(v) for v in polygon.reshape(-1)]]
    rle = mask_utils.encode(np.asfortranarray(obj.visible_mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def tight_box(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, w, h]`` of the pixels set in a non-empty ``(H, W)`` mask (pixel edges)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return [float(xs[0]), float(ys[0]), float(xs[-1] - xs[0] + 1), float(ys[-1] - ys[0] + 1)]


def generate(
    out_dir: Path,
    *,
    num_images: int,
    image_size: tuple[int, int] = (128, 128),
    seed: int,
    split: str = "train",
    min_objects: int = 1,
    max_objects: int = 4,
    size_range: tuple[float, float] = (0.15, 0.5),
    min_visible_fraction: float = 0.2,
    min_visible_pixels: int = 30,
    progress: bool | None = None,
) -> Path:
    """Write ``num_images`` images to ``out_dir/<split>/NNNNN.png`` and ``out_dir/<split>.json``.

    ``image_size`` is ``(H, W)``. Each image holds ``min_objects`` to
    ``max_objects`` shapes (both inclusive) before hidden ones are dropped, so
    an image can end up with fewer annotations, never with none drawn.
    ``progress`` shows a bar; by default only for more than 200 images.
    Returns the JSON path. Image ids are ``1..num_images`` in file order;
    ``file_name`` is relative to ``out_dir/<split>``.
    """
    out_dir = Path(out_dir)
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    height, width = image_size
    if progress is None:
        progress = num_images > _PROGRESS_THRESHOLD

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in tqdm(range(num_images), desc=f"synthetic {split}", disable=not progress, unit="img"):
        scene = render_image(
            seed, index, image_size=image_size, split=split, min_objects=min_objects,
            max_objects=max_objects, size_range=size_range,
            min_visible_fraction=min_visible_fraction, min_visible_pixels=min_visible_pixels,
        )
        file_name = f"{index:05d}.png"
        # compress_level=1: noisy pictures barely compress anyway, and the
        # default level would triple the time spent here.
        Image.fromarray(scene.image).save(image_dir / file_name, compress_level=1)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj in scene.annotated:
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": obj.category_id,
                "bbox": tight_box(obj.visible_mask),
                "area": float(obj.visible_mask.sum()),
                "iscrowd": 0,
                "segmentation": coco_segmentation(obj),
            })

    dataset = {
        "info": {
            "description": "maskrcnn synthetic shapes",
            "generator": {
                "seed": seed, "split": split, "num_images": num_images, "image_size": [height, width],
                "min_objects": min_objects, "max_objects": max_objects, "size_range": list(size_range),
                "min_visible_fraction": min_visible_fraction, "min_visible_pixels": min_visible_pixels,
            },
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(CLASSES)
        ],
    }
    json_path = out_dir / f"{split}.json"
    json_path.write_text(json.dumps(dataset))
    return json_path


def make_demo_dataset(
    root: Path, *, train_images: int, val_images: int, image_size: tuple[int, int] = (128, 128), seed: int = 0
) -> tuple[Path, Path, Path, Path]:
    """Write a train and a held-out val split under ``root``; returns ``(train_json, train_dir,
    val_json, val_dir)``.

    The two splits use different seeds (drawn from ``seed``), so no val
    image repeats a train image even apart from the split name.
    """
    root = Path(root)
    train_seed, val_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    train_json = generate(
        root, num_images=train_images, image_size=image_size, seed=train_seed, split="train"
    )
    val_json = generate(root, num_images=val_images, image_size=image_size, seed=val_seed, split="val")
    return train_json, root / "train", val_json, root / "val"
