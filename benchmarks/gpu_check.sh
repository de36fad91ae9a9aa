#!/usr/bin/env bash
# The GPU check: everything a lent CUDA machine should confirm, in one run that prints one JSON report last.
#
#   bash benchmarks/gpu_check.sh                # from the repository root, the package installed (pip install -e .)
#   GPU_CHECK_QUICK=1 bash benchmarks/gpu_check.sh   # fewer timing steps and fit steps, for a short lease
#   bash benchmarks/gpu_check.sh fits           # only the named stages (tests, speed, fits), e.g. one per call
#                                               # where a lease limits each command's time
#
# 1. tests/test_cuda.py: the RMC against the plain reference on CUDA in fp32, bf16 and fp16 autocast, eager and
#    compiled ("default" and "reduce-overhead", with CUDA graphs), padded batches, the LSTM under autocast, and short
#    bf16-mixed / 16-mixed fits.
# 2. benchmarks/speed.py on CUDA: reference, RMC eager, RMC with its step compiled (inductor's default mode) and
#    nn.LSTM (cuDNN) at equal parameters, fp32 and bf16, with peak memory; then the compiled column again in
#    "reduce-overhead" mode, the measurement that decides what compile_step=true should mean on CUDA.
# 3. benchmarks/fit_matrix.py: a short fit of every task family (Nth farthest, sorting, Learning to Execute, word LM
#    on the tests' public-domain corpus) x both cores (RMC eager: test_cuda covers the compiled step; LSTM) x bf16-mixed and 16-mixed,
#    through the rrn CLI at the GPU-sized configs; each checkpoint validated in fp32 on the CPU and on the GPU
#    (the metrics should agree to rounding); with 2+ GPUs, a DDP fit per family against a one-GPU validation.
# Each stage has its own time limit, so one that hangs does not take the others with it. Outputs go to
# ${GPU_CHECK_OUT:-gpu_check_out}/; the last line on stdout is the JSON report.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${GPU_CHECK_OUT:-gpu_check_out}"
mkdir -p "$out"
steps=10 reps=5 fit_steps=40
if [[ -n "${GPU_CHECK_QUICK:-}" ]]; then steps=3 reps=3 fit_steps=20; fi
stages="${*:-tests speed fits}"
want() { [[ " $stages " == *" $1 "* ]]; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1

if want tests; then
    timeout 900 python -m pytest tests/test_cuda.py -q -p no:cacheprovider --junitxml="$out/test_cuda.xml" \
        > "$out/test_cuda.log" 2>&1
    echo "test_cuda exit $?" >> "$out/test_cuda.log"
fi

if want speed; then
    timeout 900 python benchmarks/speed.py --device cuda --steps "$steps" --reps "$reps" > "$out/speed.log" 2>&1
    timeout 600 python benchmarks/speed.py --device cuda --steps "$steps" --reps "$reps" --preset all \
        --precision bf16 --models rmc rmc_compiled --compile-mode reduce-overhead > "$out/speed_cudagraphs.log" 2>&1
fi

if want fits; then
    timeout 1500 python benchmarks/fit_matrix.py --accelerator gpu --steps "$fit_steps" \
        --out "$out/fit_matrix" > "$out/fit_matrix.log" 2>&1
fi

python - "$out" <<'PY'
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

out = Path(sys.argv[1])
report = {"gpu": (out / "gpu.txt").read_text().strip()}
try:
    suite = ET.parse(out / "test_cuda.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None]
    report["test_cuda"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    report["test_cuda"]["failed"] = failed
except (OSError, ET.ParseError) as error:
    report["test_cuda"] = {"error": str(error)}
for name in ("speed", "speed_cudagraphs"):
    lines = (out / f"{name}.log").read_text().strip().splitlines() if (out / f"{name}.log").exists() else []
    try:
        report[name] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        report[name] = {"error": "\n".join(lines[-5:])}
lines = (out / "fit_matrix.log").read_text().strip().splitlines() if (out / "fit_matrix.log").exists() else []
try:
    report["fit_matrix"] = json.loads(lines[-1])
except (IndexError, json.JSONDecodeError):
    report["fit_matrix"] = {"error": "\n".join(lines[-5:])}
print(json.dumps(report))
PY
