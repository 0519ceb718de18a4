"""This project's checkpoint files: round trips, training state, atomic writes, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import Tensor

from maskrcnn.checkpoint import FORMAT_NAME, remove_stale_temporaries, save_model, unpack_model
from maskrcnn.config import (
    BoxHeadConfig,
    FPNConfig,
    MaskHeadConfig,
    ModelConfig,
    detectron2_r50_fpn,
)
from maskrcnn.convert import CheckpointError, load_checkpoint
from maskrcnn.convert.shapes import expected_state_shapes

# A full ResNet-50 with slim heads: every name and shape of a real model, a quarter of the bytes.
SLIM = ModelConfig(
    num_classes=3,
    class_names=("cat", "dog", "bird"),
    category_ids=(17, 18, 16),
    fpn=FPNConfig(out_channels=32),
    box_head=BoxHeadConfig(fc_dim=64),
    mask_head=MaskHeadConfig(conv_dims=(32, 32)),
)


def _random_state(cfg: ModelConfig, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g) for name, shape in expected_state_shapes(cfg).items()}


@pytest.fixture(scope="module")
def slim_state() -> dict[str, Tensor]:
    return _random_state(SLIM)


def _assert_same(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pt"])
def test_round_trip(slim_state: dict[str, Tensor], tmp_path: Path, suffix: str) -> None:
    path = save_model(tmp_path / f"model{suffix}", SLIM, slim_state)
    assert path == tmp_path / f"model{suffix}"
    cfg, state = load_checkpoint(path)
    assert cfg == SLIM
    _assert_same(state, slim_state)
    assert list(state) == list(expected_state_shapes(SLIM))  # module order, whatever the file's
    assert load_checkpoint(path, format="maskrcnn")[0] == SLIM


def test_safetensors_layout(slim_state: dict[str, Tensor], tmp_path: Path) -> None:
    path = save_model(tmp_path / "model.safetensors", SLIM, slim_state)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        assert set(f.keys()) == set(slim_state)
    assert metadata["format"] == FORMAT_NAME
    assert ModelConfig.from_dict(json.loads(metadata["config"])) == SLIM
    # Another extension: still recognised from the file's header.
    renamed = path.rename(tmp_path / "model.bin")
    assert load_checkpoint(renamed)[0] == SLIM


def test_pth_layout_and_training_state(slim_state: dict[str, Tensor], tmp_path: Path) -> None:
    optimizer = {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": [{"lr": 0.02}]}
    path = save_model(tmp_path / "last.pth", SLIM, slim_state, extra={"optimizer": optimizer, "iteration": 7})
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT_NAME and payload["iteration"] == 7
    assert payload["optimizer"]["param_groups"][0]["lr"] == 0.02
    assert ModelConfig.from_dict(payload["config"]) == SLIM
    cfg, state = load_checkpoint(path)  # inference ignores the training state
    assert cfg == SLIM
    _assert_same(state, slim_state)


def test_config_without_mask_head(tmp_path: Path) -> None:
    cfg = detectron2_r50_fpn().replace(
        mask_head=None, num_classes=2, class_names=("a", "b"), category_ids=(1, 2),
        box_head=BoxHeadConfig(fc_dim=32), fpn=FPNConfig(out_channels=16),
    )  # fmt: skip
    state = _random_state(cfg, seed=1)
    loaded, _ = load_checkpoint(save_model(tmp_path / "det.safetensors", cfg, state))
    assert loaded == cfg and loaded.mask_head is None


def test_refusals(slim_state: dict[str, Tensor], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a .pth file"):
        save_model(tmp_path / "m.safetensors", SLIM, slim_state, extra={"iteration": 1})
    with pytest.raises(ValueError, match="unknown checkpoint extension"):
        save_model(tmp_path / "m.ckpt", SLIM, slim_state)
    with pytest.raises(ValueError, match="overwrite"):
        save_model(tmp_path / "m.pth", SLIM, slim_state, extra={"model": {}})
    with pytest.raises(TypeError, match="not a tensor"):
        save_model(tmp_path / "m.pth", SLIM, {"w": [1.0]})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


def test_views_and_shared_tensors_are_written_compactly(tmp_path: Path) -> None:
    big = torch.arange(1000.0)
    state = {"head": big[:4], "tied.a": big, "tied.b": big}
    for suffix in (".safetensors", ".pth"):
        path = save_model(tmp_path / f"t{suffix}", SLIM, state)
        if suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                loaded = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        else:
            loaded = torch.load(path, weights_only=True)["model"]
            assert loaded["head"].untyped_storage().nbytes() == 4 * 4  # not the whole 1000-element storage
        _assert_same(loaded, state)


def test_atomic_write_keeps_the_old_file(
    slim_state: dict[str, Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_model(tmp_path / "model.pth", SLIM, slim_state)
    before = path.read_bytes()

    def crash(obj: object, f: str) -> None:
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(path, SLIM, slim_state)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]  # no temporary file left behind


def test_own_file_with_wrong_tensors_is_reported(slim_state: dict[str, Tensor], tmp_path: Path) -> None:
    state = dict(slim_state)
    del state["mask.head.deconv.bias"]
    state["box.head.fc3.weight"] = torch.zeros(2, 2)
    state["box.head.cls_score.weight"] = torch.zeros(5, 64)
    path = save_model(tmp_path / "edited.safetensors", SLIM, state)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: the maskrcnn checkpoint's tensors do not fit")
    assert "1 missing: mask.head.deconv.bias" in msg
    assert "1 unexpected: box.head.fc3.weight" in msg
    assert "box.head.cls_score.weight is (5, 64), expected (4, 64)" in msg


def test_broken_config_is_reported(slim_state: dict[str, Tensor], tmp_path: Path) -> None:
    path = tmp_path / "bad.pth"
    config = {"num_classes": 3, "colour": "red"}
    torch.save({"format": FORMAT_NAME, "config": config, "model": slim_state}, path)
    with pytest.raises(CheckpointError, match=r"bad\.pth: the checkpoint's config is invalid.*colour"):
        load_checkpoint(path)
    torch.save({"format": FORMAT_NAME, "model": slim_state}, path)
    with pytest.raises(CheckpointError, match="has no config"):
        load_checkpoint(path)


def test_unpack_model_checks_the_payload() -> None:
    with pytest.raises(ValueError, match="newer"):
        unpack_model({"format": FORMAT_NAME, "version": 99, "config": {}, "model": {}})
    with pytest.raises(ValueError, match="not tensors"):
        unpack_model({"format": FORMAT_NAME, "config": {}, "model": {"w": 1.0}})
    cfg, state = unpack_model({"format": FORMAT_NAME, "config": json.dumps(SLIM.to_dict()), "model": {}})
    assert cfg == SLIM and state == {}


_KILLED_SAVE = """
import os, signal, sys, time
from pathlib import Path

import torch

from maskrcnn.cli import sigterm_as_interrupt
from maskrcnn import checkpoint
from tests.helpers import small_config

def killed_while_writing(payload, path):
    Path(path).write_bytes(b"the first half of a checkpoint")
    os.kill(os.getpid(), signal.SIGTERM)  # as a job scheduler or `kill` does
    time.sleep(30)

checkpoint.torch.save = killed_while_writing
with sigterm_as_interrupt():
    try:
        checkpoint.save_model(Path(sys.argv[1]), small_config(), {"w": torch.zeros(2)})
    except KeyboardInterrupt:
        sys.exit(143)
"""


def test_sigterm_during_a_save_leaves_no_temporary_file(tmp_path: Path) -> None:
    # Python's default SIGTERM ends the process at once, skipping the clean-up; the command
    # turns it into an exception so the temporary file is removed and the old checkpoint kept.
    (tmp_path / "last.pth").write_bytes(b"the previous checkpoint")
    run = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(tmp_path / "last.pth")],
                         cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=120)
    assert run.returncode == 143, run.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]
    assert (tmp_path / "last.pth").read_bytes() == b"the previous checkpoint"


def test_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "last_checkpoint.pth"
    stale = tmp_path / ".last_checkpoint.pth.4999999.0a1b2c3d.tmp"  # above Linux's largest pid: no writer
    live = tmp_path / f".last_checkpoint.pth.{os.getppid()}.0a1b2c3d.tmp"  # its writer still runs
    other = tmp_path / ".model_final.pth.4999999.0a1b2c3d.tmp"
    for path in (stale, live, other):
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(target) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])
