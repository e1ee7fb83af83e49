#!/usr/bin/env bash
# Train one method at one model size with the paper's recipe on verl's main_ppo.
#   recipe/stapo/run_train.sh METHOD SIZE [hydra overrides...]
#   METHOD: stapo | grpo | entropy20 | justrl      SIZE: 1.7b | 8b | 14b
# Prints the resolved command first; PYTHON picks the interpreter (default python3). Example:
#   recipe/stapo/run_train.sh stapo 8b trainer.nnodes=8 data.train_files=/data/dapo.parquet
# Needs: stapo-verl installed beside verl (REQUIRED_VERL.txt), the data under $STAPO_DATA_DIR, the GPUs.
# Writes: verl's checkpoints and logs (trainer.default_local_dir, trainer.logger).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,6p' "$0" >&2
  exit 2
fi
method=$1 size=$2
shift 2
exec "${PYTHON:-python3}" -m stapo_verl train "$method" "qwen3_$size" "$@"
