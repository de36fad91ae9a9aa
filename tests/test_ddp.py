"""DDP equals one process: the installed ``rrn fit`` under ``torchrun`` (two CPU processes, gloo) validates to the
same metrics as one process validating the same checkpoint on the same data, for every task family.

The validation sets are chosen so that their last batch is smaller and the ranks get different numbers of examples:
a mean of the ranks' means, or an example evaluated twice to even the ranks out, would show. (Lightning's samplers
for evaluation split the sets without repeats, and its ``sync_dist`` means are weighted over the ranks; these tests
keep it so for our data modules and metrics.)
"""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rrn_lightning.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
EXPERIMENTS = ROOT / "experiments"
RRN = shutil.which("rrn") or str(Path(sys.executable).parent / "rrn")
# A small Nth farthest run: 6 training steps, one validation.
SMALL_NTH = [
    f"--config={EXPERIMENTS / 'nth_farthest' / 'rmc_cpu.yaml'}",
    "--data.init_args.batch_size=16",
    "--data.init_args.val_size=32",
    "--data.init_args.batches_per_epoch=6",
    "--trainer.max_epochs=1",
    "--trainer.accelerator=cpu",
    "--trainer.strategy=ddp",
    "--trainer.enable_progress_bar=false",
]


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of a training process: one thread (two share two cores), the test callbacks importable."""
    pythonpath = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath, **extra}


def run_together(commands: list[tuple[list[str], dict[str, str]]]) -> list[subprocess.CompletedProcess]:
    """Start every ``(command, env)`` at once (they rendezvous with each other) and wait for all of them."""
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command, env in commands
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    result = subprocess.run(command, capture_output=True, text=True, timeout=400, env=worker_env())
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


def test_own_sequences_under_ddp_validate_as_one_process(tmp_path):
    """A user's .npz with a validation file of 13 sequences in batches of 4 (4, 4, 4, 1): the ranks get 8 and 5."""
    from test_own_data import fixed

    for name, count in [("train", 40), ("val", 13), ("test", 9)]:
        fixed(tmp_path, count, f"{name}.npz")
    config = EXPERIMENTS / "own_data" / "sequences_rmc.yaml"
    data = [
        f"--data.init_args.path={tmp_path / 'train.npz'}",
        f"--data.init_args.val_path={tmp_path / 'val.npz'}",
        f"--data.init_args.test_path={tmp_path / 'test.npz'}",
        "--data.init_args.batch_size=4",
    ]
    run = torchrun_fit(tmp_path, config, *data, "--trainer.max_epochs=1")
    one = one_process_validation(tmp_path, config, run / "checkpoints" / "last.ckpt", *data)
    assert_same_metrics(last_validation(run), one, {"val/loss", "val/acc"})


def test_own_text_under_ddp_validates_as_one_process(tmp_path):
    """The shipped reviews with 0.1 of them (24) held out for validation, in batches of 5 (5 x 4, then 4)."""
    pytest.importorskip("datasets")
    config = EXPERIMENTS / "own_data" / "text_rmc.yaml"
    data = [f"--data.init_args.path={TESTS / 'data' / 'reviews.csv'}", "--data.init_args.batch_size=5"]
    run = torchrun_fit(tmp_path, config, *data, "--trainer.max_epochs=1")
    one = one_process_validation(tmp_path, config, run / "checkpoints" / "last.ckpt", *data)
    assert_same_metrics(last_validation(run), one, {"val/loss", "val/acc"})


# --------------------------------------------------------------------- two machines, simulated
def test_two_nodes_with_a_c10d_rendezvous_train_to_the_same_weights(tmp_path):
    """Two torchrun agents, as on two machines (``--nnodes=2 --node_rank=i``, one process each), meet at a c10d
    rendezvous on 127.0.0.1, train together and end with the same weights on both ranks."""
    port = free_port()
    weights = tmp_path / "weights"
    agents = []
    for node in range(2):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}"]
        command += ["--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}"]
        command += ["--no-python", RRN, "fit", *SMALL_NTH, "--trainer.devices=1", "--trainer.num_nodes=2"]
        command += [
            f"--trainer.default_root_dir={tmp_path / 'runs'}",
            "--trainer.callbacks+=interrupt.SaveWeights",
        ]
        command += [f"--trainer.callbacks.folder={weights}"]
        agents.append((command, worker_env()))
    for agent in run_together(agents):
        assert agent.returncode == 0, agent.stderr[-3000:]
    rank0, rank1 = (torch.load(weights / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    (last,) = (tmp_path / "runs").glob("*/version_0/checkpoints/last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] == 6


# --------------------------------------------------------------------- SLURM, simulated
def srun(tmp_path: Path, *args: str) -> list[subprocess.CompletedProcess]:
    """What ``srun --ntasks=2`` on one node does for ``rrn fit ...``: two processes with the ``SLURM_*`` variables
    srun gives each task, and an ``scontrol`` on PATH that records its arguments instead of requeueing."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    scontrol = stubs / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    port = str(free_port())
    tasks = []
    for rank in range(2):
        env = worker_env(
            PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}",
            SLURM_JOB_ID="4242",
            SLURM_JOB_NAME="rrn-test",
            SLURM_NTASKS="2",
            SLURM_NTASKS_PER_NODE="2",
            SLURM_JOB_NUM_NODES="1",
            SLURM_NODELIST="127.0.0.1",
            SLURM_NODEID="0",
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank),
            MASTER_PORT=port,
        )
        env = {
            k: v
            for k, v in env.items()
            if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID")
        }
        command = [RRN, "fit", *SMALL_NTH, "--trainer.devices=2", "--trainer.num_nodes=1"]
        command += [
            "--checkpoint.every_n_train_steps=0",
            f"--trainer.default_root_dir={tmp_path / 'runs'}",
            *args,
        ]
        tasks.append((command, env))
    return run_together(tasks)


def test_a_simulated_slurm_launch_trains_with_slurms_ranks(tmp_path):
    results = srun(tmp_path)
    for rank, result in enumerate(results):
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in result.stderr + result.stdout
    (last,) = (tmp_path / "runs").glob("*/version_0/checkpoints/last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] == 6


def test_sigusr1_under_slurm_writes_last_asks_for_a_requeue_and_the_next_job_resumes(tmp_path):
    """SIGUSR1 during step 3 (what ``#SBATCH --signal=SIGUSR1@120`` sends every task): every rank writes last.ckpt
    after the step, rank 0 asks ``scontrol requeue`` once, and the job goes on until SLURM kills it (here after step
    4, with SIGKILL). The requeued job, the same command, continues the run from step 3 in its own folder."""
    signal_at_3 = ["--trainer.callbacks+=interrupt.SignalAtStep", "--trainer.callbacks.step=3"]
    signal_at_3 += ["--trainer.callbacks.signal_name=SIGUSR1"]
    killed_after_4 = ["--trainer.callbacks+=interrupt.KillAtStep", "--trainer.callbacks.step=4"]
    first = srun(tmp_path, *signal_at_3, *killed_after_4, "--ckpt_path=last", "--allow_fresh_start=true")
    assert [r.returncode for r in first] == [-9, -9], first[0].stderr[-3000:]
    assert "SIGUSR1: wrote" in first[0].stderr and "at step 3" in first[0].stderr
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]  # rank 0 asked, once
    (last,) = (tmp_path / "runs").glob("*/version_0/checkpoints/last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] == 3
    resumed = srun(tmp_path, "--ckpt_path=last", "--allow_fresh_start=true")
    for result in resumed:
        assert result.returncode == 0, result.stderr[-3000:]
    assert "Restoring states from the checkpoint path at" in resumed[0].stderr
    assert torch.load(last, weights_only=True)["global_step"] == 6
    assert not list((tmp_path / "runs").glob("*/version_1"))  # the same run folder, not a new one
