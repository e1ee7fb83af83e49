"""glibc's allocator settings against the actor update's time: page faults from returning every
freed tensor over 128 KiB to the OS, or not.

Runs ``benchmarks/actor_step.py --smollm2 --variants grpo`` (verl's FSDP actor on SmolLM2-135M in
this process, fp32, or the presets' bf16 with ``--bf16``) once per setting in ``SETTINGS``, each in a fresh process with that environment
(glibc reads it at start-up), one after the other, and records the update's median wall time, the
peak memory it added, and the whole process's minor page faults and peak RSS (``/usr/bin/time``).
The presets put their setting into every Ray worker's environment (``cpu_base.yaml``,
``ray_kwargs.ray_init.runtime_env.env_vars``).

    python benchmarks/malloc_settings.py [--settings threshold_128k glibc_default ...] [--rounds 2] [--bf16]
        [--out benchmarks/results/malloc_settings.json, with --bf16 malloc_settings_bf16.json]
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile

from common import cpu_description, write_result

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = {"OMP_NUM_THREADS": "2", "MALLOC_ARENA_MAX": "2"}  # both presets' other settings
SETTINGS = {  # name -> environment on top of BASE
    "threshold_128k": {"MALLOC_MMAP_THRESHOLD_": "131072"},  # every freed tensor over 128 KiB unmapped
    "threshold_128k_thp": {"MALLOC_MMAP_THRESHOLD_": "131072", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "glibc_default": {},  # glibc's dynamic threshold: freed chunks up to 32 MiB stay in the heap
    "glibc_default_thp": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},  # and 2 MiB pages for mapped ones
    # between the two: a fixed 4 MiB threshold keeps activations (1-3 MiB a micro-batch) in the heap
    # and trims its top as the presets do; the logits (~100 MiB) stay mapped, in 2 MiB pages
    "threshold_4m_thp": {"MALLOC_MMAP_THRESHOLD_": "4194304", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
}
STEP = ["--mini-batches", "2", "--rows", "8"]  # 16 responses of 109 + 64 tokens, micro-batches of 2


def measure(name: str, rounds: int, work: str, bf16: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env.update(BASE, **SETTINGS[name])
    out = os.path.join(work, f"{name}.json")
    command = [sys.executable, os.path.join(HERE, "actor_step.py"), "--smollm2", "--variants", "grpo", *STEP]
    command += ["--rounds", str(rounds), "--out", out, *(["--bf16"] if bf16 else [])]
    timed = ["/usr/bin/time", "-f", "maxrss_kb=%M minflt=%R wall_s=%e"]
    result = subprocess.run(timed + command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{name}: actor_step.py failed:\n{result.stderr[-3000:]}")
    usage = dict(re.findall(r"(maxrss_kb|minflt|wall_s)=([\d.]+)", result.stderr.strip().splitlines()[-1]))
    with open(out) as f:
        grpo = json.load(f)["results"]["grpo"]
    return {
        "environment": {**BASE, **SETTINGS[name]},
        "update_s": [round(s, 2) for s in grpo["seconds"]],
        "update_median_s": round(grpo["median_s"], 2),
        "update_peak_added_gib": round(grpo["peak_gib"], 3),
        "process_minor_faults": int(usage["minflt"]),
        "process_peak_rss_gib": round(int(usage["maxrss_kb"]) / 2**20, 3),
        "process_wall_s": float(usage["wall_s"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--rounds", type=int, default=2, help="timed updates per setting (default 2)")
    parser.add_argument("--bf16", action="store_true", help="the update in the presets' bf16 (default fp32)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        results = {}
        for name in args.settings:
            results[name] = measure(name, args.rounds, work, args.bf16)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    first = results[args.settings[0]]["update_median_s"]
    precision = "bf16" if args.bf16 else "fp32"
    record = {
        "what": f"verl's FSDP actor update on SmolLM2-135M ({precision}, benchmarks/actor_step.py --smollm2 "
        f"--variants grpo {' '.join(STEP)}{' --bf16' if args.bf16 else ''}) per glibc allocator setting, one fresh process each, "
        "one after the other; minor faults and peak RSS are the whole process's (model load included)",
        "date": datetime.date.today().isoformat(),
        "device": cpu_description(),
        "rounds": args.rounds,
        "results": results,
        f"update_vs_{args.settings[0]}": {name: round(r["update_median_s"] / first, 3) for name, r in results.items()},
    }
    name = "malloc_settings_bf16.json" if args.bf16 else "malloc_settings.json"
    write_result(record, args.out or os.path.join(HERE, "results", name))


if __name__ == "__main__":
    main()
