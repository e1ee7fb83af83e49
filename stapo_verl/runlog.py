"""Reading JSONL files, verl's training logs above all: the ``file`` logger's JSONL (one
``{"step", "data"}`` per line); and, in verl's text output, a worker that Ray killed for memory."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator

# The columns people look at first, in the order they read them (name in the log -> short label).
SUMMARY_COLUMNS = {
    "critic/score/mean": "score",
    "actor/entropy": "entropy",
    "actor/s2t/candidates": "candidates",  # S2T, per mini-batch (a step's mini-batches averaged)
    "actor/s2t/silenced": "silenced",
    "actor/token_mask/silenced/tokens": "silenced",  # (the same count; 20-Entropy has only this one)
    "actor/s2t/silenced_frac": "silenced_frac",
    "actor/entropy20/kept_frac": "kept_frac",  # 20-Entropy
    "actor/pg_loss": "pg_loss",
    "actor/grad_norm": "grad_norm",
    "response_length/mean": "resp_len",
    "timing_s/step": "step_s",
}
PROGRESS_COLUMNS = ("score", "entropy", "candidates", "silenced", "kept_frac", "step_s")


def read_jsonl(path: str) -> Iterator[dict]:
    """The records of a JSONL file (blank lines skipped); a bad line is named by file and line."""
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{line_number}: not a JSON record ({exc}); truncated?") from None


def parse_record(line: str, where: str) -> tuple[int, dict]:
    """``(step, data)`` of one file-logger line."""
    try:
        record = json.loads(line)
        return int(record["step"]), record["data"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{where}: not a verl file-logger record ({exc})") from None


def read_metrics(path: str) -> list[dict]:
    """Per-step metric dicts (with ``step``) from a verl file-logger JSONL, in file order.

    A resumed run appends new steps after old ones; a step logged twice keeps its last record.
    """
    by_step: dict[int, dict] = {}
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            step, data = parse_record(line, f"{path}:{line_number}")
            by_step[step] = {"step": step, **by_step.get(step, {}), **data}
    return [by_step[s] for s in sorted(by_step)]


def val_metric_names(rows: Iterable[dict]) -> list[str]:
    """The validation accuracy keys (``val-core/<data_source>/acc/mean@k``) present in the log."""
    names = {k for row in rows for k in row if k.startswith("val-core/") and "/acc/" in k}
    return sorted(names)


def present_columns(columns: dict, rows: list[dict]) -> dict:
    """The columns with a value in some row; of keys sharing a label, the first present one."""
    present = {}
    for key, label in columns.items():
        if label not in present.values() and any(key in row for row in rows):
            present[key] = label
    return present


def format_summary(rows: list[dict], columns: dict | None = None) -> str:
    """A fixed-width table of the main per-step metrics (missing values show as ``-``)."""
    columns = dict(SUMMARY_COLUMNS if columns is None else columns)
    for name in val_metric_names(rows):
        columns[name] = "val_acc" if len(val_metric_names(rows)) == 1 else name.split("/")[1] + "_acc"
    present = present_columns(columns, rows)
    header = ["step", *present.values()]

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)

    lines = [[str(row["step"]), *(cell(row.get(k)) for k in present)] for row in rows]
    widths = [max(len(x) for x in column) for column in zip(header, *lines)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in [header, *lines])


class MetricsFollower:
    """New records of a file-logger JSONL that another process is writing (verl writes unbuffered,
    one line per step; a line still being written is read on a later call)."""

    def __init__(self, path: str):
        self.path = path
        self.offset = 0
        self.line_number = 0

    def new_rows(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        rows = []
        for line in complete.decode().splitlines():
            self.line_number += 1
            if line.strip():
                step, data = parse_record(line, f"{self.path}:{self.line_number}")
                rows.append({"step": step, **data})
        return rows


def progress_line(row: dict, total_steps: int, elapsed_s: float) -> str:
    """One line per logged step: ``step 2/3  score 0.25  candidates 14 ...  [95 s]``."""
    labels = present_columns({k: v for k, v in SUMMARY_COLUMNS.items() if v in PROGRESS_COLUMNS}, [row])
    labels.update({name: "val_acc" for name in val_metric_names([row])})
    cells = [f"{label} {row[key]:.4g}" for key, label in labels.items() if isinstance(row[key], (int, float))]
    head = f"step {row['step']}/{total_steps}" if row["step"] > 0 else "before training"
    return f"  {head}  " + "  ".join(cells) + f"  [{elapsed_s:.0f} s]"


# Ray's memory monitor (ray 2.60) when it kills a worker; the text reaches verl's output in the
# driver's traceback and in Ray's "Ray killed ... Selected to kill: (...)" report.
_RAY_OOM = re.compile(r"(\d+) worker\(s\) were killed due to the node running low on memory")
_RAY_OOM_NODE = re.compile(r"Memory on the node \([^)]*\) was ([\d.]+)GB used / ([\d.]+)GB limit")
_RAY_OOM_WORKER = re.compile(r"Selected to kill: .*?task name=([^,]+), .*?pid=(\d+), actual memory used=([\d.]+)GB")
MEMORY_KNOBS = (
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu",
    "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu",
)


def ray_oom_kill(log_text: str) -> str | None:
    """One line saying that Ray killed a worker for memory (which, how much the machine had, the
    knobs to turn), or None when the log shows no such kill."""
    if not _RAY_OOM.search(log_text):
        return None
    worker = _RAY_OOM_WORKER.search(log_text)
    node = _RAY_OOM_NODE.search(log_text)
    who = f"{worker.group(1)} (pid {worker.group(2)}, {worker.group(3)} GB)" if worker else "a worker"
    machine = f" with {node.group(1)} of the machine's {node.group(2)} GB in use" if node else ""
    return (
        f"Ray killed {who} for memory{machine}: run one training job at a time, or lower the "
        f"micro-batch token budgets ({' and '.join(f'{k}=N' for k in MEMORY_KNOBS)})"
    )
