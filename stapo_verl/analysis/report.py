"""``stapo-verl report``: the paper's table, with error bars and paired tests, and training plots.

Inputs: eval directories written by ``stapo-verl eval`` (their summary.json names the method,
model, training seed and decoding setting) and verl ``file``-logger JSONL training logs.
Outputs (all deterministic given the inputs and ``--seed``):

- ``table.{md,tex,csv}``: avg@k per benchmark and the average; methods as rows, a block per
  model size; "aligned (default)" cells like the paper when both settings are present.
- ``table_ci_<setting>.{md,tex,csv}``: the same with 95% bootstrap intervals (problems, seeds).
- ``paired_<setting>.{md,csv}``: STAPO minus each baseline per benchmark: difference (points),
  95% interval, sign-flip permutation p-value (problems paired, seeds averaged).
- ``headline_<setting>.{md,tex,csv}``: the paper's headline number: STAPO's relative gain over
  the strongest baseline of each size (average column), averaged over sizes, with a 95%
  bootstrap interval.
- ``ablation_<setting>.{md,tex,csv}``: runs labelled by ``stapo-verl sweep`` (``--method
  <selection>_q<q>_tp<tau_p>``): avg@k with intervals and the paired difference to STAPO
  (``low_entropy_q0.75_tp0.002``, else the ``stapo`` runs); ``ablation_q_<model>_<setting>.png``
  (accuracy vs q per selection) and ``ablation_tau_prob_<model>_<setting>.png``.
- ``training.{md,csv}``, ``entropy.png``, ``silenced_fraction.png``, ``val_accuracy.png`` from the
  training logs: per run, first and last score, entropy and validation accuracy, and the curves.
- ``silenced_tokens.png`` from ``--dumps`` (the policy-loss ``dump_dir`` files): the most
  frequent silenced tokens and kept candidates, and their shares by category.
- ``report.json``: every number above.

``stapo-verl report --grid DIR --out OUT`` reads a ``stapo-verl grid``'s raw logs instead
(:mod:`stapo_verl.analysis.grid_report`).
"""

from __future__ import annotations

import collections
import csv
import json
import os
import re
from dataclasses import dataclass

import numpy as np

from stapo_verl.analysis.eval import BENCHMARKS, SETTINGS, samples_by_problem
from stapo_verl.analysis.stats import (
    AVERAGE,
    avg_at_k,
    bootstrap_averages,
    bootstrap_ci,
    paired_test,
    relative_gain_over_best,
)
from stapo_verl.experiments.sweep import CANDIDATE_SELECTIONS, parse_label
from stapo_verl.runlog import read_jsonl

# the paper's order, then the grid's control (stapo_verl.experiments.grid.CONTROLS)
METHOD_NAMES = {
    "grpo": "GRPO",
    "entropy20": "20-Entropy",
    "justrl": "JustRL",
    "stapo": "STAPO",
    "random_control": "random control",
}
MODEL_NAMES = {
    "qwen3_1.7b": "1.7B",
    "qwen3_8b": "8B",
    "qwen3_14b": "14B",
    "smollm2_135m": "SmolLM2-135M",
    "tiny_cpu": "tiny",
}
TARGET = "stapo"
STAPO_LABEL = "low_entropy_q0.75_tp0.002"  # the sweep's label of the paper's STAPO settings


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
    return EvalRun(
        path, config["method"], config["model"], 0 if run_seed is None else int(run_seed), config["setting"], problems
    )


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
    report = {"cells": [], "paired": [], "ablation": [], "headline": {}}
    for (model, setting, method), scores in groups.items():
        means, ci = avg_at_k(scores), bootstrap_ci(scores, replicates=replicates, seed=seed)
        seeds = next(iter(scores.values())).shape[0]
        report["cells"].append(
            {"model": model, "setting": setting, "method": method, "seeds": seeds, "avg": means, "ci": ci}
        )
    for (model, setting, method), scores in groups.items():
        values = parse_label(method)
        if values is not None:  # an ablation cell: its difference to STAPO
            reference = groups.get((model, setting, STAPO_LABEL), groups.get((model, setting, TARGET)))
            test = None
            if reference is not None and reference is not scores:
                test = paired_test(scores, reference, permutations=permutations, replicates=replicates, seed=seed)
            report["ablation"].append(
                {"model": model, "setting": setting, "method": method, **values, "vs_stapo": test}
            )
            continue
        target = groups.get((model, setting, TARGET))
        if method != TARGET and target is not None:
            test = paired_test(target, scores, permutations=permutations, replicates=replicates, seed=seed)
            report["paired"].append({"model": model, "setting": setting, "baseline": method, "test": test})
    for setting in sorted({setting for _, setting, _ in groups}):
        headline = headline_gain(groups, setting, replicates, seed)
        if headline["gain"] is not None:
            report["headline"][setting] = headline
    return report


def headline_gain(groups: dict, setting: str, replicates: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """docs/method.md section 5's headline for one decoding setting (the four main methods only), with
    a percentile bootstrap interval: each replicate redraws problems (shared by STAPO and the
    baseline: paired) and seeds, keeping each size's strongest baseline from the point estimate."""
    main = {
        (model, method): scores
        for (model, s, method), scores in groups.items()
        if s == setting and parse_label(method) is None
    }
    averages: dict[str, dict[str, float]] = {}
    for (model, method), scores in main.items():
        averages.setdefault(model, {})[method] = avg_at_k(scores)[AVERAGE]
    result = relative_gain_over_best(averages, TARGET)
    if result["gain"] is None:
        return {**result, "ci": None}
    gains = []
    for i, (model, cell) in enumerate(sorted(result["per_model"].items())):
        draws = bootstrap_averages(
            {TARGET: main[(model, TARGET)], "baseline": main[(model, cell["baseline"])]},
            replicates=replicates,
            seed=seed + i,
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            gains.append(100.0 * (draws[TARGET] / draws["baseline"] - 1.0))
    tail = 100.0 * (1.0 - level) / 2.0
    mean_gain = np.mean(gains, axis=0)
    if not np.all(np.isfinite(mean_gain)):  # a replicate with a 0% baseline: no ratio, no interval
        return {**result, "ci": None}
    return {**result, "ci": (float(np.percentile(mean_gain, tail)), float(np.percentile(mean_gain, 100.0 - tail)))}


# ---------------------------------------------------------------- tables


def _columns(report: dict) -> list[str]:
    benches = {b for cell in report["cells"] for b in cell["avg"] if b != AVERAGE}
    return _order(benches, list(BENCHMARKS)) + [AVERAGE]


def _header(columns: list[str]) -> list[str]:
    return ["size", "method"] + [BENCHMARKS[c][0] if c in BENCHMARKS else "Avg" for c in columns]


def _rows(report: dict, cell_text) -> list[list[str]]:
    cells = {(c["model"], c["setting"], c["method"]): c for c in report["cells"]}
    models = _order({c["model"] for c in report["cells"]}, list(MODEL_NAMES))
    methods = _order({c["method"] for c in report["cells"] if parse_label(c["method"]) is None}, list(METHOD_NAMES))
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
                rows.append(
                    [
                        MODEL_NAMES.get(p["model"], p["model"]),
                        METHOD_NAMES.get(p["baseline"], p["baseline"]),
                        BENCHMARKS[column][0] if column in BENCHMARKS else "Avg",
                        f"{t['diff']:+.2f}",
                        f"[{t['ci_low']:+.2f}, {t['ci_high']:+.2f}]",
                        f"{t['p_value']:.4f}",
                    ]
                )
    return rows


def write_tables(report: dict, out_dir: str) -> list[str]:
    settings = _order({c["setting"] for c in report["cells"]}, list(SETTINGS))
    header = _header(_columns(report))
    written = []

    def mean_text(cells, model, method, column):
        values = [
            cells[(model, s, method)]["avg"].get(column) if (model, s, method) in cells else None for s in settings
        ]
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

        _write(
            out_dir,
            f"table_ci_{setting}",
            header,
            _rows(report, ci_text),
            f"avg@k (%) with 95% bootstrap intervals (problems, training seeds), setting {setting}",
        )
        written.append(f"table_ci_{setting}")
        paired = [p for p in report["paired"] if p["setting"] == setting]
        if paired:
            _write(
                out_dir,
                f"paired_{setting}",
                PAIRED_HEADER,
                _paired_rows(report, paired),
                f"Paired tests, STAPO vs each baseline, setting {setting}",
                latex=False,
            )
            written.append(f"paired_{setting}")
        headline = report.get("headline", {}).get(setting)
        if headline:
            _write(
                out_dir,
                f"headline_{setting}",
                HEADLINE_HEADER,
                _headline_rows(headline),
                f"STAPO's relative gain over the strongest baseline per size (Avg column), setting {setting}; "
                "paper (v2): +7.13% at 1.0/1.0, +3.69% at 0.7/0.9",
            )
            written.append(f"headline_{setting}")
        ablation = [a for a in report.get("ablation", []) if a["setting"] == setting]
        if ablation:
            columns = _columns(report)
            header = [
                "size",
                "selection",
                "q",
                "tau_p",
                "seeds",
                *_header(columns)[2:-1],
                "Avg [95% CI]",
                "- STAPO (points) [95% CI]",
                "p (sign-flip)",
            ]
            _write(
                out_dir,
                f"ablation_{setting}",
                header,
                _ablation_rows(report, ablation, setting, columns),
                f"Masking ablations among S2T candidates (docs/method.md section 6), avg@k (%), setting {setting}",
            )
            written.append(f"ablation_{setting}")
    return written


HEADLINE_HEADER = ["size", "strongest baseline", "baseline Avg", "STAPO Avg", "relative gain"]


def _headline_rows(headline: dict) -> list[list[str]]:
    rows = []
    for model in _order(headline["per_model"], list(MODEL_NAMES)):
        cell = headline["per_model"][model]
        rows.append(
            [
                MODEL_NAMES.get(model, model),
                METHOD_NAMES.get(cell["baseline"], cell["baseline"]),
                f"{cell['baseline_avg']:.2f}",
                f"{cell['target_avg']:.2f}",
                f"{cell['gain']:+.2f}%",
            ]
        )
    ci = headline.get("ci")
    interval = f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""
    rows.append(["mean over sizes", "", "", "", f"{headline['gain']:+.2f}%{interval}"])
    return rows


def _ablation_key(entry: dict) -> tuple:
    q = entry["entropy_quantile"]
    return (
        _rank(entry["model"], MODEL_NAMES),
        list(CANDIDATE_SELECTIONS).index(entry["selection"]),
        q if q is not None else 2.0,
        entry["tau_prob"],
    )


def _ablation_rows(report: dict, ablation: list[dict], setting: str, columns: list[str]) -> list[list[str]]:
    cells = {(c["model"], c["setting"], c["method"]): c for c in report["cells"]}
    rows = []
    for entry in sorted(ablation, key=_ablation_key):
        cell = cells[(entry["model"], setting, entry["method"])]
        low, high = cell["ci"][AVERAGE]
        test = (entry["vs_stapo"] or {}).get(AVERAGE)
        q = entry["entropy_quantile"]
        rows.append(
            [
                MODEL_NAMES.get(entry["model"], entry["model"]),
                entry["selection"],
                "-" if q is None else f"{q:g}",
                f"{entry['tau_prob']:g}",
                str(cell["seeds"]),
                *[f"{cell['avg'][c]:.2f}" if c in cell["avg"] else "-" for c in columns[:-1]],
                f"{cell['avg'][AVERAGE]:.2f} [{low:.2f}, {high:.2f}]",
                f"{test['diff']:+.2f} [{test['ci_low']:+.2f}, {test['ci_high']:+.2f}]" if test else "(reference)",
                f"{test['p_value']:.4f}" if test else "-",
            ]
        )
    return rows


def plot_ablation(report: dict, out_dir: str) -> list[str]:
    """Sensitivity figures: accuracy (Avg, 95% interval) vs q per selection; vs tau_p for S2T."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = {(c["model"], c["setting"], c["method"]): c for c in report["cells"]}
    written = []
    for model, setting in sorted({(a["model"], a["setting"]) for a in report.get("ablation", [])}):
        entries = [a for a in report["ablation"] if (a["model"], a["setting"]) == (model, setting)]

        def point(entry, model=model, setting=setting):
            cell = cells[(model, setting, entry["method"])]
            low, high = cell["ci"][AVERAGE]
            return cell["avg"][AVERAGE], low, high

        figures = {
            "q": {
                s: [a for a in entries if a["selection"] == s and a["tau_prob"] == 2e-3] for s in CANDIDATE_SELECTIONS
            },
            "tau_prob": {
                "low_entropy": [a for a in entries if a["selection"] == "low_entropy" and a["entropy_quantile"] == 0.75]
            },
        }
        for axis, series in figures.items():
            key = "entropy_quantile" if axis == "q" else "tau_prob"
            fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
            drawn = 0
            for selection, members in series.items():
                if selection == "all" and members:  # one value: no q
                    avg, low, high = point(members[0])
                    ax.axhline(avg, linestyle="--", color="gray", label="all candidates")
                    ax.axhspan(low, high, color="gray", alpha=0.15)
                    drawn += 1
                    continue
                members = sorted((a for a in members if a[key] is not None), key=lambda a: a[key])
                if axis == "tau_prob" and len(members) < 2:
                    continue
                if members:
                    xs = [a[key] for a in members]
                    avg, low, high = (np.array(v) for v in zip(*(point(a) for a in members)))
                    ax.errorbar(xs, avg, yerr=[avg - low, high - avg], marker="o", capsize=3, label=selection)
                    drawn += 1
            if not drawn:
                plt.close(fig)
                continue
            if axis == "tau_prob":
                ax.set_xscale("log")
            ax.set_xlabel("q (share of candidates silenced by S2T)" if axis == "q" else "tau_p")
            ax.set_ylabel("Avg accuracy (%)")
            ax.set_title(f"{MODEL_NAMES.get(model, model)}, {setting}: accuracy vs {axis}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            name = f"ablation_{axis}_{model}_{setting}.png"
            fig.savefig(os.path.join(out_dir, name))
            plt.close(fig)
            written.append(name)
    return written


# ---------------------------------------------------------------- training plots


def silenced_fraction(row: dict) -> float | None:
    silenced, kept = row.get("actor/token_mask/silenced/tokens"), row.get("actor/token_mask/kept/tokens")
    if silenced is not None and kept is not None and silenced + kept > 0:
        return silenced / (silenced + kept)
    return row.get("actor/s2t/silenced_frac")


def val_accuracy(row: dict) -> float | None:
    values = [v for k, v in row.items() if k.startswith("val-core/") and "/acc/" in k]
    return 100.0 * float(np.mean(values)) if values else None


PLOTS = {
    "entropy": ("token entropy (nats)", lambda row: row.get("actor/entropy")),
    "silenced_fraction": ("silenced tokens / response tokens", silenced_fraction),
    "val_accuracy": ("validation accuracy (%)", val_accuracy),
}


TRAINING_HEADER = [
    "run",
    "steps",
    "score (first, last)",
    "entropy (first, last)",
    "entropy min-max",
    "silenced fraction (mean)",
    "val accuracy % (first, last)",
]


def training_rows(logs: dict[str, list[dict]]) -> list[list[str]]:
    """One row per training log: what the curves show, in numbers."""

    def series(rows, value):
        return [v for v in (value(row) for row in rows) if v is not None]

    def first_last(values, fmt):
        return f"{fmt(values[0])}, {fmt(values[-1])}" if values else "-"

    rows = []
    for label, log in logs.items():
        entropy = series(log, lambda row: row.get("actor/entropy"))
        silenced = series(log, silenced_fraction)
        rows.append(
            [
                label,
                str(max((row["step"] for row in log if "actor/pg_loss" in row), default=0)),
                first_last(series(log, lambda row: row.get("critic/score/mean")), lambda v: f"{v:+.3f}"),
                first_last(entropy, lambda v: f"{v:.3f}"),
                f"{min(entropy):.3f}-{max(entropy):.3f}" if entropy else "-",
                f"{100 * float(np.mean(silenced)):.3f}%" if silenced else "-",
                first_last(series(log, val_accuracy), lambda v: f"{v:.1f}"),
            ]
        )
    return rows


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


# ---------------------------------------------------------------- silenced tokens

TOKEN_CATEGORIES = ("digits", "math/LaTeX", "words", "punctuation", "whitespace/formatting", "other")
MATH_CHARS = set("+-*/=^_()[]{}<>|\\$%×÷·√∞≤≥≠±")
MARKDOWN = ("*", "**", "-", "#", "##", "###", "---")


def token_category(text: str) -> str:
    """The paper's reading of its word clouds: digits and symbols vs words (docs/method.md section 6)."""
    core = text.strip()
    if not core or core in MARKDOWN:
        return "whitespace/formatting"
    if core.isdigit():
        return "digits"
    symbols = not any(c.isalnum() for c in core)
    if re.fullmatch(r"\\[A-Za-z]+", core) or (symbols and any(c in MATH_CHARS for c in core)):
        return "math/LaTeX"
    if len(core) == 1 and core.isalpha() and core not in "aAI":  # a lone letter: a variable ("x")
        return "math/LaTeX"
    if re.fullmatch(r"[A-Za-z']+", core):
        return "words"
    return "punctuation" if symbols else "other"


def token_summary(groups: dict[str, list[str]], top: int = 30) -> dict:
    """Per group: token count, the ``top`` most frequent tokens, category shares."""
    summary = {}
    for name, tokens in groups.items():
        counts = collections.Counter(tokens)
        categories = collections.Counter(token_category(t) for t in tokens)
        summary[name] = {
            "tokens": len(tokens),
            "top": [[t, c] for t, c in counts.most_common(top)],
            "category_shares": {c: categories[c] / max(len(tokens), 1) for c in TOKEN_CATEGORIES},
        }
    return summary


def plot_tokens(summary: dict, path: str, title: str, top: int = 20) -> None:
    """Bars of the most frequent tokens of the first two groups and every group's category shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    colors = ["tab:red", "tab:blue", "tab:gray", "tab:green"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 6))
    for ax, name, color in zip(axes[:2], names[:2], colors):
        shown = summary[name]["top"][:top][::-1]
        ax.barh([repr(t)[1:-1] or "''" for t, _ in shown], [c for _, c in shown], color=color)
        ax.set_title(f"{name.replace('_', ' ')}: top {len(shown)} of {summary[name]['tokens']}")
        ax.set_xlabel("count")
    width = 0.8 / len(names)
    for k, (name, color) in enumerate(zip(names, colors)):
        shares = [100 * summary[name]["category_shares"][c] for c in TOKEN_CATEGORIES]
        positions = [i + (k - (len(names) - 1) / 2) * width for i in range(len(TOKEN_CATEGORIES))]
        axes[2].bar(positions, shares, width, color=color, label=name.replace("_", " "))
    axes[2].set_xticks(range(len(TOKEN_CATEGORIES)), TOKEN_CATEGORIES, rotation=30, ha="right")
    axes[2].set_ylabel("% of the group's tokens")
    axes[2].set_title("token categories")
    axes[2].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from stapo_verl.runlog import read_metrics

    parser = argparse.ArgumentParser(
        prog="stapo-verl report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("evals", nargs="*", help="eval output directories (summary.json + samples.jsonl)")
    parser.add_argument("--logs", nargs="*", default=[], help="training logs: PATH or LABEL=PATH (verl file logger)")
    parser.add_argument(
        "--dumps",
        nargs="*",
        default=[],
        help="silenced-token dumps: policy_loss.dump_dir directories or their JSONL files",
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0, help="bootstrap / permutation seed")
    parser.add_argument("--replicates", type=int, default=2000, help="bootstrap replicates")
    parser.add_argument("--permutations", type=int, default=10000, help="sign-flip permutations")
    args = parser.parse_args(argv)
    for option in ("replicates", "permutations"):  # zero draws give no interval and p = 1 for anything
        if getattr(args, option) < 100:
            parser.error(f"--{option} must be at least 100, got {getattr(args, option)}")
    if not args.evals and not args.logs and not args.dumps:
        parser.error("give eval directories, --logs and/or --dumps (or --grid DIR)")
    os.makedirs(args.out, exist_ok=True)
    written = []
    report: dict = {}
    if args.evals:
        report = build_report([load_eval(p) for p in args.evals], args.seed, args.replicates, args.permutations)
        written += [f"{stem}.*" for stem in write_tables(report, args.out)]
        written += plot_ablation(report, args.out)
    logs = {}
    for item in args.logs:
        label, sep, path = item.partition("=")
        if not sep:
            label, path = os.path.splitext(os.path.basename(item))[0], item
        logs[label] = read_metrics(path)
    if logs:
        _write(
            args.out,
            "training",
            TRAINING_HEADER,
            training_rows(logs),
            "Training logs: first and last logged values per run",
            latex=False,
        )
        written += ["training.*"] + plot_training(logs, args.out)
        report["training"] = {label: rows for label, rows in logs.items()}
    if args.dumps:
        from stapo_verl.analysis.dump import read_token_dumps

        summary = token_summary(read_token_dumps(args.dumps))
        if not summary:
            raise ValueError(f"--dumps {args.dumps}: no token records in them")
        plot_tokens(summary, os.path.join(args.out, "silenced_tokens.png"), "S2T: silenced tokens vs kept candidates")
        report["tokens"] = summary
        written.append("silenced_tokens.png")
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"stapo-verl report -> {args.out}: " + ", ".join(written + ["report.json"]))
    return 0
