"""Runs that survive interruption and failure: where a run lives, what its checkpoints hold, what stops it.

A run lives in ``<default_root_dir>/<run name>/version_N/``: TensorBoard events, ``config.yaml``, ``hparams.yaml`` and
``checkpoints/``. ``checkpoints/last.ckpt`` is always the latest state (every N training steps, every epoch end, the
end of training, SIGTERM, SIGUSR1), written atomically; the best checkpoints by the monitored metric sit beside it.
``rrn fit --ckpt_path last`` continues the latest run of a config in its own folder (``rrn_lightning/cli.py``).
"""

from __future__ import annotations

import math
import os
import random
import re
import signal
import threading
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from .common import IGNORE_INDEX, ConfigurationError
from .lightning_private import (
    HookedCheckpoint,
    mark_checkpoint_saved,
    plain_hparams,
    tensorboard_hparams,
    write_summaries,
)
from .tasks import TaskModule

__all__ = [
    "NonFiniteLoss",
    "NonFiniteLossError",
    "PredictionWriter",
    "RunCheckpoint",
    "RunLogger",
    "RunProgressBar",
    "RunSummary",
    "latest_checkpoint",
    "monitored_metric",
    "run_of_checkpoint",
]

LAST = "last.ckpt"
_VERSION = re.compile(r"version_(\d+)")


# ---------------------------------------------------------------------------------------------- run folders
def latest_checkpoint(save_dir: str | Path, name: str) -> Path | None:
    """``<save_dir>/<name>/version_N/checkpoints/last.ckpt`` of the highest N that has one, or None."""
    found = []
    for folder in Path(save_dir, name).glob("version_*"):
        match = _VERSION.fullmatch(folder.name)
        if match and (folder / "checkpoints" / LAST).is_file():
            found.append((int(match.group(1)), folder / "checkpoints" / LAST))
    return max(found)[1] if found else None


def run_of_checkpoint(path: str | Path) -> tuple[Path, str, int] | None:
    """(save_dir, run name, version) of a checkpoint at ``<save_dir>/<name>/version_N/checkpoints/<file>``; None for
    a checkpoint kept anywhere else."""
    path = Path(path).resolve()
    version_dir = path.parent.parent
    match = _VERSION.fullmatch(version_dir.name)
    if path.parent.name != "checkpoints" or match is None:
        return None
    return version_dir.parent.parent, version_dir.parent.name, int(match.group(1))


class RunLogger(TensorBoardLogger):
    """TensorBoard logger of a run; ``purge_step`` (set by ``rrn fit`` when it resumes) hides the events that the
    interrupted run wrote at or after that step, so a resumed run's curves continue without duplicated steps."""

    def __init__(
        self,
        save_dir: str,
        name: str = "lightning_logs",
        version: int | None = None,
        purge_step: int | None = None,
    ) -> None:
        extra = {} if purge_step is None else {"purge_step": purge_step}
        # No placeholder hp_metric: it would be logged again at step 0 by every resumed run.
        super().__init__(save_dir, name=name, version=version, default_hp_metric=False, **extra)
        self._extra_hparams: dict[str, Any] = {}
        self._hparam_metrics: list[str] = []

    def declare_hparams(self, extra: dict[str, Any], metrics: list[str]) -> None:
        """Called before fit logs the hyperparameters (``Insight.setup``): ``extra`` joins them (in hparams.yaml
        too), and ``metrics`` are the scalar tags that TensorBoard's HPARAMS tab shows beside them, logged later."""
        self._extra_hparams, self._hparam_metrics = dict(extra), list(metrics)

    @rank_zero_only
    def log_hyperparams(self, params, metrics=None, step=None) -> None:
        # Lightning's own bookkeeping (_instantiator, ...) is not a hyperparameter.
        params = plain_hparams(params)
        if metrics is not None or not self._hparam_metrics:
            return super().log_hyperparams(params, metrics, step)
        params.update(self._extra_hparams)
        super().log_hyperparams(params)  # hparams.yaml; without metrics, nothing goes into the events yet
        # The HPARAMS tab's record, naming the metric tags without logging a placeholder value for them (Lightning
        # would log the values given here as scalars at step 0, and again on every resume).
        from torch.utils.tensorboard.summary import hparams

        write_summaries(
            self.experiment, hparams(tensorboard_hparams(params), dict.fromkeys(self._hparam_metrics, 0.0))
        )


# ---------------------------------------------------------------------------------------------- random state
def _rng_state() -> dict[str, Any]:
    """The global random states a training step may draw from (dropout, ...): restored on resume, so a resumed run
    draws what the uninterrupted one drew. Our data streams have generators of their own."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))  # a checkpoint may hand the tuple back as a list
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _all_finite(module: LightningModule) -> bool:
    """Whether every weight (parameters and buffers; not the training metrics' sums) is finite."""
    tensors = [*module.parameters(), *module.buffers()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


# ---------------------------------------------------------------------------------------------- checkpoints
class RunCheckpoint(HookedCheckpoint):
    """Lightning's ``ModelCheckpoint`` (the best ``save_top_k`` checkpoints by ``monitor``, as configured) plus a
    ``last.ckpt`` that is always the latest state.

    ``last.ckpt`` is written every ``every_n_train_steps`` training steps (not on an epoch's last batch: the epoch
    end follows at once), at every training epoch end, at the end of training, when the process gets SIGTERM
    (Lightning stops at the end of the batch) and, without stopping, after the batch during which it got SIGUSR1.
    Every checkpoint is written to a temporary file and renamed into place, so a kill during a write leaves the
    previous file whole. A state with a non-finite weight is never written. The checkpoint also holds the global
    random states, restored before the first batch of a resumed run. ``fast_dev_run`` writes nothing.

    Args as ``lightning.pytorch.callbacks.ModelCheckpoint``, except:
        every_n_train_steps: Training steps between writes of ``last.ckpt`` (0: only at epoch ends, the end of
            training and on signals). The best checkpoints are chosen at validation ends.
        save_last: Must stay true (``last.ckpt`` is what ``--ckpt_path last`` resumes).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool = True,
        save_top_k: int = 1,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int = 0,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
    ) -> None:
        if save_last is not True:
            raise ConfigurationError(
                f"checkpoint: save_last must be true, got save_last={save_last!r}: last.ckpt is what "
                "`rrn fit --ckpt_path last` resumes. Set save_top_k to choose how many best checkpoints to keep."
            )
        if (
            isinstance(every_n_train_steps, bool)
            or not isinstance(every_n_train_steps, int)
            or every_n_train_steps < 0
        ):
            raise ConfigurationError(
                "checkpoint: every_n_train_steps must be 0 or a positive integer, got "
                f"every_n_train_steps={every_n_train_steps!r}."
            )
        # Lightning's own triggers choose the best checkpoints (at validation ends); last.ckpt is written here.
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=monitor,
            verbose=verbose,
            save_last=False,
            save_top_k=save_top_k,
            save_weights_only=save_weights_only,
            mode=mode,
            auto_insert_metric_name=auto_insert_metric_name,
            every_n_epochs=every_n_epochs,
            save_on_train_epoch_end=save_on_train_epoch_end,
        )
        self.last_every_n_steps = every_n_train_steps
        self.last_written: tuple[str, int] | None = None  # (path, global step) of the newest last.ckpt
        self._rng_to_restore: dict[str, Any] | None = None
        self._usr1 = threading.Event()
        self._previous_usr1: Any = None

    # -------------------------------------------------------------- when
    def _writes(self, trainer: Trainer) -> bool:
        return (
            not trainer.fast_dev_run and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        )

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._rng_to_restore is not None:
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # Any rank's SIGUSR1 makes every rank write (the write is collective).
        requested = trainer.strategy.reduce_boolean_decision(self._usr1.is_set(), all=False)
        due = self.last_every_n_steps > 0 and trainer.global_step % self.last_every_n_steps == 0
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if (requested or (due and not last_batch)) and self._writes(trainer):
            self._usr1.clear()
            self.write_last(trainer, "SIGUSR1" if requested else None)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._writes(trainer):
            self.write_last(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._writes(trainer) and (
            self.last_written is None or self.last_written[1] != trainer.global_step
        ):
            self.write_last(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # SIGTERM stops at a batch boundary (a whole optimizer step); other exceptions may strike mid-step, where the
        # state is not one to resume from: last.ckpt keeps the previous one.
        if isinstance(exception, SIGTERMException) and self._writes(trainer):
            self.write_last(trainer, "SIGTERM")

    # -------------------------------------------------------------- SIGUSR1: write now, keep training
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Composed with any handler already there: Lightning's SLURM requeue handler among them, which Lightning
        # installs after on_fit_start and only where no SIGUSR1 handler exists yet, so ours goes in after it.
        if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGUSR1)

            def handler(signum, frame):
                self._usr1.set()
                if callable(previous):
                    previous(signum, frame)

            self._previous_usr1 = previous
            signal.signal(signal.SIGUSR1, handler)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._previous_usr1 is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, self._previous_usr1)
            self._previous_usr1 = None

    # -------------------------------------------------------------- how
    def write_last(self, trainer: Trainer, reason: str | None = None) -> None:
        filepath = os.path.join(self.dirpath, LAST)
        self.last_model_path = filepath  # set before saving: it is part of the saved state
        self.write_checkpoint(trainer, filepath)
        self.last_written = (filepath, trainer.global_step)
        if reason is not None:
            rank_zero_info(f"{reason}: wrote {filepath} at step {trainer.global_step}.")

    def write_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        if not _all_finite(trainer.lightning_module):
            raise NonFiniteLossError(
                f"a weight became non-finite by step {trainer.global_step}; no checkpoint was written"
                f"{self.last_words()}."
            )
        folder, name = os.path.split(filepath)
        partial = os.path.join(folder, f".{name}.part")
        trainer.save_checkpoint(partial, self.save_weights_only)
        if trainer.is_global_zero:
            with open(partial, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(partial, filepath)
        trainer.strategy.barrier()
        mark_checkpoint_saved(self, trainer, filepath)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)

    def last_words(self) -> str:
        """Where the last good state is, for error messages."""
        if self.last_written is None:
            return "; no checkpoint had been written yet"
        path, step = self.last_written
        return f"; the last good checkpoint is {path} (step {step})"

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rng": _rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        self._rng_to_restore = state.pop("rng", None)
        super().load_state_dict(state)


# ---------------------------------------------------------------------------------------------- non-finite loss
class NonFiniteLossError(RuntimeError):
    """Training met a non-finite loss (or weight); ``rrn fit`` reports it and exits with status 1."""


class NonFiniteLoss(Callback):
    """What a non-finite (nan or inf) training loss does.

    ``stop`` (default): the run ends before that batch's backward pass, with a non-zero exit and a message naming the
    step, the loss and the last good checkpoint. ``skip``: that batch changes no weight (its gradients are dropped
    before the optimizer step), ``train/skipped_batches`` counts such batches, and the run stops after
    ``max_consecutive`` of them in a row. Under DDP every rank takes the same decision. Either way no state with a
    non-finite weight is ever written (``RunCheckpoint`` checks before every write).

    Args:
        mode: ``stop`` or ``skip``.
        max_consecutive: In ``skip`` mode, stop after this many non-finite losses in a row.
    """

    def __init__(self, mode: Literal["stop", "skip"] = "stop", max_consecutive: int = 10) -> None:
        if mode not in ("stop", "skip"):
            raise ConfigurationError(f"nonfinite: mode must be 'stop' or 'skip', got mode={mode!r}.")
        if isinstance(max_consecutive, bool) or not isinstance(max_consecutive, int) or max_consecutive < 1:
            raise ConfigurationError(
                f"nonfinite: max_consecutive must be a positive integer, got max_consecutive={max_consecutive!r}."
            )
        self.mode, self.max_consecutive = mode, max_consecutive
        self.skipped = 0  # batches skipped in this run
        self._streak = 0
        self._drop_gradients = False

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        finite = trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss).all()), all=True)
        if finite:
            self._streak = 0
            return
        value = float(loss.detach().float().sum()) if loss.numel() else math.nan
        where = f"at step {trainer.global_step + 1} (epoch {trainer.current_epoch})"
        if self.mode == "stop":
            raise NonFiniteLossError(f"non-finite training loss ({value}) {where}{_last_words(trainer)}.")
        self._streak += 1
        self.skipped += 1
        self._drop_gradients = True
        if self._streak >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{self._streak} non-finite training losses in a row (the last {value}) {where}, "
                f"max_consecutive={self.max_consecutive}{_last_words(trainer)}."
            )

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._drop_gradients:
            for parameter in pl_module.parameters():
                parameter.grad = None  # the optimizer skips parameters without a gradient
            self._drop_gradients = False
            pl_module.log("train/skipped_batches", float(self.skipped), on_step=True, on_epoch=False)


def _last_words(trainer: Trainer) -> str:
    callback = trainer.checkpoint_callback
    return callback.last_words() if isinstance(callback, RunCheckpoint) else ""


# ---------------------------------------------------------------------------------------------- predictions
class PredictionWriter(BasePredictionWriter):
    """``rrn predict`` writes what ``predict_step`` returns to ``<run folder>/predictions_<split>.pt`` (one file per
    rank under DDP: ``predictions_<split>-rank<r>.pt``): a dict of tensors, each the batches' values concatenated
    along the first dimension, shorter sequences padded with -100 to the longest. Read it with ``torch.load(path)``.

    Args:
        split: The evaluation split predicted (``validation`` or ``test``), which names the file; None for data
            whose predictions come from no named split (the file is then ``predictions.pt``).
    """

    def __init__(self, split: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.split = split
        self.filename = "predictions.pt" if split is None else f"predictions_{split}.pt"
        self.path: Path | None = None

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions, batch_indices
    ) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        if not batches:
            return
        if not all(isinstance(b, dict) for b in batches):
            batches = [{"prediction": b} for b in batches]
        merged: dict[str, Any] = {key: _concatenate([b[key] for b in batches]) for key in batches[0]}
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in merged.items())
        count = len(next(iter(merged.values())))
        if isinstance(pl_module, TaskModule):
            merged.update(pl_module.prediction_extras())
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        name = self.filename
        if trainer.world_size > 1:
            stem, dot, suffix = name.rpartition(".")
            name = f"{stem}-rank{trainer.global_rank}{dot}{suffix}"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / name
        partial = folder / f".{name}.part"
        torch.save(merged, partial)
        os.replace(partial, self.path)
        split = "" if self.split is None else f"the {self.split} split, "
        extras = "".join(f"; {key}" for key, value in merged.items() if not isinstance(value, Tensor))
        print(f"rrn predict: wrote {self.path} ({split}{count} examples: {shapes}{extras})")


def _concatenate(tensors: list[Tensor]) -> Tensor:
    tensors = [t.detach().cpu() for t in tensors]
    if any(t.dim() == 0 for t in tensors):
        return torch.stack(tensors)
    width = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    padded = []
    for t in tensors:
        pad: list[int] = []
        for d in reversed(range(1, t.dim())):
            pad += [0, width[d - 1] - t.shape[d]]
        padded.append(torch.nn.functional.pad(t, pad, value=IGNORE_INDEX) if any(pad) else t)
    return torch.cat(padded)


def monitored_metric(trainer: Trainer, pl_module: LightningModule) -> tuple[str, str]:
    """``(tag, mode)`` of the validation metric a run is judged by: the checkpoints' ``monitor``, else the task's
    ``primary_metric`` (``TaskModule``), else val/loss (lower is better)."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.monitor:
        return callback.monitor, callback.mode
    name, mode = pl_module.primary_metric if isinstance(pl_module, TaskModule) else ("loss", "min")
    return f"val/{name}", mode


class RunProgressBar(TQDMProgressBar):
    """Lightning's progress bar with a postfix that fits 80 columns: the training loss and the validation metric the
    run is judged by (``monitored_metric``: ``loss=0.350, val_acc=0.834``), instead of every metric logged to the
    bar."""

    _epoch_shown: int | None = None  # the epoch the training bar was last set up for

    def on_train_epoch_start(self, trainer: Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._epoch_shown = trainer.current_epoch

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # A run resumed in the middle of an epoch starts with no on_train_epoch_start for that epoch, and the bar
        # read "Training: 61/?"; set it up here instead: "Epoch 3: 61/100".
        if self._epoch_shown != trainer.current_epoch:
            self.on_train_epoch_start(trainer, pl_module)
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def get_metrics(
        self, trainer: Trainer, pl_module: LightningModule
    ) -> dict[str, int | str | float | dict]:
        metrics = super().get_metrics(trainer, pl_module)
        shown: dict[str, int | str | float | dict] = {}
        for name in ("train/loss_step", "train/loss"):
            if name in metrics:
                shown["loss"] = metrics[name]
                break
        monitor, _ = monitored_metric(trainer, pl_module)
        if monitor in metrics:
            shown[monitor.replace("/", "_")] = metrics[monitor]
        return shown


def _checkpoint_named(trainer: Trainer) -> str:
    """What validate or test evaluated: the checkpoint file it loaded, else the weights as they are."""
    return f"checkpoint {trainer.ckpt_path}" if trainer.ckpt_path else "the model's current weights"


class RunSummary(Callback):
    """At the end of ``rrn fit``, ``validate`` and ``test``, a few lines on where the run is and what it reached: the
    run folder and its step, the best checkpoint with the monitored metric (fit), and the TensorBoard command.
    ``trainer.log_dir`` is a broadcast from rank 0 under DDP: every rank reads it at setup, while all ranks still
    run together (``on_fit_end`` comes after the strategy's teardown), and only rank 0 prints."""

    def __init__(self) -> None:
        self._log_dir: str | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._log_dir = trainer.log_dir

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        lines = [f"run: {self._log_dir} (step {trainer.global_step})"]
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.best_model_path:
            score = callback.best_model_score
            value = "" if score is None else f" {float(score):.4f}"
            lines.append(f"best {callback.monitor}{value}: {callback.best_model_path}")
        self._say(trainer, lines)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._say(trainer, [f"run: {self._log_dir} (validated {_checkpoint_named(trainer)})"])

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._say(trainer, [f"run: {self._log_dir} (tested {_checkpoint_named(trainer)})"])

    def _say(self, trainer: Trainer, lines: list[str]) -> None:
        if self._log_dir is None or not trainer.is_global_zero:
            return
        lines.append(f"tensorboard --logdir {Path(self._log_dir).parent}")
        print("\n".join(lines), flush=True)
