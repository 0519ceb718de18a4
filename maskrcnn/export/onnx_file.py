"""Writing a model to an ONNX file with its config, and reading the config back.

``export_onnx`` traces ``ExportableMaskRCNN`` with ``torch.export`` (the
dynamo exporter of ``torch.onnx``, opset 18 or newer) with the batch size and
image height and width left dynamic, maps our RoIAlign, NMS and keypoint
decoding to ONNX (``onnx_ops``, ``keypoints``), and stores in the file's
metadata everything a predictor needs besides the graph: the model config
(input transform, class names, category ids, keypoint names and skeleton).
``read_config`` gets it back, so ``maskrcnn.load("model.onnx")`` needs no
other file.

The graph's inputs and outputs are those of ``ExportableMaskRCNN``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..convert import CheckpointError
from ..files import write_atomically
from ..model import MaskRCNN
from .graph import ExportableMaskRCNN, ExportError
from .onnx_ops import OPSET, export_ops

FORMAT_NAME = "maskrcnn-onnx"
FORMAT_VERSION = 1
# The newest opset the export was tested with (torch's exporter converts from OPSET).
MAX_OPSET = 21
INPUT_NAMES = ["images", "sizes", "score_threshold"]


def export_onnx(
    model: MaskRCNN, config: ModelConfig, path: str | os.PathLike[str], *, opset: int = OPSET,
    source: str = "",
) -> None:
    """Write ``model`` (built from ``config``) as one ONNX graph with its config in the metadata.

    ``source`` names the checkpoint it came from (kept in the metadata).
    Raises ValueError for an opset outside ``OPSET..MAX_OPSET`` and
    ``graph.ExportError`` for a model the export does not cover.
    """
    if not OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset {opset} is not supported: use {OPSET} to {MAX_OPSET} (RoiAlign's "
                         "coordinate modes need 16, torch's exporter writes 18 and converts upward)")
    wrapper = ExportableMaskRCNN(model.eval(), config).eval()
    translations = dict(export_ops().translations)
    if model.keypoint is not None:
        from .keypoints import keypoint_ops

        translations |= keypoint_ops().translations
    images, sizes = example_inputs()
    threshold = torch.tensor(model.box.score_thresh, dtype=torch.float32)
    try:
        with torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(
                wrapper, (images, sizes, threshold), dynamo=True, opset_version=opset,
                input_names=INPUT_NAMES, output_names=wrapper.output_names,
                custom_translation_table=translations, optimize=False,
                dynamic_shapes={"images": {0: "batch", 1: "height", 2: "width"}, "sizes": {0: "batch"},
                                "score_threshold": None},
            )
            _fold_constants(program.model)
    except Exception as e:  # noqa: BLE001 - the exporter's many error types, as one
        summary = next((line.strip() for line in str(e).splitlines() if "Error" in line or "error" in line),
                       str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise ExportError(f"torch.onnx could not export this model: {summary} (rerun with --debug for the "
                          "exporter's full report)") from e
    assert program is not None
    program.model.metadata_props.update({
        "maskrcnn.format": FORMAT_NAME,
        "maskrcnn.format_version": str(FORMAT_VERSION),
        "maskrcnn.config": json.dumps(config.to_dict()),
        "maskrcnn.source": source,
    })
    write_atomically(Path(path), lambda tmp: program.save(str(tmp)))


def _fold_constants(model: Any) -> None:
    """Constant folding and clean-up of the exported graph (an ``onnx_ir.Model``), in place.

    The exporter's own optimiser adds pattern rewrites to this, which took a
    quarter of the export's time (about 13 s of 50 for R50-FPN) and changed
    nothing measurable at run time in ONNX Runtime, which fuses on loading.
    """
    import onnx_ir.passes.common as passes
    from onnxscript.optimizer import fold_constants

    fold_constants(model)
    for step in (passes.RemoveUnusedNodesPass(),
                 passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                 passes.DeduplicateInitializersPass(), passes.CommonSubexpressionEliminationPass()):
        step(model)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's progress lines (stdout), warnings and log records are its own business here."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def example_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images of different sizes in one canvas: no dimension is 0 or 1, so none is specialised."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 72, 96, 3), dtype=torch.uint8, generator=g)
    images[1, 60:] = 0
    return images, torch.tensor([[72, 96], [60, 96]])


def read_config(path: str | os.PathLike[str]) -> ModelConfig:
    """The config stored in an exported file's metadata; CheckpointError naming the file otherwise."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(path, f"not an ONNX file ({type(e).__name__}); give a file written by "
                                    "`maskrcnn export`") from e
    if not proto.graph.node:
        raise CheckpointError(path, "not an ONNX model (no graph); give a file written by `maskrcnn export`")
    metadata = {p.key: p.value for p in proto.metadata_props}
    if metadata.get("maskrcnn.format") != FORMAT_NAME:
        raise CheckpointError(path, "an ONNX model without maskrcnn's metadata (config, class names): only "
                                    "files written by `maskrcnn export --weights FILE --out model.onnx` "
                                    "run here")
    version = metadata.get("maskrcnn.format_version", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise CheckpointError(path, f"exported with format version {version!r}, newer than this code's "
                                    f"{FORMAT_VERSION}: upgrade maskrcnn to run it")
    try:
        return ModelConfig.from_dict(json.loads(metadata["maskrcnn.config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(path, f"the file's maskrcnn config is invalid: {e}") from e
