"""Batching a token stream for language modelling: contiguous rows read in BPTT windows.

Example (the stream cut into rows and read in windows; B = 2 rows, bptt = 3)::

    tokens   the cat sat <eos> a dog ran far <eos> ...      (ids 5 9 7 1 4 8 6 12 1 ...)
    row 0    the cat sat <eos> ...        row 1    (the second half of the stream)
    window 0 inputs  [[the, cat, sat], [...]]   targets [[cat, sat, <eos>], [...]]   (inputs shifted by one)
    window 1 continues each row where window 0 stopped, so a model can carry its state from one to the next.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from rrn_lightning.common import EOS_ID, IGNORE_INDEX, LanguageModelBatch

from ._resumable import EpochBatches, stream_seed
from .corpus import CorpusError

__all__ = ["BPTTBatches"]


class BPTTBatches(EpochBatches):
    """A token stream cut into ``batch_size`` contiguous rows and read in windows of ``bptt`` steps.

    Yields ``LanguageModelBatch``es ``(inputs, targets)``, int64 ``[batch_size, window]``, targets being the inputs shifted by one. Under
    DDP each rank reads its own contiguous shard of the stream (``rank`` of ``world_size``), and every rank yields
    the same number of windows. With ``pad=True`` (evaluation) no token is dropped: the shard is padded to whole
    rows, padding targets are ``-100`` (ignored by the loss); with ``pad=False`` (training) the remainder that
    does not fill a row is dropped. ``variable_bptt`` draws each window's length as AWD-LSTM does (``bptt``, or
    ``bptt / 2`` with probability 0.05, plus Gaussian noise of std 5, at least 5), from a generator seeded by
    ``(seed, epoch)``: the same lengths on every rank. A pass reads epoch ``epoch`` from window ``start`` on
    (``ResumableLoader`` sets both, so a run resumed mid-epoch continues in the right window).
    """

    def __init__(
        self,
        stream: Tensor,
        batch_size: int,
        bptt: int,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = False,
        variable_bptt: bool = False,
        seed: int = 0,
    ) -> None:
        pairs = len(stream) - 1  # (input, target) pairs in the whole stream
        per_rank = math.ceil(pairs / world_size) if pad else pairs // world_size
        width = math.ceil(per_rank / batch_size) if pad else per_rank // batch_size
        if width < 1:
            raise CorpusError(
                f"The stream of {len(stream)} tokens is too short for batch_size={batch_size} on {world_size} "
                "device(s): lower the batch size."
            )
        start = rank * per_rank
        stop = min(start + per_rank, pairs)
        inputs = torch.full((batch_size * width,), EOS_ID, dtype=torch.long)  # padding inputs
        targets = torch.full((batch_size * width,), IGNORE_INDEX, dtype=torch.long)
        count = max(0, min(stop - start, batch_size * width))
        inputs[:count] = stream[start : start + count].long()
        targets[:count] = stream[start + 1 : start + 1 + count].long()
        self.inputs = inputs.view(batch_size, width)  # [B, width]: row b is one contiguous piece of the shard
        self.targets = targets.view(batch_size, width)
        self.bptt, self.variable_bptt, self.seed = bptt, variable_bptt, seed

    def window_lengths(self, epoch: int) -> list[int]:
        width = self.inputs.shape[1]
        if not self.variable_bptt:
            return [min(self.bptt, width - i) for i in range(0, width, self.bptt)]
        generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch))
        lengths, total = [], 0
        while total < width:
            base = self.bptt if torch.rand((), generator=generator) < 0.95 else self.bptt / 2
            length = max(5, int(base + 5 * torch.randn((), generator=generator)))
            length = min(length, width - total)
            lengths.append(length)
            total += length
        return lengths

    def __len__(self) -> int:
        return len(self.window_lengths(self.epoch))

    def batches(self, epoch: int, start: int) -> Iterator[LanguageModelBatch]:
        lengths = self.window_lengths(epoch)
        offset = sum(lengths[:start])
        for length in lengths[start:]:
            window = slice(offset, offset + length)
            yield LanguageModelBatch(self.inputs[:, window], self.targets[:, window])
            offset += length
