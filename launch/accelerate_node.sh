#!/usr/bin/env bash
# Launch align's DPO (or SFT) trainer on this node of a multi-node job (one call per node; slurm.sbatch runs it
# via srun).
#
#   bash launch/accelerate_node.sh recipe=beavertails [section.key=value ...]
#   ENTRY=align/train_sft.py bash launch/accelerate_node.sh recipe=NAME ...
#
# Everything after the script name goes to the entry script ($ENTRY, default align/train_dpo.py) unchanged. Node layout comes from SLURM
# (SLURM_NNODES, SLURM_NODEID, the first host of SLURM_JOB_NODELIST as the main process) or from
# NNODES / NODE_RANK / MASTER_ADDR when set. Settings:
#   ACCELERATE_CONFIG  hardware config (default recipes/accelerate/zero2.yaml)
#   GPUS_PER_NODE      processes per node (default 8)
#   MASTER_PORT        rendezvous port (default 29500 + SLURM_JOB_ID % 1000)
#   ENTRY              align/train_dpo.py (default) or align/train_sft.py
#   DRY_RUN=1          print the command instead of running it
set -euo pipefail
cd "$(dirname "$0")/.."

NNODES=${NNODES:-${SLURM_NNODES:-1}}
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
if [[ -z "${MASTER_ADDR:-}" ]]; then
  if [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  else
    MASTER_ADDR=127.0.0.1
  fi
fi
MASTER_PORT=${MASTER_PORT:-$((29500 + ${SLURM_JOB_ID:-0} % 1000))}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-recipes/accelerate/zero2.yaml}
# On SIGTERM/SIGINT the launcher passes the signal to its workers and kills them after this many seconds
# (torch's default is 30): the trainer needs the time to finish its step and write a checkpoint.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-600}

cmd=(accelerate launch
  --config_file "$ACCELERATE_CONFIG"
  --num_machines "$NNODES"
  --machine_rank "$NODE_RANK"
  --num_processes "$((NNODES * GPUS_PER_NODE))"
  --main_process_ip "$MASTER_ADDR"
  --main_process_port "$MASTER_PORT"
  "${ENTRY:-align/train_dpo.py}" "$@")

if [[ "${DRY_RUN:-0}" == "1" ]]; then
  echo "${cmd[*]}"
else
  exec "${cmd[@]}"
fi
