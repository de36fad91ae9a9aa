"""Runs that survive: a run killed at any step and resumed with ``--ckpt_path last`` ends bit-identical to an
uninterrupted one, in the same run folder and TensorBoard run; ``last.ckpt`` is the latest state; a non-finite loss
stops the run; signals write a checkpoint; ``fast_dev_run`` writes none; ``rrn predict`` writes its predictions."""

import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from rrn_lightning.cli import cli_main

TESTS = Path(__file__).parent
EXPERIMENTS = TESTS.parent / "experiments"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]

NTH = [
    f"--config={EXPERIMENTS / 'nth_farthest' / 'rmc_cpu.yaml'}",
    "--trainer.max_epochs=2",
    "--trainer.log_every_n_steps=1",
    "--data.init_args.batches_per_epoch=10",
    "--data.init_args.batch_size=16",
    "--data.init_args.val_size=32",
    "--checkpoint.every_n_train_steps=3",
]
# Learning to Execute with an adaptive curriculum that moves during the run, and a scheduler.
LTE = [
    f"--config={EXPERIMENTS / 'learn_to_execute' / 'addition_rmc_cpu.yaml'}",
    "--trainer.max_epochs=2",
    "--trainer.log_every_n_steps=1",
    "--data.init_args.batches_per_epoch=12",
    "--data.init_args.batch_size=8",
    "--data.init_args.val_size=16",
    "--data.init_args.test_size=16",
    "--data.init_args.curriculum=combined",
    "--data.init_args.curriculum_window=2",
    "--trainer.callbacks+=datamodules.CurriculumCallback",
    "--trainer.callbacks.every_n_steps=2",
    "--trainer.callbacks.batch_size=8",
    "--model.init_args.lr_scheduler.init_args.milestones=[1]",
    "--checkpoint.every_n_train_steps=5",
]
# A user's own data (the args functions below add the file): two epochs of 6 steps.
OWN = [
    "--trainer.max_epochs=2",
    "--trainer.log_every_n_steps=1",
    "--checkpoint.every_n_train_steps=3",
]
# A word language model with dropout, variable BPTT, momentum and a scheduler: the carried core state, the window
# lengths and the global random state must all come back.
LM_CONFIG = """\
seed_everything: 0
trainer:
  max_epochs: 2
  use_distributed_sampler: false
  log_every_n_steps: 1
model:
  class_path: rrn_lightning.LanguageModel
  init_args:
    core:
      class_path: rrn_lightning.RelationalMemory
      init_args: {input_size: 8, mem_slots: 2, head_size: 4, num_heads: 2}
    dropout: 0.3
    optimizer:
      class_path: torch.optim.SGD
      init_args: {lr: 1.0, momentum: 0.9}
    lr_scheduler:
      class_path: torch.optim.lr_scheduler.MultiStepLR
      init_args: {milestones: [1]}
data:
  class_path: datamodules.WordLMDataModule
  init_args: {corpus: CORPUS, batch_size: 2, eval_batch_size: 2, bptt: 5, variable_bptt: true}
checkpoint:
  monitor: val/loss
  every_n_train_steps: 3
"""


def rrn(*args: str) -> subprocess.CompletedProcess:
    """``rrn`` in a subprocess of its own (it may be killed), one thread, with the test callbacks importable."""
    (result,) = rrn_together(list(args))
    return result


def rrn_together(*commands: list[str]) -> list[subprocess.CompletedProcess]:
    """Independent ``rrn`` runs at the same time (one thread each, so two share the two cores), in order."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "rrn_lightning.cli", *args, *QUIET],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for args in commands
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, f"{prefix}/{key}")
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            yield from leaves(value, f"{prefix}/{i}")
    else:
        yield prefix, tree


def assert_identical(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    ours, theirs = dict(leaves(a["optimizer_states"])), dict(leaves(b["optimizer_states"]))
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        same = torch.equal(value, theirs[key]) if isinstance(value, torch.Tensor) else value == theirs[key]
        assert same, key


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar curve of a run but the wall-clock throughput (train/examples_per_s, train/tokens_per_s), whose
    steps must still match."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    curves = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    for tag in [t for t in curves if t.endswith("_per_s")]:
        curves[tag] = [(step, 0.0) for step, _ in curves[tag]]
    return curves


def own_sequences_args(tmp_path: Path) -> list[str]:
    """A user's .npz (60 sequences; 48 train in batches of 8: 6 steps an epoch), shuffled each epoch."""
    from test_own_data import fixed

    return [
        f"--config={EXPERIMENTS / 'own_data' / 'sequences_rmc.yaml'}",
        f"--data.init_args.path={fixed(tmp_path, 60)}",
        "--data.init_args.batch_size=8",
        *OWN,
    ]


def own_text_args(tmp_path: Path) -> list[str]:
    """The shipped reviews (240 rows; 192 train in batches of 32: 6 steps an epoch), shuffled each epoch."""
    pytest.importorskip("datasets")
    path = TESTS / "data" / "reviews.csv"
    return [f"--config={EXPERIMENTS / 'own_data' / 'text_rmc.yaml'}", f"--data.init_args.path={path}", *OWN]


def lm_args(tmp_path: Path) -> list[str]:
    corpus = tmp_path / "corpus"
    shutil.copytree(TESTS / "data" / "gettysburg", corpus)
    config = tmp_path / "lm.yaml"
    config.write_text(LM_CONFIG.replace("CORPUS", str(corpus)))
    return [f"--config={config}"]


@pytest.mark.smoke
@pytest.mark.parametrize(
    "family,kill_at,final_step",
    [
        ("nth_farthest", 7, 20),
        ("learn_to_execute", 7, 24),
        ("word_lm", 8, 46),
        ("own_sequences", 11, 12),
        ("own_text", 11, 12),
    ],
)
def test_killed_run_resumes_bit_identical_in_its_own_folder(family, kill_at, final_step, tmp_path):
    make_args = {"word_lm": lm_args, "own_sequences": own_sequences_args, "own_text": own_text_args}
    args = {"nth_farthest": NTH, "learn_to_execute": LTE}.get(family) or make_args[family](tmp_path)
    root = [f"--trainer.default_root_dir={tmp_path / 'runs'}"]
    full, killed = rrn_together(
        ["fit", *args, *root, "--run_name=full"],
        [
            "fit",
            *args,
            *root,
            "--run_name=cut",
            "--trainer.callbacks+=interrupt.KillAtStep",
            f"--trainer.callbacks.step={kill_at}",
        ],
    )
    assert full.returncode == 0, full.stderr[-3000:]
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "runs" / "cut" / "version_0" / "checkpoints" / "last.ckpt"
    assert 0 < load(last)["global_step"] < kill_at  # a mid-epoch checkpoint, older than the kill
    resumed = rrn("fit", *args, *root, "--run_name=cut", "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs" / "cut").iterdir()) == ["version_0"]
    reference = load(tmp_path / "runs" / "full" / "version_0" / "checkpoints" / "last.ckpt")
    assert reference["global_step"] == final_step  # after a normal run, last.ckpt holds the final step
    assert_identical(load(last), reference)
    # One TensorBoard run whose curves equal the uninterrupted run's: no gap, no step twice, and the epoch means
    # of the interrupted epoch count the batches before the kill too.
    cut, whole = scalars(last.parents[1]), scalars(tmp_path / "runs" / "full" / "version_0")
    assert cut == whole
    assert {"train/loss_step", "train/loss_epoch", "val/loss"} <= cut.keys()
    # Best-checkpoint tracking went on across the resume, in the same folder.
    assert "dirpath has changed" not in resumed.stderr
    best = [state for key, state in load(last)["callbacks"].items() if key.startswith("RunCheckpoint")]
    reference_best = [
        state for key, state in reference["callbacks"].items() if key.startswith("RunCheckpoint")
    ]
    assert best[0]["best_model_score"] == reference_best[0]["best_model_score"]
    assert Path(best[0]["best_model_path"]).name == Path(reference_best[0]["best_model_path"]).name
    assert Path(best[0]["best_model_path"]).is_file()


def test_non_finite_loss_stops_the_run_and_writes_no_bad_checkpoint(tmp_path):
    result = rrn(
        "fit",
        *NTH,
        f"--trainer.default_root_dir={tmp_path}",
        "--checkpoint.every_n_train_steps=2",
        "--trainer.callbacks+=interrupt.PoisonAtStep",
        "--trainer.callbacks.step=5",
    )
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("rrn: error: non-finite training loss (nan) at step 5")
    assert "last.ckpt (step 4)" in message
    checkpoints = list(tmp_path.rglob("*.ckpt"))
    assert checkpoints and not list(tmp_path.rglob("*.part"))
    for path in checkpoints:
        checkpoint = load(path)
        assert checkpoint["global_step"] <= 4
        assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


def test_skip_mode_skips_non_finite_batches_then_stops_after_a_streak(tmp_path):
    poison = [
        "--nonfinite.mode=skip",
        "--nonfinite.max_consecutive=3",
        "--trainer.callbacks+=interrupt.PoisonBatches",
    ]
    skipped, streak = rrn_together(
        [
            "fit",
            *NTH,
            f"--trainer.default_root_dir={tmp_path / 'two'}",
            *poison,
            "--trainer.callbacks.first=5",
            "--trainer.callbacks.last=6",
        ],
        [
            "fit",
            *NTH,
            f"--trainer.default_root_dir={tmp_path / 'many'}",
            *poison,
            "--trainer.callbacks.first=5",
            "--trainer.callbacks.last=20",
        ],
    )
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    run = tmp_path / "two" / "nth_farthest_rmc_cpu" / "version_0"
    counts = dict(scalars(run)["train/skipped_batches"])
    assert counts[4] == 1.0 and counts[5] == 2.0 and max(counts.values()) == 2.0
    last = load(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 20
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())
    assert streak.returncode == 1
    assert "rrn: error: 3 non-finite training losses in a row (the last nan) at step 7" in streak.stderr


def test_signals_write_last(tmp_path):
    """SIGTERM stops after the batch with last.ckpt written; SIGUSR1 writes last.ckpt after the batch and goes on.
    (Both runs at once: they are independent.)"""
    cases = {"SIGTERM": (143, "rrn: stopped by SIGTERM at step 4", 4), "SIGUSR1": (0, "SIGUSR1: wrote", 20)}
    common = ["--checkpoint.every_n_train_steps=0", "--trainer.callbacks+=interrupt.SignalAtStep"]
    results = rrn_together(
        *[
            [
                "fit",
                *NTH,
                f"--trainer.default_root_dir={tmp_path / name}",
                *common,
                "--trainer.callbacks.step=4",
            ]
            + [f"--trainer.callbacks.signal_name={name}"]
            for name in cases
        ]
    )
    for (name, (status, message, final_step)), result in zip(cases.items(), results, strict=True):
        assert result.returncode == status, (name, result.stderr[-2000:])
        assert message in result.stderr and "at step 4" in result.stderr
        assert load(next((tmp_path / name).rglob("last.ckpt")))["global_step"] == final_step


# ------------------------------------------------------------------------- in-process
SMALL = [
    f"--config={EXPERIMENTS / 'nth_farthest' / 'rmc_cpu.yaml'}",
    "--data.init_args.batches_per_epoch=3",
    "--data.init_args.batch_size=8",
    "--data.init_args.val_size=8",
    "--data.init_args.test_size=8",
    "--trainer.max_epochs=1",
    *QUIET,
]


def test_resume_last_without_a_checkpoint_fails_unless_asked_to_start(tmp_path, capsys):
    root = f"--trainer.default_root_dir={tmp_path}"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *SMALL, root, "--ckpt_path=last"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("rrn: error: --ckpt_path last: run 'nth_farthest_rmc_cpu' has no checkpoint to resume")
    )
    assert not (tmp_path / "nth_farthest_rmc_cpu").exists()
    cli_main(["fit", *SMALL, root, "--ckpt_path=last", "--allow_fresh_start=true"])
    assert (tmp_path / "nth_farthest_rmc_cpu" / "version_0" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.smoke
def test_resume_from_the_default_relative_root_keeps_best_checkpoint_tracking(tmp_path, monkeypatch):
    """The README's commands from a working directory, with the default relative ``runs/``: the resumed run knows
    its best checkpoint, so save_top_k=1 keeps one best file (Lightning drops the tracking when the checkpoint
    folder's path is written differently, e.g. relative then absolute)."""
    monkeypatch.chdir(tmp_path)
    cli_main(["fit", *SMALL, "--trainer.max_epochs=2"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = cli_main(["fit", *SMALL, "--trainer.max_epochs=4", "--ckpt_path=last"])
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    folder = tmp_path / "runs" / "nth_farthest_rmc_cpu" / "version_0" / "checkpoints"
    best = sorted(path.name for path in folder.glob("epoch*.ckpt"))
    assert len(best) == 1, best
    callback = cli.trainer.checkpoint_callback
    assert Path(callback.best_model_path).name == best[0] and callback.best_model_score is not None
    assert not (tmp_path / "runs" / "nth_farthest_rmc_cpu" / "version_1").exists()


@pytest.mark.smoke
def test_a_checkpoint_alone_is_enough(tmp_path, monkeypatch, capsys):
    """``rrn validate|test|predict|fit --ckpt_path FILE`` without --config: the run's saved config.yaml rebuilds the
    model and the data, and everything goes to that run's folder (no new version)."""
    monkeypatch.chdir(tmp_path)
    cli_main(["fit", *SMALL])
    run = Path("runs", "nth_farthest_rmc_cpu", "version_0")
    checkpoint = f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    for subcommand in ("validate", "test"):
        cli = cli_main([subcommand, checkpoint, *QUIET])
        assert (
            0 <= cli.trainer.callback_metrics[f"{'val' if subcommand == 'validate' else subcommand}/acc"] <= 1
        )
        assert (run / f"config_{subcommand}.yaml").is_file()
    cli_main(["predict", checkpoint, *QUIET])
    assert torch.load(run / "predictions_test.pt", weights_only=True)["prediction"].shape == (8,)
    cli = cli_main(["fit", checkpoint, "--trainer.max_epochs=2", *QUIET])
    assert cli.trainer.global_step == 6
    assert [path.name for path in run.parent.iterdir()] == ["version_0"]
    # A checkpoint outside a run folder has no config to read: one line says so.
    loose = tmp_path / "loose.ckpt"
    shutil.copy(run / "checkpoints" / "last.ckpt", loose)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["test", f"--ckpt_path={loose}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"rrn: error: --ckpt_path {loose} has no run folder with a config.yaml beside it (runs/<name>/version_N/"
        "checkpoints/); give the config it was trained with: --config FILE."
    ]


def test_fast_dev_run_writes_no_checkpoint(tmp_path):
    for _ in range(2):
        cli_main(["fit", *SMALL, f"--trainer.default_root_dir={tmp_path}", "--trainer.fast_dev_run=true"])
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.smoke
def test_predict_writes_predictions_in_the_run_folder(tmp_path, capsys):
    root = f"--trainer.default_root_dir={tmp_path}"
    cli_main(["fit", *SMALL, root])
    data = cli_main(["predict", *SMALL, root, "--ckpt_path=last"]).datamodule
    run = tmp_path / "nth_farthest_rmc_cpu" / "version_0"
    path = run / "predictions_test.pt"
    assert f"rrn predict: wrote {path} (the test split, 8 examples: " in capsys.readouterr().out
    predictions = torch.load(path, weights_only=True)
    assert predictions["prediction"].shape == (8,) and predictions["probabilities"].shape == (8, 4)
    assert torch.allclose(predictions["probabilities"].sum(-1), torch.ones(8))
    assert (run / "config_predict.yaml").is_file()
    # The targets beside the predictions: the test set's labels, which the data module gives for that split.
    labels = torch.cat([batch.labels for batch in data.test_dataloader()])
    assert torch.equal(predictions["target"], labels)

    # --predict_split validation: the validation set, into its own file; the test predictions stay.
    cli_main(["predict", *SMALL, root, "--ckpt_path=last", "--predict_split=validation"])
    assert (
        f"wrote {run / 'predictions_validation.pt'} (the validation split, 8 examples"
        in capsys.readouterr().out
    )
    validation = torch.load(run / "predictions_validation.pt", weights_only=True)
    assert torch.equal(validation["target"], torch.cat([batch.labels for batch in data.val_dataloader()]))
    assert path.is_file() and not torch.equal(validation["target"], predictions["target"])
    # The same as a config key of the data module; a split that is not one is named in one line.
    cli_main(["predict", *SMALL, root, "--ckpt_path=last", "--data.init_args.predict_split=validation"])
    assert "the validation split" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["predict", *SMALL, root, "--ckpt_path=last", "--predict_split=train"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 3 and "--predict_split=train" in err[0] and "validation, test" in " ".join(err)


def test_max_time_stop_is_reported(tmp_path, capsys):
    cli_main(
        [
            "fit",
            *SMALL,
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_epochs=100000",
            "--trainer.max_time=00:00:00:01",
        ]
    )
    out = capsys.readouterr().out
    assert re.search(
        r"rrn: training stopped on max_time after \d+ s of training \(counted across resumes\)", out
    )
    assert "of max_epochs=100000" in out


def test_a_checkpoint_without_training_metric_sums_still_loads(tmp_path):
    """Checkpoints written before the training metrics were saved in them load, with those sums at zero."""
    cli_main(["fit", *SMALL, f"--trainer.default_root_dir={tmp_path}"])
    path = next(tmp_path.rglob("last.ckpt"))
    checkpoint = torch.load(path, weights_only=True)
    dropped = [key for key in checkpoint["state_dict"] if key.startswith(("train_loss.", "train_acc."))]
    assert dropped
    for key in dropped:
        del checkpoint["state_dict"][key]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    from rrn_lightning import SequenceClassifier

    model = SequenceClassifier.load_from_checkpoint(tmp_path / "old.ckpt")
    assert all(float(model.state_dict()[key].sum()) == 0 for key in dropped)
    cli_main(
        ["test", *SMALL, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={tmp_path / 'old.ckpt'}"]
    )
