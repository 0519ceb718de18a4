"""Feature Pyramid Network (Lin et al. 2017), P2-P6 on top of C2-C5; and the one-map backbone of C4 and DC5.

Each C_i gets a 1x1 lateral conv to ``out_channels``; going down from C5 the
coarser map is upsampled 2x (nearest) and added; a 3x3 conv smooths each sum
into P_i. P6 subsamples P5 with stride 2 (it only serves the RPN's largest
anchors). Padding every image to a multiple of 32 makes each level exactly
half the size of the one below, so the 2x upsampling always lines up.

Shapes: C2..C5 ``(N, C_i, H / s_i, W / s_i)`` -> P2..P6 ``(N, out_channels, H / s, W / s)``,
strides 4, 8, 16, 32, 64.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from .backbone import ResNet


class FPN(nn.Module):
    """Top-down pathway with lateral connections, plus a max-pooled P6."""

    def __init__(self, *, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.out_channels = out_channels
        for conv in [*self.lateral, *self.output]:
            nn.init.kaiming_uniform_(conv.weight, a=1)  # "Xavier" fill of Caffe2, as both peers do
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        top = self.lateral[-1](features[-1])
        outputs = [self.output[-1](top)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            outputs.insert(0, self.output[i](top))
        # P6: stride-2 subsampling of P5 (a 1x1 max pool).
        outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        return outputs


class BackboneWithFPN(nn.Module):
    """ResNet body followed by the FPN: image tensor -> [P2, P3, P4, P5, P6]."""

    def __init__(self, *, body: ResNet, fpn: FPN, strides: tuple[int, ...]) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.strides = strides
        self.out_channels = fpn.out_channels

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.fpn(self.body(images))


class SingleMapBackbone(nn.Module):
    """The ResNet body's last stage as the only feature map, at stride 16.

    C4: the body stops after res4 (res5 runs per RoI). DC5: the body runs a
    dilated res5 that keeps res4's stride. Image tensor -> ``[C4]`` or ``[C5]``.
    """

    def __init__(self, *, body: ResNet, stride: int = 16) -> None:
        super().__init__()
        self.body = body
        self.strides = (stride,)
        self.out_channels = body.out_channels[-1]

    def forward(self, images: Tensor) -> list[Tensor]:
        return [self.body(images)[-1]]
