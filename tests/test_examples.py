"""examples/: every script parses (bash -n), runs in its dry-run mode, and the CPU comparison runs
end to end at one step per method (e2e)."""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import subprocess
import sys

import pytest

from stapo_verl.recipe import METHODS

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "examples", "**", "*.sh"), recursive=True))


def run(script: str, *args: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", os.path.join(ROOT, "examples", script), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHON": sys.executable, **env}, cwd=ROOT)  # fmt: skip


def commands(output: str, program: str = "verl.trainer.main_ppo") -> list[str]:
    return [line for line in output.splitlines() if program in line]


def test_the_examples_exist_and_parse():
    names = {os.path.relpath(path, os.path.join(ROOT, "examples")) for path in SCRIPTS}
    assert names == {"reproduce_paper.sh", "stapo/run_qwen3_paper.sh", "stapo/plain_overrides.sh", "cpu/demo.sh",
                     "cpu/compare_methods.sh"}  # fmt: skip
    for path in SCRIPTS:
        assert subprocess.run(["bash", "-n", path], capture_output=True).returncode == 0, path
        with open(path) as f:
            header = f.read(1500)
        for what in ("Needs:", "Writes:"):  # each says what it needs and what it writes
            assert what in header, f"{path}: no '{what}' in its header comment"


@pytest.mark.parametrize("method", METHODS)
def test_paper_run_script_checks_its_config(method):
    result = run("stapo/run_qwen3_paper.sh", method, "8b", "2", DRY_RUN="1")
    assert result.returncode == 0, result.stderr[-2000:]
    (command,) = commands(result.stdout)
    for part in (f"algorithm={method}", "model=qwen3_8b", "trainer.nnodes=8", "trainer.n_gpus_per_node=8",
                 "actor_rollout_ref.rollout.seed=2", f"trainer.experiment_name={method}_qwen3_8b_s2"):  # fmt: skip
        assert part in command
    assert run("stapo/run_qwen3_paper.sh", method, "3b", DRY_RUN="1").returncode != 0  # no such size
    assert run("stapo/run_qwen3_paper.sh").returncode == 2  # usage


def test_reproduce_paper_prints_the_plan_and_runs_nothing(tmp_path):
    result = run("reproduce_paper.sh", WORK=str(tmp_path / "work"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "4 methods x 3 sizes x 3 seeds = 36 training runs" in out and "64 H20 GPUs, 5-7 days per run" in out
    assert len([line for line in out.splitlines() if "run_qwen3_paper.sh" in line]) == 36
    assert len([line for line in out.splitlines() if "stapo_verl eval" in line]) == 72  # both settings
    assert "nothing was run" in out and not (tmp_path / "work").exists()
    smaller = run("reproduce_paper.sh", SEEDS="0", SIZES="1.7b", METHODS="stapo justrl")
    assert "2 methods x 1 sizes x 1 seeds = 2 training runs" in smaller.stdout
    assert run("reproduce_paper.sh", "--bogus").returncode == 2


def test_plain_overrides_compose_on_verls_own_config():
    result = run("stapo/plain_overrides.sh", DRY_RUN="1")
    assert result.returncode == 0, result.stderr[-2000:]
    for line in ("_target_: stapo_verl.config.TokenMaskPolicyLossConfig", "loss_mode: stapo", "tau_prob: 0.002"):
        assert line in result.stdout


def test_cpu_scripts_check_every_run(tmp_path):
    result = run("cpu/compare_methods.sh", str(tmp_path / "cmp"), "trainer.val_before_train=false", DRY_RUN="1")
    assert result.returncode == 0, result.stderr[-2000:]
    runs = commands(result.stdout)
    assert [c.split("algorithm=")[1].split()[0] for c in runs] == ["stapo", "justrl", "grpo", "entropy20", "stapo"]
    assert all("model=smollm2_135m" in c and "data.seed=0" in c and "val_before_train=false" in c for c in runs)
    assert "ablation=random_mask" in runs[-1] and "dump_dir=" in runs[0]
    assert not (tmp_path / "cmp").exists()
    bad = run("cpu/compare_methods.sh", str(tmp_path / "cmp"), DRY_RUN="1", RUNS="stapo ppo")
    assert bad.returncode == 2 and "unknown run 'ppo'" in bad.stderr
    demo = run("cpu/demo.sh", "justrl", DRY_RUN="1")
    assert demo.returncode == 0 and "algorithm=justrl model=smollm2_135m" in demo.stdout


@pytest.mark.parametrize("records", [0, 1])
def test_cpu_comparison_passes_only_dumps_with_records_to_the_report(records, tmp_path):
    """A STAPO run without S2T candidates leaves an empty dump: the report gets no --dumps then
    (it refuses dumps without records), and the script still ends in the report."""
    fake = tmp_path / "fake_python"  # stands in for `python -m stapo_verl demo|report`
    fake.write_text(r"""#!/usr/bin/env bash
echo "$@" >> CALLS
if [ "$3" = demo ]; then
  dir=$(echo "$@" | sed 's/.*--dir \([^ ]*\).*/\1/'); mkdir -p "$dir/logs"; touch "$dir/logs/run.jsonl"
  case "$*" in *dump_dir=*) mkdir -p "$dir/dump"; printf '{"token": "x"}\n' | head -n RECORDS > "$dir/dump/r0.jsonl";; esac
fi
""".replace("CALLS", str(tmp_path / "calls")).replace("RECORDS", str(records)))
    fake.chmod(0o755)
    result = run("cpu/compare_methods.sh", str(tmp_path / "cmp"), RUNS="stapo grpo", PYTHON=str(fake))
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "calls").read_text().splitlines()[-1]
    assert report.split()[2] == "report" and "stapo=" in report and "grpo=" in report
    assert ("--dumps" in report) == bool(records)
    assert ("had no S2T candidate" in result.stdout) == (not records)


@pytest.mark.e2e
def test_cpu_comparison_one_step_per_method_ends_in_a_report(tiny_dir, tmp_path):
    """The CPU comparison as committed, on the tiny preset (MODEL=tiny_cpu) at 1 step per run, for
    the two baselines that no other end-to-end test trains (GRPO with its KL term and reference
    model, 20-Entropy; STAPO runs in tests/test_e2e.py, the five runs' commands in
    test_cpu_scripts_check_every_run): the plumbing and the report, not their learning."""
    out = tmp_path / "cmp"
    result = run("cpu/compare_methods.sh", str(out), "trainer.val_before_train=false", "trainer.save_freq=-1",
                 timeout=1800, MODEL="tiny_cpu", RUNS="grpo entropy20", STEPS="1", TEST_FREQ="-1",
                 STAPO_TINY_DIR=tiny_dir)  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    with open(out / "report" / "training.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["run"] for row in rows] == ["grpo", "entropy20"]
    assert all(row["steps"] == "1" for row in rows)
    assert rows[0]["silenced fraction (mean)"] == "-"
    for name in ("entropy.png", "silenced_fraction.png", "report.json"):
        assert (out / "report" / name).is_file()
    with open(out / "report" / "report.json") as f:
        logged = {label: rows[-1] for label, rows in json.load(f)["training"].items()}
    # seeded rollouts (the HF server seeds each request): the runs sampled the same step-1
    # responses, so the comparison is paired
    for key in ("response_length/mean", "critic/score/mean", "critic/advantages/max"):
        assert len({logged[name][key] for name in logged}) == 1, {name: logged[name][key] for name in logged}
    # GRPO: no mask, its KL term ran (a reference model); 20-Entropy keeps the top 20% of tokens
    assert not any(key.startswith(("actor/s2t/", "actor/token_mask/")) for key in logged["grpo"])
    assert math.isfinite(logged["grpo"]["actor/kl_loss"])
    assert logged["entropy20"]["actor/token_mask/silenced/tokens"] > logged["entropy20"]["actor/token_mask/kept/tokens"] > 0
