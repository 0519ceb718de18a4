"""Reduced-precision inference: the network in bfloat16 or float16, geometry in float32.

``cast_for_inference(model, dtype)`` converts the weights of the convolutions
and linear layers, which hold nearly all the work (94% of the FLOPs of an
R50-FPN prediction are convolutions), to ``dtype``. What stays float32, and
why, measured on the R50-FPN fixture with synthetic weights (6 reference
photos; bfloat16 detections matched to float32 ones at box IoU >= 0.9, the
fraction matched and the mean mask IoU of the pairs; ``tests/model/test_precision.py``):

- box decoding: ``BoxCoder.decode`` computes in the wider of its inputs'
  types, so bfloat16 deltas of float32 anchors and proposals give float32
  boxes. bfloat16 keeps 8 significant bits, so x = 800 would be rounded to
  a multiple of 4 pixels: decoding in bfloat16 drops the agreement from
  81% matched (mask IoU 0.964) to 42% (mask IoU 0.578). NMS and pasting then
  see float32 boxes as well;
- normalisation statistics and affine maps: a frozen batch norm's scale
  ``weight / sqrt(var + eps)`` is computed in float32 and folded into the
  convolution before the folded weight is rounded, once (``backbone.conv_bn``);
  batch norm and group norm keep their float32 tensors and normalise the
  network's bfloat16 activations as they are;
- what the heads output (objectness, class logits, box deltas, mask and
  keypoint logits) is widened to float32 before any arithmetic: the sigmoid,
  softmax, decoding, pasting and the 0.5 threshold run in float32. Mask
  probabilities rounded to bfloat16 before pasting measured a mask IoU of
  0.9635 against 0.9644. The values are the network's own: running the last
  layers themselves in float32 measured 81.5% matched and mask IoU 0.971, not
  worth keeping a second weight type for;
- RoIAlign's bilinear weights are computed from float32 RoIs; the weighted
  sums over the features run in the features' type (``ops.roi_align``).

The rest of the disagreement is the swaps that any rounding causes among the
100 near-equal scores that random weights give. On a trained model the AP
moves little: the demo model of v0.1 has mask AP 0.1930 in float32 and
0.1961 in bfloat16.

float16 is for CUDA: CPUs have no fast float16 convolutions, so
``check_dtype`` refuses it there.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import FrozenBatchNorm2d

# The names the command line and ``maskrcnn.load(dtype=...)`` accept.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# Modules whose tensors stay float32 whatever the network's type (see the module docstring): the
# normalisations, whose statistics (a running mean of 100.3 is 100.5 in bfloat16) and affine maps
# are small to keep and take inputs of the network's type as they are.
_KEPT_FLOAT32 = (FrozenBatchNorm2d, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype:
    """``"bfloat16"`` or ``torch.bfloat16`` -> ``torch.bfloat16``; None is float32; ValueError otherwise."""
    if value is None:
        return torch.float32
    if isinstance(value, torch.dtype):
        if value not in DTYPES.values():
            raise ValueError(f"dtype {value} is not supported: use one of {', '.join(DTYPES)}")
        return value
    text = str(value).removeprefix("torch.")
    if text not in DTYPES:
        raise ValueError(f"unknown dtype {value!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[text]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def check_dtype(dtype: torch.dtype, device: torch.device | str) -> None:
    """ValueError when ``dtype`` cannot run fast on ``device``: float16 runs on CUDA only."""
    if dtype == torch.float16 and torch.device(device).type == "cpu":
        raise ValueError("float16 runs on CUDA only (CPUs have no fast float16 convolutions); "
                         "on the CPU use --dtype bfloat16")


def cast_for_inference(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` with its floating parameters and buffers in ``dtype``, except those kept in float32
    (the normalisations'); in place, and returned. float32 leaves it as it is."""
    if dtype == torch.float32:
        return model
    for module in model.modules():
        if isinstance(module, _KEPT_FLOAT32):
            continue
        for param in module.parameters(recurse=False):
            if param.is_floating_point():
                param.data = param.data.to(dtype)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point():
                module._buffers[name] = buffer.to(dtype)
    return model


def network_dtype(model: nn.Module) -> torch.dtype:
    """The type the network computes in: that of its first floating parameter outside the normalisations."""
    for module in model.modules():
        if isinstance(module, _KEPT_FLOAT32):
            continue
        for param in module.parameters(recurse=False):
            if param.is_floating_point():
                return param.dtype
    return torch.float32


def widened(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is bfloat16 or float16; float32 and float64 as they are."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
