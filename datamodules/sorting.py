"""Sorting: read T numbers, output them in ascending order (or the indices that sort them).

Batches are those of the sequence-to-sequence tasks (see ``learn_to_execute.py``):
``(inputs [B, T, D], input_lengths [B], targets [B, T], target_lengths [B])``. Worked example, integers from
``range(0, 10)``, T = 4::

    numbers   7 2 9 2          inputs: one-hot rows of width 10 (reals: one feature, the value itself)
    values    2 2 7 9          targets with target="values" (classes 0..9)
    indices   1 3 0 2          targets with target="indices" (classes 0..T-1; ties keep their input order)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader

from rrn_lightning.common import ConfigurationError, ExampleText, Seq2SeqBatch, check_positive_ints

from ._evaluation import FixedEvaluationSets, PredictSplit, check_predict_split, describe_seq2seq
from ._resumable import SeededBatches, rank_of, training_loader

__all__ = ["SortingDataModule", "make_sorting"]


def make_sorting(
    size: int, length: int, numbers: str, low: float, high: float, target: str, generator: torch.Generator
) -> Seq2SeqBatch:
    """``size`` sorting problems as a sequence-to-sequence batch (see the module docstring)."""
    if numbers == "int":
        values = torch.randint(int(low), int(high), (size, length), generator=generator)
        inputs = F.one_hot(values - int(low), int(high) - int(low)).float()  # [B, T, range]
    else:
        values = low + (high - low) * torch.rand(size, length, generator=generator)
        inputs = values[..., None]  # [B, T, 1]
    order = values.argsort(dim=1, stable=True)  # [B, T]
    targets = values.gather(1, order) - int(low) if target == "values" else order
    lengths = torch.full((size,), length, dtype=torch.long)
    return Seq2SeqBatch(inputs, lengths, targets, lengths.clone())


class SortingDataModule(FixedEvaluationSets, LightningDataModule):
    """Sort sequences of numbers; training batches are drawn fresh each epoch, validation and test are fixed.

    Args:
        length: Numbers per sequence (T).
        numbers: ``"int"`` (integers in ``[low, high)``, read one-hot) or ``"real"`` (uniform in ``[low, high)``,
            read as one feature).
        low, high: The range of the numbers.
        target: ``"values"`` (the sorted numbers; integers only) or ``"indices"`` (the argsort of the input).
        batch_size: Examples per batch (per device).
        batches_per_epoch: Training batches in one epoch.
        val_size, test_size: Examples in the fixed evaluation sets.
        train_seed, val_seed, test_seed: Seeds.
        predict_split: The split ``rrn predict`` reads, ``"validation"`` or ``"test"``.
    """

    def __init__(
        self,
        length: int = 10,
        numbers: str = "int",
        low: float = 0,
        high: float = 10,
        target: str = "values",
        batch_size: int = 128,
        batches_per_epoch: int = 100,
        val_size: int = 1024,
        test_size: int = 2048,
        train_seed: int = 0,
        val_seed: int = 1,
        test_seed: int = 2,
        predict_split: PredictSplit = "test",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive_ints(
            name,
            length=length,
            batch_size=batch_size,
            batches_per_epoch=batches_per_epoch,
            val_size=val_size,
            test_size=test_size,
        )
        if numbers not in ("int", "real"):
            raise ConfigurationError(f"{name}: numbers must be 'int' or 'real', got numbers={numbers!r}.")
        if target not in ("values", "indices"):
            raise ConfigurationError(f"{name}: target must be 'values' or 'indices', got target={target!r}.")
        if target == "values" and numbers == "real":
            raise ConfigurationError(
                f"{name}: target='values' classifies each output among the possible numbers, so it needs "
                "numbers='int'; for reals use target='indices'."
            )
        if not high > low or (numbers == "int" and (int(low) != low or int(high) != high)):
            raise ConfigurationError(
                f"{name}: need low < high (integers for numbers='int'), got low={low!r}, high={high!r}."
            )
        check_predict_split(name, predict_split)
        self.save_hyperparameters()
        self.length, self.numbers, self.low, self.high, self.target = length, numbers, low, high, target
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.val_size, self.test_size = val_size, test_size
        self.train_seed, self.val_seed, self.test_seed = train_seed, val_seed, test_seed
        self.predict_split = predict_split

    @property
    def input_size(self) -> int:
        return int(self.high) - int(self.low) if self.numbers == "int" else 1

    @property
    def num_classes(self) -> int:
        return int(self.high) - int(self.low) if self.target == "values" else self.length

    def make(self, size: int, generator: torch.Generator) -> Seq2SeqBatch:
        return make_sorting(size, self.length, self.numbers, self.low, self.high, self.target, generator)

    def _eval_source(self, seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    def _eval_batch(self, size: int, source: torch.Generator) -> Seq2SeqBatch:
        return self.make(size, source)

    def _draw(self, generator: torch.Generator) -> Seq2SeqBatch:
        return self.make(self.batch_size, generator)

    def describe_example(self, batch: Seq2SeqBatch, index: int, prediction: Tensor | None) -> ExampleText:
        """``DescribesExamples``: the numbers read, the target and the model's output (values or indices)."""

        def number(row: Tensor) -> str:
            return str(int(self.low) + int(row.argmax())) if self.numbers == "int" else f"{float(row[0]):.2f}"

        def output(ids: list[int]) -> str:
            return " ".join(str(int(self.low) + i if self.target == "values" else i) for i in ids)

        return describe_seq2seq(batch, index, prediction, number, output, separator=" ")

    def train_dataloader(self) -> DataLoader:
        return training_loader(
            self, SeededBatches(self._draw, self.train_seed, self.batches_per_epoch, rank_of(self))
        )
