"""rrn-lightning: relational recurrent networks (Santoro et al., 2018) for PyTorch Lightning.

The cores (``RelationalMemory``, ``LSTMCore``; ``rrn_lightning.cores``) are plain ``nn.Module``s; the
LightningModules (``SequenceClassifier``, ``Seq2Seq``, ``LanguageModel``; ``rrn_lightning.tasks``) wrap a core
passed in. Both load on first use: ``import rrn_lightning.common`` (what ``datamodules`` imports) loads neither,
and the cores import without Lightning.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the subpackage that defines it, imported on first access.
_LAZY = {
    "LSTMCore": "cores",
    "RecurrentCore": "cores",
    "RelationalMemory": "cores",
    "LanguageModel": "tasks",
    "Seq2Seq": "tasks",
    "SequenceClassifier": "tasks",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'rrn_lightning' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
