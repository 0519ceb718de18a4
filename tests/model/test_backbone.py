"""Tests for maskrcnn.model.backbone and maskrcnn.model.fpn: shapes, frozen BN, parameter count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maskrcnn.model.backbone import FrozenBatchNorm2d, ResNet
from maskrcnn.model.fpn import FPN, BackboneWithFPN


@pytest.fixture(scope="module")
def resnet50() -> ResNet:
    torch.manual_seed(0)
    return ResNet(depth=50).eval()


def _meta_resnet50(**kwargs: object) -> ResNet:
    """A ResNet-50 without storage: instant to build, enough for shapes and flags."""
    with torch.device("meta"):
        return ResNet(depth=50, **kwargs).eval()


def test_frozen_batch_norm_equals_batch_norm_in_eval() -> None:
    g = torch.Generator().manual_seed(0)
    c = 6
    bn = nn.BatchNorm2d(c, eps=1e-5).eval()
    frozen = FrozenBatchNorm2d(c, eps=1e-5)
    stats = {
        "weight": torch.randn(c, generator=g),
        "bias": torch.randn(c, generator=g),
        "running_mean": torch.randn(c, generator=g),
        "running_var": torch.rand(c, generator=g) + 0.1,
    }
    with torch.no_grad():
        for name, value in stats.items():
            getattr(bn, name).copy_(value)
            getattr(frozen, name).copy_(value)
    x = torch.randn(2, c, 5, 7, generator=g)
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-6)
    # Frozen: no parameters at all, only buffers that load from a checkpoint.
    assert list(frozen.parameters()) == []
    assert set(frozen.state_dict()) == set(stats)


def test_resnet50_feature_shapes(resnet50: ResNet) -> None:
    with torch.no_grad():
        c2, c3, c4, c5 = resnet50(torch.randn(1, 3, 64, 64))
    assert c2.shape == (1, 256, 16, 16)
    assert c3.shape == (1, 512, 8, 8)
    assert c4.shape == (1, 1024, 4, 4)
    assert c5.shape == (1, 2048, 2, 2)
    assert resnet50.out_channels == [256, 512, 1024, 2048]


@pytest.mark.parametrize("stride_in_1x1", [False, True])
def test_stride_in_1x1_moves_the_stride(stride_in_1x1: bool) -> None:
    model = _meta_resnet50(stride_in_1x1=stride_in_1x1)
    for name in ("layer2", "layer3", "layer4"):
        first = getattr(model, name)[0]
        assert first.conv1.stride == ((2, 2) if stride_in_1x1 else (1, 1))
        assert first.conv2.stride == ((1, 1) if stride_in_1x1 else (2, 2))
        assert first.downsample[0].stride == (2, 2)
    # layer1 never subsamples (the max pool did).
    assert model.layer1[0].conv1.stride == (1, 1) and model.layer1[0].conv2.stride == (1, 1)
    with torch.no_grad():
        shapes = [tuple(f.shape) for f in model(torch.empty(1, 3, 64, 64, device="meta"))]
    assert shapes == [(1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4), (1, 2048, 2, 2)]


def test_resnet50_parameter_count() -> None:
    resnet50 = _meta_resnet50()
    # torchvision's resnet50 has 25,557,032 parameters, of which the 2048 x 1000 fc
    # and its bias are 2,049,000: the body has 23,508,032. Batch norm weight and bias
    # count as parameters there; here they are frozen buffers. Conv weights alone:
    # 26,560 batch-norm channels, 2 values each, leave 23,454,912.
    conv = sum(p.numel() for p in resnet50.parameters())
    bn_affine = sum(
        m.weight.numel() + m.bias.numel() for m in resnet50.modules() if isinstance(m, FrozenBatchNorm2d)
    )
    assert bn_affine == 2 * 26_560
    assert conv == 23_454_912
    assert conv + bn_affine == 25_557_032 - (2048 * 1000 + 1000) == 23_508_032


@pytest.mark.parametrize(
    ("freeze_at", "frozen"),
    [
        (0, set()),
        (1, {"conv1"}),
        (2, {"conv1", "layer1"}),
        (5, {"conv1", "layer1", "layer2", "layer3", "layer4"}),
    ],
)
def test_freeze_at(freeze_at: int, frozen: set[str]) -> None:
    model = _meta_resnet50(freeze_at=freeze_at)
    for name, p in model.named_parameters():
        assert p.requires_grad == (name.split(".")[0] not in frozen), name


def test_fpn_shapes_and_p6(resnet50: ResNet) -> None:
    torch.manual_seed(0)
    body = resnet50
    fpn = FPN(in_channels=body.out_channels, out_channels=256)
    model = BackboneWithFPN(body=body, fpn=fpn, strides=(4, 8, 16, 32, 64)).eval()
    assert model.out_channels == 256
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(p.shape) for p in outputs] == [
        (1, 256, 16, 24),
        (1, 256, 8, 12),
        (1, 256, 4, 6),
        (1, 256, 2, 3),
        (1, 256, 1, 2),
    ]
    p5, p6 = outputs[3], outputs[4]
    assert torch.equal(p6, p5[:, :, ::2, ::2])


def test_fpn_top_down_on_constant_inputs() -> None:
    # 1x1 laterals as identity and zero bias, 3x3 outputs as identity: each P_i is
    # C_i plus all coarser C_j upsampled by nearest neighbour.
    fpn = FPN(in_channels=[1, 1, 1], out_channels=1)
    with torch.no_grad():
        for conv in fpn.lateral:
            conv.weight.fill_(1.0)
            conv.bias.zero_()
        for conv in fpn.output:
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 1.0
            conv.bias.zero_()
    c = [torch.full((1, 1, 8, 8), 1.0), torch.full((1, 1, 4, 4), 10.0), torch.full((1, 1, 2, 2), 100.0)]
    p = fpn(c)
    assert [float(x.unique().item()) for x in p] == [111.0, 110.0, 100.0, 100.0]
    assert p[3].shape == (1, 1, 1, 1)


def test_dilated_res5_keeps_stride_16() -> None:
    # DC5: res5's first block does not subsample and every 3x3 conv of res5 is dilated by 2
    # (padding 2), so C5 has C4's size; res2..res4 are unchanged.
    body = _meta_resnet50(res5_dilation=2)
    x = torch.zeros(1, 3, 64, 96, device="meta")
    c2, c3, c4, c5 = body(x)
    assert c4.shape[-2:] == c5.shape[-2:] == (4, 6)
    assert c5.shape[1] == 2048
    first = body.layer4[0]
    assert first.conv1.stride == first.conv2.stride == first.downsample[0].stride == (1, 1)
    assert all(b.conv2.dilation == (2, 2) and b.conv2.padding == (2, 2) for b in body.layer4)
    assert all(b.conv2.dilation == (1, 1) for b in body.layer3)


@pytest.mark.parametrize("norm", ["frozen_bn", "bn", "gn"])
@pytest.mark.parametrize("depth", [18, 50])
def test_residual_add_in_place_keeps_the_gradients(norm: str, depth: int) -> None:
    """The in-place residual add and ReLU give the gradients of ``relu(out + shortcut)`` out of place."""
    from maskrcnn.model import backbone as module

    torch.manual_seed(0)
    net = ResNet(depth=depth, norm=norm, freeze_at=0, base_channels=8).train()
    x = torch.randn(2, 3, 64, 64)
    outputs = net(x)
    params = [p for p in net.parameters() if p.requires_grad]
    got = torch.autograd.grad(sum((o * o).mean() for o in outputs), params)

    def out_of_place(out, x, shortcut):
        return torch.relu(out + (x if shortcut is None else module.conv_bn(x, shortcut[0], shortcut[1])))

    original = module.residual_relu
    module.residual_relu = out_of_place
    try:
        torch.manual_seed(0)
        outputs = net(x)
        want = torch.autograd.grad(sum((o * o).mean() for o in outputs), params)
    finally:
        module.residual_relu = original
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
