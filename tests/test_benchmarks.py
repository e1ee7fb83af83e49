"""The benchmark scripts run (at toy sizes) and write their JSON; timings are not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_data import fixture_file

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def run(script: str, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, script), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_actor_step_runs_every_variant_through_verls_engine(tmp_path):
    out = tmp_path / "actor_step.json"
    override = "actor_rollout_ref.actor.fsdp_config.reshard_after_forward=false"
    run("actor_step.py", "--tiny", "--rounds", "1", "--profile", "--override", override, "--out", str(out))
    record = json.loads(out.read_text())
    assert record["overrides"] == [override]
    results = record["results"]
    assert set(results) == {"grpo", "stapo_current", "stapo_old", "entropy20", "entropy20_micro_batch"}
    assert results["grpo"]["time_vs_grpo"] == 1.0
    assert all(r["median_s"] > 0 for r in results.values())
    assert record["step"]["mini_batches"] == 2  # statistics passes: on mini-batch 2 only, never for the
    assert results["entropy20"]["stats_pass_rows"] == 8  # micro-batch scope, STAPO's on its A > 0 rows
    assert results["entropy20_micro_batch"]["stats_pass_rows"] == results["grpo"]["stats_pass_rows"] == 0
    assert results["stapo_current"]["stats_pass_rows"] <= 8 * record["step"]["positive_advantage_share"] * 2
    # --profile: where the statistics pass goes, next to a GRPO mini-batch update
    profile = json.loads((tmp_path / "actor_step_profile.json").read_text())
    for key in ("stats_pass_diagnostics_on", "stats_pass_diagnostics_off", "grpo_mini_batch_update"):
        assert profile[key]["seconds"] > 0 and profile[key]["top_self_cpu"][0]["ms"] > 0
    assert 0 < profile["pass_rows"] < profile["mini_batch_rows"]


@pytest.mark.slow
def test_packed_attention_benchmark_gives_the_same_outputs_both_ways(tmp_path):
    out = tmp_path / "packed.json"
    run("packed_attention.py", "--responses", "3", "--length", "16", "--rounds", "1", "--out", str(out))
    (row,) = json.loads(out.read_text())["rows"]
    assert row["packed_tokens"] == 48 and row["max_abs_difference"] < 0.02  # bf16 rounding, not a wrong mask
    assert len(row["dense_masked_s"]) == len(row["per_response_s"]) == 1


@pytest.mark.slow
def test_loss_benchmark_writes_its_ratio(tmp_path):
    out = tmp_path / "loss.json"
    run("loss_cpu.py", "--rows", "8", "--length", "128", "--rounds", "1", "--out", str(out))
    record = json.loads(out.read_text())
    assert record["ratio"] == record["stapo_loss_fwd_bwd_ms"] / record["grpo_loss_fwd_bwd_ms"]


@pytest.mark.slow
def test_smollm2_task_benchmark_writes_its_rates(smollm2_dir, tmp_path):
    out = tmp_path / "task.json"
    run("smollm2_task.py", "--dir", smollm2_dir, "--prompts", "2", "--samples", "2", "--out", str(out))
    record = json.loads(out.read_text())
    assert record["prompts"] == 2 and record["samples_per_prompt"] == 2
    assert 0.0 <= record["pass_rate_t1"] <= 1.0 and record["response_tokens_mean"] > 0
    assert record["candidate_token_frac"] <= record["low_prob_token_frac"] <= 1.0


@pytest.mark.slow
def test_s2t_study_quick_writes_every_result(smollm2_dir, tmp_path):
    """The real-model study at toy sizes (one lr, no cost run): every result is in the JSON,
    the first-mini-batch reuse checked itself against a fresh pass, the summary and figure exist."""
    out = tmp_path / "study" / "s2t_study.json"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCHMARKS, "s2t_study.py"),
            "--quick",
            "--skip-cost",
            "--dapo",
            fixture_file("dapo_math_17k"),
            "--work-dir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "STAPO_SMOLLM2_DIR": smollm2_dir},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    for key in ("fractions", "who", "grad_norm_bound", "old_vs_current", "bf16_vs_fp32", "first_mini_batch_reuse"):
        assert key in record, key
    assert set(record["fractions"]) == {
        "task/T=1.0",
        "task/T=0.7",
        "dapo_math_17k/T=1.0",
        "dapo_math_17k/T=0.7",
        "paper_silenced_frac",
    }
    reuse = record["first_mini_batch_reuse"]
    assert reuse["fresh_passes"] == reuse["mini_batches"] - 1
    assert reuse["first_mini_batch_silenced_reused"] == reuse["first_mini_batch_silenced_fresh"]
    assert (tmp_path / "study" / "s2t_study" / "README.md").is_file()
    assert (tmp_path / "study" / "s2t_study" / "silenced_tokens.png").stat().st_size > 10_000


def test_demo_memory_measures_every_process_of_the_tree(tmp_path):
    """A parent that starts a child holding 300 MiB: the child is in the breakdown with its
    memory, and the tree's peak covers it."""
    child = "import time; x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(2)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    out = tmp_path / "memory.json"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCHMARKS, "demo_memory.py"),
            "--interval",
            "0.1",
            "--out",
            str(out),
            "--",
            sys.executable,
            "-c",
            parent,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    assert record["exit_code"] == 0 and record["command"][-2] == "-c"
    at_peak = record["processes_at_tree_pss_peak"]
    assert len(at_peak) == 2 and at_peak[0]["name"].startswith("python -c import time")
    assert at_peak[0]["pss_gib"] >= 0.29 and at_peak[0]["rss_gib"] >= at_peak[0]["pss_gib"]
    assert record["tree_pss_peak_gib"] >= 0.29  # (the machine-wide figure moves with everything else running)
    assert "process tree" in result.stdout


def test_the_reproducibility_benchmark_counts_identical_responses_and_the_first_difference():
    sys.path.insert(0, BENCHMARKS)
    try:
        import rollout_reproducibility as benchmark
    finally:
        sys.path.remove(BENCHMARKS)
    same, other = [[1, 2, 3], [4, 5], [6]], [[1, 2, 3], [4, 9], [6, 7]]
    assert benchmark.compare(same, same) == {"identical": 3, "of": 3, "first_difference_at": []}
    # a response that is the other's prefix differs where the shorter one ends
    assert benchmark.compare(same, other) == {"identical": 1, "of": 3, "first_difference_at": [1, 1]}
    requests = benchmark.requests([[10], [20]], 2, 5)
    assert requests == [([10], 5), ([10], 6), ([20], 1005), ([20], 1006)]  # one seed a sample
    assert "presets" in benchmark.SETTINGS and benchmark.SETTINGS["fp32"][1] == "float32"
