"""The ``maskrcnn serve`` subcommand: load a model, listen, serve :func:`.app.create_app` with uvicorn.

``add_serve_parser(sub, common, usage_error=UsageError, failure=Failure)``
adds the subcommand to the ``maskrcnn`` parser; the command line passes its
own error classes, which this layer cannot import: a bad flag value is
``usage_error`` (exit 2), a file or port that cannot be used ``failure``
(exit 1). Flag values are checked by argparse where they can be (a usage
error, one line). ``--port`` and ``--host`` are bound before the model is
loaded, so a busy port fails at once.
"""

from __future__ import annotations

import argparse
import functools
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from ..engine.flags import add_dtype_argument, device_problem, dtype_problem, dtype_warning, unit_interval
from ..engine.tiles import add_tile_arguments
from .limits import DEFAULT_MAX_BATCH, DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def add_serve_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    *,
    usage_error: type[Exception] = ValueError,
    failure: type[Exception] = RuntimeError,
) -> None:
    """Add ``serve`` to ``sub`` (the ``maskrcnn`` subparsers); ``common`` holds the shared flags.

    ``usage_error`` and ``failure`` are the exceptions :func:`run_serve` raises
    for a bad flag value and for a file or port it cannot use.
    """
    s = sub.add_parser("serve", parents=[common],
                       help="serve a model over HTTP: POST /predict (JSON), GET /health, a web page at /")
    s.add_argument("--weights", required=True, metavar="FILE",
                   help="checkpoint: ours, torchvision's (.pth) or Detectron2's (.pkl/.pth), "
                        "or a model written by `maskrcnn export` (.onnx)")
    s.add_argument("--format", choices=("maskrcnn", "torchvision", "detectron2"), default=None,
                   help="checkpoint format (default: detected from the file's contents)")
    s.add_argument("--runtime", choices=("torch", "onnxruntime", "openvino"), default=None,
                   help="what runs the model (default: torch for checkpoints, onnxruntime for .onnx files)")
    s.add_argument("--score-threshold", type=unit_interval, default=None, metavar="T",
                   help="keep detections scoring above T, any T in [0, 1], for requests that give no "
                        "score_threshold of their own (default: the model's own, 0.05)")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_dtype_argument(s)
    s.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default: {DEFAULT_HOST}, this machine only; 0.0.0.0: every "
                        "interface)")
    s.add_argument("--port", type=_port, default=DEFAULT_PORT,
                   help=f"port to listen on (default: {DEFAULT_PORT}; 0: any free port, printed at start)")
    s.add_argument("--max-batch", type=_positive_int, default=DEFAULT_MAX_BATCH, metavar="N",
                   help="requests arriving together are predicted in one forward pass of up to N images "
                        f"(default: {DEFAULT_MAX_BATCH})")
    s.add_argument("--max-upload-mb", type=_positive_float, default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                   help=f"refuse uploads over MB MiB (default: {DEFAULT_MAX_UPLOAD_MB:g})")
    s.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="refuse images whose header declares more than N pixels, before decoding them "
                        f"(default: {DEFAULT_MAX_PIXELS:,})")
    add_tile_arguments(s)
    s.set_defaults(func=functools.partial(run_serve, usage_error=usage_error, failure=failure))


def run_serve(
    args: argparse.Namespace,
    *,
    usage_error: type[Exception] = ValueError,
    failure: type[Exception] = RuntimeError,
) -> int:
    """Serve until interrupted (Ctrl-C, SIGTERM); returns 0 after a clean shutdown."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        raise failure(f"serving needs {e.name or 'fastapi and uvicorn'}: "
                      "pip install 'maskrcnn[serve]'") from e
    from ..engine.predict import load
    from ..engine.tiles import check_tile_arguments, tiled_predictor

    try:
        check_tile_arguments(args)
    except ValueError as e:
        raise usage_error(str(e)) from e
    weights = Path(args.weights)
    if not weights.is_file():
        raise failure(f"{weights}: no such checkpoint file (--weights)")
    _check_device(args.device, usage_error)
    problem = dtype_problem(args.dtype, args.device)
    if problem:
        raise usage_error(problem)
    slow = dtype_warning(args.dtype, args.device)
    if slow:
        print(f"warning: {slow}", file=sys.stderr)
    sock = listen(args.host, args.port, usage_error=usage_error, failure=failure)
    try:
        try:
            predictor = load(weights, device=args.device, format=args.format,
                             score_threshold=args.score_threshold, runtime=args.runtime, dtype=args.dtype)
        except ValueError as e:  # a runtime that does not run this file, a device or type it has not
            raise usage_error(f"{e} (--runtime, --device, --dtype)") from e
        except ImportError as e:
            raise failure(f"{weights} needs {e.name or 'a package'} to run: "
                          "pip install 'maskrcnn[deploy]'") from e
        predictor = tiled_predictor(predictor, args)
        app = create_app(predictor, weights_name=weights.name, max_batch=args.max_batch,
                         max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        runtime = getattr(predictor, "runtime", "torch")
        print(f"serving {weights.name} at http://{shown}:{port}/ ({runtime} on {predictor.device}, "
              f"{args.dtype}, max batch {args.max_batch}); Ctrl-C to stop", file=sys.stderr, flush=True)
        server = _make_server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30))
        server.run(sockets=[sock])
    finally:
        sock.close()
    # uvicorn passes the stopping signal on once it has shut down, but it can be lost: asyncio's
    # runner swallows it when the server's task has already finished, and a process started in the
    # background ignores SIGINT (uvicorn still caught it). Say it here, outside the event loop, so
    # that Ctrl-C exits 130 and SIGTERM 143 whatever the timing and however the server was started.
    if server.stopped_by == signal.SIGINT:
        raise KeyboardInterrupt("interrupted")
    if server.stopped_by is not None:
        signal.raise_signal(server.stopped_by)
    return 0


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, remembering the signal that stopped it."""

        stopped_by: int | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.stopped_by = sig
            super().handle_exit(sig, frame)

    return Server


def _make_server(config: Any) -> Any:
    """A ``uvicorn.Server`` that remembers its stopping signal (the class is made here, on demand:
    uvicorn is an optional extra)."""
    return _server_class()(config)


def listen(
    host: str,
    port: int,
    *,
    usage_error: type[Exception] = ValueError,
    failure: type[Exception] = RuntimeError,
) -> socket.socket:
    """A TCP socket listening on ``host:port``, for uvicorn to serve; port 0 picks a free one."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise usage_error(f"--host {host}: not an address of this machine ({e.strerror})") from e
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after a stop
        sock.bind(address)
        sock.listen()  # connections queue from now on, before uvicorn accepts them: the URL printed works
    except OSError as e:
        sock.close()
        raise failure(f"cannot listen on {host}:{port}: {e.strerror or e} (--host, --port)") from e
    return sock


def _check_device(name: str, usage_error: type[Exception]) -> None:
    problem = device_problem(name)
    if problem:
        raise usage_error(problem)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..65535")
    return value
