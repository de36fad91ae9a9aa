"""DDP equals one process: the installed ``rrn fit`` under ``torchrun`` (two CPU processes, gloo) validates to the
same metrics as one process validating the same checkpoint on the same data, for every task family.

The validation sets are chosen so that their last batch is smaller and the ranks get different numbers of examples:
a mean of the ranks' means, or an example evaluated twice to even the ranks out, would show. (Lightning's samplers
for evaluation split the sets without repeats, and its ``sync_dist`` means are weighted over the ranks; these tests
keep it so for our data modules and metrics.)
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rrn_lightning.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
RRN = shutil.which("rrn") or str(Path(sys.executable).parent / "rrn")


def torchrun_fit(tmp_path: Path, config: Path, *overrides: str) -> Path:
    """``torchrun --standalone --nproc_per_node=2 rrn fit ...``; returns the run folder."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--no-python",
    ]
    command += [RRN, "fit", "--config", str(config), "--trainer.accelerator=cpu", "--trainer.devices=2"]
    command += ["--trainer.strategy=ddp", f"--trainer.default_root_dir={tmp_path / 'ddp'}"]
    command += ["--trainer.enable_progress_bar=false", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    (checkpoint,) = (tmp_path / "ddp").glob("*/version_0/checkpoints/last.ckpt")
    return checkpoint.parents[1]


def last_validation(run: Path) -> dict[str, float]:
    """The last value of every ``val/`` scalar in the run's TensorBoard events (rank 0 writes them)."""
    events = EventAccumulator(str(run))
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("val/")}


def one_process_validation(
    tmp_path: Path, config: Path, checkpoint: Path, *overrides: str
) -> dict[str, float]:
    cli = cli_main(
        [
            "validate",
            "--config",
            str(config),
            f"--ckpt_path={checkpoint}",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            f"--trainer.default_root_dir={tmp_path / 'one'}",
            "--trainer.enable_progress_bar=false",
            *overrides,
        ]
    )
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}


def assert_same_metrics(ddp: dict[str, float], one: dict[str, float], names: set[str]) -> None:
    assert names <= set(ddp) and names <= set(one), (ddp, one)
    for name in names:
        assert ddp[name] == pytest.approx(one[name], rel=1e-5, abs=1e-6), (name, ddp[name], one[name])


def test_nth_farthest_under_ddp_validates_as_one_process(tmp_path):
    config = EXPERIMENTS / "nth_farthest" / "rmc_cpu.yaml"
    # 199 examples: batches of 64, 64, 64, 7, so the ranks get 128 and 71; an odd count, which a DistributedSampler
    # would even out by evaluating one example twice.
    data = ["--data.init_args.batch_size=64", "--data.init_args.val_size=199"]
    run = torchrun_fit(
        tmp_path, config, *data, "--data.init_args.batches_per_epoch=2", "--trainer.max_epochs=1"
    )
    one = one_process_validation(tmp_path, config, run / "checkpoints" / "last.ckpt", *data)
    assert_same_metrics(last_validation(run), one, {"val/loss", "val/acc"})


def test_learn_to_execute_under_ddp_validates_as_one_process(tmp_path):
    config = EXPERIMENTS / "learn_to_execute" / "addition_rmc_cpu.yaml"
    # 40 examples: batches of 16, 16, 8, three batches for two ranks (a DistributedSampler would repeat one).
    data = ["--data.init_args.batch_size=16", "--data.init_args.val_size=40"]
    run = torchrun_fit(
        tmp_path,
        config,
        *data,
        "--data.init_args.batches_per_epoch=2",
        "--trainer.max_epochs=1",
        "--trainer.max_time=null",
    )
    one = one_process_validation(tmp_path, config, run / "checkpoints" / "last.ckpt", *data)
    assert_same_metrics(last_validation(run), one, {"val/loss", "val/char_acc", "val/seq_acc"})


def test_word_lm_under_ddp_validates_as_one_process(tmp_path):
    """Each rank reads its own contiguous shard of the validation stream in eval_batch_size rows; one process with
    twice the rows reads the same rows when the stream divides evenly (41 tokens: 40 (input, target) pairs)."""
    corpus = tmp_path / "corpus"
    shutil.copytree(ROOT / "tests" / "data" / "gettysburg", corpus)
    words = (corpus / "train.txt").read_text().split()
    (corpus / "valid.txt").write_text(" ".join(words[:40]) + "\n")
    config = EXPERIMENTS / "language_modelling" / "ptb_rmc_small.yaml"
    data = [f"--data.init_args.corpus={corpus}", "--data.init_args.bptt=4", "--data.init_args.batch_size=2"]
    run = torchrun_fit(
        tmp_path,
        config,
        *data,
        "--data.init_args.eval_batch_size=2",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.max_time=null",
    )
    one = one_process_validation(
        tmp_path, config, run / "checkpoints" / "last.ckpt", *data, "--data.init_args.eval_batch_size=4"
    )
    assert_same_metrics(last_validation(run), one, {"val/loss", "val/ppl"})
