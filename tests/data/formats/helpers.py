"""Images for the format tests: made in the test's folder, at the size a test needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def plain_image(path: Path, size: tuple[int, int] = (64, 48),
                color: tuple[int, int, int] = (120, 30, 60)) -> Path:
    """A one-colour RGB image of ``size`` (W, H) at ``path`` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def noise_image(path: Path, height: int = 48, width: int = 64) -> Path:
    """A seeded random RGB image of ``height`` x ``width`` at ``path`` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(height * 1000 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path
