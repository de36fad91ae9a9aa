"""Hyperparameters of the LightningModules: saved on construction, checked on loading, factories resolved."""

from __future__ import annotations

import inspect
import warnings
from os import PathLike

import torch
from lightning.fabric.utilities.cloud_io import _load as pl_load
from lightning.pytorch import LightningModule
from lightning.pytorch.core.saving import load_hparams_from_yaml
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import Metric

from .checkpoints import check_checkpoint, check_hyperparameters, import_allowed, saved_hyperparameters


def save_config_hyperparameters(module: LightningModule) -> None:
    """Save the calling ``__init__``'s arguments so that ``load_from_checkpoint(path)`` alone rebuilds the module.

    Under the ``rrn`` CLI, Lightning records the parsed config (the core as ``class_path`` + ``init_args``), which
    is all a checkpoint needs. A module built in Python receives the core as an ``nn.Module`` instead; its weights
    are in the state dict already, so it is not pickled into the hyperparameters: load such a checkpoint with
    ``load_from_checkpoint(path, core=<a core of the same shape>)``. Classes passed as arguments (an optimizer
    class) are recorded by import path, so that the checkpoint loads with ``weights_only=True``.
    """
    frame = inspect.currentframe().f_back  # the LightningModule's __init__
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is an instance of `nn.Module`.*")
        module.save_hyperparameters(frame=frame)
    for name in [k for k, v in module.hparams.items() if isinstance(v, nn.Module)]:
        del module.hparams[name]
    # Classes and functions (an optimizer class passed in Python, the default Adam) would make the checkpoint
    # unloadable with torch.load(weights_only=True), Lightning's default; store their import path instead.
    for name, value in list(module.hparams.items()):
        if inspect.isclass(value) or inspect.isfunction(value):
            module.hparams[name] = f"{value.__module__}.{value.__qualname__}"


def resolve_factory(value, where: str):
    """An optimizer or scheduler factory given as an import path (as recorded in hyperparameters) -> the class;
    only ``torch.optim`` / ``torch.optim.lr_scheduler`` classes are imported. ``where`` names it in errors."""
    if isinstance(value, str):
        return import_allowed(value, where, (Optimizer, LRScheduler))
    return value


class CheckedCheckpointLoading:
    """Mixin of our LightningModules (before ``LightningModule`` in the bases): ``load_from_checkpoint`` first
    reads the file with ``check_checkpoint`` (a clear error for a bad or other-kind file; hyperparameters that name
    code outside the allowlist are refused before Lightning imports anything they name). What the caller passes
    in (``kwargs``, ``hparams_file``) replaces the file's values, so passing an object in lifts a refusal."""

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
        overrides = {**(load_hparams_from_yaml(hparams_file) if hparams_file is not None else {}), **kwargs}
        if isinstance(checkpoint_path, str | PathLike) and "://" not in str(checkpoint_path):
            check_checkpoint(checkpoint_path, cls, what="checkpoint", overrides=overrides)
        else:  # an open file or a URL: Lightning's reader, safely; then rewind the file for Lightning's own read
            position = checkpoint_path.tell() if hasattr(checkpoint_path, "tell") else None
            checkpoint = pl_load(checkpoint_path, map_location="cpu", weights_only=True)
            if position is not None:
                checkpoint_path.seek(position)
            check_hyperparameters({**saved_hyperparameters(checkpoint), **overrides}, "checkpoint")
        return super().load_from_checkpoint(
            checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs
        )


class ResumableTrainingMetrics:
    """Mixin of our LightningModules: the training metrics they name in ``training_metrics()`` (torchmetrics
    objects) are saved in checkpoints and restart at each epoch's first batch, so the epoch aggregates of an epoch
    resumed mid-way (``train/loss_epoch``, ``train/acc_epoch``, ...) count the batches before the interruption too.
    Checkpoints written before they were saved load with those states at zero."""

    def training_metrics(self) -> list[Metric]:
        raise NotImplementedError

    def _persist_training_metrics(self) -> None:
        for metric in self.training_metrics():
            metric.persistent(True)

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
            # The checkpoint holds rank 0's sums: under DDP the other ranks start the resumed epoch from zero, so
            # that no batch is counted twice when the ranks' sums are added up.
            other_rank = self._trainer is not None and self.trainer.global_rank != 0
            for key, value in self.training_metric_states().items():
                if other_rank:
                    state[key] = torch.zeros_like(value)  # our training metrics' states are all sums
                else:
                    state.setdefault(key, value)
        super().on_load_checkpoint(checkpoint)


def configure_optimizers(module, optimizer, lr_scheduler):
    """What ``configure_optimizers`` returns for our modules: the optimizer, and the scheduler stepped every epoch
    (``ReduceLROnPlateau`` watching ``val/loss``) when one is given."""
    built = resolve_factory(optimizer, f"{type(module).__name__}: optimizer")(module.parameters())
    if lr_scheduler is None:
        return built
    scheduler = resolve_factory(lr_scheduler, f"{type(module).__name__}: lr_scheduler")(built)
    return {"optimizer": built, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}
