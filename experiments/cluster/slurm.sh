#!/bin/bash
# Train one config with DDP on a SLURM cluster. Submit from the repository root (the package installed in the
# environment the job sees):
#
#   sbatch experiments/cluster/slurm.sh experiments/language_modelling/wikitext103_rmc.yaml
#   sbatch --nodes=2 experiments/cluster/slurm.sh experiments/nth_farthest/rmc.yaml --data.init_args.batch_size=800
#
# srun starts one task per GPU; Lightning's SLURM environment reads each task's rank from the variables srun sets
# (SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID, ...), so nothing else needs setting up. batch_size in a config is per
# GPU: the global batch is batch_size x GPUs per node x nodes (README, "Training on a cluster").
#
#SBATCH --job-name=rrn
#SBATCH --nodes=1                  # machines; passed to Lightning as --trainer.num_nodes below
#SBATCH --ntasks-per-node=4        # one task per GPU; passed as --trainer.devices below, so the two always agree
#SBATCH --gres=gpu:4               # GPUs per machine: the same number as --ntasks-per-node
#SBATCH --cpus-per-task=8          # CPU cores per task, for data loading and each rank's Python
#SBATCH --time=24:00:00            # the time limit; the job is requeued before it (next two lines)
#SBATCH --signal=SIGUSR1@120       # SIGUSR1 120 s before the limit: every rank writes last.ckpt, and Lightning's
#                                  #   SLURM environment (auto_requeue, on by default) runs `scontrol requeue`
#SBATCH --requeue                  # let the job be requeued (after preemption too)
#SBATCH --open-mode=append         # a requeued job appends to the same log file
#SBATCH --output=%x-%j.out         # log file: job name and job id
set -euo pipefail

config="${1:?usage: sbatch experiments/cluster/slurm.sh CONFIG [more rrn fit options]}"
shift

# --ckpt_path last: continue the config's latest run from its last.ckpt, in its own run folder (the TensorBoard
#   curves go on from that step); --allow_fresh_start: the job's first start has nothing to resume and begins a
#   new run. So the same command serves the first start and every requeue.
# Checkpoints and TensorBoard events are written by rank 0 under runs/<config name>/version_N/ (runs/ is rrn's
#   default --trainer.default_root_dir); put it on a file system that every node shares.
srun rrn fit --config "$config" \
    --trainer.accelerator=gpu \
    --trainer.strategy=ddp \
    --trainer.num_nodes="$SLURM_JOB_NUM_NODES" \
    --trainer.devices="$SLURM_NTASKS_PER_NODE" \
    --ckpt_path last --allow_fresh_start=true \
    "$@"
