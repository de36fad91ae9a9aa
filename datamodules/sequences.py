"""Your own sequences for classification: ``SequenceDataModule`` reads one ``.npz`` or ``.pt`` file of arrays.

- reading and checking: ``load_arrays`` (the file's keys), ``pad_sequences`` (sequences of different lengths);
- labels: integer class ids, or strings mapped to ids (``classes``, stored in checkpoints with the model);
- splits: files of their own, or a seeded split of one file; per-feature standardisation from the training split;
- batches: ``ClassificationBatch`` (inputs ``[B, T, D]``, labels, lengths where sequences are padded); training
  batches come from a permutation per epoch seeded by (seed, rank, epoch), so a run resumes mid-epoch exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

__all__ = ["SequenceDataModule", "load_arrays", "pad_sequences"]

OWNER = "SequenceDataModule"


def load_arrays(path: str | Path, what: str = "path") -> dict[str, Any]:
    """The arrays of a ``.npz`` (numpy) or ``.pt`` (``torch.save`` of a dict) file, by key; one-line errors name
    the argument ``what``, the file and the fix."""
    path = Path(path).expanduser()
    where = f"{OWNER}: {what}={str(path)!r}"
    if not path.is_file():
        raise ConfigurationError(f"{where} is not a file; give a .npz or .pt file of arrays.")
    if path.suffix == ".npz":
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except ValueError as error:
            if "allow_pickle" not in str(error):
                raise ConfigurationError(f"{where} cannot be read as .npz: {error}") from None
        # Arrays of objects (sequences of different lengths) need pickle: load only those, knowing the file is ours
        # to read (np.savez of a list of arrays writes one).
        with np.load(path, allow_pickle=True) as archive:
            return {key: archive[key] for key in archive.files}
    if path.suffix == ".pt":
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # damaged, or objects beyond tensors
            raise ConfigurationError(f"{where} cannot be read as a .pt file of tensors: {error}") from None
        if not isinstance(loaded, dict):
            raise ConfigurationError(
                f"{where} holds a {type(loaded).__name__}; save a dict: torch.save({{'inputs': ..., 'labels': ...}})."
            )
        return loaded
    raise ConfigurationError(f"{where} must end in .npz or .pt (numpy's np.savez, or torch.save of a dict).")


def _as_float_rows(value: Any, where: str) -> Tensor:
    try:
        tensor = value if isinstance(value, Tensor) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigurationError(
            f"{where} must hold numbers, got {type(value).__name__} of other values."
        ) from None
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ConfigurationError(f"{where} must hold real numbers, got {tensor.dtype}.")
    return tensor.float()


def pad_sequences(inputs: Any, where: str) -> tuple[Tensor, Tensor | None]:
    """``inputs``: an array ``[N, T, D]`` (or ``[N, T]``, one feature), or a sequence of ``[T_i, D]`` arrays ->
    ``(inputs [N, T_max, D] float32, lengths [N] or None)``, the shorter sequences zero-padded at the end."""
    is_sequence_of_arrays = isinstance(inputs, list | tuple) or (
        getattr(inputs, "dtype", None) is not None and str(inputs.dtype) == "object"
    )
    if not is_sequence_of_arrays:
        tensor = _as_float_rows(inputs, where)
        if tensor.dim() == 2:
            tensor = tensor[:, :, None]
        if tensor.dim() != 3:
            raise ConfigurationError(
                f"{where} must be [N, T, D] (or [N, T]) or a list of [T_i, D] arrays, got shape {list(tensor.shape)}."
            )
        return tensor, None
    rows = []
    for i, sequence in enumerate(inputs):
        tensor = _as_float_rows(sequence, f"{where}[{i}]")
        tensor = tensor[:, None] if tensor.dim() == 1 else tensor
        if tensor.dim() != 2 or tensor.shape[0] == 0:
            raise ConfigurationError(
                f"{where}[{i}] must be a non-empty [T_i, D] array, got shape {list(tensor.shape)}."
            )
        rows.append(tensor)
    if not rows:
        raise ConfigurationError(f"{where} holds no sequences.")
    features = {t.shape[1] for t in rows}
    if len(features) > 1:
        first = next(i for i, t in enumerate(rows) if t.shape[1] != rows[0].shape[1])
        raise ConfigurationError(
            f"{where}: sequences must share their feature count D to be padded to one array; sequence 0 has "
            f"{rows[0].shape[1]}, sequence {first} has {rows[first].shape[1]}."
        )
    lengths = torch.tensor([t.shape[0] for t in rows])
    padded = torch.zeros(len(rows), int(lengths.max()), rows[0].shape[1])
    for i, t in enumerate(rows):
        padded[i, : t.shape[0]] = t
    return padded, lengths


def _real_steps(inputs: Tensor, lengths: Tensor | None) -> Tensor:
    """The ``[N, T]`` mask of the real (not padded) steps of ``inputs [N, T, D]``: all of them without lengths."""
    steps = torch.arange(inputs.shape[1])
    return steps < (lengths if lengths is not None else torch.full((len(inputs),), inputs.shape[1]))[:, None]


class _Split:
    """One split's tensors: inputs [N, T, D], labels [N], lengths [N] or None."""

    def __init__(self, inputs: Tensor, labels: Tensor, lengths: Tensor | None) -> None:
        self.inputs, self.labels, self.lengths = inputs, labels, lengths

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: Tensor) -> _Split:
        lengths = None if self.lengths is None else self.lengths[index]
        return _Split(self.inputs[index], self.labels[index], lengths)

    def batch(self, index: Tensor) -> ClassificationBatch:
        part = self.take(index)
        if part.lengths is not None:  # cut the padding that no sequence of this batch needs
            part.inputs = part.inputs[:, : int(part.lengths.max())]
        return ClassificationBatch(part.inputs, part.labels, part.lengths)


class SequenceDataModule(StoredSplits, LightningDataModule):
    """Sequence classification on your own arrays: one file (``.npz`` from ``np.savez``, or ``.pt`` from
    ``torch.save`` of a dict) holding

    - ``inputs``: float ``[N, T, D]`` (or ``[N, T]``: one feature), or a sequence of ``[T_i, D]`` arrays of different
      lengths (``np.savez(path, inputs=np.array(list_of_arrays, dtype=object), ...)``), zero-padded here;
    - ``labels``: ``[N]`` integer class ids from 0, or strings (sorted, they become ids 0, 1, ...; the names go
      with the model into its checkpoints, and into ``rrn predict``'s output);
    - ``lengths`` (optional): ``[N]`` real steps of each sequence of a padded ``[N, T, D]`` array.

    The validation and test splits come from files of their own (``val_path``, ``test_path``) or, where not given,
    from a seeded split of ``path`` (``val_fraction``, ``test_fraction``, ``split_seed``). With ``standardize`` every
    feature is shifted and scaled by the mean and standard deviation of the training split's real steps (saved in
    checkpoints with the data module's state). Nothing is dropped silently: a NaN, a label out of range or a shape
    that does not fit ends in one error naming the file, the key and the shape.

    Args:
        path: The file (the training split, and the others unless given).
        val_path: A file for the validation split.
        test_path: A file for the test split.
        val_fraction: The share of ``path``'s examples held out for validation when ``val_path`` is not given.
        test_fraction: The same for the test split.
        split_seed: Seeds the split of ``path``.
        standardize: Standardise each feature by the training split's mean and standard deviation.
        batch_size: Examples per batch (per device).
        shuffle: Shuffle the training split anew each epoch (seeded by ``seed`` and the epoch).
        seed: Seeds the shuffling.
        num_workers: Data-loader worker processes for the training batches.
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
        standardize: bool = True,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        predict_split: PredictSplit = "test",
    ) -> None:
        super().__init__()
        if path is None:
            raise ConfigurationError(
                f"{OWNER}: path is required: the .npz or .pt file of your sequences (--data.init_args.path=FILE.npz)."
            )
        check_positive_ints(OWNER, batch_size=batch_size)
        check_predict_split(OWNER, predict_split)
        check_fractions(OWNER, val_fraction=val_fraction, test_fraction=test_fraction)
        if (val_path is None) * val_fraction + (test_path is None) * test_fraction >= 1:
            raise ConfigurationError(
                f"{OWNER}: val_fraction={val_fraction} and test_fraction={test_fraction} leave nothing to train on; "
                "lower them or give val_path / test_path."
            )
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigurationError(
                f"{OWNER}: num_workers must be 0 or more, got num_workers={num_workers!r}."
            )
        self.save_hyperparameters()
        self.path, self.val_path, self.test_path = path, val_path, test_path
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.standardize, self.batch_size, self.shuffle, self.seed = standardize, batch_size, shuffle, seed
        self.num_workers, self.predict_split = num_workers, predict_split
        self.splits: dict[str, _Split] = {}
        self.classes: list[str] = []
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self._read()  # sizes (input_size, num_classes, classes) are needed before the model is built

    # -------------------------------------------------------------- what rrn links into the model
    @property
    def input_size(self) -> int:
        return int(self.splits["train"].inputs.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        """The label of each class id, in id order (the strings of a file's labels, else "0", "1", ...)."""
        return list(self.classes)

    # -------------------------------------------------------------- reading
    def _file(self, path: str, what: str) -> tuple[Tensor, Any, Tensor | None]:
        arrays = load_arrays(path, what)
        where = f"{OWNER}: {what}={path!r}"
        for key in ("inputs", "labels"):
            if key not in arrays:
                raise ConfigurationError(
                    f"{where} has no {key!r} array (it has: {', '.join(sorted(arrays)) or 'none'}); save the "
                    "sequences as inputs and their classes as labels."
                )
        inputs, lengths = pad_sequences(arrays["inputs"], f"{where}: inputs")
        if "lengths" in arrays:
            given = torch.as_tensor(arrays["lengths"])
            if lengths is not None:
                raise ConfigurationError(
                    f"{where}: lengths is given beside inputs of different lengths, which set their own; leave "
                    "lengths out."
                )
            if given.shape != (len(inputs),) or given.is_floating_point() or given.dtype == torch.bool:
                raise ConfigurationError(
                    f"{where}: lengths must be [N]={[len(inputs)]} integers, got shape {list(given.shape)} and "
                    f"dtype {given.dtype}."
                )
            if len(given) and (int(given.min()) < 1 or int(given.max()) > inputs.shape[1]):
                raise ConfigurationError(
                    f"{where}: lengths must lie in 1..{inputs.shape[1]} (the steps of inputs), got "
                    f"{int(given.min())}..{int(given.max())}."
                )
            lengths = given.long()
        real = inputs[_real_steps(inputs, lengths)]  # [real steps, D]
        if not torch.isfinite(real).all():
            bad = int((~torch.isfinite(inputs)).any(-1).any(-1).nonzero()[0, 0])
            raise ConfigurationError(
                f"{where}: inputs has NaN or infinite values (first in sequence {bad}); clean or drop them first."
            )
        labels = arrays["labels"]
        count = len(labels) if hasattr(labels, "__len__") else -1
        if count != len(inputs):
            shape = list(getattr(labels, "shape", [count]))
            raise ConfigurationError(
                f"{where}: labels must have one entry per sequence, [N]={[len(inputs)]}, got shape {shape}."
            )
        return inputs, labels, lengths

    def _label_ids(self, labels: Any, where: str, fit: bool) -> Tensor:
        """Labels -> class ids; ``fit``: the training file, which sets the classes."""
        values = labels.tolist() if hasattr(labels, "tolist") else list(labels)
        if fit:
            self.classes = class_names(values, where)
        return class_ids(values, self.classes, where)

    def _read(self) -> None:
        inputs, labels, lengths = self._file(self.path, "path")
        ids = self._label_ids(labels, f"{OWNER}: path={self.path!r}", fit=True)
        whole = _Split(inputs, ids, lengths)
        fractions = {
            "val": self.val_fraction if self.val_path is None else 0,
            "test": self.test_fraction if self.test_path is None else 0,
        }
        splits = {
            name: whole.take(index)
            for name, index in seeded_split(len(whole), fractions, self.split_seed).items()
        }
        for split, path, what in (("val", self.val_path, "val_path"), ("test", self.test_path, "test_path")):
            if path is not None:
                inputs, labels, lengths = self._file(path, what)
                if inputs.shape[-1] != whole.inputs.shape[-1]:
                    raise ConfigurationError(
                        f"{OWNER}: {what}={path!r} has {inputs.shape[-1]} features per step, path has "
                        f"{whole.inputs.shape[-1]}."
                    )
                splits[split] = _Split(
                    inputs, self._label_ids(labels, f"{OWNER}: {what}={path!r}", fit=False), lengths
                )
        check_splits_filled(OWNER, {name: len(part) for name, part in splits.items()}, len(whole), "examples")
        if self.standardize:
            train = splits["train"]
            real = train.inputs[_real_steps(train.inputs, train.lengths)]  # [real steps, D]
            self.mean = real.mean(0)
            std = real.std(0, unbiased=False)
            self.std = torch.where(std > 0, std, torch.ones_like(std))  # a constant feature is only shifted
            for part in splits.values():
                part.inputs = (part.inputs - self.mean) / self.std
                if part.lengths is not None:  # padding stays 0
                    part.inputs = part.inputs * _real_steps(part.inputs, part.lengths)[..., None]
        self.splits = splits

    # -------------------------------------------------------------- checkpoints and inspection
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the data: the classes and the standardisation, for predicting on new data."""
        return {"classes": list(self.classes), "mean": self.mean, "std": self.std}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if list(state_dict.get("classes", self.classes)) != self.classes:
            raise ConfigurationError(
                f"{OWNER}: the checkpoint was trained on the classes {state_dict['classes']}, the data has "
                f"{self.classes}; use the training run's files."
            )

    def describe_example(self, batch: Any, index: int, prediction: Tensor | None) -> ExampleText:
        """``DescribesExamples``: the sequence's length and first values, the class and the model's."""
        batch = as_batch(batch, ClassificationBatch)
        length = int(batch.lengths[index]) if batch.lengths is not None else batch.inputs.shape[1]
        rows = batch.inputs[index, :length].float().cpu()
        first = ", ".join(f"{v:+.2f}" for v in rows[0, :4].tolist())
        label = self.classes[int(batch.labels[index])]
        lines = [
            f"a sequence of {length} steps of {rows.shape[1]} features; step 0: ({first}{', ...' if rows.shape[1] > 4 else ''})"
        ]
        lines.append(
            f"class {label}" + ("" if prediction is None else f", model {self.classes[int(prediction)]}")
        )
        return ExampleText([f"t{t}" for t in range(length)], lines)
