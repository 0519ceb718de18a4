"""ResNet and ResNeXt backbones, normally with frozen batch norm (He et al. 2016; Xie et al. 2017).

The stem (7x7 conv, stride 2, 3x3 max pool, stride 2) is followed by four
stages of bottleneck blocks, ``layer1 .. layer4`` (the paper's res2..res5,
C2..C5, strides 4, 8, 16, 32). A bottleneck is 1x1 -> 3x3 -> 1x1 with a
projection shortcut on the first block of each stage. ResNeXt makes the 3x3
a grouped convolution and widens it: ``groups x width_per_group`` channels
in the first stage, doubling with each stage.

Detection fine-tunes from ImageNet with tiny per-GPU batches, where batch
statistics are useless, so batch norm is frozen into a per-channel affine map.
Training from scratch (the small CPU demo) needs a real normaliser instead:
``norm="gn"`` (group norm) or ``"bn"``. ResNet-18/34 use basic blocks.
That map is folded into the preceding convolution at every forward
(``conv_bn``): one convolution with scaled weights and a bias instead of a
convolution, a multiply and an add over the activations. The stored tensors
stay those of the checkpoint, and gradients still reach the conv weights.

Shapes: ``(N, 3, H, W)`` -> C2..C5 of ``(N, 256 * 2^i, H / 2^(i+2), W / 2^(i+2))``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# Blocks per stage res2..res5; 18 and 34 use basic (two 3x3) blocks, the others bottlenecks.
BLOCKS_PER_STAGE = {
    18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)
}
BASIC_DEPTHS = (18, 34)
NormKind = str  # "frozen_bn" | "bn" | "gn"


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters: ``y = x * scale + shift``."""

    def __init__(self, num_features: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def scale_and_shift(self) -> tuple[Tensor, Tensor]:
        """``(C,)`` factors of ``y = x * scale + shift``."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.scale_and_shift()
        return x * scale[None, :, None, None].to(x.dtype) + shift[None, :, None, None].to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` without ``F.group_norm``'s Python check that a group holds more than one value.

    That check reads the feature map's size, which an exported graph (its
    image size read from the data) cannot; the computation is the same.
    """

    def forward(self, x: Tensor) -> Tensor:
        return torch.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def make_norm(kind: NormKind, channels: int, eps: float) -> nn.Module:
    """Frozen batch norm (fine-tuning), batch norm, or group norm of 32 groups (training from scratch)."""
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels, eps=eps)
    if kind == "bn":
        return nn.BatchNorm2d(channels, eps=eps)
    if kind == "gn":
        return GroupNorm(min(32, channels), channels, eps=eps)
    raise ValueError(f"unknown norm {kind!r}: expected frozen_bn, bn or gn")


def conv_bn(x: Tensor, conv: nn.Conv2d, norm: nn.Module) -> Tensor:
    """``norm(conv(x))``; a frozen batch norm is folded into the convolution's weights and bias."""
    if not isinstance(norm, FrozenBatchNorm2d):
        return norm(conv(x))
    # The statistics stay float32 (model.precision); the folded weights are rounded once to the conv's type.
    scale, shift = norm.scale_and_shift()
    weight = (conv.weight * scale[:, None, None, None]).to(conv.weight.dtype)
    shift = shift.to(conv.weight.dtype)
    return F.conv2d(x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)


def projection(
    in_channels: int, out_channels: int, stride: int, norm: NormKind, eps: float
) -> nn.Module | None:
    """The 1x1 conv + norm shortcut of a block that changes channels or resolution; None otherwise."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), make_norm(norm, out_channels, eps)
    )


def residual_relu(out: Tensor, x: Tensor, shortcut: nn.Module | None) -> Tensor:
    """``relu(out + shortcut(x))``, the identity when there is no projection.

    In place: ``out`` is a fresh convolution or norm output whose backward does
    not read it, so no map-sized buffer is allocated (autograd would refuse the
    backward if one did).
    """
    return out.add_(x if shortcut is None else conv_bn(x, shortcut[0], shortcut[1])).relu_()


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34); residual sum, then ReLU."""

    def __init__(
        self, *, in_channels: int, out_channels: int, stride: int, norm: NormKind, eps: float
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = make_norm(norm, out_channels, eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = make_norm(norm, out_channels, eps)
        self.downsample = projection(in_channels, out_channels, stride, norm, eps)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu_(conv_bn(x, self.conv1, self.bn1))
        return residual_relu(conv_bn(out, self.conv2, self.bn2), x, self.downsample)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand; residual sum, then ReLU."""

    def __init__(
        self,
        *,
        in_channels: int,
        width: int,
        out_channels: int,
        stride: int,
        groups: int,
        stride_in_1x1: bool,
        norm: NormKind,
        eps: float,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        # MSRA's ResNets subsample in the first 1x1 conv, PyTorch's in the 3x3.
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=s1, bias=False)
        self.bn1 = make_norm(norm, width, eps)
        # A dilated 3x3 (DC5's res5) keeps its output size with padding = dilation.
        self.conv2 = nn.Conv2d(width, width, 3, stride=s3, padding=dilation, dilation=dilation, groups=groups,
                               bias=False)
        self.bn2 = make_norm(norm, width, eps)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = make_norm(norm, out_channels, eps)
        self.downsample = projection(in_channels, out_channels, stride, norm, eps)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu_(conv_bn(x, self.conv1, self.bn1))
        out = torch.relu_(conv_bn(out, self.conv2, self.bn2))
        return residual_relu(conv_bn(out, self.conv3, self.bn3), x, self.downsample)


def stage_channels(stage: int, depth: int, base_channels: int) -> int:
    """Output channels of stage ``stage`` (0 = res2)."""
    expansion = 1 if depth in BASIC_DEPTHS else 4
    return expansion * base_channels * 2**stage


def resnet_stage(
    stage: int,
    in_channels: int,
    *,
    depth: int,
    groups: int = 1,
    width_per_group: int = 64,
    stride_in_1x1: bool = False,
    norm: NormKind = "frozen_bn",
    eps: float = 1e-5,
    base_channels: int = 64,
    dilation: int = 1,
) -> nn.Sequential:
    """Stage ``stage`` (0 = res2 ... 3 = res5) of a ResNet: its blocks, the first one subsampling.

    ``dilation > 1`` dilates every 3x3 conv of the stage and drops its
    subsampling instead (the stage keeps the stride of the one before: DC5's
    res5 at stride 16, as in R-FCN and Detectron2's ``RES5_DILATION``).
    """
    blocks = BLOCKS_PER_STAGE[depth][stage]
    stride = 2 if stage > 0 and dilation == 1 else 1
    if dilation != 1 and depth in BASIC_DEPTHS:
        raise ValueError(f"dilated stages need bottleneck blocks; ResNet-{depth} has basic blocks")
    out_channels = stage_channels(stage, depth, base_channels)
    if depth in BASIC_DEPTHS:
        return nn.Sequential(*(
            BasicBlock(in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels,
                       stride=stride if i == 0 else 1, norm=norm, eps=eps)
            for i in range(blocks)
        ))
    return nn.Sequential(*(
        Bottleneck(
            in_channels=in_channels if i == 0 else out_channels,
            width=groups * width_per_group * 2**stage,
            out_channels=out_channels,
            stride=stride if i == 0 else 1,
            groups=groups,
            stride_in_1x1=stride_in_1x1,
            norm=norm,
            eps=eps,
            dilation=dilation,
        )
        for i in range(blocks)
    ))


def init_convs(module: nn.Module) -> None:
    """He initialisation (fan out) of every convolution, as for ResNets trained from scratch."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class ResNet(nn.Module):
    """ResNet / ResNeXt body returning C2..C5.

    ``base_channels`` is the stem's width (64 in the published networks);
    bottleneck stages output ``4 * base * 2^i`` channels, basic ones ``base * 2^i``.
    ``num_stages=3`` stops after res4, for the C4 detector whose RoI head runs res5.
    ``res5_dilation=2`` dilates res5 instead of subsampling (DC5: C5 at stride 16).
    """

    def __init__(
        self,
        *,
        depth: int = 50,
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
        norm: NormKind = "frozen_bn",
        eps: float = 1e-5,
        freeze_at: int = 2,
        base_channels: int = 64,
        num_stages: int = 4,
        res5_dilation: int = 1,
    ) -> None:
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"ResNet depth must be one of {sorted(BLOCKS_PER_STAGE)}, got {depth}")
        self.conv1 = nn.Conv2d(3, base_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(norm, base_channels, eps)
        in_channels = base_channels
        self.out_channels: list[int] = []
        self.num_stages = num_stages
        for stage in range(num_stages):
            layer = resnet_stage(
                stage, in_channels, depth=depth, groups=groups, width_per_group=width_per_group,
                stride_in_1x1=stride_in_1x1, norm=norm, eps=eps, base_channels=base_channels,
                dilation=res5_dilation if stage == 3 else 1,
            )
            self.add_module(f"layer{stage + 1}", layer)
            in_channels = stage_channels(stage, depth, base_channels)
            self.out_channels.append(in_channels)
        init_convs(self)
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Stop gradients to the stem (``freeze_at >= 1``) and stages res2..res{freeze_at}."""
        frozen: list[nn.Module] = [self.conv1, self.bn1] if freeze_at >= 1 else []
        frozen += [getattr(self, f"layer{k - 1}") for k in range(2, freeze_at + 1)]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = torch.relu_(conv_bn(x, self.conv1, self.bn1))
        x = nn.functional.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        features = []
        for stage in range(self.num_stages):
            x = getattr(self, f"layer{stage + 1}")(x)
            features.append(x)
        return features
