"""Hyperparameter saving shared by the LightningModules."""

from __future__ import annotations

import inspect
import warnings

from lightning.pytorch import LightningModule
from torch import nn


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


def resolve_factory(value):
    """An optimizer or scheduler factory given as an import path (as recorded in hyperparameters) -> the object."""
    if isinstance(value, str):
        import importlib

        module, _, name = value.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return value


def configure_optimizers(module, optimizer, lr_scheduler):
    """What ``configure_optimizers`` returns for our modules: the optimizer, and the scheduler stepped every epoch
    (``ReduceLROnPlateau`` watching ``val/loss``) when one is given."""
    built = resolve_factory(optimizer)(module.parameters())
    if lr_scheduler is None:
        return built
    scheduler = resolve_factory(lr_scheduler)(built)
    return {"optimizer": built, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}
