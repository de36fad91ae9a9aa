"""Does bf16 autocast train like fp32? The same short run twice, from the same seed and the same batches.

    python benchmarks/bf16_training.py --steps 300 --threads 2

The run is the CPU Nth farthest task (4 vectors of 4 features) with the core and head of
``experiments/nth_farthest/rmc_cpu.yaml`` (or ``--core lstm``), Adam at 1e-3, batch 256: within a few hundred steps
the loss falls from ln 4 = 1.386 to about 0.85. Reported: the mean training loss over the last 50 steps and the
validation loss and accuracy at the end, in fp32 and in bf16 autocast, their relative difference, and the time.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from datamodules import make_nth_farthest  # noqa: E402
from rrn_lightning import LSTMCore, RelationalMemory  # noqa: E402
from rrn_lightning.tasks.base import mlp  # noqa: E402


def train(precision: str, core_name: str, steps: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    K, Fe = 4, 4
    if core_name == "rmc":
        core = RelationalMemory(Fe + 3 * K, mem_slots=4, head_size=32, num_heads=2)
    else:
        core = LSTMCore(Fe + 3 * K, hidden_size=90)
    head = mlp(core.output_size, (256, 256, 256, 256), K)
    params = [*core.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    data = torch.Generator().manual_seed(seed)
    val_x, val_y, _, _ = make_nth_farthest(4096, K, Fe, torch.Generator().manual_seed(1))

    def cast():
        if precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        x, y, _, _ = make_nth_farthest(256, K, Fe, data)
        with cast():
            outs, _ = core(x)
            logits = head(outs[:, -1])
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    with torch.no_grad(), cast():
        outs, _ = core(val_x)
        logits = head(outs[:, -1]).float()
    tail = losses[-50:]
    return {
        "train_loss_last_50": round(sum(tail) / len(tail), 4),
        "val_loss": round(F.cross_entropy(logits, val_y).item(), 4),
        "val_acc": round((logits.argmax(-1) == val_y).float().mean().item(), 4),
        "first_loss": round(losses[0], 4),
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--core", choices=["rmc", "lstm"], default="rmc")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = {"core": args.core, "steps": args.steps, "threads": torch.get_num_threads()}
    for precision in ("fp32", "bf16"):
        report[precision] = train(precision, args.core, args.steps)
        print(f"{precision}: {report[precision]}", flush=True)
    for key in ("train_loss_last_50", "val_loss"):
        report[f"{key}_relative_difference"] = round(abs(report["bf16"][key] / report["fp32"][key] - 1), 4)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
