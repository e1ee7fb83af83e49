"""The preprocess CLI: the original data files -> verl parquet, read back by verl's RLHFDataset.

Every test runs on the committed fixtures (tests/fixtures/math); the "full" variants run on the
original files when $STAPO_FULL_DATA_DIR names a folder holding them, and skip otherwise."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from stapo_verl.tasks.data import TEMPLATES, BadRowError, clean_ground_truth, convert_file, repair_latex_escapes

FIXTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "math")
FULL_DATA_VARIABLE = "STAPO_FULL_DATA_DIR"
BENCHMARKS = {"aime24": 30, "aime25": 30, "amc23": 40, "math500": 500, "minerva": 272, "olympiadbench": 674}
FULL_ROWS = {**BENCHMARKS, "dapo_math_17k": 17917}
# the committed fixtures: a few rows of each file, quirks kept (tests/fixtures/math/SOURCES.md)
FIXTURE_ROWS = {
    "aime24": 4,
    "aime25": 5,
    "amc23": 4,
    "math500": 7,
    "minerva": 5,
    "olympiadbench": 5,
    "dapo_math_17k": 10,
}
REPAIRED_ROWS = {"fixtures": (3, 2), "full": (3, 643)}  # (aime25, dapo_math_17k) rows with LaTeX escape damage


def fixture_file(name: str) -> str:
    return os.path.join(FIXTURE_DIR, f"{name}.parquet")


def full_data_file(name: str) -> str:
    """An original data file from $STAPO_FULL_DATA_DIR; the test skips, saying so, when it is unset."""
    root = os.environ.get(FULL_DATA_VARIABLE)
    if not root:
        pytest.skip(
            f"needs the full {name}.parquet: set {FULL_DATA_VARIABLE} to a folder holding the original "
            "files (tests/fixtures/math/SOURCES.md names them)"
        )
    path = os.path.join(root, f"{name}.parquet")
    if not os.path.exists(path):
        pytest.fail(f"{FULL_DATA_VARIABLE}={root} has no {name}.parquet")
    return path


def data_file(which: str, name: str) -> str:
    """``which``: "fixtures" (committed, always there) or "full" (the original files, if given)."""
    return full_data_file(name) if which == "full" else fixture_file(name)


def expected_rows(which: str, name: str) -> int:
    return (FULL_ROWS if which == "full" else FIXTURE_ROWS)[name]


@pytest.mark.parametrize("which", ["fixtures", "full"])
@pytest.mark.slow
def test_cli_converts_the_six_benchmarks(which, tmp_path):
    inputs = [data_file(which, name) for name in BENCHMARKS]
    result = subprocess.run(
        [sys.executable, "-m", "stapo_verl.tasks.data", *inputs, "--split", "test", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for name in BENCHMARKS:
        rows = expected_rows(which, name)
        frame = pd.read_parquet(tmp_path / f"{name}.parquet")
        assert len(frame) == rows and f"{name}.parquet: {rows} rows" in result.stdout
        assert frame.extra_info.map(lambda e: e["id"]).is_unique
        assert all(p[0]["content"].endswith(TEMPLATES["boxed"].format(problem="").strip()) for p in frame.prompt)
    aime24 = pd.read_parquet(tmp_path / "aime24.parquet")
    assert aime24.reward_model[0]["ground_truth"] == "204"  # stored as \boxed{204} upstream
    aime25 = pd.read_parquet(tmp_path / "aime25.parquet")
    aime25_prompts = dict(zip(aime25.extra_info.map(lambda e: e["id"]), aime25.prompt.map(lambda p: p[0]["content"])))
    assert "\\frac{\\log_k" in aime25_prompts["AIME25-18"]  # a form feed upstream
    assert "\\triangle" in aime25_prompts["AIME25-19"]  # a TAB upstream
    assert f"{REPAIRED_ROWS[which][0]} with repaired LaTeX escapes" in result.stdout
    olympiad = pd.read_parquet(tmp_path / "olympiadbench.parquet").reward_model.map(lambda r: r["ground_truth"])
    assert "69,84" in olympiad.tolist()  # `$69$,$84$` upstream


@pytest.mark.parametrize("which", ["fixtures", "full"])
def test_training_set_round_trips_through_verls_dataset(which, tmp_path):
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from stapo_verl.cpu.tiny import byte_tokenizer

    rows = expected_rows(which, "dapo_math_17k")
    report = convert_file(data_file(which, "dapo_math_17k"), str(tmp_path), split="train")
    assert report.rows == rows and not report.skipped
    assert report.repaired_rows == REPAIRED_ROWS[which][1]  # \x0c for \f etc.
    config = OmegaConf.create(
        {"max_prompt_length": 100000, "filter_overlong_prompts": False, "cache_dir": str(tmp_path / "cache")}
    )
    dataset = RLHFDataset(data_files=report.output, tokenizer=byte_tokenizer(), config=config)
    assert len(dataset) == rows
    item = dataset[0]
    assert item["data_source"] == "DAPO-17k" and item["reward_model"]["ground_truth"] == "34"
    assert "Please reason step by step" in item["raw_prompt"][0]["content"]
    prompts = pd.read_parquet(report.output).prompt.map(lambda p: p[0]["content"]).tolist()
    assert not any("\x0crac" in p for p in prompts) and any("form \\frac{m}" in p for p in prompts)
    assert any("让我们一步一步地思考" in p for p in prompts)  # Chinese rows keep DAPO's Chinese instruction


@pytest.mark.slow
def test_malformed_rows_are_named_or_skipped_and_counted(tmp_path):
    rows = [
        {"problem": "1+1?", "answer": "2"},
        {"problem": "", "answer": "3"},
        {"problem": "2+2?", "answer": None},
        {"problem": "3+3?", "answer": ["6", "7"]},
        {"question": "4+4?", "final_answer": ["8"]},
        {"problem": "5+5?", "answer": 10},
    ]
    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(BadRowError, match=r"mixed\.jsonl: row 1: empty or missing problem"):
        convert_file(str(source), str(tmp_path / "out"), split="train")
    result = subprocess.run(
        [sys.executable, "-m", "stapo_verl.tasks.data", str(source), "--out-dir", str(tmp_path / "out"), "--skip-bad"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "3 rows, 3 skipped" in result.stdout and "skipped 3 malformed row(s) in all" in result.stdout
    assert "row 3: answer is a list of 2 items" in result.stdout
    out = pd.read_parquet(tmp_path / "out" / "mixed.parquet")
    assert out.reward_model.map(lambda r: r["ground_truth"]).tolist() == ["2", "8", "10"]
    assert out.extra_info.map(lambda e: e["id"]).tolist() == ["mixed-0", "mixed-4", "mixed-5"]


def test_bad_cli_input_is_a_clear_error(tmp_path):
    source = tmp_path / "x.jsonl"
    source.write_text(json.dumps({"problem": "", "answer": "1"}))
    result = subprocess.run(
        [sys.executable, "-m", "stapo_verl.tasks.data", str(source), "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "x.jsonl: row 0: empty or missing problem" in result.stderr


def test_escape_repair_and_gold_cleaning():
    assert repair_latex_escapes("form \x0crac{m}{n} and $\triangle ABC$") == (
        "form \\frac{m}{n} and $\\triangle ABC$",
        2,
    )
    assert repair_latex_escapes("have\tequal\tperimeters") == ("have\tequal\tperimeters", 0)  # real tabs stay
    assert clean_ground_truth("\\boxed{204}") == "204"
    assert clean_ground_truth("$69$,$84$") == "69,84"
    assert clean_ground_truth("\\$5") == "\\$5"


def test_an_empty_gold_answer_is_refused(tmp_path):
    source = tmp_path / "empty_gold.jsonl"
    source.write_text(json.dumps({"problem": "1+1?", "answer": "$\\boxed{}$"}))
    with pytest.raises(BadRowError, match="row 0: missing or non-text answer"):
        convert_file(str(source), str(tmp_path / "out"), split="test")
    assert clean_ground_truth("$\\boxed{}$") == "" and clean_ground_truth("$\\boxed{5}$") == "5"


def run_cli(*args: str):
    return subprocess.run(
        [sys.executable, "-m", "stapo_verl.tasks.data", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("content", ["", "all_bad"])
def test_nothing_to_convert_is_an_error_and_writes_nothing(content, tmp_path):
    source = tmp_path / "input.jsonl"
    source.write_text(json.dumps({"problem": "", "answer": "1"}) if content else "")
    result = run_cli(str(source), "--out-dir", str(tmp_path / "out"), "--skip-bad")
    assert result.returncode == 1
    reason = "all 1 rows were malformed" if content else "it has no rows"
    assert f"input.jsonl: nothing to convert: {reason}; no output written" in result.stderr
    assert not (tmp_path / "out" / "input.parquet").exists()


def test_two_inputs_with_one_name_are_refused(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "aime.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2"}))
    result = run_cli(str(tmp_path / "a" / "aime.jsonl"), str(tmp_path / "b" / "aime.jsonl"), "--out-dir", str(tmp_path))
    assert result.returncode == 2 and "would both be written to aime.parquet; rename one" in result.stderr
    assert not (tmp_path / "aime.parquet").exists()


def test_an_over_long_gold_answer_is_refused(tmp_path):
    source = tmp_path / "long.jsonl"
    source.write_text(json.dumps({"problem": "1+1?", "answer": "2" * 20_000}))
    with pytest.raises(BadRowError, match="row 0: answer of 20,000 characters"):
        convert_file(str(source), str(tmp_path / "out"), split="test")
