"""Candidate tasks for the CPU comparison (issue 29), measured on the base SmolLM2-135M-Instruct.

Each candidate is a family of arithmetic problems asked the way the smollm2_135m preset asks its
own (chat form, one worked example of the same family as an earlier turn, answer in \\boxed{}).
For each: how many distinct problems it has, and on ``--problems`` of them x ``--samples`` samples
at temperature 1 (the rollout's setting, in the precision training uses here): the pass rate
(DAPO rule reward), the share of problems with mixed groups (GRPO advantages not all zero), the
response length, and S2T's candidates (A > 0, p < 0.002) per 1,000 tokens. The chosen one
becomes the comparison's task (stapo_verl/tasks/sums.py); this file keeps the measurement.

    python benchmarks/comparison_task.py [--problems 48] [--samples 4] [--out benchmarks/results/comparison_task.json]
"""

import argparse
import datetime
import os
import random
import time

import torch
from common import cpu_description, write_result

from stapo_verl.cli import cpu_model_dir
from stapo_verl.cpu.hf_sampling import eos_and_pad_ids, request_seed, sample
from stapo_verl.cpu.precision import DTYPE_NAMES, resolve_precision
from stapo_verl.cpu.smollm2 import prepare_smollm2
from stapo_verl.tasks.multiplication import INSTRUCTION
from stapo_verl.tasks.reward import compute_score

TAU_PROB = 0.002
MAX_TOKENS = 64  # model/smollm2_135m.yaml: data.max_response_length

# name -> (operator, first operand range, second operand range, the worked example's operands)
CANDIDATES = {
    "add_2d_2d": ("+", (10, 99), (10, 99), (23, 45)),
    "add_2d_1d": ("+", (10, 99), (1, 9), (23, 4)),
    "add_2d_upto30": ("+", (10, 99), (1, 30), (23, 14)),
    "mul_1d_1d": ("*", (2, 9), (2, 9), (2, 5)),
    "mul_2d_1d": ("*", (10, 99), (2, 9), (12, 3)),
}
EXPLANATION = {
    "+": "Addition puts the two amounts together into one total.",
    "*": "Multiplication is repeated addition of the same number.",
}


def answer(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a * b


def messages(op: str, a: int, b: int, example: tuple[int, int]) -> list[dict]:
    x, y = example
    return [
        {"role": "user", "content": f"What is {x} {op} {y}?{INSTRUCTION}"},
        {
            "role": "assistant",
            "content": f"{x} {op} {y} = {answer(op, x, y)}. The answer is "
            f"\\boxed{{{answer(op, x, y)}}}. {EXPLANATION[op]}",
        },
        {"role": "user", "content": f"What is {a} {op} {b}?{INSTRUCTION}"},
    ]


def distinct_problems(op: str, first: tuple[int, int], second: tuple[int, int]) -> int:
    """Problems by identity: a commutative pair asked either way round is one problem."""
    pairs = {(a, b) for a in range(first[0], first[1] + 1) for b in range(second[0], second[1] + 1)}
    return len({tuple(sorted(p)) for p in pairs})


def measure(name, model, tokenizer, eos_ids, pad_id, problems: int, samples: int, batch: int) -> dict:
    op, first, second, example = CANDIDATES[name]
    rng = random.Random(name)
    drawn = [(rng.randint(*first), rng.randint(*second)) for _ in range(problems)]
    prompts = [
        tokenizer.apply_chat_template(messages(op, a, b, example), add_generation_prompt=True, tokenize=False)
        for a, b in drawn
    ]
    prompts = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    requests = [(i, r) for i in range(problems) for r in range(samples)]
    started, sampled = time.time(), []
    for start in range(0, len(requests), batch):
        chunk = requests[start : start + batch]
        seeds = [request_seed("comparison_task", name, i, r) for i, r in chunk]
        outputs = sample(
            model,
            [prompts[i] for i, _ in chunk],
            eos_ids=eos_ids,
            pad_id=pad_id,
            max_new_tokens=MAX_TOKENS,
            temperature=1.0,
            log_probs=True,
            seeds=seeds,
        )
        sampled += [(i, ids, lp) for (i, _), (ids, _, lp) in zip(chunk, outputs)]
    seconds = time.time() - started
    scores = torch.tensor(
        [
            compute_score("x", tokenizer.decode(ids, skip_special_tokens=True), str(answer(op, *drawn[i])))["score"]
            for i, ids, _ in sampled
        ]
    )
    scores = scores.view(problems, samples)
    advantages = (scores - scores.mean(1, keepdim=True)) / (scores.std(1, keepdim=True) + 1e-6)
    tokens = candidates = 0
    for (_, ids, log_probs), advantage in zip(sampled, advantages.flatten().tolist()):
        tokens += len(ids)
        if advantage > 0:
            candidates += int((torch.tensor(log_probs).exp() < TAU_PROB).sum())
    return {
        "operator": op,
        "first": first,
        "second": second,
        "distinct_problems": distinct_problems(op, first, second),
        "pass_rate_t1": round(float((scores > 0).float().mean()), 4),
        "mixed_groups_frac": round(float(((scores > 0).any(1) & (scores < 0).any(1)).float().mean()), 4),
        "response_tokens_mean": round(tokens / len(sampled), 1),
        "candidates_per_1k_tokens": round(1000 * candidates / tokens, 2),
        "samples": len(sampled),
        "seconds": round(seconds, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=48)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--batch", type=int, default=48, help="sequences per generate call")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "comparison_task.json"))
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = cpu_model_dir("smollm2_135m")
    prepare_smollm2(files)
    precision, reason = resolve_precision("auto")
    dtype = DTYPE_NAMES["torch"][precision]
    model = AutoModelForCausalLM.from_pretrained(os.path.join(files, "model"), dtype=getattr(torch, dtype)).eval()
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(files, "model"))
    eos_ids, pad_id = eos_and_pad_ids(model, tokenizer)
    results = {}
    for name in args.candidates:
        results[name] = measure(name, model, tokenizer, eos_ids, pad_id, args.problems, args.samples, args.batch)
        print(name, results[name], flush=True)
    write_result(
        {
            "what": "candidate tasks for the CPU comparison on base SmolLM2-135M-Instruct: T=1 pass rate (DAPO "
            "rule), mixed GRPO groups, S2T candidates per 1k tokens",
            "date": datetime.date.today().isoformat(),
            "device": f"{cpu_description()}, {dtype} ({reason})",
            "problems": args.problems,
            "samples_per_problem": args.samples,
            "max_tokens": MAX_TOKENS,
            "candidates": results,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
