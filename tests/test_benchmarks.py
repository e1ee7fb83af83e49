"""The benchmark scripts run (at toy sizes) and write their JSON; timings are not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def run(script: str, *args: str) -> None:
    result = subprocess.run([sys.executable, os.path.join(BENCHMARKS, script), *args], capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def test_actor_step_runs_every_variant_through_verls_engine(tmp_path):
    out = tmp_path / "actor_step.json"
    run("actor_step.py", "--tiny", "--rounds", "1", "--out", str(out))
    record = json.loads(out.read_text())
    assert set(record["results"]) == {"grpo", "stapo_current", "stapo_old", "entropy20"}
    assert record["results"]["grpo"]["time_vs_grpo"] == 1.0
    assert all(r["median_ms"] > 0 for r in record["results"].values())


def test_loss_benchmark_writes_its_ratio(tmp_path):
    out = tmp_path / "loss.json"
    run("loss_cpu.py", "--rows", "8", "--length", "128", "--rounds", "1", "--out", str(out))
    record = json.loads(out.read_text())
    assert record["ratio"] == record["stapo_loss_fwd_bwd_ms"] / record["grpo_loss_fwd_bwd_ms"]


def test_smollm2_task_benchmark_writes_its_rates(smollm2_dir, tmp_path):
    out = tmp_path / "task.json"
    run("smollm2_task.py", "--dir", smollm2_dir, "--prompts", "2", "--samples", "2", "--out", str(out))
    record = json.loads(out.read_text())
    assert record["prompts"] == 2 and record["samples_per_prompt"] == 2
    assert 0.0 <= record["pass_rate_t1"] <= 1.0 and record["response_tokens_mean"] > 0
    assert record["candidate_token_frac"] <= record["low_prob_token_frac"] <= 1.0
