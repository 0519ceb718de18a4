"""The predictor's score threshold (the user's value, per predictor or per call, the model untouched),
and its loop over files (batches, unreadable files reported and skipped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.data.images import ImageReadError
from maskrcnn.engine.predict import Predictor
from maskrcnn.model import build_model

from ..helpers import random_state, small_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_score_threshold_is_the_users_value_and_leaves_the_model_alone() -> None:
    config = small_config()
    model = build_model(config)
    state = random_state(config)
    # Equal logits for every box: each class scores about 0.018, below the model's 0.05.
    state["box.head.cls_score.weight"] = torch.zeros_like(state["box.head.cls_score.weight"])
    state["box.head.cls_score.bias"] = torch.tensor([2.0] + [-2.0] * config.num_classes)
    model.load_state_dict(state)
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)

    low = Predictor(model, config, score_threshold=0.001)
    assert model.box.score_thresh == 0.05
    scores = low(image).scores
    assert len(scores) and bool(((scores > 0.001) & (scores < 0.05)).all())
    assert len(low(image, score_threshold=0.05).scores) == 0  # per call
    assert len(Predictor(model, config)(image).scores) == 0  # the model's own 0.05
    assert model.box.score_thresh == 0.05  # never changed by a predictor or a call
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Predictor(model, config, score_threshold=1.5)


def test_unreadable_file_in_a_batch_is_reported_and_the_others_predicted_as_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = small_config()
    model = build_model(config)
    model.load_state_dict(random_state(config))
    predictor = Predictor(model, config)
    rng = np.random.default_rng(0)
    first, bad, last = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    for path in (first, last):  # one size: the batch pads them as each alone is padded
        Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(path)
    bad.write_bytes(b"not an image")
    sizes: list[int] = []
    forward = predictor.predict_arrays

    def counted(arrays: list[np.ndarray], **kwargs: object) -> list:
        sizes.append(len(arrays))
        return forward(arrays, **kwargs)  # type: ignore[arg-type]

    predictor.predict_arrays = counted  # type: ignore[method-assign]
    predictions = list(predictor.predict_files([first, bad, last], batch_size=3))
    del predictor.predict_arrays
    assert sizes == [2], "one forward pass; the unreadable file takes no place in it"
    assert [(p.index, p.source) for p in predictions] == [(0, first), (1, bad), (2, last)]
    skipped = predictions[1]
    assert skipped.detections is None and skipped.image is None and skipped.error is not None
    assert skipped.error.path == bad and "not an image" in skipped.error.problem
    reported = [line for line in capsys.readouterr().err.splitlines() if line.startswith("skipped")]
    assert reported == [f"skipped {bad}: {skipped.error.problem}"]
    for prediction in (predictions[0], predictions[2]):
        batched, alone = prediction.detections, predictor(prediction.source)
        assert batched is not None and prediction.error is None
        assert prediction.image is not None and prediction.image.shape == (64, 96, 3)
        assert len(alone) > 0, "the small model is built to detect something"
        assert torch.equal(batched.labels, alone.labels)
        torch.testing.assert_close(batched.boxes, alone.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(batched.scores, alone.scores, atol=1e-4, rtol=0)
    # Called on a list, the predictor answers each input, so it raises instead of skipping.
    with pytest.raises(ImageReadError, match="b.png"):
        predictor([first, bad])
