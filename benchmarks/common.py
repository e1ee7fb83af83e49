"""What every benchmark script records: the machine, and the JSON result file."""

import json
import os
import platform


def cpu_description() -> str:
    import torch  # here, not at the top: demo_memory.py measures others and should stay small

    model = ""
    if os.path.exists("/proc/cpuinfo"):  # the model: results from one kind of CPU are not another's
        with open("/proc/cpuinfo") as f:
            model = next((f" ({line.split(':', 1)[1].strip()})" for line in f if line.startswith("model name")), "")
    return f"CPU: {platform.processor() or platform.machine()}{model}, {torch.get_num_threads()} threads"


def chat_ids(tokenizer, chats) -> list[list[int]]:
    """Each chat's prompt token ids, as the chat template with the generation prompt gives them."""
    out = []
    for chat in chats:
        ids = tokenizer.apply_chat_template(list(chat), add_generation_prompt=True, tokenize=True)
        out.append(list(ids["input_ids"]) if hasattr(ids, "keys") else list(ids))
    return out


def run_eval(model: str, data_dir: str, bench: str, k: int, options: list[str], out: str) -> dict:
    """``stapo-verl eval`` on ``<data_dir>/<bench>.parquet`` (k samples a problem), timed with
    start-up: problems, avg@k, its standard error over problems, mean response tokens, wall time."""
    import statistics
    import subprocess
    import sys
    import time

    command = [
        sys.executable,
        "-m",
        "stapo_verl",
        "eval",
        model,
        "--data-dir",
        data_dir,
        "--benchmarks",
        bench,
        "--samples",
        f"{bench}={k}",
        "--out",
        out,
        *options,
    ]
    print("==", " ".join(command[1:]), flush=True)
    started = time.time()
    subprocess.run(command, check=True)
    wall = time.time() - started
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)["benchmarks"][bench]
    per_problem: dict[str, list[float]] = {}
    with open(os.path.join(out, "samples.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            per_problem.setdefault(row["problem_id"], []).append(row["score"])
    means = [sum(v) / len(v) for v in per_problem.values()]
    return {
        "problems": len(means),
        "avg_at_k": round(summary["avg_at_k"], 2),
        "standard_error": round(100 * statistics.stdev(means) / len(means) ** 0.5, 2),
        "mean_response_tokens": round(summary["mean_response_tokens"], 1),
        "wall_s_with_startup": round(wall, 1),
    }


def write_result(record: dict, path: str, show: bool = True) -> None:
    """Print the record (unless ``show`` is false) and write it as JSON (the committed result
    files are these)."""
    if show:
        print(json.dumps(record, indent=2))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
