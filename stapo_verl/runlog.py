"""Reading verl's training logs: the ``file`` logger's JSONL (one ``{"step", "data"}`` per line)."""

from __future__ import annotations

import json
import math
from typing import Iterable, Optional

# The columns people look at first, in the order they read them (name in the log -> short label).
SUMMARY_COLUMNS = {
    "critic/score/mean": "score",
    "actor/entropy": "entropy",
    "actor/s2t/candidates": "candidates",
    "actor/s2t/silenced_frac": "silenced",
    "actor/token_mask/silenced/tokens": "silenced_tok",
    "actor/pg_loss": "pg_loss",
    "actor/grad_norm": "grad_norm",
    "response_length/mean": "resp_len",
    "timing_s/step": "step_s",
}


def read_metrics(path: str) -> list[dict]:
    """Per-step metric dicts (with ``step``) from a verl file-logger JSONL, in file order.

    A resumed run appends new steps after old ones; a step logged twice keeps its last record.
    """
    by_step: dict[int, dict] = {}
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                step = int(record["step"])
                data = record["data"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{line_number}: not a verl file-logger record ({exc})") from None
            by_step[step] = {"step": step, **by_step.get(step, {}), **data}
    return [by_step[s] for s in sorted(by_step)]


def val_metric_names(rows: Iterable[dict]) -> list[str]:
    """The validation accuracy keys (``val-core/<data_source>/acc/mean@k``) present in the log."""
    names = {k for row in rows for k in row if k.startswith("val-core/") and "/acc/" in k}
    return sorted(names)


def format_summary(rows: list[dict], columns: Optional[dict] = None) -> str:
    """A fixed-width table of the main per-step metrics (missing values show as ``-``)."""
    columns = dict(SUMMARY_COLUMNS if columns is None else columns)
    for name in val_metric_names(rows):
        columns[name] = "val_acc" if len(val_metric_names(rows)) == 1 else name.split("/")[1] + "_acc"
    present = {k: v for k, v in columns.items() if any(k in row for row in rows)}
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
