"""Token masks for STAPO (S2T) and 20-Entropy: pure tensor functions, no verl runtime.

Every per-token argument shares one layout: a padded ``(batch, response_len)`` tensor or the
flat ``values()`` of verl's jagged response tensors (any shape works, as long as all agree).
``response_mask`` marks valid response tokens. Thresholds are mini-batch-global: when a
``group`` (torch.distributed process group) is given, the quantile or top-k is taken over the
tokens of every rank in it, so each rank gets the same threshold.

References: docs/method.md section 1 (S2T) and section 4 (20-Entropy, arXiv 2506.01939).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Which S2T candidates are silenced (docs/method.md section 6): low_entropy is S2T; high_entropy and
# random silence as many candidates as S2T would (select_candidates); all silences every one.
CANDIDATE_SELECTIONS = ("low_entropy", "high_entropy", "random", "all")


@dataclass
class S2TMask:
    """Result of :func:`s2t_spurious_mask` (all masks are bool, shaped like the inputs)."""

    spurious_mask: torch.Tensor  # silenced tokens: candidates with entropy < tau_entropy
    candidate_mask: torch.Tensor  # valid, advantage > 0, prob < tau_prob
    tau_entropy: float | None  # None in quantile mode when no rank has a candidate


@dataclass
class TopEntropyMask:
    """Result of :func:`top_entropy_keep_mask`."""

    keep_mask: torch.Tensor  # tokens that keep their gradient
    entropy_threshold: float | None  # smallest kept entropy; None if no valid token


def _is_distributed(group) -> bool:
    return group is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def global_sum(value: torch.Tensor, group=None) -> torch.Tensor:
    """Sum a tensor over the ranks of ``group`` (identity without one)."""
    if _is_distributed(group):
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
    return value


def global_max(value: torch.Tensor, group=None) -> torch.Tensor:
    """The largest value of a tensor over the ranks of ``group`` (identity without one)."""
    if _is_distributed(group):
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return value


def rank_spread(value: torch.Tensor, group=None) -> tuple[float, float]:
    """(smallest, largest) of a per-rank scalar over the ranks of ``group``: how unevenly a
    mini-batch's tokens of one kind fell on the data-parallel ranks."""
    return -float(global_max(-value, group)), float(global_max(value, group))


def gather_values(values: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate 1-D tensors of different lengths from every rank of ``group``."""
    return gather_with_offset(values, group)[0]


def gather_with_offset(values: torch.Tensor, group=None) -> tuple[torch.Tensor, int]:
    """:func:`gather_values`, and where this rank's values start in the result."""
    if not _is_distributed(group):
        return values, 0
    world = dist.get_world_size(group)
    size = torch.tensor([values.numel()], device=values.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=values.dtype, device=values.device)
    padded[: values.numel()] = values
    chunks = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(chunks, padded, group=group)
    offset = sum(int(s.item()) for s in sizes[: dist.get_rank(group)])
    return torch.cat([chunk[: int(s.item())] for chunk, s in zip(chunks, sizes)]), offset


def quantile(values: torch.Tensor, q: float) -> float:
    """q-quantile of a 1-D tensor with linear interpolation, as ``torch.quantile`` computes it.

    Sorting instead of ``torch.quantile``, which refuses inputs above 2**24 elements.
    """
    if values.numel() == 0:
        raise ValueError("quantile of an empty tensor")
    ordered = torch.sort(values.double()).values
    position = q * (ordered.numel() - 1)
    lo = math.floor(position)
    hi = min(lo + 1, ordered.numel() - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (position - lo))


def keep_count(num_valid: int, ratio: float) -> int:
    """Number of tokens 20-Entropy keeps out of ``num_valid``: ceil(ratio * num_valid).

    The product is rounded to 9 decimals first so that e.g. 0.2 * 15 = 3.0000000000000004 keeps 3.
    """
    return min(num_valid, math.ceil(round(ratio * num_valid, 9)))


def s2t_spurious_mask(
    log_prob: torch.Tensor,
    entropy: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    tau_prob: float = 0.002,
    entropy_quantile: float | None = 0.75,
    entropy_threshold: float | None = None,
    group=None,
) -> S2TMask:
    """The S2T rule: which tokens are spurious (silenced).

    candidate_t = valid_t and A_t > 0 and p_t < tau_prob, with p_t = exp(log_prob_t)
    tau_entropy = entropy_quantile-quantile of H over the candidates of all ranks
                  (or the absolute ``entropy_threshold`` when that is given instead)
    spurious_t  = candidate_t and H_t < tau_entropy

    Args:
        log_prob: log pi(y_t) of the sampled token, any shape S.
        entropy: policy entropy H_t at each position, shape S.
        advantages: A_t, shape S.
        response_mask: valid tokens, shape S (bool or 0/1).
        tau_prob: probability cut-off, in (0, 1].
        entropy_quantile: q in (0, 1]; exactly one of it and ``entropy_threshold`` is set.
        entropy_threshold: absolute entropy cut-off (nats), >= 0.
        group: process group spanning the mini-batch's data-parallel ranks, or None.
    """
    if (entropy_quantile is None) == (entropy_threshold is None):
        raise ValueError("set exactly one of entropy_quantile and entropy_threshold")
    valid = response_mask.bool()
    candidate = valid & (advantages > 0) & (torch.exp(log_prob.float()) < tau_prob)
    candidate_entropy = entropy.float()[candidate]
    if entropy_threshold is not None:
        tau_entropy: float | None = float(entropy_threshold)
    else:
        pooled = gather_values(candidate_entropy, group)
        tau_entropy = quantile(pooled, entropy_quantile) if pooled.numel() > 0 else None
    spurious = torch.zeros_like(candidate)
    if tau_entropy is not None:
        spurious = candidate & (entropy.float() < tau_entropy)
    return S2TMask(spurious_mask=spurious, candidate_mask=candidate, tau_entropy=tau_entropy)


def select_candidates(
    candidate_mask: torch.Tensor,
    entropy: torch.Tensor,
    count: int,
    selection: str,
    generator: torch.Generator | None = None,
    group=None,
) -> torch.Tensor:
    """``count`` of the mini-batch's candidates (over all ranks of ``group``), for the paper's
    masking ablations (docs/method.md section 6); S2T itself is :func:`s2t_spurious_mask`.

    ``high_entropy``: the highest-entropy candidates (ties: the earlier token, ranks in order);
    ``random``: uniformly among the candidates, drawn from ``generator``, which every rank must
    seed alike (each rank keeps its share of one global draw). Shapes as ``candidate_mask``.
    """
    candidate = candidate_mask.bool()
    local = entropy.float()[candidate]
    pooled, offset = gather_with_offset(local, group)
    if selection == "high_entropy":
        order = torch.sort(pooled, descending=True, stable=True).indices
    elif selection == "random":
        order = torch.randperm(pooled.numel(), generator=generator).to(pooled.device)
    else:
        raise ValueError(f"selection must be 'high_entropy' or 'random', got {selection!r}")
    if not 0 <= count <= pooled.numel():
        raise ValueError(f"cannot select {count} of {pooled.numel()} candidates")
    chosen = torch.zeros(pooled.numel(), dtype=torch.bool, device=pooled.device)
    chosen[order[:count]] = True
    selected = torch.zeros_like(candidate)
    selected[candidate] = chosen[offset : offset + local.numel()].to(selected.device)
    return selected


def top_entropy_keep_mask(
    entropy: torch.Tensor, response_mask: torch.Tensor, ratio: float = 0.2, group=None
) -> TopEntropyMask:
    """20-Entropy over the mini-batch: keep only the highest-entropy valid tokens (any advantage sign).

    Keeps the ``keep_count(n, ratio)`` highest-entropy of the n valid tokens of all ranks of
    ``group``. Tokens tied with the smallest kept entropy are all kept, so ties can keep a few
    more than the count.
    """
    valid = response_mask.bool()
    values = entropy.float()
    pooled = gather_values(values[valid], group)
    k = keep_count(pooled.numel(), ratio)
    if k == 0:
        return TopEntropyMask(keep_mask=torch.zeros_like(valid), entropy_threshold=None)
    threshold = float(torch.topk(pooled, k).values[-1])
    return TopEntropyMask(keep_mask=valid & (values >= threshold), entropy_threshold=threshold)


def top_k_entropy_mask(entropy: torch.Tensor, response_mask: torch.Tensor, ratio: float = 0.2) -> torch.Tensor:
    """20-Entropy within one micro-batch: exactly ``keep_count(n, ratio)`` of its n valid tokens
    keep a gradient, the highest-entropy ones; of tokens with equal entropy the earlier one (in
    flat order) is kept. The exact count lets the loss's renormalising token count be known
    before the training forward computes the entropies. Returns the keep mask (shape as inputs).
    """
    positions = torch.nonzero(response_mask.bool().reshape(-1)).squeeze(1)
    k = keep_count(positions.numel(), ratio)
    order = torch.sort(entropy.reshape(-1)[positions].float(), descending=True, stable=True).indices[:k]
    keep = torch.zeros(response_mask.numel(), dtype=torch.bool, device=response_mask.device)
    keep[positions[order]] = True
    return keep.view(response_mask.shape)


def assert_finite(name: str, values: torch.Tensor, response_mask: torch.Tensor, group=None) -> None:
    """Raise on every rank of ``group`` if a statistic is NaN/inf on a valid token of any rank.

    A NaN entropy compares False everywhere and would silently drop the token from the mask
    decision; we refuse to train on that instead. The count is global so that no rank is left
    waiting in a collective while another raises.
    """
    bad = (~torch.isfinite(values.float())) & response_mask.bool()
    count = int(global_sum(bad.sum(), group))
    if count:
        raise FloatingPointError(
            f"stapo-verl: {count} valid response token(s) have a non-finite {name}; "
            "refusing to build the token mask (check the model's logits / log-probs)."
        )


def random_silence_like(
    reference_mask: torch.Tensor, response_mask: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """The random control: as many silenced tokens as ``reference_mask`` has, chosen uniformly
    among the valid tokens (on this rank; per rank the counts match, so globally they do too)."""
    valid_positions = torch.nonzero(response_mask.bool().reshape(-1)).squeeze(1)
    count = int(reference_mask.sum())
    order = torch.randperm(valid_positions.numel(), generator=generator)[:count].to(valid_positions.device)
    silenced = torch.zeros(response_mask.numel(), dtype=torch.bool, device=response_mask.device)
    silenced[valid_positions[order]] = True
    return silenced.view(response_mask.shape)


def logit_grad_norm(prob: torch.Tensor, sum_pi_squared: torch.Tensor) -> torch.Tensor:
    """||d log pi(y) / d logits|| = sqrt(1 - 2 p_y + sum_v pi_v^2) at each position (docs/method.md section 2).

    Low p with a peaked distribution (large sum pi^2, low entropy) gives the largest push.
    """
    return torch.sqrt(torch.clamp(1.0 - 2.0 * prob.double() + sum_pi_squared.double(), min=0.0))


def token_group_stats(
    log_prob: torch.Tensor,
    entropy: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    silenced: torch.Tensor,
    sum_pi_squared: torch.Tensor | None = None,
    group=None,
) -> dict[str, float]:
    """Mini-batch-global statistics of the silenced and the kept tokens.

    For each group G (keys ``{G}/...``): ``tokens``, ``prob_mean``, ``entropy_mean``,
    ``positive_adv_frac``, ``grad_norm_bound_mean`` (when ``sum_pi_squared`` is given: over the
    group's tokens where it is finite; NaN marks tokens without it) and
    ``entropy_cov`` = sum_{t in G} (log p_t - mean log p)(A_t - mean A) / N_valid, G's share of the
    token-level Cov(log pi, A); the first-order entropy change of an update is about
    -lr * Cov(log pi, A) (the analysis verl's clip_cov / kl_cov losses come from), so a positive
    share means the group's gradient lowers entropy.
    """
    valid = response_mask.bool()
    log_prob, advantages = log_prob.double(), advantages.double()
    n_valid = float(global_sum(valid.sum(), group))
    if n_valid == 0:
        return {}
    mean_log_prob = float(global_sum(log_prob[valid].sum(), group)) / n_valid
    mean_advantage = float(global_sum(advantages[valid].sum(), group)) / n_valid
    centered_product = (log_prob - mean_log_prob) * (advantages - mean_advantage)
    per_token = {
        "prob_mean": log_prob.exp(),
        "entropy_mean": entropy.double(),
        "positive_adv_frac": (advantages > 0).double(),
    }
    stats = {}
    for name, members in (("silenced", valid & silenced.bool()), ("kept", valid & ~silenced.bool())):
        count = float(global_sum(members.sum(), group))
        stats[f"{name}/tokens"] = count
        stats[f"{name}/entropy_cov"] = float(global_sum(centered_product[members].sum(), group)) / n_valid
        if count > 0:
            for key, values in per_token.items():
                stats[f"{name}/{key}"] = float(global_sum(values[members].sum(), group)) / count
        if sum_pi_squared is not None:  # over the tokens that have it (NaN elsewhere)
            known = members & torch.isfinite(sum_pi_squared)
            known_count = float(global_sum(known.sum(), group))
            if known_count > 0:
                bound = logit_grad_norm(log_prob[known].exp(), sum_pi_squared[known])
                stats[f"{name}/grad_norm_bound_mean"] = float(global_sum(bound.sum(), group)) / known_count
    return stats
