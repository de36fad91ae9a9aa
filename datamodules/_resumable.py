"""Training streams that a checkpoint can resume mid-epoch, through Lightning's stateful data loading.

Lightning saves ``state_dict()`` of every training loader that has one in each checkpoint, and hands it back to
``load_state_dict`` when a run resumes, before the first batch is fetched. Our training batches are a function of
(seed, rank, epoch, position in the epoch), so the state is just the epoch and how many batches the model has
consumed; a resumed epoch starts where the checkpoint was taken. Counting happens in the main process, as batches
leave the loader, so it is exact with data-loader workers too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

__all__ = ["EpochBatches", "ResumableLoader", "SeededBatches", "rank_of", "stream_seed", "training_loader"]


def stream_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (seed, rank, epoch), without the collisions of a sum."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class EpochBatches(IterableDataset):
    """One epoch of training batches per pass, from any position. Before each pass the loader sets ``epoch`` and
    ``start`` (batches of this epoch already consumed); subclasses yield the epoch's batches from ``start`` on, and
    report the epoch's full length as ``__len__``."""

    epoch: int = 0
    start: int = 0

    def batches(self, epoch: int, start: int) -> Iterator[Any]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        return self.batches(self.epoch, self.start)


class SeededBatches(EpochBatches):
    """``per_epoch`` batches per epoch, epoch e on DDP rank r drawn from a ``torch.Generator`` seeded by
    (seed, r, e): every rank sees its own problems, every epoch new ones. Resuming at position k draws and drops the
    first k batches (generation is a few tensor operations per batch)."""

    def __init__(
        self, draw: Callable[[torch.Generator], Any], seed: int, per_epoch: int, rank: int = 0
    ) -> None:
        self.draw, self.seed, self.per_epoch, self.rank = draw, seed, per_epoch, rank

    def __len__(self) -> int:
        return self.per_epoch

    def batches(self, epoch: int, start: int) -> Iterator[Any]:
        generator = torch.Generator().manual_seed(stream_seed(self.seed, self.rank, epoch))
        for index in range(self.per_epoch):
            batch = self.draw(generator)
            if index >= start:
                yield batch


class ResumableLoader(DataLoader):
    """The training loader of an ``EpochBatches`` stream; ``state_dict`` / ``load_state_dict`` are what Lightning
    saves and restores (``{"epoch": e, "batches": k}``: k batches of epoch e consumed).

    Args:
        dataset: The stream.
        epoch: Returns the trainer's current epoch (None without a trainer: passes are then counted from 0).
        num_workers: Data-loader worker processes.
    """

    def __init__(
        self, dataset: EpochBatches, epoch: Callable[[], int | None] | None = None, num_workers: int = 0
    ) -> None:
        # A generator of its own: each pass draws a base seed for workers, which must not move the global random
        # state that dropout draws from (a resumed run restores that state and would be one draw behind).
        super().__init__(dataset, batch_size=None, num_workers=num_workers, generator=torch.Generator())
        self._epoch = epoch
        self._passes = 0
        self._resume: dict[str, int] | None = None
        self._position = {"epoch": 0, "batches": 0}

    def __iter__(self) -> Iterator[Any]:
        epoch = self._epoch() if self._epoch is not None else None
        epoch = self._passes if epoch is None else epoch
        self._passes += 1
        resume, self._resume = self._resume, None
        start = resume["batches"] if resume is not None and resume["epoch"] == epoch else 0
        self.dataset.epoch, self.dataset.start = epoch, start
        self._position = {"epoch": epoch, "batches": start}
        return self._counted(super().__iter__())

    def _counted(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self._position["batches"] += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return dict(self._position)

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}


def rank_of(dm: Any) -> int:
    """A data module's DDP rank (0 without a trainer)."""
    return dm.trainer.global_rank if dm.trainer is not None else 0


def training_loader(dm: Any, stream: EpochBatches, num_workers: int = 0) -> ResumableLoader:
    """A data module's training loader over ``stream``, its epochs counted by the trainer."""
    return ResumableLoader(
        stream,
        epoch=lambda: dm.trainer.current_epoch if dm.trainer is not None else None,
        num_workers=num_workers,
    )
