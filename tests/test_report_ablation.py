"""stapo-verl report: the ablation table and figures, the headline number, the token figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_report import read_csv, write_eval

from stapo_verl.analysis.stats import relative_gain_over_best
from stapo_verl.cli import main as cli

# docs/method.md section 5, v2 table: the Avg column at 1.0/1.0 (in brackets 0.7/0.9)
PAPER_V2_AVG = {
    "aligned": {
        "1.7B": {"grpo": 30.52, "entropy20": 33.64, "justrl": 29.16, "stapo": 38.18},
        "8B": {"grpo": 56.24, "entropy20": 57.63, "justrl": 50.70, "stapo": 58.76},
        "14B": {"grpo": 60.74, "entropy20": 60.77, "justrl": 55.74, "stapo": 64.38},
    },
    "default": {
        "1.7B": {"grpo": 31.06, "entropy20": 33.08, "justrl": 34.90, "stapo": 36.72},
        "8B": {"grpo": 55.25, "entropy20": 57.83, "justrl": 56.12, "stapo": 59.92},
        "14B": {"grpo": 60.81, "entropy20": 64.92, "justrl": 67.11, "stapo": 68.66},
    },
}


def test_headline_from_the_papers_v2_table():
    aligned = relative_gain_over_best(PAPER_V2_AVG["aligned"], "stapo")
    default = relative_gain_over_best(PAPER_V2_AVG["default"], "stapo")
    assert round(aligned["gain"], 2) == 7.13  # the paper: +7.13%
    assert round(default["gain"], 1) == 3.7  # the paper: +3.69% (its cells give 3.71)
    assert {m: c["baseline"] for m, c in aligned["per_model"].items()} == {
        "1.7B": "entropy20",
        "8B": "entropy20",
        "14B": "entropy20",
    }
    assert default["per_model"]["14B"]["baseline"] == "justrl"
    assert relative_gain_over_best({"1.7B": {"stapo": 1.0}}, "stapo")["gain"] is None  # no baseline


def problems(accuracies: list[float], bench: str = "aime24") -> dict:
    """One benchmark whose problem i has accuracy accuracies[i] over 4 samples."""
    return {bench: {f"p{i}": [1] * round(4 * a) + [0] * (4 - round(4 * a)) for i, a in enumerate(accuracies)}}


# 4 problems; averages (one benchmark): STAPO 62.5, GRPO 25, JustRL 56.25; ablations below
CELLS = {
    "stapo": [1, 1, 0.5, 0],
    "grpo": [0.5, 0, 0.5, 0],
    "justrl": [1, 0.5, 0.5, 0.25],
    "low_entropy_q0.75_tp0.002": [1, 1, 0.5, 0],  # = STAPO: the ablation reference
    "low_entropy_q0.5_tp0.002": [1, 0.75, 0.5, 0],  # 56.25
    "high_entropy_q0.75_tp0.002": [0.5, 0.5, 0, 0],  # 25
    "high_entropy_q0.5_tp0.002": [0.5, 0.5, 0.25, 0],  # 31.25
    "random_q0.75_tp0.002": [1, 0.5, 0.5, 0],  # 50
    "all_qna_tp0.002": [0.5, 0.25, 0.25, 0],  # 25
    "low_entropy_q0.75_tp0.0002": [1, 0.75, 0.75, 0],  # 62.5
    "low_entropy_q0.75_tp0.2": [0.25, 0.25, 0, 0],  # 12.5
}


@pytest.fixture
def ablation_evals(tmp_path):
    return [write_eval(tmp_path / method, method, 0, "aligned", problems(acc)) for method, acc in CELLS.items()]


def test_ablation_table_headline_and_figures(ablation_evals, tmp_path):
    from PIL import Image

    out = tmp_path / "report"
    assert cli(["report", *ablation_evals, "--out", str(out), "--replicates", "500", "--permutations", "500"]) == 0
    main = read_csv(out / "table.csv")
    assert [r["method"] for r in main] == ["GRPO", "JustRL", "STAPO"]  # ablation cells stay out of it
    rows = read_csv(out / "ablation_aligned.csv")
    assert [(r["selection"], r["q"], r["tau_p"]) for r in rows] == [
        ("low_entropy", "0.5", "0.002"),
        ("low_entropy", "0.75", "0.0002"),
        ("low_entropy", "0.75", "0.002"),
        ("low_entropy", "0.75", "0.2"),
        ("high_entropy", "0.5", "0.002"),
        ("high_entropy", "0.75", "0.002"),
        ("random", "0.75", "0.002"),
        ("all", "-", "0.002"),
    ]
    by_cell = {(r["selection"], r["q"], r["tau_p"]): r for r in rows}
    expected = {
        ("low_entropy", "0.5", "0.002"): 56.25,
        ("high_entropy", "0.75", "0.002"): 25.0,
        ("high_entropy", "0.5", "0.002"): 31.25,
        ("random", "0.75", "0.002"): 50.0,
        ("all", "-", "0.002"): 25.0,
        ("low_entropy", "0.75", "0.2"): 12.5,
    }
    for cell, avg in expected.items():
        row = by_cell[cell]
        assert row["Avg [95% CI]"].startswith(f"{avg:.2f} [")
        diff = row["- STAPO (points) [95% CI]"]
        assert diff.startswith(f"{avg - 62.5:+.2f} [")
        low, high = (float(x) for x in diff.split(" [")[1].rstrip("]").split(", "))
        assert low <= avg - 62.5 <= high
    assert by_cell[("low_entropy", "0.75", "0.002")]["- STAPO (points) [95% CI]"] == "(reference)"

    headline = read_csv(out / "headline_aligned.csv")
    assert headline[0]["strongest baseline"] == "JustRL"
    gain = 100 * (62.5 / 56.25 - 1)  # STAPO vs JustRL, the only size
    assert headline[-1]["relative gain"].startswith(f"{gain:+.2f}% [")
    report = json.load(open(out / "report.json"))
    assert report["headline"]["aligned"]["gain"] == pytest.approx(gain)
    low, high = report["headline"]["aligned"]["ci"]
    assert low < gain < high
    assert "relative gain" in (out / "headline_aligned.tex").read_text()

    for name in ("ablation_q_qwen3_1.7b_aligned.png", "ablation_tau_prob_qwen3_1.7b_aligned.png"):
        image = np.asarray(Image.open(out / name).convert("L"), dtype=float)
        assert image.std() > 5  # not a blank canvas


def test_token_figure_from_dumps(tmp_path):
    from PIL import Image

    dump_dir = tmp_path / "dump"
    dump_dir.mkdir()
    lines = (
        [{"group": "silenced", "token": t} for t in ["1", "2", " $", "1", " x"]]
        + [{"group": "kept_candidate", "token": t} for t in [" Let", " So", " Wait", "1"]]
        + [{"token": " 3"}]
    )  # an older dump line: no group, a silenced token
    (dump_dir / "silenced_tokens.rank0.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "report"
    assert cli(["report", "--dumps", str(dump_dir), "--out", str(out)]) == 0
    tokens = json.load(open(out / "report.json"))["tokens"]
    assert tokens["silenced"]["tokens"] == 6 and tokens["silenced"]["top"][0] == ["1", 2]
    assert tokens["silenced"]["category_shares"]["digits"] == pytest.approx(4 / 6)
    assert tokens["silenced"]["category_shares"]["math/LaTeX"] == pytest.approx(2 / 6)  # "$", "x"
    assert tokens["kept_candidate"]["category_shares"]["words"] == pytest.approx(3 / 4)
    image = np.asarray(Image.open(out / "silenced_tokens.png").convert("L"), dtype=float)
    assert image.std() > 5
    with pytest.raises(FileNotFoundError, match="no silenced_tokens"):
        cli(["report", "--dumps", str(tmp_path), "--out", str(out)])
