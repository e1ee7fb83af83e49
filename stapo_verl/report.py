"""``stapo-verl report``: the paper's table, with error bars and paired tests, and training plots.

Inputs: eval directories written by ``stapo-verl eval`` (their summary.json names the method,
model, training seed and decoding setting) and verl ``file``-logger JSONL training logs.
Outputs (all deterministic given the inputs and ``--seed``):

- ``table.{md,tex,csv}``: avg@k per benchmark and the average; methods as rows, a block per
  model size; "aligned (default)" cells like the paper when both settings are present.
- ``table_ci_<setting>.{md,tex,csv}``: the same with 95% bootstrap intervals (problems, seeds).
- ``paired_<setting>.{md,csv}``: STAPO minus each baseline per benchmark: difference (points),
  95% interval, sign-flip permutation p-value (problems paired, seeds averaged).
- ``entropy.png``, ``silenced_fraction.png``, ``val_accuracy.png`` from the training logs.
- ``report.json``: every number above.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from stapo_verl.eval import BENCHMARKS, SETTINGS, samples_by_problem
from stapo_verl.runlog import read_jsonl
from stapo_verl.stats import AVERAGE, avg_at_k, bootstrap_ci, paired_test

METHOD_NAMES = {"grpo": "GRPO", "entropy20": "20-Entropy", "justrl": "JustRL", "stapo": "STAPO"}  # paper order
MODEL_NAMES = {"qwen3_1.7b": "1.7B", "qwen3_8b": "8B", "qwen3_14b": "14B", "smollm2_135m": "SmolLM2-135M",
               "tiny_cpu": "tiny"}  # fmt: skip
TARGET = "stapo"


@dataclass
class EvalRun:
    path: str
    method: str
    model: str
    run_seed: int
    setting: str
    problems: dict[str, dict[str, float]]  # benchmark -> problem id -> accuracy over its k samples


def load_eval(path: str) -> EvalRun:
    summary_path = os.path.join(path, "summary.json")
    if not os.path.isfile(summary_path):
        raise FileNotFoundError(f"{path}: not an eval directory (no summary.json; `stapo-verl eval` writes one)")
    with open(summary_path) as f:
        try:
            config = json.load(f)["config"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{summary_path}: not a stapo-verl eval summary ({exc!r})") from None
    for name in ("method", "model"):
        if not config.get(name):
            raise ValueError(f"{path}: summary.json has no {name} label; re-run `stapo-verl eval ... --{name} NAME`")
    samples = samples_by_problem(read_jsonl(os.path.join(path, "samples.jsonl")))
    problems = {b: {p: float(np.mean(v)) for p, v in by_problem.items()} for b, by_problem in samples.items()}
    run_seed = config.get("run_seed")
    return EvalRun(path, config["method"], config["model"], 0 if run_seed is None else int(run_seed),
                   config["setting"], problems)  # fmt: skip


def _order(keys, preferred) -> list:
    return [k for k in preferred if k in keys] + sorted(k for k in keys if k not in preferred)


def group_scores(runs: list[EvalRun]) -> dict[tuple[str, str, str], dict[str, np.ndarray]]:
    """(model, setting, method) -> benchmark -> (seeds, problems), problems aligned by id.

    All runs of one model and setting must cover the same benchmarks and problems (pairing).
    """
    groups: dict[tuple[str, str, str], list[EvalRun]] = {}
    for run in runs:
        groups.setdefault((run.model, run.setting, run.method), []).append(run)
    reference: dict[tuple[str, str], EvalRun] = {}
    result = {}
    for (model, setting, method), members in groups.items():
        seeds = [r.run_seed for r in members]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{model}/{setting}/{method}: training seed repeated in {[r.path for r in members]}")
        ref = reference.setdefault((model, setting), members[0])
        by_seed = sorted(members, key=lambda r: r.run_seed)
        scores = {}
        for run in by_seed:
            if set(run.problems) != set(ref.problems):
                raise ValueError(f"{run.path}: benchmarks {sorted(run.problems)} differ from {ref.path}")
        for bench in ref.problems:
            ids = sorted(ref.problems[bench])
            for run in by_seed:
                if sorted(run.problems[bench]) != ids:
                    raise ValueError(f"{run.path}: {bench} problems differ from {ref.path}; evaluate the same set")
            scores[bench] = np.array([[run.problems[bench][i] for i in ids] for run in by_seed])
        result[(model, setting, method)] = scores
    return result


def build_report(runs: list[EvalRun], seed: int = 0, replicates: int = 2000, permutations: int = 10000) -> dict:
    groups = group_scores(runs)
    report = {"cells": [], "paired": []}
    for (model, setting, method), scores in groups.items():
        means, ci = avg_at_k(scores), bootstrap_ci(scores, replicates=replicates, seed=seed)
        seeds = next(iter(scores.values())).shape[0]
        report["cells"].append({"model": model, "setting": setting, "method": method, "seeds": seeds,
                                "avg": means, "ci": ci})  # fmt: skip
    for (model, setting, method), scores in groups.items():
        if method == TARGET:
            continue
        target = groups.get((model, setting, TARGET))
        if target is not None:
            test = paired_test(target, scores, permutations=permutations, replicates=replicates, seed=seed)
            report["paired"].append({"model": model, "setting": setting, "baseline": method, "test": test})
    return report


# ---------------------------------------------------------------- tables


def _columns(report: dict) -> list[str]:
    benches = {b for cell in report["cells"] for b in cell["avg"] if b != AVERAGE}
    return _order(benches, list(BENCHMARKS)) + [AVERAGE]


def _header(columns: list[str]) -> list[str]:
    return ["size", "method"] + [BENCHMARKS[c][0] if c in BENCHMARKS else "Avg" for c in columns]


def _rows(report: dict, cell_text) -> list[list[str]]:
    cells = {(c["model"], c["setting"], c["method"]): c for c in report["cells"]}
    models = _order({c["model"] for c in report["cells"]}, list(MODEL_NAMES))
    methods = _order({c["method"] for c in report["cells"]}, list(METHOD_NAMES))
    columns = _columns(report)
    rows = []
    for model in models:
        for method in methods:
            texts = [cell_text(cells, model, method, column) for column in columns]
            if any(t != "-" for t in texts):
                rows.append([MODEL_NAMES.get(model, model), METHOD_NAMES.get(method, method), *texts])
    return rows


def _write(out_dir: str, stem: str, header: list[str], rows: list[list[str]], caption: str, latex: bool = True) -> None:
    with open(os.path.join(out_dir, f"{stem}.csv"), "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write(f"{caption}\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
        f.writelines("| " + " | ".join(row) + " |\n" for row in rows)
    if latex:
        escape = lambda text: text.replace("%", "\\%").replace("_", "\\_")  # noqa: E731
        with open(os.path.join(out_dir, f"{stem}.tex"), "w") as f:
            f.write("\\begin{table}[t]\n\\centering\n\\small\n")
            f.write(f"\\begin{{tabular}}{{ll{'r' * (len(header) - 2)}}}\n\\toprule\n")
            f.write(" & ".join(escape(h) for h in header) + " \\\\\n\\midrule\n")
            previous = None
            for row in rows:
                if previous is not None and row[0] != previous:
                    f.write("\\midrule\n")
                previous = row[0]
                f.write(" & ".join(escape(cell) for cell in row) + " \\\\\n")
            f.write(f"\\bottomrule\n\\end{{tabular}}\n\\caption{{{escape(caption)}}}\n\\end{{table}}\n")


PAIRED_HEADER = ["size", "baseline", "benchmark", "STAPO - baseline (points)", "95% CI", "p (sign-flip)"]


def _rank(name: str, names: dict) -> int:
    return list(names).index(name) if name in names else len(names)


def _paired_rows(report: dict, paired: list[dict]) -> list[list[str]]:
    rows = []
    for p in sorted(paired, key=lambda p: (_rank(p["model"], MODEL_NAMES), _rank(p["baseline"], METHOD_NAMES))):
        for column in _columns(report):
            t = p["test"].get(column)
            if t is not None:
                rows.append([
                    MODEL_NAMES.get(p["model"], p["model"]), METHOD_NAMES.get(p["baseline"], p["baseline"]),
                    BENCHMARKS[column][0] if column in BENCHMARKS else "Avg", f"{t['diff']:+.2f}",
                    f"[{t['ci_low']:+.2f}, {t['ci_high']:+.2f}]", f"{t['p_value']:.4f}",
                ])  # fmt: skip
    return rows


def write_tables(report: dict, out_dir: str) -> list[str]:
    settings = _order({c["setting"] for c in report["cells"]}, list(SETTINGS))
    header = _header(_columns(report))
    written = []

    def mean_text(cells, model, method, column):
        values = [cells[(model, s, method)]["avg"].get(column) if (model, s, method) in cells else None
                  for s in settings]  # fmt: skip
        if all(v is None for v in values):
            return "-"
        first, *rest = ["-" if v is None else f"{v:.2f}" for v in values]
        return first + "".join(f" ({v})" for v in rest)

    layout = settings[0] + "".join(f" ({s})" for s in settings[1:])
    decoding = "; ".join(f"{s}: temperature {SETTINGS[s][0]}, top-p {SETTINGS[s][1]}" for s in settings)
    _write(out_dir, "table", header, _rows(report, mean_text), f"avg@k accuracy (%), cells {layout}; {decoding}")
    written.append("table")
    for setting in settings:

        def ci_text(cells, model, method, column, setting=setting):
            cell = cells.get((model, setting, method))
            if cell is None or column not in cell["avg"]:
                return "-"
            low, high = cell["ci"][column]
            return f"{cell['avg'][column]:.2f} [{low:.2f}, {high:.2f}]"

        _write(out_dir, f"table_ci_{setting}", header, _rows(report, ci_text),
               f"avg@k (%) with 95% bootstrap intervals (problems, training seeds), setting {setting}")  # fmt: skip
        written.append(f"table_ci_{setting}")
        paired = [p for p in report["paired"] if p["setting"] == setting]
        if paired:
            _write(out_dir, f"paired_{setting}", PAIRED_HEADER, _paired_rows(report, paired),
                   f"Paired tests, STAPO vs each baseline, setting {setting}", latex=False)  # fmt: skip
            written.append(f"paired_{setting}")
    return written


# ---------------------------------------------------------------- training plots


def silenced_fraction(row: dict) -> Optional[float]:
    silenced, kept = row.get("actor/token_mask/silenced/tokens"), row.get("actor/token_mask/kept/tokens")
    if silenced is not None and kept is not None and silenced + kept > 0:
        return silenced / (silenced + kept)
    return row.get("actor/s2t/silenced_frac")


def val_accuracy(row: dict) -> Optional[float]:
    values = [v for k, v in row.items() if k.startswith("val-core/") and "/acc/" in k]
    return 100.0 * float(np.mean(values)) if values else None


PLOTS = {
    "entropy": ("token entropy (nats)", lambda row: row.get("actor/entropy")),
    "silenced_fraction": ("silenced tokens / response tokens", silenced_fraction),
    "val_accuracy": ("validation accuracy (%)", val_accuracy),
}


def plot_training(logs: dict[str, list[dict]], out_dir: str) -> list[str]:
    """One PNG per metric, a line per training log (label -> verl file-logger rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, (ylabel, value) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
        drawn = 0
        for label, rows in logs.items():
            points = [(row["step"], value(row)) for row in rows if value(row) is not None]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
                drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.set_title(name.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, f"{name}.png"))
        plt.close(fig)
        written.append(f"{name}.png")
    return written


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    from stapo_verl.runlog import read_metrics

    parser = argparse.ArgumentParser(prog="stapo-verl report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("evals", nargs="*", help="eval output directories (summary.json + samples.jsonl)")
    parser.add_argument("--logs", nargs="*", default=[], help="training logs: PATH or LABEL=PATH (verl file logger)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0, help="bootstrap / permutation seed")
    parser.add_argument("--replicates", type=int, default=2000, help="bootstrap replicates")
    parser.add_argument("--permutations", type=int, default=10000, help="sign-flip permutations")
    args = parser.parse_args(argv)
    for option in ("replicates", "permutations"):  # zero draws give no interval and p = 1 for anything
        if getattr(args, option) < 100:
            parser.error(f"--{option} must be at least 100, got {getattr(args, option)}")
    if not args.evals and not args.logs:
        parser.error("give eval directories and/or --logs")
    os.makedirs(args.out, exist_ok=True)
    written = []
    report: dict = {}
    if args.evals:
        report = build_report([load_eval(p) for p in args.evals], args.seed, args.replicates, args.permutations)
        written += [f"{stem}.*" for stem in write_tables(report, args.out)]
    logs = {}
    for item in args.logs:
        label, sep, path = item.partition("=")
        if not sep:
            label, path = os.path.splitext(os.path.basename(item))[0], item
        logs[label] = read_metrics(path)
    if logs:
        written += plot_training(logs, args.out)
        report["training"] = {label: rows for label, rows in logs.items()}
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"stapo-verl report -> {args.out}: " + ", ".join(written + ["report.json"]))
    return 0
