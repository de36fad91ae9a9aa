#!/bin/bash
# Train one config with DDP over several machines without SLURM, with torchrun (PyTorch's elastic launcher).
# Run this script on every machine, with the same MASTER_ADDR and NNODES and each machine's own NODE_RANK:
#
#   # machine 0 (its address, reachable from the others, is 10.0.0.1):
#   MASTER_ADDR=10.0.0.1 NNODES=2 NODE_RANK=0 bash experiments/cluster/torchrun.sh experiments/nth_farthest/rmc.yaml
#   # machine 1:
#   MASTER_ADDR=10.0.0.1 NNODES=2 NODE_RANK=1 bash experiments/cluster/torchrun.sh experiments/nth_farthest/rmc.yaml
#
# torchrun starts one process per GPU and sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for each;
# Lightning's torchelastic environment reads them, so rrn fit itself is the same command as on one machine.
set -euo pipefail

config="${1:?usage: MASTER_ADDR=... NNODES=... NODE_RANK=... bash experiments/cluster/torchrun.sh CONFIG [options]}"
shift
gpus="${GPUS_PER_NODE:-$(nvidia-smi --list-gpus | wc -l)}"  # processes on this machine: one per GPU

# --nnodes / --node_rank: how many machines, and which one this is.
# --nproc_per_node: processes (GPUs) on this machine; passed to Lightning as --trainer.devices, so they agree.
# --rdzv_backend=c10d / --rdzv_endpoint: the machines meet at MASTER_ADDR:MASTER_PORT (any free port there).
# --no-python: run the installed rrn command itself (not a Python file).
# --ckpt_path last --allow_fresh_start=true: a restarted job continues from the run's last.ckpt, a first one starts.
torchrun \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --nproc_per_node="$gpus" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}" \
    --no-python \
    rrn fit --config "$config" \
        --trainer.accelerator=gpu \
        --trainer.strategy=ddp \
        --trainer.num_nodes="${NNODES:-1}" \
        --trainer.devices="$gpus" \
        --ckpt_path last --allow_fresh_start=true \
        "$@"
