"""The speed benchmark runs end to end (a smoke test: no timing is asserted)."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_speed_benchmark_smoke():
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "speed.py"),
            "--preset",
            "tiny",
            "--steps",
            "1",
            "--reps",
            "1",
            "--precision",
            "fp32",
            "--profile",
            "--models",  # not rmc_compiled: its compile costs a minute on two cores, and test_compile.py covers it
            "reference",
            "rmc",
            "lstm",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    preset = report["presets"]["tiny"]
    for model in ("reference", "rmc", "lstm"):
        for mode in ("train", "inference"):
            result = preset["results"][f"{model}/fp32/{mode}"]
            assert result["tokens_per_s"] > 0 and result["first_call_s"] >= 0, (model, mode)
            assert result["peak_memory_mb"] is None or result["peak_memory_mb"] >= 0, (model, mode)
    assert preset["results"]["rmc/fp32/train"]["saved_activations_mb"] > 0
    assert "rmc/fp32/train vs reference/fp32" in preset["ratios"]
    assert preset["profile"]["rmc/fp32/train"][0]["ms_per_step"] > 0
    # The LSTM's hidden size is the one whose parameter count is nearest the RMC's: within one unit's parameters.
    one_unit = 4 * (preset["preset"]["input_size"] + 2 * preset["lstm_hidden"] + 3)
    assert abs(preset["lstm_params"] - preset["rmc_params"]) <= one_unit
    assert report["mm_1024_fp32_gflops"] > 0


def test_corpus_speed_benchmark_smoke():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "corpus_speed.py"), "--tokens", "20000", "--vocab", "500"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["tokens"] == 20000 + 1000  # 20 words per line plus one <eos> each
    assert report["encode_tokens_per_s"] > 0 and report["cached_load_s"] >= 0


def test_checkpoint_write_benchmark_smoke():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "checkpoint_write.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["quick_start_mb"] > 1 and report["ptb_small_mb"] > 18 and report["quick_start_write_s"] > 0


def test_compile_run_benchmark_smoke():
    """The eager half only: the compiled half costs a compile (tens of seconds), which test_compile.py covers."""
    config = ROOT / "experiments" / "nth_farthest" / "rmc_cpu.yaml"
    command = [sys.executable, str(ROOT / "benchmarks" / "compile_run.py"), "--config", str(config)]
    command += ["--settings", "eager", "--", "--trainer.limit_train_batches=2", "--trainer.max_epochs=1"]
    command += ["--trainer.limit_val_batches=1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    eager = report["runs"]["eager"]
    assert eager["steps"] == 2 and eager["graphs_compiled"] == 0 and "val/loss" in eager["val"]


def test_fit_matrix_dry_run(tmp_path):
    """The GPU check's fit matrix, run on the CPU for one family and core: a fit, its checkpoint validated twice."""
    command = [sys.executable, str(ROOT / "benchmarks" / "fit_matrix.py"), "--accelerator=cpu", "--scale=cpu"]
    command += [
        "--families=nth_farthest",
        "--cores=lstm",
        "--precisions=bf16-mixed",
        "--steps=2",
        f"--out={tmp_path}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    (fit,) = report["fits"]
    by_n = {f"val/acc_by_group/{n}" for n in range(4)}  # accuracy per n of the 4 vectors
    assert fit["exit"] == 0 and fit["finite"] and set(fit["val"]) == {"val/loss", "val/acc", *by_n}
    (agreement,) = report["device_agreement"]
    assert agreement["largest_relative_difference"] == 0.0, agreement
    assert "skipped" in report["ddp"]


def test_nth_farthest_diagnose_smoke():
    """Each model of the diagnosis runs (a smoke test: nothing learnt is asserted) and reports the accuracy per n and
    per position of m, and the shortcut's loss."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import nth_farthest_diagnose

    for extra in (
        ["--model", "rmc"],
        ["--model", "lstm", "--presentation", "set"],
        ["--model", "mlp", "--id-order"],
    ):
        result = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "nth_farthest_diagnose.py"), "--steps", "2"]
            + ["--eval-every", "1", "--val-size", "256", *extra],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert [line["step"] for line in lines if "step" in line] == [1, 2]
        last = lines[-2]
        assert len(last["acc_by_n"]) == len(last["acc_by_position_of_m"]) == 4
        assert last["shortcut_loss"] == round(0.75 * math.log(3), 4)
        assert "wall_seconds" in lines[-1]
    # The LSTM baseline matches the RMC's core parameters as closely as a whole number of units can.
    assert nth_farthest_diagnose.lstm_hidden_for(63744, 64) == 97


def test_seeds_script_runs_each_config_and_seed_and_passes_extra_arguments_whole(tmp_path):
    """benchmarks/seeds.sh: fit then test per (config, seed), into ROOT/<family>_<config>_seed<N>; an extra argument
    with a space in it reaches rrn as one argument."""
    import os
    import shutil

    if shutil.which("rrn") is None and not (Path(sys.executable).parent / "rrn").exists():
        import pytest

        pytest.skip("rrn is not installed in this environment")
    env = {**os.environ, "ROOT": str(tmp_path / "runs"), "SEEDS": "0 1", "JOBS": "2"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    configs = [ROOT / "experiments" / "nth_farthest" / f"{core}_cpu.yaml" for core in ("rmc", "lstm")]
    extra = ["--trainer.max_epochs=1", "--data.init_args.batches_per_epoch=2", "--data.init_args.val_size=16"]
    extra += ["--data.init_args.test_size=16", "--data.init_args.batch_size=8", "--trainer.callbacks=[ ]"]
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "seeds.sh"), *map(str, configs), "--", *extra],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    names = {f"nth_farthest_{core}_cpu_seed{seed}" for core in ("rmc", "lstm") for seed in (0, 1)}
    assert {p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()} == names
    for name in names:
        assert (tmp_path / "runs" / name / "version_0" / "checkpoints" / "last.ckpt").is_file()
        assert "test/acc" in (tmp_path / "runs" / f"{name}.test.log").read_text()
    # rrn compare's table closes the output: one row per config, n = 2.
    rows = [line for line in result.stdout.splitlines() if "_seed*/version_0" in line]
    assert len(rows) == 2 and all("|   2 |" in row for row in rows)
