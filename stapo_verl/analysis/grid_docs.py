"""The grid report's tables inside hand-written pages (``stapo-verl report --grid ... --docs FILE...``).

A page marks where a table goes and keeps its own prose around it:

    <!-- stapo-verl report: headline -->
    (replaced by the report on every run)
    <!-- /stapo-verl report -->

so README's headline table and the comparison page's tables are re-made with the report from the
same raw logs, and never drift from ``grid.json`` (``tests/test_docs.py`` checks the committed
pages against the committed logs). What the numbers mean stays hand-written around the blocks.
"""

from __future__ import annotations

import re

from stapo_verl.analysis.report import METHOD_NAMES, TARGET

BLOCK = re.compile(r"(<!-- stapo-verl report: (?P<name>[\w-]+) -->\n).*?(<!-- /stapo-verl report -->)", re.S)


def _name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def _cell(interval, scale: float = 1.0, digits: int = 1) -> str:
    if interval is None:
        return "-"
    mean = f"{interval['mean'] * scale:.{digits}f}"
    if interval["low"] is None:
        return mean
    return f"{mean} [{interval['low'] * scale:.{digits}f}, {interval['high'] * scale:.{digits}f}]"


def _by_finish(report: dict) -> list[str]:
    return sorted(report["runs"], key=lambda name: report["runs"][name].get("finished") or "")


def status(report: dict) -> str:
    """How many of the grid's runs have finished (in the order they did), which remain, their wall time."""
    done = _by_finish(report)
    remaining = [name for name in report["planned"] if name not in report["runs"]]
    hours = sum(report["runs"][name].get("wall_s") or 0.0 for name in done) / 3600
    return (
        f"**{len(done)} of {len(done) + len(remaining)} runs finished** ({', '.join(done)}); "
        + (f"remaining: {', '.join(remaining)}." if remaining else "none remaining.")
        + f" Wall time of the finished runs: {hours:.1f} h."
    )


def headline(report: dict) -> str:
    """Per method: held-out accuracy before -> after for each decoding, entropy, silenced tokens;
    then STAPO minus each baseline per seed on held-out accuracy."""
    steps = sorted({summary["steps"] for summary in report["runs"].values()})
    last = f"step {steps[0]}" if len(steps) == 1 else "the last step"
    labels = report["labels"]
    lines = [
        "| method | seeds | "
        + " | ".join(f"held-out {report['label_names'][label]}: before -> {last}" for label in labels)
        + f" | entropy at {last} (largest drift) | silenced tokens |",
        "|---" * (len(labels) + 4) + "|",
    ]
    for method in report["methods"]:
        seeds = report["method_seeds"][method]
        table = report["table"][method]
        cells = []
        for label in labels:
            before = "/".join(f"{report['step0'][s][label]:.1f}" for s in seeds if label in report["step0"].get(s, {}))
            cells.append(f"{before or '-'} -> {_cell(table.get(f'held_out_end/{label}'))}")
        cells.append(f"{_cell(table['entropy_end'], digits=2)} ({_cell(table['entropy_max_drift'], digits=2)})")
        cells.append(f"{_cell(table['silenced_frac_mean'], 100.0, 3)}%")
        lines.append(f"| {_name(method)} | {', '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Held-out accuracy in %, mean [95% t interval] over seeds (no interval from one seed); entropy in "
        "nats; silenced tokens in % of response tokens (20-Entropy masks 80% by construction).",
        "",
    ]
    paired = [
        (baseline, label, metrics[f"held_out_end/{label}"])
        for baseline, metrics in report["paired"].items()
        for label in labels
        if metrics.get(f"held_out_end/{label}")
    ]
    if not paired:
        return "\n".join(lines + [f"No seed has both {_name(TARGET)} and a baseline finished yet."])
    lines += [
        f"| baseline | held-out accuracy at {last} | {_name(TARGET)} minus baseline, per seed (points) | "
        "mean [95% interval], paired t-test |",
        "|---|---|---|---|",
    ]
    for baseline, label, interval in paired:
        per_seed = ", ".join(f"{d:+.1f}" for d in interval["per_seed"])
        test = (
            f" [{interval['low']:+.1f}, {interval['high']:+.1f}], p = {interval['p']:.2g}"
            if interval.get("low") is not None
            else " (one seed: no interval)"
        )
        lines.append(
            f"| {_name(baseline)} | {report['label_names'][label]} | {per_seed} | {interval['mean']:+.1f}{test} |"
        )
    return "\n".join(lines)


def seeds(report: dict) -> str:
    """Held-out accuracy at the end, run by run: a row per seed, a column per method, each
    decoding's value in the cell (the numbers the intervals above are made of)."""
    labels = report["labels"]
    lines = [
        "| seed | before training | " + " | ".join(_name(m) for m in report["methods"]) + " |",
        "|---" * (len(report["methods"]) + 2) + "|",
    ]
    for seed in report["seeds"]:
        before = report["step0"].get(seed, {})
        cells = [" / ".join(f"{before[label]:.1f}" if label in before else "-" for label in labels)]
        for method in report["methods"]:
            summary = report["runs"].get(f"{method}_seed{seed}")
            end = summary["held_out_end"] if summary else {}
            cells.append(" / ".join(f"{end[label]:.1f}" if label in end else "-" for label in labels))
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(
        lines
        + [
            "",
            "Held-out accuracy in % ("
            + " / ".join(report["label_names"][label] for label in labels)
            + "); -: not finished.",
        ]
    )


def claims(report: dict) -> str:
    lines = ["| claim | verdict | numbers |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {c['verdict']} | {c['numbers']} |" for c in report["claims"]]
    return "\n".join(lines + (["", report["claims_note"]] if report["claims_note"] else []))


def runs(report: dict) -> str:
    lines = [
        "| run | finished (UTC) | wall time | median step | validations during training |",
        "|---|---|---|---|---|",
    ]
    for name in _by_finish(report):
        summary = report["runs"][name]
        finished = (summary.get("finished") or "-").replace("T", " ")[:16]
        validations = ", ".join(f"{s:.0f}" for s in summary["validation_s"])
        lines.append(
            f"| `{name}` | {finished} | {(summary.get('wall_s') or 0.0) / 60:.0f} min | "
            f"{summary['step_s_median']:.0f} s | {validations + ' s' if validations else '-'} |"
        )
    return "\n".join(lines)


BLOCKS = {"status": status, "headline": headline, "seeds": seeds, "claims": claims, "runs": runs}


def fill(text: str, report: dict, where: str = "the page") -> str:
    """``text`` with every marked block re-made from ``report``."""
    names = [match["name"] for match in BLOCK.finditer(text)]
    if not names:
        raise ValueError(
            f"{where} has no block to fill: mark one with '<!-- stapo-verl report: NAME -->' and "
            f"'<!-- /stapo-verl report -->' on lines of their own, NAME one of {', '.join(BLOCKS)}"
        )
    unknown = sorted(set(names) - set(BLOCKS))
    if unknown:
        raise ValueError(f"{where}: unknown report block {', '.join(unknown)}; accepted: {', '.join(BLOCKS)}")
    return BLOCK.sub(lambda m: m.group(1) + BLOCKS[m["name"]](report).rstrip("\n") + "\n" + m.group(3), text)


def update(paths: list[str], report: dict) -> None:
    """Re-make the blocks of every page; nothing is written unless every page's blocks are known."""
    filled = {}
    for path in paths:
        with open(path) as f:
            filled[path] = fill(f.read(), report, where=path)
    for path, text in filled.items():
        with open(path, "w") as f:
            f.write(text)
