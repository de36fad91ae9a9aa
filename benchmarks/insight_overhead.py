"""What the TensorBoard extras (``rrn_lightning.insight.Insight``) cost: the same ``rrn fit`` with them on and off.

    python benchmarks/insight_overhead.py --config experiments/nth_farthest/rmc_cpu.yaml --reps 2 \\
        -- --trainer.max_epochs=3
    python benchmarks/insight_overhead.py --config experiments/language_modelling/ptb_rmc_small.yaml --reps 2 \\
        -- --trainer.max_steps=300 --trainer.val_check_interval=150 --trainer.limit_val_batches=10

Each run is a fresh process, timed from ``trainer.fit``'s start to its end (data setup and imports left out); the
settings alternate (on, off, on, off, ...) so that a drift of the machine's speed
falls on both. "off" switches every part off (grad_norm, throughput, hparams, attention, gates, text); the
task's own scalars and the learning rate are logged in both. Reported per setting: the fit's wall times, their
median, the overhead of "on" over "off" in percent, and the seconds spent inside Insight's hooks in the "on" runs
(the direct cost, which a busy machine's noise does not hide). Arguments after ``--`` go to ``rrn fit`` as they are. The
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PARTS = ("grad_norm", "throughput", "hparams", "attention", "gates", "text")


# The child: the CLI builds the trainer, model and data (run=False), then only trainer.fit is timed; Insight's
# hooks are wrapped to add up the time spent inside them (robust to a noisy machine, but blind to indirect costs
# such as Lightning's handling of the extra logged values).
CHILD = """
import functools, sys, time
from rrn_lightning.insight import Insight
spent = [0.0]
def timed(hook):
    @functools.wraps(hook)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return hook(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start
    return wrapper
for name in ("on_before_optimizer_step", "on_train_batch_start", "on_train_batch_end", "on_validation_batch_end",
             "on_validation_epoch_end", "on_validation_start", "setup"):
    setattr(Insight, name, timed(getattr(Insight, name)))
from rrn_lightning.cli import cli_main
cli = cli_main(sys.argv[1:], run=False)
start = time.perf_counter()
cli.trainer.fit(cli.model, cli.datamodule)
print("FIT_SECONDS", time.perf_counter() - start, spent[0])
"""


def fit_seconds(config: str, on: bool, threads: int | None, extra: list[str]) -> tuple[float, float]:
    """``(fit seconds, seconds inside Insight's hooks)`` of one fresh ``rrn fit``."""
    with tempfile.TemporaryDirectory() as root:
        command = [sys.executable, "-c", CHILD, "--config", config]
        command += [f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false", *extra]
        if not on:
            command += [f"--insight.{part}=false" for part in PARTS]
        env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise SystemExit(f"rrn fit failed ({'on' if on else 'off'}):\n{result.stderr[-3000:]}")
        fit, hooks = result.stdout.split("FIT_SECONDS")[-1].split()[:2]
        return float(fit), float(hooks)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--reps", type=int, default=2, help="runs per setting")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the runs")
    parser.add_argument("extra", nargs="*", help="arguments for rrn fit, after --")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"on": [], "off": []}
    hooks: list[float] = []
    for _ in range(args.reps):
        for setting in ("on", "off"):
            seconds, inside = fit_seconds(args.config, setting == "on", args.threads, args.extra)
            times[setting].append(round(seconds, 2))
            if setting == "on":
                hooks.append(round(inside, 3))
            print(
                json.dumps({"setting": setting, "fit_s": round(seconds, 2), "hooks_s": round(inside, 3)}),
                flush=True,
            )
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    report = {
        "config": str(Path(args.config)),
        "extra": args.extra,
        "fit_s": times,
        "median_on_s": round(on, 2),
        "median_off_s": round(off, 2),
        "overhead_percent": round(100 * (on - off) / off, 1),
        "hooks_s": hooks,  # time inside Insight's hooks, "on" runs
        "hooks_percent_of_off": round(100 * statistics.median(hooks) / off, 2),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
