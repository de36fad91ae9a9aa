"""Fixed validation and test sets for the sequence-to-sequence tasks generated on the fly, and how their examples
are put into words (``describe_seq2seq``)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from rrn_lightning.common import ConfigurationError, ExampleText, Seq2SeqBatch

from ._resumable import EpochBatches, rank_of, stream_seed, training_loader

# The evaluation split `rrn predict` reads (the data modules' ``predict_split`` argument).
PredictSplit = Literal["validation", "test"]


def check_predict_split(owner: str, predict_split: str) -> None:
    if predict_split not in ("validation", "test"):
        raise ConfigurationError(
            f"{owner}: predict_split must be 'validation' or 'test', got predict_split={predict_split!r}."
        )


class PredictsASplit:
    """``rrn predict`` reads the evaluation split that ``predict_split`` names (a data module argument)."""

    predict_split: PredictSplit

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader() if self.predict_split == "validation" else self.test_dataloader()


class FixedEvaluationSets(PredictsASplit):
    """``val_size`` and ``test_size`` examples, in batches of ``batch_size``, drawn once from ``val_seed`` and
    ``test_seed`` and kept for every later evaluation. A data module supplies the random source a seed starts
    (``_eval_source``) and how a batch of n examples is drawn from it (``_eval_batch``). ``rrn predict`` reads
    the split named by ``predict_split``."""

    batch_size: int
    val_size: int
    test_size: int
    val_seed: int
    test_seed: int

    def _eval_source(self, seed: int) -> Any:
        raise NotImplementedError

    def _eval_batch(self, size: int, source: Any) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def _eval_batches(self, split: str) -> list[tuple[Tensor, ...]]:
        cache: dict[str, list[tuple[Tensor, ...]]] = self.__dict__.setdefault("_eval_sets", {})
        if split not in cache:
            size, seed = (
                (self.val_size, self.val_seed) if split == "val" else (self.test_size, self.test_seed)
            )
            source = self._eval_source(seed)
            cache[split] = [
                self._eval_batch(min(self.batch_size, size - start), source)
                for start in range(0, size, self.batch_size)
            ]
        return cache[split]

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._eval_batches("val"), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self._eval_batches("test"), batch_size=None)


def describe_seq2seq(
    batch: Seq2SeqBatch, index: int, prediction: Tensor | None, step_label, output_text, separator: str = ""
) -> ExampleText:
    """A sequence-to-sequence example in words: ``step_label(input row [D]) -> str`` names each real input step
    (the input line joins them with ``separator``), ``output_text(ids) -> str`` reads a target or a prediction (up
    to the target's length)."""
    length, target_length = int(batch.input_lengths[index]), int(batch.target_lengths[index])
    rows = batch.inputs[index, :length].float().cpu()  # [T, D]
    target = batch.targets[index, :target_length].tolist()
    steps = [step_label(row) for row in rows]
    lines = ["input:  " + separator.join(steps)]
    lines.append("target: " + output_text(target))
    if prediction is not None:
        lines.append("model:  " + (output_text(prediction[:target_length].tolist()) or "(<eos> at once)"))
    return ExampleText(steps, lines)


# ---------------------------------------------------------------------------------------------- stored splits
def check_fractions(owner: str, **fractions: float) -> None:
    """Each share of a file held out for a split (``val_fraction=0.1``) lies in [0, 1)."""
    for name, value in fractions.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            raise ConfigurationError(f"{owner}: {name} must lie in [0, 1), got {name}={value!r}.")


def seeded_split(count: int, fractions: dict[str, float], seed: int) -> dict[str, Tensor]:
    """The indices of ``count`` examples in an order fixed by ``seed``: the first ``round(count * fraction)`` for
    each split of ``fractions`` in turn, and the rest as ``"train"``."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    parts, start = {}, 0
    for name, fraction in fractions.items():
        size = round(count * fraction)
        parts[name], start = order[start : start + size], start + size
    parts["train"] = order[start:]
    return parts


def check_splits_filled(owner: str, sizes: dict[str, int], total: int, unit: str) -> None:
    """Every split has examples; else one line saying how to give it some (``unit``: what an example is)."""
    for name in ("train", "val", "test"):
        if sizes.get(name) == 0:
            raise ConfigurationError(
                f"{owner}: the {name} split is empty ({total} {unit} in path); give more {unit}, a larger "
                f"{name}_fraction, or {name}_path."
            )


def class_names(values: list[Any], where: str) -> list[str]:
    """The classes the training split's labels define: its strings sorted, or ``"0"``..``"max"`` for class ids
    from 0. ``where`` names the file or column in the error."""
    if values and all(isinstance(v, str) for v in values):
        return sorted(set(values))
    _check_class_ids(values, where)
    return [str(i) for i in range(max(values) + 1 if values else 0)]


def _check_class_ids(values: list[Any], where: str) -> None:
    """Labels that are not names must be integer class ids from 0."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        kinds = sorted({type(v).__name__ for v in values})
        raise ConfigurationError(
            f"{where}: labels must be integer class ids or strings, got {', '.join(kinds)} values."
        )
    if values and min(values) < 0:
        raise ConfigurationError(f"{where}: labels must be class ids from 0, got {min(values)}.")


def class_ids(values: list[Any], classes: list[str], where: str) -> Tensor:
    """Labels as ids into ``classes`` (the training split's); a label outside them is one line naming it."""
    if values and all(isinstance(v, str) for v in values):
        index = {name: i for i, name in enumerate(classes)}
        unseen = next((v for v in values if v not in index), None)
        if unseen is not None:
            raise ConfigurationError(
                f"{where}: label {unseen!r} is not a class of the training split ({', '.join(classes)})."
            )
        return torch.tensor([index[v] for v in values], dtype=torch.long)
    _check_class_ids(values, where)
    if values and classes != [str(i) for i in range(len(classes))]:
        raise ConfigurationError(
            f"{where}: labels are class ids, but the training split's are names ({', '.join(classes)}); give "
            f"every split the same kind of labels."
        )
    if values and max(values) >= len(classes):
        raise ConfigurationError(
            f"{where}: label {max(values)} is out of range: the training split has {len(classes)} classes "
            f"(0..{len(classes) - 1})."
        )
    return torch.tensor(values, dtype=torch.long)


class Split(Protocol):
    """A split held in memory (a user's file): its size, and the batch of the examples ``index`` [k]."""

    def __len__(self) -> int: ...

    def batch(self, index: Tensor) -> Any: ...


class ShuffledSplit(EpochBatches):
    """A stored split in batches, shuffled anew each epoch from (seed, epoch) when ``shuffle``; under DDP each rank
    takes every world-th example of the epoch's order. Resumable mid-epoch (``EpochBatches``)."""

    def __init__(
        self, split: Split, batch_size: int, seed: int, shuffle: bool, rank: int, world: int
    ) -> None:
        self.split, self.batch_size, self.seed, self.shuffle = split, batch_size, seed, shuffle
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return math.ceil(len(range(self.rank, len(self.split), self.world)) / self.batch_size)

    def batches(self, epoch: int, start: int) -> Iterator[Any]:
        n = len(self.split)
        generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch))
        order = (torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n))[
            self.rank :: self.world
        ]
        for index in range(start, len(self)):
            yield self.split.batch(order[index * self.batch_size : (index + 1) * self.batch_size])


class StoredSplits(PredictsASplit):
    """The loaders of a data module that holds its splits in memory (``splits``: train, val and test): shuffled,
    resumable training batches, fixed evaluation batches, ``rrn predict`` on ``predict_split``."""

    splits: dict[str, Split]
    batch_size: int
    seed: int
    shuffle: bool
    num_workers: int = 0

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        stream = ShuffledSplit(
            self.splits["train"], self.batch_size, self.seed, self.shuffle, rank_of(self), world
        )
        return training_loader(self, stream, self.num_workers)

    def _evaluation_loader(self, name: str) -> DataLoader:
        split = self.splits[name]
        batches = [
            split.batch(torch.arange(start, min(start + self.batch_size, len(split))))
            for start in range(0, len(split), self.batch_size)
        ]
        return DataLoader(batches, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader("test")

    def split_sizes(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.splits.items()}
