"""``WordLMDataModule``: word-level language-modelling data (PTB, WikiText-2/103, any folder of splits or of books)
read in BPTT windows.

Getting a corpus is in ``corpus_sources.py``, reading it (the vocabulary, cached token streams) in ``corpus.py``,
cutting a stream into windows in ``bptt.py``; this module holds the Lightning side: which split is read when, by
which rank, with what batch size.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader

from rrn_lightning.common import ConfigurationError, ExampleText, LanguageModelBatch, check_positive_ints

from ._resumable import training_loader
from .bptt import BPTTBatches
from .corpus import Vocab, file_lock, load_stream, load_vocab
from .corpus_sources import SPLITS, prepare_splits, source_folder

__all__ = ["WordLMDataModule"]


class WordLMDataModule(LightningDataModule):
    """Word-level language-modelling corpora, read in BPTT windows.

    Args:
        corpus: ``"ptb"``, ``"wikitext-2"`` or ``"wikitext-103"`` (stored under ``data_dir/<name>``, fetched when
            missing), or a folder: either with ``train.txt``, ``valid.txt``, ``test.txt`` (WikiText / PTB layout),
            or of ``.txt`` books (Gutenberg style) that are split by book.
        data_dir: Where named corpora live.
        batch_size: Rows of the training stream (per device).
        eval_batch_size: Rows of the validation stream (per device).
        test_batch_size: Rows of the test stream (per device); defaults to ``eval_batch_size``. Zaremba et al.
            (2014) read the test set as one stream (1).
        bptt: Window length (time steps per batch).
        variable_bptt: Draw window lengths as AWD-LSTM does (training only).
        min_freq: Words seen fewer times in train map to ``<unk>``.
        max_size: Largest vocabulary (``<unk>`` and ``<eos>`` included); ``None`` for no limit.
        cache_dir: Where the vocabulary and the token streams are cached (default ``<corpus folder>/.cache``).
        valid_fraction: For a folder of books, the share of books held out for validation (and ``test_fraction``
            for test), at least one book each.
        seed: Seeds the variable window lengths.
    """

    def __init__(
        self,
        corpus: str = "ptb",
        data_dir: str = "data",
        batch_size: int = 20,
        eval_batch_size: int = 10,
        test_batch_size: int | None = None,
        bptt: int = 35,
        variable_bptt: bool = False,
        min_freq: int = 1,
        max_size: int | None = None,
        cache_dir: str | None = None,
        valid_fraction: float = 0.05,
        test_fraction: float = 0.05,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_positive_ints(
            type(self).__name__,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            bptt=bptt,
            min_freq=min_freq,
        )
        if test_batch_size is not None:
            check_positive_ints(type(self).__name__, test_batch_size=test_batch_size)
        if max_size is not None and (not isinstance(max_size, int) or max_size < 3):
            raise ConfigurationError(
                f"WordLMDataModule: max_size must be None or at least 3, got max_size={max_size!r}."
            )
        for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
            if not 0.0 < value < 1.0:
                raise ConfigurationError(
                    f"WordLMDataModule: {name} must lie in (0, 1), got {name}={value!r}."
                )
        self.save_hyperparameters()
        self.corpus, self.data_dir = corpus, Path(data_dir)
        self.batch_size, self.eval_batch_size, self.bptt = batch_size, eval_batch_size, bptt
        self.test_batch_size = test_batch_size or eval_batch_size
        self.variable_bptt, self.min_freq, self.max_size, self.seed = variable_bptt, min_freq, max_size, seed
        self.valid_fraction, self.test_fraction = valid_fraction, test_fraction
        self._cache_dir = Path(cache_dir) if cache_dir else None
        self._vocab: Vocab | None = None
        self._folder: Path | None = None
        self.streams: dict[str, Tensor] = {}
        self._datasets: dict[str, BPTTBatches] = {}

    # -------------------------------------------------------------- preparing the corpus
    @property
    def folder(self) -> Path:
        """The folder holding ``train.txt``, ``valid.txt``, ``test.txt`` (prepared on first use)."""
        if self._folder is None:
            self._prepare()
        return self._folder

    @property
    def cache_dir(self) -> Path:
        return self._cache_dir or self._source_folder() / ".cache"

    def _source_folder(self) -> Path:
        """The corpus's own folder; a ``corpus`` path that is not a folder is refused here."""
        return source_folder(self.corpus, self.data_dir)

    def _prepare(self) -> None:
        """Fetch a named corpus if missing, split a folder of books, build or load the vocabulary - once, under a
        file lock, so that DDP ranks (and concurrent runs) never race or read half-written files."""
        source = self._source_folder()
        with file_lock(self.cache_dir / ".lock"):
            folder = prepare_splits(
                self.corpus, source, self.cache_dir, self.valid_fraction, self.test_fraction
            )
            self._folder = folder
            self._vocab = load_vocab(folder / "train.txt", self.cache_dir, self.min_freq, self.max_size)

    @property
    def vocab(self) -> Vocab:
        """The frozen vocabulary of the training split (prepares the corpus on first access); the ``rrn`` CLI passes
        its words to the model (``LanguageModel``'s ``vocab``)."""
        if self._vocab is None:
            self._prepare()
        return self._vocab

    @property
    def vocab_size(self) -> int:
        """Number of words, ``<unk>`` and ``<eos>`` included; linked into the model by the ``rrn`` CLI."""
        return len(self.vocab)

    def describe_example(
        self, batch: LanguageModelBatch, index: int, prediction: Tensor | None
    ) -> ExampleText:
        """``DescribesExamples``: row ``index`` of a BPTT window as words, and the model's next-word guesses."""
        words = [self.vocab.itos[i] for i in batch.inputs[index].tolist()]
        lines = ["text:  " + " ".join(words)]
        if prediction is not None:
            lines.append("model: " + " ".join(self.vocab.itos[i] for i in prediction.tolist()))
        return ExampleText(words, lines)

    def prepare_data(self) -> None:
        self.vocab  # noqa: B018 - fetch, split and build the vocabulary once per node
        with file_lock(self.cache_dir / ".lock"):
            for split in SPLITS:
                load_stream(self.folder / f"{split}.txt", self.vocab, self.cache_dir)

    def stream(self, split: str) -> Tensor:
        """The token ids of one split, int32 [num_tokens] (memory-mapped from the cache)."""
        if split not in self.streams:
            # Prepared first: a corpus that is not there fails before any lock file is made.
            folder, vocab = self.folder, self.vocab
            with file_lock(self.cache_dir / ".lock"):
                self.streams[split] = load_stream(folder / f"{split}.txt", vocab, self.cache_dir)
        return self.streams[split]

    # -------------------------------------------------------------- batches
    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def setup(self, stage: str | None = None) -> None:
        rank, world = self._rank()
        if stage in (None, "fit"):
            self._datasets["train"] = BPTTBatches(
                self.stream("train"),
                self.batch_size,
                self.bptt,
                rank=rank,
                world_size=world,
                pad=False,
                variable_bptt=self.variable_bptt,
                seed=self.seed,
            )
        if stage in (None, "fit", "validate"):
            self._datasets["valid"] = BPTTBatches(
                self.stream("valid"), self.eval_batch_size, self.bptt, rank=rank, world_size=world, pad=True
            )
        if stage in (None, "test"):
            self._datasets["test"] = BPTTBatches(
                self.stream("test"), self.test_batch_size, self.bptt, rank=rank, world_size=world, pad=True
            )

    def _loader(self, split: str) -> DataLoader:
        if split not in self._datasets:
            self.setup({"train": "fit", "valid": "validate", "test": "test"}[split])
        dataset = self._datasets[split]
        if split == "train":
            # A resumed run reads its epoch's window lengths from its window.
            return training_loader(self, dataset)
        return DataLoader(dataset, batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
