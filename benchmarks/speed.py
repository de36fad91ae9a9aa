"""Training and inference speed of our RMC, the plain reference RMC and nn.LSTM, side by side on the same inputs.

    python benchmarks/speed.py                       # every preset, fp32 and bf16 autocast, this machine's threads
    python benchmarks/speed.py --preset lm --threads 2 --precision fp32
    python benchmarks/speed.py --preset default --steps 2 --reps 1   # smoke test

A training step is forward over the whole sequence, a loss on every output, backward and an Adam step; inference
is the forward alone under ``torch.inference_mode``. Each figure is the median over ``--reps`` repetitions of
``--steps`` steps, after warm-up. Ratios are taken against the plain reference (``rrn_lightning/reference.py``) in
fp32. The LSTM has the RMC's core parameter count (one layer, hidden size solved for it).

FLOPs are counted analytically from the shapes (matrix products only; elementwise work is not counted):
"useful" FLOPs are those that can change the output (with one block, the input rows' queries, attention, MLP and
LayerNorms are dropped unused), "reference" FLOPs are what the plain reference executes. Training counts three times
the forward (forward, and two products per product in backward).

Prints one line per measurement, then a last line holding one JSON object with every figure and the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rrn_lightning import LSTMCore, RelationalMemory  # noqa: E402
from rrn_lightning.cores import ReferenceRelationalMemory  # noqa: E402


@dataclass(frozen=True)
class Preset:
    mem_slots: int
    num_heads: int
    head_size: int
    input_size: int
    batch_size: int
    steps: int
    key_size: int | None = None
    attention_mlp_layers: int = 2
    num_blocks: int = 1


PRESETS = {
    "default": Preset(mem_slots=4, num_heads=4, head_size=64, input_size=64, batch_size=32, steps=64),
    "nth": Preset(mem_slots=8, num_heads=8, head_size=32, input_size=40, batch_size=1600, steps=8),
    "lm": Preset(
        mem_slots=1,
        num_heads=4,
        head_size=192,
        key_size=64,
        attention_mlp_layers=3,
        input_size=192,
        batch_size=64,
        steps=100,
    ),
}


def rmc_flops_per_step(p: Preset, useful: bool) -> int:
    """Matrix-product FLOPs of one RMC step for the whole batch (forward only)."""
    B, N, n, D = p.batch_size, p.mem_slots, 1, p.input_size
    H, h = p.num_heads, p.head_size
    k = p.key_size or h
    M, R = H * h, N + n
    G = M  # unit gates
    flops = 2 * B * n * D * M  # input projection
    for block in range(p.num_blocks):
        last = block == p.num_blocks - 1
        q_rows = N if (useful and last) else R  # rows whose query, attention output and MLP matter
        flops += 2 * B * R * M * H * (k + h)  # keys and values of every row
        flops += 2 * B * q_rows * M * H * k  # queries
        flops += 2 * B * H * q_rows * R * (k + h)  # scores and weighted values
        flops += p.attention_mlp_layers * 2 * B * q_rows * M * M
    flops += 2 * B * n * M * 2 * G + 2 * B * N * M * 2 * G  # gates: input part and memory part
    return flops


def lstm_hidden_for(params: int, input_size: int) -> int:
    """Hidden size of a one-layer nn.LSTM whose parameter count is closest to ``params``."""
    best = 1
    for hidden in range(1, 8192):
        count = 4 * hidden * (input_size + hidden + 2)
        if abs(count - params) < abs(4 * best * (input_size + best + 2) - params):
            best = hidden
        if count > params:
            break
    return best


def autocast(device: str, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_model(model, xs, device, precision, steps, reps, train: bool) -> dict:
    """Median ms per step; peak CUDA memory or, on CPU, the bytes autograd saves for backward."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4) if train else None
    saved = [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    def one_step(measure_saved: bool = False):
        if train:
            with autocast(device, precision):
                hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if measure_saved else None
                with hooks or contextlib.nullcontext():
                    outs, _ = model(xs)
                if measure_saved:  # what the fused time loop keeps itself, outside autograd's saved tensors
                    saved[0] += getattr(model, "_saved_bytes", 0)
                loss = outs.float().square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            with torch.inference_mode(), autocast(device, precision):
                model(xs)

    for _ in range(2):  # warm-up
        one_step()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    one_step(measure_saved=train)
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            one_step()
        sync(device)
        times.append((time.perf_counter() - start) / steps * 1e3)
    ms = statistics.median(times)
    tokens = xs.shape[0] * xs.shape[1]
    result = {"ms_per_step": round(ms, 3), "tokens_per_s": round(tokens / ms * 1e3, 1)}
    if device == "cuda":
        result["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    elif train:
        result["saved_activations_mb"] = round(saved[0] / 2**20, 1)
    return result


def mm_gflops(device: str, dtype: torch.dtype = torch.float32, size: int = 1024, reps: int = 20) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b)
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def run_preset(name: str, p: Preset, args) -> dict:
    device = args.device
    torch.manual_seed(0)
    rmc = RelationalMemory(
        p.input_size,
        mem_slots=p.mem_slots,
        head_size=p.head_size,
        num_heads=p.num_heads,
        num_blocks=p.num_blocks,
        key_size=p.key_size,
        attention_mlp_layers=p.attention_mlp_layers,
    ).to(device)
    reference = ReferenceRelationalMemory.from_core(rmc).to(device)
    params = sum(q.numel() for q in rmc.parameters())
    hidden = lstm_hidden_for(params, p.input_size)
    lstm = LSTMCore(p.input_size, hidden).to(device)  # nn.LSTM behind our core interface
    xs = torch.randn(p.batch_size, p.steps, p.input_size, device=device)

    useful = rmc_flops_per_step(p, useful=True) * p.steps
    executed_ref = rmc_flops_per_step(p, useful=False) * p.steps
    lstm_flops = 2 * p.batch_size * p.steps * 4 * hidden * (p.input_size + hidden)
    out = {
        "preset": asdict(p),
        "rmc_params": params,
        "lstm_hidden": hidden,
        "lstm_params": sum(q.numel() for q in lstm.parameters()),
        "useful_gflop_per_train_step": round(3 * useful / 1e9, 3),
        "reference_gflop_per_train_step": round(3 * executed_ref / 1e9, 3),
        "results": {},
    }
    models = {"rmc": (rmc, useful), "reference": (reference, useful), "lstm": (lstm, lstm_flops)}
    for precision in args.precision:
        for model_name, (model, flops) in models.items():
            for mode in ("train", "inference"):
                if model_name == "reference" and precision != "fp32":
                    continue  # ratios are taken against the reference in fp32
                r = time_model(model, xs, device, precision, args.steps, args.reps, train=mode == "train")
                factor = 3 if mode == "train" else 1
                r["useful_gflops_per_s"] = round(factor * flops / (r["ms_per_step"] / 1e3) / 1e9, 1)
                key = f"{model_name}/{precision}/{mode}"
                out["results"][key] = r
                print(f"[{name}] {key}: {r}", flush=True)
    ref_train = out["results"]["reference/fp32/train"]["tokens_per_s"] if "fp32" in args.precision else None
    ref_infer = (
        out["results"]["reference/fp32/inference"]["tokens_per_s"] if "fp32" in args.precision else None
    )
    ratios = {}
    if ref_train:
        for key, r in out["results"].items():
            if key.startswith("reference/"):
                continue
            base = ref_train if key.endswith("/train") else ref_infer
            ratios[f"{key} vs reference/fp32"] = round(r["tokens_per_s"] / base, 3)
    out["ratios"] = ratios
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=[*PRESETS, "all"], default="all")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--steps", type=int, default=10, help="training or inference steps per repetition")
    parser.add_argument("--reps", type=int, default=5, help="repetitions; the median is reported")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = list(PRESETS) if args.preset == "all" else [args.preset]
    report = {
        "torch": torch.__version__,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "mm_1024_fp32_gflops": round(mm_gflops(args.device), 1),
        "mm_1024_bf16_gflops": round(mm_gflops(args.device, torch.bfloat16), 1),
        "presets": {},
    }
    for name in names:
        report["presets"][name] = run_preset(name, PRESETS[name], args)
    for preset in report["presets"].values():
        train = preset["results"].get("rmc/fp32/train")
        if train:
            preset["rmc_fp32_train_useful_fraction_of_mm"] = round(
                train["useful_gflops_per_s"] / report["mm_1024_fp32_gflops"], 3
            )
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
