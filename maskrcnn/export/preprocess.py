"""The input transform as dense tensor algebra, for a graph with any batch and image size.

``data/transforms.py`` resizes each image with its own ``F.interpolate`` call
and pads them into a batch: one call per image, sizes read on the host. An
exported graph takes one padded uint8 batch and each image's size as tensors
instead, so the same function is written here without host reads:

- each image's network-input size follows torchvision's rule,
  ``int(side * min(min_size / short, max_size / long))`` in float64, computed
  in exact integer arithmetic so that runtimes without float64 agree;
- bilinear resizing (``align_corners=False``, as ``F.interpolate`` with an
  output size) is two matrix products per image, ``R_y X R_x^T``, with
  per-image interpolation matrices whose rows past the image's new size are
  zero, so the result comes out already zero-padded;
- the padded side is the largest new side rounded up to the size divisor.

Shapes: ``images (N, H, W, 3)`` uint8 RGB (image ``i`` in its top-left
``sizes[i]``), ``sizes (N, 2)`` int64 ``(h, w)`` -> ``tensor (N, 3, H', W')``
float32 and ``image_sizes (N, 2)`` int64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import InputConfig


def resized_sizes(sizes: Tensor, cfg: InputConfig) -> Tensor:
    """Network-input ``(h, w)`` of each image, ``(N, 2)`` int64 -> ``(N, 2)`` int64 (torchvision's rule).

    torchvision computes ``int(side * min(min_size / short, max_size / long))``
    in float64. Runtimes do not all keep float64 (OpenVINO computes it in
    float32, and 200 * (160 / 200) comes out 159 there), so the same value is
    computed here in exact int64 arithmetic; see ``_floor_of_double_product``.
    """
    if cfg.resize_rule != "torchvision":
        raise ValueError(f"the exported input transform implements the torchvision resize rule, "
                         f"not {cfg.resize_rule!r}")
    if max(cfg.min_size, cfg.max_size) > MAX_SIDE:
        raise ValueError(f"the exported input transform takes sizes up to {MAX_SIDE} px")
    short, long = sizes.amin(dim=1), sizes.amax(dim=1)
    # min(fl(t1 / short), fl(t2 / long)): rounding keeps the order of the exact quotients
    # (equal doubles give the same result either way), so compare t1 * long with t2 * short.
    by_short = cfg.min_size * long <= cfg.max_size * short
    numerator = torch.where(by_short, cfg.min_size, cfg.max_size)
    denominator = torch.where(by_short, short, long)
    # On flat vectors of equal length: OpenVINO (2026.4) got some broadcast (N, 2) x (N, 1)
    # integer products wrong for N > 1.
    a = numerator[:, None].expand(-1, 2).reshape(-1)
    b = denominator[:, None].expand(-1, 2).reshape(-1)
    return _floor_of_double_product(sizes.reshape(-1), a, b).reshape(-1, 2)


# Every intermediate value below stays under 2^31: OpenVINO's CPU plugin computes int64
# tensors in int32. That holds for image sides and size targets below 2^14 (16384).
MAX_SIDE = (1 << 14) - 1
_POW2 = [1 << i for i in range(31)]


def _pow2(exponent: Tensor) -> Tensor:
    """``2 ** exponent`` for exponents 0..30, gathered from a table (no integer Pow in the graph)."""
    return torch.tensor(_POW2, dtype=torch.int64, device=exponent.device)[exponent]


def _floor_log2_ratio(a: Tensor, b: Tensor) -> Tensor:
    """``floor(log2(a / b))`` for integers in 1..MAX_SIDE, exactly."""
    exponents = torch.arange(-15, 16, device=a.device)  # (J,)
    up = _pow2(exponents.clamp(min=0))
    down = _pow2((-exponents).clamp(min=0))
    holds = b[..., None] * up <= a[..., None] * down  # 2^j <= a / b, true up to some j
    return holds.sum(dim=-1) - 16


def _pow2_mod(exponent: Tensor, modulus: Tensor) -> Tensor:
    """``2^exponent mod modulus`` for exponents below 80 and moduli below 2^16, in steps of 2^10."""
    result = torch.ones_like(modulus)
    step = 1024 % modulus
    for i in range(8):
        result = torch.where(i < exponent // 10, result * step % modulus, result)
    return result * _pow2(exponent % 10) % modulus


def _floor_of_double_product(side: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``floor(fl(side * fl(a / b)))`` in IEEE double arithmetic, for integers in 1..MAX_SIDE.

    The result too must be at most MAX_SIDE (a resized side is at most ``max_size``).

    Write ``X = side * a / b``. When ``b`` does not divide ``side * a`` the
    float64 errors (under ``X * 2^-52``) are far smaller than ``X``'s distance
    to an integer (at least ``1 / b``), so the result is ``(side * a) // b``.
    When ``X`` is an integer the result is ``X``, or ``X - 1`` when ``fl(a / b)``
    rounded down by enough that the product rounds below ``X``. With
    ``fl(a / b) = m 2^-k``, ``m`` of 53 bits, the rounding error is
    ``D / (b 2^k)`` with ``D = a 2^k - m b`` (``D > 0``: rounded down); the
    product is ``X - side D / (b 2^k)``, and it rounds below ``X`` when that
    gap exceeds half the spacing of doubles just below ``X`` (a tie rounds to
    ``X``, whose significand is even).
    """
    product = side * a
    x = product // b
    k = 52 - _floor_log2_ratio(a, b)  # fl(a / b) = m 2^-k with 2^52 <= m < 2^53
    remainder = _pow2_mod(k, b) * a % b  # a 2^k mod b
    # Round half to even: m = floor(a 2^k / b) + 1 when the remainder is over half, or
    # exactly half and floor(a 2^k / b) is odd (read off a 2^k mod 2b).
    odd_floor = _pow2_mod(k, 2 * b) * a % (2 * b) >= b
    rounds_up = (2 * remainder > b) | ((2 * remainder == b) & odd_floor)
    below = (remainder > 0) & ~rounds_up  # fl(a / b) < a / b
    # Spacing of doubles just below X: 2^(floor(log2 X) - 52), halved when X is a power of two.
    log2_x = _floor_log2_ratio(x.clamp(min=1), torch.ones_like(x))
    power_of_two = x == _pow2(log2_x.clamp(min=0))
    e = log2_x - 52 - power_of_two.to(torch.int64) + k  # spacing * b * 2^k = b * 2^e
    # side * D / (b 2^k) > spacing / 2  <=>  side * D > b * 2^(e - 1); e >= floor(log2 side) - 2.
    lhs = side * remainder * _pow2((1 - e).clamp(min=0))
    rhs = b * _pow2((e - 1).clamp(min=0))
    rounds_below = (product % b == 0) & below & (lhs > rhs) & (x > 0)
    return x - rounds_below.to(torch.int64)


def bilinear_matrices(in_sizes: Tensor, out_sizes: Tensor, in_length: int, out_length: int) -> Tensor:
    """Bilinear resizing along one axis as matrices: ``(N,)`` sizes -> ``(N, out_length, in_length)``.

    Row ``o`` of matrix ``n`` holds the weights with which output sample ``o``
    of a resize from ``in_sizes[n]`` to ``out_sizes[n]`` samples combines the
    input samples, as ``F.interpolate(mode="bilinear", align_corners=False)``
    computes them in float32: source ``(o + 0.5) * in / out - 0.5`` clamped at
    0, its two neighbours weighted by distance, the right one clamped to the
    last sample. Rows from ``out_sizes[n]`` on are zero.
    """
    src_len = in_sizes.to(torch.float32)[:, None]
    scale = src_len / out_sizes.to(torch.float32)[:, None]  # (N, 1)
    dst = torch.arange(out_length, dtype=torch.float32, device=in_sizes.device)[None]  # (1, O)
    src = (scale * (dst + 0.5) - 0.5).clamp(min=0)  # (N, O)
    low = src.floor()
    frac = src - low
    low_index = low.to(torch.int64)
    high_index = torch.minimum(low_index + 1, in_sizes[:, None] - 1)
    columns = torch.arange(in_length, device=in_sizes.device)[None, None]  # (1, 1, I)
    weights = (1 - frac)[..., None] * (columns == low_index[..., None]) + frac[..., None] * (
        columns == high_index[..., None]
    )  # (N, O, I); where low == high (the last sample) both terms add up to 1
    inside = (dst < out_sizes[:, None])[..., None]
    return weights * inside


def prepare_batch(images: Tensor, sizes: Tensor, cfg: InputConfig) -> tuple[Tensor, Tensor]:
    """Padded uint8 images and their sizes -> the normalised, resized, padded network input and its sizes."""
    new_sizes = resized_sizes(sizes, cfg)
    d = cfg.size_divisibility
    # The batch's padded side: data-dependent, read once as a size.
    height = int((new_sizes[:, 0].max() + d - 1) // d * d)
    width = int((new_sizes[:, 1].max() + d - 1) // d * d)
    x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0 * cfg.pixel_range
    if cfg.channel_order == "BGR":
        x = x.flip(1)
    mean = torch.tensor(cfg.pixel_mean, dtype=torch.float32, device=x.device)[None, :, None, None]
    std = torch.tensor(cfg.pixel_std, dtype=torch.float32, device=x.device)[None, :, None, None]
    x = (x - mean) / std
    rows = bilinear_matrices(sizes[:, 0], new_sizes[:, 0], images.shape[1], height)  # (N, H', H)
    cols = bilinear_matrices(sizes[:, 1], new_sizes[:, 1], images.shape[2], width)  # (N, W', W)
    # (N, 1, H', H) @ (N, 3, H, W) @ (N, 1, W, W') -> (N, 3, H', W')
    return rows[:, None] @ x @ cols[:, None].transpose(-1, -2), new_sizes
