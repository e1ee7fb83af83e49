"""The token masks, one pure function each, behind one registry (as verl's ``core_algos``
keeps its losses): S2T with its candidate selections, the random control, 20-Entropy.

Each mask function takes one mini-batch's tokens on this rank, flat and aligned
(``stats`` and ``advantages`` of shape ``(tokens,)``, ``valid`` a bool ``(tokens,)``), the
policy-loss config (:class:`stapo_verl.method.config.TokenMaskPolicyLossConfig` or any object with
its fields) and the data-parallel ``group`` (None on one rank; thresholds and counts are then
mini-batch-global), and returns a :class:`MaskResult`: the silenced tokens and the mask's metrics,
identical on every rank. No verl runtime: :func:`stapo_verl.integration.token_mask.apply_token_mask`
reads verl's batch, calls ``MASKS[kind]`` and writes the result back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from stapo_verl.method.s2t import (
    assert_finite,
    global_sum,
    random_silence_like,
    rank_spread,
    s2t_spurious_mask,
    select_candidates,
    top_entropy_keep_mask,
)


@dataclass(frozen=True)
class TokenStats:
    """Per-token statistics of the policy the mask reads, each ``(tokens,)``."""

    log_prob: torch.Tensor  # log p_t of the sampled token
    entropy: torch.Tensor  # H_t at its position
    sum_pi_squared: torch.Tensor | None = None  # sum_v pi_v^2 (diagnostics only), NaN where not computed


@dataclass
class MaskResult:
    silenced: torch.Tensor  # (tokens,) bool: valid tokens that lose their gradient
    metrics: dict[str, float]
    kept_candidates: torch.Tensor | None = None  # S2T candidates that keep a gradient (s2t only; for dumps)


def mask_generator(seed: int, first: int, second: int) -> torch.Generator:
    """The random draws of a mask: ``seed`` (``random_mask_seed``) moved by two counts that differ
    between mini-batches (and, for a per-rank draw, between ranks)."""
    return torch.Generator().manual_seed(seed + 1_000_003 * first + 7919 * second)


def _s2t_rule(stats: TokenStats, advantages, valid, config, group):
    """S2T's own decision, its counts and its metrics (shared by the s2t and random masks)."""
    assert_finite("log_prob", stats.log_prob, valid, group)
    s2t = s2t_spurious_mask(
        stats.log_prob,
        stats.entropy,
        advantages if config.s2t_advantage_sign == "positive" else advantages.abs(),
        valid,
        tau_prob=config.tau_prob,
        entropy_quantile=config.entropy_quantile,
        entropy_threshold=config.entropy_threshold,
        group=group,
    )
    num_valid = float(global_sum(valid.sum(), group))
    num_candidates = float(global_sum(s2t.candidate_mask.sum(), group))
    rule_silenced = float(global_sum(s2t.spurious_mask.sum(), group))  # what S2T's own rule silences
    return s2t, num_valid, num_candidates, rule_silenced


def _s2t_metrics(s2t, silenced, valid, num_valid: float, num_candidates: float, group) -> dict[str, float]:
    denominator = max(num_valid, 1.0)
    num_silenced = float(global_sum(silenced.sum(), group))
    candidates_rank_min, candidates_rank_max = rank_spread(s2t.candidate_mask.sum(), group)
    metrics = {
        "s2t/valid_tokens": num_valid,
        "s2t/candidates": num_candidates,
        "s2t/silenced": num_silenced,
        "s2t/candidate_frac": num_candidates / denominator,
        "s2t/silenced_frac": num_silenced / denominator,
        # the fewest and most candidates one data-parallel rank held (the rule pools them all)
        "s2t/candidates_rank_min": candidates_rank_min,
        "s2t/candidates_rank_max": candidates_rank_max,
    }
    if s2t.tau_entropy is not None:
        metrics["s2t/tau_entropy"] = s2t.tau_entropy
    return metrics


def s2t_mask(stats: TokenStats, advantages, valid, config, group=None) -> MaskResult:
    """S2T (docs/method.md section 1): candidates A > 0, p < tau_p; silenced: those with entropy
    below the candidates' q-quantile. ``candidate_selection`` (section 6's ablations) silences as
    many candidates chosen otherwise (high entropy, at random: one global draw, the same on every
    rank), or every candidate."""
    s2t, num_valid, num_candidates, rule_silenced = _s2t_rule(stats, advantages, valid, config, group)
    selection = config.candidate_selection
    silenced = s2t.spurious_mask
    if selection == "all":
        silenced = s2t.candidate_mask
    elif selection != "low_entropy":
        generator = mask_generator(config.random_mask_seed, int(num_valid), int(num_candidates))
        silenced = select_candidates(s2t.candidate_mask, stats.entropy, int(rule_silenced), selection, generator, group)
    metrics = _s2t_metrics(s2t, silenced, valid, num_valid, num_candidates, group)
    if selection != "low_entropy":  # the ablation's count next to the rule's
        metrics["s2t/rule_silenced"] = rule_silenced
    return MaskResult(silenced, metrics, kept_candidates=s2t.candidate_mask & ~silenced)


def random_mask(stats: TokenStats, advantages, valid, config, group=None) -> MaskResult:
    """The control: as many valid tokens as S2T silences on this rank, drawn uniformly from all of
    them (each rank its own draw)."""
    s2t, num_valid, num_candidates, _ = _s2t_rule(stats, advantages, valid, config, group)
    rank = torch.distributed.get_rank(group) if group is not None else 0
    generator = mask_generator(config.random_mask_seed, int(valid.sum()), rank)
    silenced = random_silence_like(s2t.spurious_mask, valid, generator)
    return MaskResult(silenced, _s2t_metrics(s2t, silenced, valid, num_valid, num_candidates, group))


def top_entropy_mask(stats: TokenStats, advantages, valid, config, group=None) -> MaskResult:
    """20-Entropy (docs/method.md section 4): only the ``top_entropy_ratio`` highest-entropy valid
    tokens of the mini-batch keep their gradient."""
    top = top_entropy_keep_mask(stats.entropy, valid, ratio=config.top_entropy_ratio, group=group)
    num_valid = float(global_sum(valid.sum(), group))
    num_kept = float(global_sum(top.keep_mask.sum(), group))
    kept_rank_min, kept_rank_max = rank_spread(top.keep_mask.sum(), group)
    metrics = {
        "entropy20/kept_tokens": num_kept,
        "entropy20/kept_frac": num_kept / max(num_valid, 1.0),
        "entropy20/kept_tokens_rank_min": kept_rank_min,
        "entropy20/kept_tokens_rank_max": kept_rank_max,
    }
    if top.entropy_threshold is not None:
        metrics["entropy20/entropy_threshold"] = top.entropy_threshold
    return MaskResult(valid & ~top.keep_mask, metrics)


# token_mask kind (stapo_verl.method.config.token_mask_kind) -> its mask function
MASKS: dict[str, Callable[..., MaskResult]] = {"s2t": s2t_mask, "random": random_mask, "top_entropy": top_entropy_mask}
