"""Attention over a packed micro-batch: one dense SDPA call with a block-diagonal causal mask (what
transformers' `sdpa` does with verl's remove-padding rows) against one causal SDPA call per response.

SmolLM2-135M's attention shape (9 query heads, 3 key/value heads, head dim 64, 30 layers), in bf16,
forward and backward; the same outputs either way (checked). The saving bounds what a per-response
attention function would take off the actor update (docs/cpu.md, "Where the bf16 update goes").

    python benchmarks/packed_attention.py [--responses 8 24] [--length 173] [--rounds 3]
        [--out benchmarks/results/packed_attention.json]
"""

import argparse
import datetime
import os
import statistics
import time

import torch
import torch.nn.functional as F
from common import cpu_description, write_result

HEADS, KV_HEADS, HEAD_DIM, LAYERS = 9, 3, 64, 30


def inputs(responses: int, length: int):
    g = torch.Generator().manual_seed(0)
    total = responses * length
    q = torch.randn(1, HEADS, total, HEAD_DIM, generator=g).bfloat16().requires_grad_()
    k = torch.randn(1, KV_HEADS, total, HEAD_DIM, generator=g).bfloat16().requires_grad_()
    v = torch.randn(1, KV_HEADS, total, HEAD_DIM, generator=g).bfloat16().requires_grad_()
    return q, k, v


def dense(q, k, v, responses: int, length: int):
    segment = torch.arange(responses * length) // length
    position = torch.arange(responses * length)
    mask = (segment[:, None] == segment[None, :]) & (position[:, None] >= position[None, :])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def per_response(q, k, v, responses: int, length: int):
    pieces = [
        F.scaled_dot_product_attention(
            q[:, :, i * length : (i + 1) * length],
            k[:, :, i * length : (i + 1) * length],
            v[:, :, i * length : (i + 1) * length],
            is_causal=True,
            enable_gqa=True,
        )
        for i in range(responses)
    ]
    return torch.cat(pieces, dim=2)


def seconds(attention, responses: int, length: int, rounds: int) -> list[float]:
    """One forward + backward per layer, LAYERS times, per round."""
    q, k, v = inputs(responses, length)
    attention(q, k, v, responses, length).sum().backward()  # warm
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(LAYERS):
            attention(q, k, v, responses, length).float().sum().backward()
        times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, nargs="+", default=[8, 24])
    parser.add_argument("--length", type=int, default=173, help="tokens a response (prompt + response)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "packed_attention.json"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    rows = []
    for responses in args.responses:
        q, k, v = inputs(responses, args.length)
        with torch.no_grad():
            difference = (dense(q, k, v, responses, args.length) - per_response(q, k, v, responses, args.length)).abs()
        dense_s = seconds(dense, responses, args.length, args.rounds)
        split_s = seconds(per_response, responses, args.length, args.rounds)
        rows.append(
            {
                "responses": responses,
                "packed_tokens": responses * args.length,
                "dense_masked_s": [round(s, 3) for s in dense_s],
                "per_response_s": [round(s, 3) for s in split_s],
                "per_response_vs_dense": round(statistics.median(split_s) / statistics.median(dense_s), 3),
                "max_abs_difference": float(difference.max()),
            }
        )
        print(rows[-1], flush=True)
    record = {
        "date": datetime.date.today().isoformat(),
        "device": cpu_description(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "what": f"{LAYERS} layers' attention forward + backward (bf16, {HEADS} / {KV_HEADS} heads, head dim "
        f"{HEAD_DIM}), seconds per round",
        "rows": rows,
    }
    write_result(record, args.out)


if __name__ == "__main__":
    main()
