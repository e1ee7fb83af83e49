"""20-Entropy at ``top_entropy_scope=micro_batch``: the mask made inside verl's loss call.

Only the entropies of the micro-batch being trained are needed, and verl's training forward
computes them (``calculate_entropy``). Before verl's engine runs the mini-batch, the worker plans
verl's micro-batch split and the kept-token count (:func:`plan_top_entropy_per_micro_batch`); the
mask is then made in each micro-batch's loss call (:func:`top_entropy_mask_in_loss`), with no
extra pass.
"""

from __future__ import annotations

import verl  # noqa: F401  isort: skip  (verl first: see stapo_verl/integration/worker.py)
import torch
from verl.utils import tensordict_utils as tu
from verl.utils.metric import AggregationType, Metric
from verl.workers.engine.utils import prepare_micro_batches

from stapo_verl.integration.token_mask import flat_tokens, keep_only, response_values, row_of_token
from stapo_verl.method.s2t import assert_finite, global_sum, keep_count, token_group_stats, top_k_entropy_mask

# Per row, the micro-batch it was planned into and that micro-batch's valid tokens (a row tensor,
# so verl's split carries it to the loss call); and the mini-batch's (valid, kept) token counts.
PLANNED_MICRO_BATCH_KEY = "stapo_planned_micro_batch"
PLANNED_TOKENS_KEY = "stapo_planned_tokens"
# True when the worker, not the actor config, turned on the training forward's entropy.
ENTROPY_FOR_MASK_ONLY_KEY = "stapo_entropy_for_mask_only"


def plan_top_entropy_per_micro_batch(data, policy_loss, micro_batch_rows: torch.Tensor, group=None) -> dict[str, float]:
    """20-Entropy with ``top_entropy_scope=micro_batch``, before verl's engine runs the mini-batch.

    The mask itself is made in each micro-batch's loss call from the entropy of the training
    forward (:func:`top_entropy_mask_in_loss`): no extra forward pass. What the loss needs to know
    beforehand is planned here: each micro-batch keeps exactly ``keep_count(n, ratio)`` of its n
    valid tokens (:func:`~stapo_verl.method.s2t.top_k_entropy_mask`), so the mini-batch's kept-token count,
    which renormalises the loss over every micro-batch and DP rank, is known now.

    Args:
        data: one mini-batch of this rank; gets the planned micro-batch of each row and the
            kept-token count, and ``calculate_entropy=True`` for the training forward.
        micro_batch_rows: (rows,) the micro-batch index of each row under verl's split.
        group: the data-parallel process group (None on one rank).

    Returns:
        Mini-batch-global metrics (identical on every rank).
    """
    valid = flat_tokens(data["response_mask"]).bool().cpu()
    row_valid = torch.zeros(len(data), dtype=torch.long).index_add_(0, row_of_token(data), valid.long())
    micro_batch_rows = micro_batch_rows.cpu()
    per_micro_batch = torch.zeros(int(micro_batch_rows.max()) + 1 if len(micro_batch_rows) else 0, dtype=torch.long)
    per_micro_batch.index_add_(0, micro_batch_rows, row_valid)
    kept = sum(keep_count(int(n), policy_loss.top_entropy_ratio) for n in per_micro_batch.tolist())
    device = flat_tokens(data["response_mask"]).device
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
    valid = flat_tokens(data["response_mask"]).bool()
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
    advantages = flat_tokens(data["advantages"]).to(valid.device)
    local = token_group_stats(log_prob, entropy, advantages, valid, valid & ~keep)
    dp_size = tu.get_non_tensor_data(data=data, key="dp_size", default=1)
    shares = {}
    for name, total in (("kept", num_kept), ("silenced", num_valid - num_kept)):
        for stat in ("prob_mean", "entropy_mean", "positive_adv_frac"):
            value = local.get(f"{name}/{stat}", 0.0) * local.get(f"{name}/tokens", 0.0) / max(total, 1.0) * dp_size
            shares[f"token_mask/{name}/{stat}"] = Metric(value=value, aggregation=AggregationType.SUM)
    return shares


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
