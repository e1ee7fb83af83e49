"""The CPU comparison's held-out evaluation: verl's validation inside a run vs ``stapo-verl eval``.

Issue 29 asks for the faster of the two engines. verl's validation time is read from the grid's
raw logs (``timing_s/testing`` of the committed runs: 200 problems x 4 samples x both decodings,
on the run's own rollout server). ``stapo-verl eval`` is run here on the same 200 problems and
model (the base SmolLM2-135M-Instruct, the preset's precision, vLLM on CPU, responses up to 64
tokens, the DAPO rule as in training), once per decoding, timed with start-up; one evaluation
of a trained model would also need a checkpoint merge first (not timed). Its avg@4 is recorded
beside the grid's step-0 validation of the same model (different sampling seeds: the two agree
up to sampling noise, not exactly). ``eval`` takes the paper's benchmark names only, so the
problems are filed as ``math500.parquet`` in a scratch directory.

    python benchmarks/held_out_eval.py [--grid examples/results/cpu_comparison]
        [--out benchmarks/results/held_out_eval.json]
"""

import argparse
import datetime
import glob
import os
import tempfile

from common import cpu_description, run_eval, write_result

from stapo_verl.analysis.grid_report import decoding, held_out
from stapo_verl.cli import cpu_model_dir
from stapo_verl.cpu.precision import native_bf16
from stapo_verl.cpu.smollm2 import prepare_smollm2
from stapo_verl.runlog import read_metrics
from stapo_verl.tasks import sums

FILED_AS = "math500"
SETTINGS = {"aligned": "smollm2_sums-aligned", "default": "smollm2_sums-default"}
K = 4


def validation_in_runs(grid_dir: str) -> dict:
    """verl's validation seconds and step-0 accuracies, from the grid's committed runs."""
    seconds, step0 = [], {}
    for path in sorted(glob.glob(os.path.join(grid_dir, "runs", "*", "metrics.jsonl"))):
        run = os.path.basename(os.path.dirname(path))
        rows = read_metrics(path)
        for row in rows:
            if "timing_s/testing" in row:
                seconds.append({"run": run, "step": row["step"], "seconds": round(row["timing_s/testing"], 1)})
        for label, by_step in held_out(rows).items():
            if 0 in by_step and label.endswith(f" avg@{K}") and decoding(label):
                step0.setdefault(run, {})[decoding(label)] = round(by_step[0], 2)
    return {"validations": seconds, "step0_avg_at_4": step0}


def eval_setting(model: str, data_dir: str, setting: str, out: str) -> dict:
    options = ["--max-tokens", "64", "--engine", "vllm", "--grader", "dapo", "--setting", setting]
    result = run_eval(model, data_dir, FILED_AS, K, options, out)
    return {
        "problems": result["problems"],
        "avg_at_4": result["avg_at_k"],
        "standard_error": result["standard_error"],
        "wall_s_with_startup": result["wall_s_with_startup"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="examples/results/cpu_comparison")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "held_out_eval.json"))
    args = parser.parse_args()
    import pandas as pd

    files = cpu_model_dir("smollm2_135m")
    prepare_smollm2(files)
    held_out = pd.read_parquet(os.path.join(files, "data", sums.FILES_SUBDIR, "held_out.parquet"))
    work = tempfile.mkdtemp(prefix="held_out_eval_")
    # one row per problem: the file holds each problem once per decoding, eval sets the decoding
    held_out[held_out["data_source"] == SETTINGS["aligned"]].to_parquet(os.path.join(work, f"{FILED_AS}.parquet"))
    model = os.path.join(files, "model")
    evals = {name: eval_setting(model, work, name, os.path.join(work, name)) for name in SETTINGS}
    write_result(
        {
            "what": "the CPU comparison's held-out evaluation (200 two-digit sums, avg@4, both decodings, max 64 "
            "tokens) of the base SmolLM2-135M-Instruct: stapo-verl eval (vLLM on CPU, one process per "
            "decoding, with start-up) vs verl's validation inside the grid's runs (both decodings in one "
            "pass on the run's rollout server; from the runs' metrics)",
            "date": datetime.date.today().isoformat(),
            "device": f"{cpu_description()}, native bf16: {native_bf16() or 'none'}",
            "stapo_verl_eval": evals,
            "stapo_verl_eval_total_s": round(sum(e["wall_s_with_startup"] for e in evals.values()), 1),
            "verl_validation": validation_in_runs(args.grid),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
