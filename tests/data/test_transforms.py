"""The input transform against tables computed by the peers' own code.

``tests/reference/input_sizes.csv`` was made by ``tests/reference/tools/make_size_table.py``
in the peer virtualenv: for about 3000 image sizes (tiny to 12000 px, both
orientations, odd and even, around the point where the long side takes over)
and three (min_size, max_size) settings, it holds torchvision 0.29's network
input size, padded size, feature-map sizes and anchor strides, and Detectron2's
input and padded sizes.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from maskrcnn.config import InputConfig, detectron2_r50_fpn, torchvision_r50_fpn
from maskrcnn.data.transforms import make_batch, padded_size, resized_size
from maskrcnn.model.anchors import AnchorGenerator
from maskrcnn.model.build import build_model

TABLE = Path(__file__).resolve().parents[1] / "reference" / "input_sizes.csv"


def _rows() -> list[dict[str, str]]:
    with open(TABLE, newline="") as f:
        return list(csv.DictReader(f))


def _pairs(cell: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in p.split("x")) for p in cell.split()]  # type: ignore[misc]


def test_table_is_large_and_varied() -> None:
    rows = _rows()
    sizes = {(int(r["height"]), int(r["width"])) for r in rows}
    assert len(sizes) >= 3000
    assert any(h > w for h, w in sizes) and any(h < w for h, w in sizes) and any(h == w for h, w in sizes)
    assert min(min(s) for s in sizes) == 1 and max(max(s) for s in sizes) > 10000
    settings = {(int(r["min_size"]), int(r["max_size"])) for r in rows}
    assert settings == {(800, 1333), (640, 1066), (1024, 1024)}


@pytest.mark.parametrize("rule", ["torchvision", "detectron2"])
def test_resized_and_padded_sizes_match_the_peer(rule: str) -> None:
    prefix = "tv" if rule == "torchvision" else "d2"
    wrong, refused = [], 0
    for r in _rows():
        cfg = InputConfig(min_size=int(r["min_size"]), max_size=int(r["max_size"]), resize_rule=rule)
        h, w = int(r["height"]), int(r["width"])
        if not r[f"{prefix}_h"] or r[f"{prefix}_h"] == "0" or r[f"{prefix}_w"] == "0":
            # The peer fails on this size (a side resized to 0): we refuse it with a message.
            with pytest.raises(ValueError, match="too thin"):
                resized_size(h, w, cfg)
            refused += 1
            continue
        got = resized_size(h, w, cfg)
        want = (int(r[f"{prefix}_h"]), int(r[f"{prefix}_w"]))
        pad = padded_size([got], cfg.size_divisibility)
        want_pad = (int(r[f"{prefix}_pad_h"]), int(r[f"{prefix}_pad_w"]))
        if got != want or pad != want_pad:
            wrong.append((r["min_size"], r["max_size"], h, w, got, want, pad, want_pad))
    assert not wrong, f"{len(wrong)} sizes differ from {rule}, e.g. {wrong[:5]}"
    assert refused < 1000  # only extreme aspect ratios (e.g. 1 x 5000)


def test_torchvision_anchor_strides_match_the_peer() -> None:
    """The anchors' stride per level and axis, for every padded size in the table (P6 included)."""
    gen = AnchorGenerator(sizes=((32.0,), (64.0,), (128.0,), (256.0,), (512.0,)), aspect_ratios=(1.0,),
                          strides=(4, 8, 16, 32, 64), round_to_int=True, stride_rule="torchvision")
    checked = 0
    for r in _rows():
        if not r["tv_h"]:
            continue
        grids = _pairs(r["tv_grids"])
        padded = (int(r["tv_pad_h"]), int(r["tv_pad_w"]))
        for (sy, sx), (oy, ox) in zip(_pairs(r["tv_anchor_strides"]), gen.level_strides(grids, padded),
                                      strict=True):
            # A zero in the table: that axis has one cell, where the stride places nothing.
            assert (sy in (0, oy)) and (sx in (0, ox)), (r, grids)
            checked += 1
    assert checked > 10000


def test_feature_map_sizes_match_torchvision() -> None:
    """Our R50-FPN gives torchvision's P2-P6 sizes for every padded size in the table (meta tensors)."""
    model = build_model(torchvision_r50_fpn()).to("meta").eval()
    seen: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for r in _rows():
        if r["tv_h"]:
            seen[(int(r["tv_pad_h"]), int(r["tv_pad_w"]))] = _pairs(r["tv_grids"])
    assert len(seen) > 150
    with torch.no_grad():
        for (h, w), grids in seen.items():
            features = model.backbone(torch.empty(1, 3, h, w, device="meta"))
            assert [(f.shape[-2], f.shape[-1]) for f in features] == grids, (h, w)


@pytest.mark.parametrize("config", [torchvision_r50_fpn, detectron2_r50_fpn])
def test_batches_mixing_orientations_pad_to_the_largest_sides(config) -> None:
    cfg = dataclasses.replace(config().input, min_size=64, max_size=107)
    portrait = np.zeros((90, 60, 3), np.uint8)
    landscape = np.zeros((40, 71, 3), np.uint8)
    batch = make_batch([portrait, landscape], cfg)
    sizes = [resized_size(90, 60, cfg), resized_size(40, 71, cfg)]
    assert batch.image_sizes == sizes
    assert tuple(batch.tensor.shape[-2:]) == padded_size(sizes, 32)
    assert batch.original_sizes == [(90, 60), (40, 71)]


def test_unknown_resize_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="InputConfig.resize_rule = 'foo' is not one of"):
        dataclasses.replace(InputConfig(), resize_rule="foo")  # type: ignore[arg-type]
    # And the transform itself never falls back to one of the rules.
    cfg = InputConfig()
    object.__setattr__(cfg, "resize_rule", "foo")
    with pytest.raises(ValueError, match="unknown resize_rule 'foo'"):
        resized_size(100, 200, cfg)
