"""LightningDataModules for rrn-lightning: algorithmic tasks generated on the fly and language-modelling corpora."""

from .corpus import CorpusError, Vocab
from .learn_to_execute import Curriculum, CurriculumCallback, LearnToExecuteDataModule
from .nth_farthest import NthFarthestDataModule, make_nth_farthest
from .sorting import SortingDataModule, make_sorting
from .word_lm import BPTTBatches, WordLMDataModule

__all__ = [
    "BPTTBatches",
    "CorpusError",
    "Curriculum",
    "CurriculumCallback",
    "LearnToExecuteDataModule",
    "NthFarthestDataModule",
    "SortingDataModule",
    "Vocab",
    "WordLMDataModule",
    "make_nth_farthest",
    "make_sorting",
]
