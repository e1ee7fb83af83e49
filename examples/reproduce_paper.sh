#!/usr/bin/env bash
# The paper's whole pipeline: data -> 4 methods x 3 sizes x SEEDS training runs -> merge ->
# eval in both decoding settings -> report (tables with intervals, headline, curves).
#   examples/reproduce_paper.sh [--run]
# Default: prints the plan (every command, the number of runs and the paper's reported cost)
#   and runs nothing. --run executes it, step by step, stopping at the first failure.
# Needs: (with --run) a GPU cluster with verl's GPU stack (pip install -e '.[gpu]'), vLLM for eval,
#   Qwen3 Base weights reachable by their hub names, DATA_SRC (default $STAPO_FULL_DATA_DIR, else
#   data/) with the original parquet files (tests/fixtures/math/SOURCES.md names them). The paper: 64 H20 GPUs, 5-7 days per training run.
# Writes: $WORK/data, $WORK/checkpoints, $WORK/hf, $WORK/evals, $WORK/report, logs/.
# Overridable: SEEDS (default "0 1 2"), SIZES ("1.7b 8b 14b"), METHODS ("stapo justrl grpo
#   entropy20"), NNODES, GPUS_PER_NODE, WORK (default outputs/reproduce), DATA_SRC, PYTHON.
set -euo pipefail
run=0
case "${1:-}" in
  --run) run=1 ;;
  "") ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
seeds=(${SEEDS:-0 1 2}) sizes=(${SIZES:-1.7b 8b 14b}) methods=(${METHODS:-stapo justrl grpo entropy20})
work=${WORK:-outputs/reproduce}
data_src=${DATA_SRC:-${STAPO_FULL_DATA_DIR:-data}}
runs=$(( ${#methods[@]} * ${#sizes[@]} * ${#seeds[@]} ))

step() {  # print a command; with --run, run it
  echo "  $*"
  if [ "$run" = 1 ]; then "$@"; fi
}

echo "# The paper's pipeline: ${#methods[@]} methods x ${#sizes[@]} sizes x ${#seeds[@]} seeds = $runs training runs"
echo "# Paper's cost: 64 H20 GPUs, 5-7 days per run -> $(( runs * 5 ))-$(( runs * 7 )) run-days on 64 GPUs"
echo "# ($(( runs * 5 * 64 * 24 ))-$(( runs * 7 * 64 * 24 )) GPU-hours); evals: $(( runs * 2 )) (two decoding settings)"
echo "1. data"
step "$py" -m stapo_verl.tasks.data "$data_src"/dapo_math_17k.parquet --split train --out-dir "$work/data"
step "$py" -m stapo_verl.tasks.data "$data_src"/{aime24,aime25,amc23,math500,minerva,olympiadbench}.parquet --split test --out-dir "$work/data"
echo "2. training ($runs runs)"
for size in "${sizes[@]}"; do for method in "${methods[@]}"; do for seed in "${seeds[@]}"; do
  step env DATA_DIR="$work/data" RUN_DIR="$work" "$here/stapo/run_qwen3_paper.sh" "$method" "$size" "$seed"
done; done; done
echo "3. merge the last checkpoint of each run, 4. eval in both settings"
for size in "${sizes[@]}"; do for method in "${methods[@]}"; do for seed in "${seeds[@]}"; do
  name=${method}_qwen3_${size}_s${seed}
  ckpt=$work/checkpoints/$name
  if [ "$run" = 1 ]; then
    last=$(cat "$ckpt/latest_checkpointed_iteration.txt")
  else
    last=N
  fi
  step "$py" -m verl.model_merger merge --backend fsdp --local_dir "$ckpt/global_step_$last/actor" --target_dir "$work/hf/$name"
  for setting in aligned default; do
    step "$py" -m stapo_verl eval "$work/hf/$name" --data-dir "$work/data" --setting "$setting" \
      --out "$work/evals/${name}_$setting" --method "$method" --model "qwen3_$size" --run-seed "$seed"
  done
done; done; done
echo "5. report"
step "$py" -m stapo_verl report "$work"/evals/* --logs logs/stapo/*.jsonl --out "$work/report"
if [ "$run" = 0 ]; then
  echo "# nothing was run: add --run to execute this plan"
fi
