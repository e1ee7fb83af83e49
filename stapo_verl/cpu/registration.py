"""Registers the CPU backends with verl; the plugin calls :func:`register` on ``import verl``.

The ``hf`` rollout backend is always registered (registration only adds a name; its module is
imported when a run selects it). The CPU engine and reference worker are installed only when
``VERL_PLATFORM=cpu``.
"""

from __future__ import annotations

from stapo_verl.cpu.platform import PLATFORM_NAME, cpu_platform_selected

ROLLOUT_NAME = "hf"


def register() -> None:
    from verl.workers import engine_workers
    from verl.workers.engine import EngineRegistry
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    def load_replica():
        from stapo_verl.cpu.hf_rollout import HFReplica

        return HFReplica

    RolloutReplicaRegistry.register(ROLLOUT_NAME, load_replica)
    # verl looks the in-worker half up in this table (no registration function exists for it)
    rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = "stapo_verl.cpu.hf_rollout.HFServerAdapter"

    if not cpu_platform_selected():
        return
    from stapo_verl.cpu.workers import CPUFSDPEngineWithLMHead, CPUTrainingWorker

    registered = EngineRegistry._engines.get("language_model", {}).get("fsdp2", {})
    if PLATFORM_NAME not in registered:
        EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device=PLATFORM_NAME)(
            CPUFSDPEngineWithLMHead
        )
    if engine_workers.ActorRolloutRefWorker.ref_worker_cls is engine_workers.TrainingWorker:
        engine_workers.ActorRolloutRefWorker.ref_worker_cls = CPUTrainingWorker
