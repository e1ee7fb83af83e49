"""avg@k, bootstrap intervals and the paired test on synthetic scores with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from stapo_verl.analysis.stats import AVERAGE, avg_at_k, bootstrap_ci, paired_test


def test_avg_at_k_is_the_mean_over_problems_and_seeds_and_the_average_is_unweighted():
    scores = {"aime24": np.array([[1.0, 0.0, 0.5], [0.0, 0.0, 0.5]]), "math500": np.array([[0.25], [0.75]])}
    table = avg_at_k(scores)
    assert table["aime24"] == pytest.approx(100 * 2.0 / 6)
    assert table["math500"] == pytest.approx(50.0)
    assert table[AVERAGE] == pytest.approx((100 * 2.0 / 6 + 50.0) / 2)  # not weighted by problem count


def test_bad_scores_name_the_benchmark():
    with pytest.raises(ValueError, match=r"scores\['aime24'\] must have shape \(seeds, problems\)"):
        avg_at_k({"aime24": np.array([0.5, 1.0])})
    with pytest.raises(ValueError, match=r"scores\['amc23'\] must be accuracies in \[0, 1\]"):
        avg_at_k({"amc23": np.array([[1.5]])})


def bernoulli_scores(rng, seeds, problems, p=0.4):
    return {"b": rng.binomial(1, p, size=(seeds, problems)).astype(float)}


def test_intervals_contain_the_estimate_and_shrink_as_problems_and_seeds_grow():
    rng = np.random.default_rng(1)
    widths = []
    for seeds, problems in [(1, 25), (1, 100), (1, 400), (4, 400)]:
        scores = bernoulli_scores(rng, seeds, problems)
        low, high = bootstrap_ci(scores, seed=0)["b"]
        assert low <= avg_at_k(scores)["b"] <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2] > widths[3]
    assert widths[0] / widths[2] == pytest.approx(4.0, rel=0.3)  # ~ 1 / sqrt(n)


def test_bootstrap_is_deterministic_given_the_seed():
    scores = bernoulli_scores(np.random.default_rng(2), 3, 50)
    assert bootstrap_ci(scores, seed=7) == bootstrap_ci(scores, seed=7)
    assert bootstrap_ci(scores, seed=7) != bootstrap_ci(scores, seed=8)


def test_bootstrap_over_seeds_widens_the_interval_when_runs_disagree():
    # same per-problem mean, but in one case each seed's run is uniformly better or worse
    agree = {"b": np.full((4, 200), 0.5)}
    disagree = {"b": np.repeat(np.array([[0.2], [0.8], [0.3], [0.7]]), 200, axis=1)}
    low, high = bootstrap_ci(agree)["b"]
    assert low == pytest.approx(50.0) and high == pytest.approx(50.0)
    low, high = bootstrap_ci(disagree)["b"]
    assert high - low > 20  # seed-to-seed variance counts


def test_paired_test_detects_a_planted_difference():
    rng = np.random.default_rng(3)
    base = rng.uniform(0.1, 0.7, size=(3, 120))
    better = np.clip(base + rng.normal(0.08, 0.1, size=base.shape), 0, 1)  # +~8 points
    result = paired_test({"b": better}, {"b": base}, seed=0)["b"]
    assert result["p_value"] < 0.001
    assert 4.0 < result["ci_low"] < result["diff"] < result["ci_high"] < 12.0


def test_paired_test_does_not_flag_a_null_difference():
    rng = np.random.default_rng(4)
    rejections = 0
    for _ in range(60):
        difficulty = rng.uniform(0.0, 1.0, size=80)  # both methods see the same problems
        a = rng.binomial(4, difficulty, size=(2, 80)) / 4
        b = rng.binomial(4, difficulty, size=(2, 80)) / 4
        rejections += paired_test({"b": a}, {"b": b}, permutations=2000, replicates=200, seed=0)["b"]["p_value"] < 0.05
    assert rejections <= 8  # about 5% of 60 expected (3); 8+ has probability < 2%
    identical = paired_test({"b": a}, {"b": a}, seed=0)
    assert identical["b"]["p_value"] == 1.0 and identical["b"]["diff"] == 0.0


def test_paired_test_pools_benchmarks_like_the_average_column():
    a = {"x": np.array([[1.0, 1.0]]), "y": np.array([[0.5, 0.5, 0.5, 0.5]])}
    b = {"x": np.array([[0.0, 1.0]]), "y": np.array([[0.5, 0.5, 0.5, 0.0]])}
    result = paired_test(a, b, seed=0)
    assert result["x"]["diff"] == pytest.approx(50.0)
    assert result["y"]["diff"] == pytest.approx(12.5)
    assert result[AVERAGE]["diff"] == pytest.approx((50.0 + 12.5) / 2)
    with pytest.raises(ValueError, match="pairing needs the same"):
        paired_test({"x": np.ones((1, 2))}, {"x": np.ones((1, 3))})
