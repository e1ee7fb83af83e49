"""The smollm2_135m preset's task as the model sees it before training: pass rate and S2T candidates.

Samples the preset's training prompts the way its rollout does (HF generate, temperature 1,
top-p 1, at most 64 tokens; stapo_verl.cpu.hf_sampling), grades them with the training reward (DAPO
rule, +1 / -1), computes GRPO advantages per prompt group and counts the tokens S2T would take
as candidates (A > 0, p < tau_p = 0.002), plus the greedy pass rate (the preset's validation).

    python benchmarks/smollm2_task.py [--prompts 64] [--samples 4] [--out benchmarks/results/smollm2_task.json]
"""

import argparse
import datetime
import os
import time

import pandas as pd
import torch
from common import cpu_description, write_result
from tqdm import tqdm

from stapo_verl.cli import cpu_model_dir
from stapo_verl.cpu.hf_sampling import eos_and_pad_ids, sample
from stapo_verl.cpu.smollm2 import prepare_smollm2
from stapo_verl.tasks.reward import compute_score

TAU_PROB = 0.002
MAX_TOKENS = 64  # model/smollm2_135m.yaml: data.max_response_length


def grade(tokenizer, response_ids, ground_truth) -> float:
    text = tokenizer.decode(response_ids, skip_special_tokens=True)
    return compute_score("smollm2_multiplication", text, ground_truth)["score"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=6, help="samples per prompt (the preset rolls out 4)")
    parser.add_argument("--batch", type=int, default=24, help="sequences per generate call (the preset's step)")
    parser.add_argument("--dir", default=None, help="the preset's files (default: as stapo-verl train finds them)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "smollm2_task.json"))
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = args.dir or cpu_model_dir("smollm2_135m")
    prepare_smollm2(files)
    model = AutoModelForCausalLM.from_pretrained(os.path.join(files, "model"), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(files, "model"))
    eos_ids, pad_id = eos_and_pad_ids(model, tokenizer)
    rows = pd.read_parquet(os.path.join(files, "data", "train.parquet")).head(args.prompts)
    prompts = [tokenizer.apply_chat_template(list(p), add_generation_prompt=True, tokenize=True) for p in rows.prompt]
    prompts = [list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p) for p in prompts]
    truths = [r["ground_truth"] for r in rows.reward_model]
    torch.manual_seed(0)

    started = time.time()
    sampled = []  # (prompt index, response ids, log-probs)
    requests = [i for i in range(len(prompts)) for _ in range(args.samples)]
    for start in tqdm(range(0, len(requests), args.batch), desc="sampling (T=1)"):
        chunk = requests[start : start + args.batch]
        outputs = sample(
            model,
            [prompts[i] for i in chunk],
            eos_ids=eos_ids,
            pad_id=pad_id,
            max_new_tokens=MAX_TOKENS,
            temperature=1.0,
            log_probs=True,
        )
        sampled += [(i, ids, lp) for i, (ids, _, lp) in zip(chunk, outputs)]
    greedy = []
    for start in tqdm(range(0, len(prompts), args.batch), desc="greedy"):
        outputs = sample(
            model,
            prompts[start : start + args.batch],
            eos_ids=eos_ids,
            pad_id=pad_id,
            max_new_tokens=MAX_TOKENS,
            temperature=0.0,
        )
        greedy += [grade(tokenizer, ids, truths[start + k]) for k, (ids, _, _) in enumerate(outputs)]
    seconds = time.time() - started

    scores = torch.tensor([grade(tokenizer, ids, truths[i]) for i, ids, _ in sampled]).view(len(prompts), args.samples)
    # GRPO: (R - mean) / std within each prompt's group
    advantages = (scores - scores.mean(1, keepdim=True)) / (scores.std(1, keepdim=True) + 1e-6)
    tokens = low_prob = candidates = 0
    for (_, ids, log_probs), advantage in zip(sampled, advantages.flatten().tolist()):
        rare = int((torch.tensor(log_probs).exp() < TAU_PROB).sum())
        tokens += len(ids)
        low_prob += rare
        candidates += rare if advantage > 0 else 0
    record = {
        "benchmark": "smollm2_task",
        "date": datetime.date.today().isoformat(),
        "device": cpu_description(),
        "prompts": len(prompts),
        "samples_per_prompt": args.samples,
        "pass_rate_t1": float((scores > 0).float().mean()),
        "pass_rate_greedy": sum(s > 0 for s in greedy) / len(greedy),
        "mixed_groups_frac": float(((scores > 0).any(1) & (scores < 0).any(1)).float().mean()),
        "response_tokens_mean": tokens / len(sampled),
        "truncated_frac": sum(len(ids) == MAX_TOKENS for _, ids, _ in sampled) / len(sampled),
        "low_prob_token_frac": low_prob / tokens,
        "candidate_token_frac": candidates / tokens,
        "candidates_per_1k_tokens": 1000 * candidates / tokens,
        "seconds": round(seconds, 1),
    }
    write_result(record, args.out)


if __name__ == "__main__":
    main()
