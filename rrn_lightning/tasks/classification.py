"""Sequence classification: a core reads the sequence, an MLP head classifies its last output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.utilities import dim_zero_cat

from ..common import ClassificationBatch, ConfigurationError, check_positive_ints
from ..cores import RecurrentCore
from ..cores.compiling import CompileMode
from .base import CORE_SETTING, Probe, Stage, TaskModule, mlp

__all__ = ["SequenceClassifier"]


def unpack_batch(batch) -> ClassificationBatch:
    """A batch is an inputs tensor, a ``ClassificationBatch``, or a tuple ``(inputs, labels)`` or
    ``(inputs, labels, lengths)`` of tensors; the fields it lacks are None."""
    if isinstance(batch, Tensor):
        return ClassificationBatch(batch, None)
    if isinstance(batch, ClassificationBatch):
        return batch
    if isinstance(batch, tuple | list) and 1 <= len(batch) <= 3 and all(isinstance(b, Tensor) for b in batch):
        inputs, labels, lengths = (*batch, None, None)[:3]
        return ClassificationBatch(inputs, labels, lengths)
    described = (
        f"{type(batch).__name__} of {len(batch)}" if isinstance(batch, tuple | list) else type(batch).__name__
    )
    raise ValueError(
        f"SequenceClassifier: a batch must be an inputs tensor, a ClassificationBatch, or a tuple (inputs, labels) "
        f"or (inputs, labels, lengths) of tensors, got {described}."
    )


class GroupAccuracy(Metric):
    """Accuracy per group of examples (``ClassificationBatch.groups``): ``compute()`` -> ``{group: accuracy}`` for
    the groups seen. Keeps one (group, correct) pair per example, gathered across DDP ranks."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("groups", default=[], dist_reduce_fx="cat")
        self.add_state("correct", default=[], dist_reduce_fx="cat")

    def update(self, predictions: Tensor, labels: Tensor, groups: Tensor) -> None:
        self.groups.append(groups.long().flatten())
        self.correct.append((predictions == labels).flatten().float())

    def compute(self) -> dict[int, Tensor]:
        if isinstance(self.groups, list) and not self.groups:
            return {}
        # Lists of per-batch tensors, or one tensor each once gathered across ranks.
        groups, correct = dim_zero_cat(self.groups), dim_zero_cat(self.correct)
        totals = torch.bincount(groups)  # [G]
        hits = torch.bincount(groups, weights=correct, minlength=totals.shape[0])  # [G]
        return {g: hits[g] / totals[g] for g in range(totals.shape[0]) if totals[g] > 0}


class SequenceClassifier(TaskModule):
    """Classify a sequence from the core's output at its last (real) step.

    Batches are ``ClassificationBatch``es ``(inputs [B, T, ...], labels [B], lengths [B] for padded sequences,
    groups [B])`` or plain tuples ``(inputs, labels[, lengths])``; ``predict`` also takes a bare inputs tensor and
    returns the predicted classes and their probabilities. Logs ``{train,val,test}/loss`` and
    ``{train,val,test}/acc``, and where batches carry groups ``{val,test}/acc_by_group/<g>`` (Nth farthest: the
    accuracy for each n).

    Args:
        core: The recurrent core, e.g. ``rrn_lightning.RelationalMemory`` or ``rrn_lightning.LSTMCore``
            (``class_path`` in YAML). Its ``input_size`` is linked from the data by the ``rrn`` CLI.
        num_classes: Number of classes (linked from the data by the ``rrn`` CLI).
        head_sizes: Hidden layer sizes of the MLP head (ReLU after each); the paper uses four layers of 256.
        optimizer: Optimizer factory, called with the parameters (``class_path: torch.optim.Adam`` in YAML).
        lr_scheduler: Optional LR scheduler factory, called with the optimizer; stepped every epoch
            (``ReduceLROnPlateau`` watches ``val/loss``).
        compile_step: Run the core's step under ``torch.compile`` (``RelationalMemory.compile_step``): false, true
            (inductor's default mode) or a mode name; None (the default) keeps the core's own setting.
        class_names: The label of each class id (linked by the ``rrn`` CLI from a data module that has them, such
            as ``SequenceDataModule``); kept in checkpoints and written beside ``rrn predict``'s predictions.
        vocab_size: For inputs of token ids ``[B, T]`` (``TextClassificationDataModule``, which links it): an
            embedding of this many tokens into the core's ``input_size`` comes first. None: inputs are features.
    """

    kind = "sequence classifier"
    checkpoint_modules = frozenset({"core", "head"})
    optional_checkpoint_modules = frozenset({"embedding"})
    checkpoint_settings = {
        "core": CORE_SETTING,
        "head": "num_classes (from the data) or head_sizes",
        "embedding": "vocab_size (from the text's vocabulary: min_freq, max_size, tokens) or the core's input_size",
    }

    def __init__(
        self,
        core: RecurrentCore,
        num_classes: int,
        head_sizes: tuple[int, ...] = (256, 256, 256, 256),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        compile_step: CompileMode | None = None,
        class_names: list[str] | None = None,
        vocab_size: int | None = None,
    ) -> None:
        super().__init__(core, optimizer, lr_scheduler, compile_step)
        check_positive_ints(self.owner, num_classes=num_classes)
        if vocab_size is not None:
            check_positive_ints(self.owner, vocab_size=vocab_size)
            if core.input_rows != 1:
                raise ConfigurationError(
                    f"{self.owner}: with vocab_size (token inputs) the core reads one embedded token per step: set "
                    f"its input_rows to 1, got input_rows={core.input_rows}."
                )
        if class_names is not None and (
            len(class_names) != num_classes or not all(isinstance(n, str) for n in class_names)
        ):
            raise ConfigurationError(
                f"{self.owner}: class_names must name the num_classes={num_classes} classes in id order, got "
                f"{class_names!r}."
            )
        self.class_names = None if class_names is None else list(class_names)
        self.check_head_sizes(head_sizes)
        self.save_config_hyperparameters()
        self.core = core
        self.embedding = None if vocab_size is None else nn.Embedding(vocab_size, core.input_size)
        self.head = mlp(core.output_size, tuple(head_sizes), num_classes)
        self.add_metric("train", "loss", MeanMetric(nan_strategy="ignore"))
        for stage in ("train", "val", "test"):
            self.add_metric(stage, "acc", MulticlassAccuracy(num_classes, average="micro"))
        for stage in ("val", "test"):
            self.add_metric(stage, "group_acc", GroupAccuracy())

    primary_metric = ("acc", "max")

    def embedded(self, inputs: Tensor) -> Tensor:
        """What the core reads: the inputs, or their embedding where they are token ids."""
        return inputs if self.embedding is None else self.embedding(inputs)

    def probe(self, batch: ClassificationBatch | tuple[Tensor, ...]) -> Probe:
        batch = unpack_batch(batch)
        predictions = self(batch.inputs, batch.lengths).argmax(-1)
        return Probe(self.embedded(batch.inputs), batch.lengths, predictions, self.core)

    def batch_counts(self, batch: ClassificationBatch | tuple[Tensor, ...]) -> tuple[str, int]:
        return "examples", unpack_batch(batch).inputs.shape[0]

    def forward(self, inputs: Tensor, lengths: Tensor | None = None) -> Tensor:
        """inputs ``[B, T, ...]`` (token ids ``[B, T]`` with ``vocab_size``) -> logits ``[B, num_classes]``."""
        outputs, _ = self.core(self.embedded(inputs), lengths=lengths)  # [B, T, O]
        if lengths is None:
            last = outputs[:, -1]  # [B, O]
        else:
            index = (lengths.to(outputs.device).long() - 1).clamp(min=0)  # [B]
            last = outputs[torch.arange(outputs.shape[0], device=outputs.device), index]  # [B, O]
        return self.head(last)

    def shared_step(
        self, batch: ClassificationBatch | tuple[Tensor, ...], stage: Stage, batch_idx: int
    ) -> Tensor:
        batch = unpack_batch(batch)
        labels = batch.labels
        if labels is None:
            raise ValueError(f"SequenceClassifier: {stage} batches need labels: (inputs, labels[, lengths]).")
        logits = self(batch.inputs, batch.lengths)
        loss = F.cross_entropy(logits.float(), labels)
        accuracy = self.metric(stage, "acc")
        accuracy(logits, labels)
        size = labels.shape[0]
        self.log_loss(stage, loss, size)
        self.log_metric(stage, "acc", accuracy, size, on_step=stage == "train")
        if batch.groups is not None and stage != "train":
            self.metric(stage, "group_acc").update(logits.argmax(-1), labels, batch.groups)
        return loss

    def _log_group_accuracy(self, stage: Stage) -> None:
        metric = self.metric(stage, "group_acc")
        if metric.update_count == 0:  # batches without groups
            return
        for group, value in metric.compute().items():
            self.log(f"{stage}/acc_by_group/{group}", value, sync_dist=True)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_group_accuracy("val")

    def on_test_epoch_end(self) -> None:
        self._log_group_accuracy("test")

    def prediction_extras(self) -> dict[str, list[str]]:
        """The class names, where the model has them: predictions_<split>.pt gets ``class_names``."""
        return {} if self.class_names is None else {"class_names": list(self.class_names)}

    def predict_step(self, batch: ClassificationBatch | Tensor, batch_idx: int) -> dict[str, Tensor]:
        batch = unpack_batch(batch)
        probabilities = self(batch.inputs, batch.lengths).softmax(-1)
        out = {"prediction": probabilities.argmax(-1), "probabilities": probabilities}
        if batch.labels is not None:  # an evaluation split's examples: their labels beside the predictions
            out["target"] = batch.labels
        return out
