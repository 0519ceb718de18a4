"""The weights a config's detector holds: names and shapes, and the way back.

``expected_state_shapes(cfg)`` is the contract between checkpoints and the
model: every state-dict name the detector built from ``cfg`` has, with its
shape (the model is built on the ``meta`` device, so this costs no memory).
``infer_config`` goes the other way for peer checkpoints, which carry no
config: it reads the ResNet depth and cardinality, the number of classes and
the presence of mask and keypoint heads off the tensors' shapes. ``compare_state``
lists every difference between a state dict and the shapes it should have,
and ``as_tensor`` turns a peer's stored value (numpy array or tensor) into ours.

Shape convention: ``K`` foreground classes; the classifier has ``K + 1``
outputs (background at 0), box regression and mask logits have ``K``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from maskrcnn.config import KeypointHeadConfig, MaskHeadConfig, ModelConfig
from maskrcnn.model.backbone import BASIC_DEPTHS, BLOCKS_PER_STAGE
from maskrcnn.model.build import build_model

Shape = tuple[int, ...]

# Bottleneck blocks per stage (res2..res5, torchvision's layer1..layer4) of
# the depths peer checkpoints come in.
RESNET_BLOCKS: dict[int, tuple[int, ...]] = {
    d: blocks for d, blocks in BLOCKS_PER_STAGE.items() if d not in BASIC_DEPTHS
}


def expected_state_shapes(cfg: ModelConfig) -> dict[str, Shape]:
    """Every tensor of the detector ``cfg`` describes, name -> shape, in module order.

    Read off the model itself, built on the ``meta`` device: no memory is
    allocated and the architecture is described in one place only.
    """
    try:
        with torch.device("meta"):
            model = build_model(cfg)
    except ValueError:
        raise
    except Exception as e:  # a config no model can be built from
        raise ValueError(f"cannot build the model this checkpoint describes: {e}") from e
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def rename_state(
    state: Mapping[str, Any],
    rename: Callable[[str], tuple[str, Callable[[Tensor], Tensor] | None]],
    ignored: Callable[[str], bool],
) -> dict[str, Tensor]:
    """A peer's state dict under our names: each kept entry renamed and, where needed, transformed.

    Raises ValueError when two entries map to one name.
    """
    out: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    for name, value in state.items():
        if ignored(name):
            continue
        new, transform = rename(name)
        if new in out:
            raise ValueError(f"{source[new]} and {name} both map to {new}")
        tensor = as_tensor(name, value)
        out[new] = transform(tensor) if transform is not None else tensor
        source[new] = name
    return out


def as_tensor(name: str, value: Any) -> Tensor:
    """A state-dict value as a tensor; floating point ones as float32."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} is a {type(value).__name__}, not a tensor")
    return value.float() if value.is_floating_point() else value


# ---------------------------------------------------------------------------
# Config inference for checkpoints that carry no config.

# A ResNet block: in the backbone, or (C4) res5 run per RoI as ``roi_shared``.
_BLOCK = re.compile(r"(?:backbone\.body\.layer([1-4])|roi_shared)\.(\d+)\.")


def _shape(state: Mapping[str, Any], name: str) -> Shape | None:
    value = state.get(name)
    return tuple(value.shape) if value is not None and hasattr(value, "shape") else None


def infer_config(base: ModelConfig, state: Mapping[str, Any]) -> ModelConfig:
    """``base`` with what ``state`` (our key names) says about the architecture.

    Read off the tensors: ResNet depth (blocks per stage), ResNeXt groups and
    width per group (the first 3x3 conv's shape), number of classes (the
    classifier's rows minus background), whether there is a mask head (with
    its conv and deconv widths), and whether there is a keypoint head (with
    its conv widths and keypoint count). C4's per-RoI res5 (``roi_shared``)
    counts as the backbone's last stage. The architecture (FPN, C4, DC5) is
    ``base``'s: each peer's converter tells it from its own names.
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
            stage = int(m.group(1)) if m.group(1) else 4  # roi_shared is res5
            blocks[stage - 1].add(int(m.group(2)))
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

    cls = _shape(state, "box.head.cls_score.weight") or _shape(state, "box.head.cls_score.bias")
    if cls is not None:
        k = cls[0] - 1
        if k < 1:
            raise ValueError(f"the classifier has {cls[0]} outputs; needs background and a class or more")
        if k != cfg.num_classes:
            names = tuple(f"class_{i}" for i in range(1, k + 1))
            cfg = cfg.replace(num_classes=k, class_names=names, category_ids=tuple(range(1, k + 1)))

    return cfg.replace(
        mask_head=_mask_head(cfg.mask_head, state), keypoint_head=_keypoint_head(cfg.keypoint_head, state)
    )


_MASK_CONV = re.compile(r"mask\.head\.convs\.(\d+)\.weight")


def _mask_head(base: MaskHeadConfig | None, state: Mapping[str, Any]) -> MaskHeadConfig | None:
    """The mask head ``state`` holds, or None: its conv widths and deconv width off the tensors.

    FPN and DC5 models have 4 convs of 256 before the deconv; C4 models none
    (the deconv reads res5's 2048 channels and writes 256).
    """
    if not any(name.startswith("mask.head.") for name in state):
        return None
    head = base or MaskHeadConfig()
    deconv = _shape(state, "mask.head.deconv.weight")
    if deconv is None or len(deconv) != 4:
        return head  # too little to go on; compare_state reports what is missing
    conv_dims = _conv_widths(state, _MASK_CONV)
    # ConvTranspose2d weights are (in, out, k, k); None: as wide as the last conv.
    deconv_dim = None if conv_dims and deconv[1] == conv_dims[-1] else deconv[1]
    return dataclasses.replace(head, conv_dims=conv_dims, deconv_dim=deconv_dim)


def _conv_widths(state: Mapping[str, Any], pattern: re.Pattern[str]) -> tuple[int, ...]:
    """Output channels of the convs whose weight names match ``pattern`` (group 1: the index), in order."""
    convs = {}
    for name in state:
        m = pattern.fullmatch(name)
        shape = _shape(state, name)
        if m and shape:
            convs[int(m.group(1))] = shape[0]
    return tuple(convs[i] for i in sorted(convs))


_KEYPOINT_CONV = re.compile(r"keypoint\.head\.convs\.(\d+)\.weight")


def _keypoint_head(base: KeypointHeadConfig | None, state: Mapping[str, Any]) -> KeypointHeadConfig | None:
    """The keypoint head ``state`` holds: conv widths and keypoint count off the tensors, or None.

    A count other than ``base``'s (COCO's 17 by default) drops the names,
    flip pairs and skeleton, which only fit the keypoints they were written for.
    """
    if not any(name.startswith("keypoint.head.") for name in state):
        return None
    head = base or KeypointHeadConfig()
    conv_dims = _conv_widths(state, _KEYPOINT_CONV)
    if conv_dims:
        head = dataclasses.replace(head, conv_dims=conv_dims)
    # ConvTranspose2d weights are (in, out, k, k): one output channel per keypoint.
    weight = _shape(state, "keypoint.head.predictor.weight")
    bias = _shape(state, "keypoint.head.predictor.bias")
    count = weight[1] if weight and len(weight) == 4 else bias[0] if bias else head.num_keypoints
    if count != head.num_keypoints:
        head = dataclasses.replace(head, num_keypoints=count, keypoint_names=(), flip_pairs=(), skeleton=())
    return head


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
