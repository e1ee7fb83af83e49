"""Peak memory of a whole run's process tree (driver, Ray, every worker), per process.

    python benchmarks/demo_memory.py                      # README's demo: `stapo-verl demo`
    python benchmarks/demo_memory.py -- stapo-verl demo --steps 1 ...   # any command

Samples every ``--interval`` seconds (default 0.5) until the command exits:
- the machine's used memory (MemTotal - MemAvailable, /proc/meminfo), minus the value before the
  command started: what the run adds, shared memory and Ray's object store included;
- every process descended from the command (Ray's daemons and workers are children of its
  driver): PSS (each shared page split between the processes mapping it, so the sum is the
  tree's real footprint) and RSS (what ``top`` shows; shared libraries counted in every process).

Writes ``benchmarks/results/demo_memory.json`` (or ``--out``): the peaks, the per-process
breakdown at the moment the tree's PSS peaked, each process's own peak, and a timeline.
Memory is Linux-only (/proc).
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_result  # noqa: E402

GIB = 2**30
HERE = os.path.dirname(os.path.abspath(__file__))


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    values = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, rest = line.split(":", 1)
            values[key] = int(rest.split()[0]) * 1024
    return values


def machine_used() -> int:
    info = meminfo()
    return info["MemTotal"] - info["MemAvailable"]


def children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])  # the name may hold spaces and parentheses
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(root: int) -> list[int]:
    tree, found, stack = children_map(), [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(tree.get(pid, []))
    return found


def process_name(pid: int) -> str:
    """Ray renames its workers (``ray::TaskRunner``, ``ray::WorkerDict.actor_rollout_...``)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            parts = [p.decode(errors="replace") for p in f.read().split(b"\0") if p]
    except OSError:
        return "?"
    if not parts:
        return "?"
    if parts[0].startswith("ray::"):
        return parts[0].split()[0]
    program = os.path.basename(parts[0])
    if program.startswith("python") and len(parts) > 1:
        args = parts[1:]
        if args[0] in ("-m", "-c") and len(args) > 1:
            return f"python {args[0]} {args[1][:40]}"
        return f"python {os.path.basename(args[0])}"
    return program


def pss_rss(pid: int) -> tuple[int, int] | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except OSError:
        return None
    values = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key] = int(rest.split()[0]) * 1024
    return values.get("Pss", 0), values.get("Rss", 0)


def sample(root: int) -> dict[int, tuple[str, int, int]]:
    out = {}
    for pid in descendants(root):
        sizes = pss_rss(pid)
        if sizes is not None and sizes[1] > 0:
            out[pid] = (process_name(pid), *sizes)
    return out


def measure(command: list[str], interval: float, log_path: str | None) -> dict:
    baseline = machine_used()
    started = time.time()
    log = open(log_path, "w") if log_path else None
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT if log else None)
    peak_used, peak_pss, at_peak, own_peaks, timeline = baseline, 0, {}, {}, []
    while process.poll() is None:
        processes = sample(process.pid)
        used = machine_used()
        pss = sum(p for _, p, _ in processes.values())
        peak_used = max(peak_used, used)
        if pss > peak_pss:
            peak_pss, at_peak = pss, processes
        for pid, (name, p, r) in processes.items():
            old = own_peaks.get(pid, (name, 0, 0))
            own_peaks[pid] = (name, max(old[1], p), max(old[2], r))
        timeline.append([round(time.time() - started, 1), round((used - baseline) / GIB, 3), round(pss / GIB, 3)])
        time.sleep(interval)
    if log:
        log.close()

    def rows(table):
        return sorted(
            (
                {"pid": pid, "name": name, "pss_gib": round(p / GIB, 3), "rss_gib": round(r / GIB, 3)}
                for pid, (name, p, r) in table.items()
            ),
            key=lambda row: -row["pss_gib"],
        )

    return {
        "exit_code": process.returncode,
        "wall_s": round(time.time() - started, 1),
        "machine_used_before_gib": round(baseline / GIB, 3),
        "machine_used_peak_added_gib": round((peak_used - baseline) / GIB, 3),
        "tree_pss_peak_gib": round(peak_pss / GIB, 3),
        "processes_at_tree_pss_peak": rows(at_peak),
        "process_own_peaks": rows(own_peaks),
        "timeline_s_used_added_gib_tree_pss_gib": timeline[:: max(1, len(timeline) // 400)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples (default 0.5)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "demo_memory.json"))
    parser.add_argument("--log", help="the command's output goes here (default: this terminal)")
    parser.add_argument("--label", default="", help="a note stored with the result (what was changed)")
    parser.add_argument("command", nargs="*", help="the command (default: stapo-verl demo)")
    args = parser.parse_args()
    command = args.command or ["stapo-verl", "demo"]
    result = measure(command, args.interval, args.log)
    info = meminfo()
    record = {
        "benchmark": "demo_memory",
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, {info['MemTotal'] / GIB:.1f} GiB, {os.uname().machine}",
        "command": command,
        "label": args.label,
        "interval_s": args.interval,
        **result,
    }
    write_result(record, args.out, show=False)
    print(
        f"exit {result['exit_code']} after {result['wall_s']} s; peak: machine +{result['machine_used_peak_added_gib']} GiB"
        f" used, process tree {result['tree_pss_peak_gib']} GiB PSS. At the tree's peak (PSS / RSS GiB):"
    )
    for row in result["processes_at_tree_pss_peak"][:12]:
        print(f"  {row['pss_gib']:7.3f} {row['rss_gib']:7.3f}  {row['name']} (pid {row['pid']})")
    print(f"written: {args.out}")
    return result["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
