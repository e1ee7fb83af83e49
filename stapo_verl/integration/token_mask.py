"""The token mask on verl's batches: S2T, 20-Entropy (mini-batch scope) and the random control.

:func:`apply_token_mask` builds one mini-batch's mask (``MASKS[kind]`` of
:mod:`stapo_verl.method.token_masks`, thresholds over the DP group) from statistics of the current
policy (``current``) or of the old-log-prob pass (``old``), both read by :func:`token_stats`, and zeroes the silenced tokens in ``response_mask`` and ``loss_mask``: they stay in the
forward pass (``attention_mask`` untouched), and verl's own ``agg_loss`` renormalises over the
kept tokens for every ``loss_agg_mode``, exactly, whatever the micro-batch split. The helpers
read verl's batch layout (jagged no-padding tensors, or padded ones).
"""

from __future__ import annotations

import verl  # noqa: F401  isort: skip  (verl first: see stapo_verl/integration/worker.py)
import logging
import time
from collections.abc import Callable

import torch
from verl.workers.utils.padding import no_padding_2_padding, response_from_nested

from stapo_verl.analysis.dump import append_jsonl, token_records
from stapo_verl.method import config as stapo_config
from stapo_verl.method.config import masks_in_training_forward
from stapo_verl.method.s2t import assert_finite, global_sum, token_group_stats
from stapo_verl.method.token_masks import MASKS, TokenStats

logger = logging.getLogger("stapo_verl")

# Key of the old-log-prob pass's entropy in the update batch (verl's v1 trainer writes it).
OLD_ENTROPY_KEY = "entropy"


def flat_tokens(tensor: torch.Tensor) -> torch.Tensor:
    """Per-token values of a jagged (nested) or padded response tensor, as one 1-D tensor."""
    return tensor.values() if tensor.is_nested else tensor.reshape(-1)


def unflat_like(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.is_nested:
        lengths = like.offsets().diff()
        # Without max_seqlen, to_padded_tensor pads every row to the total token count.
        return torch.nested.nested_tensor_from_jagged(
            flat, offsets=like.offsets(), min_seqlen=int(lengths.min()), max_seqlen=int(lengths.max())
        )
    return flat.view_as(like)


def response_values(full_sequence: torch.Tensor, data) -> torch.Tensor:
    """Response-token values (flat, aligned with ``flat_tokens(data['response_mask'])``) of a model
    output over whole sequences (a jagged tensor, as verl's engine returns it)."""
    response_mask = data["response_mask"]
    if response_mask.is_nested:
        return response_from_nested(full_sequence, response_mask).values()
    return no_padding_2_padding(full_sequence, data).reshape(-1)


def response_offsets(data) -> torch.Tensor:
    """Start of each response's tokens in the flat layout (``flat_tokens(response_mask)``), and the end."""
    mask = data["response_mask"]
    if mask.is_nested:
        return mask.offsets().cpu()
    return torch.arange(mask.shape[0] + 1) * mask.shape[1]


def row_of_token(data) -> torch.Tensor:
    """The row (response) of each token in the flat layout (``flat_tokens(response_mask)``), on CPU."""
    offsets = response_offsets(data)
    return torch.repeat_interleave(torch.arange(len(offsets) - 1), offsets.diff())


def rows_that_can_hold_a_candidate(data, positive_only: bool = True) -> torch.Tensor:
    """The responses with a valid token whose advantage can make it an S2T candidate (A > 0;
    A != 0 when ``positive_only`` is false). The other responses' p_t and H_t change nothing in
    the S2T mask, tau_h or the token counts: all their tokens are kept."""
    valid = flat_tokens(data["response_mask"]).bool().cpu()
    advantages = flat_tokens(data["advantages"]).cpu()
    eligible = valid & ((advantages > 0) if positive_only else (advantages != 0))
    return torch.unique(row_of_token(data)[eligible])


def current_stats_where_candidates_can_be(data, current_stats, positive_only: bool):
    """``current`` statistics from a pass over only the responses that can hold a candidate
    (exact for the S2T mask: see :func:`rows_that_can_hold_a_candidate`). Every other token
    takes the old-log-prob pass's p_t and H_t, which only the diagnostics of kept tokens read, and
    NaN for sum pi^2 (the grad-norm diagnostic then covers the recomputed tokens only)."""
    rows = rows_that_can_hold_a_candidate(data, positive_only)
    log_prob = flat_tokens(data["old_log_probs"]).clone()
    entropy = flat_tokens(data[OLD_ENTROPY_KEY]).clone()
    fresh_log_prob, fresh_entropy, fresh_sum_pi_squared = current_stats(rows)
    offsets = response_offsets(data)
    tokens = torch.cat(
        [torch.arange(int(offsets[r]), int(offsets[r + 1])) for r in rows.tolist()]
        or [torch.zeros(0, dtype=torch.long)]
    ).to(log_prob.device)
    log_prob[tokens] = fresh_log_prob.to(log_prob)
    entropy[tokens] = fresh_entropy.to(entropy)
    sum_pi_squared = None
    if fresh_sum_pi_squared is not None:
        sum_pi_squared = torch.full_like(log_prob, float("nan"))
        sum_pi_squared[tokens] = fresh_sum_pi_squared.to(sum_pi_squared)
    return log_prob, entropy, sum_pi_squared


def token_stats(data, policy_loss, current_stats, old_stats_are_current: bool) -> TokenStats:
    """The statistics the mask reads, from the source the config names (flat, on this rank)."""
    kind = stapo_config.token_mask_kind(policy_loss)
    has_old_stats = OLD_ENTROPY_KEY in data.keys() and "old_log_probs" in data.keys()
    if policy_loss.stats_source == "current" and not (old_stats_are_current and has_old_stats):
        if kind in ("s2t", "random") and has_old_stats:
            return TokenStats(
                *current_stats_where_candidates_can_be(
                    data, current_stats, positive_only=policy_loss.s2t_advantage_sign == "positive"
                )
            )
        return TokenStats(*current_stats(None))  # 20-Entropy ranks every token: nothing to fill in with
    if OLD_ENTROPY_KEY not in data.keys():
        raise KeyError(
            f"stats_source=old needs the old-log-prob pass's entropy in the update batch under "
            f"'{OLD_ENTROPY_KEY}' (verl's v1 trainer, trainer.use_v1=true, keeps it); this batch has "
            f"{sorted(data.keys())}. Use actor_rollout_ref.actor.policy_loss.stats_source=current."
        )
    # sum_pi_squared is present when actor.calculate_sum_pi_squared=true
    sum_pi_squared = flat_tokens(data["sum_pi_squared"]) if "sum_pi_squared" in data.keys() else None
    return TokenStats(flat_tokens(data["old_log_probs"]), flat_tokens(data[OLD_ENTROPY_KEY]), sum_pi_squared)


def apply_token_mask(
    data,
    policy_loss: stapo_config.TokenMaskPolicyLossConfig,
    current_stats: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] | None = None,
    group=None,
    dump: Callable[..., None] | None = None,
    old_stats_are_current: bool = False,
) -> dict[str, float]:
    """Zero the tokens that lose their gradient in ``data``'s ``response_mask``/``loss_mask``.

    Args:
        data: one mini-batch of this rank (TensorDict, verl's no-padding or padded layout).
        policy_loss: the actor's policy-loss config; ``token_mask_kind`` says which mask
            (:data:`stapo_verl.method.token_masks.MASKS`).
        current_stats: ``current_stats(rows)`` returns flat (log_prob, entropy, sum_pi_squared or
            None) of the current policy for the response tokens of ``rows`` (a 1-D index tensor,
            in that order; None: every row); called only for ``stats_source=current``. For S2T
            with the old pass's statistics in the batch, ``rows`` are only the responses that
            can hold a candidate.
        group: the data-parallel process group (None on one rank).
        dump: if given, called as dump(silenced, kept_candidates or None, log_prob, entropy,
            advantages) (flat tensors; kept candidates: S2T candidates that keep a gradient).
        old_stats_are_current: the weights have not changed since the old-log-prob pass (the
            step's first update): ``current`` reads the batch's old statistics when it has them,
            which are then exactly pi_theta's, instead of running a forward pass.

    Returns:
        Mini-batch-global metrics (identical on every rank).
    """
    kind = stapo_config.token_mask_kind(policy_loss)
    if kind is None:
        raise ValueError(f"loss_mode {policy_loss.loss_mode!r} with token_mask=null has no token mask")
    if masks_in_training_forward(policy_loss):
        raise ValueError("top_entropy_scope=micro_batch is masked in the loss (plan_top_entropy_per_micro_batch)")
    valid = flat_tokens(data["response_mask"]).bool()
    stats = token_stats(data, policy_loss, current_stats, old_stats_are_current)
    log_prob, entropy = stats.log_prob.to(valid.device), stats.entropy.to(valid.device)
    if log_prob.shape != valid.shape or entropy.shape != valid.shape:
        raise ValueError(
            f"token statistics do not line up with response_mask: log_prob {tuple(log_prob.shape)}, "
            f"entropy {tuple(entropy.shape)}, response tokens {tuple(valid.shape)}"
        )
    assert_finite("entropy", entropy, valid, group)
    sum_pi_squared = stats.sum_pi_squared.to(valid.device) if stats.sum_pi_squared is not None else None
    stats = TokenStats(log_prob, entropy, sum_pi_squared)
    advantages = flat_tokens(data["advantages"]).to(valid.device)

    result = MASKS[kind](stats, advantages, valid, policy_loss, group)
    silenced, metrics = result.silenced, result.metrics
    keep = valid & ~silenced
    groups = token_group_stats(log_prob, entropy, advantages, valid, silenced, sum_pi_squared, group)
    if kind != "top_entropy" and "silenced/prob_mean" in groups:
        metrics["s2t/silenced_prob_mean"] = groups["silenced/prob_mean"]
        metrics["s2t/silenced_entropy_mean"] = groups["silenced/entropy_mean"]
    if policy_loss.diagnostics:
        metrics.update({f"token_mask/{key}": value for key, value in groups.items()})
    if dump is not None:
        dump(silenced, result.kept_candidates, log_prob, entropy, advantages)

    num_valid = float(global_sum(valid.sum(), group))
    if num_valid > 0 and not bool(global_sum(keep.sum(), group)):
        logger.warning("stapo-verl: the %s mask silenced every token of this mini-batch; no gradient", kind)
    keep_only(data, keep)
    return metrics


def keep_only(data, keep: torch.Tensor) -> None:
    """Zero every token outside ``keep`` (flat, aligned with ``flat_tokens(response_mask)``) in ``data``'s
    ``response_mask`` and ``loss_mask``."""
    for key in ("response_mask", "loss_mask"):
        if key not in data.keys():
            continue
        mask = data[key]
        flat = flat_tokens(mask)
        if flat.shape != keep.shape:
            raise ValueError(f"{key} is not aligned with response_mask ({tuple(flat.shape)} vs {tuple(keep.shape)})")
        data[key] = unflat_like(torch.where(keep.to(flat.device), flat, torch.zeros_like(flat)), mask)


def write_token_dump(path, data, groups, log_prob, entropy, advantages, decode, config, update: int) -> None:
    """Append up to ``config.dump_max_tokens`` decoded tokens of each group (name -> flat mask or
    None) of ``data`` to ``path``."""
    responses = data["responses"]
    if responses.is_nested:
        lengths = responses.offsets().diff()
    else:
        lengths = torch.full((responses.shape[0],), responses.shape[1], dtype=torch.long)
    for group, mask in groups.items():
        if mask is None:
            continue
        records = token_records(
            flat_tokens(responses).cpu(),
            lengths.cpu(),
            mask.cpu(),
            log_prob.cpu(),
            entropy.cpu(),
            advantages.cpu(),
            decode,
            config.dump_context_tokens,
            config.dump_max_tokens,
        )
        # the time lets a resumed run drop the records of the steps it computes again
        append_jsonl(path, records, update=update, group=group, time=round(time.time(), 3))
