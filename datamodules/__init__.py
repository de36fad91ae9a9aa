"""LightningDataModules for rrn-lightning: algorithmic tasks generated on the fly and language-modelling corpora."""

from .corpus import CorpusError, Vocab
from .nth_farthest import NthFarthestDataModule, make_nth_farthest
from .word_lm import BPTTBatches, WordLMDataModule

__all__ = [
    "BPTTBatches",
    "CorpusError",
    "NthFarthestDataModule",
    "Vocab",
    "WordLMDataModule",
    "make_nth_farthest",
]
