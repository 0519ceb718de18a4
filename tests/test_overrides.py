"""``--set key=value`` overrides: dotted keys, JSON values, coercion by the field's declared type."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest

from maskrcnn.config import PRESETS, SolverConfig
from maskrcnn.overrides import apply_overrides

DEMO = PRESETS["demo-r18-fpn"].model


@dataclass(frozen=True)
class Inner:
    kind: Literal["a", "b"] | None = "a"
    pairs: tuple[tuple[int, int], ...] = ((1, 2),)


@dataclass(frozen=True)
class Outer:
    """Not a config of the package: overrides work on any dataclass."""

    name: str = "x"
    scale: float = 1.0
    limit: float | None = None
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    extra: Inner | None = None


def test_nested_keys_reach_two_levels_and_leave_the_rest_alone() -> None:
    out = apply_overrides(DEMO, ["rpn.nms_thresh=0.6", "box_head.pooler.resolution=5"])
    assert out.rpn.nms_thresh == 0.6 and out.box_head.pooler.resolution == 5
    assert out.box_head.fc_dim == DEMO.box_head.fc_dim and out.mask_head == DEMO.mask_head
    assert DEMO.rpn.nms_thresh == 0.7 and DEMO.box_head.pooler.resolution == 7  # the original unchanged


def test_json_values_and_raw_text() -> None:
    out = apply_overrides(DEMO, [
        "anchors.sizes=[8, 16, 32, 64, 128]",  # JSON list -> tuple, ints -> floats
        "input.resize_rule=detectron2",  # not JSON: the raw text
        "clip_to_original=true",
        "box_head.min_box_size=null",
        "num_classes=7",
        "rpn.nms_thresh=0.65",
        "rpn.nms_thresh=0.5",  # later assignments win
    ])
    assert out.anchors.sizes == (8.0, 16.0, 32.0, 64.0, 128.0) and isinstance(out.anchors.sizes[0], float)
    assert out.input.resize_rule == "detectron2"
    assert out.clip_to_original is True
    assert out.box_head.min_box_size is None
    assert out.num_classes == 7
    assert out.rpn.nms_thresh == 0.5


def test_the_solver_is_a_config_like_any_other() -> None:
    solver = apply_overrides(SolverConfig(), ["base_lr=0.005", "steps=[0.5, 0.75]", "amp=false"])
    assert solver.base_lr == 0.005 and solver.steps == (0.5, 0.75) and solver.amp is False


def test_a_float_field_given_an_int_holds_a_float() -> None:
    out = apply_overrides(DEMO, ["rpn.nms_thresh=1"])
    assert out.rpn.nms_thresh == 1.0 and isinstance(out.rpn.nms_thresh, float)
    with pytest.raises(ValueError, match=r"^--set num_classes: expected an int, got 2\.5$"):
        apply_overrides(DEMO, ["num_classes=2.5"])


def test_an_optional_field_holding_none_still_has_a_type() -> None:
    cfg = apply_overrides(DEMO, ["box_head.min_box_size=null"])
    with pytest.raises(ValueError, match=r"^--set box_head.min_box_size: expected a float or null, got 'ab'"):
        apply_overrides(cfg, ["box_head.min_box_size=ab"])
    assert apply_overrides(cfg, ["box_head.min_box_size=2"]).box_head.min_box_size == 2.0
    assert apply_overrides(Outer(), ["limit=3"]).limit == 3.0
    with pytest.raises(ValueError, match="^--set limit: expected a float or null"):
        apply_overrides(Outer(), ["limit=[3]"])


def test_a_wrong_choice_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError) as info:
        apply_overrides(DEMO, ["box_head.pooler.kind=roi_algin"])
    message = str(info.value)
    assert message.startswith("--set box_head.pooler.kind:")
    assert "'roi_algin'" in message
    assert all(kind in message for kind in ("'roi_align'", "'roi_pool'", "'roi_warp'"))
    assert apply_overrides(DEMO, ["box_head.pooler.kind=roi_pool"]).box_head.pooler.kind == "roi_pool"
    # Literal[...] | None: null is one of the choices.
    assert apply_overrides(Outer(), ["inner.kind=null"]).inner.kind is None
    with pytest.raises(ValueError, match=r"^--set inner.kind: 'c' is not one of: 'a', 'b' \(or null\)$"):
        apply_overrides(Outer(), ["inner.kind=c"])


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("rpn.nms=0.5", r"^--set rpn\.nms: RPNConfig has no field 'nms' \(.*fields: .*nms_thresh"),
        ("colour=red", r"^--set colour: ModelConfig has no field 'colour' \(.*fields: anchors, architecture"),
        ("box_head.pooler.size=3", r"PoolerConfig has no field 'size'.*resolution"),
        ("rpn.nms_tresh=0.5", r"did you mean 'rpn\.nms_thresh'\?"),
    ],
)
def test_an_unknown_field_is_named_with_the_valid_ones(assignment: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_overrides(DEMO, [assignment])


def test_a_field_of_a_nested_config_is_suggested_with_its_full_key() -> None:
    message = r"^--set pairs: Outer has no field 'pairs' \(did you mean 'inner\.pairs'\? fields: extra, flag"
    with pytest.raises(ValueError, match=message):
        apply_overrides(Outer(), ["pairs=[[1, 2]]"])


def test_tuple_fields() -> None:
    cfg = apply_overrides(DEMO, ["input.train_min_sizes=[96,128]", "rpn.box_weights=[1, 1, 2, 2]"])
    assert cfg.input.train_min_sizes == (96, 128)
    assert cfg.rpn.box_weights == (1.0, 1.0, 2.0, 2.0)
    with pytest.raises(ValueError, match=r"^--set rpn.box_weights: expected a list of 4 floats, got 2 items"):
        apply_overrides(DEMO, ["rpn.box_weights=[1, 2]"])
    key = "input.train_min_sizes"
    with pytest.raises(ValueError, match=rf"^--set {key}: expected a list of ints, got \[96\.5\]$"):
        apply_overrides(DEMO, [f"{key}=[96.5]"])
    with pytest.raises(ValueError, match=rf"^--set {key}: expected a list of ints \(a JSON list\), got 96$"):
        apply_overrides(DEMO, [f"{key}=96"])
    # Nested lists -> nested tuples.
    assert apply_overrides(Outer(), ["inner.pairs=[[3, 4], [5, 6]]"]).inner.pairs == ((3, 4), (5, 6))
    with pytest.raises(ValueError, match="^--set inner.pairs: expected a list of lists"):
        apply_overrides(Outer(), ["inner.pairs=[[3, 4, 5]]"])


@pytest.mark.parametrize("text", ["yes", "1", "0", '"true"', "True"])
def test_a_bool_is_only_json_true_or_false(text: str) -> None:
    with pytest.raises(ValueError, match=r"^--set clip_to_original: expected a bool \(true or false\)"):
        apply_overrides(DEMO, [f"clip_to_original={text}"])
    assert apply_overrides(Outer(), ["flag=true"]).flag is True
    assert apply_overrides(Outer(flag=True), ["flag=false"]).flag is False


def test_a_string_field_keeps_text_that_looks_like_json() -> None:
    assert apply_overrides(Outer(), ["name=1"]).name == "1"
    assert apply_overrides(Outer(), ["name=a=b"]).name == "a=b"  # the first '=' splits


def test_a_nested_config_from_a_json_object_or_null() -> None:
    out = apply_overrides(Outer(), ['extra={"kind": "b"}'])
    assert out.extra == Inner(kind="b")
    assert apply_overrides(out, ["extra=null"]).extra is None
    assert apply_overrides(DEMO, ["mask_head=null"]).mask_head is None
    with pytest.raises(ValueError, match=r"^--set extra.kind: extra is null \(off\).*--set extra=\{\}"):
        apply_overrides(Outer(), ["extra.kind=b"])
    with pytest.raises(ValueError, match=r"^--set extra: Inner has no field 'sort' \(fields: kind, pairs\)"):
        apply_overrides(Outer(), ['extra={"sort": "b"}'])


def test_the_configs_own_checks_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"^--set rpn.nms_thresh: RPNConfig.nms_thresh = 1.5 is outside"):
        apply_overrides(DEMO, ["rpn.nms_thresh=1.5"])
    with pytest.raises(ValueError, match=r"^--set base_lr: SolverConfig.base_lr = 0.0 must be"):
        apply_overrides(SolverConfig(), ["base_lr=0"])


def test_malformed_assignments() -> None:
    with pytest.raises(ValueError, match="^--set expects key=value, got 'base_lr'$"):
        apply_overrides(SolverConfig(), ["base_lr"])
    with pytest.raises(ValueError, match=r"^--set num_classes.x: 'x' is inside a value of type int"):
        apply_overrides(DEMO, ["num_classes.x=1"])
    assert apply_overrides(DEMO, []) is DEMO


def test_every_config_field_round_trips_through_its_own_json() -> None:
    """Each field of the presets can be set to its own value written as JSON (the coercion is complete)."""
    import json

    def assignments(obj: object, prefix: str = "") -> list[str]:
        found = []
        for f in dataclasses.fields(obj):  # type: ignore[arg-type]
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                found += assignments(value, f"{prefix}{f.name}.")
            else:
                found.append(f"{prefix}{f.name}={json.dumps(value)}")
        return found

    for preset in PRESETS.values():
        for config in (preset.model, preset.solver):
            assert apply_overrides(config, assignments(config)) == config
