"""Config validation where a config is built: literal choices and numeric ranges."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from maskrcnn import config
from maskrcnn.config import (
    PRESETS,
    BoxHeadConfig,
    InputConfig,
    MaskHeadConfig,
    ModelConfig,
    PoolerConfig,
    RPNConfig,
    SamplerConfig,
    SolverConfig,
    check_config,
)
from maskrcnn.overrides import apply_overrides

CONFIG_CLASSES = [c for c in vars(config).values()
                  if isinstance(c, type) and dataclasses.is_dataclass(c) and c.__name__.endswith("Config")]


def test_every_literal_field_of_every_config_class_is_checked() -> None:
    """Each Literal field refuses a value outside its choices, naming all of them."""
    checked = 0
    for cls in CONFIG_CLASSES:
        hints = typing.get_type_hints(cls)
        makers = {ModelConfig: config.torchvision_r50_fpn, SamplerConfig: lambda: RPNConfig().sampler}
        default = makers.get(cls, cls)()
        for f in dataclasses.fields(cls):
            choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is typing.Literal \
                else None
            if choices is None:
                continue
            with pytest.raises(ValueError, match=f"{cls.__name__}.{f.name} = 'bogus' is not one of") as info:
                dataclasses.replace(default, **{f.name: "bogus"})
            assert all(repr(c) in str(info.value) for c in choices)
            checked += 1
    # resize_rule, channel_order, norm, stride_rule, kind, paste_rule, representation, target_rule,
    # architecture at least.
    assert checked >= 9


def test_every_preset_and_peer_config_is_valid() -> None:
    for preset in PRESETS.values():
        check_config(preset.model)
    for make in (config.torchvision_r50_fpn, config.detectron2_r50_fpn, config.torchvision_keypoint_r50_fpn):
        check_config(make())


@pytest.mark.parametrize(("cls", "field", "value", "message"), [
    (RPNConfig, "nms_thresh", 1.5, r"outside \[0.0, 1.0\]"),
    (BoxHeadConfig, "score_thresh", -0.1, r"outside \[0.0, 1.0\]"),
    (BoxHeadConfig, "detections_per_image", 0, r"outside \[1, inf\]"),
    (PoolerConfig, "sampling_ratio", -1, r"outside \[0, inf\]"),
    (InputConfig, "min_size", 0, r"outside \[1, inf\]"),
    (InputConfig, "flip_prob", float("nan"), "not a finite number"),
    (SolverConfig, "weight_decay", float("inf"), "not a finite number"),
    (MaskHeadConfig, "threshold", "0.5", "not a finite number"),
    (SolverConfig, "momentum", 1.0, r"must be in \[0, 1\)"),
    (SolverConfig, "steps", (0.5, 0.0), "must be positive fractions"),
    (SolverConfig, "base_lr", -0.02, r"outside \[0, inf\]"),
    (SolverConfig, "batch_size", 0, r"outside \[1, inf\]"),
])
def test_numbers_outside_their_range_are_refused(cls: type, field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"{cls.__name__}.{field} = .* {message}"):
        cls(**{field: value})


@pytest.mark.parametrize(("field", "value", "message"), [
    ("positive_fraction", 1.5, r"outside \[0.0, 1.0\]"),
    ("batch_size_per_image", 0, r"outside \[1, inf\]"),
    ("bg_iou_thresh", 0.8, "is above fg_iou_thresh"),
])
def test_sampler_numbers_are_checked(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"SamplerConfig.{field} = .*{message}"):
        dataclasses.replace(RPNConfig().sampler, **{field: value})


def test_rpn_and_box_head_share_one_sampler_config() -> None:
    assert type(RPNConfig().sampler) is type(BoxHeadConfig().sampler) is SamplerConfig
    assert RPNConfig().sampler.allow_low_quality_matches
    assert not BoxHeadConfig().sampler.allow_low_quality_matches


def test_keypoints_with_c4_are_refused() -> None:
    with pytest.raises(ValueError, match="keypoint head needs architecture 'fpn' or 'dc5'"):
        config.torchvision_keypoint_r50_fpn().replace(architecture="c4")


def test_optional_fields_accept_none() -> None:
    assert BoxHeadConfig(min_box_size=None).min_box_size is None
    assert MaskHeadConfig(deconv_dim=None).deconv_dim is None


def test_set_with_a_misspelt_choice_names_the_valid_ones() -> None:
    cfg = PRESETS["r50-fpn"].model
    with pytest.raises(ValueError) as info:
        apply_overrides(cfg, ["box_head.pooler.kind=roi_algin"])
    message = str(info.value)
    assert message.startswith("--set box_head.pooler.kind:")
    assert "'roi_algin'" in message and all(k in message for k in ("'roi_align'", "'roi_pool'", "'roi_warp'"))
    assert apply_overrides(cfg, ["box_head.pooler.kind=roi_pool"]).box_head.pooler.kind == "roi_pool"


def test_set_with_a_number_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"--set rpn.nms_thresh: RPNConfig.nms_thresh = 1.5 is outside"):
        apply_overrides(PRESETS["r50-fpn"].model, ["rpn.nms_thresh=1.5"])


def test_checkpoint_configs_are_checked_when_read() -> None:
    data = config.torchvision_r50_fpn().to_dict()
    data["mask_head"]["paste_rule"] = "nearest"
    with pytest.raises(ValueError, match="MaskHeadConfig.paste_rule = 'nearest'"):
        ModelConfig.from_dict(data)
