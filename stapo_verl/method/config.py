"""Typed config for the STAPO / 20-Entropy policy losses, validated when verl builds it.

Select it in Hydra with
``actor_rollout_ref.actor.policy_loss._target_=stapo_verl.method.config.TokenMaskPolicyLossConfig``
(the recipe's algorithm files do this). verl converts the actor section with
``omega_conf_to_dataclass`` in the driver and in every worker, so a bad value fails at startup.
"""

from __future__ import annotations

import verl  # noqa: F401  isort: skip  (first: see stapo_verl/integration/worker.py)

import math
from dataclasses import dataclass

from verl.workers.config import PolicyLossConfig

from stapo_verl.method.s2t import CANDIDATE_SELECTIONS

FIELD_PREFIX = "actor_rollout_ref.actor.policy_loss"
STATS_SOURCES = ("current", "old")
TOP_ENTROPY_SCOPES = ("mini_batch", "micro_batch")
# token_mask kinds: s2t (STAPO), top_entropy (20-Entropy), random (silences as many valid tokens
# as S2T would, chosen uniformly: the control for "any 0.01% mask would do").
TOKEN_MASKS = ("s2t", "top_entropy", "random")
# The mask each masked loss mode implies, and the masks it accepts (random: the S2T control).
MASKED_LOSS_MODES = {"stapo": ("s2t", "random"), "entropy20": ("top_entropy",)}
S2T_ADVANTAGE_SIGNS = ("positive", "any")


def token_mask_kind(policy_loss) -> str | None:
    """The mask the worker hook applies for this policy-loss config (None: no hook)."""
    explicit = policy_loss.get("token_mask")
    if explicit is not None:
        return explicit
    allowed = MASKED_LOSS_MODES.get(policy_loss.get("loss_mode"))
    return allowed[0] if allowed else None


def masks_in_training_forward(policy_loss) -> bool:
    """20-Entropy with ``top_entropy_scope=micro_batch``: the mask needs only the entropies of the
    micro-batch being trained, which the training forward computes, so it is made in the loss."""
    return token_mask_kind(policy_loss) == "top_entropy" and policy_loss.top_entropy_scope == "micro_batch"


def _check_range(name: str, value, low: float, high: float, low_open: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{FIELD_PREFIX}.{name} must be a number in {interval}, got {value!r}")


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{FIELD_PREFIX}.{name} must be one of {list(choices)}, got {value!r}")


@dataclass
class TokenMaskPolicyLossConfig(PolicyLossConfig):
    """verl's ``PolicyLossConfig`` plus the fields of ``loss_mode`` ``stapo`` and ``entropy20``.

    Args:
        stats_source: where p_t and H_t come from. ``current``: pi_theta at the start of each
            mini-batch update, from a no-grad forward pass over the mini-batch (the paper's
            definition; costs one extra forward per mini-batch). ``old``: the old-log-prob pass
            verl already runs each step (exact for the first mini-batch, free).
        tau_prob: S2T probability cut-off tau_p (absolute), in (0, 1].
        entropy_quantile: S2T entropy cut-off as the q-quantile of the candidates' entropies
            over the mini-batch, in (0, 1]. Set to null to use ``entropy_threshold``.
        entropy_threshold: S2T absolute entropy cut-off in nats (>= 0), instead of the quantile.
        top_entropy_ratio: 20-Entropy fraction of valid tokens that keep a gradient, in (0, 1].
        top_entropy_scope: ``mini_batch`` (global top-k over the mini-batch and all DP ranks; ties
            at the threshold all kept) or ``micro_batch`` (exactly ceil(ratio * n) of each
            micro-batch's n tokens, ties to the earlier token, as the 80/20 authors' verl fork):
            masked inside the loss with the training forward's own entropy, no extra pass; needs
            stats_source=current, fp32_statistics=false, dump_dir=null.
        token_mask: the mask, when it is not the one ``loss_mode`` implies: ``s2t``,
            ``top_entropy`` or ``random`` (the control); with any other verl loss (``gspo``,
            ``cispo``, ``clip_cov``, ...) it puts that mask under that loss.
        s2t_advantage_sign: S2T candidates need ``positive`` advantages (paper) or ``any``
            non-zero one (ablation: negative-advantage tokens silenced too).
        candidate_selection: which S2T candidates are silenced: ``low_entropy`` (S2T: H_t < tau_h),
            ``high_entropy`` (as many, the highest-entropy ones), ``random`` (as many, uniformly)
            or ``all`` (every candidate: probability-only masking). The paper's ablations.
        random_mask_seed: seed of the ``random`` control and of ``candidate_selection=random``
            (mixed with the mini-batch's content).
        fp32_statistics: compute log p_t, H_t (and sum pi^2) from fp32 logits in both sources
            passes (verl's default bf16 mixed precision computes the logits in bf16). Off by
            default: it costs the memory of fp32 logits in those no-grad passes, and measured on
            SmolLM2 it did not change the bf16 mask (the flips come from the bf16 forward itself;
            benchmarks/results/s2t_study.json).
        diagnostics: log per-group token statistics (probability, entropy, gradient-norm bound,
            entropy-change covariance) for silenced vs kept tokens.
        dump_dir: if set, every ``dump_every`` mini-batch updates each rank appends up to
            ``dump_max_tokens`` silenced tokens, decoded with ``dump_context_tokens`` tokens of
            context on each side, to ``<dump_dir>/silenced_tokens.rank<r>.jsonl``.
    """

    stats_source: str = "current"
    tau_prob: float = 0.002
    entropy_quantile: float | None = 0.75
    entropy_threshold: float | None = None
    top_entropy_ratio: float = 0.2
    top_entropy_scope: str = "mini_batch"
    token_mask: str | None = None
    s2t_advantage_sign: str = "positive"
    candidate_selection: str = "low_entropy"
    random_mask_seed: int = 0
    fp32_statistics: bool = False
    diagnostics: bool = True
    dump_dir: str | None = None
    dump_every: int = 50
    dump_max_tokens: int = 200
    dump_context_tokens: int = 8

    def __post_init__(self):
        from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

        # verl itself looks loss_mode up only at the first update, after Ray and the models started
        _check_choice("loss_mode", self.loss_mode, tuple(sorted(set(POLICY_LOSS_REGISTRY) | set(MASKED_LOSS_MODES))))
        _check_choice("stats_source", self.stats_source, STATS_SOURCES)
        _check_range("tau_prob", self.tau_prob, 0.0, 1.0, low_open=True)
        if (self.entropy_quantile is None) == (self.entropy_threshold is None):
            raise ValueError(
                f"{FIELD_PREFIX}: set exactly one of entropy_quantile (q in (0, 1]) and entropy_threshold "
                f"(nats, >= 0); got entropy_quantile={self.entropy_quantile!r}, "
                f"entropy_threshold={self.entropy_threshold!r}"
            )
        if self.entropy_quantile is not None:
            _check_range("entropy_quantile", self.entropy_quantile, 0.0, 1.0, low_open=True)
        else:
            _check_range("entropy_threshold", self.entropy_threshold, 0.0, math.inf, low_open=False)
        _check_range("top_entropy_ratio", self.top_entropy_ratio, 0.0, 1.0, low_open=True)
        _check_choice("top_entropy_scope", self.top_entropy_scope, TOP_ENTROPY_SCOPES)
        _check_choice("s2t_advantage_sign", self.s2t_advantage_sign, S2T_ADVANTAGE_SIGNS)
        _check_choice("candidate_selection", self.candidate_selection, CANDIDATE_SELECTIONS)
        for name, minimum in (("dump_every", 1), ("dump_max_tokens", 1), ("dump_context_tokens", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{FIELD_PREFIX}.{name} must be an integer >= {minimum}, got {value!r}")
        if self.token_mask is not None:
            _check_choice("token_mask", self.token_mask, TOKEN_MASKS)
            allowed = MASKED_LOSS_MODES.get(self.loss_mode)
            if allowed is not None and self.token_mask not in allowed:
                raise ValueError(
                    f"{FIELD_PREFIX}.token_mask={self.token_mask} contradicts loss_mode={self.loss_mode} "
                    f"(accepted: {list(allowed)}); use loss_mode=vanilla to put this mask under plain GRPO"
                )
        if token_mask_kind(self) == "top_entropy" and self.top_entropy_scope == "micro_batch":
            accepted = {"stats_source": "current", "fp32_statistics": False, "dump_dir": None}
            for name, value in accepted.items():
                if getattr(self, name) != value:
                    raise ValueError(
                        f"{FIELD_PREFIX}.top_entropy_scope=micro_batch takes H_t from the training forward itself "
                        f"(the current policy, the engine's precision; the mask exists only inside the loss), so "
                        f"{name} must be {value!r}, got {getattr(self, name)!r}"
                    )
        if self.candidate_selection != "low_entropy" and token_mask_kind(self) != "s2t":
            raise ValueError(
                f"{FIELD_PREFIX}.candidate_selection={self.candidate_selection} selects among S2T candidates: it "
                f"needs the s2t token mask (loss_mode=stapo, or token_mask=s2t), got mask {token_mask_kind(self)}"
            )
        if token_mask_kind(self) is not None:
            # A plugin that failed to load inside `import verl` is only logged at DEBUG level:
            # surface it here, where every process builds this config.
            from stapo_verl.install_state import require_installed

            require_installed()
