"""Callbacks that break a run on purpose, for the tests of resuming and failure (loaded by class_path from a
subprocess with ``tests/`` on ``PYTHONPATH``)."""

import os
import signal

import torch
from lightning.pytorch import Callback


class KillAtStep(Callback):
    """SIGKILL this process right after training step ``step``: nothing gets to clean up or save."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAtStep(Callback):
    """Send this process ``signal_name`` (``SIGTERM``, ``SIGUSR1``) during training step ``step``."""

    def __init__(self, step: int, signal_name: str = "SIGTERM") -> None:
        self.step, self.signal_name = step, signal_name

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step + 1 == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))


class PoisonAtStep(Callback):
    """Set one weight to nan before training step ``step``, so that step's loss is nan."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step + 1 == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


class PoisonBatches(Callback):
    """Fill the inputs of the batches of training steps ``first`` to ``last`` with nan (the weights stay finite)."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first <= trainer.global_step + 1 <= self.last:
            batch[0].fill_(float("nan"))


class SaveWeights(Callback):
    """At the end of training, save this rank's weights to ``<folder>/rank<global_rank>.pt`` (to compare ranks)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        os.makedirs(self.folder, exist_ok=True)
        weights = {name: p.detach() for name, p in pl_module.named_parameters()}
        torch.save(weights, os.path.join(self.folder, f"rank{trainer.global_rank}.pt"))
