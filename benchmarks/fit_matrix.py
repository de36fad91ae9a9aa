"""Short fits of every task family and both cores in each mixed precision, then the checks that need a device.

    python benchmarks/fit_matrix.py --accelerator gpu                       # the GPU check (gpu_check.sh runs it)
    python benchmarks/fit_matrix.py --accelerator cpu --precisions bf16-mixed --steps 6 --scale cpu   # a dry run

1. Every (task family, core, precision): ``rrn fit`` for ``--steps`` steps in a fresh process (a crash or a hang in
   one does not stop the others); reported: exit status, seconds, the last validation metrics, and whether they are
   finite.
2. Device agreement: the first precision's checkpoint of each (family, core) validated in fp32 on the CPU and on the
   accelerator, one after the other in one fresh process; the metrics should agree to float rounding (reported:
   the largest relative difference).
3. DDP, with 2 or more GPUs: the RMC of each family trained with ``--trainer.devices=2 --trainer.strategy=ddp``; its
   logged validation metrics against a one-device validation of its checkpoint. Skipped, with the reason, on fewer.

The validation sets are sized by ``val_size`` (not ``limit_val_batches``, which counts per rank and would make the
DDP and one-device sets differ). The last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
CORPUS = ROOT / "tests" / "data" / "gettysburg"
RRN = shutil.which("rrn") or str(Path(sys.executable).parent / "rrn")

# family -> (config per core at each scale, overrides that keep the fit short)
FAMILIES = {
    "nth_farthest": (
        {"paper": "nth_farthest/{core}.yaml", "cpu": "nth_farthest/{core}_cpu.yaml"},
        ["--data.init_args.val_size=2000"],
    ),
    "sorting": (
        {"paper": "sorting/{core}.yaml", "cpu": "sorting/{core}_cpu.yaml"},
        ["--data.init_args.val_size=500"],
    ),
    "learn_to_execute": (
        {"paper": "learn_to_execute/{core}.yaml", "cpu": "learn_to_execute/addition_{core}_cpu.yaml"},
        ["--data.init_args.val_size=500"],
    ),
    "word_lm": (
        {
            "paper": "language_modelling/ptb_{core}_small.yaml",
            "cpu": "language_modelling/ptb_{core}_small.yaml",
        },
        [
            f"--data.init_args.corpus={CORPUS}",
            "--data.init_args.batch_size=4",
            "--data.init_args.eval_batch_size=4",
            "--data.init_args.test_batch_size=1",
        ],
    ),
}


def config_of(family: str, core: str, scale: str) -> Path:
    return EXPERIMENTS / FAMILIES[family][0][scale].format(core=core)


def last_validation(run: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("val/")}


def fit(out: Path, name: str, config: Path, overrides: list[str], timeout: int, devices: int = 1) -> dict:
    root = out / "runs" / name
    # A rerun into the same --out must not report an earlier checkpoint.
    shutil.rmtree(root, ignore_errors=True)
    command = [RRN, "fit", "--config", str(config), f"--trainer.default_root_dir={root}", *overrides]
    command += [f"--trainer.devices={devices}", "--trainer.enable_progress_bar=false"]
    if devices > 1:
        command.append("--trainer.strategy=ddp")
    start = time.perf_counter()
    # A session of its own, so that a timeout ends the whole group: under DDP Lightning starts the other ranks as
    # child processes, which would otherwise outlive the parent and hold the GPUs.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        log, _ = process.communicate(timeout=timeout)
        code: int | str = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        log, _ = process.communicate()
        code = "timeout"
    (out / f"fit_{name}.log").write_text(log or "")
    report = {"fit": name, "exit": code, "seconds": round(time.perf_counter() - start, 1)}
    checkpoints = sorted(
        root.glob("*/version_*/checkpoints/last.ckpt"), key=lambda p: int(p.parents[1].name[8:])
    )
    if checkpoints:
        run = checkpoints[-1].parents[1]
        report["run"] = str(run)
        report["val"] = last_validation(run)
        report["finite"] = bool(report["val"]) and all(math.isfinite(v) for v in report["val"].values())
    else:
        report["last_lines"] = [line for line in (log or "").splitlines() if line.strip()][-5:]
    return report


# The child of validate(): one fp32 validation per accelerator named in its first argument, one JSON line each.
VALIDATE = """
import json, sys
from rrn_lightning.cli import cli_main
for accelerator in sys.argv[1].split(","):
    cli = cli_main([*sys.argv[2:], f"--trainer.accelerator={accelerator}"])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    print("METRICS", accelerator, json.dumps(metrics), flush=True)
"""


def validate(
    run: str, config: Path, overrides: list[str], accelerators: list[str], timeout: int
) -> dict[str, dict[str, float]]:
    """fp32 validations of a run's last.ckpt on each of ``accelerators``, one device each, one after the other in
    one fresh process (one start-up, not one per accelerator) -> ``{accelerator: {metric: value}}``."""
    command = [sys.executable, "-c", VALIDATE, ",".join(accelerators), "validate", "--config", str(config)]
    command += [*overrides, f"--ckpt_path={Path(run) / 'checkpoints' / 'last.ckpt'}", "--trainer.devices=1"]
    command += ["--trainer.precision=32-true", "--trainer.enable_progress_bar=false"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    found = {}
    for line in result.stdout.splitlines():
        if line.startswith("METRICS "):
            _, accelerator, metrics = line.split(" ", 2)
            found[accelerator] = json.loads(metrics)
    return found


def largest_difference(a: dict[str, float], b: dict[str, float]) -> float | None:
    """The largest relative difference over the metrics both have; None when they share none."""
    return max((abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in a.keys() & b.keys()), default=None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--accelerator", default="gpu", help="gpu (default) or cpu, for a dry run of the script"
    )
    parser.add_argument("--precisions", nargs="+", default=["bf16-mixed", "16-mixed"])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--cores", nargs="+", default=["rmc", "lstm"], choices=["rmc", "lstm"])
    parser.add_argument(
        "--scale", default="paper", choices=["paper", "cpu"], help="GPU-sized or CPU-sized configs"
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--compile-step", action="store_true", help="the RMC fits with compile_step=true")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per fit or validation")
    parser.add_argument("--out", type=Path, default=Path("fit_matrix_out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    common = [f"--trainer.accelerator={args.accelerator}", f"--trainer.max_steps={args.steps}"]
    common += [
        "--trainer.max_time=null",
        "--trainer.max_epochs=-1",
        f"--trainer.val_check_interval={args.steps}",
    ]
    common += ["--trainer.check_val_every_n_epoch=null"]
    report: dict = {"accelerator": args.accelerator, "scale": args.scale, "steps": args.steps, "fits": []}
    first: dict[tuple[str, str], dict] = {}
    for family in args.families:
        for core in args.cores:
            config = config_of(family, core, args.scale)
            overrides = FAMILIES[family][1] + common
            if core == "rmc" and args.compile_step:
                overrides = [*overrides, "--model.init_args.compile_step=true"]
            for precision in args.precisions:
                name = f"{family}_{core}_{precision}"
                result = fit(
                    args.out, name, config, [*overrides, f"--trainer.precision={precision}"], args.timeout
                )
                report["fits"].append(result)
                print(json.dumps(result), flush=True)
                if "run" in result:
                    first.setdefault((family, core), result)

    report["device_agreement"] = []  # on --accelerator cpu, CPU against CPU: only a dry run of this code
    for (family, core), result in first.items():
        config, overrides = config_of(family, core, args.scale), FAMILIES[family][1]
        entry = {"fit": result["fit"]}
        try:
            both = validate(result["run"], config, overrides, ["cpu", args.accelerator], args.timeout)
            cpu, device = both["cpu"], both[args.accelerator]
            entry.update(cpu=cpu, device=device, largest_relative_difference=largest_difference(device, cpu))
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            entry["error"] = str(error)[-1000:]
        report["device_agreement"].append(entry)
        print(json.dumps(entry), flush=True)

    import torch

    gpus = torch.cuda.device_count() if args.accelerator == "gpu" else 0
    if gpus < 2:
        report["ddp"] = {"skipped": f"{gpus} GPU(s); DDP needs 2 or more"}
    else:
        report["ddp"] = []
        for family in args.families:
            config = config_of(family, "rmc", args.scale)
            overrides = FAMILIES[family][1] + common
            result = fit(args.out, f"{family}_rmc_ddp", config, overrides, args.timeout, devices=2)
            if "run" in result:
                try:
                    one = validate(
                        result["run"], config, FAMILIES[family][1], [args.accelerator], args.timeout
                    )
                    one = one[args.accelerator]
                    result.update(
                        one_device=one, largest_relative_difference=largest_difference(result["val"], one)
                    )
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    result["error"] = str(error)[-1000:]
            report["ddp"].append(result)
            print(json.dumps(result), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
