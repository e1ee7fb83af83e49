"""verl's ``TrainingWorker`` for the CPU platform: the reference worker, and the actor's in runs
without a token mask (a token-mask run's actor is
:class:`stapo_verl.integration.worker.TokenMaskTrainingWorker`, which starts its process group the
same way). The CPU engine, verl's FSDP engine without its forced offload of the reference model,
is :func:`stapo_verl.compat.fsdp_engine_without_reference_offload` (it overrides a private method).
"""

from verl.workers.engine_workers import TrainingWorker

from stapo_verl.cpu.platform import init_process_group_on_cpu


class CPUTrainingWorker(TrainingWorker):
    """``TrainingWorker`` that starts its process group with plain gloo on the CPU platform."""

    def __init__(self, config):
        init_process_group_on_cpu()
        super().__init__(config)
