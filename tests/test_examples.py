"""examples/: every script parses (bash -n) and runs in its dry-run mode (the CPU comparison's
grid runs end to end at toy size in tests/test_grid.py)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from stapo_verl.recipe import METHODS

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "examples", "**", "*.sh"), recursive=True))


def run(script: str, *args: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", os.path.join(ROOT, "examples", script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHON": sys.executable, **env},
        cwd=ROOT,
    )


def commands(output: str, program: str = "verl.trainer.main_ppo") -> list[str]:
    return [line for line in output.splitlines() if program in line]


def test_the_examples_exist_and_parse():
    names = {os.path.relpath(path, os.path.join(ROOT, "examples")) for path in SCRIPTS}
    assert names == {
        "reproduce_paper.sh",
        "stapo/run_qwen3_paper.sh",
        "stapo/plain_overrides.sh",
        "cpu/demo.sh",
        "cpu/run_comparison.sh",
        "cpu/run_stability.sh",
    }
    for path in SCRIPTS:
        assert subprocess.run(["bash", "-n", path], capture_output=True).returncode == 0, path
        with open(path) as f:
            header = f.read(1500)
        for what in ("Needs:", "Writes:"):  # each says what it needs and what it writes
            assert what in header, f"{path}: no '{what}' in its header comment"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.slow
def test_paper_run_script_checks_its_config(method):
    result = run("stapo/run_qwen3_paper.sh", method, "8b", "2", DRY_RUN="1")
    assert result.returncode == 0, result.stderr[-2000:]
    (command,) = commands(result.stdout)
    for part in (
        f"algorithm={method}",
        "model=qwen3_8b",
        "trainer.nnodes=8",
        "trainer.n_gpus_per_node=8",
        "actor_rollout_ref.rollout.seed=2",
        f"trainer.experiment_name={method}_qwen3_8b_s2",
    ):
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


@pytest.mark.slow
def test_plain_overrides_compose_on_verls_own_config():
    result = run("stapo/plain_overrides.sh", DRY_RUN="1")
    assert result.returncode == 0, result.stderr[-2000:]
    for line in ("_target_: stapo_verl.method.config.TokenMaskPolicyLossConfig", "loss_mode: stapo", "tau_prob: 0.002"):
        assert line in result.stdout


@pytest.mark.slow
def test_cpu_scripts_check_every_run(tmp_path):
    result = run("cpu/run_comparison.sh", str(tmp_path / "cmp"), "--seeds", "0", "--rollout", "hf", DRY_RUN="1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 runs (4 methods x 1 seeds x 30 steps, experiment=cpu_comparison" in result.stdout
    plan = [line for line in result.stdout.splitlines() if "to run   stapo-verl train" in line]
    assert [line.split("stapo-verl train ")[1].split()[0] for line in plan] == ["stapo", "justrl", "grpo", "entropy20"]
    assert all("data.seed=0" in line and "actor_rollout_ref.rollout.seed=0" in line for line in plan)
    assert "dump_dir=" in plan[0] and all("val_before_train=true" in line for line in plan)
    assert not (tmp_path / "cmp").exists()
    stability = run("cpu/run_stability.sh", str(tmp_path / "st"), "--seeds", "1", "--rollout", "hf", DRY_RUN="1")
    assert stability.returncode == 0, stability.stderr[-2000:]
    assert "4 runs (4 methods x 1 seeds x 60 steps, experiment=cpu_stability" in stability.stdout
    plan = [line for line in stability.stdout.splitlines() if "to run   stapo-verl train" in line]
    assert [line.split()[0] for line in plan] == [
        "justrl_seed1:",
        "grpo_seed1:",
        "stapo_seed1:",
        "random_control_seed1:",
    ]
    assert "stapo-verl train stapo" in plan[3] and "ablation=candidates_random" in plan[3]
    assert all("trainer.save_freq=10" in line and "trainer.resume_mode=auto" in line for line in plan)
    demo = run("cpu/demo.sh", "justrl", DRY_RUN="1")
    assert demo.returncode == 0 and "algorithm=justrl model=smollm2_135m" in demo.stdout


RECIPE = os.path.join(ROOT, "recipe", "stapo")


def test_the_recipe_folder_has_verl_recipes_shape():
    """recipe/stapo/: a README, REQUIRED_VERL.txt naming the verl the package pins and has
    installed, flat run_*.sh scripts that parse, say what they need and write, one per method."""
    import verl

    with open(os.path.join(RECIPE, "REQUIRED_VERL.txt")) as f:
        required = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line and not line.startswith("#"))
    assert required["VERL_VERSION"] == verl.__version__ and required["RECIPE_FOLDER"] == "stapo"
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert f'"verl{required["VERL_RANGE"]}"' in f.read()
    assert os.path.exists(os.path.join(RECIPE, "README.md"))
    scripts = sorted(glob.glob(os.path.join(RECIPE, "run_*.sh")))
    assert {f"run_qwen3-8b_{method}.sh" for method in METHODS} <= {os.path.basename(s) for s in scripts}
    for path in scripts:
        assert subprocess.run(["bash", "-n", path], capture_output=True).returncode == 0, path
        with open(path) as f:
            header = f.read(1500)
        assert "Needs:" in header and "Writes:" in header, path


@pytest.mark.slow
def test_a_recipe_script_composes_through_main_ppo():
    result = subprocess.run(
        ["bash", os.path.join(RECIPE, "run_qwen3-8b_stapo.sh"), "--cfg", "job"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loss_mode: stapo" in result.stdout and "nnodes: 8" in result.stdout
