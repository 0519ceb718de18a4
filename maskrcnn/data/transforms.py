"""Test-time input transform: resize, normalise, pad into an ``ImageBatch``.

Two resize rules reproduce the two peers exactly:

- ``"torchvision"``: pixels to floats in [0, 1], normalised, then bilinearly
  interpolated (``align_corners=False``); the scale is
  ``min(min_size / short, max_size / long)`` in float64 and each side becomes
  ``int(side * scale)`` (truncated), as ``F.interpolate(scale_factor=...,
  recompute_scale_factor=True)`` computes it.
- ``"detectron2"``: the short side goes to ``min_size`` (the long one capped
  at ``max_size``), sides rounded half up, the uint8 image resized by PIL's
  bilinear filter; then normalised.

Shapes: images ``(H, W, 3)`` uint8 RGB -> ``tensor (N, 3, H', W')`` float32,
``H'``, ``W'`` multiples of ``size_divisibility``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from ..config import InputConfig
from ..structures import ImageBatch


def resized_size(
    height: int, width: int, cfg: InputConfig, *, min_size: int | None = None
) -> tuple[int, int]:
    """Network-input ``(h, w)`` of an image of ``(height, width)``.

    ``min_size`` overrides ``cfg.min_size`` (training draws it from
    ``cfg.train_min_sizes``); the long side is still capped at ``cfg.max_size``.
    """
    short_target = cfg.min_size if min_size is None else min_size
    match cfg.resize_rule:
        case "torchvision":
            # torchvision passes this Python (float64) scale to F.interpolate, which
            # truncates side * scale to an int and then resamples by the size ratio.
            scale = min(short_target / min(height, width), cfg.max_size / max(height, width))
            h, w = int(height * scale), int(width * scale)
        case "detectron2":
            # ResizeShortestEdge: the short side exactly to the target, the long
            # side scaled; then both capped at max_size; rounded half up.
            scale = short_target / min(height, width)
            fh, fw = (short_target, scale * width) if height < width else (scale * height, short_target)
            if max(fh, fw) > cfg.max_size:
                shrink = cfg.max_size / max(fh, fw)
                fh, fw = fh * shrink, fw * shrink
            h, w = int(fh + 0.5), int(fw + 0.5)
        case _:
            raise ValueError(f"unknown resize_rule {cfg.resize_rule!r}")
    if h < 1 or w < 1:
        raise ValueError(
            f"an image of {height}x{width} pixels resizes to {h}x{w}: one side is too thin "
            f"for min_size {short_target} / max_size {cfg.max_size}; crop or pad it first"
        )
    return h, w


def _normalise(image: Tensor, cfg: InputConfig) -> Tensor:
    """``(3, H, W)`` float in [0, pixel_range], RGB -> normalised in the configured channel order."""
    if cfg.channel_order == "BGR":
        image = image.flip(0)
    mean = torch.tensor(cfg.pixel_mean, dtype=image.dtype, device=image.device)[:, None, None]
    std = torch.tensor(cfg.pixel_std, dtype=image.dtype, device=image.device)[:, None, None]
    return (image - mean) / std


def prepare_image(
    image: np.ndarray,
    cfg: InputConfig,
    device: torch.device | str = "cpu",
    *,
    min_size: int | None = None,
    resize: bool = True,
) -> Tensor:
    """One ``(H, W, 3)`` uint8 RGB image -> normalised ``(3, h, w)`` network input.

    ``min_size`` overrides ``cfg.min_size`` as in :func:`resized_size`;
    ``resize=False`` keeps the image's own size (tiles of a large image run at scale 1).
    """
    height, width = image.shape[:2]
    h, w = resized_size(height, width, cfg, min_size=min_size) if resize else (height, width)
    if cfg.resize_rule == "detectron2":
        if (h, w) != (height, width):
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
        x = torch.as_tensor(np.array(image, copy=True)).to(device).permute(2, 0, 1).float()
        return _normalise(x * (cfg.pixel_range / 255.0), cfg)
    x = torch.as_tensor(np.array(image, copy=True)).to(device).permute(2, 0, 1).float() / 255.0
    x = _normalise(x * cfg.pixel_range, cfg)
    if (h, w) != (height, width):
        x = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return x


def padded_size(image_sizes: list[tuple[int, int]], size_divisibility: int) -> tuple[int, int]:
    """``(H, W)`` of a batch: the largest height and width, each rounded up to the divisor.

    Both peers pad this way (torchvision's ``batch_images``, Detectron2's ``ImageList``).
    """
    d = size_divisibility
    h = max(size[0] for size in image_sizes)
    w = max(size[1] for size in image_sizes)
    return (h + d - 1) // d * d, (w + d - 1) // d * d


def pad_batch(images: list[Tensor], size_divisibility: int) -> Tensor:
    """Zero-pad ``(3, h_i, w_i)`` images to one ``(N, 3, H, W)`` tensor, sides multiples of the divisor."""
    h, w = padded_size([(im.shape[1], im.shape[2]) for im in images], size_divisibility)
    batch = images[0].new_zeros((len(images), 3, h, w))
    for i, im in enumerate(images):
        batch[i, :, : im.shape[1], : im.shape[2]] = im
    return batch


def make_batch(images: list[np.ndarray], cfg: InputConfig, device: torch.device | str = "cpu", *,
               resize: bool = True) -> ImageBatch:
    """Images as ``(H, W, 3)`` uint8 RGB arrays -> ``ImageBatch`` on ``device`` (``resize`` as in
    :func:`prepare_image`)."""
    tensors = [prepare_image(im, cfg, device, resize=resize) for im in images]
    return ImageBatch(
        tensor=pad_batch(tensors, cfg.size_divisibility),
        image_sizes=[(t.shape[1], t.shape[2]) for t in tensors],
        original_sizes=[(im.shape[0], im.shape[1]) for im in images],
    )
