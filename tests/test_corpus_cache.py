"""Cache verification: damaged token and vocabulary caches are rebuilt, never trained on; a missing corpus path."""

import json
import random
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from datamodules import CorpusError, Vocab, WordLMDataModule
from datamodules import corpus as corpus_module
from datamodules.corpus import PAGE_BYTES, SAMPLED_PAGES, count_words, encode_file, sampled_digest
from rrn_lightning.cli import cli_main

TINY = Path(__file__).parent / "data" / "gettysburg"
PTB_SMALL = Path(__file__).parents[1] / "experiments" / "language_modelling" / "ptb_lstm_small.yaml"


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    shutil.copytree(TINY, folder)
    return folder


def module(corpus: Path) -> WordLMDataModule:
    return WordLMDataModule(corpus=str(corpus), cache_dir=str(corpus.parent / "cache"))


def fresh_vocab(corpus: Path) -> Vocab:
    return Vocab.build(count_words(corpus / "train.txt"))


def junk(size: int) -> bytes:
    return random.Random(0).randbytes(size)


def cache_file(corpus: Path, pattern: str) -> Path:
    (path,) = (corpus.parent / "cache").glob(pattern)
    return path


def assert_read_again_silently(corpus: Path, monkeypatch, split: str) -> None:
    """The rebuilt cache passes its own checks: read again with no warning, no counting and no encoding."""
    monkeypatch.setattr(corpus_module, "_encode", lambda *a: pytest.fail("re-encoded a rebuilt cache"))
    monkeypatch.setattr(
        corpus_module, "count_words", lambda *a: pytest.fail("recounted a rebuilt vocabulary")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm = module(corpus)
        stream = dm.stream(split)
    monkeypatch.undo()
    assert dm.vocab == fresh_vocab(corpus)
    assert torch.equal(stream, encode_file(corpus / f"{split}.txt", fresh_vocab(corpus)))


# --------------------------------------------------------------------- token cache
@pytest.mark.parametrize("damage", ["zeros", "junk"])
@pytest.mark.parametrize("split", ["train", "valid"])
def test_damaged_token_cache_of_the_same_size_is_rebuilt_with_a_warning(corpus, monkeypatch, damage, split):
    module(corpus).stream(split)
    data = cache_file(corpus, f"{split}-*.int32")
    size = data.stat().st_size
    data.write_bytes(bytes(size) if damage == "zeros" else junk(size))
    dm = module(corpus)
    with pytest.warns(
        UserWarning, match=rf"Token cache {re.escape(str(data))} .*does not match the checksum"
    ):
        stream = dm.stream(split)
    assert torch.equal(stream, encode_file(corpus / f"{split}.txt", fresh_vocab(corpus)))
    assert_read_again_silently(corpus, monkeypatch, split)


@pytest.mark.parametrize("bad", ["vocab_size", "negative"])
def test_out_of_vocabulary_ids_the_sample_misses_are_caught_and_rebuilt(corpus, monkeypatch, bad):
    """Damage the sampled checksum cannot see (here: the checksum rewritten to match) still never reaches the
    embedding when it puts an id outside the vocabulary."""
    vocab_size = len(module(corpus).vocab)
    module(corpus).stream("train")
    data, meta = cache_file(corpus, "train-*.int32"), cache_file(corpus, "train-*.json")
    ids = torch.from_file(str(data), size=data.stat().st_size // 4, dtype=torch.int32).clone()
    bad_id = vocab_size if bad == "vocab_size" else -1
    ids[len(ids) // 2] = bad_id
    data.write_bytes(ids.numpy().tobytes())
    info = json.loads(meta.read_text())
    meta.write_text(json.dumps({**info, "sampled_sha256": sampled_digest(data)}))
    with pytest.warns(
        UserWarning,
        match=rf"Token cache {re.escape(str(data))} of train.txt: it holds token id {bad_id}, outside the "
        rf"vocabulary of {vocab_size} words\. Rebuilding it from {re.escape(str(corpus / 'train.txt'))}\.",
    ):
        stream = module(corpus).stream("train")
    assert torch.equal(stream, encode_file(corpus / "train.txt", fresh_vocab(corpus)))
    assert_read_again_silently(corpus, monkeypatch, "train")


@pytest.mark.parametrize("damage", ["no metadata", "junk metadata", "longer"])
def test_token_cache_with_bad_metadata_or_size_is_rebuilt(corpus, monkeypatch, damage):
    module(corpus).stream("test")
    data, meta = cache_file(corpus, "test-*.int32"), cache_file(corpus, "test-*.json")
    if damage == "no metadata":
        meta.unlink()
    elif damage == "junk metadata":
        meta.write_bytes(junk(100))
    else:
        data.write_bytes(data.read_bytes() + bytes(4))
    count = len(encode_file(corpus / "test.txt", fresh_vocab(corpus)))
    problem = {
        "longer": f"it holds {4 * count + 4} bytes where its metadata {meta.name} says {count} int32 tokens",
        "no metadata": f"its metadata {meta.name} is missing or unreadable",
        "junk metadata": f"its metadata {meta.name} is missing or unreadable",
    }[damage]
    with pytest.warns(
        UserWarning, match=rf"Token cache {re.escape(str(data))} of test.txt: {re.escape(problem)}"
    ):
        stream = module(corpus).stream("test")
    assert torch.equal(stream, encode_file(corpus / "test.txt", fresh_vocab(corpus)))
    assert_read_again_silently(corpus, monkeypatch, "test")


def test_sampled_digest_reads_every_page_up_to_1_mib_and_a_sample_beyond(tmp_path):
    """What the sampled check sees: any page of a file of at most SAMPLED_PAGES pages, and only SAMPLED_PAGES of
    a longer one (first and last always); damage confined to the other pages goes unnoticed."""

    def pages_seen(pages: int) -> list[int]:
        path = tmp_path / f"{pages}.bin"
        content = bytearray(junk(pages * PAGE_BYTES - 7))  # a partial last page
        path.write_bytes(content)
        before, seen = sampled_digest(path), []
        for page in range(pages):
            changed = bytearray(content)
            changed[page * PAGE_BYTES] ^= 1
            path.write_bytes(changed)
            if sampled_digest(path) != before:
                seen.append(page)
        return seen

    assert pages_seen(SAMPLED_PAGES) == list(range(SAMPLED_PAGES))
    seen = pages_seen(SAMPLED_PAGES + 44)
    assert len(seen) == SAMPLED_PAGES and seen[0] == 0 and seen[-1] == SAMPLED_PAGES + 43


# --------------------------------------------------------------------- vocabulary cache
@pytest.mark.parametrize("damage", ["cut by 50 lines", "binary"])
def test_damaged_vocabulary_cache_is_rebuilt_with_a_warning(corpus, monkeypatch, damage):
    dm = module(corpus)
    assert len(dm.vocab) > 60
    dm.stream("valid")
    path = cache_file(corpus, "vocab-*.txt")
    if damage == "binary":
        path.write_bytes(b"\xff\xfe" + junk(2000))
    else:
        path.write_text("\n".join(path.read_text().split("\n")[:-51]) + "\n")
    with pytest.warns(
        UserWarning, match=rf"Vocabulary cache {re.escape(str(path))}: .*does not match the sha256"
    ):
        vocab = module(corpus).vocab
    assert vocab == fresh_vocab(corpus)
    assert_read_again_silently(corpus, monkeypatch, "valid")


def test_vocab_load_of_a_binary_file_is_a_corpus_error(tmp_path):
    (tmp_path / "vocab.txt").write_bytes(b"<unk>\n<eos>\n\xff\xfe\n")
    with pytest.raises(CorpusError, match=r"vocab.txt: not valid UTF-8 \(byte 0xff at offset 12\)"):
        Vocab.load(tmp_path / "vocab.txt")


# --------------------------------------------------------------------- through the CLI
def test_a_fit_after_damaging_every_cache_gives_the_loss_of_a_fit_before(corpus, tmp_path):
    common = [
        "fit",
        f"--config={PTB_SMALL}",
        f"--data.init_args.corpus={corpus}",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}",
        "--data.init_args.batch_size=2",
        "--data.init_args.eval_batch_size=2",
        "--model.init_args.core.init_args.hidden_size=16",
        "--model.init_args.core.init_args.input_size=16",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.enable_progress_bar=false",
    ]
    before = cli_main([*common, "--run_name=before"]).trainer.callback_metrics["val/loss"].item()
    damaged = sorted((tmp_path / "cache").glob("*.int32"))
    assert len(damaged) == 3
    for data in damaged:
        data.write_bytes(bytes(data.stat().st_size))
    damaged.append(cache_file(corpus, "vocab-*.txt"))
    damaged[-1].write_text("\n".join(damaged[-1].read_text().split("\n")[:-51]) + "\n")
    with pytest.warns(UserWarning, match="Rebuilding it") as caught:
        after = cli_main([*common, "--run_name=after"]).trainer.callback_metrics["val/loss"].item()
    messages = "\n".join(str(w.message) for w in caught)
    assert all(f"cache {path}" in messages for path in damaged), messages
    assert after == pytest.approx(before, rel=1e-6)


# --------------------------------------------------------------------- a corpus path that is not there
@pytest.mark.parametrize(
    "access,cache_dir",
    [(access, cache_dir) for access in ("vocab", "stream", "prepare_data") for cache_dir in (None, "cache")]
    + [("cache_dir", None)],
)
def test_a_corpus_path_that_does_not_exist_is_refused_and_nothing_is_made(tmp_path, access, cache_dir):
    missing = tmp_path / "no" / "such" / "corpus"
    dm = WordLMDataModule(corpus=str(missing), cache_dir=cache_dir and str(tmp_path / cache_dir))
    calls = {
        "vocab": lambda: dm.vocab,
        "stream": lambda: dm.stream("train"),
        "prepare_data": dm.prepare_data,
        "cache_dir": lambda: dm.cache_dir / ".lock",
    }
    message = (
        rf"corpus='{missing}' is neither a named corpus nor a folder: {missing} does not exist\. corpus takes "
        r"ptb, wikitext-2 or wikitext-103 \(fetched into data_dir when missing\), or an existing folder"
    )
    with pytest.raises(CorpusError, match=message):
        calls[access]()
    assert list(tmp_path.rglob("*")) == []


def test_a_corpus_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "train.txt").write_text("a file, not a folder\n")
    with pytest.raises(CorpusError, match=rf"{tmp_path / 'train.txt'} is not a folder\. corpus takes"):
        WordLMDataModule(corpus=str(tmp_path / "train.txt")).stream("train")
    assert [p.name for p in tmp_path.iterdir()] == ["train.txt"]
