"""The input transform as dense tensor algebra, for a graph with any batch and image size.

``data/transforms.py`` resizes each image with its own ``F.interpolate`` call
(or PIL ``Image.resize``) and pads them into a batch: one call per image, sizes
read on the host. An exported graph takes one padded uint8 batch and each
image's size as tensors instead, so the same function is written here without
host reads. Both resize rules of ``InputConfig`` are implemented:

- ``"torchvision"``: each image's network-input size follows torchvision's
  rule, ``int(side * min(min_size / short, max_size / long))`` in float64,
  computed in exact integer arithmetic so that runtimes without float64 agree;
  bilinear resizing (``align_corners=False``, as ``F.interpolate`` with an
  output size) of the normalised image is two matrix products per image,
  ``R_y X R_x^T``, with per-image interpolation matrices whose rows past the
  image's new size are zero, so the result comes out already zero-padded.
- ``"detectron2"``: ResizeShortestEdge's size rule in float64 tensors, and
  PIL's bilinear filter on the uint8 image, bit for bit: per axis a matrix of
  PIL's 22-bit fixed-point coefficients, applied as float32 matrix products
  that are exact (see ``resample_fixed_point``), two passes with a uint8
  intermediate in the order ``libImaging/Resample.c`` picks for each image
  (see ``pil_bilinear_resize``); then normalised and zero-padded. The
  coefficients and sizes are computed in float64, which
  ONNX Runtime keeps and OpenVINO computes in float32: this rule is exact in
  PyTorch and ONNX Runtime only.

The padded side is the largest new side rounded up to the size divisor.

Shapes: ``images (N, H, W, 3)`` uint8 RGB (image ``i`` in its top-left
``sizes[i]``), ``sizes (N, 2)`` int64 ``(h, w)`` -> ``tensor (N, 3, H', W')``
float32 and ``image_sizes (N, 2)`` int64.
"""

from __future__ import annotations

import math
from typing import Literal

import PIL
import torch
from torch import Tensor

from ..config import InputConfig


def resized_sizes(sizes: Tensor, cfg: InputConfig) -> Tensor:
    """Network-input ``(h, w)`` of each image, ``(N, 2)`` int64 -> ``(N, 2)`` int64, by ``cfg.resize_rule``.

    As ``data.transforms.resized_size``, except that a side resized to nothing
    comes out 0 here instead of raising.
    """
    if max(cfg.min_size, cfg.max_size) > MAX_SIDE:
        raise ValueError(f"the exported input transform takes sizes up to {MAX_SIDE} px")
    match cfg.resize_rule:
        case "torchvision":
            return _torchvision_sizes(sizes, cfg)
        case "detectron2":
            return _detectron2_sizes(sizes, cfg)
        case _:
            raise ValueError(f"unknown resize_rule {cfg.resize_rule!r}")


def _torchvision_sizes(sizes: Tensor, cfg: InputConfig) -> Tensor:
    """torchvision's rule, ``int(side * min(min_size / short, max_size / long))`` in float64.

    torchvision computes it in float64. Runtimes do not all keep float64
    (OpenVINO computes it in float32, and 200 * (160 / 200) comes out 159
    there), so the same value is computed here in exact int64 arithmetic; see
    ``_floor_of_double_product``.
    """
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


def _detectron2_sizes(sizes: Tensor, cfg: InputConfig) -> Tensor:
    """Detectron2's ResizeShortestEdge, the same float64 operations as ``resized_size``.

    The short side goes to ``min_size`` and the long one by the same scale;
    when the long one exceeds ``max_size`` both shrink by ``max_size / long``;
    each rounded half up, ``int(x + 0.5)``. In float64 tensors: exact in
    PyTorch and ONNX Runtime (IEEE double operations give the Python values),
    not in OpenVINO (float64 computed in float32).
    """
    size = sizes.to(torch.float64)
    height, width = size[:, 0], size[:, 1]
    # A number over a tensor is reciprocal(tensor) * number in PyTorch, not correctly rounded:
    # divide tensors instead.
    scale = torch.full_like(height, cfg.min_size) / torch.minimum(height, width)
    wide = height < width
    fh = torch.where(wide, float(cfg.min_size), scale * height)
    fw = torch.where(wide, scale * width, float(cfg.min_size))
    longest = torch.maximum(fh, fw)
    shrink = torch.full_like(longest, cfg.max_size) / longest
    capped = longest > cfg.max_size
    fh = torch.where(capped, fh * shrink, fh)
    fw = torch.where(capped, fw * shrink, fw)
    return (torch.stack([fh, fw], dim=1) + 0.5).floor().to(torch.int64)


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


# PIL's 8-bit resampling (libImaging/Resample.c): coefficients in fixed point with 22
# fractional bits, each output sample (2^21 + sum(uint8 * coefficient)) >> 22 clamped to 0..255.
_PRECISION_BITS = 22
# A coefficient c (0 <= c <= 2^22) splits into c = high * 2^6 + low, 0 <= low < 2^6, and each
# pass is two float32 matrix products, sum(x * high) and sum(x * low). They are exact when every
# partial sum is an integer below 2^24 (all terms are non-negative, so the totals bound them):
# - sum(x * low) <= 255 * 63 * taps < 2^24 for up to _MAX_TAPS = 1044 non-zero taps;
# - sum(x * high) <= 255 * sum(c) / 2^6 <= 255 * (2^16 + (taps / 2 + 1) / 2^6) < 2^24, as the
#   coefficients of an output sample sum to 2^22, plus at most 1/2 per tap from rounding.
# (The split at 2^11, both halves below 2^11, would allow only 32 taps: downscales up to 16.)
# high * 2^6 + low + 2^21 stays below 2^31, which OpenVINO's int32 arithmetic keeps.
_LOW_BITS = 6
_MAX_TAPS = (2**24 - 1) // (255 * (2**_LOW_BITS - 1))


def _max_taps(cfg: InputConfig) -> int:
    """Most non-zero coefficients per output sample for images with sides up to MAX_SIDE.

    A downscale by ``s = in / out`` has triangle weights over an open interval
    of ``2 s`` input samples: at most ``ceil(2 s)`` taps (plus one at each end,
    where rounding of ``1 / s`` can leave a weight of a few ulps). Both sides are
    scaled by ``r >= min(min_size, max_size) / MAX_SIDE``, and rounding a side
    ``in * r >= 0.5`` half up to ``out >= 1`` keeps ``in / out < 1.5 / r``.
    """
    return math.ceil(3 * MAX_SIDE / min(cfg.min_size, cfg.max_size)) + 2


def pil_bilinear_coefficients(in_sizes: Tensor, out_sizes: Tensor, in_length: int, out_length: int) -> Tensor:
    """PIL's bilinear resampling along one axis: ``(N,)`` sizes -> ``(N, out_length, in_length)`` float64.

    Row ``o`` of matrix ``n`` holds the fixed-point coefficients (integers,
    ``2^22`` standing for 1) with which ``Image.resize(..., BILINEAR)`` makes
    output sample ``o`` of a resize from ``in_sizes[n]`` to ``out_sizes[n]``
    samples, computed in float64 as ``precompute_coeffs`` and
    ``normalize_coeffs_8bpc`` do: ``scale = in / out``, support ``max(scale,
    1)``, the window ``[int(center - support + 0.5), int(center + support +
    0.5))`` around ``center = (o + 0.5) * scale`` clipped to the image, triangle
    weights of ``(x - center + 0.5) / support`` normalised by their sum (summed
    in order, as the C loop does: ``cumsum``), ``int(w * 2^22 + 0.5)``. Rows from
    ``out_sizes[n]`` on, and columns from ``in_sizes[n]`` on, are zero. An equal
    size gives ``2^22`` times the identity, as PIL's skipped pass.
    """
    f64 = torch.float64
    size_in = in_sizes.to(f64)[:, None, None]  # (N, 1, 1)
    scale = size_in / out_sizes.clamp(min=1).to(f64)[:, None, None]
    support = scale.clamp(min=1.0)  # the filter's support (1 for bilinear) times max(scale, 1)
    inverse = torch.ones_like(support) / support  # PIL multiplies by the inverse
    rows = torch.arange(out_length, dtype=f64, device=in_sizes.device)[None, :, None]  # (1, O, 1)
    columns = torch.arange(in_length, dtype=f64, device=in_sizes.device)[None, None]  # (1, 1, I)
    center = (rows + 0.5) * scale  # (N, O, 1)
    # int() truncates towards zero; floor differs only below 0, which the clamp covers.
    first = (center - support + 0.5).floor().clamp(min=0)
    end = torch.minimum((center + support + 0.5).floor(), size_in)
    weights = (1 - (((columns - center) + 0.5) * inverse).abs()).clamp(min=0)  # (N, O, I)
    window = (columns >= first) & (columns < end) & (rows < out_sizes[:, None, None])
    weights = torch.where(window, weights, 0.0)
    total = weights.cumsum(dim=-1)[..., -1:]  # left to right, as PIL sums them; zeros add exactly
    weights = weights / torch.where(total == 0, 1.0, total)
    return (weights * 2**_PRECISION_BITS + 0.5).floor()


def resample_fixed_point(x: Tensor, coefficients: Tensor, *, vertical: bool) -> Tensor:
    """One pass of PIL's 8-bit resampling, exactly, in float32 matrix products.

    ``x (N, C, R, S)`` float32 holding uint8 values and ``coefficients (N, O,
    I)`` from ``pil_bilinear_coefficients`` -> float32 holding uint8 values,
    ``clip8((2^21 + sum(x * c)) >> 22)``: along the columns ``(N, C, R, O)``
    (``I = S``), or with ``vertical`` along the rows ``(N, C, O, S)`` (``I = R``).
    See ``_LOW_BITS`` for why the float32 sums are exact (for up to
    ``_MAX_TAPS`` non-zero taps).
    """
    high = (coefficients / 2**_LOW_BITS).floor()
    low = coefficients - high * 2**_LOW_BITS
    # Both halves in one product: (N, 1, 2 O, I).
    split = torch.cat([high, low], dim=1).to(torch.float32)[:, None]
    out_length = coefficients.shape[1]
    if vertical:
        sums = (split @ x).to(torch.int64)  # (N, 1, 2 O, R) @ (N, C, R, S) -> (N, C, 2 O, S)
        high_sum, low_sum = sums[..., :out_length, :], sums[..., out_length:, :]
    else:
        sums = (x @ split.transpose(-1, -2)).to(torch.int64)  # (N, C, R, S) @ (N, 1, S, 2 O) -> (.., 2 O)
        high_sum, low_sum = sums[..., :out_length], sums[..., out_length:]
    total = high_sum * 2**_LOW_BITS + low_sum + 2 ** (_PRECISION_BITS - 1)
    return (total // 2**_PRECISION_BITS).clamp(0, 255).to(torch.float32)


PassOrder = Literal["horizontal", "tall", "shrink"]


def _pillow_pass_order(version: str) -> PassOrder:
    """The images a Pillow release resizes vertically first.

    The uint8 rounding between the passes makes the order matter, by one level
    in some pixels:

    - ``"horizontal"`` (up to 12.1): none, the horizontal pass always runs first;
    - ``"tall"`` (12.2, 12.3, ``Image.resize``): images more than 100 times taller than wide
      whose height shrinks, ``h > 100 w`` and ``h' < h``;
    - ``"shrink"`` (13, ``ImagingResampleInner``): images whose height shrinks by more than
      twice as many pixels as their width, ``h' < h`` and ``h - h' > 2 (w - w')``.
    """
    major, minor = (int(part) for part in version.split(".")[:2])
    if major >= 13:
        return "shrink"
    return "tall" if (major, minor) >= (12, 2) else "horizontal"


# The graph follows the Pillow that make_batch runs with.
PILLOW_PASS_ORDER = _pillow_pass_order(PIL.__version__)


def pil_bilinear_resize(
    images: Tensor, sizes: Tensor, new_sizes: Tensor, height: int, width: int,
    *, order: PassOrder = PILLOW_PASS_ORDER,
) -> Tensor:
    """``Image.resize((w, h), BILINEAR)`` of each uint8 image -> ``(N, 3, height, width)`` float32, 0..255.

    ``images (N, H, W, 3)`` uint8, image ``n`` in the top-left ``sizes[n]``,
    resized to ``new_sizes[n]``; the rest of each output is 0. Two passes, each
    rounded to uint8, in the ``order`` of a Pillow release (``_pillow_pass_order``):
    where some images go vertically first, both orders are computed and each
    image takes its own (about twice the work).
    """
    x = images.permute(0, 3, 1, 2).to(torch.float32)  # (N, 3, H, W)
    cols = pil_bilinear_coefficients(sizes[:, 1], new_sizes[:, 1], images.shape[2], width)  # (N, W', W)
    rows = pil_bilinear_coefficients(sizes[:, 0], new_sizes[:, 0], images.shape[1], height)  # (N, H', H)
    by_cols = resample_fixed_point(x, cols, vertical=False)  # (N, 3, H, W')
    horizontal_first = resample_fixed_point(by_cols, rows, vertical=True)  # (N, 3, H', W')
    if order == "horizontal":
        return horizontal_first
    by_rows = resample_fixed_point(x, rows, vertical=True)  # (N, 3, H', W)
    vertical_first = resample_fixed_point(by_rows, cols, vertical=False)  # (N, 3, H', W')
    height_change = sizes[:, 0] - new_sizes[:, 0]
    if order == "tall":
        takes_vertical = (sizes[:, 0] > 100 * sizes[:, 1]) & (height_change > 0)
    else:
        takes_vertical = (height_change > 0) & (height_change > 2 * (sizes[:, 1] - new_sizes[:, 1]))
    return torch.where(takes_vertical[:, None, None, None], vertical_first, horizontal_first)


def _padded_side(sides: Tensor, divisor: int) -> int:
    """The largest of ``sides`` rounded up to a multiple of ``divisor``, read as a (symbolic) size."""
    side = ((sides.max() + divisor - 1) // divisor * divisor).item()
    # What the exporter cannot know about a value read from a tensor.
    torch._check(side >= max(divisor, 1))
    torch._check(side % divisor == 0)
    return side


def prepare_batch(images: Tensor, sizes: Tensor, cfg: InputConfig) -> tuple[Tensor, Tensor]:
    """Padded uint8 images and their sizes -> the normalised, resized, padded network input and its sizes."""
    if cfg.resize_rule == "detectron2" and _max_taps(cfg) > _MAX_TAPS:
        raise ValueError(
            f"the exported detectron2 resize is exact for min(min_size, max_size) down to "
            f"{math.ceil(3 * MAX_SIDE / (_MAX_TAPS - 2))} px (downscales of images up to "
            f"{MAX_SIDE} px), not {min(cfg.min_size, cfg.max_size)}"
        )
    new_sizes = resized_sizes(sizes, cfg)
    d = cfg.size_divisibility
    # The batch's padded side: data-dependent, read once as a size.
    height = _padded_side(new_sizes[:, 0], d)
    width = _padded_side(new_sizes[:, 1], d)
    mean = torch.tensor(cfg.pixel_mean, dtype=torch.float32, device=images.device)[None, :, None, None]
    std = torch.tensor(cfg.pixel_std, dtype=torch.float32, device=images.device)[None, :, None, None]
    if cfg.resize_rule == "detectron2":
        # PIL resizes the uint8 image, then it is scaled and normalised as data/transforms.py does
        # (the same float32 operations in the same order), and the padding set back to zero.
        x = pil_bilinear_resize(images, sizes, new_sizes, height, width) * (cfg.pixel_range / 255.0)
        if cfg.channel_order == "BGR":
            x = x.flip(1)
        x = (x - mean) / std
        inside_rows = torch.arange(height, device=images.device) < new_sizes[:, 0, None]  # (N, H')
        inside_cols = torch.arange(width, device=images.device) < new_sizes[:, 1, None]  # (N, W')
        inside = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]  # (N, 1, H', W')
        return torch.where(inside, x, 0.0), new_sizes
    x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0 * cfg.pixel_range
    if cfg.channel_order == "BGR":
        x = x.flip(1)
    x = (x - mean) / std
    rows = bilinear_matrices(sizes[:, 0], new_sizes[:, 0], images.shape[1], height)  # (N, H', H)
    cols = bilinear_matrices(sizes[:, 1], new_sizes[:, 1], images.shape[2], width)  # (N, W', W)
    # (N, 1, H', H) @ (N, 3, H, W) @ (N, 1, W, W') -> (N, 3, H', W')
    return rows[:, None] @ x @ cols[:, None].transpose(-1, -2), new_sizes
