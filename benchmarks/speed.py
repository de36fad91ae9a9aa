"""Training and inference speed and memory of our RMC (eager and with its step compiled), the plain reference RMC
and nn.LSTM, side by side on the same inputs in one process.

    python benchmarks/speed.py                       # every preset, fp32 and bf16 autocast, this machine's threads
    python benchmarks/speed.py --preset lm --threads 2 --precision fp32 --profile
    python benchmarks/speed.py --preset tiny --steps 1 --reps 1 --precision fp32   # smoke test

A training step is forward over the whole sequence, a loss on every output, backward and an Adam step; inference
is the forward alone under ``torch.inference_mode``. Every column is warmed up first (``first_call_s`` is its first
step, which for ``rmc_compiled`` includes the compile), then all are timed in turn, ``--reps`` rounds of ``--steps``
steps, and each figure is the median of its rounds: what slows the machine down slows every column alike. Ratios
are taken against the plain reference (``rrn_lightning/cores/reference.py``) in fp32. The LSTM has the RMC's core
parameter count (one layer, hidden size solved for it). ``peak_memory_mb`` is the peak memory of one step beyond
what was resident before it (CUDA: the allocator's peak; CPU: the peak resident set), ``saved_activations_mb``
what autograd saved for backward.

FLOPs are counted analytically from the shapes (matrix products only; elementwise work is not counted):
"useful" FLOPs are those that can change the output (with one block, the input rows' queries, attention, MLP and
LayerNorms are dropped unused), "reference" FLOPs are what the plain reference executes. Training counts three times
the forward (forward, and two products per product in backward).

Prints one line per measurement, then a last line holding one JSON object with every figure and the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rrn_lightning import LSTMCore, RelationalMemory  # noqa: E402
from rrn_lightning.cores import ReferenceRelationalMemory  # noqa: E402
from rrn_lightning.cores.compiling import MODES, resolve_mode  # noqa: E402


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
    "tiny": Preset(mem_slots=2, num_heads=2, head_size=8, input_size=8, batch_size=4, steps=4),  # smoke tests
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


class Memory:
    """Peak memory of a stretch of work beyond what was resident when it started: CUDA's allocator statistics on a
    GPU; on a Linux CPU the process's peak resident set (VmHWM, reset through /proc/self/clear_refs) after freed
    heap memory is handed back to the system (malloc_trim), so that one model's freed buffers do not hide the next
    one's. None where neither is available."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._libc = None
        if device == "cpu" and Path("/proc/self/clear_refs").exists():
            with contextlib.suppress(OSError):
                self._libc = ctypes.CDLL("libc.so.6")
        self._start = 0

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
        raise KeyError(field)

    def start(self) -> None:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        elif self._libc is not None:
            self._libc.malloc_trim(0)
            # "5" resets the peak resident set (VmHWM) to the current one.
            Path("/proc/self/clear_refs").write_text("5")
            self._start = self._status("VmRSS")

    def peak_mb(self) -> float | None:
        if self.device == "cuda":
            return round((torch.cuda.max_memory_allocated() - self._start) / 2**20, 1)
        if self._libc is None:
            return None
        return round((self._status("VmHWM") - self._start) / 2**20, 1)


@dataclass
class Runner:
    """One column of the table: a model in one precision, training or inference, and what was measured of it."""

    key: str
    model: torch.nn.Module
    precision: str
    train: bool
    optimizer: torch.optim.Optimizer | None = None
    times_ms: list = field(default_factory=list)
    result: dict = field(default_factory=dict)

    def step(self, xs: torch.Tensor, device: str, hooks=None) -> None:
        if self.train:
            with autocast(device, self.precision), hooks or contextlib.nullcontext():
                outs, _ = self.model(xs)
                loss = outs.float().square().mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        else:
            with torch.inference_mode(), autocast(device, self.precision):
                self.model(xs)


def timed(runner: Runner, xs: torch.Tensor, device: str, steps: int = 1) -> float:
    """Seconds per step of ``steps`` steps of ``runner``, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        runner.step(xs, device)
    sync(device)
    return (time.perf_counter() - start) / steps


def measure(runners: list[Runner], xs: torch.Tensor, device: str, steps: int, reps: int) -> None:
    """Warm every runner up (timing the first call: a compiled step compiles there), measure its peak memory and
    the activations autograd saves, then time the runners interleaved, ``reps`` rounds of ``steps`` steps each, so
    that a change in the machine's speed touches them all alike."""
    memory = Memory(device)
    for r in runners:
        r.result["first_call_s"] = round(timed(r, xs, device), 3)
        r.step(xs, device)
        r.result["warm_step_s"] = round(timed(r, xs, device), 3)
        memory.start()
        saved = [0]

        def pack(tensor, saved=saved):
            saved[0] += tensor.numel() * tensor.element_size()
            return tensor

        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if r.train else None
        r.step(xs, device, hooks)
        sync(device)
        r.result["peak_memory_mb"] = memory.peak_mb()
        if r.train:
            r.result["saved_activations_mb"] = round(saved[0] / 2**20, 1)
    for _ in range(reps):
        for r in runners:
            r.times_ms.append(timed(r, xs, device, steps) * 1e3)
    tokens = xs.shape[0] * xs.shape[1]
    for r in runners:
        ms = statistics.median(r.times_ms)
        r.result = {"ms_per_step": round(ms, 3), "tokens_per_s": round(tokens / ms * 1e3, 1), **r.result}


def profile_step(runner: Runner, xs: torch.Tensor, device: str, top: int = 12) -> list[dict]:
    """The operators that take the most time in two steps of ``runner`` (self time, ``torch.profiler``)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(2):
            runner.step(xs, device)
        sync(device)
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    table = sorted(averages, key=lambda e: getattr(e, sort), reverse=True)[:top]
    total = sum(getattr(e, sort) for e in averages)
    return [
        {
            "op": e.key,
            "calls_per_step": e.count // 2,
            "ms_per_step": round(getattr(e, sort) / 2e3, 2),
            "share": round(getattr(e, sort) / total, 3),
        }
        for e in table
    ]


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


MODELS = ("reference", "rmc", "rmc_compiled", "lstm")


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
    compiled = RelationalMemory(**rmc.init_kwargs, compile_step=args.compile_mode).to(device)
    compiled.load_state_dict(rmc.state_dict())
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
    models = {"reference": reference, "rmc": rmc, "rmc_compiled": compiled, "lstm": lstm}
    flops = {"reference": useful, "rmc": useful, "rmc_compiled": useful, "lstm": lstm_flops}
    runners = []
    for precision in args.precision:
        for model_name in args.models:
            if model_name == "reference" and precision != "fp32":
                continue  # ratios are taken against the reference in fp32
            for mode in ("train", "inference"):
                model = models[model_name]
                optimizer = torch.optim.Adam(model.parameters(), lr=1e-4) if mode == "train" else None
                key = f"{model_name}/{precision}/{mode}"
                runners.append(Runner(key, model, precision, mode == "train", optimizer))
    measure(runners, xs, device, args.steps, args.reps)
    for r in runners:
        factor = 3 if r.train else 1
        model_name = r.key.split("/")[0]
        r.result["useful_gflops_per_s"] = round(
            factor * flops[model_name] / (r.result["ms_per_step"] / 1e3) / 1e9, 1
        )
        out["results"][r.key] = r.result
        print(f"[{name}] {r.key}: {r.result}", flush=True)
    if args.profile:
        out["profile"] = {
            r.key: profile_step(r, xs, device)
            for r in runners
            if r.key in ("rmc/fp32/train", "rmc_compiled/fp32/train")
        }
    ratios = {}
    base = {mode: out["results"].get(f"reference/fp32/{mode}") for mode in ("train", "inference")}
    for key, r in out["results"].items():
        mode = key.rsplit("/", 1)[1]
        if not key.startswith("reference/") and base[mode]:
            ratios[f"{key} vs reference/fp32"] = round(r["tokens_per_s"] / base[mode]["tokens_per_s"], 3)
    out["ratios"] = ratios
    return out


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "cpu"


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
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="what to measure")
    parser.add_argument("--profile", action="store_true", help="also profile the RMC's fp32 training steps")
    parser.add_argument(
        "--compile-mode",
        default=True,
        type=lambda v: True if v == "true" else v,
        choices=[True, *MODES],
        help="rmc_compiled's compile_step: true (the default) or a torch.compile mode",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = [n for n in PRESETS if n != "tiny"] if args.preset == "all" else [args.preset]
    report = {
        "torch": torch.__version__,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else _cpu_name(),
        "mm_1024_fp32_gflops": round(mm_gflops(args.device), 1),
        # bf16 products without hardware support (AVX-512 BF16 / AMX) run at ~1 GFLOP/s: measured only when asked.
        "mm_1024_bf16_gflops": round(mm_gflops(args.device, torch.bfloat16, reps=3), 1)
        if "bf16" in args.precision
        else None,
        "compile_mode": resolve_mode(args.compile_mode, torch.device(args.device)),
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
