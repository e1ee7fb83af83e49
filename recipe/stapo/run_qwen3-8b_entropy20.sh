#!/usr/bin/env bash
# entropy20 on Qwen3-8B-Base with the paper's recipe (docs/method.md sections 3-4) on verl's own main_ppo;
# the four run_qwen3-8b_*.sh differ only in algorithm=.
# Needs: stapo-verl installed beside verl (REQUIRED_VERL.txt), DAPO-Math-17k and AIME24 as parquet under
#   $STAPO_DATA_DIR (python -m stapo_verl.tasks.data makes them), a Ray cluster of 8 nodes x 8 GPUs.
# Writes: verl's checkpoints and logs (trainer.default_local_dir, trainer.logger).
# Extra arguments are Hydra overrides, e.g. trainer.nnodes=4 data.train_batch_size=128.
set -euo pipefail
python=${PYTHON:-python3}
exec "$python" -m verl.trainer.main_ppo --config-path "$("$python" -m stapo_verl config-path)" \
  --config-name stapo_trainer algorithm=entropy20 model=qwen3_8b trainer.nnodes=8 "$@"
