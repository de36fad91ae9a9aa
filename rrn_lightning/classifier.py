"""Sequence classification: a core reads the sequence, an MLP head classifies its last output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from .checks import ConfigurationError, check_positive_ints
from .cores import RecurrentCore
from .hparams import (
    CheckedCheckpointLoading,
    ResumableTrainingMetrics,
    configure_optimizers,
    save_config_hyperparameters,
)

__all__ = ["SequenceClassifier", "mlp"]


def mlp(in_features: int, hidden_sizes: tuple[int, ...] | list[int], out_features: int) -> nn.Sequential:
    """Linear layers with ReLU after every hidden layer and none after the output layer."""
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [nn.Linear(in_features, size), nn.ReLU()]
        in_features = size
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


def unpack_batch(batch) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """A batch is an inputs tensor, or a tuple ``(inputs, labels)`` or ``(inputs, labels, lengths)``."""
    if isinstance(batch, Tensor):
        return batch, None, None
    if isinstance(batch, tuple | list) and 1 <= len(batch) <= 3 and all(isinstance(b, Tensor) for b in batch):
        inputs, labels, lengths = (*batch, None, None)[:3]
        return inputs, labels, lengths
    described = (
        f"{type(batch).__name__} of {len(batch)}" if isinstance(batch, tuple | list) else type(batch).__name__
    )
    raise ValueError(
        f"SequenceClassifier: a batch must be an inputs tensor or a tuple (inputs, labels) or "
        f"(inputs, labels, lengths) of tensors, got {described}."
    )


class SequenceClassifier(CheckedCheckpointLoading, ResumableTrainingMetrics, LightningModule):
    """Classify a sequence from the core's output at its last (real) step.

    Batches are ``(inputs [B, T, ...], labels [B])`` or ``(inputs, labels, lengths [B])`` for padded sequences;
    ``predict`` also takes a bare inputs tensor and returns the predicted classes and their probabilities.
    Logs ``{train,val,test}/loss`` and ``{train,val,test}/acc``.

    Args:
        core: The recurrent core, e.g. ``rrn_lightning.RelationalMemory`` or ``rrn_lightning.LSTMCore``
            (``class_path`` in YAML). Its ``input_size`` is linked from the data by the ``rrn`` CLI.
        num_classes: Number of classes (linked from the data by the ``rrn`` CLI).
        head_sizes: Hidden layer sizes of the MLP head (ReLU after each); the paper uses four layers of 256.
        optimizer: Optimizer factory, called with the parameters (``class_path: torch.optim.Adam`` in YAML).
        lr_scheduler: Optional LR scheduler factory, called with the optimizer; stepped every epoch
            (``ReduceLROnPlateau`` watches ``val/loss``).
    """

    def __init__(
        self,
        core: RecurrentCore,
        num_classes: int,
        head_sizes: tuple[int, ...] = (256, 256, 256, 256),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        check_positive_ints(type(self).__name__, num_classes=num_classes)
        if not isinstance(head_sizes, tuple | list):
            raise ConfigurationError(
                f"SequenceClassifier: head_sizes must be a list of layer sizes, e.g. [256, 256], got {head_sizes!r}."
            )
        for i, size in enumerate(head_sizes):
            check_positive_ints(type(self).__name__, **{f"head_sizes[{i}]": size})
        if not isinstance(core, RecurrentCore):
            raise ConfigurationError(
                f"SequenceClassifier: core must be a RecurrentCore (RelationalMemory, LSTMCore or a subclass of "
                f"rrn_lightning.RecurrentCore), got core={type(core).__name__}."
            )
        save_config_hyperparameters(self)
        self.core = core
        self.head = mlp(core.output_size, tuple(head_sizes), num_classes)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        # The training loss as a metric, so that checkpoints hold its epoch sums; batches that NonFiniteLoss skips
        # are left out.
        self.train_loss = MeanMetric(nan_strategy="ignore")
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self._persist_training_metrics()

    def training_metrics(self) -> list[Metric]:
        return [self.train_loss, self.train_acc]

    def forward(self, inputs: Tensor, lengths: Tensor | None = None) -> Tensor:
        """inputs ``[B, T, ...]`` -> logits ``[B, num_classes]``."""
        outputs, _ = self.core(inputs, lengths=lengths)  # [B, T, O]
        if lengths is None:
            last = outputs[:, -1]  # [B, O]
        else:
            index = (lengths.to(outputs.device).long() - 1).clamp(min=0)  # [B]
            last = outputs[torch.arange(outputs.shape[0], device=outputs.device), index]  # [B, O]
        return self.head(last)

    def _shared_step(self, batch: tuple[Tensor, ...], stage: str) -> Tensor:
        inputs, labels, lengths = unpack_batch(batch)
        if labels is None:
            raise ValueError(f"SequenceClassifier: {stage} batches need labels: (inputs, labels[, lengths]).")
        logits = self(inputs, lengths)
        loss = F.cross_entropy(logits.float(), labels)
        accuracy = getattr(self, f"{stage}_acc")
        accuracy(logits, labels)
        on_step = stage == "train"
        size = labels.shape[0]
        if on_step:
            self.train_loss(loss.detach(), size)
            self.log(
                "train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size
            )
        else:
            self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=size)
        self.log(f"{stage}/acc", accuracy, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=size)
        return loss

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor]:
        inputs, _, lengths = unpack_batch(batch)
        probabilities = self(inputs, lengths).softmax(-1)
        return {"prediction": probabilities.argmax(-1), "probabilities": probabilities}

    def configure_optimizers(self):
        return configure_optimizers(self, self.optimizer_factory, self.lr_scheduler_factory)
