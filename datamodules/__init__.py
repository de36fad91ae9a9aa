"""LightningDataModules for rrn-lightning: algorithmic tasks generated on the fly and language-modelling corpora.

They know nothing of models: what they share with `rrn_lightning` (errors, ids, batch types) comes from
`rrn_lightning.common`, which imports no model code.
"""

from .bptt import BPTTBatches
from .corpus import CorpusError, Vocab
from .learn_to_execute import Curriculum, CurriculumCallback, LearnToExecuteDataModule
from .nth_farthest import NthFarthestDataModule, make_nth_farthest
from .sequences import SequenceDataModule
from .sorting import SortingDataModule, make_sorting
from .text import TextClassificationDataModule
from .word_lm import WordLMDataModule

__all__ = [
    "BPTTBatches",
    "CorpusError",
    "Curriculum",
    "CurriculumCallback",
    "LearnToExecuteDataModule",
    "NthFarthestDataModule",
    "SequenceDataModule",
    "SortingDataModule",
    "TextClassificationDataModule",
    "Vocab",
    "WordLMDataModule",
    "make_nth_farthest",
    "make_sorting",
]
