"""What writing last.ckpt costs: torch.save to a temporary file, fsync, rename (RunCheckpoint's atomic write), for
the quick start's model with Adam's two moments, and for a model of PTB small's size with plain SGD. Prints JSON.

    python benchmarks/checkpoint_write.py
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rrn_lightning.cli import cli_main

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "nth_farthest" / "rmc_cpu.yaml"


def atomic_write(obj, path: Path) -> float:
    start = time.perf_counter()
    partial = path.with_name(f".{path.name}.part")
    torch.save(obj, partial)
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return time.perf_counter() - start


def main() -> None:
    model = cli_main(["--config", str(CONFIG)], run=False).model
    state = model.state_dict()
    moments = [{"exp_avg": p.detach().clone(), "exp_avg_sq": p.detach().clone()} for p in model.parameters()]
    quick = {"state_dict": state, "optimizer_states": [{"state": dict(enumerate(moments))}]}
    ptb_small = {
        "state_dict": {"weights": torch.randn(4_653_200)},
        "optimizer_states": [],
    }  # 4,653,200 parameters
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, obj, reps in (("quick_start", quick, 10), ("ptb_small", ptb_small, 5)):
            path = Path(folder) / f"{name}.ckpt"
            seconds = [atomic_write(obj, path) for _ in range(reps)]
            out[f"{name}_mb"] = round(path.stat().st_size / 1e6, 2)
            out[f"{name}_write_s"] = round(statistics.median(seconds), 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
