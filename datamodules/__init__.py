"""LightningDataModules for rrn-lightning: algorithmic tasks generated on the fly and language-modelling corpora."""

from .nth_farthest import NthFarthestDataModule, make_nth_farthest

__all__ = ["NthFarthestDataModule", "make_nth_farthest"]
