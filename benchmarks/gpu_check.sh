#!/usr/bin/env bash
# The GPU check: everything a lent CUDA machine should confirm, in one run that prints one JSON report last.
#
#   bash benchmarks/gpu_check.sh                # from the repository root, the package installed (pip install -e .)
#   GPU_CHECK_QUICK=1 bash benchmarks/gpu_check.sh   # fewer timing steps, for a short lease
#
# 1. tests/test_cuda.py: the RMC against the plain reference on CUDA in fp32, bf16 and fp16 autocast, eager and
#    compiled ("default" and "reduce-overhead", with CUDA graphs), padded batches, the LSTM under autocast, and short
#    bf16-mixed / 16-mixed fits.
# 2. benchmarks/speed.py on CUDA: reference, RMC eager, RMC with its step compiled (inductor's default mode) and
#    nn.LSTM (cuDNN) at equal parameters, fp32 and bf16, with peak memory; then the compiled column again in
#    "reduce-overhead" mode, the measurement that decides what compile_step=true should mean on CUDA.
# 3. A short bf16-mixed fit of each task family through the rrn CLI (Nth farthest, Learning to Execute, word LM on
#    the tests' public-domain corpus), RMC with its step compiled.
# Each stage has its own time limit, so one that hangs does not take the others with it. Outputs go to
# ${GPU_CHECK_OUT:-gpu_check_out}/; the last line on stdout is the JSON report.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${GPU_CHECK_OUT:-gpu_check_out}"
mkdir -p "$out"
steps=10 reps=5
if [[ -n "${GPU_CHECK_QUICK:-}" ]]; then steps=3 reps=3; fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1

timeout 900 python -m pytest tests/test_cuda.py -q -p no:cacheprovider --junitxml="$out/test_cuda.xml" \
    > "$out/test_cuda.log" 2>&1
echo "test_cuda exit $?" >> "$out/test_cuda.log"

timeout 900 python benchmarks/speed.py --device cuda --steps "$steps" --reps "$reps" \
    > "$out/speed.log" 2>&1
timeout 600 python benchmarks/speed.py --device cuda --steps "$steps" --reps "$reps" --preset all \
    --precision bf16 --models rmc rmc_compiled --compile-mode reduce-overhead > "$out/speed_cudagraphs.log" 2>&1

fit() {  # name, then rrn fit arguments
    local name="$1"; shift
    local start=$SECONDS
    timeout 600 rrn fit "$@" --trainer.accelerator=gpu --trainer.devices=1 --trainer.precision=bf16-mixed \
        --trainer.max_steps=60 --trainer.limit_val_batches=4 --trainer.val_check_interval=30 \
        --trainer.default_root_dir="$out/runs/$name" > "$out/fit_$name.log" 2>&1
    echo "{\"fit\": \"$name\", \"exit\": $?, \"seconds\": $((SECONDS - start))}" >> "$out/fits.jsonl"
}
rm -f "$out/fits.jsonl"
fit nth_farthest --config experiments/nth_farthest/rmc.yaml --model.init_args.compile_step=true
fit learn_to_execute --config experiments/learn_to_execute/rmc.yaml --model.init_args.compile_step=true
fit word_lm --config experiments/language_modelling/ptb_rmc_small.yaml --model.init_args.compile_step=true \
    --data.init_args.corpus=tests/data/gettysburg --data.init_args.batch_size=4 --data.init_args.eval_batch_size=4 \
    --trainer.max_time=null --trainer.val_check_interval=1.0  # the tiny corpus has fewer than 30 windows an epoch

python - "$out" <<'PY'
import json
import re
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
fits = []
for line in (out / "fits.jsonl").read_text().splitlines() if (out / "fits.jsonl").exists() else []:
    fit = json.loads(line)
    log = (out / f"fit_{fit['fit']}.log").read_text(errors="replace")
    fit["last_lines"] = [l for l in log.splitlines() if l.strip()][-3:]
    fit["val_metrics"] = re.findall(r"val/\w+[=:]\s*[-0-9.e]+", log)[-4:]
    fits.append(fit)
report["fits"] = fits
print(json.dumps(report))
PY
