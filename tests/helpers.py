"""Small models for fast tests: R50-FPN on tiny inputs with seeded random weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from maskrcnn.config import InputConfig, ModelConfig
from maskrcnn.engine.checkpoint import save_model
from maskrcnn.model import build_model


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
    state["box_head.cls_score.bias"] = torch.tensor([-4.0] + [2.0] * config.num_classes)
    return state


def write_small_checkpoint(path: Path, config: ModelConfig | None = None) -> Path:
    config = config or small_config()
    save_model(path, config, random_state(config))
    return path


def with_input(config: ModelConfig, **changes: object) -> ModelConfig:
    return config.replace(input=dataclasses.replace(config.input, **changes))
