"""TokenMaskPolicyLossConfig: validated when verl builds the actor config."""

import pytest
from conftest import actor_config

from stapo_verl.method.config import TokenMaskPolicyLossConfig


def test_defaults_are_the_papers():
    config = TokenMaskPolicyLossConfig(loss_mode="stapo")
    assert (config.tau_prob, config.entropy_quantile, config.entropy_threshold) == (0.002, 0.75, None)
    assert (config.stats_source, config.top_entropy_ratio, config.top_entropy_scope) == ("current", 0.2, "mini_batch")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("tau_prob", 2.0, r"policy_loss\.tau_prob must be a number in \(0\.0, 1\.0\], got 2\.0"),
        ("tau_prob", 0.0, r"tau_prob must be a number in \(0\.0, 1\.0\]"),
        ("tau_prob", float("nan"), r"tau_prob must be a number"),
        ("entropy_quantile", 1.5, r"policy_loss\.entropy_quantile must be a number in \(0\.0, 1\.0\], got 1\.5"),
        ("entropy_quantile", 0, r"entropy_quantile must be a number in \(0\.0, 1\.0\]"),
        ("top_entropy_ratio", 0.0, r"policy_loss\.top_entropy_ratio must be a number in \(0\.0, 1\.0\]"),
        ("stats_source", "new", r"policy_loss\.stats_source must be one of \['current', 'old'\], got 'new'"),
        ("top_entropy_scope", "batch", r"top_entropy_scope must be one of \['mini_batch', 'micro_batch'\]"),
        ("s2t_advantage_sign", "negative", r"s2t_advantage_sign must be one of \['positive', 'any'\]"),
        ("dump_every", 0, r"policy_loss\.dump_every must be an integer >= 1, got 0"),
        (
            "loss_mode",
            "foo",
            r"policy_loss\.loss_mode must be one of \[.*'entropy20'.*'stapo'.*'vanilla'.*\], got 'foo'",
        ),
    ],
)
def test_bad_values_name_the_field_and_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        TokenMaskPolicyLossConfig(**{"loss_mode": "stapo", field: value})


def test_entropy_cutoff_is_quantile_or_absolute():
    assert TokenMaskPolicyLossConfig(entropy_quantile=None, entropy_threshold=0.0).entropy_threshold == 0.0
    with pytest.raises(ValueError, match="exactly one of entropy_quantile"):
        TokenMaskPolicyLossConfig(entropy_threshold=1.0)
    with pytest.raises(ValueError, match=r"entropy_threshold must be a number in \[0\.0, inf\]"):
        TokenMaskPolicyLossConfig(entropy_quantile=None, entropy_threshold=-1.0)


def test_verl_builds_it_from_hydra_config():
    """omega_conf_to_dataclass (what verl's workers call) instantiates and validates it."""
    config = actor_config("stapo", tau_prob=0.01, stats_source="old")
    assert isinstance(config.policy_loss, TokenMaskPolicyLossConfig)
    assert config.policy_loss.tau_prob == 0.01 and config.policy_loss.stats_source == "old"
    from hydra.errors import InstantiationException

    with pytest.raises(
        InstantiationException, match=r"policy_loss\.tau_prob must be a number in \(0\.0, 1\.0\], got 2\.0"
    ):
        actor_config("stapo", tau_prob=2.0)


@pytest.mark.parametrize(
    "field, value", [("stats_source", "old"), ("fp32_statistics", True), ("dump_dir", "/tmp/silenced")]
)
def test_micro_batch_top_entropy_refuses_what_the_training_forward_cannot_give(field, value):
    """top_entropy_scope=micro_batch masks with the training forward's own entropy: no old source,
    no fp32 statistics pass, no mini-batch-level token dump."""
    with pytest.raises(ValueError, match=rf"top_entropy_scope=micro_batch .* {field} must be"):
        TokenMaskPolicyLossConfig(loss_mode="entropy20", top_entropy_scope="micro_batch", **{field: value})
    assert getattr(TokenMaskPolicyLossConfig(loss_mode="entropy20", **{field: value}), field) == value  # mini_batch
