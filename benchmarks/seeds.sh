#!/usr/bin/env bash
# Several seeds of configs, each `rrn fit` then `rrn test` of its last checkpoint, JOBS runs at a time with one
# thread each (2 cores: JOBS=2), into ROOT/<config name>_seed<N>; then `rrn compare ROOT` shows a row per config.
#
#   ROOT=runs/seeds SEEDS="0 1 2" bash benchmarks/seeds.sh experiments/nth_farthest/rmc_cpu.yaml \
#       experiments/nth_farthest/lstm_cpu.yaml [-- extra rrn arguments]
set -euo pipefail
ROOT=${ROOT:-runs/seeds}
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-2}
configs=()
while (($#)) && [[ $1 != "--" ]]; do configs+=("$1"); shift; done
[[ ${1:-} == "--" ]] && shift
extra=("$@")
if ((${#configs[@]} == 0)); then
  echo "seeds.sh: give one or more config files, e.g. experiments/nth_farthest/rmc_cpu.yaml" >&2
  exit 2
fi
mkdir -p "$ROOT"

one_run() {  # config seed: fit, then test the last checkpoint, logging into the same run
  local config=$1 seed=$2 name
  name="$(basename "$(dirname "$config")")_$(basename "$config" .yaml)_seed$seed"
  local common=(--config "$config" --seed_everything "$seed" --run_name "$name" --trainer.default_root_dir "$ROOT"
    --trainer.enable_progress_bar=false "${extra[@]}")
  OMP_NUM_THREADS=1 rrn fit "${common[@]}" > "$ROOT/$name.fit.log" 2>&1
  OMP_NUM_THREADS=1 rrn test "${common[@]}" --ckpt_path last > "$ROOT/$name.test.log" 2>&1
  echo "$name done"
}
export -f one_run
export ROOT
export EXTRA_ARGS="$( ((${#extra[@]})) && printf '%q ' "${extra[@]}")"  # quoted: an argument may hold spaces
# Seed by seed, the configs of one seed side by side (with JOBS equal to the number of configs, each pair shares the
# machine for its whole run, so wall-time budgets stay comparable).
for seed in $SEEDS; do for config in "${configs[@]}"; do echo "$config $seed"; done; done |
  xargs -P "$JOBS" -L 1 bash -c 'eval "extra=($EXTRA_ARGS)"; one_run "$0" "$1"'
rrn compare "$ROOT"
