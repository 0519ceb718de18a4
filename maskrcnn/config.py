"""Configuration: frozen dataclasses with commented defaults, and presets.

Only ``model/build.py`` reads a config to make modules; every constructor
below it takes plain typed values. Defaults are the paper's R50-FPN Mask R-CNN
as torchvision implements it; ``detectron2_r50_fpn`` gives Detectron2's
variant of the same model. A config round-trips through ``to_dict`` /
``from_dict`` so checkpoints can carry it as JSON.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

ResizeRule = Literal["torchvision", "detectron2"]
PasteRule = Literal["torchvision", "detectron2"]
StrideRule = Literal["fixed", "torchvision"]
PoolerKind = Literal["roi_align", "roi_pool", "roi_warp"]
MaskRepresentation = Literal["sigmoid", "softmax", "class_agnostic"]
MaskTargetRule = Literal["torchvision", "detectron2"]
Architecture = Literal["fpn", "c4", "dc5"]


# Numeric fields with a range, checked by ``check_config``: (low, high), None = unbounded.
_UNIT = (0.0, 1.0)
_POSITIVE = (1, None)
_NON_NEGATIVE = (0, None)
_RANGES: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "InputConfig": {"min_size": _POSITIVE, "max_size": _POSITIVE, "size_divisibility": _POSITIVE,
                    "pixel_range": (1e-12, None), "flip_prob": _UNIT},
    "BackboneConfig": {"depth": (18, None), "groups": _POSITIVE, "width_per_group": _POSITIVE,
                       "base_channels": _POSITIVE, "freeze_at": (0, 5), "norm_eps": _NON_NEGATIVE},
    "FPNConfig": {"out_channels": _POSITIVE},
    "SamplerConfig": {"fg_iou_thresh": _UNIT, "bg_iou_thresh": _UNIT, "batch_size_per_image": _POSITIVE,
                      "positive_fraction": _UNIT, "crowd_ioa_thresh": _UNIT},
    "RPNConfig": {"pre_nms_topk_test": _POSITIVE, "post_nms_topk_test": _POSITIVE,
                  "pre_nms_topk_train": _POSITIVE, "post_nms_topk_train": _POSITIVE,
                  "nms_thresh": _UNIT, "min_box_size": _NON_NEGATIVE, "smooth_l1_beta": _NON_NEGATIVE},
    "PoolerConfig": {"resolution": _POSITIVE, "sampling_ratio": _NON_NEGATIVE,
                     "canonical_box_size": (1e-12, None)},
    "BoxHeadConfig": {"num_fc": _NON_NEGATIVE, "fc_dim": _POSITIVE, "score_thresh": _UNIT,
                      "nms_thresh": _UNIT, "detections_per_image": _POSITIVE, "min_box_size": _NON_NEGATIVE,
                      "smooth_l1_beta": _NON_NEGATIVE},
    "MaskHeadConfig": {"threshold": _UNIT},
    "ModelConfig": {"num_classes": _POSITIVE},
    "SolverConfig": {"iterations": _POSITIVE, "batch_size": _POSITIVE, "base_lr": _NON_NEGATIVE,
                     "reference_batch_size": _POSITIVE, "momentum": _NON_NEGATIVE,
                     "weight_decay": _NON_NEGATIVE, "warmup_iters": _NON_NEGATIVE, "warmup_factor": _UNIT,
                     "gamma": _NON_NEGATIVE, "clip_grad_norm": _NON_NEGATIVE,
                     "checkpoint_period": _NON_NEGATIVE, "eval_period": _NON_NEGATIVE,
                     "log_period": _POSITIVE, "num_workers": _NON_NEGATIVE,
                     "max_nonfinite_steps": _NON_NEGATIVE},
}


class _Checked:
    """Validates a config dataclass where it is built (``__post_init__``).

    Every ``Literal`` field must hold one of its choices, and the numbers named
    in ``_RANGES`` must lie in their range; anything else is a ValueError that
    names the class, the field and what is allowed, never a silent fallback.
    """

    def __post_init__(self) -> None:
        check_config(self)


def _choices(hint: Any) -> tuple[Any, ...] | None:
    """The values a ``Literal[...]`` (or ``Literal[...] | None``) hint allows; None for other hints."""
    if get_origin(hint) is Literal:
        return get_args(hint)
    if get_origin(hint) in (Union, types.UnionType):
        inner = [_choices(arg) for arg in get_args(hint) if arg is not type(None)]
        if len(inner) == 1 and inner[0] is not None:
            return (*inner[0], None)
    return None


@functools.cache
def _field_choices(cls: type) -> dict[str, tuple[Any, ...]]:
    hints = get_type_hints(cls)
    found = {f.name: _choices(hints[f.name]) for f in fields(cls)}
    return {name: c for name, c in found.items() if c is not None}


def check_config(obj: Any) -> None:
    """Raise ValueError when a field of config dataclass ``obj`` is outside its choices or range."""
    cls = type(obj)
    for name, choices in _field_choices(cls).items():
        value = getattr(obj, name)
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ValueError(f"{cls.__name__}.{name} = {value!r} is not one of: {allowed}")
    for name, (low, high) in _RANGES.get(cls.__name__, {}).items():
        value = getattr(obj, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{cls.__name__}.{name} = {value!r} is not a finite number")
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            raise ValueError(f"{cls.__name__}.{name} = {value!r} is outside {span}")


@dataclass(frozen=True)
class InputConfig(_Checked):
    """How a user's image becomes the network input."""

    # Test-time resize: the shortest edge to `min_size`, unless that makes the
    # longest edge exceed `max_size` (then the longest edge to `max_size`).
    min_size: int = 800
    max_size: int = 1333
    # "torchvision": scale computed in float64, output size int(size * scale),
    #   bilinear interpolation of the normalised float image.
    # "detectron2": scale in float64, size rounded half up, PIL bilinear on the
    #   uint8 image before normalisation.
    resize_rule: ResizeRule = "torchvision"
    # Channel order the network expects; images are always read as RGB.
    channel_order: Literal["RGB", "BGR"] = "RGB"
    # Pixels enter as values in [0, pixel_range] (1.0: floats in [0, 1];
    # 255.0: Caffe-style 0-255), then (x - mean) / std per channel.
    pixel_range: float = 1.0
    pixel_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    # Padded batch sides are multiples of this, so every FPN level lines up
    # (1: padded only to the batch's largest image).
    size_divisibility: int = 32
    # Training: the shortest edge is drawn from these sizes for each image
    # (multi-scale training; one size = fixed scale), capped by max_size.
    train_min_sizes: tuple[int, ...] = (800,)
    # Probability of a horizontal flip of each training image.
    flip_prob: float = 0.5


@dataclass(frozen=True)
class BackboneConfig(_Checked):
    """ResNet / ResNeXt bottleneck backbone with frozen batch norm."""

    depth: int = 50  # 50 or 101 (152 works too; 18 and 34 use basic blocks)
    groups: int = 1  # ResNeXt cardinality: 32 for 32x4d / 32x8d, 64 for 64x4d
    width_per_group: int = 64  # 64 for ResNet; 4 or 8 for ResNeXt
    # MSRA/Caffe2 ResNets put the stride-2 in the first 1x1 conv of a block;
    # PyTorch's put it in the 3x3. Detectron2's weights need True.
    stride_in_1x1: bool = False
    # "frozen_bn" to fine-tune pretrained weights; "gn" or "bn" to train from scratch.
    norm: Literal["frozen_bn", "bn", "gn"] = "frozen_bn"
    norm_eps: float = 1e-5
    # Stem width; 64 in every published ResNet (smaller for the CPU demo).
    base_channels: int = 64
    # Stages up to this one are not trained (1 = stem, 2 = stem and res2).
    freeze_at: int = 2


@dataclass(frozen=True)
class FPNConfig(_Checked):
    """Feature Pyramid Network P2-P6 (P6 is a stride-2 subsampling of P5)."""

    out_channels: int = 256
    # Strides of P2..P6 with respect to the input: passed explicitly, never
    # inferred from feature shapes.
    strides: tuple[int, ...] = (4, 8, 16, 32, 64)


@dataclass(frozen=True)
class AnchorConfig(_Checked):
    """One anchor size per FPN level, several aspect ratios (height / width)."""

    sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # torchvision rounds the cell anchors' corners to integers; Detectron2 does not.
    round_to_int: bool = True
    # Anchor centres sit at (offset + i) * stride.
    offset: float = 0.0
    # "fixed": each level's stride is its nominal one (the backbone's strides).
    # "torchvision": per axis, padded image side // feature-map side, as
    #   torchvision's AnchorGenerator computes it. It differs from the nominal
    #   stride at P6 whenever the padded side / 32 is odd (800 px: P6 has 13
    #   cells, stride 800 // 13 = 61 instead of 64).
    stride_rule: StrideRule = "fixed"


@dataclass(frozen=True)
class SamplerConfig(_Checked):
    """Training targets of a stage: match candidates to ground truth, sample a balanced batch.

    The RPN matches anchors and the box head matches proposals, with the same
    rule and different numbers.
    """

    # A candidate is foreground at IoU >= fg_iou_thresh with its best
    # ground-truth box, background below bg_iou_thresh, ignored in between.
    fg_iou_thresh: float
    bg_iou_thresh: float
    # Candidates sampled per image, at most this fraction foreground.
    batch_size_per_image: int
    positive_fraction: float
    # Also make foreground each ground-truth box's best candidates, however low
    # their IoU (Faster R-CNN's RPN rule: every object gets an anchor).
    allow_low_quality_matches: bool = False
    # Background candidates this much inside an iscrowd region (intersection
    # over the candidate's area) are ignored instead of taught as background.
    crowd_ioa_thresh: float = 0.7

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bg_iou_thresh > self.fg_iou_thresh:
            raise ValueError(f"SamplerConfig.bg_iou_thresh = {self.bg_iou_thresh} is above "
                             f"fg_iou_thresh = {self.fg_iou_thresh}")


@dataclass(frozen=True)
class RPNConfig(_Checked):
    """Region Proposal Network: head, proposal selection, and training targets."""

    pre_nms_topk_test: int = 1000  # per FPN level
    post_nms_topk_test: int = 1000  # per image, after NMS over all levels
    pre_nms_topk_train: int = 2000
    post_nms_topk_train: int = 2000
    nms_thresh: float = 0.7
    # Proposals narrower or shorter than this are dropped (torchvision keeps
    # w, h >= 1e-3; Detectron2 keeps w, h > 0, i.e. 0.0 here with strict=True).
    min_box_size: float = 1e-3
    min_box_size_strict: bool = False
    box_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    # Training: anchor labelling and sampling.
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(
        fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
        allow_low_quality_matches=True,
    ))
    # Box loss: smooth L1 with this beta; 0 makes it plain L1 (Detectron2's choice).
    smooth_l1_beta: float = 1.0 / 9.0


@dataclass(frozen=True)
class PoolerConfig(_Checked):
    """Multi-level RoI feature extraction (Section 3 of the paper)."""

    kind: PoolerKind = "roi_align"
    resolution: int = 7
    # Bilinear samples per bin along each axis; 0 = adaptive, ceil(roi / resolution).
    sampling_ratio: int = 2
    # True shifts RoI corners by -0.5 px so that a box's continuous
    # coordinates line up with pixel centres (Detectron2's ROIAlignV2).
    aligned: bool = False
    # FPN level of a box: floor(canonical_level + log2(sqrt(wh) / canonical_box_size) + level_eps)
    canonical_box_size: float = 224.0
    canonical_level: int = 4
    level_eps: float = 1e-6


@dataclass(frozen=True)
class BoxHeadConfig(_Checked):
    """2-fc box head with class-specific regression, and detection post-processing."""

    pooler: PoolerConfig = field(default_factory=PoolerConfig)
    # Fully connected layers after pooling (FPN: 2); 0 = global average pooling
    # of the RoI features straight into the predictors (C4, after res5).
    num_fc: int = 2
    fc_dim: int = 1024
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    # Detections narrower or shorter than this are dropped (torchvision: 1e-2;
    # Detectron2 drops nothing here: None).
    min_box_size: float | None = 1e-2
    # Training: proposals (with the ground-truth boxes added) labelled and sampled.
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(
        fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=512, positive_fraction=0.25,
    ))
    # Box loss: smooth L1 with this beta; 0 makes it plain L1.
    smooth_l1_beta: float = 1.0 / 9.0


@dataclass(frozen=True)
class MaskHeadConfig(_Checked):
    """Small FCN: 4 conv 3x3, a 2x deconv, one S x S mask per class."""

    pooler: PoolerConfig = field(default_factory=lambda: PoolerConfig(resolution=14))
    conv_dims: tuple[int, ...] = (256, 256, 256, 256)
    # Output channels of the 2x deconvolution (None: those of the last conv,
    # or of the RoI features when there is no conv, as in C4).
    deconv_dim: int | None = None
    # How a mask is resized to its box and pasted into the image:
    # "torchvision": mask padded by one pixel, bilinear resize to the box rounded
    #   to integers; "detectron2": bilinear sampling at pixel centres of the exact box.
    paste_rule: PasteRule = "torchvision"
    threshold: float = 0.5
    # What the predictor's channels mean, and so its loss (the paper's Table 2b):
    # "sigmoid": one mask per class, per-pixel sigmoid on the true class only
    # (the paper's choice: masks do not compete); "softmax": a background
    # channel and K class channels competing through a per-pixel softmax;
    # "class_agnostic": one mask for every class.
    representation: MaskRepresentation = "sigmoid"
    # Training targets: the RoI's window of its ground-truth mask, resampled to
    # the head's output size by RoIAlign.
    # "torchvision": RoIAlign unaligned, adaptive sampling, soft targets (the
    #   averaged mask values in [0, 1]);
    # "detectron2": RoIAlign aligned (half-pixel), adaptive sampling, then
    #   binarised at 0.5.
    target_rule: MaskTargetRule = "torchvision"


# COCO's person keypoints, in the order of its annotations.
COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
# Keypoints that trade places under a horizontal flip (left <-> right), 0-based.
COCO_KEYPOINT_FLIP_PAIRS: tuple[tuple[int, int], ...] = tuple((i, i + 1) for i in range(1, 17, 2))
# COCO's "skeleton" (the limbs drawn between keypoints), 0-based.
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip


@dataclass(frozen=True)
class KeypointHeadConfig(_Checked):
    """Keypoint head (Mask R-CNN, Section 5): 8 conv 3x3, a 2x deconv and 2x bilinear upsampling.

    Each keypoint is a one-hot ``S x S`` mask over the RoI, ``S = 4 x`` the
    pooler's resolution (``heatmap_size``: 14 -> 28 by the deconv -> 56).
    """

    pooler: PoolerConfig = field(default_factory=lambda: PoolerConfig(resolution=14))
    conv_dims: tuple[int, ...] = (512,) * 8
    num_keypoints: int = 17
    # Optional metadata: names, the pairs a horizontal flip swaps (training
    # augmentation) and the limbs drawn between keypoints (``--viz``).
    keypoint_names: tuple[str, ...] = COCO_KEYPOINT_NAMES
    flip_pairs: tuple[tuple[int, int], ...] = COCO_KEYPOINT_FLIP_PAIRS
    skeleton: tuple[tuple[int, int], ...] = COCO_SKELETON
    # The model's keypoints put pixel i's centre at i + pixel_offset; COCO
    # results use pixel indices, so the offset is taken off when they are
    # written. 0.5 for models trained here (the datasets add 0.5 to COCO's
    # indices, as Detectron2 does); 0.0 for torchvision's, trained on raw indices.
    pixel_offset: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keypoint_names and len(self.keypoint_names) != self.num_keypoints:
            raise ValueError(f"{len(self.keypoint_names)} keypoint names for {self.num_keypoints} keypoints")
        for pair in (*self.flip_pairs, *self.skeleton):
            if len(pair) != 2 or not all(0 <= i < self.num_keypoints for i in pair):
                raise ValueError(f"keypoint pair {pair} is not two indices below {self.num_keypoints}")

    @property
    def heatmap_size(self) -> int:
        """Side of the predicted heatmaps: the deconv and the upsampling each double the pooled side."""
        return 4 * self.pooler.resolution


@dataclass(frozen=True)
class ModelConfig(_Checked):
    """The whole detector."""

    # "fpn": FPN P2-P6, RoIs pooled from the level their size suits (Figure 4, right);
    # "c4": ResNet up to res4, RoIs pooled at 14x14 from C4, res5 as the RoI head (Figure 4, left);
    # "dc5": the whole ResNet with res5 dilated (dilation 2, no subsampling: C5 at
    #   stride 16, as in R-FCN), one-level RPN on C5, the FPN model's box and
    #   mask heads pooling C5. C4 and DC5 put every anchor size on their one map.
    architecture: Architecture = "fpn"
    num_classes: int = 80  # foreground classes K
    class_names: tuple[str, ...] = ()
    # category_ids[label] is the dataset's id of contiguous label `label`.
    category_ids: tuple[int, ...] = ()
    input: InputConfig = field(default_factory=InputConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    box_head: BoxHeadConfig = field(default_factory=BoxHeadConfig)
    mask_head: MaskHeadConfig | None = field(default_factory=MaskHeadConfig)
    # Keypoint R-CNN's head (None: no keypoints).
    keypoint_head: KeypointHeadConfig | None = None
    # After mapping boxes back to the input image, clip them to it and drop
    # empty ones (Detectron2 does; torchvision does not).
    clip_to_original: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keypoint_head is not None and self.architecture == "c4":
            # Neither peer has one (Detectron2's Res5ROIHeads refuses keypoints), and
            # whether keypoints should pool through res5 would be a guess.
            raise ValueError("ModelConfig: a keypoint head needs architecture 'fpn' or 'dc5', not 'c4'")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.category_ids and len(self.category_ids) != self.num_classes:
            raise ValueError(f"{len(self.category_ids)} category ids for {self.num_classes} classes")

    def category_id(self, label: int) -> int:
        """The dataset's category id of a contiguous label (label + 1 when none are given)."""
        return self.category_ids[label] if self.category_ids else label + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _from_dict(cls: type, data: Any) -> Any:
    """Rebuild a (nested) config dataclass from ``dataclasses.asdict`` output."""
    if data is None:
        return None
    hints = get_type_hints(cls)
    kwargs = {}
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        hint = hints[f.name]
        sub = _dataclass_in(hint)
        if sub is not None and value is not None:
            value = _from_dict(sub, value)
        elif isinstance(value, list):
            value = _tuples(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def _tuples(value: Any) -> Any:
    """JSON lists back to (nested) tuples: ``[[1, 2], [3, 4]] -> ((1, 2), (3, 4))``."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _dataclass_in(hint: Any) -> type | None:
    if is_dataclass(hint):
        return hint
    for arg in getattr(hint, "__args__", ()):
        if is_dataclass(arg):
            return arg
    return None


# ---------------------------------------------------------------------------
# COCO class lists and presets of the two peer frameworks.

# torchvision numbers COCO classes by their category id (1..90), with "N/A"
# in the ten ids COCO does not use.
COCO_CATEGORY_NAMES: dict[int, str] = dict(
    enumerate(
        [
            "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
            "boat", "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter",
            "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear",
            "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag", "tie",
            "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
            "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A",
            "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
            "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
            "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A",
            "toilet", "N/A", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
            "microwave", "oven", "toaster", "sink", "refrigerator", "N/A", "book", "clock",
            "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
        ],  # fmt: skip
        start=1,
    )
)
COCO_IDS_80: tuple[int, ...] = tuple(i for i, n in COCO_CATEGORY_NAMES.items() if n != "N/A")


def torchvision_r50_fpn() -> ModelConfig:
    """torchvision's ``maskrcnn_resnet50_fpn``: 90 COCO id slots (ten of them "N/A")."""
    ids = tuple(COCO_CATEGORY_NAMES)
    return ModelConfig(
        num_classes=len(ids),
        class_names=tuple(COCO_CATEGORY_NAMES[i] for i in ids),
        category_ids=ids,
        anchors=AnchorConfig(stride_rule="torchvision"),
    )


def torchvision_keypoint_r50_fpn() -> ModelConfig:
    """torchvision's ``keypointrcnn_resnet50_fpn``: one class (person, COCO id 1), 17 keypoints, no masks.

    Its other defaults are Faster R-CNN's, as for ``maskrcnn_resnet50_fpn``,
    except training's multi-scale resize (shortest edge 640..800; 800 at test).
    """
    return ModelConfig(
        num_classes=1,
        class_names=("person",),
        category_ids=(1,),
        input=InputConfig(train_min_sizes=(640, 672, 704, 736, 768, 800)),
        anchors=AnchorConfig(stride_rule="torchvision"),
        mask_head=None,
        keypoint_head=KeypointHeadConfig(pixel_offset=0.0),
    )


def detectron2_r50_fpn() -> ModelConfig:
    """Detectron2's ``mask_rcnn_R_50_FPN_3x``: 80 contiguous COCO classes."""
    adaptive_v2 = PoolerConfig(resolution=7, sampling_ratio=0, aligned=True, level_eps=0.0)
    return ModelConfig(
        num_classes=len(COCO_IDS_80),
        class_names=tuple(COCO_CATEGORY_NAMES[i] for i in COCO_IDS_80),
        category_ids=COCO_IDS_80,
        input=InputConfig(
            resize_rule="detectron2",
            channel_order="BGR",
            pixel_range=255.0,
            pixel_mean=(103.530, 116.280, 123.675),
            pixel_std=(1.0, 1.0, 1.0),
        ),
        backbone=BackboneConfig(stride_in_1x1=True),
        anchors=AnchorConfig(round_to_int=False),
        rpn=RPNConfig(min_box_size=0.0, min_box_size_strict=True, post_nms_topk_train=1000,
                      smooth_l1_beta=0.0),
        box_head=BoxHeadConfig(pooler=adaptive_v2, min_box_size=None, smooth_l1_beta=0.0),
        mask_head=MaskHeadConfig(
            pooler=dataclasses.replace(adaptive_v2, resolution=14), paste_rule="detectron2",
            target_rule="detectron2",
        ),
        clip_to_original=True,
    )


def _unpadded(cfg: InputConfig) -> InputConfig:
    """Detectron2 pads a plain ResNet backbone's batch only to its largest image (its
    ``size_divisibility`` is 0 without an FPN), which moves the C4/C5 map's border
    and so its anchors and proposals."""
    return dataclasses.replace(cfg, size_divisibility=1)


def detectron2_r50_c4() -> ModelConfig:
    """Detectron2's ``mask_rcnn_R_50_C4_3x`` (``Base-RCNN-C4.yaml``, ``Res5ROIHeads``).

    Its defaults differ from the FPN model's in: one map (res4, stride 16)
    with all five anchor sizes; RPN top 6000 before NMS and 1000 after at test
    (12000 / 2000 in training); no padding beyond the batch's largest image;
    RoIAlignV2 14x14 on res4, then res5 per RoI; the box predictors on res5's
    spatial mean (no fc); the mask head only a deconv (2048 -> 256) and the
    predictor on res5's 7x7 output, so 14x14 masks.
    """
    base = detectron2_r50_fpn()
    pooler = dataclasses.replace(base.box_head.pooler, resolution=14)
    return base.replace(
        architecture="c4",
        input=_unpadded(base.input),
        rpn=dataclasses.replace(base.rpn, pre_nms_topk_test=6000, pre_nms_topk_train=12000,
                                post_nms_topk_train=2000),
        box_head=dataclasses.replace(base.box_head, pooler=pooler, num_fc=0),
        mask_head=dataclasses.replace(base.mask_head, pooler=pooler, conv_dims=(), deconv_dim=256),
    )


def detectron2_r50_dc5() -> ModelConfig:
    """Detectron2's ``mask_rcnn_R_50_DC5_3x`` (``Base-RCNN-DilatedC5.yaml``).

    res5 dilated (``RES5_DILATION: 2``) so C5 keeps stride 16; RPN on C5 with
    all five anchor sizes, C4's top-k (6000 / 1000 at test) and padding; the
    FPN model's 2-fc box head (RoIAlignV2 7x7) and 4-conv mask head (14x14),
    both pooling C5.
    """
    base = detectron2_r50_fpn()
    return base.replace(
        architecture="dc5",
        input=_unpadded(base.input),
        rpn=dataclasses.replace(base.rpn, pre_nms_topk_test=6000, pre_nms_topk_train=12000,
                                post_nms_topk_train=2000),
    )


@dataclass(frozen=True)
class SolverConfig(_Checked):
    """Optimisation: SGD with momentum, linear warm-up, step decay (the paper's schedule)."""

    # The paper's 1x schedule: 90k iterations at 16 images per iteration.
    # With another batch size the learning rate scales linearly, and (unless
    # iterations are given) the number of iterations inversely.
    iterations: int = 90_000
    batch_size: int = 16  # images per iteration, over all processes
    base_lr: float = 0.02  # at reference_batch_size
    reference_batch_size: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 1000
    warmup_factor: float = 1e-3  # the learning rate starts at base_lr * warmup_factor
    steps: tuple[float, ...] = (2 / 3, 8 / 9)  # decay points, as fractions of the iterations
    gamma: float = 0.1
    clip_grad_norm: float = 0.0  # 0 = no clipping
    amp: bool = True  # float16 autocast on CUDA (ignored on the CPU)
    bf16_cpu: bool = False  # bfloat16 autocast on the CPU
    checkpoint_period: int = 5000  # 0 = only the final model
    eval_period: int = 0  # 0 = validate only at the end
    log_period: int = 20
    num_workers: int = 2
    seed: int = 0
    # Consecutive non-finite losses tolerated (each skips its step) before stopping.
    max_nonfinite_steps: int = 5
    sync_bn: bool = False  # SyncBatchNorm across processes (norm="bn" only)

    def __post_init__(self) -> None:
        super().__post_init__()  # the closed ranges of _RANGES; then what a range cannot say
        rules = [
            (self.base_lr > 0, "base_lr", "a positive number"),
            (self.momentum < 1, "momentum", "in [0, 1)"),
            (self.warmup_factor > 0, "warmup_factor", "in (0, 1]"),
            (0 < self.gamma <= 1, "gamma", "in (0, 1]"),
            (all(0 < step for step in self.steps), "steps", "positive fractions of the iterations"),
            (self.max_nonfinite_steps >= 1, "max_nonfinite_steps", "at least 1"),
        ]
        for ok, name, rule in rules:
            if not ok:
                raise ValueError(f"SolverConfig.{name} = {getattr(self, name)!r} must be {rule}")

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / self.reference_batch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SolverConfig:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class Preset:
    """A named architecture (and, for the demo, a schedule) usable as ``--preset NAME``."""

    description: str
    model: ModelConfig
    solver: SolverConfig = field(default_factory=SolverConfig)


def _fpn_preset(depth: int, groups: int = 1, width: int = 64) -> ModelConfig:
    return ModelConfig(backbone=BackboneConfig(depth=depth, groups=groups, width_per_group=width))


def _c4_preset(depth: int) -> ModelConfig:
    """The paper's C4 model: 14x14 aligned RoIAlign on C4, res5 shared by the box and mask heads."""
    pooler = PoolerConfig(resolution=14, sampling_ratio=0, aligned=True, canonical_level=4)
    return ModelConfig(
        architecture="c4",
        backbone=BackboneConfig(depth=depth),
        rpn=RPNConfig(pre_nms_topk_test=6000, pre_nms_topk_train=12000, post_nms_topk_train=2000),
        box_head=BoxHeadConfig(pooler=pooler, num_fc=0),
        mask_head=MaskHeadConfig(pooler=pooler, conv_dims=(), deconv_dim=256),
    )


def _dc5_preset(depth: int) -> ModelConfig:
    """Dilated C5: the FPN model's heads on one stride-16 map, res5 dilated instead of subsampling."""
    return ModelConfig(
        architecture="dc5",
        backbone=BackboneConfig(depth=depth),
        rpn=RPNConfig(pre_nms_topk_test=6000, pre_nms_topk_train=12000, post_nms_topk_train=2000),
    )


def demo_model() -> ModelConfig:
    """A narrow ResNet-18-FPN with group norm for 128-pixel images: trains from scratch on 2 CPU cores."""
    return ModelConfig(
        input=InputConfig(min_size=128, max_size=128, train_min_sizes=(128,)),
        backbone=BackboneConfig(depth=18, norm="gn", base_channels=32, freeze_at=0),
        fpn=FPNConfig(out_channels=64),
        anchors=AnchorConfig(sizes=(16.0, 32.0, 64.0, 128.0, 256.0)),
        rpn=RPNConfig(pre_nms_topk_train=600, post_nms_topk_train=300, pre_nms_topk_test=300,
                      post_nms_topk_test=150,
                      sampler=dataclasses.replace(RPNConfig().sampler, batch_size_per_image=128)),
        box_head=BoxHeadConfig(fc_dim=256, detections_per_image=30,
                               sampler=dataclasses.replace(BoxHeadConfig().sampler, batch_size_per_image=64)),
        # Binarised targets, as the demo has been trained since v0.1.
        mask_head=MaskHeadConfig(conv_dims=(32, 32, 32, 32), target_rule="detectron2"),
    )


PRESETS: dict[str, Preset] = {
    "r50-fpn": Preset("ResNet-50-FPN Mask R-CNN, the paper's main model", _fpn_preset(50)),
    "r101-fpn": Preset("ResNet-101-FPN Mask R-CNN", _fpn_preset(101)),
    "r50-c4": Preset("ResNet-50-C4 Mask R-CNN: res5 as the RoI head (the paper's Figure 4, left)",
                     _c4_preset(50)),
    "r101-c4": Preset("ResNet-101-C4 Mask R-CNN", _c4_preset(101)),
    "r50-dc5": Preset("ResNet-50-DC5 Mask R-CNN: res5 dilated, RPN and FPN-style heads on its stride-16 map",
                      _dc5_preset(50)),
    "r101-dc5": Preset("ResNet-101-DC5 Mask R-CNN", _dc5_preset(101)),
    "x101-32x8d-fpn": Preset("ResNeXt-101 32x8d FPN Mask R-CNN", _fpn_preset(101, 32, 8)),
    "x101-64x4d-fpn": Preset("ResNeXt-101 64x4d FPN Mask R-CNN", _fpn_preset(101, 64, 4)),
    "r50-fpn-keypoints": Preset(
        "ResNet-50-FPN Keypoint R-CNN (17 COCO keypoints)", torchvision_keypoint_r50_fpn()
    ),
    "demo-r18-fpn": Preset(
        "small ResNet-18-FPN (group norm, 32-wide stem) for 128-px images, trains from scratch on a CPU",
        demo_model(),
        SolverConfig(iterations=900, batch_size=8, base_lr=0.04, reference_batch_size=16,
                     warmup_iters=100, steps=(0.75, 0.92), checkpoint_period=300, log_period=10,
                     num_workers=1),
    ),
}

