"""Your own labelled text: ``TextClassificationDataModule`` reads it through Hugging Face ``datasets``.

- reading: ``_load_splits`` (local CSV, JSON lines or parquet files, or a hub data set where the machine is online);
- tokens: words (``str.split``) or characters, a vocabulary from the training split (``Vocab``: ``min_freq``,
  ``max_size``, unknown tokens to ``<unk>``);
- batches: ``ClassificationBatch`` of token ids ``[B, T]`` with their lengths, for ``SequenceClassifier`` with
  ``vocab_size`` (which embeds them).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

from rrn_lightning.common import (
    ClassificationBatch,
    ConfigurationError,
    ExampleText,
    as_batch,
    check_positive_ints,
)

from ._evaluation import (
    PredictSplit,
    StoredSplits,
    check_fractions,
    check_predict_split,
    check_splits_filled,
    class_ids,
    class_names,
    seeded_split,
)
from .corpus import Vocab

__all__ = ["TextClassificationDataModule"]

OWNER = "TextClassificationDataModule"
BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ConfigurationError(
            f'{OWNER} reads text through Hugging Face datasets, which is not installed: pip install -e ".[text]".'
        ) from None
    return datasets


def _load_file(path: str, what: str) -> Any:
    """One local file as a ``datasets.Dataset``."""
    file = Path(path).expanduser()
    builder = BUILDERS.get(file.suffix.lower())
    if builder is None:
        raise ConfigurationError(
            f"{OWNER}: {what}={path!r} must be a .csv, .tsv, .json, .jsonl or .parquet file (or, for path, a Hugging "
            "Face hub data set name)."
        )
    if not file.is_file():
        raise ConfigurationError(f"{OWNER}: {what}={path!r} is not a file; check the path.")
    kwargs = {"delimiter": "\t"} if file.suffix.lower() == ".tsv" else {}
    return _datasets().load_dataset(builder, data_files={"train": str(file)}, split="train", **kwargs)


class _Rows:
    """One split: token ids per example, and class ids."""

    def __init__(self, tokens: list[list[int]], labels: Tensor) -> None:
        self.tokens, self.labels = tokens, labels

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: Tensor) -> ClassificationBatch:
        rows = [self.tokens[int(i)] for i in index]
        lengths = torch.tensor([max(len(r), 1) for r in rows])
        inputs = torch.zeros(
            len(rows), int(lengths.max()), dtype=torch.long
        )  # padding: id 0, past each length
        for i, row in enumerate(rows):
            inputs[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ClassificationBatch(inputs, self.labels[index], lengths)


class TextClassificationDataModule(StoredSplits, LightningDataModule):
    """Text classification on your own labelled text, read with Hugging Face ``datasets`` (``pip install -e
    ".[text]"``): a local ``.csv`` / ``.tsv``, ``.json`` / ``.jsonl`` (JSON lines) or ``.parquet`` file with a text
    column and a label column, or a hub data set name where the machine is online (its ``train``, ``validation``
    and ``test`` splits where it has them).

    Labels are strings (sorted, they become ids 0, 1, ...) or integer class ids; their names go with the model
    into its checkpoints and into ``rrn predict``'s output. The vocabulary comes from the training split; tokens it
    lacks read as ``<unk>``. Batches hold token ids ``[B, T]`` (padded at the end) and each text's length; the
    model (``SequenceClassifier`` with ``vocab_size``, linked from here) embeds them.

    Args:
        path: The file, or a hub data set name.
        val_path: A file for the validation split.
        test_path: A file for the test split.
        val_fraction: The share of the training file held out for validation when there is no validation split.
        test_fraction: The same for the test split.
        split_seed: Seeds that split.
        text_column: The column with the text.
        label_column: The column with the label.
        tokens: ``"word"`` (whitespace-separated words) or ``"char"`` (characters).
        lowercase: Lower-case the text first.
        min_freq: Tokens seen fewer times in the training split read as ``<unk>``.
        max_size: At most this many tokens, ``<unk>`` and ``<eos>`` included (the most frequent); None keeps all.
        max_length: Cut each text to its first ``max_length`` tokens; None keeps them whole.
        batch_size: Examples per batch (per device).
        shuffle: Shuffle the training split anew each epoch (seeded by ``seed`` and the epoch).
        seed: Seeds the shuffling.
        predict_split: The split ``rrn predict`` reads, ``"validation"`` or ``"test"``.
    """

    def __init__(
        self,
        path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        text_column: str = "text",
        label_column: str = "label",
        tokens: Literal["word", "char"] = "word",
        lowercase: bool = True,
        min_freq: int = 1,
        max_size: int | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int = 0,
        predict_split: PredictSplit = "test",
    ) -> None:
        super().__init__()
        if path is None:
            raise ConfigurationError(
                f"{OWNER}: path is required: a .csv, .jsonl or .parquet file of labelled text "
                "(--data.init_args.path=FILE.csv), or a hub data set name."
            )
        check_positive_ints(OWNER, batch_size=batch_size, min_freq=min_freq)
        check_predict_split(OWNER, predict_split)
        if tokens not in ("word", "char"):
            raise ConfigurationError(f"{OWNER}: tokens must be 'word' or 'char', got tokens={tokens!r}.")
        for name, value in (("max_size", max_size), ("max_length", max_length)):
            if value is not None:
                check_positive_ints(OWNER, **{name: value})
        check_fractions(OWNER, val_fraction=val_fraction, test_fraction=test_fraction)
        self.save_hyperparameters()
        self.text_column, self.label_column = text_column, label_column
        self.tokens, self.lowercase, self.max_length = tokens, lowercase, max_length
        self.batch_size, self.shuffle, self.seed, self.predict_split = (
            batch_size,
            shuffle,
            seed,
            predict_split,
        )
        raw = self._load_splits(path, val_path, test_path, val_fraction, test_fraction, split_seed)
        train_texts, train_labels = raw["train"]
        counts = Counter(token for text in train_texts for token in self._split(text))
        self.token_vocab = Vocab.build(counts, min_freq=min_freq, max_size=max_size)
        self.classes = class_names(train_labels, self._label_source("train"))
        self.splits = {name: self._encode(texts, labels, name) for name, (texts, labels) in raw.items()}

    # -------------------------------------------------------------- what rrn links into the model
    @property
    def vocab_size(self) -> int:
        return len(self.token_vocab)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    # -------------------------------------------------------------- reading
    def _columns(self, dataset: Any, where: str) -> tuple[list[str], list[Any]]:
        missing = [c for c in (self.text_column, self.label_column) if c not in dataset.column_names]
        if missing:
            option = "text_column" if missing[0] == self.text_column else "label_column"
            raise ConfigurationError(
                f"{OWNER}: {where} has no column {missing[0]!r} (it has: {', '.join(dataset.column_names)}); "
                f"name yours with --data.init_args.{option}=..."
            )
        return [str(t) for t in dataset[self.text_column]], list(dataset[self.label_column])

    def _load_splits(
        self, path, val_path, test_path, val_fraction, test_fraction, split_seed
    ) -> dict[str, Any]:
        if Path(path).expanduser().suffix.lower() in BUILDERS or Path(path).expanduser().exists():
            splits = {"train": _load_file(path, "path")}
        else:  # a hub data set
            try:
                loaded = _datasets().load_dataset(path)
            except Exception as error:
                raise ConfigurationError(
                    f"{OWNER}: path={path!r} is neither a local file nor a data set the hub gave: "
                    f"{str(error).splitlines()[0] if str(error) else type(error).__name__}."
                ) from None
            splits = {name: loaded[name] for name in ("train", "validation", "test") if name in loaded}
            splits = {("val" if name == "validation" else name): data for name, data in splits.items()}
            if "train" not in splits:
                raise ConfigurationError(
                    f"{OWNER}: path={path!r} has no train split (it has: {', '.join(loaded)})."
                )
        for name, given, what in (("val", val_path, "val_path"), ("test", test_path, "test_path")):
            if given is not None:
                splits[name] = _load_file(given, what)
        columns = {name: self._columns(data, f"{name} split of {path!r}") for name, data in splits.items()}
        texts, labels = columns["train"]
        held = {
            name: f for name, f in (("val", val_fraction), ("test", test_fraction)) if name not in columns
        }
        for name, index in seeded_split(len(texts), held, split_seed).items():
            taken = index.tolist()
            columns[name] = ([texts[i] for i in taken], [labels[i] for i in taken])
        check_splits_filled(
            OWNER, {name: len(part[0]) for name, part in columns.items()}, len(texts), "texts"
        )
        return columns

    def _label_source(self, split: str) -> str:
        return f"{OWNER}: the {split} split's {self.label_column!r} column"

    def _split(self, text: str) -> list[str]:
        text = text.lower() if self.lowercase else text
        tokens = list(text) if self.tokens == "char" else text.split()
        return tokens[: self.max_length] if self.max_length is not None else tokens

    def _encode(self, texts: list[str], labels: list[Any], split: str) -> _Rows:
        ids = class_ids(labels, self.classes, self._label_source(split))
        tokens = [self.token_vocab.encode(self._split(text)) for text in texts]
        return _Rows(tokens, ids)

    # -------------------------------------------------------------- checkpoints and inspection
    def state_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "tokens": list(self.token_vocab.itos)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if list(state_dict.get("tokens", self.token_vocab.itos)) != list(self.token_vocab.itos):
            raise ConfigurationError(
                f"{OWNER}: the checkpoint was trained with another vocabulary ({len(state_dict['tokens'])} tokens, "
                f"here {self.vocab_size}); use the training run's files and settings (min_freq, max_size, tokens)."
            )

    def describe_example(self, batch: Any, index: int, prediction: Tensor | None) -> ExampleText:
        """``DescribesExamples``: the text as the model reads it, its label and the model's."""
        batch = as_batch(batch, ClassificationBatch)
        length = int(batch.lengths[index]) if batch.lengths is not None else batch.inputs.shape[1]
        words = self.token_vocab.decode(batch.inputs[index, :length].tolist())
        joined = ("" if self.tokens == "char" else " ").join(words)
        label = self.classes[int(batch.labels[index])]
        model = "" if prediction is None else f", model {self.classes[int(prediction)]}"
        return ExampleText(words, [f"text: {joined}", f"class {label}{model}"])
