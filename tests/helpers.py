"""Small models for fast tests: R50-FPN on tiny inputs with seeded random weights."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch

from maskrcnn.checkpoint import save_model
from maskrcnn.cli import main
from maskrcnn.config import PRESETS, InputConfig, ModelConfig
from maskrcnn.model import build_model
from tests.peers import write_fixture_weights


def small_config(num_classes: int = 3) -> ModelConfig:
    """The paper's R50-FPN with images resized to 128 px, so that a forward takes well under a second."""
    return ModelConfig(
        num_classes=num_classes,
        class_names=tuple(f"thing{i}" for i in range(num_classes)),
        category_ids=tuple(range(10, 10 + num_classes)),
        input=InputConfig(min_size=128, max_size=192),
    )


def random_state(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded weights that give a few confident detections: the classifier is pushed to foreground."""
    torch.manual_seed(seed)
    model = build_model(config)
    state = model.state_dict()
    state["box.head.cls_score.bias"] = torch.tensor([-4.0] + [2.0] * config.num_classes)
    return state


def write_small_checkpoint(path: Path, config: ModelConfig | None = None) -> Path:
    config = config or small_config()
    save_model(path, config, random_state(config))
    return path


def with_input(config: ModelConfig, **changes: object) -> ModelConfig:
    return config.replace(input=dataclasses.replace(config.input, **changes))


def error_line(stderr: str, *names: str) -> str:
    """The one error line of a command's stderr (no traceback), checked to name every one of ``names``."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    for name in names:
        assert name in lines[0], f"{name!r} not in {lines[0]!r}"
    return lines[0]


def predict_fixture_and_compare(
    fixture: Path, compare: Path, tmp_path: Path, *, images: Path | None = None, weights: Path | None = None,
    runtime: str | None = None,
) -> str:
    """Run a peer reference fixture through ``maskrcnn predict`` and check it with ``compare.py``.

    The fixture's synthetic weights are written in the peer's own file format
    (a Detectron2 model-zoo ``.pkl``, a torchvision ``.pth``); each call's
    images are predicted as one batch, as the peer ran them. ``images`` is the
    folder holding them (default: the fixture's ``images/``). ``weights``
    replaces the fixture's file (an export of it, say), run by ``--runtime
    runtime`` when given. Returns ``compare.py``'s output; fails the test
    unless the comparison holds.
    """
    if weights is None:
        suffix = ".pkl" if fixture.name.startswith("detectron2") else ".pth"
        weights = write_fixture_weights(fixture, tmp_path / f"weights{suffix}")
    images = images or fixture / "images"
    expected = json.loads((fixture / "expected.json").read_text())
    merged = []
    for i, call in enumerate(expected["calls"]):
        out = tmp_path / f"call{i}.json"
        paths = [str(images / name) for name in call["images"]]
        code = main(["predict", *paths, "--weights", str(weights), "--out", str(out),
                     "--batch-size", str(len(paths)), *(["--runtime", runtime] if runtime else [])])
        assert code == 0
        merged += json.loads(out.read_text())
    results = tmp_path / "results.json"
    results.write_text(json.dumps(merged))
    holds, text = run_compare(compare, fixture / "expected.json", results)
    assert holds, text
    assert text.strip().splitlines()[-1].startswith("holds")
    return text


class _EmptyMasksAgree:
    """pycocotools' ``mask`` module, except that two empty masks have IoU 1.

    pycocotools gives IoU 0 to two empty masks, so ``compare.py`` fails a peer's
    output against itself whenever one of its detections has an all-background
    mask (torchvision's ``maskrcnn_resnet50_fpn`` on the fixture image
    ``motorcycle_left.png``). Every other number and tolerance stays
    ``compare.py``'s own.
    """

    def __getattr__(self, name: str) -> object:
        return getattr(mask_util, name)

    @staticmethod
    def iou(a: list, b: list, crowd: list) -> np.ndarray:
        out = np.asarray(mask_util.iou(a, b, crowd), dtype=np.float64).reshape(len(a), len(b))
        empty_a = mask_util.area(a) == 0
        empty_b = mask_util.area(b) == 0
        out[np.outer(empty_a, empty_b)] = 1.0
        return out


def run_compare(compare: Path, expected: Path, results: Path) -> tuple[bool, str]:
    """Run ``compare.py`` (loaded as a module, two empty masks agreeing): whether it holds, and its output."""
    spec = importlib.util.spec_from_file_location("_reference_compare", compare)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.mask_util = _EmptyMasksAgree()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = module.main(str(expected), str(results))
    return code == 0, buffer.getvalue()


def tiny_demo_config(dataset: Any, **rpn_changes: Any) -> ModelConfig:
    """The demo preset for 64-pixel images of ``dataset``'s classes, with small RPN and RoI budgets.

    ``rpn_changes`` override further RPN fields (e.g. the test-time top-k).
    """
    base = PRESETS["demo-r18-fpn"].model
    return base.replace(
        num_classes=len(dataset.class_names),
        class_names=dataset.class_names,
        category_ids=dataset.category_ids,
        input=dataclasses.replace(base.input, min_size=64, max_size=64, train_min_sizes=(64,)),
        rpn=dataclasses.replace(
            base.rpn, sampler=dataclasses.replace(base.rpn.sampler, batch_size_per_image=32),
            pre_nms_topk_train=200, post_nms_topk_train=100, **rpn_changes,
        ),
        box_head=dataclasses.replace(
            base.box_head, sampler=dataclasses.replace(base.box_head.sampler, batch_size_per_image=32)
        ),
    )
