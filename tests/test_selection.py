"""The paper's masking ablations among S2T candidates (candidate_selection) and their grids."""

import pytest
import torch
from conftest import MiniBatch, actor_config, run_minibatch

from stapo_verl.integration.token_mask import flat_tokens
from stapo_verl.method.s2t import s2t_spurious_mask, select_candidates

pytestmark = pytest.mark.usefixtures("process_group")

# Ten tokens, all valid; candidates (A > 0, p < 0.002) are 0, 2, 3, 5, 6, 8 with entropies
# 0.1, 0.9, 0.5, 0.3, 0.7, 0.2. q = 0.5: tau_h = median = (0.3 + 0.5) / 2 = 0.4, so S2T silences
# the three below it: 0 (0.1), 5 (0.3), 8 (0.2).
PROB = torch.tensor([0.001, 0.5, 0.001, 0.001, 0.001, 0.001, 0.001, 0.3, 0.001, 0.001])
ENTROPY = torch.tensor([0.1, 2.0, 0.9, 0.5, 0.05, 0.3, 0.7, 0.01, 0.2, 0.02])
ADVANTAGE = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0, -1.0])
CANDIDATES = [0, 2, 3, 5, 6, 8]


def hand_case():
    valid = torch.ones(10, dtype=torch.bool)
    return s2t_spurious_mask(PROB.log(), ENTROPY, ADVANTAGE, valid, entropy_quantile=0.5)


def test_hand_computed_low_high_and_random_selection():
    s2t = hand_case()
    assert torch.nonzero(s2t.candidate_mask).flatten().tolist() == CANDIDATES
    assert torch.nonzero(s2t.spurious_mask).flatten().tolist() == [0, 5, 8]  # low_entropy: S2T
    high = select_candidates(s2t.candidate_mask, ENTROPY, 3, "high_entropy")
    assert torch.nonzero(high).flatten().tolist() == [2, 3, 6]  # entropies 0.9, 0.5, 0.7
    for seed in range(20):
        random = select_candidates(s2t.candidate_mask, ENTROPY, 3, "random", torch.Generator().manual_seed(seed))
        assert int(random.sum()) == 3 and not (random & ~s2t.candidate_mask).any()


def test_high_entropy_ties_break_by_position():
    candidates = torch.ones(5, dtype=torch.bool)
    entropy = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.5])
    assert torch.nonzero(select_candidates(candidates, entropy, 2, "high_entropy")).flatten().tolist() == [1, 2]


def test_random_selection_is_uniform_over_candidates_only():
    candidates = torch.zeros(1000, dtype=torch.bool)
    candidates[::4] = True  # 250 candidates
    entropy = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    hits = torch.zeros(1000)
    for seed in range(200):
        hits += select_candidates(candidates, entropy, 50, "random", torch.Generator().manual_seed(seed))
    assert hits[~candidates].sum() == 0
    # each candidate: Binomial(200, 0.2), mean 40, sd ~5.7; and no entropy preference
    assert hits[candidates].mean() == pytest.approx(40.0)
    assert 15 < hits[candidates].min() and hits[candidates].max() < 65
    low_half = entropy[candidates] < entropy[candidates].median()
    assert abs(hits[candidates][low_half].sum() - hits[candidates][~low_half].sum()) < 0.1 * hits.sum()


def test_selection_counts_are_checked():
    with pytest.raises(ValueError, match="cannot select 7 of 6"):
        select_candidates(hand_case().candidate_mask, ENTROPY, 7, "high_entropy")
    with pytest.raises(ValueError, match="high_entropy' or 'random"):
        select_candidates(hand_case().candidate_mask, ENTROPY, 1, "all")


@pytest.mark.parametrize("q", [0.25, 0.5, 0.75, 0.9])
def test_every_selection_inside_verls_update(q):
    """Through the worker hook and verl's loss path: low/high/random silence the same number of
    candidates (S2T's count for this q), all silences every candidate; never a non-candidate."""
    batch = MiniBatch(seed=3, n_seqs=8)
    silenced, metrics = {}, {}
    for selection in ("low_entropy", "high_entropy", "random", "all"):
        config = actor_config(
            "stapo", tau_prob=0.05, entropy_quantile=q, stats_source="old", candidate_selection=selection
        )
        data, output = run_minibatch(batch, config, micro_batch_size=2)
        silenced[selection] = ~flat_tokens(data["response_mask"]).bool()
        metrics[selection] = {key: values[0] for key, values in output["metrics"].items() if key.startswith("s2t/")}
        assert torch.all(batch.response_grad()[silenced[selection]] == 0)
    data = batch.tensordict()
    s2t = s2t_spurious_mask(
        flat_tokens(data["old_log_probs"]),
        flat_tokens(data["entropy"]),
        flat_tokens(data["advantages"]),
        flat_tokens(data["response_mask"]),
        tau_prob=0.05,
        entropy_quantile=q,
    )
    assert torch.equal(silenced["low_entropy"], s2t.spurious_mask)
    assert torch.equal(silenced["all"], s2t.candidate_mask)
    count = int(s2t.spurious_mask.sum())
    assert 0 < count < int(s2t.candidate_mask.sum())
    for selection in ("high_entropy", "random"):
        assert int(silenced[selection].sum()) == count == metrics[selection]["s2t/silenced"]
        assert not (silenced[selection] & ~s2t.candidate_mask).any()
    entropy = flat_tokens(data["entropy"])
    assert entropy[silenced["high_entropy"]].min() >= entropy[s2t.candidate_mask & ~silenced["high_entropy"]].max()
    assert metrics["all"]["s2t/silenced"] == metrics["all"]["s2t/candidates"]
    assert "s2t/rule_silenced" not in metrics["low_entropy"]
    assert all(metrics[s]["s2t/rule_silenced"] == count for s in ("high_entropy", "random", "all"))


def test_random_selection_is_reproducible_and_changes_with_the_seed():
    masks = []
    for random_mask_seed in (0, 1):
        batch = MiniBatch(seed=3, n_seqs=8)
        config = actor_config(
            "stapo", tau_prob=0.05, stats_source="old", candidate_selection="random", random_mask_seed=random_mask_seed
        )
        data, _ = run_minibatch(batch, config, micro_batch_size=2)
        masks.append(~flat_tokens(data["response_mask"]).bool())
    again, _ = run_minibatch(
        MiniBatch(seed=3, n_seqs=8),
        actor_config("stapo", tau_prob=0.05, stats_source="old", candidate_selection="random"),
        micro_batch_size=2,
    )
    assert torch.equal(~flat_tokens(again["response_mask"]).bool(), masks[0])  # reproducible
    assert not torch.equal(masks[0], masks[1])  # another seed, another draw


@pytest.mark.parametrize(
    "bad", [{"candidate_selection": "lowest"}, {"candidate_selection": "random", "token_mask": "random"}]
)
def test_bad_candidate_selection_names_the_field(bad):
    with pytest.raises(Exception, match="candidate_selection"):
        actor_config("stapo", **bad)
    with pytest.raises(Exception, match="candidate_selection"):
        actor_config("entropy20", candidate_selection="high_entropy")


def test_sweep_grids_and_run_names():
    from stapo_verl.experiments.sweep import grid_runs, parse_label

    selection = grid_runs("selection", [0, 1])
    assert len(selection) == (3 * 4 + 1) * 2  # low/high/random x 4 q, all once; 2 seeds
    names = [run.name("qwen3_1.7b") for run in selection]
    assert len(set(names)) == len(names)  # no two runs share an experiment (checkpoint) name
    assert "stapo_qwen3_1.7b_high_entropy_q0.25_tp0.002_seed1" in names
    assert "stapo_qwen3_1.7b_all_qna_tp0.002_seed0" in names
    assert len({run.label() for run in selection}) == 13  # seeds share a cell's label
    for run in selection:
        parsed = parse_label(run.label())
        assert (parsed["selection"], parsed["entropy_quantile"], parsed["tau_prob"]) == (
            run.selection,
            run.entropy_quantile,
            run.tau_prob,
        )
    taus = grid_runs("tau_prob", [0])
    assert [run.tau_prob for run in taus] == [2e-4, 2e-3, 2e-2, 2e-1]
    assert {run.selection for run in taus} == {"low_entropy"}
    assert [run.label() for run in taus][0] == "low_entropy_q0.75_tp0.0002"
    assert parse_label("stapo") is None and parse_label("justrl") is None
    with pytest.raises(ValueError, match="sweep grid"):
        grid_runs("q", [0])


@pytest.mark.parametrize("grid", ["selection", "tau_prob"])
@pytest.mark.slow
def test_sweep_runs_compose_through_hydra_and_verls_validation(grid):
    from test_recipe import compose
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    from stapo_verl.experiments.sweep import grid_runs

    for run in grid_runs(grid, [0]):
        cfg = compose("algorithm=stapo", *run.overrides("qwen3_1.7b"))
        actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
        assert actor.policy_loss.candidate_selection == run.selection
        assert actor.policy_loss.tau_prob == run.tau_prob
        assert cfg.trainer.experiment_name == run.name("qwen3_1.7b")
        validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
