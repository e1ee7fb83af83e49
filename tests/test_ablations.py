"""Diagnostics (silenced vs kept tokens) and the ablations: random control, S2T on negative
advantages, S2T under other verl losses; each composes with algorithm=stapo through Hydra."""

import pytest
import torch
from conftest import MiniBatch, actor_config, run_minibatch
from omegaconf import OmegaConf

from stapo_verl.integration.token_mask import apply_token_mask, flat_tokens
from stapo_verl.method.s2t import logit_grad_norm, random_silence_like, s2t_spurious_mask, token_group_stats

pytestmark = pytest.mark.usefixtures("process_group")


def test_gradient_norm_identity_against_autograd():
    """||d log softmax(z)_y / dz|| = sqrt(1 - 2 p_y + sum pi^2), with verl's sum pi^2."""
    from verl.utils.torch_functional import calculate_sum_pi_squared_from_logits

    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(64, 50, generator=g, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(0, 50, (64,), generator=g)
    log_probs = torch.log_softmax(logits, -1)
    grad_norms = torch.stack(
        [torch.autograd.grad(log_probs[i, targets[i]], logits, retain_graph=True)[0][i].norm() for i in range(64)]
    )
    probs = log_probs.exp().gather(1, targets[:, None]).squeeze(1)
    sum_pi_squared = calculate_sum_pi_squared_from_logits(logits.detach())
    assert torch.allclose(logit_grad_norm(probs.detach(), sum_pi_squared), grad_norms, rtol=1e-10)


def test_group_stats_against_a_direct_computation():
    g = torch.Generator().manual_seed(1)
    log_prob = -5 * torch.rand(40, generator=g, dtype=torch.float64)
    entropy = torch.rand(40, generator=g, dtype=torch.float64)
    advantages = torch.randn(40, generator=g, dtype=torch.float64)
    sum_pi_squared = torch.rand(40, generator=g, dtype=torch.float64)
    valid = torch.rand(40, generator=g) < 0.8
    silenced = valid & (torch.rand(40, generator=g) < 0.3)
    stats = token_group_stats(log_prob, entropy, advantages, valid, silenced, sum_pi_squared)
    centered = (log_prob - log_prob[valid].mean()) * (advantages - advantages[valid].mean())
    for name, members in (("silenced", silenced), ("kept", valid & ~silenced)):
        assert stats[f"{name}/tokens"] == members.sum()
        assert stats[f"{name}/prob_mean"] == pytest.approx(log_prob[members].exp().mean().item())
        assert stats[f"{name}/entropy_mean"] == pytest.approx(entropy[members].mean().item())
        assert stats[f"{name}/positive_adv_frac"] == pytest.approx((advantages[members] > 0).double().mean().item())
        bound = torch.sqrt(1 - 2 * log_prob[members].exp() + sum_pi_squared[members]).mean()
        assert stats[f"{name}/grad_norm_bound_mean"] == pytest.approx(bound.item())
        assert stats[f"{name}/entropy_cov"] == pytest.approx((centered[members].sum() / valid.sum()).item())
    # the two shares add up to the token-level covariance of log-prob and advantage
    total = stats["silenced/entropy_cov"] + stats["kept/entropy_cov"]
    assert total == pytest.approx(centered[valid].mean().item())


def test_random_control_silences_exactly_as_many_tokens_as_s2t():
    batch = MiniBatch(seed=3, n_seqs=8)
    counts = {}
    masks = {}
    for kind in ("s2t", "random"):
        config = actor_config("stapo", tau_prob=0.05, stats_source="old", token_mask=None if kind == "s2t" else kind)
        data, output = run_minibatch(batch, config, micro_batch_size=2)
        masks[kind] = ~flat_tokens(data["response_mask"]).bool()
        counts[kind] = output["metrics"]["s2t/silenced"][0]
        assert torch.all(batch.response_grad()[masks[kind]] == 0)
    assert counts["random"] == counts["s2t"] == int(masks["s2t"].sum()) == int(masks["random"].sum()) > 0
    assert not torch.equal(masks["s2t"], masks["random"])
    # deterministic for a seed, different for another
    again, _ = run_minibatch(
        batch, actor_config("stapo", tau_prob=0.05, stats_source="old", token_mask="random"), micro_batch_size=2
    )
    assert torch.equal(~flat_tokens(again["response_mask"]).bool(), masks["random"])
    other, _ = run_minibatch(
        batch,
        actor_config("stapo", tau_prob=0.05, stats_source="old", token_mask="random", random_mask_seed=1),
        micro_batch_size=2,
    )
    assert not torch.equal(~flat_tokens(other["response_mask"]).bool(), masks["random"])


def test_random_silence_like_is_uniform_over_valid_tokens():
    valid = torch.ones(10_000, dtype=torch.bool)
    valid[:5000] = False
    reference = torch.zeros(10_000, dtype=torch.bool)
    reference[:2000] = True
    hits = torch.zeros(10_000)
    for seed in range(20):
        mask = random_silence_like(reference, valid, torch.Generator().manual_seed(seed))
        assert int(mask.sum()) == 2000 and not (mask & ~valid).any()
        hits += mask
    assert abs(hits[5000:7500].sum() - hits[7500:].sum()) < 0.1 * hits.sum()  # no half favoured


def test_s2t_on_negative_advantages_too():
    g = torch.Generator().manual_seed(2)
    log_prob = torch.log(torch.rand(200, generator=g) * 0.004)  # all below ~tau_prob
    entropy = torch.rand(200, generator=g)
    advantages = torch.where(torch.arange(200) < 100, -1.0, 1.0)
    valid = torch.ones(200, dtype=torch.bool)
    paper = s2t_spurious_mask(log_prob, entropy, advantages, valid)
    ablation = s2t_spurious_mask(log_prob, entropy, advantages.abs(), valid)
    assert not paper.spurious_mask[:100].any() and paper.spurious_mask[100:].any()
    assert ablation.spurious_mask[:100].any()
    batch = MiniBatch(seed=3, n_seqs=8)
    config = actor_config("stapo", tau_prob=0.05, stats_source="old", s2t_advantage_sign="any")
    data = batch.tensordict()
    apply_token_mask(data, config.policy_loss)
    silenced = ~flat_tokens(data["response_mask"]).bool()
    assert (flat_tokens(data["advantages"])[silenced] < 0).any()


@pytest.mark.parametrize("loss_mode", ["gspo", "cispo", "clip_cov", "vanilla"])
def test_s2t_as_a_mask_under_other_verl_losses(loss_mode):
    batch = MiniBatch(seed=3, n_seqs=8)
    config = actor_config(loss_mode, tau_prob=0.05, stats_source="old", token_mask="s2t")
    data, output = run_minibatch(batch, config, micro_batch_size=2)
    silenced = ~flat_tokens(data["response_mask"]).bool()
    grad = batch.response_grad()
    assert silenced.any() and torch.all(grad[silenced] == 0) and grad[~silenced].abs().sum() > 0
    assert output["metrics"]["s2t/silenced"][0] == int(silenced.sum())
    assert all(torch.isfinite(torch.tensor(output["loss"])))
    # the worker hook switches itself on for this loss too
    from functools import partial
    from unittest import mock

    import verl.workers.engine_workers as engine_workers

    from stapo_verl.integration.worker import TokenMaskTrainingWorker

    worker = TokenMaskTrainingWorker.__new__(TokenMaskTrainingWorker)
    with mock.patch.object(engine_workers.TrainingWorker, "set_loss_fn"):
        worker.set_loss_fn(partial(engine_workers.ppo_loss, config=config))
    assert worker.policy_loss is config.policy_loss


def test_diagnostics_reach_the_logged_metrics():
    batch = MiniBatch(seed=3, n_seqs=8)
    data = batch.tensordict()
    data["sum_pi_squared"] = torch.nested.nested_tensor_from_jagged(
        torch.full((int(sum(batch.response_lens)),), 0.5, dtype=torch.float64), offsets=data["response_mask"].offsets()
    )  # as verl's trainer keeps it with actor.calculate_sum_pi_squared=true
    _, output = run_minibatch(
        batch, actor_config("stapo", tau_prob=0.05, stats_source="old"), micro_batch_size=2, data=data
    )
    metrics = output["metrics"]
    for group in ("silenced", "kept"):
        for stat in ("tokens", "prob_mean", "entropy_mean", "positive_adv_frac", "grad_norm_bound_mean", "entropy_cov"):
            assert f"token_mask/{group}/{stat}" in metrics
    assert metrics["token_mask/silenced/tokens"][0] == metrics["s2t/silenced"][0]
    # low-probability silenced tokens get a larger gradient-norm bound than the kept ones
    assert metrics["token_mask/silenced/grad_norm_bound_mean"][0] > metrics["token_mask/kept/grad_norm_bound_mean"][0]
    _, quiet = run_minibatch(
        batch, actor_config("stapo", tau_prob=0.05, stats_source="old", diagnostics=False), micro_batch_size=2
    )
    assert not any(key.startswith("token_mask/") for key in quiet["metrics"])


def test_contradicting_mask_and_loss_mode_is_rejected():
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="token_mask=top_entropy contradicts loss_mode=stapo"):
        actor_config("stapo", token_mask="top_entropy")
    with pytest.raises(InstantiationException, match=r"token_mask must be one of \['s2t', 'top_entropy', 'random'\]"):
        actor_config("vanilla", token_mask="spurious")


@pytest.mark.parametrize(
    "ablation, expected",
    [
        ("random_mask", {"loss_mode": "stapo", "token_mask": "random"}),
        ("s2t_any_advantage", {"loss_mode": "stapo", "s2t_advantage_sign": "any"}),
        ("s2t_absolute_entropy", {"entropy_quantile": None, "entropy_threshold": 1.0}),
        ("s2t_gspo", {"loss_mode": "gspo", "token_mask": "s2t"}),
        ("s2t_cispo", {"loss_mode": "cispo", "token_mask": "s2t"}),
        ("s2t_clip_cov", {"loss_mode": "clip_cov", "token_mask": "s2t"}),
    ],
)
@pytest.mark.slow
def test_ablations_compose_with_algorithm_stapo(ablation, expected):
    from test_recipe import compose
    from verl.utils.config import omega_conf_to_dataclass

    cfg = compose("algorithm=stapo", f"ablation={ablation}")
    policy_loss = cfg.actor_rollout_ref.actor.policy_loss
    for key, value in expected.items():
        assert OmegaConf.select(policy_loss, key) == value, key
    assert ablation.split("_", 1)[1] in cfg.trainer.experiment_name or ablation in cfg.trainer.experiment_name
    omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)  # verl's validation accepts it
    assert compose("algorithm=stapo").trainer.experiment_name == "stapo_qwen3_1.7b"  # no ablation by default


def test_silenced_token_dump(tmp_path):
    """Every dump_every-th mini-batch, the silenced tokens are written decoded, with context."""
    import json
    import time
    from functools import partial
    from unittest import mock

    import verl.workers.engine_workers as engine_workers

    from stapo_verl.cpu.tiny import byte_tokenizer
    from stapo_verl.integration.worker import TokenMaskTrainingWorker

    tokenizer = byte_tokenizer()
    config = actor_config(
        "stapo",
        tau_prob=0.05,
        stats_source="old",
        dump_dir=str(tmp_path),
        dump_every=2,
        dump_max_tokens=3,
        dump_context_tokens=2,
    )
    worker = TokenMaskTrainingWorker.__new__(TokenMaskTrainingWorker)
    worker.engine = mock.Mock(get_data_parallel_group=lambda: None)
    worker.model_config = mock.Mock(tokenizer=tokenizer)
    with mock.patch.object(engine_workers.TrainingWorker, "set_loss_fn"):
        worker.set_loss_fn(partial(engine_workers.ppo_loss, config=config))
    batch = MiniBatch(seed=3, n_seqs=8, vocab=120)
    with mock.patch.object(engine_workers.TrainingWorker, "train_batch", lambda self, data: data):
        masked = [worker.train_batch(batch.tensordict()) for _ in range(3)]
    every = [json.loads(line) for line in (tmp_path / "silenced_tokens.rank0.jsonl").read_text().splitlines()]
    lines = [line for line in every if line["group"] == "silenced"]
    kept = [line for line in every if line["group"] == "kept_candidate"]
    assert [line["update"] for line in lines] == [1] * 3 + [3] * 3  # updates 1 and 3, 3 tokens each
    assert [line["update"] for line in kept] == [1] * 3 + [3] * 3
    assert all(abs(line["time"] - time.time()) < 600 for line in every)  # when written: a resumed run trims by it
    assert all(line["advantage"] > 0 and line["prob"] < 0.05 for line in kept)  # candidates
    # kept candidates are at or above tau_h, silenced ones below it
    assert min(line["entropy"] for line in kept) > max(line["entropy"] for line in lines[:3])
    silenced = torch.nonzero(~flat_tokens(masked[0]["response_mask"]).bool()).squeeze(1)[:3].tolist()
    response_ids = flat_tokens(masked[0]["responses"])
    starts = torch.cat([torch.zeros(1, dtype=torch.long), batch.response_lens.cumsum(0)])
    for line, index in zip(lines, silenced):
        row = int(torch.searchsorted(starts, index, right=True)) - 1
        assert (line["row"], line["position"]) == (row, index - int(starts[row]))
        assert line["token"] == tokenizer.decode([int(response_ids[index])])
        assert line["before"] == tokenizer.decode(response_ids[max(int(starts[row]), index - 2) : index].tolist())
        assert line["advantage"] > 0 and line["prob"] < 0.05
