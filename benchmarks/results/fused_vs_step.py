"""Lab script (issue 11): the removed hand-written loop against the step written once, interleaved in one process.

The old package is commit 30362a3 (the last with ``rrn_lightning/_fused.py``), copied under another name:

    git worktree add /tmp/old 30362a3 && cp -r /tmp/old/rrn_lightning /tmp/oldpkg/rrn_old
    PYTHONPATH=/tmp/oldpkg python benchmarks/results/fused_vs_step.py --preset lm

fp32 training steps of a ``benchmarks/speed.py`` preset: old fused loop, old step-by-step loop, new eager step, new
compiled step, the plain reference; the same weights and inputs; median of ``--reps`` rounds of ``--steps`` steps.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from rrn_old.memory import RelationalMemory as OldRMC  # noqa: E402
from speed import PRESETS  # noqa: E402

from rrn_lightning import RelationalMemory  # noqa: E402
from rrn_lightning.cores import ReferenceRelationalMemory  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--preset", default="lm")
parser.add_argument("--steps", type=int, default=2)
parser.add_argument("--reps", type=int, default=3)
args = parser.parse_args()
torch.set_num_threads(2)
p = PRESETS[args.preset]
kw = dict(
    mem_slots=p.mem_slots,
    head_size=p.head_size,
    num_heads=p.num_heads,
    key_size=p.key_size,
    attention_mlp_layers=p.attention_mlp_layers,
)
torch.manual_seed(0)
new = RelationalMemory(p.input_size, **kw)
compiled = RelationalMemory(p.input_size, **kw, compile_step=True)
compiled.load_state_dict(new.state_dict())
fused, stepwise = OldRMC(p.input_size, **kw), OldRMC(p.input_size, **kw)
for old, flag in ((fused, True), (stepwise, False)):
    old.load_state_dict(new.state_dict())
    old.fused = flag
models = {
    "old fused loop": fused,
    "old step by step": stepwise,
    "new step, eager": new,
    "new step, compiled": compiled,
    "reference": ReferenceRelationalMemory.from_core(new),
}
xs = torch.randn(p.batch_size, p.steps, p.input_size)
optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-4) for name, m in models.items()}


def step(name):
    outs, _ = models[name](xs)
    loss = outs.square().mean()
    optimizers[name].zero_grad(set_to_none=True)
    loss.backward()
    optimizers[name].step()


first = {}
for name in models:
    start = time.perf_counter()
    step(name)
    first[name] = round(time.perf_counter() - start, 2)
    step(name)
times = {name: [] for name in models}
for _ in range(args.reps):
    for name in models:
        start = time.perf_counter()
        for _ in range(args.steps):
            step(name)
        times[name].append((time.perf_counter() - start) / args.steps * 1e3)
ms = {name: round(statistics.median(t), 1) for name, t in times.items()}
print(json.dumps({"preset": args.preset, "ms_per_train_step": ms, "first_call_s": first}))
