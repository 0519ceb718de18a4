"""``maskrcnn serve``: its flags, one-line errors, and a real server process started and stopped."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'maskrcnn[serve]'")

from maskrcnn.serve.command import add_serve_parser, listen  # noqa: E402

from ..helpers import write_small_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class Usage(Exception):
    pass


class Failed(Exception):
    pass


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="maskrcnn")
    common = argparse.ArgumentParser(add_help=False)
    sub = p.add_subparsers(dest="command", required=True)
    add_serve_parser(sub, common, usage_error=Usage, failure=Failed)
    return p


def test_flags_and_defaults() -> None:
    args = parser().parse_args(["serve", "--weights", "m.pt"])
    assert (args.host, args.port, args.max_batch, args.dtype, args.device) == (
        "127.0.0.1", 8000, 4, "float32", "cpu")
    assert (args.max_upload_mb, args.max_pixels, args.score_threshold) == (20.0, 64_000_000, None)
    args = parser().parse_args(["serve", "--weights", "m.onnx", "--runtime", "openvino", "--port", "0",
                                "--max-batch", "8", "--score-threshold", "0.3", "--max-upload-mb", "0.5"])
    assert (args.runtime, args.port, args.max_batch, args.score_threshold, args.max_upload_mb) == (
        "openvino", 0, 8, 0.3, 0.5)


@pytest.mark.parametrize(("flags", "message"), [
    (["--dtype", "int8"], "invalid choice: 'int8'"),
    (["--max-batch", "0"], "must be at least 1"),
    (["--port", "70000"], "outside 0..65535"),
    (["--score-threshold", "2"], "outside [0, 1]"),
    (["--max-upload-mb", "-1"], "positive"),
])
def test_bad_flag_values_are_usage_errors(flags: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(["serve", "--weights", "m.pt", *flags])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_checkpoint_and_a_busy_port_are_failures(tmp_path: Path) -> None:
    args = parser().parse_args(["serve", "--weights", str(tmp_path / "missing.pt")])
    with pytest.raises(Failed, match=r"missing.pt: no such checkpoint file \(--weights\)"):
        args.func(args)
    weights = write_small_checkpoint(tmp_path / "small.safetensors")
    args = parser().parse_args(["serve", "--weights", str(weights), "--device", "tpu"])
    with pytest.raises(Usage, match="--device tpu"):
        args.func(args)
    args = parser().parse_args(["serve", "--weights", str(weights), "--runtime", "openvino"])
    with pytest.raises(Usage, match="runs exported models"):
        args.func(args)
    args = parser().parse_args(["serve", "--weights", str(weights), "--dtype", "float16"])
    with pytest.raises(Usage, match="--dtype float16 runs on CUDA only"):
        args.func(args)
    busy = listen("127.0.0.1", 0)
    try:
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(Failed, match=f"cannot listen on 127.0.0.1:{port}"):
            listen("127.0.0.1", port, failure=Failed)
    finally:
        busy.close()
    with pytest.raises(Usage, match="--host"):
        listen("no-such-host.invalid", 0, usage_error=Usage)


# The command as cli.py runs it: its parser, then args.func(args); Ctrl-C is exit status 130.
LAUNCHER = """
import sys
from tests.serve.test_command import parser
args = parser().parse_args(["serve", *sys.argv[1:]])
try:
    sys.exit(args.func(args))
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_the_command_serves_until_terminated(tmp_path: Path) -> None:
    weights = write_small_checkpoint(tmp_path / "small.safetensors")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", LAUNCHER, "--weights", str(weights), "--port", "0"],
                               cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        match = re.fullmatch(r"serving small.safetensors at (http://127.0.0.1:\d+/) "
                             r"\(torch on cpu, float32, max batch 4\); Ctrl-C to stop\n", line)
        assert match, line
        with urllib.request.urlopen(match.group(1) + "health", timeout=30) as response:
            assert json.loads(response.read())["model"] == "small.safetensors"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert "Traceback" not in err, err
    assert process.returncode == 130  # uvicorn stops cleanly, then passes the Ctrl-C on
