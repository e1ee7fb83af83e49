"""Registers the CPU backends with verl (called by :mod:`stapo_verl.plugin`), only when
``VERL_PLATFORM=cpu`` (the CPU presets set it for every process of a run): the ``hf`` rollout
backend's name on ``import verl`` (its module is imported when a run selects it), the CPU engine
and reference worker once verl's engine workers are imported.
"""

from __future__ import annotations

from stapo_verl import compat
from stapo_verl.cpu.platform import PLATFORM_NAME, cpu_platform_selected

ROLLOUT_NAME = "hf"


def register_rollout() -> None:
    """The ``hf`` rollout backend's name (cheap: its module is imported when a run selects it)."""
    if not cpu_platform_selected():
        return
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    def load_replica():
        from stapo_verl.cpu.hf_rollout import HFReplica

        return HFReplica

    RolloutReplicaRegistry.register(ROLLOUT_NAME, load_replica)
    compat.register_rollout_in_worker(ROLLOUT_NAME, "stapo_verl.cpu.hf_rollout.HFServerAdapter")


def register_engine() -> None:
    """With VERL_PLATFORM=cpu: verl's FSDP2 engine for device ``cpu`` and the CPU reference worker.
    Imports verl's engines: the plugin calls this once ``verl.workers.engine_workers`` is loaded."""
    if not cpu_platform_selected():
        return
    from verl.workers.engine import EngineRegistry

    from stapo_verl.cpu.workers import CPUTrainingWorker

    if not compat.engine_registered("language_model", "fsdp2", PLATFORM_NAME):
        EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device=PLATFORM_NAME)(
            compat.fsdp_engine_without_reference_offload()
        )
    compat.set_ref_worker_cls(CPUTrainingWorker)
