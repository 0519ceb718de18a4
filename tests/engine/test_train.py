"""The training loop: learning-rate schedule, the run's configs, exact resume, non-finite losses,
and the ``train`` command's errors, Ctrl-C and ``--resume``.

Training runs use the demo preset on 16 synthetic 64 x 64 images with small
RPN and RoI batches, so an iteration takes a fraction of a second on one core.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from maskrcnn.cli import main
from maskrcnn.config import PRESETS, ModelConfig, SolverConfig
from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.synthetic import generate
from maskrcnn.engine.configure import configure
from maskrcnn.engine.schedule import lr_factor
from maskrcnn.engine.train import LAST_CHECKPOINT, Trainer

from ..helpers import error_line, tiny_demo_config, write_small_checkpoint

LOSS_KEYS = ("loss_rpn_objectness", "loss_rpn_box", "loss_classifier", "loss_box", "loss_mask")


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ learning rate


def test_lr_factor_warmup_then_steps_by_hand():
    solver = SolverConfig(iterations=100, warmup_iters=10, warmup_factor=0.1, steps=(0.5, 0.8), gamma=0.1)
    expected = {
        0: 0.1,  # warm-up starts at warmup_factor
        5: 0.55,  # halfway: 0.1 * 0.5 + 0.5
        9: 0.91,  # 0.1 * 0.1 + 0.9
        10: 1.0,  # warm-up over
        49: 1.0,
        50: 0.1,  # first step at 0.5 * 100
        79: 0.1,
        80: 0.01,  # second step at 0.8 * 100
        99: 0.01,
    }
    for iteration, value in expected.items():
        assert lr_factor(iteration, solver) == pytest.approx(value, rel=1e-12), iteration


def test_lr_factor_steps_are_rounded_fractions_of_the_schedule():
    # The preset's (2/3, 8/9) of 90 iterations decay at 60 and 80.
    solver = SolverConfig(iterations=90, warmup_iters=0, steps=(2 / 3, 8 / 9), gamma=0.5)
    assert [lr_factor(i, solver) for i in (0, 59, 60, 79, 80, 89)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_lr_factor_warmup_and_decay_multiply():
    solver = SolverConfig(iterations=10, warmup_iters=8, warmup_factor=0.1, steps=(0.5,), gamma=0.1)
    # Iteration 6: warm-up 0.1 * 0.25 + 0.75 = 0.775, and the step at 5 has passed.
    assert lr_factor(6, solver) == pytest.approx(0.0775, rel=1e-12)


# ------------------------------------------------------------------ the run's configs


def test_configure_scales_the_schedule_with_the_batch_size():
    @dataclasses.dataclass
    class Names:
        class_names: tuple[str, ...] = ("a", "b")
        category_ids: tuple[int, ...] = (3, 7)

    preset = PRESETS["demo-r18-fpn"]
    cfg, solver = configure(Names(), preset="demo-r18-fpn", batch_size=4, min_sizes=[64, 72], max_size=96,
                            overrides=["solver.base_lr=0.01", "rpn.nms_thresh=0.6"])
    assert (cfg.num_classes, cfg.class_names, cfg.category_ids) == (2, ("a", "b"), (3, 7))
    assert (cfg.input.min_size, cfg.input.train_min_sizes, cfg.input.max_size) == (64, (64, 72), 96)
    assert cfg.rpn.nms_thresh == 0.6
    assert solver.batch_size == 4 and solver.base_lr == 0.01
    ratio = preset.solver.batch_size / 4
    assert solver.iterations == round(preset.solver.iterations * ratio)
    assert solver.warmup_iters == round(preset.solver.warmup_iters * ratio)

    _, solver = configure(Names(), preset="demo-r18-fpn", iterations=50)
    assert solver.iterations == 50 and solver.warmup_iters == 50  # warm-up capped by the run


# ------------------------------------------------------------------ training runs


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> CocoDataset:
    root = tmp_path_factory.mktemp("shapes")
    json_path = generate(root, num_images=16, image_size=(64, 64), seed=0)
    return CocoDataset(json_path, root / "train")


def _model_cfg(dataset: CocoDataset) -> ModelConfig:
    return tiny_demo_config(dataset)


def _solver(**changes: Any) -> SolverConfig:
    # The step at 0.9 of the schedule falls at iteration 5 of 6 and after the end of a
    # 3-iteration run (round(2.7) = 3), so both runs share the schedule of iterations 0..2.
    solver = dataclasses.replace(
        PRESETS["demo-r18-fpn"].solver,
        iterations=6, batch_size=2, warmup_iters=2, steps=(0.9,), checkpoint_period=3, log_period=1,
        num_workers=0, eval_period=0, amp=False,
    )
    return dataclasses.replace(solver, **changes)


def _trainer(dataset: CocoDataset, out: Path, **solver_changes: Any) -> Trainer:
    return Trainer(model_cfg=_model_cfg(dataset), solver=_solver(**solver_changes), dataset=dataset,
                   out_dir=out, progress=False)


def _metrics(out: Path) -> dict[int, dict[str, Any]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    iterations = [r["iteration"] for r in records]
    assert len(set(iterations)) == len(iterations), f"iterations logged twice: {iterations}"
    return {r["iteration"]: r for r in records}


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]


def test_resume_continues_exactly_where_training_stopped(dataset: CocoDataset, tmp_path: Path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    _trainer(dataset, straight).train()

    first = _trainer(dataset, interrupted, iterations=3)
    assert first.resume() is False  # nothing to resume from yet
    first.train()
    second = _trainer(dataset, interrupted, iterations=6)
    assert second.resume() is True
    assert second.iteration == 3
    second.train()

    a, b = _metrics(straight), _metrics(interrupted)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    solver = _solver()
    for i in range(1, 7):
        # The logged lr is the one of the step that made iteration i (index i - 1).
        assert a[i]["lr"] == pytest.approx(solver.lr * lr_factor(i - 1, solver), rel=1e-12)
        assert b[i]["lr"] == a[i]["lr"]
        for key in (*LOSS_KEYS, "total_loss"):
            assert math.isfinite(a[i][key])
            # Observed: bitwise equal (same process, one thread); allow 1e-6 relative.
            assert b[i][key] == pytest.approx(a[i][key], rel=1e-6, abs=1e-9), (i, key)

    wa, wb = _final_weights(straight), _final_weights(interrupted)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-6, atol=1e-7, msg=k)
    # Training did move the weights.
    init = _trainer(dataset, tmp_path / "unused").model.state_dict()
    assert any(not torch.equal(init[k], wa[k]) for k in wa)


def _nan_losses() -> dict[str, torch.Tensor]:
    return {k: torch.tensor(math.nan) for k in LOSS_KEYS}


def test_non_finite_losses_skip_steps_then_stop_with_a_checkpoint(dataset: CocoDataset, tmp_path: Path):
    trainer = _trainer(dataset, tmp_path, max_nonfinite_steps=3)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.model.loss = lambda batch, targets: _nan_losses()  # type: ignore[method-assign]
    with pytest.warns(RuntimeWarning, match="non-finite loss") as record, \
            pytest.raises(FloatingPointError, match="3 non-finite losses in a row"):
        trainer.train()
    assert len([w for w in record if "non-finite" in str(w.message)]) == 3
    assert trainer.iteration == 0
    checkpoint = torch.load(tmp_path / LAST_CHECKPOINT, map_location="cpu", weights_only=True)
    assert checkpoint["iteration"] == 0
    for k, v in checkpoint["model"].items():
        assert torch.equal(v, before[k]), f"a skipped step changed {k}"


def test_isolated_non_finite_losses_are_skipped_and_training_goes_on(dataset: CocoDataset, tmp_path: Path):
    trainer = _trainer(dataset, tmp_path, iterations=2, max_nonfinite_steps=3)
    real_loss = trainer.model.loss
    calls = iter(range(100))

    def flaky(batch, targets):  # calls 0, 1 and 3, 4 are NaN: never 3 in a row
        return _nan_losses() if next(calls) in (0, 1, 3, 4) else real_loss(batch, targets)

    trainer.model.loss = flaky  # type: ignore[method-assign]
    with pytest.warns(RuntimeWarning, match="non-finite loss") as record:
        trainer.train()
    assert len([w for w in record if "non-finite" in str(w.message)]) == 4
    assert trainer.iteration == 2
    metrics = _metrics(tmp_path)
    assert sorted(metrics) == [1, 2]
    assert all(math.isfinite(metrics[i]["total_loss"]) for i in (1, 2))
    assert (tmp_path / "model_final.pth").is_file()


def test_bf16_autocast_on_the_cpu_trains(dataset: CocoDataset, tmp_path: Path):
    trainer = _trainer(dataset, tmp_path, iterations=2, bf16_cpu=True, checkpoint_period=0)
    trainer.train()
    records = _metrics(tmp_path)
    assert all(math.isfinite(records[i]["total_loss"]) for i in (1, 2))
    assert (tmp_path / "model_final.pth").is_file()


def test_initial_weights_with_other_classes_keep_fresh_class_layers(dataset: CocoDataset, tmp_path: Path):
    from maskrcnn.checkpoint import save_model
    from maskrcnn.model import build_model

    source_cfg = _model_cfg(dataset).replace(num_classes=7, class_names=(), category_ids=())
    torch.manual_seed(3)
    source = build_model(source_cfg).state_dict()
    path = save_model(tmp_path / "source.pth", source_cfg, source)
    trainer = Trainer(model_cfg=_model_cfg(dataset), solver=_solver(), dataset=dataset,
                      out_dir=tmp_path / "run", init_weights=path, progress=False)
    assert set(trainer.skipped_weights) == {
        "box.head.cls_score.weight", "box.head.cls_score.bias", "box.head.bbox_pred.weight",
        "box.head.bbox_pred.bias", "mask.head.predictor.weight", "mask.head.predictor.bias",
    }
    loaded = trainer.model.state_dict()
    assert torch.equal(loaded["backbone.body.conv1.weight"], source["backbone.body.conv1.weight"])
    assert torch.equal(loaded["box.head.fc1.weight"], source["box.head.fc1.weight"])
    assert loaded["box.head.cls_score.weight"].shape[0] == len(dataset.class_names) + 1


# ------------------------------------------------------------------ the train command: errors, Ctrl-C, resume


def _train_args(dataset: CocoDataset, out: Path, *extra: str) -> list[str]:
    """``maskrcnn train`` with the sizes of ``_model_cfg`` and ``_solver``: two iterations."""
    return [
        "train", "--train-json", str(dataset.json_path), "--train-images", str(dataset.image_dir),
        "--out", str(out), "--preset", "demo-r18-fpn", "--iterations", "2", "--batch-size", "2",
        "--min-size", "64", "--max-size", "64",
        "--set", "rpn.sampler.batch_size_per_image=32", "rpn.pre_nms_topk_train=200",
        "rpn.post_nms_topk_train=100",
        "box_head.sampler.batch_size_per_image=32", "solver.num_workers=0", "solver.log_period=1",
        "solver.checkpoint_period=0", *extra,
    ]


def _bad_input(case: str, dataset: CocoDataset, tmp: Path) -> tuple[list[str], int, str]:
    """Command line, expected exit status, and what the error line must name."""
    out = tmp / "run"
    good = {"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}], "annotations": [],
            "categories": [{"id": 1, "name": "a"}]}
    if case in ("not-json", "top-level-list", "image-without-id"):
        path = tmp / f"{case}.json"
        path.write_text({"not-json": "{'images': oops",
                         "top-level-list": json.dumps([good]),
                         "image-without-id": json.dumps({**good, "images": [{"file_name": "a.png"}]})}[case])
        args = _train_args(dataset, out)
        args[args.index("--train-json") + 1] = str(path)
        return args, 1, str(path)
    if case == "batch-size-0":
        return _train_args(dataset, out, "--batch-size", "0"), 2, "--batch-size"
    if case == "batch-size-negative":
        return _train_args(dataset, out, "--batch-size", "-1"), 2, "--batch-size"
    if case == "negative-lr":
        return _train_args(dataset, out, "--set", "solver.base_lr=-1"), 2, "base_lr"
    if case == "corrupt-weights":
        weights = tmp / "corrupt.pth"
        weights.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
        return _train_args(dataset, out, "--weights", str(weights)), 1, str(weights)
    checkpoint = out / LAST_CHECKPOINT
    if case == "resume-corrupt":
        out.mkdir()
        checkpoint.write_bytes(bytes(range(256)) * 16)
    else:  # resume-other-classes: the checkpoint of a run on 7 classes
        cfg = _model_cfg(dataset)
        cfg = cfg.replace(num_classes=7, class_names=tuple("abcdefg"), category_ids=tuple(range(1, 8)))
        Trainer(model_cfg=cfg, solver=_solver(), dataset=dataset, out_dir=out, progress=False).save()
    return _train_args(dataset, out, "--resume"), 1, str(checkpoint)


@pytest.mark.parametrize("case", [
    # The six of the issue, then more of the same kind.
    "not-json", "top-level-list", "image-without-id", "batch-size-0", "corrupt-weights",
    "resume-other-classes", "batch-size-negative", "negative-lr", "resume-corrupt",
])
def test_bad_train_inputs_give_one_line_and_no_traceback(case: str, dataset: CocoDataset, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]):
    args, status, name = _bad_input(case, dataset, tmp_path)
    assert main(args) == status
    err = capsys.readouterr().err
    error_line(err, name)
    assert "weights_only" not in err  # torch's advice to load untrusted pickles
    assert not (tmp_path / "run" / "model_final.pth").exists()


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(dataset: CocoDataset, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch):
    from maskrcnn.model import MaskRCNN

    real_loss = MaskRCNN.loss
    calls = iter(range(100))

    def interrupted_second_step(self, batch, targets):  # noqa: ANN001, ANN202
        if next(calls) == 1:
            raise KeyboardInterrupt
        return real_loss(self, batch, targets)

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(MaskRCNN, "loss", interrupted_second_step)
        assert main(_train_args(dataset, out)) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert "iteration 1" in message and str(out / LAST_CHECKPOINT) in message and "--resume" in message
    assert torch.load(out / LAST_CHECKPOINT, map_location="cpu", weights_only=True)["iteration"] == 1
    assert not list(out.glob(".*.tmp"))
    # Doing what the message says finishes the run.
    assert main(_train_args(dataset, out, "--resume")) == 0
    assert "resumed from iteration 1" in capsys.readouterr().err
    assert sorted(_metrics(out)) == [1, 2]


def test_resume_with_other_training_settings_is_refused(dataset: CocoDataset, tmp_path: Path):
    from maskrcnn.convert import CheckpointError

    first = _trainer(dataset, tmp_path, iterations=1)
    first.train()
    cfg = _model_cfg(dataset)
    assert cfg.mask_head is not None and cfg.mask_head.target_rule == "detectron2"
    other = cfg.replace(mask_head=dataclasses.replace(cfg.mask_head, target_rule="torchvision"))
    second = Trainer(model_cfg=other, solver=_solver(iterations=2), dataset=dataset, out_dir=tmp_path,
                     progress=False)
    expected = "mask_head.target_rule is 'detectron2' there, 'torchvision' here"
    with pytest.raises(CheckpointError, match=expected) as info:
        second.resume()
    assert 'mask_head.target_rule="detectron2"' in str(info.value)
    assert second.iteration == 0


def test_resume_without_a_checkpoint_says_so(dataset: CocoDataset, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "run"
    assert main(_train_args(dataset, out, "--resume", "--iterations", "1")) == 0
    err = capsys.readouterr().err
    assert f"no checkpoint yet ({out / LAST_CHECKPOINT} does not exist); starting from iteration 0" in err


def test_initial_weights_that_barely_fit_get_a_warning(dataset: CocoDataset, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]):
    # An R50-FPN checkpoint for the demo's narrow ResNet-18: almost no tensor fits.
    weights = write_small_checkpoint(tmp_path / "r50.safetensors")
    assert main(_train_args(dataset, tmp_path / "run", "--weights", str(weights), "--iterations", "1")) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and str(weights) in warning[0] and "fit" in warning[0]
