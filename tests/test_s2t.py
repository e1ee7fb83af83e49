"""The mask math in stapo_verl.method.s2t (pure tensors, no verl runtime)."""

import math

import pytest
import torch
from conftest import HAND_ADVANTAGE, HAND_ENTROPY, HAND_PROB, HAND_SILENCED, HAND_VALID
from hypothesis import given, settings
from hypothesis import strategies as st

from stapo_verl.method.s2t import (
    assert_finite,
    keep_count,
    quantile,
    s2t_spurious_mask,
    top_entropy_keep_mask,
    top_k_entropy_mask,
)


def test_hand_computed_s2t_mask():
    result = s2t_spurious_mask(HAND_PROB.log(), HAND_ENTROPY, HAND_ADVANTAGE, HAND_VALID)
    assert result.tau_entropy == pytest.approx(2.25)
    assert torch.equal(result.candidate_mask, torch.tensor([[0, 1, 1, 1, 0, 1], [0] * 6], dtype=torch.bool))
    assert torch.equal(result.spurious_mask, HAND_SILENCED)


def test_hand_computed_absolute_entropy_threshold():
    result = s2t_spurious_mask(
        HAND_PROB.log(), HAND_ENTROPY, HAND_ADVANTAGE, HAND_VALID, entropy_quantile=None, entropy_threshold=1.5
    )
    assert result.tau_entropy == 1.5
    assert torch.equal(result.spurious_mask, torch.tensor([[0, 1, 1, 0, 0, 0], [0] * 6], dtype=torch.bool))


def test_quantile_matches_torch_quantile():
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 7, 100):
        values = torch.randn(n, generator=g)
        for q in (0.0, 0.1, 0.5, 0.75, 1.0):
            assert quantile(values, q) == pytest.approx(float(torch.quantile(values.double(), q)), abs=1e-12)


def test_quantile_above_torch_limit():
    # torch.quantile refuses more than 2**24 elements; a 20-Entropy mini-batch can exceed that.
    values = torch.arange(2**24 + 1, dtype=torch.float32)
    assert quantile(values, 0.5) == 2**23


def test_keep_count_rounding():
    assert keep_count(15, 0.2) == 3  # 0.2 * 15 = 3.0000000000000004 in floating point
    assert keep_count(10, 0.25) == 3
    assert keep_count(1, 0.2) == 1
    assert keep_count(0, 0.2) == 0
    assert keep_count(7, 1.0) == 7


def test_hand_computed_top_entropy():
    # 8 valid tokens, ratio 0.2 -> keep ceil(1.6) = 2: the entropies 3.0 and 2.0
    result = top_entropy_keep_mask(HAND_ENTROPY, HAND_VALID, ratio=0.2)
    assert result.entropy_threshold == 2.0
    assert torch.equal(result.keep_mask, torch.tensor([[0, 0, 0, 1, 0, 1], [0] * 6], dtype=torch.bool))


def test_top_k_entropy_keeps_exactly_k_ties_to_the_earlier_token():
    # response 0: 6 tokens, keep 2 (H = 3 and 2); response 1: 2 valid tokens tied at H = 0.1, keep 1:
    # the earlier one (the mini-batch rule, a threshold, keeps both)
    kept = [top_k_entropy_mask(HAND_ENTROPY[i], HAND_VALID[i], ratio=0.2) for i in range(2)]
    expected = torch.tensor([[0, 0, 0, 1, 0, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(torch.stack(kept), expected)
    assert not top_k_entropy_mask(HAND_ENTROPY, torch.zeros_like(HAND_VALID)).any()


def test_no_positive_advantage_silences_nothing():
    result = s2t_spurious_mask(HAND_PROB.log(), HAND_ENTROPY, -HAND_ADVANTAGE.abs(), HAND_VALID)
    assert result.tau_entropy is None
    assert not result.spurious_mask.any()


def test_empty_responses_silence_nothing():
    valid = torch.zeros_like(HAND_VALID)
    assert not s2t_spurious_mask(HAND_PROB.log(), HAND_ENTROPY, HAND_ADVANTAGE, valid).spurious_mask.any()
    top = top_entropy_keep_mask(HAND_ENTROPY, valid, ratio=0.2)
    assert not top.keep_mask.any() and top.entropy_threshold is None


def test_bf16_statistics_give_the_same_mask():
    result = s2t_spurious_mask(
        HAND_PROB.log().bfloat16(), HAND_ENTROPY.bfloat16(), HAND_ADVANTAGE.bfloat16(), HAND_VALID
    )
    assert torch.equal(result.spurious_mask, HAND_SILENCED)


def test_non_finite_statistic_raises():
    entropy = HAND_ENTROPY.clone()
    entropy[0, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="1 valid response token"):
        assert_finite("entropy", entropy, HAND_VALID)
    entropy[1, 4] = float("inf")  # padding: ignored
    with pytest.raises(FloatingPointError, match="1 valid response token"):
        assert_finite("entropy", entropy, HAND_VALID)


def test_exactly_one_entropy_cutoff():
    with pytest.raises(ValueError, match="exactly one"):
        s2t_spurious_mask(HAND_PROB.log(), HAND_ENTROPY, HAND_ADVANTAGE, HAND_VALID, entropy_threshold=1.0)


@st.composite
def token_batches(draw):
    batch = draw(st.integers(1, 6))
    length = draw(st.integers(1, 20))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    # discrete entropies make ties likely; tau_prob around the drawn probabilities
    distinct = draw(st.booleans())
    entropy = (
        torch.rand(batch, length, generator=g) * 4
        if distinct
        else torch.randint(0, 4, (batch, length), generator=g).float()
    )
    log_prob = -10 * torch.rand(batch, length, generator=g)
    advantages = torch.randn(batch, 1, generator=g).expand(batch, length).clone()
    lengths = torch.randint(0, length + 1, (batch,), generator=g)
    valid = (torch.arange(length)[None, :] < lengths[:, None]).long()
    tau_prob = draw(st.sampled_from([1e-4, 0.002, 0.05, 0.5, 1.0]))
    q = draw(st.sampled_from([0.05, 0.5, 0.75, 0.8, 1.0]))
    ratio = draw(st.sampled_from([0.01, 0.2, 0.5, 1.0]))
    return log_prob, entropy, advantages, valid, tau_prob, q, ratio, distinct


@settings(max_examples=300, deadline=None)
@given(token_batches())
def test_s2t_properties(args):
    log_prob, entropy, advantages, valid, tau_prob, q, _, distinct = args
    result = s2t_spurious_mask(log_prob, entropy, advantages, valid, tau_prob=tau_prob, entropy_quantile=q)
    spurious, candidate = result.spurious_mask, result.candidate_mask
    assert not (spurious & ~valid.bool()).any()  # subset of the response mask
    assert not (spurious & (advantages <= 0)).any()  # negative/zero advantages are never silenced
    expected_candidate = valid.bool() & (advantages > 0) & (log_prob.exp() < tau_prob)
    assert torch.equal(candidate, expected_candidate)
    n = int(candidate.sum())
    if n == 0:
        assert result.tau_entropy is None and not spurious.any()
        return
    tau = result.tau_entropy
    assert tau == pytest.approx(float(torch.quantile(entropy[candidate].double(), q)), abs=1e-6)
    # every silenced token is a candidate below tau, and every such candidate is silenced
    assert torch.equal(spurious, candidate & (entropy < tau))
    if distinct:  # the silenced share is q up to quantile rounding
        assert int(spurious.sum()) == math.ceil(round(q * (n - 1), 9))
        assert abs(int(spurious.sum()) / n - q) <= 1 / n + 1e-12


@settings(max_examples=300, deadline=None)
@given(token_batches())
def test_top_entropy_properties(args):
    _, entropy, _, valid, _, _, ratio, distinct = args
    result = top_entropy_keep_mask(entropy, valid, ratio=ratio)
    keep = result.keep_mask
    n = int(valid.sum())
    assert not (keep & ~valid.bool()).any()
    k = keep_count(n, ratio)
    if k == 0:
        assert not keep.any() and result.entropy_threshold is None
    elif distinct:
        assert int(keep.sum()) == k
    else:  # ties at the threshold may add tokens, never remove them
        assert int(keep.sum()) >= k
        assert int((valid.bool() & (entropy > result.entropy_threshold)).sum()) < k
    if keep.any() and (valid.bool() & ~keep).any():
        assert entropy[keep].min() >= entropy[valid.bool() & ~keep].max()
    exact = top_k_entropy_mask(entropy, valid, ratio=ratio)  # the micro-batch rule: exactly k
    assert int(exact.sum()) == k and not (exact & ~keep).any()
    if distinct:
        assert torch.equal(exact, keep)


def test_every_mask_kind_the_config_accepts_has_one_function_in_the_registry():
    from stapo_verl.method.config import MASKED_LOSS_MODES, TOKEN_MASKS
    from stapo_verl.method.token_masks import MASKS, mask_generator

    assert set(MASKS) == set(TOKEN_MASKS) >= {kind for kinds in MASKED_LOSS_MODES.values() for kind in kinds}
    # one seeding rule for every random draw of a mask
    draw = torch.rand(3, generator=mask_generator(5, 100, 2))
    assert torch.equal(draw, torch.rand(3, generator=torch.Generator().manual_seed(5 + 1_000_003 * 100 + 7919 * 2)))
