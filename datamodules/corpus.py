"""Word-level corpora: reading, the vocabulary, and token streams cached on disk.

- reading: ``count_words``, ``encode_file`` (tokens are ``line.split()`` plus ``<eos>`` at every line's end, the
  WikiText / PTB convention; CRLF line ends are fine);
- the vocabulary: ``Vocab`` (built from the training split only, then frozen; unknown words map to ``<unk>``);
- the caches: ``load_stream`` and ``load_vocab`` (what is cached and how each file is checked: their docstrings),
  ``file_key``, ``sampled_digest``, ``file_lock``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from rrn_lightning.common import EOS_TOKEN, UNK_ID, UNK_TOKEN, ConfigurationError

__all__ = [
    "CorpusError",
    "Vocab",
    "count_words",
    "encode_file",
    "file_lock",
    "load_stream",
    "load_vocab",
    "sampled_digest",
]

SPECIAL_WORDS = [UNK_TOKEN, EOS_TOKEN]  # the first words of every vocabulary, at ids UNK_ID and EOS_ID
CACHE_FORMAT = 2  # 2: every cache file carries a checksum; older entries get new keys and are rebuilt
PAGE_BYTES = 4096
SAMPLED_PAGES = 256  # the token cache's check reads at most 1 MiB, whatever the split's size
_CHUNK_BYTES = 16 << 20  # text is encoded in pieces of about this size, to bound memory on large corpora


class CorpusError(ConfigurationError):
    """A corpus file is missing, empty or unreadable; the message names the file and what to do."""


class _Lookup(dict):
    """word -> id, with unknown words mapped to ``<unk>`` (0) inside ``map`` at C speed for known words."""

    def __missing__(self, word: str) -> int:
        return UNK_ID


class Vocab:
    """A frozen word <-> id mapping: ``<unk>`` is 0, ``<eos>`` is 1, then words by decreasing training frequency
    (ties in alphabetical order, so the same corpus always gives the same ids).

    Saved as plain text, one word per line in id order (``save`` / ``load``), so a trained model can be used for
    text with nothing else at hand.
    """

    def __init__(self, words: Iterable[str]) -> None:
        self.itos = list(words)
        if self.itos[:2] != SPECIAL_WORDS:
            raise CorpusError(
                f"Vocab: the first two words must be {UNK_TOKEN!r} and {EOS_TOKEN!r}, got {self.itos[:2]}."
            )
        self.stoi = _Lookup((w, i) for i, w in enumerate(self.itos))
        if len(self.stoi) != len(self.itos):
            duplicates = [w for w, n in Counter(self.itos).items() if n > 1][:5]
            raise CorpusError(f"Vocab: duplicate words {duplicates}.")

    @classmethod
    def build(cls, counts: Counter, min_freq: int = 1, max_size: int | None = None) -> Vocab:
        """From word counts of the training split: words seen at least ``min_freq`` times, the ``max_size`` most
        frequent at most (``<unk>`` and ``<eos>`` included in the size)."""
        words = [w for w, n in counts.items() if n >= min_freq and w not in SPECIAL_WORDS]
        words.sort(key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(0, max_size - 2)]
        return cls([*SPECIAL_WORDS, *words])

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab({len(self)} words)"

    @property
    def fingerprint(self) -> str:
        """A short hash of the words in id order: two vocabularies with the same fingerprint give the same ids."""
        return hashlib.sha256("\n".join(self.itos).encode()).hexdigest()[:16]

    def encode(self, words: Iterable[str]) -> list[int]:
        return list(map(self.stoi.__getitem__, words))

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def save(self, path: str | os.PathLike) -> None:
        _atomic_write(Path(path), ("\n".join(self.itos) + "\n").encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        path = Path(path)
        if not path.is_file():
            raise CorpusError(f"Vocab file {path} does not exist.")
        data = path.read_bytes()
        try:
            words = data.decode("utf-8").split("\n")
        except UnicodeDecodeError as error:
            raise CorpusError(
                f"Vocab file {path}: not valid UTF-8 (byte {data[error.start]:#04x} at offset {error.start}); "
                "a vocabulary is saved by Vocab.save, one word per line."
            ) from None
        if words and words[-1] == "":
            words.pop()
        if not words:
            raise CorpusError(f"Vocab file {path} is empty.")
        return cls(words)


# ---------------------------------------------------------------------------------------------- reading text
def _read_text(path: Path) -> str:
    if not path.is_file():
        raise CorpusError(f"Corpus file {path} does not exist.")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise CorpusError(
            f"{path}, line {line}: not valid UTF-8 (byte {data[error.start]:#04x} at offset {error.start}). "
            "Convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8`."
        ) from None
    if not text.split():
        raise CorpusError(f"Corpus file {path} is empty (no words). Every split needs text.")
    return text


def _pieces(text: str) -> Iterator[list[str]]:
    """The tokens of ``text``, ``<eos>`` after every line, in lists of a bounded size."""
    if not text.endswith("\n"):
        text += "\n"
    start = 0
    while start < len(text):
        end = text.find("\n", min(start + _CHUNK_BYTES, len(text) - 1)) + 1  # cut after a line end
        yield text[start:end].replace("\n", f" {EOS_TOKEN} ").split()
        start = end


def count_words(path: Path) -> Counter:
    """Word counts of one file (``<eos>`` included)."""
    counts: Counter = Counter()
    for tokens in _pieces(_read_text(path)):
        counts.update(tokens)
    return counts


def _encode(path: Path, vocab: Vocab) -> array:
    ids = array("i")
    for tokens in _pieces(_read_text(path)):
        ids.extend(map(vocab.stoi.__getitem__, tokens))
    return ids


def encode_file(path: Path, vocab: Vocab) -> Tensor:
    """The token ids of one file, int32 [num_tokens]."""
    return torch.frombuffer(_encode(path, vocab), dtype=torch.int32)


# ---------------------------------------------------------------------------------------------- the cache
def file_key(*paths: Path, **settings) -> str:
    """A key that changes when any file changes (path, size, modification time) or any setting does."""
    parts = {"format": CACHE_FORMAT, "settings": settings, "files": []}
    for path in paths:
        stat = path.stat()
        parts["files"].append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` is either absent or complete, never half written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sampled_digest(path: Path) -> str:
    """sha256 of a file's size and of ``SAMPLED_PAGES`` of its 4 KiB pages spread evenly, first and last included
    (every page of a file up to 1 MiB): a checksum whose cost does not grow with the file."""
    size = path.stat().st_size
    last = max(0, -(-size // PAGE_BYTES) - 1)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb", buffering=0) as f:
        for page in sorted({i * last // (SAMPLED_PAGES - 1) for i in range(SAMPLED_PAGES)}):
            f.seek(page * PAGE_BYTES)
            digest.update(f.read(PAGE_BYTES))
    return digest.hexdigest()


def _read_metadata(meta: Path, *keys: str) -> list:
    """The values of ``keys`` in a cache file's JSON metadata; a CorpusError when it is missing or unreadable."""
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        return [info[key] for key in keys]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CorpusError(f"its metadata {meta.name} is missing or unreadable ({error!r}).") from None


def _read_stream_cache(data: Path, meta: Path, vocab_size: int) -> Tensor:
    """The cached token ids, memory-mapped, once the checks described at the top of this module pass."""
    count, sample = _read_metadata(meta, "tokens", "sampled_sha256")
    if not data.is_file():
        raise CorpusError(f"it is missing; only its metadata {meta.name} is there.")
    size = data.stat().st_size
    if not isinstance(count, int) or count <= 0 or size != 4 * count:
        raise CorpusError(
            f"it holds {size} bytes where its metadata {meta.name} says {count!r} int32 tokens."
        )
    if sampled_digest(data) != sample:
        raise CorpusError(f"its content does not match the checksum in {meta.name} (damaged or overwritten).")
    ids = torch.from_file(str(data), shared=False, size=count, dtype=torch.int32)
    low, high = torch.aminmax(ids)  # every id, not a sample: one bad id anywhere would crash the embedding
    if low < 0 or high >= vocab_size:
        bad = int(low) if low < 0 else int(high)
        raise CorpusError(f"it holds token id {bad}, outside the vocabulary of {vocab_size} words.")
    return ids


def load_stream(path: Path, vocab: Vocab, cache_dir: Path) -> Tensor:
    """The token ids of ``path`` (int32 [num_tokens]), from the cache when it passes its checks, else encoded and
    cached (with a warning when a cache entry was there but failed).

    The cached array is memory-mapped: loading reads a 1 MiB sample of the file and scans its ids once.

    Token streams are cached as raw int32 files, memory-mapped on load, under a key made of the input files' paths,
    sizes and modification times, the vocabulary and a format version: editing a split or changing the vocabulary
    settings rebuilds them. Every cache file is checked on load against a JSON file written beside it, and rebuilt
    from the source text, with a warning naming the file and what was wrong, when the check fails. A token cache
    must have the size its metadata gives, match the sha256 of a sample of its 4 KiB pages (256 spread evenly,
    first and last included, plus the file size: every page of a file up to 1 MiB, a 1 MiB read for any larger
    one), and hold only ids inside the vocabulary (one min/max pass over the memory-mapped array).

    The sample catches a truncated, zero-filled or overwritten file; it misses damage confined to pages it does not
    read that keeps every id inside the vocabulary (a few pages zeroed in the middle of a large split, a flipped
    bit), which then trains silently. The full sha256 of the file is stored too (``sha256`` in its JSON, what
    ``sha256sum`` prints) to check a suspect cache by hand; deleting the cache folder always rebuilds everything.
    """
    key = file_key(path, vocab=vocab.fingerprint)
    data, meta = cache_dir / f"{path.stem}-{key}.int32", cache_dir / f"{path.stem}-{key}.json"
    if data.exists() or meta.exists():
        try:
            return _read_stream_cache(data, meta, len(vocab))
        except CorpusError as error:
            warnings.warn(
                f"Token cache {data} of {path.name}: {error} Rebuilding it from {path}.", stacklevel=2
            )
    ids = _encode(path, vocab)
    raw = ids.tobytes()
    meta.unlink(missing_ok=True)
    _atomic_write(data, raw)
    info = {
        "tokens": len(ids),
        "sampled_sha256": sampled_digest(data),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "source": str(path),
        "vocab": vocab.fingerprint,
    }
    _atomic_write(meta, json.dumps(info).encode())
    return torch.frombuffer(ids, dtype=torch.int32)


def _read_vocab_cache(path: Path, meta: Path) -> Vocab:
    (digest,) = _read_metadata(meta, "sha256")
    try:
        content = path.read_bytes()
    except OSError as error:
        raise CorpusError(f"it is unreadable ({error!r}).") from None
    if hashlib.sha256(content).hexdigest() != digest:
        raise CorpusError(f"its content does not match the sha256 in {meta.name} (damaged or edited).")
    return Vocab.load(path)


def load_vocab(train: Path, cache_dir: Path, min_freq: int = 1, max_size: int | None = None) -> Vocab:
    """The vocabulary of the training split ``train`` (see ``Vocab.build``), from the cache when its checksum holds,
    else built and cached (with a warning when a cache entry was there but failed).

    The vocabulary is cached as ``Vocab.save`` writes it; the cache (a few MB at most) must match the sha256 of its
    whole content, else it is rebuilt with a warning.
    """
    key = file_key(train, min_freq=min_freq, max_size=max_size)
    path, meta = cache_dir / f"vocab-{key}.txt", cache_dir / f"vocab-{key}.json"
    if path.exists() or meta.exists():
        try:
            return _read_vocab_cache(path, meta)
        except CorpusError as error:
            warnings.warn(f"Vocabulary cache {path}: {error} Rebuilding it from {train}.", stacklevel=2)
    vocab = Vocab.build(count_words(train), min_freq, max_size)
    meta.unlink(missing_ok=True)
    vocab.save(path)
    info = {
        "words": len(vocab),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "source": str(train),
    }
    _atomic_write(meta, json.dumps(info).encode())
    return vocab


_held: dict[str, int] = {}  # locks this process holds, with their nesting depth


@contextmanager
def file_lock(path: Path):
    """An exclusive lock on ``path`` across processes (DDP ranks preparing the same corpus), POSIX ``flock``,
    re-entrant within a process; where ``flock`` is missing (Windows) no lock is taken and the atomic writes alone
    keep files whole."""
    key = str(path.resolve())
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _held[key] = 1
        try:
            yield
        finally:
            _held[key] = 0
            fcntl.flock(handle, fcntl.LOCK_UN)
