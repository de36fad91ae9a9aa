"""The `rrn` CLI end to end: every shipped YAML builds, CPU configs fit, runs write TensorBoard events and
checkpoints that load on their own, and bad configs fail with a readable message."""

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torchmetrics import Metric

from datamodules import NthFarthestDataModule
from rrn_lightning import LSTMCore, RelationalMemory, SequenceClassifier
from rrn_lightning.cli import cli_main

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
# The classification configs; the language-modelling and sequence-to-sequence ones have their own tests
# (test_word_lm.py, test_seq2seq.py), with the overrides their data needs.
CONFIGS = sorted((EXPERIMENTS / "nth_farthest").glob("*.yaml"))
CPU_CONFIGS = [c for c in CONFIGS if c.stem.endswith("_cpu")]
# Paper-scale configs run one tiny step: same model and task, small batches.
SMALL_DATA = ["--data.init_args.batch_size=8", "--data.init_args.val_size=8", "--data.init_args.test_size=8"]


def test_every_config_is_found():
    names = {f"{c.parent.name}/{c.name}" for c in CONFIGS}
    assert {
        "nth_farthest/rmc.yaml",
        "nth_farthest/lstm.yaml",
        "nth_farthest/rmc_cpu.yaml",
        "nth_farthest/lstm_cpu.yaml",
    } <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.parent.name}/{c.stem}")
def test_config_parses_and_builds(config, tmp_path):
    cli = cli_main(["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert isinstance(cli.model, SequenceClassifier)
    assert isinstance(cli.model.core, RelationalMemory | LSTMCore)
    assert cli.model.core.input_size == cli.datamodule.input_size
    assert cli.model.head[-1].out_features == cli.datamodule.num_classes
    header = config.read_text().splitlines()[0]
    assert header.startswith("#"), "every config starts with a comment saying what it is"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.parent.name}/{c.stem}")
def test_config_fits_fast_dev_run(config, tmp_path):
    extra = [] if config in CPU_CONFIGS else SMALL_DATA
    cli = cli_main(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}",
            *extra,
        ]
    )
    assert cli.trainer.state.finished
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def test_fit_writes_tensorboard_and_a_checkpoint_that_loads_alone(tmp_path):
    config = EXPERIMENTS / "nth_farthest" / "rmc_cpu.yaml"
    cli = cli_main(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.max_steps=2",
            "--data.init_args.batches_per_epoch=2",
            "--trainer.limit_val_batches=1",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    run = tmp_path / "nth_farthest_rmc_cpu" / "version_0"
    assert list(run.glob("events.out.tfevents.*")), f"no TensorBoard events in {run}"
    checkpoints = sorted((run / "checkpoints").glob("*.ckpt"))
    assert [c.name for c in checkpoints] == ["epoch0-step2.ckpt", "last.ckpt"]

    loaded = SequenceClassifier.load_from_checkpoint(checkpoints[-1])
    assert isinstance(loaded.core, RelationalMemory)
    # The weights; the training metrics' sums differ, as Lightning resets them after the epoch-end checkpoint.
    metrics = {
        f"{n}.{k}" for n, m in cli.model.named_modules() if isinstance(m, Metric) for k in m.state_dict()
    }
    assert metrics == {
        "train_loss.mean_value",
        "train_loss.weight",
        "train_acc.tp",
        "train_acc.fp",
        "train_acc.tn",
        "train_acc.fn",
    }
    for (name, a), (_, b) in zip(cli.model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert name in metrics or torch.equal(a.cpu(), b.cpu()), name
    x = next(iter(cli.datamodule.val_dataloader())).inputs
    cli.model.eval()
    loaded.eval()
    torch.testing.assert_close(loaded(x), cli.model(x))


def test_fit_logs_the_learning_rate(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = EXPERIMENTS / "learn_to_execute" / "addition_rmc_cpu.yaml"  # Adam with a MultiStepLR schedule
    common = [
        "--trainer.max_steps=2",
        "--data.init_args.batches_per_epoch=2",
        "--data.init_args.val_size=8",
        "--trainer.log_every_n_steps=1",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]
    cli = cli_main(["fit", "--config", str(config), *common])
    monitors = [c for c in cli.trainer.callbacks if type(c).__name__ == "LearningRateMonitor"]
    assert len(monitors) == 1
    events = EventAccumulator(str(tmp_path / "learn_to_execute_addition_rmc_cpu" / "version_0"))
    events.Reload()
    assert [e.value for e in events.Scalars("lr-Adam")][0] == pytest.approx(3e-3)

    # One that the config names is kept, not doubled; without a logger there is nothing to log to.
    named = ["--trainer.callbacks+=LearningRateMonitor", "--trainer.callbacks.logging_interval=step"]
    cli = cli_main(["fit", "--config", str(config), *common, *named])
    monitors = [c for c in cli.trainer.callbacks if type(c).__name__ == "LearningRateMonitor"]
    assert [m.logging_interval for m in monitors] == ["step"]
    cli = cli_main(["fit", "--config", str(config), *common, "--trainer.logger=false"])
    assert not any(type(c).__name__ == "LearningRateMonitor" for c in cli.trainer.callbacks)


@pytest.mark.smoke
def test_test_subcommand_reads_a_checkpoint(tmp_path):
    config = EXPERIMENTS / "nth_farthest" / "lstm_cpu.yaml"
    common = [
        "--config",
        str(config),
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]
    cli_main(["fit", *common, "--trainer.max_steps=1", "--trainer.limit_val_batches=1"])
    checkpoint = tmp_path / "nth_farthest_lstm_cpu" / "version_0" / "checkpoints" / "last.ckpt"
    cli = cli_main(["test", *common, f"--ckpt_path={checkpoint}", "--trainer.limit_test_batches=1"])
    assert 0.0 <= float(cli.trainer.callback_metrics["test/acc"]) <= 1.0


def test_python_built_model_saves_no_module_in_hyperparameters():
    model = SequenceClassifier(LSTMCore(16, 8), num_classes=4)
    assert "core" not in model.hparams and model.hparams.num_classes == 4
    logits = model(
        NthFarthestDataModule(num_vectors=4, num_features=4, val_size=5).val_dataloader().dataset[:][0]
    )
    assert logits.shape == (5, 4)


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "relational recurrent networks" in out and "fit" in out and "experiments/" in out
    with pytest.raises(SystemExit):
        cli_main(["fit", "--help"])
    out = capsys.readouterr().out
    assert "--run_name" in out and "--checkpoint.monitor" in out and "--data" in out


def test_unknown_key_fails_readably(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (EXPERIMENTS / "nth_farthest" / "rmc_cpu.yaml").read_text().replace("mem_slots:", "mem_slotz:")
    )
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(bad), f"--trainer.default_root_dir={tmp_path}"])
    assert exit_info.value.code != 0
    assert "mem_slotz" in capsys.readouterr().err


@pytest.mark.smoke
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--model.init_args.core.init_args.memslots=4"],
            "rrn: error: --model.init_args.core.init_args.memslots: RelationalMemory has no argument 'memslots'; "
            "did you mean 'mem_slots'?",
        ),
        (
            ["--trainer.precision=bf17"],
            "rrn: error: --trainer.precision=bf17 is not a valid value; did you mean bf16?",
        ),
        (
            ["--trainer.max_epochs=abc"],
            "rrn: error: --trainer.max_epochs=abc is not a valid value: expected int or null",
        ),
        (
            ["--data.init_args.presentation=matrix"],
            "rrn: error: --data.init_args.presentation=matrix is not a valid value",
        ),
    ],
)
def test_parser_errors_are_at_most_three_lines(args, expected, tmp_path, capsys):
    """jsonargparse's reports (usage, then a tree of union subtypes: 80 lines and more) cut to the key, what is
    wrong, and the nearest valid argument or the valid values."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", f"--config={EXPERIMENTS / 'nth_farthest' / 'rmc_cpu.yaml'}", *args])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert 1 <= len(lines) <= 3 and lines[0] == expected, lines


def test_config_file_errors_name_the_file(tmp_path, capsys):
    def error_lines(*args: str) -> list[str]:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(list(args))
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert 1 <= len(lines) <= 3, lines
        return lines

    missing = tmp_path / "nosuch.yaml"
    assert error_lines("fit", f"--config={missing}") == [
        f"rrn: error: --config: File does not exist: '{missing}'"
    ]
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer:\n  max_epochs: [1\n")
    assert error_lines("fit", "--config", str(broken))[0].startswith(
        f"rrn: error: {broken}, line 2, column 15: YAML syntax: did not find expected ',' or ']'"
    )
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        (EXPERIMENTS / "nth_farthest" / "lstm_cpu.yaml").read_text().replace("hidden_size", "hiden_size")
    )
    assert error_lines("fit", f"--config={typo}")[0] == (
        "rrn: error: --model: LSTMCore has no argument 'hiden_size'; did you mean 'hidden_size'?"
    )
    assert error_lines("test") == [
        "rrn: error: the following arguments are required: test.data, test.model",
        "tip: rrn test --config experiments/<task>/<core>.yaml, or --ckpt_path FILE of a run",
    ]


def test_bad_value_fails_readably(tmp_path, capsys):
    config = EXPERIMENTS / "nth_farthest" / "rmc_cpu.yaml"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            [
                "fit",
                "--config",
                str(config),
                "--model.init_args.core.init_args.mem_slots=0",
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "mem_slots must be a positive integer, got mem_slots=0" in err
    assert "Traceback" not in err


def test_ddp_on_two_cpu_processes(tmp_path):
    """The same config under DDP (two CPU processes, as on a two-GPU node): trains, validates, checkpoints."""
    config = EXPERIMENTS / "nth_farthest" / "rmc_cpu.yaml"
    command = [
        sys.executable,
        "-m",
        "rrn_lightning.cli",
        "fit",
        "--config",
        str(config),
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_steps=2",
        "--data.init_args.batches_per_epoch=2",
        "--trainer.limit_val_batches=2",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = tmp_path / "nth_farthest_rmc_cpu" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=False)["global_step"] == 2
    assert isinstance(SequenceClassifier.load_from_checkpoint(checkpoint).core, RelationalMemory)


def test_predict_step_takes_tensors_or_tuples():
    model = SequenceClassifier(LSTMCore(16, 8), num_classes=4, head_sizes=[8])
    x = torch.randn(5, 4, 16)
    bare = model.predict_step(x, 0)
    assert bare["prediction"].shape == (5,) and bare["probabilities"].shape == (5, 4)
    with_labels = model.predict_step((x, torch.zeros(5, dtype=torch.long)), 0)
    assert torch.equal(bare["prediction"], with_labels["prediction"])
    with pytest.raises(
        ValueError, match=r"a batch must be an inputs tensor, a ClassificationBatch, or a tuple .* got dict"
    ):
        model.predict_step({"x": x}, 0)
    with pytest.raises(ValueError, match=r"head_sizes must be a list of layer sizes"):
        SequenceClassifier(LSTMCore(16, 8), num_classes=4, head_sizes=256)


def test_group_accuracy_per_group_and_none_without_groups():
    from rrn_lightning.tasks.classification import GroupAccuracy

    metric = GroupAccuracy()
    metric.update(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3]), torch.tensor([0, 0, 2]))
    metric.update(torch.tensor([0]), torch.tensor([0]), torch.tensor([2]))
    assert {g: float(v) for g, v in metric.compute().items()} == {0: 0.5, 2: 1.0}  # no examples of group 1
    # Batches without groups: nothing is logged per group, and no torchmetrics warning about compute before update.
    model = SequenceClassifier(LSTMCore(16, 8), num_classes=4, head_sizes=[8])
    model.log = lambda *args, **kwargs: None  # no Trainer here
    model.validation_step((torch.randn(5, 4, 16), torch.zeros(5, dtype=torch.long)), 0)
    model.log = lambda *args, **kwargs: pytest.fail(f"logged {args[0]}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.on_validation_epoch_end()


@pytest.mark.smoke
def test_progress_bar_fits_80_columns_and_runs_end_with_a_summary(tmp_path, capsys):
    """The bar shows the training loss and the monitored metric only; fit, validate and test end by saying where
    the run is, what it reached and how to look at it."""
    common = [
        f"--config={EXPERIMENTS / 'nth_farthest' / 'rmc_cpu.yaml'}",
        f"--trainer.default_root_dir={tmp_path}",
        "--data.init_args.batches_per_epoch=2",
        "--data.init_args.batch_size=8",
        "--data.init_args.val_size=8",
        "--data.init_args.test_size=8",
    ]
    cli = cli_main(["fit", *common, "--trainer.max_epochs=1"])
    out, err = capsys.readouterr()
    postfixes = re.findall(r"it/s, ([^\]]*)\]", out + err)  # tqdm writes to stdout
    assert postfixes and all(re.fullmatch(r"loss=[\d.]+(, val_acc=[\d.]+)?", p) for p in postfixes), (
        postfixes[-3:]
    )
    assert "val_acc=" in postfixes[-1]
    run = tmp_path / "nth_farthest_rmc_cpu" / "version_0"
    callback = cli.trainer.checkpoint_callback
    assert [line.rpartition("\r")[2] for line in out.strip().splitlines()[-3:]] == [
        f"run: {run} (step 2)",
        f"best val/acc {float(callback.best_model_score):.4f}: {callback.best_model_path}",
        f"tensorboard --logdir {run.parent}",
    ]
    for subcommand, done in (("validate", "validated"), ("test", "tested")):
        cli_main([subcommand, *common, "--ckpt_path=last", "--trainer.enable_progress_bar=false"])
        lines = capsys.readouterr().out.splitlines()  # before Lightning's table of the metrics
        at = lines.index(f"run: {run} ({done} checkpoint {run / 'checkpoints' / 'last.ckpt'})")
        assert lines[at + 1] == f"tensorboard --logdir {run.parent}"


def test_progress_bar_after_a_resume_in_mid_epoch_shows_the_epoch(tmp_path, capsys):
    """Resumed in the middle of an epoch, the bar read "Training: 3/?" (Lightning starts no epoch there)."""
    common = [
        f"--config={EXPERIMENTS / 'nth_farthest' / 'rmc_cpu.yaml'}",
        f"--trainer.default_root_dir={tmp_path}",
        "--data.init_args.batches_per_epoch=4",
        "--data.init_args.batch_size=8",
        "--data.init_args.val_size=8",
    ]
    cli_main(["fit", *common, "--trainer.max_steps=2"])
    capsys.readouterr()
    cli_main(["fit", *common, "--trainer.max_steps=4", "--ckpt_path=last"])
    out, err = capsys.readouterr()
    bars = [
        re.match(r"(Epoch \d+|Training): .*?(\d+)/(\d+|\?) ", line) for line in re.split(r"[\r\n]", out + err)
    ]
    trained = [m.groups() for m in bars if m]
    assert trained and all(what == "Epoch 0" and total == "4" for what, n, total in trained if n != "0"), (
        trained
    )
    assert ("Epoch 0", "3", "4") in trained


@pytest.mark.smoke
def test_print_config_shows_what_will_run(tmp_path, capsys, monkeypatch):
    """--print_config after the run is resolved: the TensorBoard logger in its run folder and the callbacks rrn adds
    (issue 20: it showed logger: null and callbacks: null); the printed config runs as a config file itself."""
    monkeypatch.chdir(tmp_path)
    config = str(EXPERIMENTS / "nth_farthest" / "rmc_cpu.yaml")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", config, "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: rrn_lightning.runs.RunLogger" in printed
    assert f"save_dir: {tmp_path / 'runs'}" in printed and "name: nth_farthest_rmc_cpu" in printed
    for callback in (
        "lightning.pytorch.callbacks.LearningRateMonitor",
        "rrn_lightning.runs.RunProgressBar",
        "rrn_lightning.runs.RunSummary",
    ):
        assert printed.count(f"class_path: {callback}\n") == 1
    assert (
        "log_momentum: false" in printed
    )  # an added callback's defaults, as the config's own classes show them
    assert not (tmp_path / "runs").exists()  # printing runs nothing
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", config, "--print_config=skip_default,nonsense"])
    assert "no flag 'nonsense'" in capsys.readouterr().err
    (tmp_path / "printed.yaml").write_text(printed)
    cli = cli_main(
        [
            "fit",
            "--config",
            "printed.yaml",
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            *SMALL_DATA,
        ]
    )
    names = [type(c).__name__ for c in cli.trainer.callbacks]
    assert names.count("RunSummary") == 1 and names.count("LearningRateMonitor") == 1
