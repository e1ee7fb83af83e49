"""CPU cost of building the token masks for one mini-batch (no model, no verl runtime).

A paper-sized PPO mini-batch is 64 prompts x 8 rollouts = 512 responses; at a mean response
length of 4,096 tokens that is 2.1M tokens. Prints and writes JSON (median of 5 runs).

    python benchmarks/mask_cpu.py [--tokens 2097152] [--out benchmarks/results/mask_cpu.json]
"""

import argparse
import datetime
import os
import statistics
import time

import torch
from common import cpu_description, write_result

from stapo_verl.method.s2t import s2t_spurious_mask, top_entropy_keep_mask


def median_seconds(fn, repeats=5):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512 * 4096)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "mask_cpu.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n = args.tokens
    # -log p ~ Exponential(1): P(p < 0.002) = 0.002, half of those with A > 0
    log_prob = -torch.distributions.Exponential(1.0).sample((n,))
    entropy = torch.rand(n, generator=g) * 3
    advantages = torch.randn(n // 4096 + 1, generator=g).repeat_interleave(4096)[:n]
    valid = torch.ones(n, dtype=torch.bool)
    s2t = s2t_spurious_mask(log_prob, entropy, advantages, valid)
    result = {
        "date": datetime.date.today().isoformat(),
        "device": cpu_description(),
        "torch": torch.__version__,
        "tokens": n,
        "candidates": int(s2t.candidate_mask.sum()),
        "silenced": int(s2t.spurious_mask.sum()),
        "s2t_mask_ms": 1000 * median_seconds(lambda: s2t_spurious_mask(log_prob, entropy, advantages, valid)),
        "top_entropy_mask_ms": 1000 * median_seconds(lambda: top_entropy_keep_mask(entropy, valid, 0.2)),
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
