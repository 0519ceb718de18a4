"""The training loop: SGD with warm-up and step decay, checkpoints, resume, validation.

One iteration: a batch of augmented images, the detector's five losses
summed (Mask R-CNN's L = L_cls + L_box + L_mask, plus the RPN's objectness
and box terms), backward, optional gradient clipping, an SGD step, and the
learning rate of the schedule (warm-up, then step decay: ``schedule.py``).

Under ``torchrun`` each process trains on its shard of every batch with
``DistributedDataParallel`` (NCCL on GPUs, gloo on CPUs); only rank 0 writes
logs and checkpoints, and metrics are averaged over processes.

Files written to the output directory (the logs and the curve by ``monitor.py``)::

    metrics.jsonl            one JSON object per logged iteration (and per validation)
    tensorboard/             the same scalars for TensorBoard
    last_checkpoint.pth      everything needed to resume (weights, optimizer, schedule, RNG)
    model_final.pth          our checkpoint format: config + weights, usable by predict
    final_metrics.json       COCO AP on the validation set, when one is given
    loss_curve.png           the loss terms over iterations

Ctrl-C (or SIGTERM under the ``maskrcnn`` command) saves
``last_checkpoint.pth`` at the current iteration and raises
``TrainingInterrupted``; ``resume()`` continues from it, after checking that
it fits the model (same classes, same tensor names and shapes).
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from .. import dist as mdist
from ..checkpoint import FORMAT_NAME, remove_stale_temporaries, save_model, unpack_model
from ..config import ModelConfig, SolverConfig
from ..data.batching import build_train_loader
from ..data.transforms import pad_batch
from ..model import MaskRCNN, build_model
from ..structures import ImageBatch, Targets
from .monitor import METRICS, Monitor, plot_losses, read_metrics, write_metrics
from .results import write_json_atomic
from .schedule import lr_factor, parameter_groups
from .weights import load_initial_weights

LAST_CHECKPOINT = "last_checkpoint.pth"
FINAL_MODEL = "model_final.pth"


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C (or a signal turned into one) after saving a checkpoint.

    ``iteration`` is the number of iterations done, ``checkpoint`` the file
    that holds them (None when the save itself was interrupted, or on ranks
    other than 0). The signal's own exception is the ``__cause__``.
    """

    def __init__(self, iteration: int, checkpoint: Path | None) -> None:
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint saved"
        super().__init__(f"interrupted at iteration {iteration}; {where}")
        self.iteration = iteration
        self.checkpoint = checkpoint


@dataclass
class ValidationSet:
    """A validation set: the instances JSON and its image folder.

    ``data``: the instances dict when it was converted from another format
    (``json_path`` then names the source); it is copied for each validation.
    """

    json_path: Path
    image_dir: Path
    data: dict[str, Any] | None = None

    def ground_truth(self) -> Any:
        """The ground truth as ``evaluate`` takes it: a ``COCO`` object, or the JSON file's path."""
        if self.data is None:
            return self.json_path
        from .evaluate import ground_truth_from_dict

        return ground_truth_from_dict(copy.deepcopy(self.data), str(self.json_path))


def _batch(images: list[Tensor], targets: list[Targets], cfg: ModelConfig, device: torch.device
           ) -> tuple[ImageBatch, list[Targets]]:
    sizes = [(im.shape[1], im.shape[2]) for im in images]
    tensor = pad_batch([im.to(device) for im in images], cfg.input.size_divisibility)
    tensor = tensor.contiguous(memory_format=torch.channels_last)
    return ImageBatch(tensor, sizes, sizes), [t.to(device) for t in targets]


class Trainer:
    """Trains a ``MaskRCNN`` on a dataset of ``Sample``s; see the module docstring."""

    def __init__(
        self,
        *,
        model_cfg: ModelConfig,
        solver: SolverConfig,
        dataset: Any,
        out_dir: Path,
        validation: ValidationSet | None = None,
        init_weights: Path | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = model_cfg
        self.solver = solver
        self.dataset = dataset
        self.out = Path(out_dir)
        self.validation = validation
        self.rank = mdist.rank()
        self.world = mdist.world_size()
        if solver.batch_size % self.world:
            raise ValueError(f"batch size {solver.batch_size} does not split over {self.world} processes")
        if device is None:
            if torch.cuda.is_available():
                local = int(os.environ.get("LOCAL_RANK", 0))
                device = f"cuda:{local}"
            else:
                device = "cpu"
        self.device = torch.device(device)
        self.progress = progress and self.rank == 0
        torch.manual_seed(solver.seed)
        self.model: MaskRCNN = build_model(model_cfg)
        # Names of the model's tensors that --weights left at their initialisation.
        self.skipped_weights: list[str] = []
        if init_weights is not None:
            self.skipped_weights = load_initial_weights(self.model, init_weights)
        self.num_weights = len(self.model.state_dict())
        if solver.sync_bn and self.world > 1:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # type: ignore[assignment]
        # Channels-last convolutions are faster on the CPU and on tensor cores.
        self.model.to(self.device, memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(
            parameter_groups(self.model, solver.weight_decay), lr=solver.lr, momentum=solver.momentum
        )
        self.iteration = 0
        self.nonfinite = 0
        self.history: list[dict[str, Any]] = []
        self.resumed = False
        self.monitor = Monitor(self.out)

    # -- state ------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "solver": self.solver.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "iteration": self.iteration,
            "rng_cpu": torch.get_rng_state(),
        }

    def save(self, name: str = LAST_CHECKPOINT) -> Path | None:
        """Write a resumable checkpoint (rank 0 only; atomic)."""
        if self.rank != 0:
            return None
        return save_model(self.out / name, self.cfg, self.model.state_dict(), extra=self.state())

    def resume(self) -> bool:
        """Continue from ``last_checkpoint.pth`` if there is one; True when resumed, False when none exists.

        A checkpoint that cannot be read, lacks the training state, or does
        not fit this model (other classes, other tensor names or shapes: a
        different dataset, ``--preset`` or ``--set``) raises ``CheckpointError``
        saying so, before anything is changed.
        """
        from ..convert import CheckpointError, read_checkpoint

        path = self.out / LAST_CHECKPOINT
        if not path.is_file():
            return False
        try:
            payload = read_checkpoint(path)
        except CheckpointError as e:
            raise CheckpointError(path, "cannot be read (damaged or truncated); delete it to start afresh, "
                                  "or use another --out") from e
        try:
            if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
                raise ValueError("not a training checkpoint of this project")
            cfg, state = unpack_model(payload)
        except ValueError as e:
            raise CheckpointError(path, f"{e}; delete it to start afresh, or use another --out") from e
        missing = [key for key in ("optimizer", "iteration", "rng_cpu") if key not in payload]
        if missing:
            raise CheckpointError(path, f"holds weights but no training state ({', '.join(missing)}); "
                                  "start from it with --weights instead of resuming")
        if cfg.class_names != self.cfg.class_names or cfg.num_classes != self.cfg.num_classes:
            raise CheckpointError(
                path, f"was trained on {cfg.num_classes} classes ({_names(cfg.class_names)}), this run has "
                f"{self.cfg.num_classes} ({_names(self.cfg.class_names)}); resume with the training set "
                "it was started on, or train the new one in another --out (with --weights to start from it)")
        settings = _config_differences(cfg.to_dict(), self.cfg.to_dict())
        if settings:
            shown = "; ".join(f"{key} is {theirs!r} there, {ours!r} here"
                              for key, theirs, ours in settings[:3])
            fix = " ".join(f"{key}={json.dumps(theirs)}" for key, theirs, _ in settings[:3])
            raise CheckpointError(
                path, f"was trained with other settings ({shown}); resume with the same --preset and "
                f"--set (here: --set {fix}), or use another --out")
        own = self.model.state_dict()
        differ = [f"{k} missing" for k in own if k not in state]
        differ += [f"{k} unexpected" for k in state if k not in own]
        differ += [f"{k} is {tuple(state[k].shape)}, the model's {tuple(v.shape)}"
                   for k, v in own.items() if k in state and state[k].shape != v.shape]
        if differ:
            raise CheckpointError(
                path, f"does not fit this model: {len(differ)} tensors differ "
                f"(e.g. {'; '.join(differ[:2])}); it was made with another --preset or --set: "
                "resume with those, or use another --out")
        try:
            self.model.load_state_dict(state)
            self.optimizer.load_state_dict(payload["optimizer"])
            iteration = int(payload["iteration"])
            torch.set_rng_state(payload["rng_cpu"])
        except (ValueError, TypeError, KeyError, RuntimeError) as e:
            raise CheckpointError(path, f"its training state does not fit this run ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}); use another --out") from e
        self.iteration = iteration
        self.resumed = True
        self.history = [h for h in read_metrics(self.out) if h.get("iteration", 0) <= self.iteration]
        if self.rank == 0:
            write_metrics(self.out, self.history)
        return True

    # -- logging ----------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.history.append(record)
        self.monitor.append(record)

    # -- the loop ---------------------------------------------------------

    def _loader(self) -> Iterator[tuple[list[Tensor], list[Targets]]]:
        return iter(build_train_loader(
            self.dataset, self.cfg.input,
            batch_size=self.solver.batch_size // self.world,
            num_workers=self.solver.num_workers,
            seed=self.solver.seed,
            rank=self.rank,
            world_size=self.world,
            start_iteration=self.iteration,
            # A flip swaps left and right keypoints (left eye <-> right eye).
            flip_pairs=self.cfg.keypoint_head.flip_pairs if self.cfg.keypoint_head is not None else (),
        ))

    def train(self) -> dict[str, Any] | None:
        """Run to ``solver.iterations``; returns the final validation metrics (rank 0, if validated)."""
        s = self.solver
        self.out.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            # Left by a run killed outright (SIGKILL) in the middle of a save.
            for name in (LAST_CHECKPOINT, FINAL_MODEL, "final_metrics.json", METRICS):
                remove_stale_temporaries(self.out / name)
            if not self.resumed and self.iteration == 0:
                # A fresh run: the log of an earlier run in this folder would mix with this one's.
                (self.out / METRICS).unlink(missing_ok=True)
        model: nn.Module = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.model.train()
        use_amp = s.amp and self.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        autocast_dtype = torch.float16 if use_amp else torch.bfloat16
        autocast_on = use_amp or (s.bf16_cpu and self.device.type == "cpu")
        loader = self._loader()
        bar = tqdm(total=s.iterations, initial=self.iteration, disable=not self.progress, unit="it",
                   dynamic_ncols=True)
        window: dict[str, float] = {}
        start_time = time.perf_counter()
        data_time = 0.0
        try:
            while self.iteration < s.iterations:
                t0 = time.perf_counter()
                images, targets = next(loader)
                batch, targets = _batch(images, targets, self.cfg, self.device)
                data_time += time.perf_counter() - t0
                for group in self.optimizer.param_groups:
                    group["lr"] = s.lr * lr_factor(self.iteration, s)
                with torch.autocast(self.device.type, dtype=autocast_dtype, enabled=autocast_on):
                    losses = model(batch, targets)
                total = sum(losses.values())
                if not self._all_finite(total):
                    self._skip_step(losses)
                    continue
                self.nonfinite = 0
                self.optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                if s.clip_grad_norm > 0:
                    scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), s.clip_grad_norm)
                scaler.step(self.optimizer)
                scaler.update()
                self.iteration += 1
                for k, v in losses.items():
                    window[k] = window.get(k, 0.0) + float(v.detach())
                window["total_loss"] = window.get("total_loss", 0.0) + float(total.detach())
                if self.iteration % s.log_period == 0 or self.iteration == s.iterations:
                    self._log_window(window, bar, start_time, data_time)
                    window, start_time, data_time = {}, time.perf_counter(), 0.0
                bar.update(1)
                if s.checkpoint_period and self.iteration % s.checkpoint_period == 0:
                    self.save()
                if s.eval_period and self.iteration % s.eval_period == 0 and self.iteration < s.iterations:
                    self.validate()
            bar.close()
            self.save()
            # Ctrl-C from here on (the final validation can be long) resumes straight to it.
            return self.finish()
        except KeyboardInterrupt as e:
            raise self._interrupted() from e
        finally:
            bar.close()

    def _interrupted(self) -> TrainingInterrupted:
        """Save the state of the last finished iteration; the exception that says where it is."""
        try:
            path = self.save()
        except KeyboardInterrupt:  # interrupted again while saving: the temporary file is gone
            path = None
        return TrainingInterrupted(self.iteration, path)

    def _all_finite(self, total: Tensor) -> bool:
        finite = torch.isfinite(total.detach()).to(torch.float32).reshape(1)
        if self.world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item() > 0)

    def _skip_step(self, losses: dict[str, Tensor]) -> None:
        self.nonfinite += 1
        values = ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
        message = (f"iteration {self.iteration}: non-finite loss ({values}); step skipped "
                   f"({self.nonfinite} in a row, at most {self.solver.max_nonfinite_steps})")
        if self.rank == 0:
            tqdm.write(f"warning: {message}")
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        if self.nonfinite >= self.solver.max_nonfinite_steps:
            path = self.save()
            raise FloatingPointError(
                f"stopped after {self.nonfinite} non-finite losses in a row at iteration {self.iteration}; "
                f"checkpoint of the last good state: {path}. Lower the learning rate or clip gradients "
                "(--set solver.clip_grad_norm=...)."
            )

    def _log_window(self, window: dict[str, float], bar: tqdm, start: float, data_time: float) -> None:
        n = self.solver.log_period if self.iteration % self.solver.log_period == 0 else (
            self.iteration % self.solver.log_period)
        means = mdist.all_reduce_mean({k: v / n for k, v in window.items()}, self.device)
        elapsed = time.perf_counter() - start
        record = {
            "iteration": self.iteration,
            "lr": self.optimizer.param_groups[0]["lr"],
            **means,
            "seconds_per_iteration": elapsed / n,
            "data_seconds_per_iteration": data_time / n,
        }
        self._log(record)
        short = {k.replace("loss_", ""): f"{v:.3f}" for k, v in means.items() if k != "total_loss"}
        bar.set_postfix(loss=f"{means['total_loss']:.3f}", **short, lr=f"{record['lr']:.2g}")

    # -- validation -------------------------------------------------------

    def validate(self) -> dict[str, Any] | None:
        """COCO AP on the validation set (rank 0 computes; the others wait)."""
        if self.validation is None:
            return None
        metrics = None
        if self.rank == 0:
            from .evaluate import evaluate
            from .predict import Predictor

            predictor = Predictor(self.model, self.cfg, device=self.device)
            metrics, _ = evaluate(predictor, self.validation.ground_truth(), self.validation.image_dir,
                                  progress=self.progress)
            flat = {f"{kind}/{k}": v for kind in ("bbox", "segm") for k, v in metrics.get(kind, {}).items()}
            self._log({"iteration": self.iteration, **flat})
            if self.progress:
                # AP is None (undefined) on a validation set without ground-truth instances.
                shown = [f"{name} AP {'-' if ap is None else f'{ap:.3f}'}"
                         for kind, name in (("bbox", "box"), ("segm", "mask")) if kind in metrics
                         for ap in [metrics[kind]["AP"]]]
                tqdm.write(f"iteration {self.iteration}: " + ", ".join(shown))
        if self.world > 1:
            dist.barrier()
        return metrics

    def finish(self) -> dict[str, Any] | None:
        """Final model, final validation, loss curve."""
        metrics = self.validate()
        if self.rank == 0:
            model_state = self.model.state_dict()
            save_model(self.out / FINAL_MODEL, self.cfg, model_state)
            if metrics is not None:
                write_json_atomic(self.out / "final_metrics.json", metrics, indent=2)
            plot_losses(self.history, self.out / "loss_curve.png")
            self.monitor.close()
        return metrics


def _config_differences(theirs: Any, ours: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, their value, our value)`` of every field where two config dicts differ."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        found = []
        for key in sorted(set(theirs) | set(ours)):
            found += _config_differences(theirs.get(key), ours.get(key), f"{prefix}{key}.")
        return found
    return [] if theirs == ours else [(prefix.rstrip("."), theirs, ours)]


def _names(names: tuple[str, ...], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "") if names else "unnamed"
