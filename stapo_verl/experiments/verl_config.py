"""verl's own config fields, checked on the composed config before Ray starts.

verl checks some fields only inside its workers, after Ray, the model and the rollout engine have
started (a string learning rate, a zero mini-batch, a batch that does not split over the ranks),
and some never (the typed sections are built with ``hydra.utils.instantiate``, which passes a
string to a ``float`` field unchanged). :func:`check_verl_config` refuses such a config at once, in
one line that names the field, its value and what is accepted:

1. every scalar field of a typed section (a node whose ``_target_`` is a dataclass) against the
   dataclass's annotation: the types verl declares, which its ``instantiate`` does not enforce;
2. :data:`RANGES`: the numeric ranges and enums verl relies on late or never checks;
3. :func:`check_batch_split`: the batch sizes split as verl's trainer and workers will split them;
4. verl's own checks, reused rather than restated: the actor and rollout dataclasses'
   ``__post_init__``, the policy-loss registry, and ``verl.utils.config.validate_config`` (which
   ``main_ppo`` runs before Ray too, but after a typed field's wrong type has gone unnoticed).

What the config cannot tell (a model path that exists only on the worker nodes, the GPUs a cluster
has) is left to the run (docs/training-on-gpus.md, "Checks before a run"). ``stapo-verl train``,
``demo``, ``grid`` and ``sweep`` run this check; ``main_ppo`` runs it through :class:`ConfigCheck`,
a Hydra callback that ``stapo_trainer.yaml`` names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import io
import math
import types
import typing
import warnings
from collections.abc import Callable, Iterator

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException


class ConfigError(ValueError):
    """One field's value is refused: ``PATH=VALUE: what is accepted``."""

    def __init__(self, path: str, value, accepted: str):
        super().__init__(f"{path}={value!r}: {accepted}")
        self.path, self.value, self.accepted = path, value, accepted

    def __reduce__(self):  # whole across processes (the demo checks its config in a child process)
        return ConfigError, (self.path, self.value, self.accepted)


# ---------------------------------------------------------------------------------------------
# 1. Types: the typed sections' scalar fields against their dataclasses' annotations


@functools.cache
def _annotations(target: str) -> dict | None:
    """The field annotations of the dataclass ``target`` names; None if it names no dataclass."""
    from hydra.utils import get_class

    try:
        cls = get_class(target)
    except Exception:  # not importable here (an optional backend's class): left to the run
        return None
    if not dataclasses.is_dataclass(cls):
        return None
    try:
        return typing.get_type_hints(cls)
    except Exception:
        return None


def _type_problem(value, annotation) -> str | None:
    """Why ``value`` does not fit ``annotation`` (as verl's code will use it), or None."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        arms = typing.get_args(annotation)
        problems = [_type_problem(value, arm) for arm in arms]
        if any(problem is None for problem in problems):
            return None
        return " or ".join(dict.fromkeys(p.removeprefix("must be ") for p in problems)).join(("must be ", ""))
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        return None if value in allowed else f"must be one of {list(allowed)}"
    if annotation is type(None):
        return None if value is None else "null"
    if value is None:  # verl's own YAML sets null for many fields it annotates without Optional
        return None
    if annotation is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if annotation is float:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "must be a number"
    if origin in (list, tuple, set) or annotation in (list, tuple, set):  # a scalar where verl iterates
        return None if isinstance(value, ListConfig | list | tuple) else "must be a list"
    if origin is dict or annotation is dict:
        return None if isinstance(value, DictConfig | dict) else "must be a mapping"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        allowed = [member.value for member in annotation]
        return None if value in allowed or value in annotation.__members__ else f"must be one of {allowed}"
    return None  # str (any scalar converts), Any, containers, nested configs: not checked here


def _interpolation(node, key) -> str:
    """`` (=${...})`` when the field takes its value from another one, so the message names both."""
    child = node._get_node(key)
    return f" (={child._value()})" if child is not None and child._is_interpolation() else ""


def typed_nodes(node: DictConfig, path: str = "") -> Iterator[tuple[str, DictConfig, dict]]:
    """(path, node, annotations) for every node under ``node`` whose ``_target_`` is a dataclass."""
    if "_target_" in node:
        target = node._get_node("_target_")._value()
        annotations = _annotations(target) if isinstance(target, str) else None
        if annotations is not None:
            yield path, node, annotations
    for key in node.keys():
        if key == "hydra":  # Hydra's own node (in a callback's config)
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_interpolation():
            yield from typed_nodes(child, f"{path}.{key}" if path else str(key))


def typed_scalar_fields(cfg: DictConfig) -> Iterator[tuple[str, DictConfig, str, object]]:
    """(path, node, key, annotation) for every scalar field of every typed node."""
    for path, node, hints in typed_nodes(cfg):
        for key in node.keys():
            if key == "_target_" or key not in hints:
                continue
            child = node._get_node(key)
            if isinstance(child, DictConfig | ListConfig):
                continue
            yield f"{path}.{key}", node, key, hints[key]


def check_types(cfg: DictConfig) -> None:
    fields = list(typed_scalar_fields(cfg))
    # fields set directly first: a wrong value is then named where it was set, not where it is copied
    fields.sort(key=lambda field: field[1]._get_node(field[2])._is_interpolation())
    for path, node, key, annotation in fields:
        try:
            value = node[key]
        except MissingMandatoryValue:  # '???': verl fills it in (rollout_n, for example)
            continue
        except OmegaConfBaseException as exc:
            raise ConfigError(
                path + _interpolation(node, key),
                node._get_node(key)._value(),
                f"cannot be resolved: {str(exc).splitlines()[0]}",
            ) from None
        problem = _type_problem(value, annotation)
        if problem is not None:
            raise ConfigError(path + _interpolation(node, key), value, problem)


# ---------------------------------------------------------------------------------------------
# 2. Ranges and enums verl relies on late (inside its workers) or never checks


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def boolean(value) -> bool:
    return isinstance(value, bool)


def positive_integer(value) -> bool:
    return _integer(value) and value >= 1


def in_range(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable:
    def check(value) -> bool:
        return (
            _number(value)
            and (low < value if low_open else low <= value)
            and (value < high if high_open else value <= high)
        )

    return check


def one_of(*allowed) -> Callable:
    return lambda value: value in allowed


def _text(low, high, low_open=False, high_open=False) -> str:
    return f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


ACTOR = "actor_rollout_ref.actor"
ROLLOUT = "actor_rollout_ref.rollout"
KL_TYPES = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "full")  # core_algos.kl_penalty's names
STRATEGIES = ("fsdp", "fsdp2", "megatron")
# ActorConfig.__post_init__ refuses others with "Invalid loss_agg_mode", without the field's path or the list
LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")

# path -> (check, accepted, null allowed). Fields that typed sections interpolate from (data.*,
# trainer.*) are here too, so a message names the field the user set.
RANGES: dict[str, tuple[Callable, str, bool]] = {
    "data.train_batch_size": (positive_integer, "an integer >= 1 (prompts per step)", False),
    "data.max_prompt_length": (positive_integer, "an integer >= 1", False),
    "data.max_response_length": (positive_integer, "an integer >= 1", False),
    "trainer.nnodes": (positive_integer, "an integer >= 1", False),
    "trainer.n_gpus_per_node": (positive_integer, "an integer >= 1", False),
    "trainer.total_epochs": (positive_integer, "an integer >= 1", False),
    "trainer.total_training_steps": (positive_integer, "an integer >= 1, or null (the epochs decide)", True),
    "trainer.test_freq": (_integer, "an integer (<= 0: no validation during training)", False),
    "trainer.save_freq": (_integer, "an integer (<= 0: no checkpoints)", False),
    "trainer.val_before_train": (boolean, "true or false", False),
    f"{ACTOR}.strategy": (one_of(*STRATEGIES), f"one of {list(STRATEGIES)}", False),
    f"{ACTOR}.loss_agg_mode": (one_of(*LOSS_AGG_MODES), f"one of {list(LOSS_AGG_MODES)}", False),
    f"{ACTOR}.ppo_mini_batch_size": (positive_integer, "an integer >= 1 (prompts per update)", False),
    f"{ACTOR}.ppo_micro_batch_size_per_gpu": (positive_integer, "an integer >= 1, or null", True),
    f"{ACTOR}.ppo_max_token_len_per_gpu": (positive_integer, "an integer >= 1", False),
    f"{ACTOR}.ppo_epochs": (positive_integer, "an integer >= 1", False),
    f"{ACTOR}.optim.lr": (in_range(0, math.inf, low_open=True), "a number > 0", False),
    f"{ACTOR}.optim.weight_decay": (in_range(0, math.inf), "a number >= 0", False),
    f"{ACTOR}.grad_clip": (in_range(0, math.inf, low_open=True), "a number > 0", True),
    f"{ACTOR}.clip_ratio": (in_range(0, 1, low_open=True, high_open=True), _text(0, 1, True, True), False),
    f"{ACTOR}.clip_ratio_low": (in_range(0, 1, low_open=True, high_open=True), _text(0, 1, True, True), False),
    f"{ACTOR}.clip_ratio_high": (in_range(0, math.inf, low_open=True), "a number > 0", False),
    f"{ACTOR}.clip_ratio_c": (in_range(1, math.inf, low_open=True), "a number > 1 (verl's dual-clip bound)", False),
    f"{ACTOR}.entropy_coeff": (_number, "a number", False),
    f"{ACTOR}.kl_loss_coef": (in_range(0, math.inf), "a number >= 0", False),
    f"{ACTOR}.kl_loss_type": (
        lambda v: isinstance(v, str) and v.removesuffix("+") in KL_TYPES,
        f"one of {list(KL_TYPES)}, each optionally ending in '+'",
        False,
    ),
    f"{ROLLOUT}.n": (positive_integer, "an integer >= 1 (responses per prompt)", False),
    f"{ROLLOUT}.temperature": (in_range(0, math.inf, low_open=True), "a number > 0", False),
    f"{ROLLOUT}.top_p": (in_range(0, 1, low_open=True), _text(0, 1, True), False),
    f"{ROLLOUT}.top_k": (lambda v: _integer(v) and (v == -1 or v >= 0), "an integer >= 0, or -1 (off)", False),
    f"{ROLLOUT}.log_prob_max_token_len_per_gpu": (positive_integer, "an integer >= 1", False),
    f"{ROLLOUT}.log_prob_micro_batch_size_per_gpu": (positive_integer, "an integer >= 1, or null", True),
    f"{ROLLOUT}.val_kwargs.n": (positive_integer, "an integer >= 1", False),
    f"{ROLLOUT}.val_kwargs.temperature": (in_range(0, math.inf), "a number >= 0 (0: greedy)", False),
    f"{ROLLOUT}.val_kwargs.top_p": (in_range(0, 1, low_open=True), _text(0, 1, True), False),
    "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu": (positive_integer, "an integer >= 1", False),
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": (positive_integer, "an integer >= 1, or null", True),
}


def check_ranges(cfg: DictConfig) -> None:
    for path, (check, accepted, nullable) in RANGES.items():
        node = OmegaConf.select(cfg, path, throw_on_missing=False, default=dataclasses.MISSING)
        if node is dataclasses.MISSING:  # a config without the field (another verl layout): not ours to ask
            continue
        if node is None and nullable:
            continue
        if not check(node):
            raise ConfigError(path, node, f"must be {accepted}")


# ---------------------------------------------------------------------------------------------
# 3. The batch sizes, split as verl's trainer and workers split them


def check_batch_split(cfg: DictConfig) -> None:
    """Checks verl makes only inside its workers (``engine_workers.train_mini_batch``,
    ``engine.utils.prepare_micro_batches``, ``seqlen_balancing.rearrange_micro_batches``)."""
    actor, rollout, data = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout, cfg.data
    ranks = cfg.trainer.n_gpus_per_node * cfg.trainer.nnodes
    sequence_parallel = actor.get("ulysses_sequence_parallel_size", 1) or 1
    if ranks % sequence_parallel:
        raise ConfigError(
            f"{ACTOR}.ulysses_sequence_parallel_size",
            sequence_parallel,
            f"must divide the {ranks} ranks (trainer.nnodes x trainer.n_gpus_per_node)",
        )
    data_parallel = ranks // sequence_parallel
    if data.train_batch_size % actor.ppo_mini_batch_size:  # the remainder's responses would not train
        raise ConfigError(
            f"{ACTOR}.ppo_mini_batch_size",
            actor.ppo_mini_batch_size,
            f"must divide data.train_batch_size={data.train_batch_size}",
        )
    mini_batch = actor.ppo_mini_batch_size * rollout.n  # responses per update
    if mini_batch % data_parallel:
        raise ConfigError(
            f"{ACTOR}.ppo_mini_batch_size",
            actor.ppo_mini_batch_size,
            f"x rollout.n={rollout.n} = {mini_batch} responses per update must divide over the "
            f"{data_parallel} data-parallel ranks",
        )
    micro = actor.get("ppo_micro_batch_size_per_gpu")
    if not actor.use_dynamic_bsz and micro is not None and (mini_batch // data_parallel) % micro:
        raise ConfigError(
            f"{ACTOR}.ppo_micro_batch_size_per_gpu",
            micro,
            f"must divide the {mini_batch // data_parallel} responses each rank trains per update",
        )
    longest = data.max_prompt_length + data.max_response_length
    if actor.use_dynamic_bsz:
        for path in (
            f"{ACTOR}.ppo_max_token_len_per_gpu",
            f"{ROLLOUT}.log_prob_max_token_len_per_gpu",
            "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu",
        ):
            tokens = OmegaConf.select(cfg, path)
            if tokens is not None and tokens * sequence_parallel < longest:
                raise ConfigError(
                    path,
                    tokens,
                    f"must be >= data.max_prompt_length + data.max_response_length "
                    f"= {longest} (a micro-batch holds at least one sequence)",
                )


# ---------------------------------------------------------------------------------------------
# 4. verl's own checks


def _message(exc: BaseException) -> str:
    """The innermost cause's message, on one line (instantiate wraps the dataclass's own error)."""
    from hydra.errors import HydraException

    while isinstance(exc, HydraException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return " ".join(str(exc).split()) or type(exc).__name__


def check_with_verl(cfg: DictConfig) -> None:
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, POLICY_LOSS_REGISTRY
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    loss_mode = cfg.actor_rollout_ref.actor.policy_loss.loss_mode
    if loss_mode not in POLICY_LOSS_REGISTRY:
        raise ConfigError(f"{ACTOR}.policy_loss.loss_mode", loss_mode, f"must be one of {sorted(POLICY_LOSS_REGISTRY)}")
    estimator = cfg.algorithm.adv_estimator
    if estimator not in ADV_ESTIMATOR_REGISTRY:  # verl looks it up at the first step
        raise ConfigError("algorithm.adv_estimator", estimator, f"must be one of {sorted(ADV_ESTIMATOR_REGISTRY)}")
    steps = (
        (ACTOR, lambda: omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)),
        (ROLLOUT, lambda: omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)),
        ("algorithm", lambda: omega_conf_to_dataclass(cfg.algorithm)),
        ("verl's validate_config", lambda: validate_config(cfg, need_reference_policy(cfg), need_critic(cfg))),
    )
    from hydra.errors import HydraException  # its InstantiationException wraps a dataclass's own error

    for what, step in steps:
        try:
            # validate_config prints its verdict, need_critic warns: main_ppo says both again itself
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                step()
        except (AssertionError, ValueError, TypeError, OmegaConfBaseException, HydraException) as exc:
            raise ValueError(f"{what}: {_message(exc)}") from None


def check_verl_config(cfg: DictConfig) -> None:
    """Refuse, with one :class:`ValueError` line naming the field, what verl would refuse late."""
    check_ranges(cfg)
    check_types(cfg)
    check_batch_split(cfg)
    check_with_verl(cfg)


class ConfigCheck(Callback):
    """A Hydra callback (``hydra.callbacks`` in ``stapo_trainer.yaml``): ``main_ppo`` checks its
    composed config with :func:`check_verl_config` before its task function starts Ray. In another
    verl config: ``+hydra.callbacks.stapo_config_check._target_=stapo_verl.experiments.verl_config.ConfigCheck``."""

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        try:
            check_verl_config(config)
        except ValueError as exc:
            raise SystemExit(f"stapo-verl: config refused before Ray starts: {exc}") from None
