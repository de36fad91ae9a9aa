"""Learning to Execute (Zaremba & Sutskever 2014) with its curricula, and the batches of sequence-to-sequence tasks.

A batch is ``(inputs, input_lengths, targets, target_lengths)``: ``inputs`` float ``[B, T_in, D]`` (one-hot
characters here), ``input_lengths`` ``[B]``, ``targets`` int64 ``[B, T_out]`` padded with -100, ``target_lengths``
``[B]``. Worked example, ``addition`` with length 2 (characters one-hot over the vocabulary below)::

    program  print((41+73))<eos>        input_lengths 16
    target   114<eos>                    target_lengths 4, as ids [5, 5, 8, 1] (+ -100 padding in the batch)
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from torch import Tensor
from torch.utils.data import DataLoader, get_worker_info

from rrn_lightning.common import (
    EOS_ID,
    EOS_TOKEN,
    IGNORE_INDEX,
    PAD_ID,
    PAD_TOKEN,
    ConfigurationError,
    ExampleText,
    Seq2SeqBatch,
    SupportsBatchLoss,
    check_positive_ints,
)

from ._evaluation import FixedEvaluationSets, PredictSplit, check_predict_split, describe_seq2seq
from ._resumable import EpochBatches, rank_of, stream_seed, training_loader
from .programs import TASKS, generate

__all__ = ["CHARS", "Curriculum", "CurriculumCallback", "LearnToExecuteDataModule", "encode_batch"]

CHARS = "0123456789abcdefghijklmnopqrstuvwxyz+-*=():<> \n"
VOCAB = [PAD_TOKEN, EOS_TOKEN, *CHARS]  # <pad> at PAD_ID = 0, <eos> at EOS_ID = 1
_INDEX = {c: i for i, c in enumerate(CHARS, start=2)}  # after <pad> and <eos>
CURRICULA = ("baseline", "naive", "mix", "combined")


def encode_batch(pairs: list[tuple[str, str]]) -> Seq2SeqBatch:
    """(source, target) strings -> one-hot inputs, input lengths, target ids (padded with -100), target lengths;
    both sequences end with ``<eos>``."""
    sources = [[_INDEX[c] for c in s] + [EOS_ID] for s, _ in pairs]
    targets = [[_INDEX[c] for c in t] + [EOS_ID] for _, t in pairs]
    B, t_in, t_out = len(pairs), max(map(len, sources)), max(map(len, targets))
    ids = torch.full((B, t_in), PAD_ID, dtype=torch.long)
    out = torch.full((B, t_out), IGNORE_INDEX, dtype=torch.long)
    for i, (s, t) in enumerate(zip(sources, targets, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        out[i, : len(t)] = torch.tensor(t)
    inputs = F.one_hot(ids, len(VOCAB)).float()
    inputs[ids == PAD_ID] = 0.0  # padding reads as zeros
    lengths = torch.tensor([len(s) for s in sources])
    return Seq2SeqBatch(inputs, lengths, out, torch.tensor([len(t) for t in targets]))


def decode(ids: list[int]) -> str:
    """Output ids -> text, up to the first ``<eos>``."""
    chars = []
    for i in ids:
        if i == EOS_ID:
            break
        chars.append(VOCAB[i] if i not in (PAD_ID, EOS_ID) else "")
    return "".join(chars)


def _character(row: Tensor) -> str:
    """A one-hot input row -> its character (``<eos>`` as ``$``, a line break as ``|`` for one-line labels)."""
    i = int(row.argmax())
    if i == EOS_ID:
        return "$"
    return {"\n": "|"}.get(VOCAB[i], VOCAB[i])


class Curriculum:
    """Which (length, nesting) each training example gets (Zaremba & Sutskever 2014, section 4).

    - ``baseline``: every example at the target level (a, b);
    - ``naive``: start at (1, 1); each time the loss at the current level stops improving, raise the length by
      one up to a, then the nesting by one with the length back to 1;
    - ``mix``: each example's length uniform in 1..a and nesting uniform in 1..b;
    - ``combined``: each example from ``naive``'s current level or from ``mix``, with equal probability.

    "Stops improving": over the last ``window`` evaluations at the current level, the loss fell by less than
    ``threshold`` times its mean. The current level lives in a shared-memory tensor, so data-loader workers see
    every change; under DDP the callback decides on rank 0 and broadcasts.
    """

    def __init__(
        self,
        kind: str,
        length: int,
        nesting: int,
        threshold: float = 0.05,
        window: int = 5,
        owner: str = "Curriculum",
    ) -> None:
        # Errors name the data module's arguments (curriculum, curriculum_threshold), where users set them.
        if kind not in CURRICULA:
            raise ConfigurationError(
                f"{owner}: curriculum must be one of {', '.join(CURRICULA)}, got curriculum={kind!r}."
            )
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
            raise ConfigurationError(
                f"{owner}: curriculum_threshold is the relative loss change that counts as a plateau, a number "
                f"in [0, 1), got curriculum_threshold={threshold!r}."
            )
        self.kind, self.length, self.nesting = kind, length, nesting
        self.threshold, self.window = threshold, window
        start = (length, nesting) if kind in ("baseline", "mix") else (1, 1)
        self.level = torch.tensor(start, dtype=torch.long).share_memory_()
        self.losses: deque[float] = deque(maxlen=window)
        self.driven = False  # set by whatever moves an adaptive level (CurriculumCallback.setup)

    @property
    def current(self) -> tuple[int, int]:
        return int(self.level[0]), int(self.level[1])

    @property
    def adaptive(self) -> bool:
        """Whether the level moves (``naive`` and ``combined``)."""
        return self.kind in ("naive", "combined")

    def sample(self, rng: random.Random) -> tuple[int, int]:
        mix = (rng.randint(1, self.length), rng.randint(1, self.nesting))
        if self.kind == "mix" or (self.kind == "combined" and rng.random() < 0.5):
            return mix
        return self.current

    def update(self, loss: float) -> bool:
        """Record the held-out loss at the current level; raise the level after a plateau. True if it changed."""
        if not self.adaptive or self.current == (self.length, self.nesting):
            return False
        self.losses.append(float(loss))
        if len(self.losses) < self.window:
            return False
        mean = sum(self.losses) / len(self.losses)
        if (self.losses[0] - self.losses[-1]) >= self.threshold * mean:
            return False
        length, nesting = self.current
        if length < self.length:
            length += 1
        else:
            length, nesting = 1, nesting + 1
        self.set_level(length, nesting)
        return True

    def set_level(self, length: int, nesting: int) -> None:
        self.level[0], self.level[1] = length, nesting
        self.losses.clear()

    def state_dict(self) -> dict:
        return {"level": self.current, "losses": list(self.losses)}

    def load_state_dict(self, state: dict) -> None:
        self.set_level(*state["level"])
        self.losses.extend(state["losses"])


class _TrainBatches(EpochBatches):
    """Fresh training batches at the curriculum's levels. Batch i of epoch e on rank r has its own seed
    (train_seed, r, e, i): the stream is the same whatever the number of workers, and resuming mid-epoch draws
    nothing twice. With workers, worker w makes batches start + w, start + w + W, ... (the loader's order)."""

    def __init__(self, dm: LearnToExecuteDataModule, rank: int) -> None:
        self.dm, self.rank = dm, rank

    def __len__(self) -> int:
        return self.dm.batches_per_epoch

    def batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, ...]]:
        dm = self.dm
        worker = get_worker_info()
        wid, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for index in range(start + wid, dm.batches_per_epoch, workers):
            rng = random.Random(stream_seed(dm.train_seed, self.rank, epoch, index))
            yield dm.make_batch(dm.batch_size, rng, dm.curriculum)


class LearnToExecuteDataModule(FixedEvaluationSets, LightningDataModule):
    """Learning to Execute: read a program character by character, output what it prints.

    See ``datamodules/programs.py`` for the program families and a worked example, and ``encode_batch`` above for
    the encoding. Validation and test are always at the target level (``length``, ``nesting``), fixed by their
    seeds, as the paper evaluates; training follows the curriculum (its level logged and checkpointed by
    ``CurriculumCallback``, which ``naive`` and ``combined`` need in ``trainer.callbacks``; the callback knows this
    data module, never the other way round).

    Args:
        task: ``addition``, ``control``, ``program``, ``copy``, ``reverse`` or ``double``.
        length: Digits of the literals at the target level (a).
        nesting: Nesting of operations at the target level (b); ignored by ``addition`` and memorisation tasks.
        curriculum: ``baseline``, ``naive``, ``mix`` or ``combined``.
        curriculum_threshold: Relative loss improvement over the window below which ``naive`` moves on.
        curriculum_window: Evaluations per window.
        batch_size: Examples per batch (per device).
        batches_per_epoch: Training batches in one epoch.
        val_size, test_size: Examples in the fixed evaluation sets.
        num_workers: Data-loader workers generating training batches (0: in the main process).
        train_seed, val_seed, test_seed: Seeds.
        predict_split: The split ``rrn predict`` reads, ``"validation"`` or ``"test"``.
    """

    def __init__(
        self,
        task: str = "addition",
        length: int = 5,
        nesting: int = 2,
        curriculum: str = "mix",
        curriculum_threshold: float = 0.05,
        curriculum_window: int = 5,
        batch_size: int = 128,
        batches_per_epoch: int = 100,
        val_size: int = 1024,
        test_size: int = 2048,
        num_workers: int = 0,
        train_seed: int = 0,
        val_seed: int = 1,
        test_seed: int = 2,
        predict_split: PredictSplit = "test",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if task not in TASKS:
            raise ConfigurationError(f"{name}: task must be one of {', '.join(TASKS)}, got task={task!r}.")
        check_positive_ints(
            name,
            length=length,
            nesting=nesting,
            batch_size=batch_size,
            batches_per_epoch=batches_per_epoch,
            val_size=val_size,
            test_size=test_size,
            curriculum_window=curriculum_window,
        )
        if length > 12:
            raise ConfigurationError(
                f"{name}: length is the digits per literal, at most 12, got length={length}."
            )
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigurationError(
                f"{name}: num_workers must be 0 or more, got num_workers={num_workers!r}."
            )
        check_predict_split(name, predict_split)
        self.save_hyperparameters()
        self.task, self.length, self.nesting = task, length, nesting
        self.curriculum = Curriculum(
            curriculum, length, nesting, curriculum_threshold, curriculum_window, owner=name
        )
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.val_size, self.test_size, self.num_workers = val_size, test_size, num_workers
        self.train_seed, self.val_seed, self.test_seed = train_seed, val_seed, test_seed
        self.predict_split = predict_split

    @property
    def input_size(self) -> int:
        """One-hot width: the characters plus ``<pad>`` and ``<eos>``."""
        return len(VOCAB)

    @property
    def num_classes(self) -> int:
        return len(VOCAB)

    def make_batch(self, size: int, rng: random.Random, curriculum: Curriculum | None) -> Seq2SeqBatch:
        """A batch whose examples' levels come from ``curriculum`` (the target level when None)."""
        pairs = []
        for _ in range(size):
            length, nesting = (
                curriculum.sample(rng) if curriculum is not None else (self.length, self.nesting)
            )
            sample = generate(self.task, length, nesting, rng)
            pairs.append((sample.source, sample.target))
        return encode_batch(pairs)

    def level_batch(self, size: int, seed: int) -> Seq2SeqBatch:
        """A held-out batch at the curriculum's current level (for the plateau test), fixed by ``seed``."""
        length, nesting = self.curriculum.current
        rng = random.Random(stream_seed(seed, length, nesting))
        pairs = [
            (s.source, s.target) for s in (generate(self.task, length, nesting, rng) for _ in range(size))
        ]
        return encode_batch(pairs)

    def _eval_source(self, seed: int) -> random.Random:
        return random.Random(seed)

    def _eval_batch(self, size: int, source: random.Random) -> Seq2SeqBatch:
        return self.make_batch(size, source, None)

    def describe_example(self, batch: Seq2SeqBatch, index: int, prediction: Tensor | None) -> ExampleText:
        """``DescribesExamples``: the program character by character (``$`` its ``<eos>``, ``|`` a line break),
        the target and the model's output as text."""
        return describe_seq2seq(batch, index, prediction, _character, decode)

    def train_dataloader(self) -> DataLoader:
        # The link runs one way: the callback (set up before the loaders are asked for) marks the curriculum as
        # driven; the data module looks at no callbacks. Outside a Trainer the caller moves the level itself.
        if self.curriculum.adaptive and not self.curriculum.driven and self.trainer is not None:
            raise ConfigurationError(
                f"LearnToExecuteDataModule: curriculum={self.curriculum.kind!r} raises the level from held-out "
                "losses, which CurriculumCallback measures: add `- class_path: datamodules.CurriculumCallback` "
                "under trainer.callbacks."
            )
        return training_loader(self, _TrainBatches(self, rank_of(self)), self.num_workers)


class CurriculumCallback(Callback):
    """Moves a ``naive`` or ``combined`` curriculum: every ``every_n_steps`` training steps it measures the model's
    loss on a held-out batch at the current level and updates the curriculum. The model is any LightningModule
    with ``batch_loss(batch)`` (``rrn_lightning.common.SupportsBatchLoss``; ``Seq2Seq`` has it), the only thing the
    callback asks of it; logs ``curriculum/length`` and
    ``curriculum/nesting``; stores the level in checkpoints. Under DDP rank 0 decides and broadcasts the level, so
    every rank (and every data-loader worker) trains at the same one.

    Args:
        every_n_steps: Training steps between evaluations.
        batch_size: Examples in the held-out batch.
        seed: Seeds the held-out batch of each level.
    """

    def __init__(self, every_n_steps: int = 100, batch_size: int = 256, seed: int = 12345) -> None:
        super().__init__()
        check_positive_ints(type(self).__name__, every_n_steps=every_n_steps, batch_size=batch_size)
        self.every_n_steps, self.batch_size, self.seed = every_n_steps, batch_size, seed

    @staticmethod
    def _datamodule(trainer: Trainer) -> LearnToExecuteDataModule:
        dm = trainer.datamodule
        if not isinstance(dm, LearnToExecuteDataModule):
            raise ConfigurationError("CurriculumCallback needs a LearnToExecuteDataModule as the data.")
        return dm

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        dm = self._datamodule(trainer)
        curriculum = dm.curriculum
        if curriculum.adaptive and trainer.global_step % self.every_n_steps == 0:
            held_out = dm.level_batch(self.batch_size, self.seed)
            held_out = Seq2SeqBatch(*(t.to(pl_module.device) for t in held_out))
            was_training = pl_module.training
            pl_module.eval()
            with torch.no_grad():
                loss = float(pl_module.batch_loss(held_out))
            pl_module.train(was_training)
            if trainer.is_global_zero:
                curriculum.update(loss)
            level = trainer.strategy.broadcast(curriculum.current, src=0)
            if tuple(level) != curriculum.current:
                curriculum.set_level(*level)
        length, nesting = curriculum.current
        pl_module.log("curriculum/length", float(length), on_step=True, on_epoch=False)
        pl_module.log("curriculum/nesting", float(nesting), on_step=True, on_epoch=False)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and not isinstance(pl_module, SupportsBatchLoss):
            raise ConfigurationError(
                f"CurriculumCallback: the model must have batch_loss(batch) (rrn_lightning.common.SupportsBatchLoss) "
                f"to measure held-out losses, got model={type(pl_module).__name__}; use rrn_lightning.Seq2Seq or add "
                "the method."
            )
        dm = trainer.datamodule
        self._dm_ref = dm if isinstance(dm, LearnToExecuteDataModule) else None
        if self._dm_ref is not None and stage == "fit":
            self._dm_ref.curriculum.driven = True

    def state_dict(self) -> dict:
        dm = self._dm_ref
        return dm.curriculum.state_dict() if dm is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        # Lightning restores callbacks after ``setup`` and before the first batch is drawn (data-loader workers
        # start drawing as soon as the loader is iterated), so the level is set here, not at train start.
        if state_dict and self._dm_ref is not None:
            self._dm_ref.curriculum.load_state_dict(state_dict)

    _dm_ref: LearnToExecuteDataModule | None = None
