"""Bad checkpoint files give one clear line (check_checkpoint, rrn generate), and a checkpoint's hyperparameters
cannot make us import code outside the allowlist (resolve_factory, load_from_checkpoint)."""

import os
import re
import shutil
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rrn_lightning import LanguageModel, LSTMCore, RelationalMemory, SequenceClassifier
from rrn_lightning.checkpoints import check_checkpoint
from rrn_lightning.cli import cli_main
from rrn_lightning.common import ConfigurationError
from rrn_lightning.generate import main as generate_main
from rrn_lightning.tasks.base import resolve_factory

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
TINY = Path(__file__).parent / "data" / "gettysburg"
ONE_STEP = [
    "--trainer.max_steps=1",
    "--trainer.limit_val_batches=1",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> SimpleNamespace:
    """One-step CLI fits: a tiny LanguageModel (LSTM 8 x 2, 140 words) and a tiny SequenceClassifier."""
    root = tmp_path_factory.mktemp("runs")
    shutil.copytree(TINY, root / "corpus")
    lm = cli_main(
        [
            "fit",
            f"--config={EXPERIMENTS / 'language_modelling' / 'ptb_lstm_small.yaml'}",
            f"--data.init_args.corpus={root / 'corpus'}",
            f"--data.init_args.cache_dir={root / 'cache'}",
            "--data.init_args.batch_size=2",
            "--data.init_args.eval_batch_size=2",
            "--model.init_args.core.init_args.input_size=8",
            "--model.init_args.core.init_args.hidden_size=8",
            f"--trainer.default_root_dir={root / 'lm'}",
            *ONE_STEP,
        ]
    )
    classifier = cli_main(
        [
            "fit",
            f"--config={EXPERIMENTS / 'nth_farthest' / 'lstm_cpu.yaml'}",
            "--data.init_args.batch_size=8",
            "--data.init_args.val_size=8",
            "--model.init_args.head_sizes=[8]",
            "--model.init_args.core.init_args.hidden_size=8",
            f"--trainer.default_root_dir={root / 'classifier'}",
            *ONE_STEP,
        ]
    )
    return SimpleNamespace(
        lm=Path(lm.trainer.checkpoint_callback.last_model_path),
        lm_model=lm.model,
        classifier=Path(classifier.trainer.checkpoint_callback.last_model_path),
    )


def resave(source: Path, target: Path, edit) -> Path:
    """A copy of a checkpoint with ``edit(checkpoint)`` applied."""
    checkpoint = torch.load(source, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, target)
    return target


# --------------------------------------------------------------------- files that are not checkpoints
def truncated(path: Path, runs) -> None:
    data = runs.lm.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def damaged(path: Path, runs) -> None:
    with zipfile.ZipFile(runs.lm) as source, zipfile.ZipFile(path, "w") as archive:
        for name in source.namelist():
            archive.writestr(name, b"junk" if name.endswith("/data.pkl") else source.read(name))


def plain_zip(path: Path, runs) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")


BAD_FILES = {  # name: (make the file at path, what the message says)
    "missing": (lambda path, runs: None, r"no such file; check the path"),
    "directory": (lambda path, runs: path.mkdir(), r"is a directory; give a \.ckpt file"),
    "empty": (lambda path, runs: path.touch(), r"is empty \(0 bytes\)"),
    "truncated": (truncated, r"is truncated or damaged \(its zip directory is missing\)"),
    "random bytes": (
        lambda path, runs: path.write_bytes(os.urandom(4096)),
        "is not a checkpoint: it is neither a zip archive nor text",
    ),
    "text": (lambda path, runs: path.write_text("epoch: 3\n"), "is not a checkpoint: it is a text file"),
    "damaged": (damaged, r"is damaged: PyTorch cannot read its contents"),
    "zip": (plain_zip, r"is a zip archive but not a PyTorch checkpoint"),
    "state_dict": (
        lambda path, runs: torch.save({"w": torch.zeros(2)}, path),
        r"not a Lightning checkpoint: it holds a bare state_dict",
    ),
    "list": (
        lambda path, runs: torch.save([1, 2], path),
        r"not a Lightning checkpoint: it holds a list without",
    ),
    "python objects": (
        lambda path, runs: torch.save({"run": os.system}, path),
        r"is not a checkpoint that loads safely: it holds Python objects \((posix|nt)\.system\)",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_give_one_line_naming_the_file(case, runs, tmp_path):
    make, message = BAD_FILES[case]
    path = tmp_path / "model.ckpt"
    make(path, runs)
    with pytest.raises(ConfigurationError, match=message) as raised:
        check_checkpoint(path)
    text = str(raised.value)
    assert text.startswith(f"--ckpt_path {path}") and "\n" not in text
    assert "weights_only" not in text


def test_a_device_is_not_a_checkpoint():
    with pytest.raises(ConfigurationError, match=r"^--ckpt_path /dev/null is not a regular file"):
        check_checkpoint("/dev/null")


def test_a_directory_points_at_the_checkpoints_inside(runs):
    with pytest.raises(ConfigurationError, match=r"e\.g\. .*last\.ckpt"):
        check_checkpoint(runs.lm.parent.parent)


# --------------------------------------------------------------------- checkpoints of another model
def test_a_good_checkpoint_is_returned(runs):
    checkpoint = check_checkpoint(runs.lm, runs.lm_model)
    assert checkpoint["hyper_parameters"]["_class_path"] == "rrn_lightning.LanguageModel"
    assert checkpoint["state_dict"]["embedding.weight"].shape == (140, 8)


def test_another_kind_of_module_is_named(runs, tmp_path):
    with pytest.raises(ConfigurationError, match=r"holds a SequenceClassifier, not a language model"):
        check_checkpoint(runs.classifier, LanguageModel)
    with pytest.raises(ConfigurationError, match=r"holds a LanguageModel, not a sequence classifier"):
        check_checkpoint(runs.lm, SequenceClassifier(LSTMCore(input_size=16, hidden_size=8), 4))
    # Without the CLI's record of the class, the parameter names tell.
    bare = resave(runs.lm, tmp_path / "bare.ckpt", lambda c: c["hyper_parameters"].pop("_class_path"))
    with pytest.raises(ConfigurationError, match=r"holds a LanguageModel, not a sequence classifier"):
        check_checkpoint(bare, SequenceClassifier)


def test_the_configs_class_path_is_checked_without_importing(runs):
    with pytest.raises(ConfigurationError, match=r"holds a SequenceClassifier, not a language model"):
        check_checkpoint(runs.classifier, "rrn_lightning.LanguageModel")
    assert check_checkpoint(runs.classifier, "rrn_lightning.SequenceClassifier")["state_dict"]


def language_model(vocab_size=140, core=None) -> LanguageModel:
    return LanguageModel(core or LSTMCore(input_size=8, hidden_size=8, num_layers=2), vocab_size)


@pytest.mark.parametrize(
    "model, message",
    [
        (
            lambda: language_model(vocab_size=95),
            r"embedding\.weight has shape \[140, 8\] in the checkpoint but \[95, 8\] here; the vocabulary size",
        ),
        (
            lambda: language_model(core=LSTMCore(input_size=8, hidden_size=16, num_layers=2)),
            r"core\.lstm\.weight_ih_l0 has shape \[32, 8\] in the checkpoint but \[64, 8\] here; the core's",
        ),
        (
            lambda: language_model(core=RelationalMemory(8, mem_slots=1, head_size=8)),
            r"it lacks core\.\S+; the core's class or size",
        ),
        (
            lambda: language_model(core=LSTMCore(input_size=8, hidden_size=8, num_layers=1)),
            r"it has core\.lstm\.weight_ih_l1, which this model lacks; the core's class or size",
        ),
    ],
    ids=["vocabulary", "core size", "core class", "core layers"],
)
def test_a_mismatching_model_names_the_parameter_and_setting(model, message, runs):
    with pytest.raises(ConfigurationError, match=message):
        check_checkpoint(runs.lm, model())


# --------------------------------------------------------------------- rrn generate
GENERATE_CASES = {
    "missing": (lambda tmp, runs: tmp / "missing.ckpt", "no such file"),
    "/dev/null": (lambda tmp, runs: Path("/dev/null"), "is not a regular file"),
    "random bytes": (
        lambda tmp, runs: _written(tmp / "random.ckpt", os.urandom(4096)),
        "is not a checkpoint",
    ),
    "truncated": (
        lambda tmp, runs: _written(tmp / "cut.ckpt", runs.lm.read_bytes()[:5000]),
        "is truncated or damaged",
    ),
    "classifier": (lambda tmp, runs: runs.classifier, "holds a SequenceClassifier, not a language model"),
}


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", GENERATE_CASES)
def test_generate_prints_one_error_line(case, runs, tmp_path, capsys):
    make, message = GENERATE_CASES[case]
    path = make(tmp_path, runs)
    assert generate_main(["--checkpoint", str(path), "--length", "3"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"rrn generate: error: --checkpoint {path}")
    assert message in err and err.count("rrn generate") == 1


def test_generate_still_samples_from_a_good_checkpoint(runs, capsys):
    assert generate_main(["--checkpoint", str(runs.lm), "--prompt", "four score", "--length", "3"]) == 0
    assert capsys.readouterr().out.startswith("four score")


# --------------------------------------------------------------------- what hyperparameters may import
@pytest.mark.parametrize(
    "path, message",
    [
        ("os.system", r"'os\.system' is not imported: only classes under rrn_lightning or torch\.optim"),
        (
            "torch.optim.lr_scheduler.math",
            r"'torch\.optim\.lr_scheduler\.math' is not a subclass of Optimizer or",
        ),
        ("torch.optim.NoSuchOptimizer", r"'torch\.optim\.NoSuchOptimizer' does not exist"),
    ],
)
def test_resolve_factory_imports_only_torch_optimizers_and_schedulers(path, message):
    with pytest.raises(ConfigurationError, match=rf"^SequenceClassifier: optimizer: {message}"):
        resolve_factory(path, "SequenceClassifier: optimizer")
    assert resolve_factory("torch.optim.adam.Adam", "optimizer") is torch.optim.Adam
    assert resolve_factory("torch.optim.lr_scheduler.MultiStepLR", "lr_scheduler").__name__ == "MultiStepLR"


@pytest.fixture
def probe(tmp_path, monkeypatch) -> Path:
    """A module ``evil_probe`` on sys.path that leaves a file behind when it is imported."""
    flag = tmp_path / "imported"
    (tmp_path / "evil_probe.py").write_text(f"open({str(flag)!r}, 'w').close()\nclass Evil:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return flag


def set_nested(keys: str, value):
    def edit(checkpoint):
        target = checkpoint["hyper_parameters"]
        *parents, last = keys.split(".")
        for key in parents:
            target = target[key]
        target[last] = value

    return edit


@pytest.mark.parametrize(
    "keys, value, fix",
    [
        ("optimizer.class_path", "os.system", "optimizer=<the object>"),
        ("core.class_path", "evil_probe.Evil", "core=<the object>"),
        (  # a string for a callable argument: jsonargparse would import it
            "lr_scheduler",
            {
                "class_path": "torch.optim.lr_scheduler.LambdaLR",
                "init_args": {"lr_lambda": "evil_probe.Evil"},
            },
            "lr_scheduler=<the object>",
        ),
        ("_class_path", "evil_probe.Evil", "_instantiator=None, _class_path=None"),
        ("_instantiator", "evil_probe.Evil", "_instantiator=None, _class_path=None"),
    ],
)
def test_load_refuses_class_paths_outside_the_allowlist_before_importing(
    keys, value, fix, runs, tmp_path, probe
):
    bad = resave(runs.classifier, tmp_path / "bad.ckpt", set_nested(keys, value))
    with pytest.raises(
        ConfigurationError, match=r"hyperparameter \S*?[:=] ?'(evil_probe\.Evil|os\.system)'"
    ) as raised:
        SequenceClassifier.load_from_checkpoint(bad)
    assert f"If you trust the file, load it in Python with load_from_checkpoint(path, {fix}" in str(
        raised.value
    )
    assert not probe.exists() and "evil_probe" not in sys.modules


def test_a_trusted_file_loads_with_the_objects_passed_in(runs, tmp_path):
    core = LSTMCore(input_size=16, hidden_size=8, input_rows=4)  # lstm_cpu.yaml's: each step reads the set
    bad_core = resave(
        runs.classifier, tmp_path / "core.ckpt", set_nested("core.class_path", "evil_probe.Evil")
    )
    assert isinstance(SequenceClassifier.load_from_checkpoint(bad_core, core=core).core, LSTMCore)
    bad = resave(runs.classifier, tmp_path / "inst.ckpt", set_nested("_instantiator", "evil_probe.Evil"))
    loaded = SequenceClassifier.load_from_checkpoint(
        bad, _instantiator=None, _class_path=None, core=core, optimizer=torch.optim.Adam
    )
    assert loaded.optimizer_factory is torch.optim.Adam


def test_a_python_built_checkpoint_is_checked_too(tmp_path, probe):
    model = SequenceClassifier(LSTMCore(input_size=4, hidden_size=8), 3, head_sizes=(8,))
    assert model.hparams["optimizer"] == "torch.optim.adam.Adam"
    saved = {"state_dict": model.state_dict(), "pytorch-lightning_version": "2.6.0"}
    torch.save({**saved, "hyper_parameters": dict(model.hparams)}, tmp_path / "good.ckpt")
    loaded = SequenceClassifier.load_from_checkpoint(tmp_path / "good.ckpt", core=LSTMCore(4, 8))
    assert loaded.configure_optimizers().__class__ is torch.optim.Adam
    evil = {**saved, "hyper_parameters": {**model.hparams, "optimizer": "evil_probe.Evil"}}
    torch.save(evil, tmp_path / "evil.ckpt")
    with pytest.raises(
        ConfigurationError, match=r"hyperparameter optimizer: 'evil_probe\.Evil' is not imported"
    ):
        SequenceClassifier.load_from_checkpoint(tmp_path / "evil.ckpt", core=LSTMCore(4, 8))
    assert not probe.exists()


class EmbeddingClassifier(SequenceClassifier):
    """A subclass with a token embedding and its head renamed: it declares its modules, and the checkpoint checks
    read them from the class (issue 21: the names were hard-coded, so an `embedding` meant a language model)."""

    checkpoint_modules = frozenset({"core", "embedding", "classifier"})
    checkpoint_settings = {**SequenceClassifier.checkpoint_settings, "classifier": "num_classes or its size"}

    def __init__(self, core, num_classes: int, vocab_size: int = 10) -> None:
        super().__init__(core, num_classes, head_sizes=(8,))
        self.embedding = torch.nn.Embedding(vocab_size, core.input_size)
        self.classifier = self.head
        del self.head


def test_a_task_subclass_with_its_own_modules_loads_its_checkpoints(tmp_path):
    model = EmbeddingClassifier(LSTMCore(input_size=4, hidden_size=8), 3)
    saved = {"state_dict": model.state_dict(), "pytorch-lightning_version": "2.6.0"}
    torch.save({**saved, "hyper_parameters": dict(model.hparams)}, tmp_path / "own.ckpt")
    assert check_checkpoint(tmp_path / "own.ckpt", model)["state_dict"].keys() == model.state_dict().keys()
    # Not taken for a language model by its embedding, and a bad size names the subclass's own setting.
    with pytest.raises(ConfigurationError, match=r"holds a SequenceClassifier, not a language model"):
        check_checkpoint(tmp_path / "own.ckpt", LanguageModel)
    with pytest.raises(
        ConfigurationError, match=r"classifier\.2\.weight .*; num_classes or its size probably"
    ):
        check_checkpoint(tmp_path / "own.ckpt", EmbeddingClassifier(LSTMCore(input_size=4, hidden_size=8), 5))


def test_an_open_file_is_checked_and_still_loads(runs, tmp_path, probe):
    with runs.classifier.open("rb") as file:
        assert isinstance(SequenceClassifier.load_from_checkpoint(file), SequenceClassifier)
    bad = resave(
        runs.classifier, tmp_path / "bad.ckpt", set_nested("optimizer.class_path", "evil_probe.Evil")
    )
    with bad.open("rb") as file, pytest.raises(ConfigurationError, match=r"optimizer\.class_path"):
        SequenceClassifier.load_from_checkpoint(file)
    assert not probe.exists()


def test_the_cli_refuses_hyperparameters_outside_the_allowlist(runs, tmp_path, probe):
    # Lightning's CLI parses a --ckpt_path's hyperparameters into the config: jsonargparse would import them.
    bad = resave(runs.classifier, tmp_path / "bad.ckpt", set_nested("core.class_path", "evil_probe.Evil"))
    message = rf"^--ckpt_path {bad}: hyperparameter core\.class_path: 'evil_probe\.Evil' is not imported"
    with pytest.raises(ConfigurationError, match=message):
        check_checkpoint(bad, "rrn_lightning.SequenceClassifier")
    assert not probe.exists()


# --------------------------------------------------------------------- through the rrn CLI
CLASSIFIER_ARGS = [
    f"--config={EXPERIMENTS / 'nth_farthest' / 'lstm_cpu.yaml'}",
    "--data.init_args.batch_size=8",
    "--data.init_args.val_size=8",
    "--data.init_args.test_size=8",
    "--model.init_args.head_sizes=[8]",
    "--model.init_args.core.init_args.hidden_size=8",
    *ONE_STEP,
]


def rrn_error(args: list[str], capsys) -> str:
    """Run the CLI in-process, expect exit status 2 and return its one error line."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "weights_only" not in err
    lines = [line for line in err.splitlines() if line.startswith("rrn: error:")]
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
@pytest.mark.parametrize("case", ["missing", "truncated", "random bytes", "empty"])
def test_every_subcommand_names_a_bad_checkpoint_in_one_line(subcommand, case, runs, tmp_path, capsys):
    path = tmp_path / "model.ckpt"
    BAD_FILES[case][0](path, runs)
    line = rrn_error([subcommand, *CLASSIFIER_ARGS, f"--ckpt_path={path}"], capsys)
    assert line.startswith(f"rrn: error: --ckpt_path {path}")
    assert re.search(BAD_FILES[case][1], line)


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_a_checkpoint_of_another_kind_or_vocabulary_is_refused_by_the_cli(subcommand, runs, tmp_path, capsys):
    def lm_args(corpus: Path) -> list[str]:
        return [
            f"--config={EXPERIMENTS / 'language_modelling' / 'ptb_lstm_small.yaml'}",
            f"--data.init_args.corpus={corpus}",
            "--data.init_args.batch_size=2",
            "--data.init_args.eval_batch_size=2",
            "--model.init_args.core.init_args.input_size=8",  # the runs.lm fixture's core
            "--model.init_args.core.init_args.hidden_size=8",
            *ONE_STEP,
        ]

    same = tmp_path / "same"
    shutil.copytree(TINY, same)
    line = rrn_error([subcommand, *lm_args(same), f"--ckpt_path={runs.classifier}"], capsys)
    assert "holds a SequenceClassifier, not a language model" in line
    # The model's sizes come from the checkpoint (Lightning reads its hyperparameters), the vocabulary from the
    # data: a smaller corpus gives another vocabulary size.
    smaller = tmp_path / "smaller"
    shutil.copytree(TINY, smaller)
    (smaller / "train.txt").write_text("four score and seven years ago\n")
    line = rrn_error([subcommand, *lm_args(smaller), f"--ckpt_path={runs.lm}"], capsys)
    assert f"--ckpt_path {runs.lm}" in line and "vocabulary" in line


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_a_checkpoint_of_another_architecture_than_the_config_is_refused(subcommand, runs, capsys):
    """The config's model is not silently replaced by the checkpoint's: another core class, or another value of any
    argument but the optimizer, the scheduler and compile_step, ends the command with one line naming the keys."""
    rmc = [*CLASSIFIER_ARGS, f"--config={EXPERIMENTS / 'nth_farthest' / 'rmc_cpu.yaml'}"]
    rmc.remove("--model.init_args.core.init_args.hidden_size=8")
    line = rrn_error([subcommand, *rmc, f"--ckpt_path={runs.classifier}"], capsys)
    assert line.startswith(
        f"rrn: error: --ckpt_path {runs.classifier} holds another model than the config builds"
    )
    assert (
        "model.init_args.core.class_path: 'rrn_lightning.RelationalMemory' here, 'rrn_lightning.LSTMCore'"
        in line
    )
    assert line.endswith(
        "Use the config the checkpoint was trained with, or leave out --ckpt_path to start anew."
    )
    wider = [
        *CLASSIFIER_ARGS,
        "--model.init_args.core.init_args.hidden_size=9",
        "--model.init_args.head_sizes=[8,8]",
    ]
    line = rrn_error([subcommand, *wider, f"--ckpt_path={runs.classifier}"], capsys)
    assert "model.init_args.core.init_args.hidden_size: 9 here, 8 in the checkpoint" in line
    assert "model.init_args.head_sizes: [8, 8] here, [8] in the checkpoint" in line


def test_a_checkpoint_takes_another_optimizer_and_compile_setting(runs, tmp_path):
    cli = cli_main(
        [
            "test",
            *CLASSIFIER_ARGS,
            f"--trainer.default_root_dir={tmp_path}",
            "--model.init_args.optimizer.init_args.lr=0.5",
            "--model.init_args.compile_step=false",
            f"--ckpt_path={runs.classifier}",
        ]
    )
    assert 0 <= cli.trainer.callback_metrics["test/acc"] <= 1


def test_a_corpus_path_that_does_not_exist_is_named_and_nothing_is_created(tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "corpus"
    line = rrn_error(
        [
            "fit",
            f"--config={EXPERIMENTS / 'language_modelling' / 'ptb_lstm_small.yaml'}",
            f"--data.init_args.corpus={missing}",
            *ONE_STEP,
        ],
        capsys,
    )
    assert str(missing) in line and "does not exist" in line
    assert not (tmp_path / "no").exists()


# --------------------------------------------------------------------- checkpoints written before the layout moved
def test_a_checkpoint_naming_the_old_module_paths_loads_in_python_and_through_the_cli(runs, tmp_path, capsys):
    def old_paths(checkpoint):
        hparams = checkpoint["hyper_parameters"]
        hparams["_class_path"] = "rrn_lightning.classifier.SequenceClassifier"
        hparams["core"]["class_path"] = "rrn_lightning.lstm.LSTMCore"

    old = resave(runs.classifier, tmp_path / "old.ckpt", old_paths)
    saved = torch.load(old, weights_only=True)["hyper_parameters"]
    assert saved["core"]["class_path"] == "rrn_lightning.lstm.LSTMCore"  # the edit is in the file
    model = SequenceClassifier.load_from_checkpoint(old)
    assert isinstance(model.core, LSTMCore)
    cli = cli_main(
        [
            "validate",
            f"--config={EXPERIMENTS / 'nth_farthest' / 'lstm_cpu.yaml'}",
            f"--ckpt_path={old}",
            "--data.init_args.batch_size=8",
            "--data.init_args.val_size=8",
            "--model.init_args.head_sizes=[8]",  # the fixture's architecture
            "--model.init_args.core.init_args.hidden_size=8",
            f"--trainer.default_root_dir={tmp_path}",
            *ONE_STEP[1:],
        ]
    )
    assert isinstance(cli.model, SequenceClassifier) and isinstance(cli.model.core, LSTMCore)
