"""The masked losses through verl's own loss path: the actor's ``ppo_loss`` (wrapped by the
hook), ``agg_loss`` with global batch info, and the FSDP engine's micro-batch loop."""

from functools import partial
from unittest import mock

import pytest
import torch
from conftest import HAND_CASE, MiniBatch, actor_config, actor_loss_fn, run_minibatch
from verl.utils import tensordict_utils as tu

from stapo_verl.integration.token_mask import apply_token_mask, flat_tokens
from stapo_verl.integration.worker import MASK_METRICS_KEY, TokenMaskTrainingWorker
from stapo_verl.method.losses import token_mask_applied

AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]

pytestmark = pytest.mark.usefixtures("process_group")


def total_loss(output) -> float:
    return sum(output["loss"])


def test_hand_computed_loss_and_gradients():
    """docs/method.md's objective on the hand-computed batch of test_s2t: exact loss and gradients."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    prob, advantages, valid, silenced = HAND_CASE
    log_prob = torch.nn.Parameter(prob.log().double())
    keep = valid.bool() & ~silenced
    config = actor_config("stapo")
    with token_mask_applied("stapo"):
        loss, _ = get_policy_loss_fn("stapo")(
            old_log_prob=log_prob.detach(),  # ratio 1: every term is -A_t
            log_prob=log_prob,
            advantages=advantages.double(),
            response_mask=keep,
            loss_agg_mode="token-mean",
            config=config,
        )
    loss.backward()
    # kept: response 0 tokens 0, 4, 5 (A = +1) and response 1 tokens 0, 1 (A = -1): (-3 + 2) / 5
    assert loss.item() == pytest.approx(-0.2, abs=1e-12)
    expected_grad = torch.zeros(2, 6, dtype=torch.float64)
    expected_grad[0, [0, 4, 5]] = -0.2
    expected_grad[1, [0, 1]] = 0.2
    assert torch.allclose(log_prob.grad, expected_grad, atol=1e-12)
    assert torch.all(log_prob.grad[silenced] == 0)  # exactly zero, not small


def assert_equals_vanilla_over_kept_tokens(batch, data, output, grad):
    """The loss and gradient of a run equal verl's ``vanilla`` in one call on the padded
    mini-batch with ``data``'s response_mask (the kept tokens): no micro-batching, local count."""
    from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

    padded = data.select("response_mask", "old_log_probs", "advantages").to_padded_tensor()
    batch.theta.grad = None
    log_prob = torch.nn.utils.rnn.pad_sequence(
        [batch.response_values(batch.theta, i) for i in range(8)], batch_first=True
    )
    reference, _ = compute_policy_loss_vanilla(
        old_log_prob=padded["old_log_probs"],
        log_prob=log_prob,
        advantages=padded["advantages"],
        response_mask=padded["response_mask"].bool(),
        loss_agg_mode="token-mean",
        config=actor_config("vanilla"),
    )
    reference.backward()
    assert total_loss(output) == pytest.approx(reference.item(), rel=1e-9)
    assert torch.allclose(grad, batch.response_grad(), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("source", ["old", "current"])
def test_engine_loss_is_clipped_objective_over_kept_tokens(source):
    """Through verl's micro-batch loop, STAPO equals verl's vanilla loss on the whole padded
    mini-batch with the silenced tokens removed (the renormalisation counts kept tokens only)."""
    batch = MiniBatch(seed=3, n_seqs=8)
    config = actor_config("stapo", tau_prob=0.05, stats_source=source)
    data, output = run_minibatch(batch, config, micro_batch_size=2)
    grad = batch.response_grad().clone()
    keep = flat_tokens(data["response_mask"]).bool()
    silenced = int((~keep).sum())
    assert silenced > 0
    assert output["metrics"]["s2t/silenced"][0] == silenced
    assert torch.all(grad[~keep] == 0)
    assert_equals_vanilla_over_kept_tokens(batch, data, output, grad)


@pytest.mark.parametrize("agg_mode", AGG_MODES)
@pytest.mark.parametrize(
    "loss_mode, settings", [("stapo", {"tau_prob": 1e-30}), ("entropy20", {"top_entropy_ratio": 1.0})]
)
def test_masked_loss_equals_vanilla_when_nothing_is_masked(agg_mode, loss_mode, settings):
    batch = MiniBatch(seed=4, n_seqs=8)
    _, vanilla = run_minibatch(batch, actor_config("vanilla", loss_agg_mode=agg_mode), micro_batch_size=2, mask=False)
    vanilla_grad = batch.response_grad().clone()
    _, masked = run_minibatch(batch, actor_config(loss_mode, loss_agg_mode=agg_mode, **settings), micro_batch_size=2)
    assert total_loss(masked) == pytest.approx(total_loss(vanilla), rel=1e-12, abs=1e-15)
    assert torch.allclose(batch.response_grad(), vanilla_grad, rtol=1e-12, atol=1e-15)


SPLITS = [dict(micro_batch_size=8), dict(micro_batch_size=4), dict(micro_batch_size=2), dict(max_token_len=40)]


@pytest.mark.parametrize("agg_mode", AGG_MODES)
@pytest.mark.parametrize("source", ["old", "current"])
@pytest.mark.parametrize(
    "loss_mode, settings", [("stapo", {"tau_prob": 0.05}), ("entropy20", {"top_entropy_ratio": 0.2})]
)
def test_gradient_does_not_depend_on_micro_batch_split(agg_mode, source, loss_mode, settings):
    """1, 2 and 4 micro-batches (and dynamic batch size) give the same mini-batch gradient."""
    batch = MiniBatch(seed=5, n_seqs=8)
    # verl's seq-mean-token-sum-norm divides by the micro-batch's padded length unless the
    # scale factor is fixed; fix it so the comparison is about the mask alone.
    config = actor_config(loss_mode, loss_agg_mode=agg_mode, stats_source=source, **settings)
    if agg_mode == "seq-mean-token-sum-norm":
        object.__setattr__(config, "loss_scale_factor", 16)
    grads, losses, kept = [], [], []
    for split in SPLITS:
        data, output = run_minibatch(batch, config, **split)
        grads.append(batch.response_grad().clone())
        losses.append(total_loss(output))
        kept.append(flat_tokens(data["response_mask"]).bool())
    n_valid = int(sum(batch.response_lens))
    assert 0 < int(kept[0].sum()) < n_valid
    for grad, loss, keep in zip(grads[1:], losses[1:], kept[1:]):
        assert torch.equal(keep, kept[0])
        assert torch.allclose(grad, grads[0], rtol=1e-6, atol=1e-12)
        assert loss == pytest.approx(losses[0], rel=1e-6)


@pytest.mark.parametrize("split", [dict(micro_batch_size=2), dict(micro_batch_size=4), dict(max_token_len=40)])
def test_top_entropy_micro_batch_scope_masks_in_the_training_forward(split):
    """top_entropy_scope=micro_batch: no statistics pass; the mask made in each loss call from the
    entropy the training forward returns equals the rule over verl's micro-batches with the same
    entropies from a separate pass (as before, entropies distinct), and the loss is renormalised
    by the mini-batch's kept tokens."""
    from stapo_verl.integration.micro_batches import micro_batch_rows
    from stapo_verl.method.s2t import top_entropy_keep_mask

    def no_pass(rows):
        raise AssertionError("top_entropy_scope=micro_batch ran a statistics pass")

    batch = MiniBatch(seed=6, n_seqs=8)
    config = actor_config("entropy20", top_entropy_ratio=0.2, top_entropy_scope="micro_batch")
    data, output = run_minibatch(batch, config, stats=no_pass, **split)
    keep = flat_tokens(data["response_mask"]).bool()

    probe = batch.tensordict()  # the reference: verl's split of the same mini-batch, a pass's entropies
    tu.assign_non_tensor(
        probe,
        use_dynamic_bsz="max_token_len" in split,
        micro_batch_size_per_gpu=split.get("micro_batch_size"),
        max_token_len_per_gpu=split.get("max_token_len"),
    )
    token_micro_batch = micro_batch_rows(probe).repeat_interleave(batch.response_lens)
    entropy = flat_tokens(probe["entropy"])
    expected = torch.zeros_like(keep)
    for micro_batch in token_micro_batch.unique():
        rows = token_micro_batch == micro_batch
        expected[rows] = top_entropy_keep_mask(entropy[rows], torch.ones_like(entropy[rows]), 0.2).keep_mask
    assert len(token_micro_batch.unique()) > 1 and 0 < int(expected.sum()) < expected.numel()
    assert torch.equal(keep, expected)
    assert output["metrics"]["entropy20/kept_tokens"][0] == int(expected.sum())

    assert_equals_vanilla_over_kept_tokens(batch, data, output, batch.response_grad().clone())


def test_top_entropy_micro_batch_scope_refuses_a_split_other_than_planned():
    """The kept-token count is planned from verl's split; a loss call on another split stops."""
    from conftest import TinyEngine

    from stapo_verl.integration.micro_batches import micro_batch_rows, plan_top_entropy_per_micro_batch

    batch = MiniBatch(seed=6, n_seqs=8)
    config = actor_config("entropy20", top_entropy_scope="micro_batch")
    data = batch.tensordict()
    tu.assign_non_tensor(data, use_dynamic_bsz=False, micro_batch_size_per_gpu=2)
    metrics = plan_top_entropy_per_micro_batch(data, config.policy_loss, micro_batch_rows(data))
    tu.assign_non_tensor(data, micro_batch_size_per_gpu=4, **{MASK_METRICS_KEY: metrics})
    with pytest.raises(RuntimeError, match="split the mini-batch otherwise than planned"):
        TinyEngine(batch).forward_backward_batch(data, actor_loss_fn(config))


def test_top_entropy_micro_batch_diagnostics_are_mini_batch_means():
    """The per-micro-batch shares verl sums give the mini-batch's means of the kept and the
    silenced tokens, as the mini-batch-scope path computes them from the same mask."""
    from verl.utils.metric import Metric

    from stapo_verl.method.s2t import token_group_stats

    batch = MiniBatch(seed=7, n_seqs=8)
    data, output = run_minibatch(batch, actor_config("entropy20", top_entropy_scope="micro_batch"), micro_batch_size=2)
    keep = flat_tokens(data["response_mask"]).bool()
    log_prob, entropy, _ = batch.current_stats()
    expected = token_group_stats(log_prob, entropy, flat_tokens(data["advantages"]), torch.ones_like(keep), ~keep)
    metrics = output["metrics"]
    for name in ("kept", "silenced"):
        assert metrics[f"token_mask/{name}/tokens"][0] == expected[f"{name}/tokens"]
        for stat in ("prob_mean", "entropy_mean", "positive_adv_frac"):
            value = Metric.aggregate_dp([metrics[f"token_mask/{name}/{stat}"]])
            assert value == pytest.approx(expected[f"{name}/{stat}"], rel=1e-9, abs=1e-12)


def test_worker_masks_micro_batch_top_entropy_in_the_training_forward():
    """The worker runs no statistics pass, asks verl's forward for the entropy, which it computes
    without autograd while the update runs (only the mask reads it); an actor that asked for the
    entropy itself (entropy_coeff != 0) keeps it, with its gradient."""
    import verl.workers.engine_workers as engine_workers

    def entropy_fn(logits):
        return logits.sum(-1)

    for asked_by_actor in (False, True):
        worker = TokenMaskTrainingWorker.__new__(TokenMaskTrainingWorker)
        worker.engine = mock.Mock(get_data_parallel_group=lambda: None, compute_entropy_from_logits=entropy_fn)
        worker.engine_config = mock.Mock(use_dynamic_bsz=False, max_token_len_per_gpu=None, micro_batch_size_per_gpu=2)
        with mock.patch.object(engine_workers.TrainingWorker, "set_loss_fn"):
            worker.set_loss_fn(
                partial(engine_workers.ppo_loss, config=actor_config("entropy20", top_entropy_scope="micro_batch"))
            )
        data = MiniBatch(seed=3, n_seqs=8).tensordict()
        tu.assign_non_tensor(data, calculate_entropy=asked_by_actor)
        seen = {}

        def verls_train_batch(self, data, seen=seen):
            logits = torch.ones(3, 5, requires_grad=True)
            seen.update(data=data, entropy_has_grad=self.engine.compute_entropy_from_logits(logits).requires_grad)

        with (
            mock.patch.object(engine_workers.TrainingWorker, "train_batch", verls_train_batch),
            mock.patch.object(TokenMaskTrainingWorker, "_current_policy_stats", side_effect=AssertionError("a pass")),
        ):
            worker.train_batch(data)
        assert tu.get_non_tensor_data(seen["data"], "calculate_entropy", None) is True
        assert seen["entropy_has_grad"] is asked_by_actor
        assert worker.engine.compute_entropy_from_logits is entropy_fn  # restored
        assert tu.get_non_tensor_data(seen["data"], MASK_METRICS_KEY, None)["entropy20/kept_tokens"] > 0
        assert torch.equal(
            flat_tokens(seen["data"]["response_mask"]), flat_tokens(data["response_mask"])
        )  # masked in the loss


def test_every_token_silenced_gives_zero_gradient_and_finite_loss(caplog):
    batch = MiniBatch(seed=7, n_seqs=4)
    batch.advantages = [a.abs() + 0.1 for a in batch.advantages]
    config = actor_config("stapo", tau_prob=1.0, entropy_quantile=None, entropy_threshold=100.0, stats_source="old")
    data, output = run_minibatch(batch, config, micro_batch_size=2)
    assert not flat_tokens(data["response_mask"]).any()
    assert all(torch.isfinite(torch.tensor(output["loss"])))
    assert torch.all(batch.theta.grad == 0)
    assert "silenced every token" in caplog.text


def test_micro_batch_with_every_token_silenced():
    batch = MiniBatch(seed=8, n_seqs=4)
    batch.advantages = [torch.full_like(a, 1.0 if i == 0 else -1.0) for i, a in enumerate(batch.advantages)]
    config = actor_config("stapo", tau_prob=1.0, entropy_quantile=None, entropy_threshold=100.0, stats_source="old")
    data, output = run_minibatch(batch, config, micro_batch_size=1)
    grad = batch.response_grad()
    first = int(batch.response_lens[0])
    assert torch.all(grad[:first] == 0) and torch.all(grad[first:] != 0)
    assert all(torch.isfinite(torch.tensor(output["loss"])))


def test_empty_response_and_no_positive_advantage():
    batch = MiniBatch(seed=9, n_seqs=4)
    batch.advantages = [-a.abs() for a in batch.advantages]
    data = batch.tensordict()
    mask_values = data["response_mask"].values().clone()
    mask_values[: int(batch.response_lens[0])] = 0  # response 0 has no valid token
    data["response_mask"] = data["loss_mask"] = torch.nested.nested_tensor_from_jagged(
        mask_values, offsets=data["response_mask"].offsets()
    )
    config = actor_config("stapo", tau_prob=0.5, stats_source="old")
    _, output = run_minibatch(batch, config, micro_batch_size=1, data=data)
    assert output["metrics"]["s2t/silenced"][0] == 0 and "s2t/tau_entropy" not in output["metrics"]
    grad = batch.response_grad()
    assert torch.isfinite(grad).all() and torch.all(grad[: int(batch.response_lens[0])] == 0)


def test_bf16_log_probs():
    batch = MiniBatch(seed=10, n_seqs=8)
    config = actor_config("stapo", tau_prob=0.05, stats_source="old")
    _, output = run_minibatch(batch, config, micro_batch_size=2, log_prob_dtype=torch.bfloat16)
    assert all(torch.isfinite(torch.tensor(output["loss"])))
    assert torch.isfinite(batch.theta.grad).all() and batch.theta.grad.abs().sum() > 0


@pytest.mark.parametrize("key", ["entropy", "old_log_probs"])
def test_non_finite_statistics_refuse_to_train(key):
    batch = MiniBatch(seed=11, n_seqs=4)
    getattr(batch, key)[1][0] = float("nan")
    config = actor_config("stapo", stats_source="old")
    with pytest.raises(FloatingPointError, match="non-finite"):
        run_minibatch(batch, config, micro_batch_size=2)


def test_old_source_without_old_entropy_is_a_clear_error():
    batch = MiniBatch(seed=12, n_seqs=4)
    data = batch.tensordict()
    del data["entropy"]
    with pytest.raises(KeyError, match="stats_source=current"):
        apply_token_mask(data, actor_config("stapo", stats_source="old").policy_loss)


def test_padded_layout_gives_the_same_mask():
    """verl's legacy trainer sends padded response tensors; the mask must not depend on layout."""
    batch = MiniBatch(seed=13, n_seqs=6)
    config = actor_config("stapo", tau_prob=0.05, stats_source="old")
    nested = batch.tensordict()
    apply_token_mask(nested, config.policy_loss)
    padded = batch.tensordict()
    for key in ("response_mask", "old_log_probs", "advantages", "entropy"):
        padded[key] = padded[key].to_padded_tensor(0)
    padded["loss_mask"] = padded["response_mask"]
    apply_token_mask(padded, config.policy_loss)
    assert torch.equal(nested["response_mask"].to_padded_tensor(0), padded["response_mask"])
    assert torch.equal(padded["loss_mask"], padded["response_mask"])


def test_registered_loss_refuses_to_run_without_the_hook():
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    x = torch.zeros(1, 3)
    for name in ("stapo", "entropy20"):
        with pytest.raises(RuntimeError, match="without its token mask"):
            get_policy_loss_fn(name)(x, x, x, torch.ones(1, 3, dtype=torch.bool), "token-mean", actor_config(name))


def test_loss_wrapper_requires_the_mini_batch_mask():
    batch = MiniBatch(seed=14, n_seqs=2)
    with pytest.raises(RuntimeError, match="no token mask"):
        run_minibatch(batch, actor_config("stapo"), micro_batch_size=1, mask=False)


def test_worker_applies_mask_before_verls_train_batch():
    import verl.workers.engine_workers as engine_workers

    worker = TokenMaskTrainingWorker.__new__(TokenMaskTrainingWorker)
    worker.engine = mock.Mock(get_data_parallel_group=lambda: None)
    with mock.patch.object(engine_workers.TrainingWorker, "set_loss_fn"):
        worker.set_loss_fn(partial(engine_workers.ppo_loss, config=actor_config("stapo", tau_prob=0.05)))
    batch = MiniBatch(seed=3, n_seqs=8)
    full = batch.tensordict()
    seen = {}
    with mock.patch.object(engine_workers.TrainingWorker, "train_batch", lambda self, data: seen.setdefault("d", data)):
        with mock.patch.object(
            TokenMaskTrainingWorker, "_current_policy_stats", lambda self, data, rows: batch.current_stats(rows)
        ):
            worker.train_batch(full)
    data = seen["d"]
    metrics = tu.get_non_tensor_data(data, MASK_METRICS_KEY, None)
    assert metrics["s2t/silenced"] == int((~flat_tokens(data["response_mask"]).bool()).sum()) > 0
    assert torch.equal(flat_tokens(data["loss_mask"]), flat_tokens(data["response_mask"]))


def test_current_source_reuses_the_old_pass_on_a_steps_first_mini_batch():
    """stats_source=current: the first update of a step (verl's train_mini_batch loop) reads the
    old-log-prob pass's statistics, which are pi_theta's then; later updates, and a train_batch
    outside a step, run a fresh pass."""
    import verl.workers.engine_workers as engine_workers

    batch = MiniBatch(seed=3, n_seqs=8)

    def step_batch():  # an old pass whose entropies rank the tokens the other way round
        data = batch.tensordict()
        data["entropy"] = 3.0 - data["entropy"]
        return data

    expected = {}
    for source, config in (
        ("old", actor_config("stapo", tau_prob=0.05, stats_source="old").policy_loss),
        ("current", actor_config("stapo", tau_prob=0.05).policy_loss),
    ):
        data = step_batch()
        apply_token_mask(data, config, current_stats=batch.current_stats)
        expected[source] = flat_tokens(data["response_mask"])
    assert not torch.equal(expected["old"], expected["current"])  # the two sources differ here

    worker = TokenMaskTrainingWorker.__new__(TokenMaskTrainingWorker)
    worker.engine = mock.Mock(get_data_parallel_group=lambda: None)
    with mock.patch.object(engine_workers.TrainingWorker, "set_loss_fn"):
        worker.set_loss_fn(partial(engine_workers.ppo_loss, config=actor_config("stapo", tau_prob=0.05)))
    fresh_passes, trained = [], []

    def fresh_pass(self, data, rows):
        fresh_passes.append(len(data))
        return batch.current_stats(rows)

    def verls_loop(self, data):  # TrainingWorker.train_mini_batch: train_batch per mini-batch
        for _ in range(3):
            self.train_batch(step_batch())

    with (
        mock.patch.object(engine_workers.TrainingWorker, "train_mini_batch", verls_loop),
        mock.patch.object(engine_workers.TrainingWorker, "train_batch", lambda self, data: trained.append(data)),
        mock.patch.object(TokenMaskTrainingWorker, "_current_policy_stats", fresh_pass),
    ):
        worker.train_mini_batch(step_batch())
        worker.train_batch(step_batch())  # no step around it: the weights may have moved
    assert len(fresh_passes) == 3  # mini-batches 2 and 3, and the lone call
    masks = [flat_tokens(data["response_mask"]) for data in trained]
    assert torch.equal(masks[0], expected["old"])
    assert all(torch.equal(mask, expected["current"]) for mask in masks[1:])


def test_worker_rejects_untyped_policy_loss_config():
    import verl.workers.engine_workers as engine_workers
    from verl.workers.config import PolicyLossConfig

    config = actor_config("vanilla")
    object.__setattr__(config, "policy_loss", PolicyLossConfig(loss_mode="stapo"))
    worker = TokenMaskTrainingWorker.__new__(TokenMaskTrainingWorker)
    with pytest.raises(TypeError, match="TokenMaskPolicyLossConfig"):
        worker.set_loss_fn(partial(engine_workers.ppo_loss, config=config))


def test_current_stats_come_from_verls_log_prob_pass():
    """_current_policy_stats asks verl's infer_batch for entropy and slices response tokens; for a
    subset of rows it passes only those (then filler rows up to the DP ranks' largest subset,
    at least one) and returns their tokens."""
    worker = TokenMaskTrainingWorker.__new__(TokenMaskTrainingWorker)
    worker.engine = mock.Mock(get_data_parallel_group=lambda: None)
    batch = MiniBatch(seed=16, n_seqs=3)
    data = batch.tensordict()
    entropy_full = torch.rand(int(batch.seq_lens.sum()), dtype=torch.float64)
    calls = []

    def infer_batch(probe):  # the model: per-position values of the probe's rows
        rows = probe["row_index"].tolist()
        calls.append((tu.get_non_tensor_data(probe, "calculate_entropy", None), rows))
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), batch.seq_lens[rows].cumsum(0)])
        nested = partial(torch.nested.nested_tensor_from_jagged, offsets=offsets)
        full = [slice(int(batch.offsets[r]), int(batch.offsets[r + 1])) for r in rows]
        return tu.get_tensordict(
            {
                "log_probs": nested(torch.cat([batch.theta.detach()[f] for f in full])),
                "entropy": nested(torch.cat([entropy_full[f] for f in full])),
            }
        )

    worker.infer_batch = infer_batch
    worker.policy_loss = actor_config("stapo", diagnostics=False).policy_loss
    worker.engine_config = mock.Mock(use_fused_kernels=False)
    log_prob, entropy, sum_pi_squared = worker._current_policy_stats(data)
    assert calls == [(True, [0, 1, 2])] and "calculate_entropy" not in data.keys() and sum_pi_squared is None
    assert torch.equal(log_prob, batch.current_stats()[0])
    assert torch.equal(entropy, torch.cat([batch.response_values(entropy_full, i) for i in range(3)]))
    for rows, passed in (([2], [2]), ([2, 0], [2, 0]), ([], [0])):
        calls.clear()
        log_prob, entropy, _ = worker._current_policy_stats(data, torch.tensor(rows, dtype=torch.long))
        assert calls == [(True, passed)]
        assert torch.equal(log_prob, batch.current_stats(rows)[0])
        assert torch.equal(
            entropy, torch.cat([batch.response_values(entropy_full, i) for i in rows] or [torch.zeros(0)])
        )


@pytest.mark.parametrize("seed", range(12))
def test_current_pass_covers_only_the_responses_that_can_hold_a_candidate(seed):
    """S2T with stats_source=current: the fresh pass runs over the responses with a positive
    advantage only, and the mask, tau_h and every count equal a full pass's (no old statistics
    in the batch: the hook then passes every row)."""
    batch = MiniBatch(seed=seed, n_seqs=10, max_response=16)
    for sign in ("positive", "any"):
        config = actor_config("stapo", tau_prob=0.05, s2t_advantage_sign=sign).policy_loss
        subset, rows_asked = batch.tensordict(), []
        subset_metrics = apply_token_mask(subset, config, current_stats=batch.stats_of(subset, rows_asked))
        full = batch.tensordict()
        del full["entropy"]  # no old-pass statistics: a full pass
        full_rows = []
        full_metrics = apply_token_mask(full, config, current_stats=batch.stats_of(full, full_rows))
        eligible = [i for i, a in enumerate(batch.advantages) if (a[0] > 0 if sign == "positive" else a[0] != 0)]
        assert rows_asked == [eligible] and full_rows == [list(range(10))]
        assert sign == "any" or len(eligible) < 10  # some responses without a positive advantage
        assert full_metrics["s2t/silenced"] > 0
        assert torch.equal(flat_tokens(subset["response_mask"]), flat_tokens(full["response_mask"]))
        assert torch.equal(flat_tokens(subset["loss_mask"]), flat_tokens(full["loss_mask"]))
        for key in (
            "s2t/valid_tokens",
            "s2t/candidates",
            "s2t/silenced",
            "s2t/tau_entropy",
            "s2t/silenced_prob_mean",
            "s2t/silenced_entropy_mean",
            "token_mask/silenced/prob_mean",
        ):
            assert subset_metrics.get(key) == pytest.approx(full_metrics.get(key)), key


def test_fp32_statistics_give_both_sources_passes_fp32_logits():
    """Under bf16 the output layer computes bf16 logits; with fp32_statistics=true the
    worker's entropy-computing passes (the old-log-prob pass and `current`'s) see fp32 logits,
    so log p and H come from an fp32 softmax; the training forward is left alone."""
    import verl.workers.engine_workers as engine_workers
    from transformers import Qwen3ForCausalLM
    from verl.utils.torch_functional import entropy_from_logits

    from stapo_verl.cpu.tiny import byte_tokenizer, tiny_qwen3_config

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(tiny_qwen3_config(byte_tokenizer())).to(torch.bfloat16).eval()
    ids = torch.randint(0, 250, (2, 12))
    worker = TokenMaskTrainingWorker.__new__(TokenMaskTrainingWorker)
    worker.engine = mock.Mock(module=model, get_data_parallel_group=lambda: None)

    def verls_infer_batch(self, data):  # what the engine's forward hands to verl's statistics
        with torch.no_grad():
            return model(input_ids=ids).logits

    def logits_seen(calculate_entropy, **policy_loss):
        with mock.patch.object(engine_workers.TrainingWorker, "set_loss_fn"):
            worker.set_loss_fn(partial(engine_workers.ppo_loss, config=actor_config(**policy_loss)))
        data = MiniBatch(seed=1, n_seqs=2).tensordict()
        tu.assign_non_tensor(data, calculate_entropy=calculate_entropy)
        with mock.patch.object(engine_workers.TrainingWorker, "infer_batch", verls_infer_batch):
            return worker.infer_batch(data)

    fp32 = logits_seen(True, loss_mode="stapo", fp32_statistics=True)
    bf16 = logits_seen(True, loss_mode="stapo")  # the default: off
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    assert torch.equal(fp32, bf16.float())  # the same logits, kept in fp32 for the softmax
    assert logits_seen(False, loss_mode="stapo", fp32_statistics=True).dtype == torch.bfloat16  # no statistics
    assert logits_seen(True, loss_mode="vanilla").dtype == torch.bfloat16  # GRPO / JustRL untouched
    assert model.get_output_embeddings()._forward_hooks == {}  # the cast is removed afterwards
    # what it changes: verl's entropy from bf16 logits is off by up to ~1e-2 nats here
    exact = entropy_from_logits(bf16.double())
    assert (entropy_from_logits(fp32).double() - exact).abs().max() < 1e-5
    assert (entropy_from_logits(bf16).double() - exact).abs().max() > 1e-3


MICRO_BATCH_MASKS_ON_VERLS_ENGINE = """
import sys, tempfile, types
import torch
sys.path.insert(0, {benchmarks!r})
import actor_step
device = actor_step.setup_environment()
import stapo_verl.plugin, stapo_verl.integration.worker as hook
from verl.utils import tensordict_utils as tu
from stapo_verl.method.s2t import top_entropy_keep_mask

args = types.SimpleNamespace(tiny=True, smollm2=False, mini_batches=1, rows=8, prompt=16, response=48, max_token_len=128)
model_dir = tempfile.mkdtemp()
actor_step.make_model_dir(model_dir, True, device)
cfg = actor_step.actor_section(model_dir, args, tuple(actor_step.FP32_OVERRIDES))  # bf16 entropies tie
worker = actor_step.build_worker(cfg)
data, _ = actor_step.step_batch(args, 260, actor_step.old_log_prob_pass(worker, args, 260))
data["entropy"] = 10.0 - data["entropy"]  # an old pass ranking the other way: the mask must not read it
probe = data.copy()  # today's mask: a separate pass's entropies, the rule over verl's micro-batches
tu.assign_non_tensor(probe, calculate_entropy=True, compute_loss=False)
entropy = hook.response_values(tu.get(worker.infer_batch(probe), "entropy"), probe)
tokens = worker._micro_batch_rows(data).repeat_interleave(args.response)
before = torch.zeros_like(entropy, dtype=torch.bool)
for micro_batch in tokens.unique():
    rows = tokens == micro_batch
    before[rows] = top_entropy_keep_mask(entropy[rows], torch.ones_like(entropy[rows]), 0.2).keep_mask

made_in_loss, passes = [], []
def capture(micro_batch, model_output, policy_loss, group):
    metrics = mask_in_loss(micro_batch, model_output, policy_loss, group)
    made_in_loss.append((micro_batch["row_index"], micro_batch["response_mask"].values().bool()))
    return metrics
mask_in_loss, hook.top_entropy_mask_in_loss = hook.top_entropy_mask_in_loss, capture
current_stats = worker._current_policy_stats
worker._current_policy_stats = lambda *a: passes.append(1) or current_stats(*a)
data["row_index"] = torch.arange(len(data))
worker.set_loss_fn(actor_step.loss_fn(cfg, dict(loss_mode="entropy20", top_entropy_scope="micro_batch")))
output = worker.train_batch(data)
after = torch.zeros_like(before)
for rows, keep in made_in_loss:
    for i, row in enumerate(rows.tolist()):
        after[row * args.response : (row + 1) * args.response] = keep[i * args.response : (i + 1) * args.response]
assert not passes, "a statistics pass ran"
assert len(made_in_loss) == len(tokens.unique()) > 1
assert entropy.dtype == torch.float32
assert torch.equal(after, before), (after ^ before).sum()
kept = tu.get(output, "metrics")["entropy20/kept_tokens"]  # per DP rank, per micro-batch
assert torch.tensor(kept).unique().tolist() == [int(before.sum())]
print("kept", int(after.sum()), "of", after.numel(), "in", len(made_in_loss), "micro-batches")
"""


@pytest.mark.slow
def test_micro_batch_masks_on_verls_fsdp_engine_equal_a_separate_pass():
    """On verl's FSDP2 engine (tiny model, CPU): the masks the loss makes from the training
    forward's entropy equal the rule over verl's micro-batches with a separate pass's entropies,
    and no statistics pass runs."""
    import os
    import subprocess
    import sys
    import textwrap

    benchmarks = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    code = textwrap.dedent(MICRO_BATCH_MASKS_ON_VERLS_ENGINE).format(benchmarks=benchmarks)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kept" in result.stdout
