"""The glue into verl's actor worker: the one place that touches verl's runtime.

verl 0.9 trains one mini-batch per ``TrainingWorker.train_batch`` call; the engine then counts
the mini-batch's loss tokens over all DP ranks (``batch_num_tokens``, from ``loss_mask``) and
runs the loss per micro-batch. S2T needs mini-batch-global decisions, so
:class:`TokenMaskTrainingWorker` (installed as ``ActorRolloutRefWorker.actor_worker_cls``, the
attribute verl provides to swap the actor's inner worker) builds the token mask once per
mini-batch, before the engine counts tokens:

1. statistics p_t, H_t: ``current`` = a no-grad forward of pi_theta over the mini-batch through
   verl's own log-prob path (``infer_batch``, the code of the old-log-prob pass); ``old`` = the
   old-log-prob pass's ``old_log_probs`` and ``entropy`` already in the update batch (which
   ``current`` reuses for a step's first mini-batch: the weights have not changed yet);
2. the mask (:mod:`stapo_verl.s2t`), with thresholds gathered over the DP group;
3. silenced tokens are zeroed in ``response_mask`` and ``loss_mask`` (they stay in the forward
   pass; ``attention_mask`` is untouched), so verl's own ``agg_loss`` renormalises over the kept
   tokens for every ``loss_agg_mode``, exactly, whatever the micro-batch split.

20-Entropy with ``top_entropy_scope=micro_batch`` needs only the entropies of the micro-batch
being trained, which verl's training forward computes (``calculate_entropy``): the hook plans
the split and the kept-token count (:func:`plan_top_entropy_per_micro_batch`) and the mask is made
inside each micro-batch's loss call (:func:`top_entropy_mask_in_loss`), with no extra pass.

``token_mask`` puts the same mask under any verl loss (``gspo``, ``cispo``, ...). The loss
function is wrapped so the registered ``stapo``/``entropy20`` losses run only on a masked
mini-batch, and so the mask metrics and diagnostics travel verl's metric path.
"""

from __future__ import annotations

# `import verl` first: if this module is the first to load verl, verl's plugin loader imports
# our other modules now, and they may only reach this (still empty) module through its name.
import verl  # noqa: F401  isort: skip

import logging
import os
from contextlib import contextmanager, nullcontext
from typing import Callable, Optional

import torch
from verl.utils import tensordict_utils as tu
from verl.utils.metric import AggregationType, Metric
from verl.workers import engine_workers
from verl.workers.engine.utils import prepare_micro_batches
from verl.workers.utils.padding import no_padding_2_padding, response_from_nested

from stapo_verl import config as stapo_config
from stapo_verl import losses
from stapo_verl.cpu.platform import init_process_group_on_cpu
from stapo_verl.dump import append_jsonl, token_records
from stapo_verl.s2t import (
    assert_finite,
    global_max,
    global_sum,
    keep_count,
    random_silence_like,
    rank_spread,
    s2t_spurious_mask,
    select_candidates,
    token_group_stats,
    top_entropy_keep_mask,
    top_k_entropy_mask,
)

logger = logging.getLogger("stapo_verl")

# Non-tensor key that carries a mini-batch's mask metrics to its micro-batches' loss calls.
MASK_METRICS_KEY = "stapo_token_mask_metrics"
# Key of the old-log-prob pass's entropy in the update batch (verl's v1 trainer writes it).
OLD_ENTROPY_KEY = "entropy"
# 20-Entropy per micro-batch: per row, the micro-batch it was planned into and that micro-batch's
# valid tokens (a row tensor, so verl's split carries it to the loss call); and the mini-batch's
# (valid, kept) token counts.
PLANNED_MICRO_BATCH_KEY = "stapo_planned_micro_batch"
PLANNED_TOKENS_KEY = "stapo_planned_tokens"
# True when the hook, not the actor config, turned on the training forward's entropy.
ENTROPY_FOR_MASK_ONLY_KEY = "stapo_entropy_for_mask_only"


def masks_in_training_forward(policy_loss) -> bool:
    """20-Entropy with ``top_entropy_scope=micro_batch``: the mask needs only the entropies of the
    micro-batch being trained, which the training forward computes, so it is made in the loss."""
    return stapo_config.token_mask_kind(policy_loss) == "top_entropy" and policy_loss.top_entropy_scope == "micro_batch"


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """Per-token values of a jagged (nested) or padded response tensor, as one 1-D tensor."""
    return tensor.values() if tensor.is_nested else tensor.reshape(-1)


def _unflat_like(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.is_nested:
        lengths = like.offsets().diff()
        # Without max_seqlen, to_padded_tensor pads every row to the total token count.
        return torch.nested.nested_tensor_from_jagged(
            flat, offsets=like.offsets(), min_seqlen=int(lengths.min()), max_seqlen=int(lengths.max())
        )
    return flat.view_as(like)


def response_values(full_sequence: torch.Tensor, data) -> torch.Tensor:
    """Response-token values (flat, aligned with ``_flat(data['response_mask'])``) of a model
    output over whole sequences (a jagged tensor, as verl's engine returns it)."""
    response_mask = data["response_mask"]
    if response_mask.is_nested:
        return response_from_nested(full_sequence, response_mask).values()
    return no_padding_2_padding(full_sequence, data).reshape(-1)


def _response_offsets(data) -> torch.Tensor:
    """Start of each response's tokens in the flat layout (``_flat(response_mask)``), and the end."""
    mask = data["response_mask"]
    if mask.is_nested:
        return mask.offsets().cpu()
    return torch.arange(mask.shape[0] + 1) * mask.shape[1]


def _row_of_token(data) -> torch.Tensor:
    """The row (response) of each token in the flat layout (``_flat(response_mask)``), on CPU."""
    offsets = _response_offsets(data)
    return torch.repeat_interleave(torch.arange(len(offsets) - 1), offsets.diff())


def rows_that_can_hold_a_candidate(data, positive_only: bool = True) -> torch.Tensor:
    """The responses with a valid token whose advantage can make it an S2T candidate (A > 0;
    A != 0 when ``positive_only`` is false). The other responses' p_t and H_t change nothing in
    the S2T mask, tau_h or the token counts: all their tokens are kept."""
    valid = _flat(data["response_mask"]).bool().cpu()
    advantages = _flat(data["advantages"]).cpu()
    eligible = valid & ((advantages > 0) if positive_only else (advantages != 0))
    return torch.unique(_row_of_token(data)[eligible])


def _current_stats_where_candidates_can_be(data, current_stats, positive_only: bool):
    """``current`` statistics from a pass over only the responses that can hold a candidate
    (exact for the S2T mask: see :func:`rows_that_can_hold_a_candidate`). Every other token
    takes the old-log-prob pass's p_t and H_t, which only the diagnostics of kept tokens read, and
    NaN for sum pi^2 (the grad-norm diagnostic then covers the recomputed tokens only)."""
    rows = rows_that_can_hold_a_candidate(data, positive_only)
    log_prob = _flat(data["old_log_probs"]).clone()
    entropy = _flat(data[OLD_ENTROPY_KEY]).clone()
    fresh_log_prob, fresh_entropy, fresh_sum_pi_squared = current_stats(rows)
    offsets = _response_offsets(data)
    tokens = torch.cat([torch.arange(int(offsets[r]), int(offsets[r + 1])) for r in rows.tolist()] or
                       [torch.zeros(0, dtype=torch.long)]).to(log_prob.device)  # fmt: skip
    log_prob[tokens] = fresh_log_prob.to(log_prob)
    entropy[tokens] = fresh_entropy.to(entropy)
    sum_pi_squared = None
    if fresh_sum_pi_squared is not None:
        sum_pi_squared = torch.full_like(log_prob, float("nan"))
        sum_pi_squared[tokens] = fresh_sum_pi_squared.to(sum_pi_squared)
    return log_prob, entropy, sum_pi_squared


def apply_token_mask(
    data,
    policy_loss: "stapo_config.TokenMaskPolicyLossConfig",
    current_stats: Optional[Callable[[], tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]] = None,
    group=None,
    dump: Optional[Callable[..., None]] = None,
    old_stats_are_current: bool = False,
) -> dict[str, float]:
    """Zero the tokens that lose their gradient in ``data``'s ``response_mask``/``loss_mask``.

    Args:
        data: one mini-batch of this rank (TensorDict, verl's no-padding or padded layout).
        policy_loss: the actor's policy-loss config; ``token_mask_kind`` says which mask.
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
    valid = _flat(data["response_mask"]).bool()
    has_old_stats = OLD_ENTROPY_KEY in data.keys() and "old_log_probs" in data.keys()
    if policy_loss.stats_source == "current" and not (old_stats_are_current and has_old_stats):
        if kind in ("s2t", "random") and has_old_stats:
            log_prob, entropy, sum_pi_squared = _current_stats_where_candidates_can_be(
                data, current_stats, positive_only=policy_loss.s2t_advantage_sign == "positive"
            )
        else:  # 20-Entropy ranks every token; without the old pass there is nothing to fill in with
            log_prob, entropy, sum_pi_squared = current_stats(None)
    else:
        if OLD_ENTROPY_KEY not in data.keys():
            raise KeyError(
                f"stats_source=old needs the old-log-prob pass's entropy in the update batch under "
                f"'{OLD_ENTROPY_KEY}' (verl's v1 trainer, trainer.use_v1=true, keeps it); this batch has "
                f"{sorted(data.keys())}. Use actor_rollout_ref.actor.policy_loss.stats_source=current."
            )
        log_prob, entropy = _flat(data["old_log_probs"]), _flat(data[OLD_ENTROPY_KEY])
        # present when actor.calculate_sum_pi_squared=true
        sum_pi_squared = _flat(data["sum_pi_squared"]) if "sum_pi_squared" in data.keys() else None
    log_prob, entropy = log_prob.to(valid.device), entropy.to(valid.device)
    if log_prob.shape != valid.shape or entropy.shape != valid.shape:
        raise ValueError(
            f"token statistics do not line up with response_mask: log_prob {tuple(log_prob.shape)}, "
            f"entropy {tuple(entropy.shape)}, response tokens {tuple(valid.shape)}"
        )
    assert_finite("entropy", entropy, valid, group)
    advantages = _flat(data["advantages"]).to(valid.device)

    num_valid = float(global_sum(valid.sum(), group))
    denominator = max(num_valid, 1.0)
    if kind in ("s2t", "random"):
        assert_finite("log_prob", log_prob, valid, group)
        s2t = s2t_spurious_mask(
            log_prob,
            entropy,
            advantages if policy_loss.s2t_advantage_sign == "positive" else advantages.abs(),
            valid,
            tau_prob=policy_loss.tau_prob,
            entropy_quantile=policy_loss.entropy_quantile,
            entropy_threshold=policy_loss.entropy_threshold,
            group=group,
        )
        silenced = s2t.spurious_mask
        num_candidates = float(global_sum(s2t.candidate_mask.sum(), group))
        selection = policy_loss.candidate_selection
        rule_silenced = float(global_sum(silenced.sum(), group))  # what S2T's own rule silences
        if kind == "random":
            rank = torch.distributed.get_rank(group) if group is not None else 0
            seed = policy_loss.random_mask_seed + 1_000_003 * int(valid.sum()) + 7919 * rank
            silenced = random_silence_like(silenced, valid, torch.Generator().manual_seed(seed))
        elif selection == "all":
            silenced = s2t.candidate_mask
        elif selection != "low_entropy":  # as many candidates as S2T silences, chosen otherwise
            # the same on every rank (one global draw), and different from one mini-batch to the next
            seed = policy_loss.random_mask_seed + 1_000_003 * int(num_valid) + 7919 * int(num_candidates)
            silenced = select_candidates(
                s2t.candidate_mask, entropy, int(rule_silenced), selection, torch.Generator().manual_seed(seed), group
            )
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
        if kind == "s2t" and selection != "low_entropy":  # the ablation's count next to the rule's
            metrics["s2t/rule_silenced"] = rule_silenced
    else:
        top = top_entropy_keep_mask(entropy, valid, ratio=policy_loss.top_entropy_ratio, group=group)
        silenced = valid & ~top.keep_mask
        num_kept = float(global_sum(top.keep_mask.sum(), group))
        kept_rank_min, kept_rank_max = rank_spread(top.keep_mask.sum(), group)
        metrics = {"entropy20/kept_tokens": num_kept, "entropy20/kept_frac": num_kept / denominator,
                   "entropy20/kept_tokens_rank_min": kept_rank_min, "entropy20/kept_tokens_rank_max": kept_rank_max}
        if top.entropy_threshold is not None:
            metrics["entropy20/entropy_threshold"] = top.entropy_threshold
    keep = valid & ~silenced

    groups = token_group_stats(
        log_prob, entropy, advantages, valid, silenced,
        sum_pi_squared.to(valid.device) if sum_pi_squared is not None else None, group,
    )  # fmt: skip
    if kind != "top_entropy" and "silenced/prob_mean" in groups:
        metrics["s2t/silenced_prob_mean"] = groups["silenced/prob_mean"]
        metrics["s2t/silenced_entropy_mean"] = groups["silenced/entropy_mean"]
    if policy_loss.diagnostics:
        metrics.update({f"token_mask/{key}": value for key, value in groups.items()})
    if dump is not None:
        kept_candidates = s2t.candidate_mask & ~silenced if kind == "s2t" else None
        dump(silenced, kept_candidates, log_prob, entropy, advantages)

    if num_valid > 0 and not bool(global_sum(keep.sum(), group)):
        logger.warning("stapo-verl: the %s mask silenced every token of this mini-batch; no gradient", kind)
    keep_only(data, keep)
    return metrics


def keep_only(data, keep: torch.Tensor) -> None:
    """Zero every token outside ``keep`` (flat, aligned with ``_flat(response_mask)``) in ``data``'s
    ``response_mask`` and ``loss_mask``."""
    for key in ("response_mask", "loss_mask"):
        if key not in data.keys():
            continue
        mask = data[key]
        flat = _flat(mask)
        if flat.shape != keep.shape:
            raise ValueError(f"{key} is not aligned with response_mask ({tuple(flat.shape)} vs {tuple(keep.shape)})")
        data[key] = _unflat_like(torch.where(keep.to(flat.device), flat, torch.zeros_like(flat)), mask)


def plan_top_entropy_per_micro_batch(data, policy_loss, micro_batch_rows: torch.Tensor, group=None) -> dict[str, float]:
    """20-Entropy with ``top_entropy_scope=micro_batch``, before verl's engine runs the mini-batch.

    The mask itself is made in each micro-batch's loss call from the entropy of the training
    forward (:func:`top_entropy_mask_in_loss`): no extra forward pass. What the loss needs to know
    beforehand is planned here: each micro-batch keeps exactly ``keep_count(n, ratio)`` of its n
    valid tokens (:func:`~stapo_verl.s2t.top_k_entropy_mask`), so the mini-batch's kept-token count,
    which renormalises the loss over every micro-batch and DP rank, is known now.

    Args:
        data: one mini-batch of this rank; gets the planned micro-batch of each row and the
            kept-token count, and ``calculate_entropy=True`` for the training forward.
        micro_batch_rows: (rows,) the micro-batch index of each row under verl's split.
        group: the data-parallel process group (None on one rank).

    Returns:
        Mini-batch-global metrics (identical on every rank).
    """
    valid = _flat(data["response_mask"]).bool().cpu()
    row_valid = torch.zeros(len(data), dtype=torch.long).index_add_(0, _row_of_token(data), valid.long())
    micro_batch_rows = micro_batch_rows.cpu()
    per_micro_batch = torch.zeros(int(micro_batch_rows.max()) + 1 if len(micro_batch_rows) else 0, dtype=torch.long)
    per_micro_batch.index_add_(0, micro_batch_rows, row_valid)
    kept = sum(keep_count(int(n), policy_loss.top_entropy_ratio) for n in per_micro_batch.tolist())
    device = _flat(data["response_mask"]).device
    num_valid = float(global_sum(valid.sum().to(device), group))
    num_kept = float(global_sum(torch.tensor(kept, device=device), group))
    for_mask_only = not tu.get_non_tensor_data(data=data, key="calculate_entropy", default=False)
    data[PLANNED_MICRO_BATCH_KEY] = torch.stack([micro_batch_rows, per_micro_batch[micro_batch_rows]], 1).to(device)
    tu.assign_non_tensor(
        data,
        calculate_entropy=True,
        **{PLANNED_TOKENS_KEY: (num_valid, num_kept), ENTROPY_FOR_MASK_ONLY_KEY: for_mask_only},
    )
    metrics = {"entropy20/kept_tokens": num_kept, "entropy20/kept_frac": num_kept / max(num_valid, 1.0)}
    if policy_loss.diagnostics:
        metrics.update({"token_mask/kept/tokens": num_kept, "token_mask/silenced/tokens": num_valid - num_kept})
    return metrics


def top_entropy_mask_in_loss(data, model_output, policy_loss, group=None) -> dict:
    """20-Entropy per micro-batch inside verl's loss call: keep the micro-batch's top
    ``keep_count(n, ratio)`` tokens by the training forward's entropy, renormalise by the
    mini-batch's planned kept-token count (:func:`plan_top_entropy_per_micro_batch`).

    Changes ``data`` (this micro-batch: masks, ``batch_num_tokens``) and ``model_output`` (drops
    the entropy when only the mask asked for it: the loss is then verl's, entropy-free). Returns
    the diagnostics' per-micro-batch shares (empty without ``diagnostics``).
    """
    entropy_full = model_output.get("entropy")
    if entropy_full is None:
        raise RuntimeError(
            "top_entropy_scope=micro_batch: the training forward returned no entropy; the worker hook sets "
            "calculate_entropy=True on the mini-batch (is the actor's engine one that honours it?)"
        )
    valid = _flat(data["response_mask"]).bool()
    planned = data[PLANNED_MICRO_BATCH_KEY].cpu()  # (rows, 2): micro-batch, its valid tokens
    if len(planned) and not (bool((planned == planned[0]).all()) and int(planned[0, 1]) == int(valid.sum())):
        raise RuntimeError(
            f"top_entropy_scope=micro_batch: verl split the mini-batch otherwise than planned (this micro-batch: "
            f"{int(valid.sum())} valid tokens from planned micro-batches {sorted(set(planned[:, 0].tolist()))}, "
            f"planned {sorted(set(planned[:, 1].tolist()))} tokens); the kept-token count would be wrong"
        )
    entropy = response_values(entropy_full.detach(), data).to(valid.device)
    assert_finite("entropy", entropy, valid, group)
    keep = top_k_entropy_mask(entropy, valid, policy_loss.top_entropy_ratio)
    keep_only(data, keep)
    num_valid, num_kept = tu.get_non_tensor_data(data=data, key=PLANNED_TOKENS_KEY, default=None)
    tu.assign_non_tensor(data, batch_num_tokens=num_kept)
    if tu.get_non_tensor_data(data=data, key=ENTROPY_FOR_MASK_ONLY_KEY, default=False):
        model_output.pop("entropy")
    if not policy_loss.diagnostics:
        return {}
    # The means of token_mask/{kept,silenced}/*: this micro-batch's share of the mini-batch-global
    # mean (summed over micro-batches, averaged over DP ranks by verl: hence * dp_size).
    log_prob = response_values(model_output["log_probs"].detach(), data).to(valid.device)
    advantages = _flat(data["advantages"]).to(valid.device)
    local = token_group_stats(log_prob, entropy, advantages, valid, valid & ~keep)
    dp_size = tu.get_non_tensor_data(data=data, key="dp_size", default=1)
    shares = {}
    for name, total in (("kept", num_kept), ("silenced", num_valid - num_kept)):
        for stat in ("prob_mean", "entropy_mean", "positive_adv_frac"):
            value = local.get(f"{name}/{stat}", 0.0) * local.get(f"{name}/tokens", 0.0) / max(total, 1.0) * dp_size
            shares[f"token_mask/{name}/{stat}"] = Metric(value=value, aggregation=AggregationType.SUM)
    return shares


def with_token_mask(loss_fn: Callable) -> Callable:
    """Wrap the actor's loss (``partial(ppo_loss, config=...)``) for configs with a token mask."""

    def loss_with_token_mask(**kwargs):
        config = kwargs.get("config", getattr(loss_fn, "keywords", {}).get("config"))
        kind = stapo_config.token_mask_kind(config.policy_loss) if config is not None else None
        if kind is None or "model_output" not in kwargs:
            return loss_fn(**kwargs)  # unmasked losses, and verl's logits-processor calls, pass through
        mask_metrics = tu.get_non_tensor_data(data=kwargs["data"], key=MASK_METRICS_KEY, default=None)
        if mask_metrics is None:
            raise RuntimeError(f"token_mask={kind}: this micro-batch carries no token mask from the worker hook")
        mask_metrics = dict(mask_metrics)
        if masks_in_training_forward(config.policy_loss):
            data, model_output, group = kwargs["data"], kwargs["model_output"], kwargs.get("dp_group")
            mask_metrics.update(top_entropy_mask_in_loss(data, model_output, config.policy_loss, group))
        if tu.get_non_tensor_data(data=kwargs["data"], key="batch_num_tokens", default=None) == 0:
            # Every token of the mini-batch was silenced: no gradient, and a finite loss instead
            # of verl's 0/0 under token-mean.
            return (_flat(kwargs["model_output"]["log_probs"]) * 0.0).sum(), mask_metrics
        with losses.token_mask_applied(kind):
            loss, metrics = loss_fn(**kwargs)
        metrics.update(mask_metrics)
        return loss, metrics

    return loss_with_token_mask


@contextmanager
def entropy_without_graph(engine):
    """verl's FSDP engine computes the training forward's entropy under no_grad while the block
    runs: it only feeds the 20-Entropy mask and leaves before verl's loss, so autograd need not keep
    a softmax over the vocabulary per token. Engines without ``compute_entropy_from_logits`` keep
    their entropy's graph (memory only: the loss never uses it)."""
    compute = getattr(engine, "compute_entropy_from_logits", None)
    if compute is None:
        yield
        return

    def entropy_no_grad(*args, **kwargs):
        with torch.no_grad():
            return compute(*args, **kwargs)

    engine.compute_entropy_from_logits = entropy_no_grad
    try:
        yield
    finally:
        engine.compute_entropy_from_logits = compute


@contextmanager
def fp32_logits(model: torch.nn.Module):
    """The model's output logits in fp32 while the block runs (under bf16 mixed precision its
    output layer computes them in bf16): log p_t, H_t and sum pi^2 then come from an fp32
    softmax. No-grad passes only: the cast output costs twice the memory of bf16 logits."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise RuntimeError(f"fp32_statistics: {type(model).__name__} has no output embeddings to cast")
    handle = head.register_forward_hook(lambda module, args, output: output.float())
    try:
        yield
    finally:
        handle.remove()


class TokenMaskTrainingWorker(engine_workers.TrainingWorker):
    """verl's ``TrainingWorker`` that applies the STAPO / 20-Entropy mask per mini-batch."""

    policy_loss = None  # the actor's policy-loss config, known once verl sets the loss function
    mask_updates = 0  # mini-batches masked so far (for dump_every)
    # True from the start of a step's update (train_mini_batch) until its first optimizer step:
    # the weights are still those of the trainer's old-log-prob pass.
    weights_of_old_pass = False

    def __init__(self, config):
        init_process_group_on_cpu()  # no-op unless VERL_PLATFORM=cpu
        super().__init__(config)

    def set_loss_fn(self, loss_fn):
        config = getattr(loss_fn, "keywords", {}).get("config")
        policy_loss = getattr(config, "policy_loss", None)
        masked = policy_loss is not None and stapo_config.token_mask_kind(policy_loss) is not None
        if masked and not isinstance(policy_loss, stapo_config.TokenMaskPolicyLossConfig):
            raise TypeError(
                f"loss_mode={policy_loss.loss_mode} needs actor_rollout_ref.actor.policy_loss._target_="
                f"stapo_verl.config.TokenMaskPolicyLossConfig (got {type(policy_loss).__name__})"
            )
        self.policy_loss = policy_loss if masked else None  # a later unmasked loss switches the mask off
        super().set_loss_fn(with_token_mask(loss_fn))

    def train_mini_batch(self, data):
        # verl's v1 trainer runs the old-log-prob pass, then this: the first mini-batch's
        # `current` statistics are the batch's old ones (its bypass mode leaves no entropy there)
        self.weights_of_old_pass = True
        try:
            return super().train_mini_batch(data)
        finally:
            self.weights_of_old_pass = False

    def train_batch(self, data):
        entropy_context = nullcontext()
        if self.policy_loss is not None and masks_in_training_forward(self.policy_loss):
            group = self.engine.get_data_parallel_group()
            metrics = plan_top_entropy_per_micro_batch(data, self.policy_loss, self._micro_batch_rows(data), group)
            if tu.get_non_tensor_data(data=data, key=ENTROPY_FOR_MASK_ONLY_KEY, default=False):
                entropy_context = entropy_without_graph(self.engine)
        elif self.policy_loss is not None:
            metrics = apply_token_mask(
                data,
                self.policy_loss,
                current_stats=lambda rows: self._current_policy_stats(data, rows),
                group=self.engine.get_data_parallel_group(),
                dump=self._silenced_token_dump(data),
                old_stats_are_current=self.weights_of_old_pass,
            )
        if self.policy_loss is not None:
            tu.assign_non_tensor(data, **{MASK_METRICS_KEY: metrics})
        self.weights_of_old_pass = False  # this call steps the optimizer
        with entropy_context:
            return super().train_batch(data)

    def infer_batch(self, data):
        # Both statistics sources pass here: the trainer's old-log-prob pass (compute_log_prob)
        # and `current`'s pass. With fp32_statistics, their entropy-computing calls take fp32 logits.
        fp32 = self.policy_loss is not None and self.policy_loss.fp32_statistics
        if fp32 and tu.get_non_tensor_data(data=data, key="calculate_entropy", default=False):
            with fp32_logits(self.engine.module):
                return super().infer_batch(data)
        return super().infer_batch(data)

    def _current_policy_stats(self, data, rows=None) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Log-prob, entropy and (for diagnostics) sum pi^2 of pi_theta on the response tokens of
        ``rows`` of this mini-batch (None: all), via verl's log-prob pass."""
        if rows is None:
            probe = data.copy()  # shallow: the inference flags must not leak into the training call
        else:
            probe = tu.index_select_tensor_dict(data, self._rows_for_pass(data, rows))
        # verl cannot compute sum pi^2 with its fused kernels
        want_sum_pi_squared = self.policy_loss.diagnostics and not self.engine_config.use_fused_kernels
        tu.assign_non_tensor(
            probe, calculate_entropy=True, calculate_sum_pi_squared=want_sum_pi_squared, compute_loss=False
        )
        output = self.infer_batch(probe)
        if output is None:
            raise RuntimeError("stats_source=current needs model outputs on every rank (no pipeline parallelism)")
        stats = [response_values(tu.get(output, key), probe) for key in ("log_probs", "entropy")]
        stats.append(response_values(tu.get(output, "sum_pi_squared"), probe) if want_sum_pi_squared else None)
        if rows is not None:  # the filler rows come last: keep the tokens of `rows`
            tokens = int(_response_offsets(data).diff()[rows].sum())
            stats = [value[:tokens] if value is not None else None for value in stats]
        return stats[0], stats[1], stats[2]

    def _rows_for_pass(self, data, rows: torch.Tensor) -> torch.Tensor:
        """``rows``, then other rows of the mini-batch up to the most rows any DP rank passes
        (at least one): every rank runs the sharded forward over as many sequences, as in a
        full pass."""
        device = _flat(data["response_mask"]).device  # the collectives' device, as for the mask's sums
        count = global_max(torch.tensor(max(len(rows), 1), device=device), self.engine.get_data_parallel_group())
        chosen = set(rows.tolist())
        filler = [r for r in range(len(data)) if r not in chosen][: int(count) - len(rows)]
        return torch.cat([rows.to(torch.long), torch.tensor(filler, dtype=torch.long)])

    def _silenced_token_dump(self, data) -> Optional[Callable[..., None]]:
        """The dump callback for this mini-batch, every ``dump_every`` updates (else None)."""
        self.mask_updates += 1
        config = self.policy_loss
        if config.dump_dir is None or (self.mask_updates - 1) % config.dump_every:
            return None
        tokenizer = getattr(self.model_config, "tokenizer", None)
        if tokenizer is None:
            raise RuntimeError("policy_loss.dump_dir is set but the actor's model config has no tokenizer")
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        path = os.path.join(config.dump_dir, f"silenced_tokens.rank{rank}.jsonl")
        update = self.mask_updates

        def dump(silenced, kept_candidates, log_prob, entropy, advantages):
            groups = {"silenced": silenced, "kept_candidate": kept_candidates}
            write_token_dump(path, data, groups, log_prob, entropy, advantages, tokenizer.decode, config, update)

        return dump

    def _micro_batch_rows(self, data) -> torch.Tensor:
        """Micro-batch index of each row, as verl's engine will split this mini-batch."""
        probe = data.copy()
        # The same defaults TrainingWorker.train_batch gives the engine (kept if already set).
        defaults = dict(
            use_dynamic_bsz=self.engine_config.use_dynamic_bsz,
            max_token_len_per_gpu=self.engine_config.max_token_len_per_gpu,
            micro_batch_size_per_gpu=self.engine_config.micro_batch_size_per_gpu,
            sp_size=getattr(self.engine, "ulysses_sequence_parallel_size", 1),
        )
        tu.assign_non_tensor(probe, **{k: v for k, v in defaults.items() if k not in probe.keys()})
        return micro_batch_rows(probe, self.engine.get_data_parallel_group())


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
            _flat(responses).cpu(), lengths.cpu(), mask.cpu(), log_prob.cpu(), entropy.cpu(), advantages.cpu(),
            decode, config.dump_context_tokens, config.dump_max_tokens,
        )  # fmt: skip
        append_jsonl(path, records, update=update, group=group)


def micro_batch_rows(data, group=None) -> torch.Tensor:
    """Micro-batch index of each row under verl's ``prepare_micro_batches`` split."""
    micro_batches, indices = prepare_micro_batches(data=data, dp_group=group, same_micro_num_in_dp=True)
    row_ids = torch.empty(len(data), dtype=torch.long)
    if indices is None:  # fixed micro-batch size: consecutive chunks
        start = 0
        for i, micro_batch in enumerate(micro_batches):
            row_ids[start : start + len(micro_batch)] = i
            start += len(micro_batch)
    else:
        for i, rows in enumerate(indices):
            row_ids[torch.as_tensor(rows, dtype=torch.long)] = i
    return row_ids


def install_worker_hook() -> None:
    """Make verl's ActorRolloutRefWorker use :class:`TokenMaskTrainingWorker` (idempotent)."""
    current = engine_workers.ActorRolloutRefWorker.actor_worker_cls
    if current is TokenMaskTrainingWorker:
        return
    if current is not engine_workers.TrainingWorker:
        raise RuntimeError(
            f"ActorRolloutRefWorker.actor_worker_cls is already replaced by {current.__module__}."
            f"{current.__qualname__}; stapo-verl cannot install its token-mask hook on top of it"
        )
    engine_workers.ActorRolloutRefWorker.actor_worker_cls = TokenMaskTrainingWorker


# Importing this module installs the hook, as importing stapo_verl.losses registers the losses.
install_worker_hook()
