"""The speed benchmark runs end to end (a smoke test: no timing is asserted)."""

import json
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
            "default",
            "--steps",
            "2",
            "--reps",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    preset = report["presets"]["default"]
    for key in (
        "rmc/fp32/train",
        "reference/fp32/train",
        "lstm/fp32/train",
        "rmc/bf16/train",
        "rmc/fp32/inference",
    ):
        assert preset["results"][key]["tokens_per_s"] > 0, key
    assert "rmc/fp32/train vs reference/fp32" in preset["ratios"]
    assert abs(preset["lstm_params"] - preset["rmc_params"]) / preset["rmc_params"] < 0.01
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
