"""Math problems -> verl's RL parquet (``data_source``, chat ``prompt``, ``ability``,
``reward_model.ground_truth``, ``extra_info`` with a stable ``id``).

Inputs: verl-schema parquet (the original DAPO-Math-17k and benchmark files, which
tests/fixtures/math/SOURCES.md names), or any parquet / JSON / JSONL with a problem column
(``problem`` or ``question``) and an answer column (``answer``, ``final_answer`` or
``ground_truth``; a one-element list is unwrapped), or ``hf:NAME[:SPLIT]`` for a Hugging Face
dataset when online.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from stapo_verl.runlog import read_jsonl
from stapo_verl.tasks.reward import MAX_GOLD_CHARS, clean_ground_truth

TEMPLATES = {
    # docs/method.md sections 3 and 5: the user turn, suffixed
    "boxed": "{problem} Please reason step by step, and put your final answer within \\boxed{{}}.",
    "raw": "{problem}",
}
PROBLEM_COLUMNS = ("problem", "question")
ANSWER_COLUMNS = ("answer", "final_answer", "ground_truth")

# Escape damage: "\frac" read as form feed + "rac", "\triangle" as TAB + "riangle", ...
# Form feed, backspace, vertical tab and bell before a letter are never meant literally; TAB and
# CR only before the rest of a known command (a TAB between words is legitimate).
_ALWAYS_ESCAPE = {"\x0c": "f", "\x08": "b", "\x0b": "v", "\x07": "a"}
_COMMAND_TAILS = {
    "\t": "riangle|imes|ext|heta|frac|ilde|an|au|o\\b",
    "\r": "ight|ho|angle|floor|ceil|m\\b",
}
_ESCAPE_DAMAGE = re.compile(
    "|".join(
        [f"{re.escape(c)}(?=[A-Za-z])" for c in _ALWAYS_ESCAPE]
        + [f"{re.escape(c)}(?=(?:{tails}))" for c, tails in _COMMAND_TAILS.items()]
    )
)
_ESCAPE_LETTER = {**_ALWAYS_ESCAPE, "\t": "t", "\r": "r"}


def repair_latex_escapes(text: str) -> tuple[str, int]:
    """Undo escape damage in LaTeX (``\\x0crac`` -> ``\\frac``); returns (text, repairs)."""
    return _ESCAPE_DAMAGE.subn(lambda m: "\\" + _ESCAPE_LETTER[m.group(0)], text)


class BadRowError(ValueError):
    pass


@dataclass
class ConversionReport:
    source: str
    output: str
    rows: int = 0
    skipped: list[str] = field(default_factory=list)  # "row N: reason"
    repaired_rows: int = 0


def _read_table(path: str):
    import pandas as pd

    if path.startswith("hf:"):  # hf:NAME[:SPLIT], needs network
        from datasets import load_dataset

        name, _, split = path[3:].partition(":")
        return load_dataset(name, split=split or "train").to_pandas()
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not found")
    if path.endswith(".parquet"):
        return pd.read_parquet(path)
    if path.endswith(".jsonl"):
        return pd.DataFrame(list(read_jsonl(path)))
    if path.endswith(".json"):
        with open(path) as f:
            try:
                return pd.DataFrame(json.load(f))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not JSON ({exc})") from None
    raise ValueError(f"{path}: unsupported input (expected .parquet, .jsonl, .json or hf:NAME[:SPLIT])")


def _problem_and_answer(row: dict) -> tuple[Any, Any]:
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str):  # verl schema: chat messages
        users = [m for m in list(prompt) if isinstance(m, dict) and m.get("role") == "user"]
        problem = users[-1].get("content") if users else None
    else:
        problem = next((row[c] for c in (*PROBLEM_COLUMNS, "prompt") if isinstance(row.get(c), str)), None)
    reward_model = row.get("reward_model")
    answer = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
    if answer is None:
        answer = next((row[c] for c in ANSWER_COLUMNS if not _missing(row.get(c))), None)
    return problem, answer


def _missing(value) -> bool:
    # pandas fills absent JSON fields with None or NaN
    return value is None or (isinstance(value, float) and math.isnan(value))


def convert_row(row: dict, index: int, name: str, split: str, template: str) -> tuple[dict, int]:
    """One input row -> one verl row (and the number of escape repairs); raises BadRowError."""
    problem, answer = _problem_and_answer(row)
    if hasattr(answer, "tolist"):
        answer = answer.tolist()
    if isinstance(answer, list):
        if len(answer) != 1:
            raise BadRowError(f"answer is a list of {len(answer)} items, expected one")
        answer = answer[0]
    if isinstance(answer, (int, float)) and not isinstance(answer, bool) and not _missing(answer):
        answer = str(answer)
    if not isinstance(problem, str) or not problem.strip():
        raise BadRowError("empty or missing problem")
    if not isinstance(answer, str) or not clean_ground_truth(answer):
        raise BadRowError(f"missing or non-text answer ({type(answer).__name__})")
    if len(answer) > MAX_GOLD_CHARS:
        raise BadRowError(f"answer of {len(answer):,} characters (the reward grades at most {MAX_GOLD_CHARS:,})")
    problem, repairs = repair_latex_escapes(problem.strip())
    extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
    original_id = extra.get("index", row.get("id", index))
    data_source = row.get("data_source") if isinstance(row.get("data_source"), str) else name
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": TEMPLATES[template].format(problem=problem)}],
        "ability": "math",
        "reward_model": {"ground_truth": clean_ground_truth(answer), "style": "rule"},
        "extra_info": {
            "id": original_id if isinstance(original_id, str) else f"{name}-{original_id}",
            "index": index,
            "split": split,
            "problem": problem,
        },
    }, repairs


def output_name(path: str) -> str:
    """The output's name for an input: ``.../aime24.parquet`` -> ``aime24``."""
    return os.path.basename(path).split(".")[0].replace("hf:", "").replace("/", "_")


def convert_file(
    path: str, out_dir: str, split: str, template: str = "boxed", skip_bad: bool = False, name: str | None = None
) -> ConversionReport:
    """Convert one file to ``<out_dir>/<name>.parquet``; bad rows raise unless ``skip_bad``."""
    import pandas as pd

    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {sorted(TEMPLATES)}, got {template!r}")
    name = name or output_name(path)
    report = ConversionReport(source=path, output=os.path.join(out_dir, f"{name}.parquet"))
    rows = []
    for index, row in enumerate(_read_table(path).to_dict(orient="records")):
        try:
            converted, repairs = convert_row(row, index, name, split, template)
        except BadRowError as error:
            if not skip_bad:
                raise BadRowError(f"{path}: row {index}: {error} (use --skip-bad to skip such rows)") from None
            report.skipped.append(f"row {index}: {error}")
            continue
        rows.append(converted)
        report.repaired_rows += repairs > 0
    if not rows:
        reason = f"all {len(report.skipped)} rows were malformed" if report.skipped else "it has no rows"
        raise ValueError(f"{path}: nothing to convert: {reason}; no output written")
    ids = [r["extra_info"]["id"] for r in rows]
    if len(set(map(str, ids))) != len(ids):
        raise ValueError(f"{path}: ids are not unique after conversion")
    os.makedirs(out_dir, exist_ok=True)
    pd.DataFrame(rows).to_parquet(report.output, index=False)
    report.rows = len(rows)
    return report
