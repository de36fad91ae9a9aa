"""What the models (``rrn_lightning``) and the data (``datamodules``) share, importing neither.

Both sides import this module; it imports only torch and the standard library, so ``import datamodules`` pulls in
no model code (``rrn_lightning/__init__.py`` loads everything else lazily). It holds:

- the configuration error and argument checks (errors that name the owner, the argument and its value);
- the ignore index of targets that are not scored, and the special token ids and strings of our vocabularies;
- the batch types that data modules yield and models read;
- ``SupportsBatchLoss``, the protocol through which ``datamodules.CurriculumCallback`` asks a model for a loss;
- ``DescribesExamples`` and ``ExampleText``, through which ``rrn_lightning.insight.Insight`` asks a data module to
  put one of its examples (and a model's prediction for it) into words.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

from torch import Tensor

__all__ = [
    "EOS_ID",
    "EOS_TOKEN",
    "IGNORE_INDEX",
    "PAD_ID",
    "PAD_TOKEN",
    "UNK_ID",
    "UNK_TOKEN",
    "ClassificationBatch",
    "ConfigurationError",
    "DescribesExamples",
    "ExampleText",
    "LanguageModelBatch",
    "Seq2SeqBatch",
    "SupportsBatchLoss",
    "check_positive_ints",
]


# ---------------------------------------------------------------------------------------------- errors and checks
class ConfigurationError(ValueError):
    """A bad argument value. The ``rrn`` CLI prints its message alone, without a traceback."""


def check_positive_ints(owner: str, **values: object) -> None:
    """Raise a ValueError naming ``owner``'s argument and its value unless every value is an int >= 1."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{owner}: {name} must be a positive integer, got {name}={value!r}.")


# ---------------------------------------------------------------------------------------------- ids
IGNORE_INDEX = -100
"""Target id of positions that are not scored (padding): the losses skip it, as ``F.cross_entropy`` does by
default, and ``rrn predict`` pads shorter sequences with it."""

# Word vocabularies (``datamodules.Vocab``): <unk> is id 0, <eos> id 1, then words by training frequency.
UNK_TOKEN, EOS_TOKEN = "<unk>", "<eos>"
UNK_ID = 0
EOS_ID = 1
"""``<eos>``: the end of a line in word vocabularies, the end of a sequence in character vocabularies (id 1 in
both). A language model reads it first, as at a sentence start; the evaluation streams pad their inputs with it."""

# Character vocabularies (Learning to Execute): <pad> is id 0, <eos> id 1 (EOS_ID), then the characters.
PAD_TOKEN = "<pad>"
PAD_ID = 0


# ---------------------------------------------------------------------------------------------- batches
class ClassificationBatch(NamedTuple):
    """A batch of sequence classification (``NthFarthestDataModule``; ``SequenceClassifier`` reads it). A plain
    tuple ``(inputs, labels)`` or ``(inputs, labels, lengths)`` is read the same way."""

    inputs: Tensor  # [B, T, D] float
    labels: Tensor  # [B] int64 class ids
    lengths: Tensor | None = None  # [B] int64: the real steps of padded sequences; None when none is padded
    # [B] int64 >= 0: a group per example, which evaluation reports accuracy by (``val/acc_by_group/<g>``);
    # Nth farthest's is n, so that group 0 holds the "which is the farthest?" questions. None for none.
    groups: Tensor | None = None


class Seq2SeqBatch(NamedTuple):
    """A batch of a sequence-to-sequence task (``LearnToExecuteDataModule``, ``SortingDataModule``; ``Seq2Seq``
    reads it)."""

    inputs: Tensor  # [B, T_in, D] float; padding steps are zeros
    input_lengths: Tensor  # [B] int64: the real steps of each input
    targets: Tensor  # [B, T_out] int64 ids, padded with IGNORE_INDEX
    target_lengths: Tensor  # [B] int64: the real steps of each target


class LanguageModelBatch(NamedTuple):
    """A BPTT window of B contiguous token streams (``WordLMDataModule``; ``LanguageModel`` reads it)."""

    inputs: Tensor  # [B, T] int64 token ids
    targets: Tensor  # [B, T] int64: the inputs shifted by one; IGNORE_INDEX where the stream was padded


Batch = TypeVar("Batch", ClassificationBatch, Seq2SeqBatch, LanguageModelBatch)


def as_batch(batch: Any, batch_type: type[Batch]) -> Batch:
    """``batch`` as a ``batch_type`` whose fields are read by name; a plain tuple of its fields, as tests and users'
    own loops may give, becomes one."""
    return batch if isinstance(batch, batch_type) else batch_type(*batch)


# ---------------------------------------------------------------------------------------------- the data contract
# What `rrn` needs of a data module (README, "Your own data"): the sizes the CLI links into the model, by these
# names, and batches of the types above. Our data modules satisfy these protocols (tests/test_own_data.py).
@runtime_checkable
class SequenceData(Protocol):
    """A data module for ``SequenceClassifier`` or ``Seq2Seq``: its batches are ``ClassificationBatch`` or
    ``Seq2SeqBatch``; ``input_size`` (features per step) and ``num_classes`` are linked into the model, and a
    ``class_names`` list (the label of each id), where the data module has one, into ``SequenceClassifier``."""

    @property
    def input_size(self) -> int: ...

    @property
    def num_classes(self) -> int: ...


@runtime_checkable
class TokenData(Protocol):
    """A data module for ``LanguageModel``: its batches are ``LanguageModelBatch``; ``vocab_size`` and ``vocab``
    (its ``itos``: the words in id order) are linked into the model."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def vocab(self) -> Any: ...


# ---------------------------------------------------------------------------------------------- protocols
@runtime_checkable
class SupportsBatchLoss(Protocol):
    """A model that ``datamodules.CurriculumCallback`` can steer a curriculum by: ``batch_loss(batch)`` returns the
    mean training loss of a ``Seq2SeqBatch`` (teacher-forced where the model feeds its outputs back) as a scalar
    tensor. The callback calls it under ``torch.no_grad()`` with the model in eval mode, on the model's device.
    ``rrn_lightning.Seq2Seq`` implements it."""

    def batch_loss(self, batch: Seq2SeqBatch) -> Tensor: ...


class ExampleText(NamedTuple):
    """One example in words (``DescribesExamples.describe_example``)."""

    steps: list[
        str
    ]  # a short label for each real time step the core reads: a character, a word, a vector's id
    lines: list[str]  # the example, its answer and the model's, as a few lines of plain text


@runtime_checkable
class DescribesExamples(Protocol):
    """A data module that can say what one example of its batches is (TensorBoard's attention maps and text,
    ``rrn_lightning.insight.Insight``). ``describe_example(batch, index, prediction)`` describes example ``index``
    of an evaluation ``batch`` of this data module; ``prediction`` is the model's output for it (a class id
    ``[]``, output ids ``[T_out]``, or next-token ids ``[T]``; None to leave it out). Tensors may be on any
    device. The data modules of ``datamodules`` implement it."""

    def describe_example(self, batch: Any, index: int, prediction: Tensor | None) -> ExampleText: ...
