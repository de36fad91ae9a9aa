"""The LightningModules: one per task family, each over the shared ``TaskModule`` base class.

- ``SequenceClassifier`` (``classification.py``): a class per sequence (Nth farthest);
- ``Seq2Seq`` (``seq2seq.py``): an output sequence per input sequence (Learning to Execute, sorting);
- ``LanguageModel`` (``language_model.py``): the next word, over BPTT windows (PTB, WikiText).
"""

from .base import Probe, TaskModule
from .classification import SequenceClassifier
from .language_model import LanguageModel, TokenNLL
from .seq2seq import Seq2Seq, SequenceAccuracy

__all__ = [
    "LanguageModel",
    "Probe",
    "Seq2Seq",
    "SequenceAccuracy",
    "SequenceClassifier",
    "TaskModule",
    "TokenNLL",
]
