"""The glue into verl's actor worker: the one place that touches verl's runtime.

verl 0.9 trains one mini-batch per ``TrainingWorker.train_batch`` call; the engine then counts
the mini-batch's loss tokens over all DP ranks (``batch_num_tokens``, from ``loss_mask``) and
runs the loss per micro-batch. S2T needs mini-batch-global decisions, so
:class:`TokenMaskTrainingWorker` (chosen through ``ActorRolloutRefWorker.actor_worker_cls``, the
attribute verl provides to swap the actor's inner worker, for runs whose policy loss selects a
token mask: :class:`ActorWorkerChoice`) builds the token mask once per mini-batch, before the
engine counts tokens:

1. statistics p_t, H_t: ``current`` = a no-grad forward of pi_theta over the mini-batch through
   verl's own log-prob path (``infer_batch``, the code of the old-log-prob pass); ``old`` = the
   old-log-prob pass's ``old_log_probs`` and ``entropy`` already in the update batch (which
   ``current`` reuses for a step's first mini-batch: the weights have not changed yet);
2. the mask (:mod:`stapo_verl.method.s2t`), with thresholds gathered over the DP group;
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

import os
from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import torch
from verl.utils import tensordict_utils as tu
from verl.workers import engine_workers

from stapo_verl import compat
from stapo_verl.cpu.platform import cpu_platform_selected, init_process_group_on_cpu
from stapo_verl.integration.micro_batches import (
    ENTROPY_FOR_MASK_ONLY_KEY,
    micro_batch_rows,
    plan_top_entropy_per_micro_batch,
    top_entropy_mask_in_loss,
)
from stapo_verl.integration.token_mask import (
    apply_token_mask,
    flat_tokens,
    response_offsets,
    response_values,
    write_token_dump,
)
from stapo_verl.method import config as stapo_config
from stapo_verl.method import losses
from stapo_verl.method.config import masks_in_training_forward
from stapo_verl.method.s2t import global_max

# Non-tensor key that carries a mini-batch's mask metrics to its micro-batches' loss calls.
MASK_METRICS_KEY = "stapo_token_mask_metrics"


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
            return (flat_tokens(kwargs["model_output"]["log_probs"]) * 0.0).sum(), mask_metrics
        with losses.token_mask_applied(kind):
            loss, metrics = loss_fn(**kwargs)
        metrics.update(mask_metrics)
        return loss, metrics

    return loss_with_token_mask


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
                f"stapo_verl.method.config.TokenMaskPolicyLossConfig (got {type(policy_loss).__name__})"
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
                entropy_context = compat.engine_entropy_without_graph(self.engine)
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

    def _current_policy_stats(self, data, rows=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
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
            tokens = int(response_offsets(data).diff()[rows].sum())
            stats = [value[:tokens] if value is not None else None for value in stats]
        return stats[0], stats[1], stats[2]

    def _rows_for_pass(self, data, rows: torch.Tensor) -> torch.Tensor:
        """``rows``, then other rows of the mini-batch up to the most rows any DP rank passes
        (at least one): every rank runs the sharded forward over as many sequences, as in a
        full pass."""
        device = flat_tokens(data["response_mask"]).device  # the collectives' device, as for the mask's sums
        count = global_max(torch.tensor(max(len(rows), 1), device=device), self.engine.get_data_parallel_group())
        chosen = set(rows.tolist())
        filler = [r for r in range(len(data)) if r not in chosen][: int(count) - len(rows)]
        return torch.cat([rows.to(torch.long), torch.tensor(filler, dtype=torch.long)])

    def _silenced_token_dump(self, data) -> Callable[..., None] | None:
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


class ActorWorkerChoice:
    """``ActorRolloutRefWorker.actor_worker_cls``, chosen per worker from its own config:
    :class:`TokenMaskTrainingWorker` when the run's policy loss selects a token mask, the CPU
    platform's worker on the CPU platform, else verl's own ``TrainingWorker``, unchanged. The
    attribute is the one global change the hook needs (verl reads it on each worker, through
    ``self``, when it builds the actor); a run that selects no token mask gets verl's class itself."""

    def __get__(self, worker, owner=None):
        if worker is None:  # read on the class: verl's default
            return engine_workers.TrainingWorker
        chosen = actor_worker_class(worker.config.actor.policy_loss)
        # in the run's output (Ray forwards a worker's stdout), where a reader can check it
        print(f"stapo-verl: actor worker {chosen.__module__}.{chosen.__qualname__}", flush=True)
        return chosen


def actor_worker_class(policy_loss) -> type:
    """The actor's inner worker class for a policy-loss config (DictConfig or dataclass)."""
    if stapo_config.token_mask_kind(policy_loss) is not None:
        return TokenMaskTrainingWorker
    if cpu_platform_selected():
        from stapo_verl.cpu.workers import CPUTrainingWorker

        return CPUTrainingWorker
    return engine_workers.TrainingWorker


def install_worker_hook() -> None:
    """Install :class:`ActorWorkerChoice` (idempotent; refuses over another plugin's worker)."""
    current = compat.actor_worker_cls_attribute()
    if isinstance(current, ActorWorkerChoice):
        return
    if current is not engine_workers.TrainingWorker:
        raise RuntimeError(
            f"ActorRolloutRefWorker.actor_worker_cls is already replaced by "
            f"{getattr(current, '__module__', '?')}.{getattr(current, '__qualname__', current)}; "
            "stapo-verl cannot install its token-mask hook on top of it"
        )
    compat.set_actor_worker_cls(ActorWorkerChoice())


# Importing this module installs the hook, as importing stapo_verl.method.losses registers the losses.
install_worker_hook()
