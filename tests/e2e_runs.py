"""Helpers of the end-to-end tests: run ``stapo-verl train`` (verl's main_ppo) on a CPU preset and
read what verl logged."""

from __future__ import annotations

import math
import os
import subprocess
import sys

from stapo_verl.cpu.precision import resolve_precision
from stapo_verl.recipe import CPU_MODELS
from stapo_verl.runlog import read_metrics

# The SFT-initialised tiny model is so peaked that at the paper's tau_p = 0.002 (even 0.05) no
# sampled token is a candidate; with tau_p = 1 every positive-advantage token is one, so S2T
# must silence some (those below the 75th entropy percentile) inside the real update.
ALL_POSITIVE_ARE_CANDIDATES = "actor_rollout_ref.actor.policy_loss.tau_prob=1.0"
# fp32, explicitly, for the checks that compare with a reference to float precision (the rollout
# serves the synced weights; one rank and two ranks decide alike)
EXACT = "stapo.cpu_precision=fp32"
# One PPO mini-batch per step (the tiny preset's 8 prompts): with several, verl deals the batch to
# the data-parallel ranks before cutting mini-batches, so one and two ranks would train other
# responses together in each mini-batch; with one, both decide over the same tokens
ONE_MINI_BATCH = "actor_rollout_ref.actor.ppo_mini_batch_size=8"
# The CPU presets' default precision on this machine (stapo.cpu_precision=auto).
DEFAULT_PRECISION = resolve_precision("auto")[0]
# Largest rollout-vs-actor probability difference per precision, when the rollout serves the
# actor's current weights. fp32: ~1e-6 measured (one stale update would differ by ~1e-3). bf16:
# both sides round to bf16 but run different kernels (a KV-cached decode vs one whole-sequence
# forward); measured values: benchmarks/results/cpu_precision.json.
ROLLOUT_PROBS_DIFF_MAX = {"fp32": 1e-4, "bf16": 0.5}
ROLLOUT_PROBS_DIFF_MEAN = {"fp32": 1e-5, "bf16": 0.02}


def train(
    method: str,
    files_dir: str,
    run_dir,
    steps: int,
    *overrides: str,
    log_path=None,
    model="tiny_cpu",
    check=True,
    env=None,
) -> str:
    """``stapo-verl train METHOD MODEL`` for ``steps`` steps (in ``env``, default this process's);
    its output (asserted successful unless ``check`` is false)."""
    env = {**(os.environ if env is None else env), CPU_MODELS[model][0]: files_dir, "STAPO_RUN_DIR": str(run_dir)}
    env.pop("VERL_FILE_LOGGER_ROOT", None)
    if log_path is not None:
        env["VERL_FILE_LOGGER_PATH"] = str(log_path)
    command = [
        sys.executable,
        "-m",
        "stapo_verl",
        "train",
        method,
        model,
        f"trainer.total_training_steps={steps}",
        *overrides,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=str(run_dir))
    output = result.stdout + result.stderr
    assert result.returncode == 0 or not check, output[-6000:]
    return output


def training_rows(log_path) -> list[dict]:
    return [row for row in read_metrics(str(log_path)) if "actor/pg_loss" in row]


def assert_trained(rows: list[dict], steps: list[int], precision: str = DEFAULT_PRECISION) -> None:
    assert [row["step"] for row in rows] == steps
    for row in rows:
        assert math.isfinite(row["actor/pg_loss"]) and math.isfinite(row["actor/grad_norm"])
        assert math.isfinite(row["actor/entropy"]) and row["actor/entropy"] > 0
        assert -1.0 <= row["critic/score/mean"] <= 1.0  # the DAPO reward ran
        # the rollout served the actor's current weights, in the actor's precision
        assert row["training/rollout_probs_diff_max"] < ROLLOUT_PROBS_DIFF_MAX[precision]
        assert row["training/rollout_probs_diff_mean"] < ROLLOUT_PROBS_DIFF_MEAN[precision]
