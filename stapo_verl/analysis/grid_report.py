"""``stapo-verl report --grid DIR``: the comparison a ``stapo-verl grid`` made, from its raw logs.

Reads ``DIR/runs/<method>_seed<seed>/`` (``run.json``, verl's ``metrics.jsonl``, STAPO's ``dump/``)
and writes to ``--out``:

- ``grid.md``: per method, over seeds, mean and 95% t interval of the held-out avg@k of each
  decoding at the end and its change from before training, entropy at the end and its largest
  drift from step 1, response length, clip fraction, silenced fraction; STAPO minus each
  baseline per seed with a 95% interval and a paired t-test; whether each seed's step-1 rollouts
  were identical across methods (from the logs); the paper's claims, marked supported,
  contradicted or not decidable at this scale.
- per run, the step at which each instability criterion of the stability study was first met
  (``stability.py``), and the study's rule for "STAPO prevents it" among the claims;
- ``held_out_accuracy.png``, ``entropy.png``, ``training.png`` (reward, verl's clip fractions, grad
  norm, response length), ``silenced_fraction.png``: against step, a line per
  method (mean over seeds) with a band from the lowest to the highest seed.
- ``grid.json``: every number above.

Held-out accuracy comes from verl's validation metrics ``val-core/<data_source>/acc/mean@<k>``
(one data_source per decoding); before training every method of a seed starts from the same model,
so the seed's first logged value is shared by its runs (an earlier grid validated only in a seed's
first run; where several runs validated, the report says whether they agree).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

import numpy as np

from stapo_verl.analysis import grid_docs, stability
from stapo_verl.analysis.report import METHOD_NAMES, TARGET, silenced_fraction, token_category
from stapo_verl.analysis.stats import paired_t, seed_interval
from stapo_verl.experiments.grid import precision_line, read_plan, run_precision
from stapo_verl.runlog import read_metrics

VAL_KEY = re.compile(r"^val-core/(?P<source>[^/]+)/acc/mean@(?P<k>\d+)$")
# the paper's claim about how much S2T silences (docs/method.md section 1: "< 0.01% of tokens")
SILENCED_CLAIM = 1e-4
SYMBOL_CATEGORIES = ("digits", "math/LaTeX", "punctuation")
# the paper's two decodings, as stapo-verl eval's --setting names them (a held-out label's suffix)
DECODINGS = {"aligned": ": T 1.0, top-p 1.0", "default": ": T 0.7, top-p 0.9"}
STEP1_KEYS = ("response_length/mean", "critic/score/mean", "critic/advantages/max")
# training.png: what the stability criteria and a reader of a long run look at, per step
TRAINING_CURVES = (
    ("critic/score/mean", "training reward", "mean score (-1..1)"),
    # verl's two: the PPO clip active at either bound; the dual clip (A < 0, ratio > clip_ratio_c)
    ("actor/pg_clipfrac", "PPO clip active (either bound)", "fraction of tokens"),
    ("actor/pg_clipfrac_lower", "dual clip active (A < 0, ratio > c)", "fraction of tokens"),
    ("actor/grad_norm", "gradient norm", "norm before clipping"),
    ("response_length/mean", "response length", "tokens"),
)


def load_runs(grid_dir: str) -> dict[tuple[str, int], dict]:
    """Finished runs: (method, seed) -> {"record", "rows", "dump", "precision", "why_precision"}."""
    runs_dir = os.path.join(grid_dir, "runs")
    if not os.path.isdir(runs_dir):
        raise FileNotFoundError(f"{runs_dir} not found: give the --out directory of `stapo-verl grid`")
    runs = {}
    for name in sorted(os.listdir(runs_dir)):
        path = os.path.join(runs_dir, name)
        record_path = os.path.join(path, "run.json")
        if not os.path.exists(record_path):
            continue
        with open(record_path) as f:
            record = json.load(f)
        if record.get("exit_code") != 0:
            continue
        dump = os.path.join(path, "dump")
        runs[(record["method"], int(record["seed"]))] = {
            "record": record,
            "rows": read_metrics(os.path.join(path, "metrics.jsonl")),
            "dump": dump if os.path.isdir(dump) and os.listdir(dump) else None,
            "precision": run_precision(path, record),
            "why_precision": match.group(2) if (match := precision_line(path)) else None,  # the CPU's bf16 kind
        }
    if not runs:
        raise ValueError(f"no finished run in {runs_dir}")
    return runs


def decoding(label: str) -> str:
    """A held-out label's decoding ("aligned", "default") where its data_source names one, else ""."""
    name = label.split(" ")[0].rsplit("-", 1)[-1]
    return name if name in DECODINGS else ""


def held_out(rows: list[dict]) -> dict[str, dict[int, float]]:
    """decoding label (data_source, @k) -> step -> accuracy in percent."""
    series: dict[str, dict[int, float]] = {}
    for row in rows:
        for key, value in row.items():
            match = VAL_KEY.match(key)
            if match:
                series.setdefault(f"{match['source']} avg@{match['k']}", {})[row["step"]] = 100.0 * value
    return series


def aligned_accuracy(rows: list[dict], step0: dict[str, float]) -> dict[int, float]:
    """step -> held-out avg@k at T 1.0 / top-p 1.0 (percent), the seed's step 0 included: what the
    stability criteria judge."""
    for label, by_step in held_out(rows).items():
        if decoding(label) == "aligned":
            return {**({0: step0[label]} if label in step0 else {}), **by_step}
    return {}


def run_summary(rows: list[dict], step0: dict[str, float]) -> dict:
    """One run's numbers; ``step0``: its seed's held-out accuracy before training."""
    train = stability.training_steps(rows)
    entropy = [row["actor/entropy"] for row in train]
    silenced = [v for v in (silenced_fraction(row) for row in train) if v is not None]
    summary = {
        "steps": len(train),
        "entropy_end": entropy[-1],
        "entropy_max_drift": max(abs(h - entropy[0]) for h in entropy),
        "response_length_end": train[-1]["response_length/mean"],
        "clip_frac_mean": float(np.mean([row.get("actor/pg_clipfrac", 0.0) for row in train])),
        "silenced_frac_mean": float(np.mean(silenced)) if silenced else 0.0,
        "step_s_median": float(
            np.median([row["timing_s/step"] for row in train if "timing_s/step" in row] or [np.nan])
        ),
        # verl logs how long a validation during training took in that step's row (not the one before training)
        "validation_s": [row["timing_s/testing"] for row in train if "timing_s/testing" in row],
        "held_out_end": {},
        "held_out_change": {},
        "stability": stability.judge(rows, aligned_accuracy(rows, step0)),
    }
    for label, by_step in held_out(rows).items():
        last = max(by_step)
        if last > 0:
            summary["held_out_end"][label] = by_step[last]
            if label in step0:
                summary["held_out_change"][label] = by_step[last] - step0[label]
    return summary


def build(runs: dict[tuple[str, int], dict], planned: list[str] | None = None) -> dict:
    """``planned``: every run the grid was to make (default: the methods x seeds seen)."""
    methods = sorted({m for m, _ in runs}, key=lambda m: list(METHOD_NAMES).index(m) if m in METHOD_NAMES else 99)
    seeds = sorted({s for _, s in runs})
    step0 = {}
    for seed in seeds:  # the seed's validation before training, from whichever run logged it
        for (_, s), run in runs.items():
            if s == seed:
                values = {label: by_step[0] for label, by_step in held_out(run["rows"]).items() if 0 in by_step}
                if values:
                    step0[seed] = values
                    break
    per_run = {(m, s): run_summary(run["rows"], step0.get(s, {})) for (m, s), run in runs.items()}
    for key, summary in per_run.items():  # the grid's record of the run: its wall time, when it ended
        summary["wall_s"] = runs[key]["record"].get("wall_s")
        summary["finished"] = runs[key]["record"].get("finished")
    labels = sorted({label for summary in per_run.values() for label in summary["held_out_end"]})
    metrics = (
        [f"held_out_end/{label}" for label in labels]
        + [f"held_out_change/{label}" for label in labels]
        + ["entropy_end", "entropy_max_drift", "response_length_end", "clip_frac_mean", "silenced_frac_mean"]
    )

    def value(summary: dict, metric: str) -> float | None:
        head, _, label = metric.partition("/")
        return summary[head].get(label) if label else summary[head]

    method_seeds = {m: [s for s in seeds if (m, s) in per_run] for m in methods}
    table = {}
    for method in methods:
        table[method] = {}
        for metric in metrics:
            values = [value(per_run[(method, s)], metric) for s in method_seeds[method]]
            values = [v for v in values if v is not None]
            table[method][metric] = seed_interval(values) if values else None
    paired = {}
    if TARGET in methods:
        for baseline in [m for m in methods if m != TARGET]:
            paired[baseline] = {}
            for metric in metrics:
                common = [s for s in seeds if (TARGET, s) in per_run and (baseline, s) in per_run]
                diffs = [
                    value(per_run[(TARGET, s)], metric) - value(per_run[(baseline, s)], metric)
                    for s in common
                    if value(per_run[(TARGET, s)], metric) is not None
                    and value(per_run[(baseline, s)], metric) is not None
                ]
                paired[baseline][metric] = dict(paired_t(diffs), per_seed=diffs) if diffs else None
    step1 = {}
    for seed in seeds:
        firsts = {m: stability.training_steps(runs[(m, seed)]["rows"])[0] for m in methods if (m, seed) in runs}
        values = {key: {m: firsts[m].get(key) for m in sorted(firsts)} for key in STEP1_KEYS}
        zeros = {  # each run's validation before training, where it made one
            m: {label: by_step[0] for label, by_step in held_out(runs[(m, seed)]["rows"]).items() if 0 in by_step}
            for m in firsts
        }
        zeros = {m: v for m, v in zeros.items() if v}
        step1[seed] = {
            "methods": sorted(firsts),
            "values": values,
            "identical": all(len(set(v.values())) == 1 for v in values.values()),
            "validations_before_training": len(zeros),
            "validations_identical": len({json.dumps(v, sort_keys=True) for v in zeros.values()}) <= 1,
        }
    tokens = silenced_tokens(runs)
    # for readers of tables: "sums-aligned avg@4" -> "avg@4: T 1.0, top-p 1.0"
    label_names = {
        label: f"{label.rsplit(' ', 1)[-1]}{DECODINGS[decoding(label)]}" if decoding(label) else label
        for label in labels
    }
    planned = planned or [f"{m}_seed{s}" for s in seeds for m in methods]
    report = {
        "methods": methods,
        "seeds": seeds,
        "method_seeds": method_seeds,
        "planned": planned,
        "labels": labels,
        "label_names": label_names,
        "step0": step0,
        "table": table,
        "paired": paired,
        "step1_identical": step1,
        "precisions": {f"{m}_seed{s}": run["precision"] for (m, s), run in sorted(runs.items())},
        "why_precisions": {f"{m}_seed{s}": run["why_precision"] for (m, s), run in sorted(runs.items())},
        "silenced_tokens": tokens,
        "runs": {f"{m}_seed{s}": summary for (m, s), summary in per_run.items()},
    }
    report["claims"] = claims(report)
    report["claims_note"] = multiplicity_note(report)
    return report


def silenced_tokens(runs: dict) -> dict | None:
    """STAPO's silenced tokens over every dumped update: count and category shares."""
    from stapo_verl.analysis.dump import read_token_dumps

    dumps = [run["dump"] for (method, _), run in runs.items() if method == TARGET and run["dump"]]
    if not dumps:
        return None
    tokens = read_token_dumps(dumps).get("silenced", [])
    if not tokens:
        return None
    categories = [token_category(t) for t in tokens]
    shares = {c: categories.count(c) / len(tokens) for c in sorted(set(categories))}
    return {
        "tokens": len(tokens),
        "category_shares": shares,
        "symbols_share": sum(shares.get(c, 0.0) for c in SYMBOL_CATEGORIES),
    }


def _verdict(interval: dict | None, better_when_positive: bool = True) -> str:
    if interval is None or interval.get("low") is None:
        return "not decidable at this scale"
    low, high = interval["low"], interval["high"]
    if not better_when_positive:
        low, high = -high, -low
    if low > 0:
        return "supported"
    if high < 0:
        return "contradicted"
    return "not decidable at this scale"


def claims(report: dict) -> list[dict]:
    """The paper's claims against what this grid measured."""
    if TARGET not in report["methods"]:
        return [
            {
                "claim": "any of the paper's claims",
                "verdict": "not decidable at this scale",
                "numbers": "no STAPO run has finished",
            }
        ]
    rows = []

    def unstable_by(criteria: tuple[str, ...]):
        def unstable(method: str) -> list[bool]:
            return [
                any(report["runs"][f"{method}_seed{seed}"]["stability"]["steps"][c] is not None for c in criteria)
                for seed in report["method_seeds"].get(method, [])  # the control may not be in the grid
            ]

        return unstable

    for baseline in [m for m in stability.BASELINES if m in report["methods"]]:
        name = METHOD_NAMES.get(baseline, baseline)
        rows.append(
            {
                "claim": f"STAPO prevents {name}'s instability (the stability study's criteria and rule)",
                **stability.prevents(unstable_by(stability.CRITERIA), baseline),
            }
        )
        rows.append(
            {
                "claim": f"STAPO prevents {name}'s instability, criteria 1-3 only (post hoc: criterion 4 "
                "is met by sampling noise at 4 prompts a step)",
                **stability.prevents(unstable_by(stability.WITHOUT_REWARD), baseline),
            }
        )
    for baseline, metrics in report["paired"].items():
        for label in report["labels"]:
            interval = metrics.get(f"held_out_end/{label}")
            rows.append(
                {
                    "claim": f"STAPO's held-out accuracy ({report['label_names'][label]}) is higher than {METHOD_NAMES.get(baseline, baseline)}'s",
                    "verdict": _verdict(interval),
                    "numbers": _interval_text(interval, "points"),
                }
            )
        interval = metrics.get("entropy_max_drift")
        rows.append(
            {
                "claim": f"STAPO's entropy drifts less than {METHOD_NAMES.get(baseline, baseline)}'s (largest drift from step 1)",
                "verdict": _verdict(interval, better_when_positive=False),
                "numbers": _interval_text(interval, "nats"),
            }
        )
    # a bound the paper states of its runs, so it is judged run by run: each run's fraction is a
    # mean over thousands of tokens, and a t interval over two or three seeds is far wider than
    # the seed-to-seed spread it estimates
    silenced = [
        summary["silenced_frac_mean"]
        for name, summary in sorted(report["runs"].items())
        if name.startswith(f"{TARGET}_seed")
    ]
    if silenced:
        verdict = (
            "supported"
            if all(f < SILENCED_CLAIM for f in silenced)
            else "contradicted"
            if all(f > SILENCED_CLAIM for f in silenced)
            else "not decidable at this scale"
        )
        rows.append(
            {
                "claim": "S2T silences < 0.01% of response tokens",
                "verdict": verdict,
                "numbers": f"{', '.join(f'{100 * f:.3f}%' for f in silenced)} of tokens "
                f"(each STAPO run's mean over its steps)",
            }
        )
    tokens = report["silenced_tokens"]
    if tokens is not None:
        share = tokens["symbols_share"]
        rows.append(
            {
                "claim": "the silenced tokens are mostly digits and symbols",
                "verdict": "supported" if share > 0.5 else "contradicted",
                "numbers": f"{100 * share:.0f}% of {tokens['tokens']} silenced tokens are "
                f"digits, math/LaTeX or punctuation",
            }
        )
    return rows


def multiplicity_note(report: dict) -> str:
    """How often the paired verdicts would decide something by chance alone (they are not corrected)."""
    judged = {"entropy_max_drift", *(f"held_out_end/{label}" for label in report["labels"])}  # claims()' rows
    tests = sum(
        1
        for metrics in report["paired"].values()
        for metric, interval in metrics.items()
        if metric in judged and interval is not None and interval.get("low") is not None
    )
    if tests < 2:
        return ""
    return (
        f"Each paired verdict is its own two-sided 95% test, {tests} of them, not corrected for their number: "
        f"were no method different from another, at least one would come out supported or contradicted with "
        f"probability 1 - 0.95^{tests} = {100 * (1 - 0.95**tests):.0f}% if they were independent (they share runs)."
    )


def uneven_seeds(report: dict) -> bool:
    """Whether the methods' means are over different seeds (a grid still running)."""
    return len({tuple(seeds) for seeds in report["method_seeds"].values()}) > 1


def _interval_text(interval: dict | None, unit: str) -> str:
    if interval is None:
        return "-"
    if interval.get("low") is None:
        return f"{interval['mean']:+.3g} {unit} (one seed: no interval)"
    p = f", p = {interval['p']:.3g}" if interval.get("p") is not None else ""
    return (
        f"{interval['mean']:+.3g} {unit} [{interval['low']:+.3g}, {interval['high']:+.3g}]{p} ({interval['n']} seeds)"
    )


def _cell(interval: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    if interval is None:
        return "-"
    mean = interval["mean"] * scale
    if interval["low"] is None:
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} [{interval['low'] * scale:.{digits}g}, {interval['high'] * scale:.{digits}g}]"


def markdown(report: dict) -> str:
    names = {m: METHOD_NAMES.get(m, m) for m in report["methods"]}
    lines = [
        f"# Grid report: {', '.join(names.values())} x seeds {report['seeds']}",
        "",
        "Mean over the method's seeds [95% t interval]. Held-out accuracy in %, at the last step; change "
        "from before training in points.",
        "",
    ]
    if uneven_seeds(report):  # a partial grid: one method's mean holds a seed another's lacks
        lines += [
            "The methods have not finished the same seeds: compare them through the paired differences "
            "below (the seeds both finished), not across the rows of this table.",
            "",
        ]
    columns = (
        [f"held_out_end/{label}" for label in report["labels"]]
        + [f"held_out_change/{label}" for label in report["labels"]]
        + ["entropy_end", "entropy_max_drift", "response_length_end", "clip_frac_mean", "silenced_frac_mean"]
    )
    lines += [
        "| method | seeds | " + " | ".join(c.replace("/", ": ") for c in columns) + " |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for method in report["methods"]:
        cells = [_cell(report["table"][method].get(c), 100.0 if c == "silenced_frac_mean" else 1.0) for c in columns]
        seeds = ", ".join(map(str, report["method_seeds"][method]))
        lines.append(f"| {names[method]} | {seeds} | " + " | ".join(cells) + " |")
    lines += ["", "(silenced fraction in % of response tokens; 20-Entropy silences 80% by construction)", ""]
    if report["paired"]:
        lines += [
            "## STAPO minus each baseline, paired by seed",
            "",
            "| baseline | metric | per seed | mean [95% interval], paired t-test |",
            "|---|---|---|---|",
        ]
        for baseline, metrics in report["paired"].items():
            for metric, interval in metrics.items():
                if interval is not None and (metric.startswith("held_out") or metric == "entropy_max_drift"):
                    per_seed = ", ".join(f"{d:+.3g}" for d in interval["per_seed"])
                    lines.append(
                        f"| {names[baseline]} | {metric.replace('/', ': ')} | {per_seed} | "
                        f"{_interval_text(interval, '')} |"
                    )
        lines.append("")
    lines += ["## Step-1 rollouts identical across methods (from the logs: " + ", ".join(STEP1_KEYS) + ")", ""]
    for seed, check in report["step1_identical"].items():
        validations = check.get("validations_before_training", 0)
        agree = (
            f"; its {validations} validations before training {'agree' if check['validations_identical'] else 'DIFFER'}"
            if validations > 1
            else ""
        )
        lines.append(
            f"- seed {seed}: {'identical' if check['identical'] else 'NOT identical'} across {check['methods']}{agree}"
        )
        if not check[
            "identical"
        ]:  # how far apart, key by key (same rewards with other lengths is not a broken pairing)
            for key, by_method in check["values"].items():
                shown = ", ".join(f"{names[m]} {v:.6g}" for m, v in by_method.items() if v is not None)
                lines.append(f"  - {key}: {'same' if len(set(by_method.values())) == 1 else 'differ'}: {shown}")
    by_precision: dict[str, list[str]] = {}
    for name, precision in report.get("precisions", {}).items():
        by_precision.setdefault(precision or "not recorded", []).append(name)
    if len(by_precision) == 1:
        (precision,) = by_precision
        lines.append(
            "- precision: " + ("not recorded" if precision == "not recorded" else f"every run trained in {precision}")
        )
    elif by_precision:  # the grid refuses this; runs copied in by hand could still mix
        lines.append(
            "- precision: MIXED, runs of a seed do not pair: "
            + "; ".join(f"{p}: {', '.join(names)}" for p, names in sorted(by_precision.items()))
        )
    by_reason: dict[str, list[str]] = {}
    for name, reason in report.get("why_precisions", {}).items():
        by_reason.setdefault(reason or "not in its output", []).append(name)
    if len(by_reason) > 1:  # runs on CPUs of other kinds: their step times do not compare
        lines.append(
            "- why (each run's first line; step times compare only within one): "
            + "; ".join(f"{reason}: {', '.join(names)}" for reason, names in sorted(by_reason.items()))
        )
    elif by_reason:
        lines.append(f"- why (each run's first line): {next(iter(by_reason))}")
    lines += [
        "",
        "## Instability criteria per run (step first met; examples/results/cpu_stability/README.md)",
        "",
        "| run | " + " | ".join(c.replace("_", " ") for c in stability.CRITERIA) + " | unstable |",
        "|---" * (len(stability.CRITERIA) + 2) + "|",
    ]
    for name, summary in sorted(report["runs"].items()):
        judged = summary["stability"]
        cells = ["-" if judged["steps"][c] is None else str(judged["steps"][c]) for c in stability.CRITERIA]
        verdict = f"yes, from step {judged['first']}" if judged["unstable"] else "no"
        lines.append(f"| {name} ({summary['steps']} steps) | " + " | ".join(cells) + f" | {verdict} |")
    lines += ["", "## The paper's claims at this scale", "", "| claim | verdict | numbers |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {c['verdict']} | {c['numbers']} |" for c in report["claims"]]
    if report["claims_note"]:
        lines += ["", report["claims_note"]]
    return "\n".join(lines) + "\n"


def plot(report: dict, runs: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    over = (  # the seeds behind each figure's means
        "; ".join(f"{METHOD_NAMES.get(m, m)} {seeds}" for m, seeds in report["method_seeds"].items())
        if uneven_seeds(report)
        else report["seeds"]
    )
    panels = {
        "held_out_accuracy": [
            (label, lambda rows, label=label: held_out(rows).get(label, {}), "held-out accuracy (%)")
            for label in report["labels"]
        ],
        "entropy": [
            (
                "entropy",
                lambda rows: {r["step"]: r["actor/entropy"] for r in stability.training_steps(rows)},
                "token entropy (nats)",
            )
        ],
        "training": [
            (
                title,
                lambda rows, key=key: {r["step"]: r[key] for r in stability.training_steps(rows) if key in r},
                ylabel,
            )
            for key, title, ylabel in TRAINING_CURVES
        ],
        "silenced_fraction": [
            (
                "silenced fraction",
                lambda rows: {
                    r["step"]: silenced_fraction(r)
                    for r in stability.training_steps(rows)
                    if silenced_fraction(r) is not None
                },
                "silenced / response tokens",
            )
        ],
    }
    for name, series in panels.items():
        if not series:  # no held-out validation after step 0: no accuracy curve
            continue
        columns = min(len(series), 3)
        rows_of_panels = -(-len(series) // columns)
        fig, axes = plt.subplots(
            rows_of_panels, columns, figsize=(6 * columns, 3.8 * rows_of_panels), dpi=120, squeeze=False
        )
        for ax in axes.flat[len(series) :]:
            ax.set_visible(False)
        for ax, (title, get, ylabel) in zip(axes.flat, series):
            for method in report["methods"]:
                per_seed = []
                for seed in report["method_seeds"][method]:
                    points = dict(get(runs[(method, seed)]["rows"]))
                    if name == "held_out_accuracy" and 0 not in points and seed in report["step0"]:
                        points[0] = report["step0"][seed].get(title)  # the seed's shared step 0
                    per_seed.append({k: v for k, v in points.items() if v is not None})
                steps = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
                if not steps:
                    continue
                values = np.array([[p[s] for s in steps] for p in per_seed])
                line = ax.plot(
                    steps,
                    values.mean(0),
                    marker="o" if len(steps) < 12 else None,
                    markersize=3,
                    label=METHOD_NAMES.get(method, method),
                )[0]
                ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.15)
            ax.set_xlabel("training step")
            ax.set_ylabel(ylabel)
            ax.set_title(title + DECODINGS.get(decoding(title), ""))
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:  # a panel no method has values for (silenced, JustRL alone)
                ax.legend(fontsize=8)
        fig.suptitle(f"mean over seeds {over}; band: lowest to highest seed", fontsize=9)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, f"{name}.png"))
        plt.close(fig)
        written.append(f"{name}.png")
    return written


def write(grid_dir: str, out_dir: str, docs: Sequence[str] = ()) -> list[str]:
    """The report into ``out_dir``; ``docs``: pages whose marked blocks are re-made (``grid_docs``)."""
    runs = load_runs(grid_dir)
    report = build(runs, read_plan(grid_dir))
    if docs:  # first: a page with an unknown block stops the command before anything is written
        grid_docs.update(list(docs), report)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "grid.md"), "w") as f:
        f.write(markdown(report))
    with open(os.path.join(out_dir, "grid.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)
    return ["grid.md", "grid.json", *plot(report, runs, out_dir)]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="stapo-verl report --grid", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grid", required=True, help="a `stapo-verl grid` output directory (its runs/)")
    parser.add_argument("--out", required=True, help="where grid.md, grid.json and the figures go")
    parser.add_argument(
        "--docs",
        nargs="+",
        default=[],
        metavar="PAGE",
        help="markdown pages whose '<!-- stapo-verl report: NAME -->' blocks are re-made "
        f"(NAME: {', '.join(grid_docs.BLOCKS)})",
    )
    args = parser.parse_args(argv)
    written = write(args.grid, args.out, args.docs)
    print(
        f"stapo-verl report -> {args.out}: "
        + ", ".join(written)
        + (f"; tables re-made in {', '.join(args.docs)}" if args.docs else "")
    )
    return 0
