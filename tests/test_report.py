"""stapo-verl eval (CPU, tiny model) and stapo-verl report (tables, intervals, tests, plots)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from test_data import fixture_file

from stapo_verl.analysis.eval import BENCHMARKS
from stapo_verl.analysis.report import load_eval, plot_training
from stapo_verl.cli import main as cli
from stapo_verl.runlog import format_summary, read_metrics


def write_eval(path, method, run_seed, setting, scores, model="qwen3_1.7b"):
    """A synthetic `stapo-verl eval` output: scores = {benchmark: {problem_id: [sample scores]}}."""
    os.makedirs(path, exist_ok=True)
    config = {"method": method, "model": model, "run_seed": run_seed, "setting": setting}
    with open(os.path.join(path, "summary.json"), "w") as f:
        json.dump({"config": config}, f)
    with open(os.path.join(path, "samples.jsonl"), "w") as f:
        for bench, problems in scores.items():
            for problem_id, samples in problems.items():
                for i, score in enumerate(samples):
                    row = {
                        "benchmark": bench,
                        "problem_id": problem_id,
                        "sample": i,
                        "score": score,
                        "response_tokens": 10,
                        "finish": "stop",
                    }
                    f.write(json.dumps(row) + "\n")
    return str(path)


# two seeds of STAPO, one of GRPO; aime24 has 3 problems x 4 samples, math500 2 problems x 2 samples
STAPO = [
    {"aime24": {"a": [1, 1, 0, 0], "b": [0, 0, 0, 0], "c": [1, 1, 1, 1]}, "math500": {"x": [1, 0], "y": [1, 1]}},
    {"aime24": {"a": [1, 1, 1, 1], "b": [0, 0, 0, 1], "c": [1, 1, 1, 0]}, "math500": {"x": [1, 1], "y": [0, 1]}},
]
GRPO = [{"aime24": {"a": [0, 0, 0, 0], "b": [0, 0, 0, 0], "c": [1, 1, 0, 0]}, "math500": {"x": [0, 0], "y": [1, 0]}}]
# by hand: STAPO aime24 = mean(.5, 0, 1, 1, .25, .75) = 3.5/6; math500 = mean(.5, 1, 1, .5) = .75
EXPECTED = {
    ("STAPO", "AIME24"): 100 * 3.5 / 6,
    ("STAPO", "MATH500"): 75.0,
    ("STAPO", "Avg"): (100 * 3.5 / 6 + 75.0) / 2,
    ("GRPO", "AIME24"): 100 * 0.5 / 3,
    ("GRPO", "MATH500"): 25.0,
    ("GRPO", "Avg"): (100 * 0.5 / 3 + 25.0) / 2,
}


@pytest.fixture
def evals(tmp_path):
    paths = [write_eval(tmp_path / f"stapo{s}", "stapo", s, "aligned", scores) for s, scores in enumerate(STAPO)]
    paths.append(write_eval(tmp_path / "grpo0", "grpo", 0, "aligned", GRPO[0]))
    paths.append(write_eval(tmp_path / "stapo_default", "stapo", 0, "default", GRPO[0]))  # a second setting
    return paths


def read_csv(path):
    with open(path) as f:
        header, *rows = list(csv.reader(f))
    return [dict(zip(header, row)) for row in rows]


def test_report_tables_have_exactly_the_expected_numbers(evals, tmp_path):
    out = tmp_path / "report"
    assert cli(["report", *evals, "--out", str(out)]) == 0
    rows = read_csv(out / "table.csv")
    assert [(r["size"], r["method"]) for r in rows] == [("1.7B", "GRPO"), ("1.7B", "STAPO")]  # paper order
    for row in rows:
        for column in ("AIME24", "MATH500", "Avg"):
            aligned = row[column].split(" (")[0]
            assert float(aligned) == pytest.approx(EXPECTED[(row["method"], column)], abs=0.005)
    stapo = rows[1]
    assert stapo["AIME24"] == f"{100 * 3.5 / 6:.2f} ({100 * 0.5 / 3:.2f})"  # aligned (default), as the paper
    cells = {(c["method"], c["setting"]): c for c in json.load(open(out / "report.json"))["cells"]}
    assert cells[("stapo", "aligned")]["avg"]["aime24"] == pytest.approx(100 * 3.5 / 6, abs=1e-12)
    assert cells[("stapo", "aligned")]["seeds"] == 2
    for row in read_csv(out / "table_ci_aligned.csv"):
        for column in ("AIME24", "MATH500", "Avg"):
            mean, interval = row[column].split(" [")
            low, high = (float(x) for x in interval.rstrip("]").split(", "))
            assert low <= float(mean) <= high
    paired = {r["benchmark"]: r for r in read_csv(out / "paired_aligned.csv")}
    for column in ("AIME24", "MATH500", "Avg"):
        assert paired[column]["baseline"] == "GRPO"
        diff = EXPECTED[("STAPO", column)] - EXPECTED[("GRPO", column)]
        assert float(paired[column]["STAPO - baseline (points)"]) == pytest.approx(diff, abs=0.005)
        assert 0 < float(paired[column]["p (sign-flip)"]) <= 1
    tex = (out / "table.tex").read_text()
    assert "\\begin{tabular}" in tex and "STAPO" in tex and "\\bottomrule" in tex
    assert "| 1.7B | STAPO |" in (out / "table.md").read_text()


def test_report_is_deterministic(evals, tmp_path):
    for name in ("one", "two"):
        assert cli(["report", *evals, "--out", str(tmp_path / name)]) == 0
    for stem in ("table.csv", "table_ci_aligned.csv", "paired_aligned.csv", "report.json"):
        assert (tmp_path / "one" / stem).read_text() == (tmp_path / "two" / stem).read_text()


def test_report_refuses_unpaired_or_unlabelled_inputs(evals, tmp_path):
    other = write_eval(tmp_path / "grpo1", "grpo", 1, "aligned", {"aime24": {"a": [1]}, "math500": {"x": [0]}})
    with pytest.raises(ValueError, match="problems differ"):
        cli(["report", *evals, other, "--out", str(tmp_path / "r")])
    unlabelled = write_eval(tmp_path / "nolabel", "", 0, "aligned", GRPO[0])
    with pytest.raises(ValueError, match="no method label"):
        load_eval(unlabelled)


@pytest.mark.parametrize("option", ["--permutations", "--replicates"])
@pytest.mark.parametrize("value", ["0", "-5", "99"])
def test_report_refuses_too_few_draws(option, value, evals, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["report", *evals, option, value, "--out", str(tmp_path / "r")])
    assert exit_.value.code == 2
    assert f"{option} must be at least 100, got {value}" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def synthetic_log(path, method, steps=6):
    with open(path, "w") as f:
        for step in range(1, steps + 1):
            data = {"actor/entropy": 0.5 / step + (0.1 if method == "stapo" else 0.0), "actor/pg_loss": 0.01}
            if method == "stapo":
                data |= {"actor/token_mask/silenced/tokens": step, "actor/token_mask/kept/tokens": 1000 - step}
            if step % 2 == 0:
                data["val-core/aime24/acc/mean@4"] = 0.1 * step / (2 if method == "grpo" else 1)
            f.write(json.dumps({"step": step, "data": data}) + "\n")
    return str(path)


def test_training_plots_are_nonempty_images(tmp_path):
    from PIL import Image

    logs = [synthetic_log(tmp_path / f"{m}_qwen3_1.7b.jsonl", m) for m in ("stapo", "grpo")]
    out = tmp_path / "plots"
    assert cli(["report", "--logs", *logs, "--out", str(out)]) == 0
    for name in ("entropy", "silenced_fraction", "val_accuracy"):
        image = np.asarray(Image.open(out / f"{name}.png").convert("L"), dtype=float)
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert image.std() > 5  # not a blank canvas
    summary = {row["run"]: row for row in read_csv(out / "training.csv")}
    assert summary["stapo_qwen3_1.7b"]["steps"] == "6"
    assert summary["stapo_qwen3_1.7b"]["entropy (first, last)"] == f"{0.6:.3f}, {0.5 / 6 + 0.1:.3f}"
    assert (
        summary["stapo_qwen3_1.7b"]["silenced fraction (mean)"]
        == f"{100 * np.mean([s / 1000 for s in range(1, 7)]):.3f}%"
    )
    assert summary["grpo_qwen3_1.7b"]["val accuracy % (first, last)"] == f"{100 * 0.1:.1f}, {100 * 0.3:.1f}"
    rows = read_metrics(logs[0])
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert "silenced" in format_summary(rows) and "val_acc" in format_summary(rows)


def test_plots_skip_a_metric_no_log_has(tmp_path):
    log = tmp_path / "grpo.jsonl"
    log.write_text(json.dumps({"step": 1, "data": {"actor/entropy": 0.3}}) + "\n")
    assert plot_training({"grpo": read_metrics(str(log))}, str(tmp_path)) == ["entropy.png"]


def test_eval_runs_on_cpu_with_a_tiny_random_model(tmp_path):
    """The plumbing on all six benchmarks: 2 problems x 2 samples each (scores ~0 by design)."""
    import pandas as pd

    from stapo_verl.cpu.tiny import prepare_tiny
    from stapo_verl.tasks.data import convert_file

    data_dir = tmp_path / "data"
    for bench in BENCHMARKS:
        convert_file(fixture_file(bench), str(data_dir), split="test")
    prepare_tiny(str(tmp_path / "tiny"), sft_steps=0)  # random weights
    model = str(tmp_path / "tiny" / "model")
    args = [
        "eval",
        model,
        "--data-dir",
        str(data_dir),
        "--engine",
        "hf",
        "--max-problems",
        "2",
        "--max-tokens",
        "8",
        "--samples",
        ",".join(f"{b}=2" for b in BENCHMARKS),
        "--method",
        "stapo",
        "--model",
        "tiny_cpu",
    ]
    assert cli([*args, "--out", str(tmp_path / "e1")]) == 0
    rows = [json.loads(line) for line in open(tmp_path / "e1" / "samples.jsonl")]
    assert len(rows) == 6 * 2 * 2
    assert {r["benchmark"] for r in rows} == set(BENCHMARKS)
    assert all(r["score"] in (0.0, 1.0) and 1 <= r["response_tokens"] <= 8 for r in rows)
    first_two = {extra["id"] for extra in pd.read_parquet(data_dir / "aime24.parquet")["extra_info"].head(2)}
    assert {(r["problem_id"], r["sample"]) for r in rows if r["benchmark"] == "aime24"} == {
        (p, s) for p in first_two for s in (0, 1)
    }
    summary = json.load(open(tmp_path / "e1" / "summary.json"))
    assert set(summary["benchmarks"]) == set(BENCHMARKS)
    assert all(b["k"] == 2 and b["problems"] == 2 for b in summary["benchmarks"].values())
    assert summary["config"]["grader"] == "math_verify" and (summary["temperature"], summary["top_p"]) == (1.0, 1.0)
    assert cli([*args, "--out", str(tmp_path / "e2")]) == 0  # same seed, same samples
    assert (tmp_path / "e1" / "samples.jsonl").read_text() == (tmp_path / "e2" / "samples.jsonl").read_text()
    assert cli(["report", str(tmp_path / "e1"), "--out", str(tmp_path / "report")]) == 0
    assert "| tiny | STAPO |" in (tmp_path / "report" / "table.md").read_text()


def test_eval_rejects_bad_options(tmp_path):
    with pytest.raises(SystemExit):
        cli(["eval", "m", "--out", str(tmp_path), "--benchmarks", "aime24,gsm8k"])
    from stapo_verl.analysis.eval import EvalConfig

    with pytest.raises(ValueError, match=r"eval benchmarks must be a non-empty list of \['aime24'"):
        EvalConfig(model_path="m", data_dir="d", out_dir="o", benchmarks=["gsm8k"])
    with pytest.raises(ValueError, match="eval setting must be one of"):
        EvalConfig(model_path="m", data_dir="d", out_dir="o", setting="greedy")
