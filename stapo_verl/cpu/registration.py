"""Registers the CPU backends with verl (called by :mod:`stapo_verl.plugin`).

The ``hf`` rollout backend is always registered, on ``import verl`` (registration only adds a
name; its module is imported when a run selects it). The CPU engine and reference worker are
installed only when ``VERL_PLATFORM=cpu``, once verl's engine workers are imported.
"""

from __future__ import annotations

from stapo_verl.cpu.platform import PLATFORM_NAME, cpu_platform_selected

ROLLOUT_NAME = "hf"


def register_rollout() -> None:
    """The ``hf`` rollout backend's name (cheap: its module is imported when a run selects it)."""
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    def load_replica():
        from stapo_verl.cpu.hf_rollout import HFReplica

        return HFReplica

    RolloutReplicaRegistry.register(ROLLOUT_NAME, load_replica)
    # verl looks the in-worker half up in this table (no registration function exists for it)
    rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = "stapo_verl.cpu.hf_rollout.HFServerAdapter"


def register_engine() -> None:
    """With VERL_PLATFORM=cpu: verl's FSDP2 engine for device ``cpu`` and the CPU reference worker.
    Imports verl's engines: the plugin calls this once ``verl.workers.engine_workers`` is loaded."""
    if not cpu_platform_selected():
        return
    from verl.workers import engine_workers
    from verl.workers.engine import EngineRegistry

    from stapo_verl.cpu.workers import CPUFSDPEngineWithLMHead, CPUTrainingWorker

    registered = EngineRegistry._engines.get("language_model", {}).get("fsdp2", {})
    if PLATFORM_NAME not in registered:
        EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device=PLATFORM_NAME)(
            CPUFSDPEngineWithLMHead
        )
    if engine_workers.ActorRolloutRefWorker.ref_worker_cls is engine_workers.TrainingWorker:
        engine_workers.ActorRolloutRefWorker.ref_worker_cls = CPUTrainingWorker
