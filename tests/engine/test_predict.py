"""The predictor's score threshold: the user's value, per predictor or per call, the model untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskrcnn.engine.predict import Predictor
from maskrcnn.model import build_model

from ..helpers import random_state, small_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_score_threshold_is_the_users_value_and_leaves_the_model_alone() -> None:
    config = small_config()
    model = build_model(config)
    state = random_state(config)
    # Equal logits for every box: each class scores about 0.018, below the model's 0.05.
    state["box_head.cls_score.weight"] = torch.zeros_like(state["box_head.cls_score.weight"])
    state["box_head.cls_score.bias"] = torch.tensor([2.0] + [-2.0] * config.num_classes)
    model.load_state_dict(state)
    settings = model.inference
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)

    low = Predictor(model, config, score_threshold=0.001)
    assert model.inference is settings and settings.score_thresh == 0.05
    scores = low(image).scores
    assert len(scores) and bool(((scores > 0.001) & (scores < 0.05)).all())
    assert len(low(image, score_threshold=0.05).scores) == 0  # per call
    assert len(Predictor(model, config)(image).scores) == 0  # the model's own 0.05
    assert model.inference is settings
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Predictor(model, config, score_threshold=1.5)
