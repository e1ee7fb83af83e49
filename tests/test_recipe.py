"""The Hydra recipe: one override switches the method, everything else is shared."""

import os
import subprocess
import sys
import zipfile

import pytest
from omegaconf import OmegaConf

from stapo_verl.recipe import CONFIG_DIR, CONFIG_NAME, METHODS, MODELS

# Fields that define a fair comparison: identical for all four methods.
SHARED = [
    "data.train_files",
    "data.val_files",
    "data.train_batch_size",
    "data.max_prompt_length",
    "data.max_response_length",
    "data.filter_overlong_prompts",
    "algorithm.adv_estimator",
    "algorithm.norm_adv_by_std_in_grpo",
    "algorithm.use_kl_in_reward",
    "actor_rollout_ref.model.path",
    "actor_rollout_ref.actor.optim.lr",
    "actor_rollout_ref.actor.optim.lr_warmup_steps",
    "actor_rollout_ref.actor.optim.weight_decay",
    "actor_rollout_ref.actor.optim.clip_grad",
    "actor_rollout_ref.actor.ppo_mini_batch_size",
    "actor_rollout_ref.actor.ppo_epochs",
    "actor_rollout_ref.actor.use_dynamic_bsz",
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu",
    "actor_rollout_ref.actor.clip_ratio_low",
    "actor_rollout_ref.actor.clip_ratio_c",
    "actor_rollout_ref.actor.entropy_coeff",
    "actor_rollout_ref.actor.calculate_entropy",
    "actor_rollout_ref.rollout.name",
    "actor_rollout_ref.rollout.n",
    "actor_rollout_ref.rollout.temperature",
    "actor_rollout_ref.rollout.top_p",
    "actor_rollout_ref.rollout.tensor_model_parallel_size",
    "trainer.test_freq",
    "trainer.total_training_steps",
    "reward.custom_reward_function.path",
    "reward.custom_reward_function.reward_kwargs.grader",
]

# What each method sets (docs/method.md sections 3-4).
EXPECTED = {
    "justrl": {
        "policy_loss.loss_mode": "vanilla",
        "clip_ratio_high": 0.28,
        "loss_agg_mode": "token-mean",
        "use_kl_loss": False,
    },
    "stapo": {
        "policy_loss.loss_mode": "stapo",
        "policy_loss.tau_prob": 0.002,
        "policy_loss.entropy_quantile": 0.75,
        "policy_loss.entropy_threshold": None,
        "policy_loss.stats_source": "current",
        "clip_ratio_high": 0.28,
        "loss_agg_mode": "token-mean",
        "use_kl_loss": False,
    },
    "entropy20": {
        "policy_loss.loss_mode": "entropy20",
        "policy_loss.top_entropy_ratio": 0.2,
        "policy_loss.top_entropy_scope": "mini_batch",
        "policy_loss.stats_source": "current",
        "clip_ratio_high": 0.28,
        "loss_agg_mode": "token-mean",
        "use_kl_loss": False,
    },
    "grpo": {
        "policy_loss.loss_mode": "vanilla",
        "clip_ratio_high": 0.2,
        "loss_agg_mode": "seq-mean-token-mean",
        "use_kl_loss": True,
        "kl_loss_coef": 0.001,
        "kl_loss_type": "low_var_kl",
    },
}


def compose(*overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return hydra_compose(CONFIG_NAME, overrides=list(overrides))


@pytest.fixture(scope="module")
def configs():
    return {method: compose(f"algorithm={method}") for method in METHODS}


def test_methods_differ_only_where_the_paper_says(configs):
    for method, expected in EXPECTED.items():
        actor = configs[method].actor_rollout_ref.actor
        for key, value in expected.items():
            assert OmegaConf.select(actor, key) == value, (method, key)
    for key in SHARED:
        values = {method: OmegaConf.select(configs[method], key, default="<missing>") for method in METHODS}
        assert len(set(map(str, values.values()))) == 1, (key, values)
    # the default is STAPO on the 1.7B model; the experiment name says which run is which
    assert compose().actor_rollout_ref.actor.policy_loss.loss_mode == "stapo"
    assert configs["grpo"].trainer.experiment_name == "grpo_qwen3_1.7b"


def test_reward_is_the_dapo_rule_reward(configs):
    """verl loads the recipe's reward function the way its reward loop does."""
    from verl.trainer.ppo.reward import get_custom_reward_fn

    for cfg in configs.values():
        assert cfg.reward.custom_reward_function.reward_kwargs.grader == "dapo"
    score = get_custom_reward_fn(configs["stapo"])
    assert (
        score(data_source="DAPO-17k", solution_str="so \\boxed{34}", ground_truth="34", extra_info={})["score"] == 1.0
    )
    assert (
        score(data_source="DAPO-17k", solution_str="so \\boxed{35}", ground_truth="34", extra_info={})["score"] == -1.0
    )


def test_the_papers_shared_recipe(configs):
    cfg = configs["justrl"]
    actor = cfg.actor_rollout_ref.actor
    assert (cfg.data.train_batch_size, cfg.actor_rollout_ref.rollout.n, actor.ppo_mini_batch_size) == (256, 8, 64)
    assert (actor.optim.lr, actor.optim.lr_scheduler_type, actor.optim.lr_warmup_steps) == (1e-6, "constant", 10)
    assert (actor.optim.weight_decay, actor.optim.clip_grad) == (0.1, 1.0)
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.clip_ratio_c) == (0.2, 0.28, 10.0)
    assert (cfg.data.max_prompt_length, cfg.data.max_response_length) == (1024, 15360)
    assert (actor.use_dynamic_bsz, actor.ppo_max_token_len_per_gpu, actor.entropy_coeff) == (True, 32768, 0.0)
    assert (cfg.actor_rollout_ref.rollout.temperature, cfg.actor_rollout_ref.rollout.top_p) == (1.0, 1.0)
    assert not cfg.algorithm.use_kl_in_reward and cfg.algorithm.adv_estimator == "grpo"


@pytest.mark.parametrize(
    "model, path, tp",
    [
        ("qwen3_1.7b", "Qwen/Qwen3-1.7B-Base", 1),
        ("qwen3_8b", "Qwen/Qwen3-8B-Base", 2),
        ("qwen3_14b", "Qwen/Qwen3-14B-Base", 4),
    ],
)
def test_model_presets(model, path, tp):
    cfg = compose("algorithm=stapo", f"model={model}")
    assert cfg.actor_rollout_ref.model.path == path
    assert cfg.actor_rollout_ref.rollout.tensor_model_parallel_size == tp
    assert cfg.trainer.experiment_name == f"stapo_{model}"
    assert model in MODELS


def test_verl_validates_every_composed_config(configs):
    """What main_ppo does before starting Ray: validate_config, which builds the actor dataclass."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    from stapo_verl.method.config import TokenMaskPolicyLossConfig

    for method, cfg in configs.items():
        validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
        actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
        if method in ("stapo", "entropy20"):
            assert isinstance(actor.policy_loss, TokenMaskPolicyLossConfig)
        assert need_reference_policy(cfg) == (method == "grpo")  # only GRPO has a KL term


def run_main_ppo(*args):
    command = [sys.executable, "-m", "stapo_verl", "train", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_main_ppo_composes_a_method_of_ours_and_one_of_verls():
    """Through main_ppo's command line (every method composes in-process: the tests above)."""
    for method in ("stapo", "grpo"):
        result = run_main_ppo(method, "qwen3_8b", "--cfg", "job")
        assert result.returncode == 0, result.stderr[-2000:]
        job = OmegaConf.create(result.stdout.split("\n", 1)[1])  # first line: the printed command
        assert job.actor_rollout_ref.actor.policy_loss.loss_mode == EXPECTED[method]["policy_loss.loss_mode"]
        assert job.actor_rollout_ref.model.path == "Qwen/Qwen3-8B-Base"


@pytest.mark.slow
def test_bad_overrides_fail_fast_with_a_clear_message():
    result = run_main_ppo("stapo", "qwen3_1.7b", "algorithm=nope")  # straight to Hydra
    assert result.returncode != 0
    assert "Could not find 'algorithm/nope'" in result.stderr and "stapo" in result.stderr
    result = run_main_ppo("stapo", "qwen3_1.7b", "actor_rollout_ref.actor.policy_loss.tau_prob=2")
    assert result.returncode != 0  # fails in validate_config, before Ray starts
    assert "policy_loss.tau_prob must be a number in (0.0, 1.0], got 2" in result.stderr
    result = run_main_ppo("nope")
    assert result.returncode != 0 and "valid methods: stapo, grpo, entropy20, justrl" in result.stderr


def test_configs_ship_in_the_wheel(tmp_path):
    """An installed (non-editable) package carries the Hydra configs."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), root],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("stapo_verl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for relative in [
        "stapo_trainer.yaml",
        *(f"algorithm/{m}.yaml" for m in METHODS),
        *(f"model/{m}.yaml" for m in MODELS),
    ]:
        assert f"stapo_verl/recipe/config/{relative}" in names
    assert any(name.endswith("entry_points.txt") for name in names)


def test_the_policy_loss_defaults_have_one_source():
    """TokenMaskPolicyLossConfig's defaults are the source: token_mask_policy_loss.yaml lists each of
    its fields at that default (so each overrides without '+'), and the method files restate the
    paper's values only where they equal it; a default changed in one place fails here."""
    import dataclasses

    from verl.workers.config import PolicyLossConfig

    from stapo_verl.method.config import TokenMaskPolicyLossConfig

    verls = {f.name for f in dataclasses.fields(PolicyLossConfig)}
    defaults = {f.name: f.default for f in dataclasses.fields(TokenMaskPolicyLossConfig) if f.name not in verls}
    listed = OmegaConf.to_container(OmegaConf.load(os.path.join(CONFIG_DIR, "token_mask_policy_loss.yaml")))
    listed = listed["actor_rollout_ref"]["actor"]["policy_loss"]
    assert listed.pop("_target_") == "stapo_verl.method.config.TokenMaskPolicyLossConfig"
    assert listed == defaults
    for method in ("stapo", "entropy20"):
        stated = OmegaConf.to_container(OmegaConf.load(os.path.join(CONFIG_DIR, "algorithm", f"{method}.yaml")))
        stated = dict(stated["actor_rollout_ref"]["actor"]["policy_loss"])
        assert stated.pop("loss_mode") == method
        assert stated and stated == {name: defaults[name] for name in stated}, method
