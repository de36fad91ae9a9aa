"""What ``compile_step`` costs and gains in a real run: the same ``rrn fit`` eagerly and with the RMC's step compiled.

    python benchmarks/compile_run.py --config experiments/nth_farthest/rmc_cpu.yaml --threads 2 \\
        -- --trainer.max_epochs=5
    python benchmarks/compile_run.py --config experiments/learn_to_execute/addition_rmc_cpu.yaml \\
        -- --trainer.max_steps=400 --trainer.max_time=null

Each setting runs in a fresh process with inductor's on-disk caches off, so the compiles are what a first run pays.
Arguments after ``--`` go to ``rrn fit`` as they are. Reported per setting: the fit's wall time (data setup
included, the same in both), the graphs Dynamo compiled and its compile seconds (forward graphs; a training graph's
backward is compiled at its first backward, which only the wall time shows), and the validation loss at the end,
which should agree to float rounding. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(config: str, compile_step: bool, threads: int | None, extra: list[str]) -> dict:
    import torch
    import torch._dynamo.utils as dynamo_utils

    sys.path.insert(0, str(ROOT))
    from rrn_lightning.cli import cli_main

    if threads is not None:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        cli = cli_main(
            [
                "fit",
                "--config",
                config,
                f"--model.init_args.compile_step={str(compile_step).lower()}",
                f"--trainer.default_root_dir={root}",
                "--trainer.enable_progress_bar=false",
                *extra,
            ]
        )
        wall = time.perf_counter() - start
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    return {
        "compile_step": compile_step,
        "fit_wall_s": round(wall, 1),
        "steps": cli.trainer.global_step,
        "graphs_compiled": dynamo_utils.counters["stats"].get("unique_graphs", 0),
        "dynamo_compile_s": round(dynamo_utils.calculate_time_spent().get("total_wall_time", 0.0), 1),
        "val": metrics,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--settings", nargs="+", choices=["eager", "compiled"], default=["eager", "compiled"])
    parser.add_argument("--child", choices=["eager", "compiled"], help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if args.child:
        result = child(args.config, args.child == "compiled", args.threads, extra)
        print("RESULT " + json.dumps(result), flush=True)
        return
    env = {**os.environ, "TORCHINDUCTOR_FX_GRAPH_CACHE": "0", "TORCHINDUCTOR_AUTOGRAD_CACHE": "0"}
    report = {"config": args.config, "args": extra, "threads": args.threads, "runs": {}}
    for setting in args.settings:
        command = [sys.executable, __file__, "--config", args.config, "--child", setting]
        if args.threads is not None:
            command += ["--threads", str(args.threads)]
        done = subprocess.run([*command, "--", *extra], env=env, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            raise SystemExit(f"compile_run: the {setting} run failed:\n{done.stderr[-3000:]}")
        report["runs"][setting] = json.loads(lines[-1][len("RESULT ") :])
        print(f"{setting}: {report['runs'][setting]}", flush=True)
    if len(report["runs"]) == 2:
        eager, compiled = report["runs"]["eager"], report["runs"]["compiled"]
        report["compiled_minus_eager_s"] = round(compiled["fit_wall_s"] - eager["fit_wall_s"], 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
