"""rrn-lightning: relational recurrent networks (Santoro et al., 2018) for PyTorch Lightning.

The cores (``RelationalMemory``, ``LSTMCore``) are plain ``nn.Module``s; the LightningModules wrap a core passed in.
"""

from .cores import LSTMCore, RecurrentCore, RelationalMemory

__version__ = "0.1.0"

__all__ = ["LSTMCore", "LanguageModel", "RecurrentCore", "RelationalMemory", "Seq2Seq", "SequenceClassifier"]


def __getattr__(name: str):
    # The LightningModules import Lightning; the cores must import without it.
    if name == "SequenceClassifier":
        from .classifier import SequenceClassifier

        return SequenceClassifier
    if name == "Seq2Seq":
        from .seq2seq import Seq2Seq

        return Seq2Seq
    if name == "LanguageModel":
        from .language_model import LanguageModel

        return LanguageModel
    raise AttributeError(f"module 'rrn_lightning' has no attribute {name!r}")
