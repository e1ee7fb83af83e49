"""Policy losses ``stapo`` and ``entropy20``, registered in verl's policy-loss registry.

Both are verl's clipped objective (``compute_policy_loss_vanilla``: asymmetric clip, dual clip,
rollout-correction weights, every ``loss_agg_mode``) over the tokens that keep their gradient:

    L = sum_t keep_t * l_t(rho_t, A_t) / sum_t keep_t          (token-mean)

``keep`` cannot be decided per micro-batch: the S2T entropy quantile and the renormalising
token count span the whole mini-batch (all micro-batches and DP ranks). So the worker hook
(:mod:`stapo_verl.integration.worker`) decides it once per mini-batch and removes the silenced tokens from
``response_mask`` / ``loss_mask`` before verl's engine counts tokens; these functions then see
the kept tokens as ``response_mask``. They refuse to run outside that hook, so a missing hook can
never train plain GRPO under a STAPO label.
"""

from __future__ import annotations

import verl  # noqa: F401  isort: skip  (first: see stapo_verl/integration/worker.py)

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla, register_policy_loss

# The kind of mask the worker hook applied to the mini-batch verl's loss is running on (None:
# none). A context variable rather than an argument: verl's policy-loss signature is fixed.
_token_mask_applied: ContextVar[str | None] = ContextVar("stapo_verl_token_mask_applied", default=None)


@contextmanager
def token_mask_applied(kind: str):
    """Declare that ``response_mask`` already carries a token mask of this kind."""
    token = _token_mask_applied.set(kind)
    try:
        yield
    finally:
        _token_mask_applied.reset(token)


def _clipped_objective_on_kept_tokens(loss_mode: str):
    def policy_loss(
        old_log_prob: torch.Tensor,
        log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        loss_agg_mode: str = "token-mean",
        config=None,
        rollout_is_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """verl's clipped objective over kept tokens; tensors are (batch, response_len).

        ``response_mask`` must already exclude the masked tokens (see module docstring).
        """
        if _token_mask_applied.get() is None:
            raise RuntimeError(
                f"policy loss '{loss_mode}' was called without its token mask. "
                "The stapo-verl worker hook must run it: check that `import verl` loads the 'stapo' plugin "
                "(`python -m stapo_verl check`) and that the actor uses verl's ActorRolloutRefWorker."
            )
        return compute_policy_loss_vanilla(
            old_log_prob=old_log_prob,
            log_prob=log_prob,
            advantages=advantages,
            response_mask=response_mask,
            loss_agg_mode=loss_agg_mode,
            config=config,
            rollout_is_weights=rollout_is_weights,
        )

    policy_loss.__name__ = f"compute_policy_loss_{loss_mode}"
    return register_policy_loss(loss_mode)(policy_loss)


compute_policy_loss_stapo = _clipped_objective_on_kept_tokens("stapo")
compute_policy_loss_entropy20 = _clipped_objective_on_kept_tokens("entropy20")
