"""The Nth farthest task of Santoro et al. (2018), generated on the fly."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from rrn_lightning.common import ClassificationBatch, ConfigurationError, ExampleText, check_positive_ints

from ._evaluation import PredictsASplit, PredictSplit, check_predict_split
from ._resumable import SeededBatches, rank_of, training_loader

__all__ = ["NthFarthestDataModule", "make_nth_farthest"]

Presentation = Literal["sequence", "set"]


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def make_nth_farthest(
    num_examples: int, num_vectors: int, num_features: int, generator: torch.Generator
) -> ClassificationBatch:
    """Draw ``num_examples`` Nth-farthest problems; see ``NthFarthestDataModule`` for the encoding.

    Returns ``inputs [num_examples, K, F + 3K]`` (float32, one row per vector, in random order), ``labels
    [num_examples]`` (int64, the id of the n-th farthest vector from vector m, 0-based: n = 0 is the farthest,
    n = K-1 is m itself) and ``groups`` = n ``[num_examples]``, which evaluation reports accuracy by.
    """
    B, K, Fe = num_examples, num_vectors, num_features
    vectors = torch.rand(B, K, Fe, generator=generator) * 2.0 - 1.0  # [B, K, F], uniform in [-1, 1)
    n = torch.randint(K, (B,), generator=generator)  # [B]
    m = torch.randint(K, (B,), generator=generator)  # [B]
    rows = torch.arange(B)
    reference = vectors[rows, m]  # [B, F]
    distances = (vectors - reference[:, None, :]).square().sum(-1)  # [B, K]: squared distance to vector m
    order = distances.argsort(dim=-1, descending=True, stable=True)  # [B, K]: ids, farthest first
    labels = order[rows, n]  # [B]
    ids = torch.eye(K).expand(B, K, K)  # [B, K, K]: row i carries id i
    n_hot = F.one_hot(n, K).float()[:, None, :].expand(B, K, K)  # [B, K, K]: same n on every row
    m_hot = F.one_hot(m, K).float()[:, None, :].expand(B, K, K)
    inputs = torch.cat([vectors, ids, n_hot, m_hot], dim=-1)  # [B, K, F + 3K]
    shuffle = torch.rand(B, K, generator=generator).argsort(dim=-1)  # [B, K]: a random order of the rows
    inputs = inputs.gather(1, shuffle[:, :, None].expand_as(inputs))
    return ClassificationBatch(inputs.contiguous(), labels, groups=n)


class _Examples(Dataset):
    """The examples of one fixed ``ClassificationBatch``, one by one; ``collate`` stacks them back."""

    def __init__(self, batch: ClassificationBatch) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return self.batch.labels.shape[0]

    def __getitem__(self, index: int) -> ClassificationBatch:
        return ClassificationBatch(*(None if field is None else field[index] for field in self.batch))

    @staticmethod
    def collate(items: list[ClassificationBatch]) -> ClassificationBatch:
        fields = zip(*items, strict=True)
        return ClassificationBatch(*(None if f[0] is None else torch.stack(f) for f in fields))


class NthFarthestDataModule(PredictsASplit, LightningDataModule):
    """Nth farthest: given K vectors, which one is the n-th farthest from vector m?

    Each example is a sequence of K rows, one per vector, in random order. Row i is
    ``[vector (F) | one-hot id of the vector (K) | one-hot n (K) | one-hot m (K)]``, width ``F + 3K``; n and m are
    the same on every row. The label is the id of the n-th farthest vector from vector m, counting from 0
    (Euclidean distance): n = 0 asks for the farthest vector, n = K - 1 for m itself. Chance is 1 / K.

    Worked example (K = 3, F = 2, n = 0, m = 2), vectors with ids 0, 1, 2::

        id 0: ( 0.5, -0.5)   distance to vector 2: 1.58
        id 1: (-0.9,  0.1)   distance to vector 2: 0.14
        id 2: (-1.0,  0.0)   (the reference, distance 0)

        farthest first: 0, 1, 2  ->  n = 0 gives label 0
        row of vector 1:  [-0.9, 0.1 | 0, 1, 0 | 1, 0, 0 | 0, 0, 1]   (width 2 + 3 * 3 = 11)

    Sonnet's generator counts "n-th nearest" instead; the two are the same task with n relabelled as K - 1 - n.

    ``presentation`` says how the core reads an example. ``"sequence"`` (the paper's): one vector per time step,
    K steps, inputs ``[B, K, F + 3K]``. ``"set"``: all K rows at every one of ``set_steps`` steps, inputs
    ``[B, set_steps, K, F + 3K]``, for a core built with ``input_rows=K`` (Sonnet's ``treat_input_as_matrix``;
    ``LSTMCore`` flattens the K rows of a step). The set takes the remembering out of the task and leaves the
    comparing; ``benchmarks/RESULTS.md`` ("Nth farthest: what held both cores at 50%") says why the quick start
    uses it.

    Every batch carries n as its ``groups``, so ``SequenceClassifier`` reports validation and test accuracy per n
    (``val/acc_by_group/0`` for "the farthest", ..., ``K-1`` for "m itself").

    Training batches are drawn on the fly, each epoch from a generator seeded by ``train_seed``, the epoch and
    (under DDP) the rank, so every step sees new problems, ranks never repeat each other, and a resumed run draws
    what the uninterrupted run would have, also from the middle of an epoch. ``batches_per_epoch`` sets the epoch
    length. Validation and test sets are fixed by ``val_seed`` and ``test_seed``. ``batch_size`` is per device.

    Args:
        num_vectors: Vectors per example (K); also the number of classes, and the sequence length when
            ``presentation="sequence"``.
        num_features: Features per vector (F).
        batch_size: Examples per batch (per device).
        batches_per_epoch: Training batches in one epoch.
        val_size: Examples in the fixed validation set.
        test_size: Examples in the fixed test set.
        train_seed: Seed of the training stream.
        val_seed: Seed of the validation set.
        test_seed: Seed of the test set.
        presentation: ``"sequence"`` (one vector per step, the paper's) or ``"set"`` (all vectors at every step).
        set_steps: Steps of a ``"set"`` example (each reads all K vectors); ignored for ``"sequence"``.
        predict_split: The split ``rrn predict`` reads, ``"validation"`` or ``"test"``.
    """

    def __init__(
        self,
        num_vectors: int = 8,
        num_features: int = 16,
        batch_size: int = 1600,
        batches_per_epoch: int = 100,
        val_size: int = 3200,
        test_size: int = 3200,
        train_seed: int = 0,
        val_seed: int = 1,
        test_seed: int = 2,
        presentation: Presentation = "sequence",
        set_steps: int = 1,
        predict_split: PredictSplit = "test",
    ) -> None:
        super().__init__()
        check_positive_ints(
            type(self).__name__,
            num_vectors=num_vectors,
            num_features=num_features,
            batch_size=batch_size,
            batches_per_epoch=batches_per_epoch,
            val_size=val_size,
            test_size=test_size,
            set_steps=set_steps,
        )
        if presentation not in ("sequence", "set"):
            raise ConfigurationError(
                f"NthFarthestDataModule: presentation must be 'sequence' (one vector per step) or 'set' (all "
                f"vectors at every step), got presentation={presentation!r}."
            )
        if num_vectors < 2:
            raise ConfigurationError(
                f"NthFarthestDataModule: num_vectors must be at least 2 for the task to mean anything, "
                f"got num_vectors={num_vectors}."
            )
        check_predict_split(type(self).__name__, predict_split)
        self.save_hyperparameters()
        self.num_vectors = num_vectors
        self.num_features = num_features
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.val_size = val_size
        self.test_size = test_size
        self.train_seed = train_seed
        self.val_seed = val_seed
        self.test_seed = test_seed
        self.presentation = presentation
        self.set_steps = set_steps
        self.predict_split = predict_split
        self._eval_sets: dict[str, _Examples] = {}

    @property
    def input_size(self) -> int:
        """Width of one input row: ``num_features + 3 * num_vectors``."""
        return self.num_features + 3 * self.num_vectors

    @property
    def num_classes(self) -> int:
        return self.num_vectors

    def _eval_set(self, split: str) -> _Examples:
        if split not in self._eval_sets:
            size, seed = (
                (self.val_size, self.val_seed) if split == "val" else (self.test_size, self.test_seed)
            )
            generator = torch.Generator().manual_seed(seed)
            self._eval_sets[split] = _Examples(
                self._present(make_nth_farthest(size, self.num_vectors, self.num_features, generator))
            )
        return self._eval_sets[split]

    def _present(self, batch: ClassificationBatch) -> ClassificationBatch:
        if self.presentation == "sequence":
            return batch
        inputs = batch.inputs[:, None].expand(-1, self.set_steps, -1, -1)  # [B, S, K, F + 3K]
        return batch._replace(inputs=inputs.contiguous())

    def _draw(self, generator: torch.Generator) -> ClassificationBatch:
        return self._present(
            make_nth_farthest(self.batch_size, self.num_vectors, self.num_features, generator)
        )

    def train_dataloader(self) -> DataLoader:
        # Generation is a few vectorised tensor ops per batch: worker processes would cost more than they save.
        return training_loader(
            self, SeededBatches(self._draw, self.train_seed, self.batches_per_epoch, rank_of(self))
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._eval_set("val"), batch_size=self.batch_size, collate_fn=_Examples.collate)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self._eval_set("test"), batch_size=self.batch_size, collate_fn=_Examples.collate)

    def describe_example(
        self, batch: ClassificationBatch, index: int, prediction: Tensor | None
    ) -> ExampleText:
        """``DescribesExamples``: each step labelled by the id of the vector read there (rows come shuffled), and
        the question, the vectors by id, the answer and the model's."""
        # [K, F + 3K] or [S, K, F + 3K], and []
        inputs, labels = batch.inputs[index].float().cpu(), batch.labels[index]
        K, Fe = self.num_vectors, self.num_features
        rows = inputs if inputs.dim() == 2 else inputs[0]  # [K, F + 3K]: a set's steps all read the same rows
        ids = rows[:, Fe : Fe + K].argmax(-1).tolist()  # [K]: the id of each row
        n, m = int(rows[0, Fe + K : Fe + 2 * K].argmax()), int(rows[0, Fe + 2 * K :].argmax())
        by_id = sorted(zip(ids, rows[:, :Fe].tolist(), strict=True))
        lines = [f"which vector is the {_ordinal(n + 1)} farthest from v{m}? (n={n}, m={m}, 0-based)"]
        lines += [f"v{i}: (" + ", ".join(f"{x:+.2f}" for x in vector) + ")" for i, vector in by_id]
        answer = f"answer v{int(labels)}"
        if prediction is not None:
            answer += f", model v{int(prediction)}"
        steps = (
            [f"v{i}" for i in ids] if inputs.dim() == 2 else [f"all {s + 1}" for s in range(inputs.shape[0])]
        )
        return ExampleText(steps, [*lines, answer])
