"""``TaskModule``: what our three LightningModules share, so that each task module holds only its model and loss.

A task writes ``__init__`` (its arguments are the configuration; it adds its metrics with ``add_metric``),
``forward``, ``shared_step`` (one batch of any stage), and for inspection ``probe``, ``batch_counts`` and
``primary_metric``; it declares what checkpoints must agree on (``checkpoints.CheckpointedTask``). Here:

- ``Probe``, ``mlp``, ``resolve_factory``; ``TaskModule``: core checks, hyperparameters that rebuild the module,
  safe checkpoint loading, optimizers and schedulers, the step triplet, metrics (``add_metric``, ``metric``) and
  their logging under ``{stage}/{name}``.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any, Literal, NamedTuple

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.saving import load_hparams_from_yaml
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import Metric

from ..checkpoints import (
    CheckpointedTask,
    check_checkpoint,
    check_hyperparameters,
    import_allowed,
    saved_hyperparameters,
    upgrade_class_paths,
)
from ..common import ConfigurationError, check_positive_ints
from ..cores import RecurrentCore
from ..cores.compiling import CompileMode, check_compile_mode
from ..lightning_private import load_checkpoint

__all__ = ["Probe", "Stage", "TaskModule", "mlp", "resolve_factory"]

Stage = Literal["train", "val", "test"]


# What sizes a core, for the checkpoint checks' "which setting probably differs" (CheckpointedTask).
CORE_SETTING = (
    "the core's class or size (model.init_args.core: class_path, input_size, hidden_size / num_layers for LSTMCore, "
    "mem_slots / head_size / num_heads / num_blocks for RelationalMemory)"
)


class Probe(NamedTuple):
    """Everything inspection (``rrn_lightning.insight``) draws for a batch, as the model gives it
    (``TaskModule.probe``): inspection asks the probe, never the batch or the model's attributes."""

    inputs: Tensor  # [B, T, ...]: the core's input sequence (an LM's embedded tokens)
    lengths: Tensor | None  # [B] real steps, or None when all T are real
    predictions: Tensor  # [B] class ids, [B, T_out] output ids or [B, T] next-token ids
    core: RecurrentCore | None = None  # the core that reads ``inputs``, traced for attention and gates
    tokens: Tensor | None = None  # [B, T] a language model's token ids (a continuation starts from them)
    words: list[str] | None = None  # the vocabulary in id order, to put tokens into words
    # (prompt ids, how many, torch.Generator) -> sampled ids: a language model's continuation
    generate: Callable[..., list[int]] | None = None


def mlp(in_features: int, hidden_sizes: Sequence[int], out_features: int) -> nn.Sequential:
    """Linear layers with ReLU after every hidden layer and none after the output layer."""
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [nn.Linear(in_features, size), nn.ReLU()]
        in_features = size
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


def resolve_factory(value, where: str):
    """An optimizer or scheduler factory given as an import path (as recorded in hyperparameters) -> the class;
    only ``torch.optim`` / ``torch.optim.lr_scheduler`` classes are imported. ``where`` names it in errors."""
    if isinstance(value, str):
        return import_allowed(value, where, (Optimizer, LRScheduler))
    return value


class TaskModule(LightningModule, CheckpointedTask):
    """Base class of our LightningModules (``SequenceClassifier``, ``Seq2Seq``, ``LanguageModel``); the ``rrn`` CLI
    takes any subclass as ``model``.

    Args:
        core: The recurrent core, e.g. ``rrn_lightning.RelationalMemory`` or ``rrn_lightning.LSTMCore``
            (``class_path`` in YAML); its ``input_size`` is linked from the data by the ``rrn`` CLI.
        optimizer: Optimizer factory, called with the parameters (``class_path: torch.optim.Adam`` in YAML).
        lr_scheduler: Optional LR scheduler factory, called with the optimizer; stepped every epoch
            (``ReduceLROnPlateau`` watches ``val/loss``).
        compile_step: Run the cores' time-loop step under ``torch.compile`` (``RelationalMemory.compile_step``):
            false, true (inductor's default mode) or a mode name; None (the default) keeps each core's own setting.
            Cores without a step to compile (``LSTMCore``: ``nn.LSTM`` is one fused kernel) are left as they are.
    """

    one_row_core: bool = False
    """Whether the task feeds its core one input row per step (a token, a character), so ``input_rows`` must be 1."""

    primary_metric: tuple[str, str] = ("loss", "min")
    """The validation metric that says how good a run is, and whether higher (``"max"``) or lower is better: what
    ``rrn_lightning.insight.Insight`` reports as best and final in TensorBoard's HPARAMS tab when the checkpoint
    callback monitors nothing."""

    def __init__(
        self,
        core: RecurrentCore,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        compile_step: CompileMode | None = None,
    ) -> None:
        super().__init__()
        self._metrics: dict[tuple[str, str], Metric] = {}  # (stage, name) -> metric, filled by add_metric
        self.check_core(core, one_row=self.one_row_core)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.set_compile_step(compile_step, core)

    def set_compile_step(self, value: CompileMode | None, *cores: RecurrentCore | None) -> None:
        """Set ``compile_step`` on every core among ``cores`` that has one; None leaves them as they are."""
        if value is None:
            return
        value = check_compile_mode(self.owner, value)
        for core in cores:
            if core is not None and hasattr(core, "compile_step"):
                core.compile_step = value

    # -------------------------------------------------------------- checks
    @property
    def owner(self) -> str:
        """The name that errors start with."""
        return type(self).__name__

    def check_core(self, core: Any, label: str = "core", one_row: bool = False) -> None:
        """``core`` (the argument called ``label``) must be a ``RecurrentCore``; with ``one_row``, one that reads
        one input row per step (``input_rows=1``), as tasks that feed it a token or a character per step need."""
        if not isinstance(core, RecurrentCore):
            raise ConfigurationError(
                f"{self.owner}: {label} must be a RecurrentCore (RelationalMemory, LSTMCore or a subclass of "
                f"rrn_lightning.RecurrentCore), got {label}={type(core).__name__}."
            )
        if one_row and getattr(core, "input_rows", 1) != 1:
            raise ConfigurationError(
                f"{self.owner}: the {label} must read one row per step, got input_rows={core.input_rows}."
            )

    def check_head_sizes(self, head_sizes: Any) -> None:
        """The hidden layer sizes of an MLP head: a list of positive integers."""
        if not isinstance(head_sizes, tuple | list):
            raise ConfigurationError(
                f"{self.owner}: head_sizes must be a list of layer sizes, e.g. [256, 256], got {head_sizes!r}."
            )
        for i, size in enumerate(head_sizes):
            check_positive_ints(self.owner, **{f"head_sizes[{i}]": size})

    # -------------------------------------------------------------- hyperparameters and checkpoints
    def save_config_hyperparameters(self, ignore: Sequence[str] = ()) -> None:
        """Save the calling ``__init__``'s arguments (less ``ignore``) so that ``load_from_checkpoint(path)`` alone
        rebuilds the module.

        Under the ``rrn`` CLI, Lightning records the parsed config (the core as ``class_path`` + ``init_args``),
        which is all a checkpoint needs. A module built in Python receives the core as an ``nn.Module`` instead; its
        weights are in the state dict already, so it is not pickled into the hyperparameters: load such a
        checkpoint with ``load_from_checkpoint(path, core=<a core of the same shape>)``. Classes passed as arguments
        (an optimizer class) are recorded by import path, so that the checkpoint loads with ``weights_only=True``.
        """
        frame = inspect.currentframe().f_back  # the task module's __init__
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*is an instance of `nn.Module`.*")
            self.save_hyperparameters(ignore=list(ignore), frame=frame)
        for name in [k for k, v in self.hparams.items() if isinstance(v, nn.Module)]:
            del self.hparams[name]
        # Classes and functions (an optimizer class passed in Python, the default Adam) would make the checkpoint
        # unloadable with torch.load(weights_only=True), Lightning's default; store their import path instead.
        for name, value in list(self.hparams.items()):
            if inspect.isclass(value) or inspect.isfunction(value):
                self.hparams[name] = f"{value.__module__}.{value.__qualname__}"
        # Under the CLI the core's config may lack input_size (a link target, left out of the saved config.yaml
        # when the data module has no input_size to link, as for token inputs); record it so that a checkpoint
        # rebuilds the core alone.
        core, module_core = self.hparams.get("core"), frame.f_locals.get("core")
        init_args = getattr(core, "init_args", None) if core is not None else None
        if init_args is None and isinstance(core, dict):
            init_args = core.get("init_args")
        if init_args is not None and init_args.get("input_size") is None and module_core is not None:
            init_args["input_size"] = module_core.input_size

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path,
        map_location=None,
        hparams_file=None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs,
    ):
        """Lightning's ``load_from_checkpoint``, after reading the file with ``check_checkpoint`` (a clear error for
        a bad or other-kind file; hyperparameters that name code outside the allowlist are refused before Lightning
        imports anything they name). What the caller passes in (``kwargs``, ``hparams_file``) replaces the file's
        values, so passing an object in lifts a refusal. Class paths of classes that have moved since the file was
        written (``rrn_lightning.classifier.SequenceClassifier``, ...) are read as their new paths."""
        overrides = {**(load_hparams_from_yaml(hparams_file) if hparams_file is not None else {}), **kwargs}
        if isinstance(checkpoint_path, str | PathLike) and "://" not in str(checkpoint_path):
            checkpoint = check_checkpoint(checkpoint_path, cls, what="checkpoint", overrides=overrides)
        else:  # an open file or a URL: Lightning's reader, safely; then rewind the file for Lightning's own read
            position = checkpoint_path.tell() if hasattr(checkpoint_path, "tell") else None
            checkpoint = load_checkpoint(checkpoint_path)
            if position is not None:
                checkpoint_path.seek(position)
            check_hyperparameters({**saved_hyperparameters(checkpoint), **overrides}, "checkpoint")
        # Lightning builds the module from the file's hyperparameters updated by kwargs: pass the moved ones in.
        recorded = {**saved_hyperparameters(checkpoint), **overrides}
        upgraded = upgrade_class_paths(recorded)
        kwargs.update({k: v for k, v in upgraded.items() if v != recorded[k]})
        return super().load_from_checkpoint(
            checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs
        )

    # -------------------------------------------------------------- optimizers
    def configure_optimizers(self):
        """The optimizer, and the scheduler stepped every epoch (``ReduceLROnPlateau`` watching ``val/loss``) when
        one is given."""
        built = resolve_factory(self.optimizer_factory, f"{self.owner}: optimizer")(self.parameters())
        if self.lr_scheduler_factory is None:
            return built
        scheduler = resolve_factory(self.lr_scheduler_factory, f"{self.owner}: lr_scheduler")(built)
        return {"optimizer": built, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}

    # -------------------------------------------------------------- steps
    def shared_step(self, batch: Any, stage: Stage, batch_idx: int) -> Tensor:
        """The loss of one batch of ``stage``, its metrics updated and logged (``log_loss``, ``log_metric``)."""
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.shared_step(batch, "train", batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.shared_step(batch, "val", batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.shared_step(batch, "test", batch_idx)

    # -------------------------------------------------------------- inspection (rrn_lightning.insight)
    def probe(self, batch: Any) -> Probe:
        """The core's input sequence for an evaluation ``batch`` and the model's predictions for it; called by
        ``Insight`` in eval mode without gradients."""
        raise NotImplementedError

    def prediction_extras(self) -> dict[str, Any]:
        """What ``rrn predict`` writes beside the predictions (e.g. the names of the class ids); none here."""
        return {}

    def batch_counts(self, batch: Any) -> tuple[str, int]:
        """What one training batch holds, for throughput: ``("examples", B)``, or ``("tokens", n)``."""
        raise NotImplementedError

    # -------------------------------------------------------------- metrics
    # One convention for every task: each metric is added with add_metric(stage, name, metric), becomes the
    # submodule ``{stage}_{name}`` (its state-dict prefix) and is found again with metric(stage, name).
    def add_metric(self, stage: Stage, name: str, metric: Metric) -> Metric:
        """Register ``metric`` for ``stage`` (train, val or test) under ``name`` (logged as ``{stage}/{name}``).
        Training metrics are saved in checkpoints, so that the epoch aggregates of an epoch resumed mid-way
        (``train/loss_epoch``, ``train/acc_epoch``, ...) count the batches before the interruption too; checkpoints
        written before they were saved load with those states at zero. Every task adds ``("train", "loss")``."""
        setattr(self, f"{stage}_{name}", metric)
        self._metrics[(stage, name)] = metric
        if stage == "train":
            metric.persistent(True)
        return metric

    def metric(self, stage: Stage, name: str) -> Metric:
        """The metric added as ``(stage, name)``."""
        return self._metrics[(stage, name)]

    def training_metrics(self) -> list[Metric]:
        """The metrics added for the train stage: the training loss and any training accuracy."""
        return [metric for (stage, _), metric in self._metrics.items() if stage == "train"]

    def log_training_loss(self, *update: Any) -> None:
        """Update the training loss metric with ``update`` (its ``update`` arguments) and log it as ``train/loss``,
        per step and as the epoch's mean."""
        loss = self.metric("train", "loss")
        loss(*update)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)

    def log_loss(self, stage: Stage, loss: Tensor, batch_size: int) -> None:
        """A batch's mean loss: in training into the training loss metric (weighted by ``batch_size``; batches that
        ``NonFiniteLoss`` skips are left out); in evaluation logged as ``{stage}/loss``, the epoch's mean over
        batches and DDP ranks weighted by ``batch_size``."""
        if stage == "train":
            self.log_training_loss(loss.detach(), batch_size)
        else:
            self.log(
                f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=batch_size
            )

    def log_metric(
        self, stage: Stage, name: str, metric: Metric, batch_size: int | None = None, on_step: bool = False
    ) -> None:
        """A metric (already updated with the batch) logged as ``{stage}/{name}``, computed over the epoch."""
        self.log(
            f"{stage}/{name}", metric, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=batch_size
        )

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if batch_idx == 0:  # a checkpoint taken at the end of the previous epoch holds its full sums
            for metric in self.training_metrics():
                metric.reset()

    def training_metric_states(self) -> dict[str, Tensor]:
        """The training metrics' entries of ``state_dict()``, by key."""
        names = {id(m): name for name, m in self.named_modules()}
        return {
            f"{names[id(metric)]}.{key}": value
            for metric in self.training_metrics()
            for key, value in metric.state_dict().items()
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("state_dict")
        if state is not None:
            self.upgrade_state_dict(state)
            # The checkpoint holds rank 0's sums: under DDP the other ranks start the resumed epoch from zero, so
            # that no batch is counted twice when the ranks' sums are added up.
            other_rank = self._trainer is not None and self.trainer.global_rank != 0
            for key, value in self.training_metric_states().items():
                if other_rank:
                    state[key] = torch.zeros_like(value)  # our training metrics' states are all sums
                else:
                    state.setdefault(key, value)
        super().on_load_checkpoint(checkpoint)
