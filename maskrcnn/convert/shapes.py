"""The weights a config's detector holds: names and shapes, and the way back.

``expected_state_shapes(cfg)`` is the contract between checkpoints and the
model: every state-dict name the detector built from ``cfg`` has, with its
shape, written from the architecture description rather than by building
the model (so converting a 170 MB checkpoint needs no model in memory).
``infer_config`` goes the other way for peer checkpoints, which carry no
config: it reads the ResNet depth and cardinality, the number of classes and
the presence of a mask head off the tensors' shapes. ``compare_state``
lists every difference between a state dict and the shapes it should have,
and ``as_tensor`` turns a peer's stored value (numpy array or tensor) into ours.

Shape shorthand: ``C`` FPN channels, ``A`` anchors per location, ``K``
foreground classes (the classifier has ``K + 1`` outputs, background at 0;
box regression and mask logits have ``K``), ``D`` box-head fc width,
``R`` box pooler resolution.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from maskrcnn.config import MaskHeadConfig, ModelConfig

Shape = tuple[int, ...]

# Bottleneck blocks per stage (res2..res5, torchvision's layer1..layer4).
RESNET_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
STEM_CHANNELS = 64
# A bottleneck's output has 4x the channels of its 3x3 conv (for ResNet;
# ResNeXt widens the 3x3 conv but keeps these outputs).
BOTTLENECK_EXPANSION = 4
# Output channels of C2..C5 (the same for every ResNet / ResNeXt depth and width).
BACKBONE_CHANNELS: tuple[int, ...] = tuple(STEM_CHANNELS * BOTTLENECK_EXPANSION * 2**s for s in range(4))
# The frozen batch norm's tensors: affine parameters and running statistics
# (no ``num_batches_tracked``: frozen statistics are never updated).
NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")


def _norm(prefix: str, channels: int) -> dict[str, Shape]:
    return {f"{prefix}.{t}": (channels,) for t in NORM_TENSORS}


def _conv(prefix: str, out_ch: int, in_ch: int, k: int, *, bias: bool) -> dict[str, Shape]:
    shapes = {f"{prefix}.weight": (out_ch, in_ch, k, k)}
    if bias:
        shapes[f"{prefix}.bias"] = (out_ch,)
    return shapes


def _backbone_shapes(cfg: ModelConfig) -> dict[str, Shape]:
    b = cfg.backbone
    if b.depth not in RESNET_BLOCKS:
        raise ValueError(f"ResNet depth {b.depth} is not one of {sorted(RESNET_BLOCKS)}")
    shapes = _conv("backbone.body.conv1", STEM_CHANNELS, 3, 7, bias=False)
    shapes.update(_norm("backbone.body.bn1", STEM_CHANNELS))
    in_ch = STEM_CHANNELS
    for stage, (blocks, out_ch) in enumerate(zip(RESNET_BLOCKS[b.depth], BACKBONE_CHANNELS, strict=True)):
        # The 3x3 conv's width doubles every stage; grouped, each group sees width / groups inputs.
        width = b.groups * b.width_per_group * 2**stage
        for i in range(blocks):
            p = f"backbone.body.layer{stage + 1}.{i}"
            shapes.update(_conv(f"{p}.conv1", width, in_ch, 1, bias=False))
            shapes.update(_norm(f"{p}.bn1", width))
            shapes.update(_conv(f"{p}.conv2", width, width // b.groups, 3, bias=False))
            shapes.update(_norm(f"{p}.bn2", width))
            shapes.update(_conv(f"{p}.conv3", out_ch, width, 1, bias=False))
            shapes.update(_norm(f"{p}.bn3", out_ch))
            if i == 0:  # projection shortcut: channels (and, from layer2 on, stride) change
                shapes.update(_conv(f"{p}.downsample.0", out_ch, in_ch, 1, bias=False))
                shapes.update(_norm(f"{p}.downsample.1", out_ch))
            in_ch = out_ch
    return shapes


def expected_state_shapes(cfg: ModelConfig) -> dict[str, Shape]:
    """Every tensor of the detector ``cfg`` describes, name -> shape, in module order."""
    c = cfg.fpn.out_channels
    a = len(cfg.anchors.aspect_ratios)  # one anchor size per FPN level
    k = cfg.num_classes
    shapes = _backbone_shapes(cfg)
    for i, in_ch in enumerate(BACKBONE_CHANNELS):  # 1x1: C2..C5 -> C channels
        shapes.update(_conv(f"backbone.fpn.lateral.{i}", c, in_ch, 1, bias=True))
    for i in range(len(BACKBONE_CHANNELS)):  # 3x3 on each merged level
        shapes.update(_conv(f"backbone.fpn.output.{i}", c, c, 3, bias=True))
    # P6 is a max-pool of P5: no weights.
    shapes.update(_conv("rpn.head.conv", c, c, 3, bias=True))
    shapes.update(_conv("rpn.head.objectness", a, c, 1, bias=True))
    shapes.update(_conv("rpn.head.deltas", 4 * a, c, 1, bias=True))

    r = cfg.box_head.pooler.resolution
    d = cfg.box_head.fc_dim
    shapes.update({"box_head.fc1.weight": (d, c * r * r), "box_head.fc1.bias": (d,)})
    shapes.update({"box_head.fc2.weight": (d, d), "box_head.fc2.bias": (d,)})
    shapes.update({"box_head.cls_score.weight": (k + 1, d), "box_head.cls_score.bias": (k + 1,)})
    shapes.update({"box_head.bbox_pred.weight": (4 * k, d), "box_head.bbox_pred.bias": (4 * k,)})

    if cfg.mask_head is not None:
        in_ch = c
        for i, dim in enumerate(cfg.mask_head.conv_dims):
            shapes.update(_conv(f"mask_head.convs.{i}", dim, in_ch, 3, bias=True))
            in_ch = dim
        # ConvTranspose2d weights are (in, out, kh, kw); the 2x deconv keeps the width.
        shapes.update({"mask_head.deconv.weight": (in_ch, in_ch, 2, 2), "mask_head.deconv.bias": (in_ch,)})
        shapes.update(_conv("mask_head.predictor", k, in_ch, 1, bias=True))
    return shapes


def as_tensor(name: str, value: Any) -> Tensor:
    """A state-dict value as a tensor; floating point ones as float32."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} is a {type(value).__name__}, not a tensor")
    return value.float() if value.is_floating_point() else value


# ---------------------------------------------------------------------------
# Config inference for checkpoints that carry no config.

_BLOCK = re.compile(r"backbone\.body\.layer([1-4])\.(\d+)\.")


def _shape(state: Mapping[str, Any], name: str) -> Shape | None:
    value = state.get(name)
    return tuple(value.shape) if value is not None and hasattr(value, "shape") else None


def infer_config(base: ModelConfig, state: Mapping[str, Any]) -> ModelConfig:
    """``base`` with what ``state`` (our key names) says about the architecture.

    Read off the tensors: ResNet depth (blocks per stage), ResNeXt groups and
    width per group (the first 3x3 conv's shape), number of classes (the
    classifier's rows minus background) and whether there is a mask head.
    When the class count differs from ``base``'s, class names and category
    ids become generic (``class_1``.., ids 1..K). Lenient on missing tensors
    (they keep ``base``'s value; ``compare_state`` reports them); raises
    ValueError for block counts of no known ResNet.
    """
    cfg = base
    blocks = [set() for _ in range(4)]
    for name in state:
        m = _BLOCK.match(name)
        if m:
            blocks[int(m.group(1)) - 1].add(int(m.group(2)))
    counts = tuple(len(s) for s in blocks)
    if any(counts):
        depth = next((d for d, c in RESNET_BLOCKS.items() if c == counts), None)
        if depth is None:
            known = ", ".join(f"{c} for ResNet-{d}" for d, c in RESNET_BLOCKS.items())
            raise ValueError(f"backbone has {counts} blocks per stage; known: {known}")
        cfg = cfg.replace(backbone=dataclasses.replace(cfg.backbone, depth=depth))

    conv2 = _shape(state, "backbone.body.layer1.0.conv2.weight")
    if conv2 is not None and len(conv2) == 4 and conv2[1] > 0 and conv2[0] % conv2[1] == 0:
        # (width, width / groups, 3, 3) with width = groups * width_per_group in layer1.
        groups = conv2[0] // conv2[1]
        backbone = dataclasses.replace(cfg.backbone, groups=groups, width_per_group=conv2[1])
        cfg = cfg.replace(backbone=backbone)

    cls = _shape(state, "box_head.cls_score.weight") or _shape(state, "box_head.cls_score.bias")
    if cls is not None:
        k = cls[0] - 1
        if k < 1:
            raise ValueError(f"the classifier has {cls[0]} outputs; needs background and a class or more")
        if k != cfg.num_classes:
            names = tuple(f"class_{i}" for i in range(1, k + 1))
            cfg = cfg.replace(num_classes=k, class_names=names, category_ids=tuple(range(1, k + 1)))

    has_mask = any(name.startswith("mask_head.") for name in state)
    if not has_mask:
        cfg = cfg.replace(mask_head=None)
    elif cfg.mask_head is None:
        cfg = cfg.replace(mask_head=MaskHeadConfig())
    return cfg


# ---------------------------------------------------------------------------
# Comparison.


@dataclass(frozen=True)
class StateMismatch:
    """How a state dict differs from the expected names and shapes."""

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    # (name, shape in the state dict, expected shape)
    wrong_shape: tuple[tuple[str, Shape, Shape], ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    def describe(self, limit: int = 10) -> str:
        """One line per kind of problem: the count and up to ``limit`` names."""

        def listing(items: list[str]) -> str:
            more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        lines = []
        if self.missing:
            lines.append(f"{len(self.missing)} missing: {listing(list(self.missing))}")
        if self.unexpected:
            lines.append(f"{len(self.unexpected)} unexpected: {listing(list(self.unexpected))}")
        if self.wrong_shape:
            items = [f"{n} is {tuple(s)}, expected {tuple(e)}" for n, s, e in self.wrong_shape]
            lines.append(f"{len(self.wrong_shape)} with the wrong shape: {listing(items)}")
        return "\n".join(lines)


def compare_state(expected: Mapping[str, Shape], state: Mapping[str, Any]) -> StateMismatch:
    """Missing, unexpected and wrong-shape entries of ``state`` (in ``expected``'s / ``state``'s order)."""
    missing = tuple(n for n in expected if n not in state)
    unexpected = tuple(n for n in state if n not in expected)
    wrong = []
    for name, shape in expected.items():
        found = _shape(state, name) if name in state else None
        if name in state and found != tuple(shape):
            wrong.append((name, found if found is not None else (), tuple(shape)))
    return StateMismatch(missing, unexpected, tuple(wrong))
