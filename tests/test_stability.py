"""The stability study's criteria and its rule for "STAPO prevents it" (issue 40), as its README
fixed them before the first run: examples/results/cpu_stability/README.md."""

from __future__ import annotations

import pytest

from stapo_verl.analysis import stability


def rows_with(entropy=None, reward=None, steps=30):
    rows = []
    for step in range(1, steps + 1):
        row = {"step": step, "actor/pg_loss": 0.0}
        row["actor/entropy"] = entropy(step) if entropy else 1.0
        row["critic/score/mean"] = reward(step) if reward else 0.0
        rows.append(row)
    return rows


def test_entropy_collapse_needs_three_consecutive_steps_below_a_tenth_of_a_nat():
    assert stability.entropy_collapse(rows_with(lambda s: 0.05 if s in (4, 5, 7, 8) else 1.0)) is None
    assert stability.entropy_collapse(rows_with(lambda s: 0.05 if s >= 12 else 1.0)) == 12
    assert stability.entropy_collapse(rows_with(lambda s: 0.1 if s >= 12 else 1.0)) is None  # "below"
    gap = [row for row in rows_with(lambda s: 0.05 if s >= 12 else 1.0) if row["step"] != 13]
    assert stability.entropy_collapse(gap) == 14  # 12, 14, 15 are not consecutive steps


def test_entropy_explosion_is_against_the_runs_own_step_one():
    assert stability.entropy_explosion(rows_with(lambda s: 0.8 if s == 1 else 1.3)) == 2  # > 1.5 x 0.8
    assert stability.entropy_explosion(rows_with(lambda s: 0.8 if s == 1 else 1.2)) is None  # = 1.5 x 0.8
    assert stability.entropy_explosion(rows_with(lambda s: 2.0 if s in (20, 22, 24) else 1.0)) is None


def test_accuracy_collapse_counts_from_the_best_earlier_validation_step_zero_included():
    assert stability.accuracy_collapse({0: 30.0, 15: 25.0, 30: 20.5, 45: 19.9}) == 45
    assert stability.accuracy_collapse({0: 30.0, 15: 40.0, 30: 30.0}) == 30  # exactly 10 points
    assert stability.accuracy_collapse({0: 30.0, 15: 40.0, 30: 31.0, 45: 35.0}) is None
    assert stability.accuracy_collapse({15: 40.0}) is None


def test_reward_collapse_is_judged_from_step_15_on_against_the_best_earlier_five_step_mean():
    falling = rows_with(reward=lambda s: 0.5 if s < 8 else -0.5)  # met by step 12, judged from 15
    assert stability.reward_collapse(falling) == 15
    assert stability.reward_collapse(rows_with(reward=lambda s: 0.5 if s < 20 else 0.25)) is None
    # last five: -0.2, -0.2, -0.2, -0.2, -0.2 (mean -0.2) against 0.1: 0.3 below at step 24
    assert stability.reward_collapse(rows_with(reward=lambda s: 0.1 if s < 20 else -0.2)) == 24
    assert stability.reward_collapse(rows_with(reward=lambda s: 0.0)) is None


def test_judge_names_each_criterion_and_the_first_step_met():
    judged = stability.judge(rows_with(lambda s: 0.05 if s >= 20 else 1.0), {0: 30.0, 15: 18.0})
    assert judged["steps"] == {
        "entropy_collapse": 20,
        "entropy_explosion": None,
        "accuracy_collapse": 15,
        "reward_collapse": None,
    }
    assert judged["unstable"] and judged["first"] == 15
    assert not stability.judge(rows_with(), {0: 30.0})["unstable"]


@pytest.mark.parametrize(
    "baseline, stapo, control, verdict",
    [
        ([1, 1, 0], [0, 0, 1], [1, 1, 1], "supported"),
        ([1, 1, 1], [0, 0, 0], [0, 1, 0], "silencing prevents it, not S2T's choice of tokens"),
        ([1, 1, 0], [1, 1, 0], [1, 1, 1], "contradicted"),
        ([1, 0, 0], [0, 0, 0], [1, 1, 1], "not decidable: justrl is unstable in fewer than 2 seeds"),
        ([1, 1], [0, 0], [1, 1], "not decidable: fewer than 3 seeds finished"),
        ([1, 1, 1], [0, 0, 0], [1], "silencing prevents it; S2T against the random control not decidable"),
    ],
)
def test_the_rule_for_stapo_prevents_it(baseline, stapo, control, verdict):
    arms = {"justrl": baseline, "stapo": stapo, "random_control": control}
    result = stability.prevents(lambda m: [bool(x) for x in arms[m]], "justrl")
    assert result["verdict"].startswith(verdict)
    assert f"justrl unstable in {sum(baseline)} of {len(baseline)} seeds" in result["numbers"]
