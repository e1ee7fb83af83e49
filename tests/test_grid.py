"""stapo-verl grid (methods x seeds, resumable, raw logs per run) and its report (issue 29)."""

from __future__ import annotations

import gzip
import json
import os
import re
import sys

import pytest

from stapo_verl.analysis import grid_report
from stapo_verl.analysis.stats import paired_t
from stapo_verl.experiments import grid
from stapo_verl.experiments.grid import Run, finished, run_overrides


def fake_run(
    out,
    method: str,
    seed: int,
    entropy: list[float],
    held_out: dict[int, float],
    exit_code=0,
    silenced=None,
    step1=(40.0, 0.5),
    overrides=None,
):
    """A finished run's directory as the grid leaves it (metrics as verl's file logger writes them)."""
    run_dir = out / "runs" / f"{method}_seed{seed}"
    run_dir.mkdir(parents=True)
    rows = []
    if 0 in held_out:
        rows.append({"step": 0, "data": {"val-core/sums-aligned/acc/mean@4": held_out[0]}})
    for step, h in enumerate(entropy, 1):
        data = {
            "actor/pg_loss": 0.1,
            "actor/entropy": h,
            "actor/pg_clipfrac": 0.01,
            "response_length/mean": step1[0] if step == 1 else 30.0 + step,
            "critic/score/mean": step1[1] if step == 1 else 0.0,
            "critic/advantages/max": 1.0,
            "timing_s/step": 40.0,
        }
        if silenced is not None:
            data["actor/s2t/silenced_frac"] = silenced
        if step in held_out:
            data["val-core/sums-aligned/acc/mean@4"] = held_out[step]
        rows.append({"step": step, "data": data})
    with open(run_dir / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    with open(run_dir / "run.json", "w") as f:
        json.dump(
            {
                "method": method,
                "seed": seed,
                "exit_code": exit_code,
                "overrides": overrides or [],
                "command": f"stapo-verl train {method} smollm2_135m {' '.join(overrides or [])}",
                "wall_s": 400.0 + 40.0 * len(entropy),
                "finished": "2026-12-04T00:00:00",
            },
            f,
        )
    return run_dir


def test_a_finished_run_is_skipped_only_with_the_same_overrides(tmp_path):
    run_dir = str(tmp_path / "runs" / "stapo_seed1")
    overrides = run_overrides(Run("stapo", 1), "cpu_comparison", 30, run_dir, True, [])
    assert "data.seed=1" in overrides and "actor_rollout_ref.rollout.seed=1" in overrides
    assert any(o.startswith("actor_rollout_ref.actor.policy_loss.dump_dir=") for o in overrides)  # STAPO's tokens
    assert not any("dump_dir" in o for o in run_overrides(Run("grpo", 1), "cpu_comparison", 30, "d", True, []))
    assert "experiment=cpu_comparison" not in run_overrides(Run("grpo", 1), "none", 30, "d", True, [])
    stored = grid.portable(overrides, run_dir)  # as run.json keeps them: no absolute path
    assert "actor_rollout_ref.actor.policy_loss.dump_dir=<run_dir>/dump" in stored
    done = fake_run(tmp_path, "stapo", 1, [1.0], {0: 0.2, 1: 0.3}, overrides=stored)
    assert finished(str(done), overrides) and finished(str(done))
    assert finished(str(done), overrides + ["actor_rollout_ref.actor.optim.lr=1e-4"]) is None  # other settings
    failed = fake_run(tmp_path, "grpo", 1, [1.0], {}, exit_code=1)
    assert finished(str(failed)) is None


def test_checkpoint_overrides_do_not_change_which_runs_count_as_finished(tmp_path):
    """A run saved with checkpoints and one made before the grid saved them compute the same thing."""
    run_dir = str(tmp_path / "runs" / "grpo_seed0")
    saving = run_overrides(Run("grpo", 0), "cpu_stability", 60, run_dir, True, [], checkpoint_every=10)
    assert {"trainer.save_freq=10", "trainer.max_actor_ckpt_to_keep=2", "trainer.resume_mode=auto"} <= set(saving)
    plain = run_overrides(Run("grpo", 0), "cpu_stability", 60, run_dir, True, [])
    assert "trainer.resume_mode=disable" in plain and not any(o.startswith("trainer.save_freq") for o in plain)
    done = fake_run(tmp_path, "grpo", 0, [1.0], {0: 0.2}, overrides=grid.portable(plain, run_dir))
    assert finished(str(done), saving) and finished(str(done), plain)
    assert finished(str(done), saving + ["trainer.total_training_steps=61"]) is None


def test_the_random_control_is_stapo_with_the_random_selection_and_the_runs_seed(tmp_path, capsys):
    run = Run("random_control", 2)
    assert run.verl_method == "stapo" and run.name == "random_control_seed2"
    overrides = run_overrides(run, "cpu_stability", 60, str(tmp_path), True, [])
    assert "ablation=candidates_random" in overrides
    assert "actor_rollout_ref.actor.policy_loss.random_mask_seed=2" in overrides
    assert any(o.startswith("actor_rollout_ref.actor.policy_loss.dump_dir=") for o in overrides)
    out = tmp_path / "grid"
    argv = ["--methods", "random_control", "--seeds", "2", "--experiment", "cpu_stability", "--rollout", "hf"]
    assert grid.main([*argv, "--out", str(out), "--dry-run"]) == 0  # composed and checked
    printed = capsys.readouterr().out
    assert "random_control_seed2: to run   stapo-verl train stapo smollm2_135m" in printed
    assert "ablation=candidates_random" in printed


def _attempt_log(path, steps, **data):
    path.write_text("".join(json.dumps({"step": s, "data": {"x": s, **data}}) + "\n" for s in steps))
    return str(path)


def test_a_resumed_runs_metrics_are_each_attempts_steps_between_its_checkpoints(tmp_path):
    first = _attempt_log(tmp_path / "a0.jsonl", [0, 1, 2, 3], attempt=0)
    with open(first, "a") as f:  # a second record of a step (a validation): its keys join
        f.write(json.dumps({"step": 2, "data": {"val": 0.5}}) + "\n")
    second = str(tmp_path / "a1.jsonl")  # the second attempt, from step 2, has not logged yet
    assert grid.merged_metrics([first, second], [2]) == {
        0: {"step": 0, "x": 0, "attempt": 0},
        1: {"step": 1, "x": 1, "attempt": 0},
        2: {"step": 2, "x": 2, "attempt": 0, "val": 0.5},
    }
    _attempt_log(tmp_path / "a1.jsonl", [3, 4, 5], attempt=1)  # stopped again; the third from step 4
    third = _attempt_log(tmp_path / "a2.jsonl", [5, 6], attempt=2)
    merged = grid.merged_metrics([first, second, third], [2, 4])
    assert [(step, row["attempt"]) for step, row in merged.items()] == [
        (0, 0),
        (1, 0),
        (2, 0),
        (3, 1),
        (4, 1),
        (5, 2),
        (6, 2),
    ]
    # an attempt that went on from an earlier checkpoint than the one before it: nothing of the
    # attempt in between counts
    assert [row["attempt"] for row in grid.merged_metrics([first, second, third], [2, 1]).values()] == [0, 0, 2, 2]
    out = tmp_path / "metrics.jsonl"
    grid.write_metrics(merged, str(out))
    from stapo_verl.runlog import read_metrics

    assert read_metrics(str(out)) == list(merged.values())


def test_a_run_goes_on_from_its_newest_checkpoint_whose_step_was_logged(tmp_path):
    """verl saves a step's checkpoint before it logs the step: stopped in between, the run goes on
    from the checkpoint before, so no step's metrics are lost."""
    checkpoints = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        (checkpoints / f"global_step_{step}").mkdir(parents=True)
        (checkpoints / f"global_step_{step}" / "data.pt").write_text("")
    for step in (20, 30):  # verl keeps the actor's weights of the newest two
        (checkpoints / f"global_step_{step}" / "actor").mkdir()
    assert grid.resume_point(str(checkpoints), set(range(0, 31))) == 30
    assert grid.resume_point(str(checkpoints), set(range(0, 30))) == 20  # step 30 never logged
    assert grid.resume_point(str(checkpoints), set(range(0, 20))) == 0  # step 10's weights are gone
    assert grid.resume_point(str(tmp_path / "none"), {1, 2}) == 0

    grid.drop_checkpoints_after(str(checkpoints), 20)  # going on from step 20: step 30 is computed again
    assert sorted(grid.checkpoint_folders(str(checkpoints))) == [10, 20]
    assert grid.resume_point(str(checkpoints), set(range(0, 31))) == 20  # the old attempt's step 30 is gone


def test_a_resumed_run_drops_the_dump_records_of_the_steps_it_computes_again(tmp_path):
    """Records written after the checkpoint a run goes on from belong to steps the new attempt
    computes again (and dumps again, its update counter starting afresh)."""
    checkpoint = tmp_path / "checkpoints" / "global_step_20"
    (checkpoint / "actor").mkdir(parents=True)
    (checkpoint / "actor" / "model.pt").write_text("weights")
    os.utime(checkpoint / "actor" / "model.pt", (1000.0, 1000.0))  # saved at t = 1000
    dump = tmp_path / "dump"
    dump.mkdir()
    records = [{"update": 1, "token": "older dump, no time"}]
    records += [{"update": u, "time": t, "token": f"t{t}"} for u, t in ((75, 990.0), (79, 999.5), (81, 1010.0))]
    for rank in (0, 1):
        lines = "".join(json.dumps(r) + "\n" for r in records)
        (dump / f"silenced_tokens.rank{rank}.jsonl").write_text(lines + ('{"update": 85, "ti' if rank else ""))
    (dump / "notes.txt").write_text("not a dump")

    # t = 1010 on each rank, and rank 1's last record, cut short when the run was stopped
    assert grid.drop_dump_records_after(str(dump), str(checkpoint)) == 3
    for rank in (0, 1):
        kept = [json.loads(line) for line in (dump / f"silenced_tokens.rank{rank}.jsonl").read_text().splitlines()]
        assert [r["token"] for r in kept] == ["older dump, no time", "t990.0", "t999.5"]
    assert (dump / "notes.txt").read_text() == "not a dump"
    assert grid.drop_dump_records_after(str(tmp_path / "no_dump"), str(checkpoint)) == 0


def test_progress_names_the_run_the_step_and_the_etas():
    progress = grid.Progress(total_steps=30, runs_left=4)
    line = progress.line(2, 4, Run("stapo", 1), {"step": 10, "timing_s/step": 40.0}, 500.0)
    assert line.startswith("[2/4 stapo seed 1] step 10/30, 40 s/step")
    # 20 steps left; 3 more runs of 30 steps + 3 steps' worth of start-up and validation each: 79 min
    assert "ETA run 13 min 20 s" in line and "grid 1 h 19 min" in line
    assert "validation before training" in progress.line(1, 4, Run("grpo", 0), {"step": 0}, 10.0)


def test_a_resumed_grid_has_etas_before_its_first_step(tmp_path):
    """The first line of a grid is its validation before training: no step time of its own yet."""
    line = grid.Progress(total_steps=30, runs_left=2).line(1, 2, Run("stapo", 1), {"step": 0}, 60.0)
    assert line.endswith("run 1 min 00 s so far, ETA after the first step") and "0 min 00 s" not in line
    done = fake_run(tmp_path, "justrl", 0, [1.0] * 30, {0: 0.2, 30: 0.6})  # 30 steps of 40 s, 400 s beside them
    assert grid.step_times(str(done)) == [40.0] * 30
    resumed = grid.Progress(total_steps=30, runs_left=2, finished_runs=[(grid.step_times(str(done)), 1600.0)])
    line = resumed.line(1, 2, Run("stapo", 1), {"step": 0}, 60.0)
    # this run: 30 steps of 40 s; the next: 30 steps + 400 s
    assert "40 s/step" in line and "ETA run 20 min 00 s, grid 46 min 40 s" in line
    # its own first step, twice as slow (another machine): its ETAs go by its own steps only
    line = resumed.line(1, 2, Run("stapo", 1), {"step": 1, "timing_s/step": 80.0}, 200.0)
    assert "80 s/step" in line and "ETA run 38 min 40 s, grid 1 h 25 min" in line  # 400 s beside the next


def test_the_grid_refuses_bad_input_naming_the_field(capsys):
    for argv, message in (
        (["--methods", "ppo"], "unknown ['ppo']"),
        (["--model", "qwen3_8b"], "CPU presets"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--checkpoint-every", "-1"], "--checkpoint-every must be >= 0"),
    ):
        with pytest.raises(SystemExit):
            grid.main([*argv, "--dry-run"])
        assert message in capsys.readouterr().err


def test_the_dry_run_prints_the_plan_with_what_is_finished(tmp_path, capsys):
    out = tmp_path / "grid"
    overrides = run_overrides(Run("justrl", 0), "cpu_comparison", 2, str(out / "runs" / "justrl_seed0"), True, [])
    fake_run(out, "justrl", 0, [1.0, 1.0], {0: 0.2, 2: 0.25}, overrides=overrides)
    assert (
        grid.main(
            [
                "--methods",
                "justrl",
                "stapo",
                "--seeds",
                "0",
                "--steps",
                "2",
                "--rollout",
                "hf",
                "--out",
                str(out),
                "--dry-run",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "2 runs" in printed and "1 finished" in printed and "1 to run" in printed
    stapo_line = next(line for line in printed.splitlines() if "stapo_seed0:" in line)
    # every run validates before training, its seed's other runs finished or not (grid.py says why)
    assert "to run" in stapo_line and "trainer.val_before_train=true" in stapo_line


def test_a_run_finished_under_the_once_per_seed_rule_still_counts(tmp_path, capsys):
    """An earlier grid validated only in a seed's first run: its other runs (no validation before
    training) are recognised as finished, and a run still to make validates."""
    out = tmp_path / "grid"
    old = run_overrides(Run("stapo", 0), "cpu_comparison", 2, str(out / "runs" / "stapo_seed0"), False, [])
    fake_run(out, "stapo", 0, [1.0, 1.0], {2: 0.25}, overrides=grid.portable(old, str(out / "runs" / "stapo_seed0")))
    argv = ["--methods", "justrl", "stapo", "--seeds", "0", "--steps", "2", "--rollout", "hf", "--out", str(out)]
    assert grid.main([*argv, "--dry-run"]) == 0
    lines = {line.split(":")[0].strip(): line for line in capsys.readouterr().out.splitlines() if "_seed0:" in line}
    assert "finished" in lines["stapo_seed0"] and "val_before_train=false" in lines["stapo_seed0"]
    assert "to run" in lines["justrl_seed0"] and "val_before_train=true" in lines["justrl_seed0"]


def test_a_grids_runs_share_one_precision(tmp_path, capsys):
    """`auto` trains in bf16 or fp32 by the CPU: a grid going on on another machine refuses to mix
    them, naming the runs and the setting; the setting itself does not unfinish a run."""
    out = tmp_path / "grid"
    argv = ["--methods", "justrl", "grpo", "--seeds", "0", "--steps", "2", "--rollout", "hf", "--out", str(out)]
    run_dir = out / "runs" / "justrl_seed0"
    overrides = run_overrides(Run("justrl", 0), "cpu_comparison", 2, str(run_dir), True, [])
    fake_run(out, "justrl", 0, [1.0, 1.0], {0: 0.2, 2: 0.25}, overrides=grid.portable(overrides, str(run_dir)))
    # recorded before run.json held the precision: read from the first line of its output
    with gzip.open(run_dir / "train.log.gz", "wt") as f:
        f.write("stapo-verl train: smollm2_135m on CPU in fp32: this CPU has no native bf16 matrix instructions\n")
    assert grid.run_precision(str(run_dir), {}) == "fp32"
    assert grid.run_precision(str(run_dir), {"precision": "bf16"}) == "bf16"  # the record's comes first
    assert grid.run_precision(str(tmp_path), {}) is None
    assert grid.main([*argv, "stapo.cpu_precision=bf16", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "justrl_seed0 trained in fp32" in err and "stapo.cpu_precision=fp32" in err
    assert grid.main([*argv, "stapo.cpu_precision=fp32", "--dry-run"]) == 0
    assert "1 finished" in capsys.readouterr().out  # the setting is not what a run computes
    # a started run's attempt counts too
    started = out / "runs" / "grpo_seed0"
    started.mkdir()
    (started / grid.ATTEMPT).write_text(json.dumps({"overrides": [], "resumed_from": [], "precision": "bf16"}))
    assert grid.main([*argv, "stapo.cpu_precision=fp32", "--dry-run"]) == 2
    assert "grpo_seed0 trained in bf16" in capsys.readouterr().err


def test_the_report_states_the_runs_precision_and_flags_a_mix(tmp_path):
    for method in ("justrl", "stapo"):
        fake_run(tmp_path, method, 0, [1.0, 1.0], {0: 0.2, 2: 0.25})

    def report_with(precisions):
        for method, precision in precisions.items():
            path = tmp_path / "runs" / f"{method}_seed0" / "run.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "precision": precision}))
        return grid_report.markdown(grid_report.build(grid_report.load_runs(str(tmp_path))))

    assert "- precision: not recorded" in grid_report.markdown(grid_report.build(grid_report.load_runs(str(tmp_path))))
    assert "- precision: every run trained in bf16" in report_with({"justrl": "bf16", "stapo": "bf16"})
    mixed = report_with({"stapo": "fp32"})
    assert "- precision: MIXED, runs of a seed do not pair: bf16: justrl_seed0; fp32: stapo_seed0" in mixed
    assert "- why (each run's first line): not in its output" in mixed


def test_the_report_names_the_cpu_kind_each_run_trained_on(tmp_path):
    """From the first line each run printed: runs on CPUs of other kinds are named apart."""
    for method, why in (("justrl", "this CPU has AMX-BF16"), ("stapo", "this CPU has AVX512-BF16")):
        run_dir = fake_run(tmp_path, method, 0, [1.0, 1.0], {0: 0.2, 2: 0.25})
        with gzip.open(run_dir / "train.log.gz", "wt") as f:
            f.write(f"stapo-verl train: smollm2_135m on CPU in bf16: {why}\nstep:1 ...\n")
    report = grid_report.markdown(grid_report.build(grid_report.load_runs(str(tmp_path))))
    assert (
        "- why (each run's first line; step times compare only within one): "
        "this CPU has AMX-BF16: justrl_seed0; this CPU has AVX512-BF16: stapo_seed0"
    ) in report
    assert "- precision: every run trained in bf16" in report  # read from the same line


def test_paired_t_matches_the_textbook():
    result = paired_t([1.0, 2.0, 3.0])  # t = 2 / (1 / sqrt 3) = 3.464, 2 df
    assert result["mean"] == 2.0 and result["p"] == pytest.approx(0.0742, abs=1e-4)
    assert result["low"] == pytest.approx(2.0 - 4.303 / 3**0.5, abs=1e-3)
    assert paired_t([0.5])["p"] is None and paired_t([0.5])["low"] is None  # one seed: no interval


def test_the_report_pairs_seeds_checks_step_one_and_marks_the_claims(tmp_path):
    # STAPO gains 5 points over JustRL in every seed and keeps entropy flat; its step 1 equals
    # JustRL's in seeds 0 and 1, not in seed 2 (a broken pairing must show)
    for seed, gain in ((0, 0.05), (1, 0.04), (2, 0.06)):  # verl logs accuracies as fractions
        start = 0.20 + 0.01 * seed
        fake_run(tmp_path, "justrl", seed, [1.0, 1.5, 2.0], {0: start, 3: start + 0.02})
        fake_run(
            tmp_path,
            "stapo",
            seed,
            [1.0, 1.05, 1.1],
            {3: start + 0.02 + gain},
            silenced=0.00005,
            step1=(40.0, 0.5) if seed < 2 else (41.0, 0.5),
        )
    report = grid_report.build(grid_report.load_runs(str(tmp_path)))
    label = "sums-aligned avg@4"
    assert report["labels"] == [label]
    assert report["step0"] == {seed: {label: pytest.approx(20.0 + seed)} for seed in (0, 1, 2)}
    change = report["table"]["stapo"][f"held_out_change/{label}"]  # from the seed's shared step 0, in points
    assert change["mean"] == pytest.approx(7.0) and change["n"] == 3
    paired = report["paired"]["justrl"][f"held_out_end/{label}"]
    assert paired["per_seed"] == pytest.approx([5.0, 4.0, 6.0]) and paired["low"] > 0 and paired["p"] < 0.05
    assert [report["step1_identical"][s]["identical"] for s in (0, 1, 2)] == [True, True, False]
    verdicts = {c["claim"]: c["verdict"] for c in report["claims"]}
    assert verdicts["STAPO's held-out accuracy (avg@4: T 1.0, top-p 1.0) is higher than JustRL's"] == "supported"
    assert verdicts["STAPO's entropy drifts less than JustRL's (largest drift from step 1)"] == "supported"
    assert verdicts["S2T silences < 0.01% of response tokens"] == "supported"
    assert "its own two-sided 95% test, 2 of them," in report["claims_note"]  # one baseline: accuracy and drift
    written = grid_report.write(str(tmp_path), str(tmp_path / "report"))
    for name in written:
        assert os.path.getsize(tmp_path / "report" / name) > 0
    text = (tmp_path / "report" / "grid.md").read_text()
    assert "seed 2: NOT identical" in text and "| JustRL |" in text
    assert "  - response_length/mean: differ: JustRL 40, STAPO 41" in text  # which key, by how much
    assert "  - critic/score/mean: same: JustRL 0.5, STAPO 0.5" in text


def test_the_report_judges_each_run_by_the_stability_criteria_and_applies_the_rule(tmp_path):
    """JustRL collapses in every seed, the random control in two, STAPO in none: "supported"."""
    collapsing = [1.0] * 10 + [0.05] * 10
    for seed in (0, 1, 2):
        fake_run(tmp_path, "justrl", seed, collapsing, {0: 0.30, 20: 0.28})
        fake_run(tmp_path, "stapo", seed, [1.0] * 20, {20: 0.31}, silenced=0.004)
        fake_run(tmp_path, "random_control", seed, collapsing if seed else [1.0] * 20, {20: 0.18 if seed else 0.29})
    report = grid_report.build(grid_report.load_runs(str(tmp_path)))
    assert report["runs"]["justrl_seed1"]["stability"]["steps"]["entropy_collapse"] == 11
    assert report["runs"]["random_control_seed2"]["stability"]["steps"]["accuracy_collapse"] == 20  # 30% -> 18%
    assert not report["runs"]["stapo_seed0"]["stability"]["unstable"]
    claims = {c["claim"]: c for c in report["claims"]}
    justrl = claims["STAPO prevents JustRL's instability (the stability study's criteria and rule)"]
    assert justrl["verdict"] == "supported"
    assert "random_control unstable in 2 of 3 seeds" in justrl["numbers"]
    post_hoc = [
        c for c in report["claims"] if c["claim"].startswith("STAPO prevents JustRL's instability, criteria 1-3")
    ]
    assert len(post_hoc) == 1 and post_hoc[0]["verdict"] == "supported" and "post hoc" in post_hoc[0]["claim"]
    text = grid_report.markdown(report)
    assert "| justrl_seed0 (20 steps) | 11 | - | - | - | yes, from step 11 |" in text
    assert "random control" in text  # the control is named for readers, and paired with STAPO
    assert "random_control" in report["paired"]


def test_a_partial_grid_without_stapo_reports_and_says_no_claim_is_decidable(tmp_path, recwarn):
    # an interrupted grid whose only finished run is a baseline: the report still comes out
    fake_run(tmp_path, "justrl", 0, [1.0, 0.8], {0: 0.2, 2: 0.6})
    report = grid_report.build(grid_report.load_runs(str(tmp_path)))
    assert report["paired"] == {}
    assert [(c["verdict"], c["numbers"]) for c in report["claims"]] == [
        ("not decidable at this scale", "no STAPO run has finished")
    ]
    grid_report.write(str(tmp_path), str(tmp_path / "report"))
    assert not [w for w in recwarn if "legend" in str(w.message)]  # no empty legend on the silenced panel


def test_a_grid_whose_methods_finished_other_seeds_says_so_and_pairs_only_shared_seeds(tmp_path):
    # JustRL has finished seeds 0 and 1, STAPO only seed 0 (a grid still running): each row names
    # its seeds, the page warns against comparing rows, the paired difference uses seed 0 alone
    fake_run(tmp_path, "justrl", 0, [1.0, 0.8], {0: 0.2, 2: 0.6})
    fake_run(tmp_path, "justrl", 1, [1.0, 0.8], {0: 0.2, 2: 0.2})
    fake_run(tmp_path, "stapo", 0, [1.0, 0.9], {2: 0.7})
    report = grid_report.build(grid_report.load_runs(str(tmp_path)))
    assert report["method_seeds"] == {"justrl": [0, 1], "stapo": [0]}
    assert report["paired"]["justrl"]["held_out_end/sums-aligned avg@4"]["per_seed"] == pytest.approx([10.0])
    text = grid_report.markdown(report)
    assert "| JustRL | 0, 1 | 40 [" in text and "| STAPO | 0 | 70 |" in text
    assert "have not finished the same seeds" in text
    fake_run(tmp_path, "stapo", 1, [1.0, 0.9], {2: 0.3})
    text = grid_report.markdown(grid_report.build(grid_report.load_runs(str(tmp_path))))
    assert "have not finished the same seeds" not in text and "| STAPO | 0, 1 | 50 [" in text


def test_the_silenced_fraction_claim_is_judged_run_by_run(tmp_path):
    """Two seeds both 40x above the paper's 0.01%: contradicted (a t interval over two seeds
    would reach below zero and decide nothing); seeds on both sides of it: not decidable."""

    def verdict(fractions):
        grid_dir = tmp_path / "_".join(map(str, fractions))
        for seed, fraction in enumerate(fractions):
            fake_run(grid_dir, "stapo", seed, [1.0, 0.9], {0: 0.2, 2: 0.6}, silenced=fraction)
        claims = grid_report.build(grid_report.load_runs(str(grid_dir)))["claims"]
        return next((c["verdict"], c["numbers"]) for c in claims if "0.01%" in c["claim"])

    assert verdict([0.004, 0.0055]) == (
        "contradicted",
        "0.400%, 0.550% of tokens (each STAPO run's mean over its steps)",
    )
    assert verdict([0.00005, 0.00002])[0] == "supported"
    assert verdict([0.00005, 0.004])[0] == "not decidable at this scale"


def test_the_report_re_makes_the_marked_tables_of_a_page_and_keeps_its_prose(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path, "justrl", seed, [1.0, 1.2], {0: 0.2, 2: 0.5})
        fake_run(tmp_path, "stapo", seed, [1.0, 1.1], {2: 0.55 + 0.01 * seed}, silenced=0.004)
    runs = [f"{m}_seed{s}" for s in (0, 1, 2) for m in ("stapo", "justrl")]  # the grid's plan: seed 2 still to run
    (tmp_path / "plan.json").write_text(json.dumps({"runs": runs}))
    page = tmp_path / "page.md"
    page.write_text(
        "# Results\n\nProse before.\n<!-- stapo-verl report: status -->\nold\n<!-- /stapo-verl report -->\n"
        "Prose between.\n<!-- stapo-verl report: headline -->\nold table\n<!-- /stapo-verl report -->\n"
        "<!-- stapo-verl report: seeds -->\n<!-- /stapo-verl report -->\n<!-- stapo-verl report: runs -->\n"
        "<!-- /stapo-verl report -->\nProse after.\n"
    )
    grid_report.write(str(tmp_path), str(tmp_path / "report"), docs=[str(page)])
    text = page.read_text()
    assert (
        text.startswith("# Results\n\nProse before.\n")
        and "\nProse between.\n" in text
        and text.endswith("Prose after.\n")
    )
    assert "old" not in text
    assert (
        "**4 of 6 runs finished** (justrl_seed0, justrl_seed1, stapo_seed0, stapo_seed1); "
        "remaining: stapo_seed2, justrl_seed2."
    ) in text
    assert "| JustRL | 0, 1 | 20.0/20.0 -> 50.0 [50.0, 50.0] |" in text
    assert "| JustRL | avg@4: T 1.0, top-p 1.0 | +5.0, +6.0 | +5.5 [-0.9, +11.9], p = 0.058 |" in text
    assert "| seed | before training | JustRL | STAPO |\n|---|---|---|---|\n| 0 | 20.0 | 50.0 | 55.0 |\n" in text
    assert "| 2 | - | - | - |" not in text  # a seed none of whose runs finished has no row
    assert "| `stapo_seed1` | 2026-12-04 00:00 | 8 min | 40 s | - |" in text  # no validation during training
    assert grid_report.write(str(tmp_path), str(tmp_path / "report"), docs=[str(page)]) and page.read_text() == text

    other = tmp_path / "other.md"
    other.write_text("<!-- stapo-verl report: headlines -->\n<!-- /stapo-verl report -->\n")
    page.write_text("<!-- stapo-verl report: claims -->\n<!-- /stapo-verl report -->\n")
    with pytest.raises(
        ValueError, match="unknown report block headlines; accepted: status, headline, seeds, claims, runs"
    ):
        grid_report.write(str(tmp_path), str(tmp_path / "report"), docs=[str(page), str(other)])
    assert page.read_text() == "<!-- stapo-verl report: claims -->\n<!-- /stapo-verl report -->\n"  # nothing written
    other.write_text("no block\n")
    with pytest.raises(ValueError, match="has no block to fill"):
        grid_report.write(str(tmp_path), str(tmp_path / "report"), docs=[str(other)])


@pytest.mark.e2e
def test_the_toy_grid_goes_on_after_an_interruption_and_reports(toy_grid, tiny_dir, tmp_path):
    """2 methods x 1 seed x 2 steps on the tiny preset, stopped (SIGTERM) after its last run's
    step 1 and started again (conftest.toy_grid): nothing of the stopped run left running; the
    run goes on from its checkpoint of step 1 (verl loads it), keeps the stopped attempt's
    metrics and logs step 2; raw logs per run, the same step-1 rollouts across methods of a seed;
    a third call runs nothing."""
    import subprocess
    import sys

    from conftest import INTERRUPTED, toy_grid_args

    from stapo_verl.runlog import read_metrics

    out = toy_grid.out
    assert "2 to run" in toy_grid.printed and "[1/2 entropy20 seed 0] step 2/2" in toy_grid.printed
    assert toy_grid.left_running == []  # the stopped grid stopped its run, Ray's processes included
    assert "1 finished" in toy_grid.resumed and "1 to run" in toy_grid.resumed
    assert f"{INTERRUPTED}: going on from its checkpoint of step 1" in toy_grid.resumed
    assert "[1/1 stapo seed 0] step 2/2" in toy_grid.resumed
    record = json.loads((out / "runs" / INTERRUPTED / "run.json").read_text())
    assert record["exit_code"] == 0 and record["resumed_from"] == [1]
    resumed = read_metrics(str(out / "runs" / INTERRUPTED / "metrics.jsonl"))
    assert [row["step"] for row in resumed] == [0, 1, 2]
    assert resumed[:2] == [{"step": row["step"], **row["data"]} for row in toy_grid.stopped_rows]
    assert "actor/pg_loss" in resumed[2]

    runs = sorted(os.listdir(out / "runs"))
    assert runs == ["entropy20_seed0", "stapo_seed0"]
    for name in runs:
        assert {"run.json", "metrics.jsonl", "train.log.gz"} <= set(os.listdir(out / "runs" / name))
        with gzip.open(out / "runs" / name / "train.log.gz", "rt") as f:
            output = f.read()
        workers = re.findall(r"stapo-verl: actor worker (\S+)", output)
        # a token-mask run trains on the hook's worker (a run without a token mask on verl's:
        # test_plugin)
        assert set(workers) == {"stapo_verl.integration.worker.TokenMaskTrainingWorker"}, (name, workers)
        if name == INTERRUPTED:  # both attempts' output; verl loaded the checkpoint
            assert len(workers) >= 2 and "global_step_1, setting global step to 1" in output
    assert not (toy_grid.out.parent / "scratch" / INTERRUPTED).exists()  # checkpoints go once the run finished
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "stapo_verl",
            "grid",
            *toy_grid_args(),
            "--out",
            str(out),
            "--scratch",
            str(tmp_path / "scratch"),
        ],
        env={**os.environ, "STAPO_TINY_DIR": tiny_dir},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0 and "2 finished" in again.stdout and "0 to run" in again.stdout
    assert json.loads((out / "plan.json").read_text())["runs"] == ["entropy20_seed0", "stapo_seed0"]
    from stapo_verl.cli import main as cli

    page = tmp_path / "page.md"
    page.write_text("<!-- stapo-verl report: status -->\n<!-- /stapo-verl report -->\n")
    assert cli(["report", "--grid", str(out), "--out", str(tmp_path / "report"), "--docs", str(page)]) == 0
    assert "**2 of 2 runs finished** (entropy20_seed0, stapo_seed0); none remaining." in page.read_text()
    result = json.loads((tmp_path / "report" / "grid.json").read_text())
    assert result["methods"] == ["entropy20", "stapo"] and result["seeds"] == [0]
    # the interrupted run's step 1 (its stopped attempt's) has the rollouts of its seed's other run
    assert all(check["identical"] for check in result["step1_identical"].values())
    assert set(result["step0"]) == {"0"}  # validated before training (every run)
    for name in ("entropy.png", "silenced_fraction.png", "grid.md"):
        assert (tmp_path / "report" / name).is_file()
    assert not (tmp_path / "report" / "held_out_accuracy.png").exists()  # no validation after step 0


def test_a_run_that_stops_logging_is_stopped_with_its_whole_process_group(tmp_path):
    """verl's main_ppo can hang instead of exiting (seen when vLLM's engine died): the grid stops a
    run whose metrics do not move, children included, instead of waiting forever."""
    import subprocess
    import time

    from stapo_verl.runlog import MetricsFollower

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 1, "data": {"actor/pg_loss": 0.1}}) + "\n")
    child_pid = tmp_path / "child.pid"
    script = f"import subprocess, time; p = subprocess.Popen(['sleep', '600']); open({str(child_pid)!r}, 'w').write(str(p.pid)); time.sleep(600)"
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    rows, started = [], time.time()
    grid.watch(process, MetricsFollower(str(metrics)), rows.append, stall_s=2.0, name="hung")
    assert process.returncode == -9 and [row["step"] for row in rows] == [1] and time.time() - started < 60
    pid = int(child_pid.read_text())
    time.sleep(0.5)
    try:  # the child is gone too (or a zombie left for init to reap)
        with open(f"/proc/{pid}/stat") as f:
            assert f.read().split(")")[1].split()[0] == "Z"
    except FileNotFoundError:
        pass


def test_stopping_a_run_kills_its_processes_outside_its_process_group_too(tmp_path):
    """Ray's raylet and workers leave main_ppo's process group: a run is stopped by the environment
    entry every process of it carries, not by its group alone."""
    import subprocess
    import time

    marker = f"STAPO_RUN_DIR={tmp_path / 'run'}"
    child_pid = tmp_path / "child.pid"
    script = (
        "import subprocess, time; "
        "p = subprocess.Popen(['sleep', '600'], start_new_session=True); "  # as Ray's raylet: its own session
        f"open({str(child_pid)!r}, 'w').write(str(p.pid)); time.sleep(600)"
    )
    env = {**os.environ, "STAPO_RUN_DIR": str(tmp_path / "run")}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    while not child_pid.exists() or not child_pid.read_text():
        time.sleep(0.05)
    assert len(grid.processes_with(marker)) == 2
    grid.stop_run(process, marker)
    assert process.returncode == -9 and grid.processes_with(marker) == []
