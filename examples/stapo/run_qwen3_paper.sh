#!/usr/bin/env bash
# One of the paper's training runs: METHOD at SIZE with the paper's recipe on verl's main_ppo.
#   examples/stapo/run_qwen3_paper.sh METHOD SIZE [SEED] [hydra overrides...]
#   METHOD: stapo | justrl | grpo | entropy20      SIZE: 1.7b | 8b | 14b      SEED: default 0
# Needs: a GPU cluster with verl's GPU stack (pip install -e '.[gpu]'); the paper used 64 H20
#   GPUs (NNODES=8 x GPUS_PER_NODE=8) for 5-7 days per run (> 3000 steps).
# Writes: checkpoints under $RUN_DIR/checkpoints/METHOD_qwen3_SIZE_sSEED, verl's file-logger log
#   under $VERL_FILE_LOGGER_ROOT (default logs/), console output.
# Overridable: NNODES, GPUS_PER_NODE, DATA_DIR (the parquet files of `python -m stapo_verl.tasks.data`),
#   RUN_DIR, PYTHON. DRY_RUN=1 composes and checks the config and prints the command only.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,11p' "$0" >&2
  exit 2
fi
method=$1 size=$2 seed=${3:-0}
shift $(( $# >= 3 ? 3 : 2 ))
export STAPO_DATA_DIR=${DATA_DIR:-${STAPO_DATA_DIR:-$HOME/data/stapo}}
export STAPO_RUN_DIR=${RUN_DIR:-${STAPO_RUN_DIR:-outputs/stapo-verl}}
dry=()
[ "${DRY_RUN:-0}" = 1 ] && dry=(--dry-run)
exec "${PYTHON:-python3}" -m stapo_verl train "$method" "qwen3_$size" \
  trainer.nnodes="${NNODES:-8}" trainer.n_gpus_per_node="${GPUS_PER_NODE:-8}" \
  actor_rollout_ref.rollout.seed="$seed" data.seed="$seed" \
  trainer.experiment_name="${method}_qwen3_${size}_s${seed}" "$@" "${dry[@]}"
