"""verl's FSDP engine and reference ``TrainingWorker`` adjusted for the CPU platform.

(The actor's worker is :class:`stapo_verl.integration.worker.TokenMaskTrainingWorker`, which starts its
process group the same way.)
"""

from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.engine_workers import TrainingWorker

from stapo_verl.cpu.platform import init_process_group_on_cpu


class CPUFSDPEngineWithLMHead(FSDPEngineWithLMHead):
    """verl's FSDP engine without the forced CPU offload of forward-only (reference) models.

    verl wraps the reference model in ``CPUOffloadPolicy(pin_memory=True)``; pinned memory needs
    an accelerator, and on CPU the parameters are in host memory already.
    """

    def _build_fsdp_module(self, module):
        forward_only = self.engine_config.forward_only
        self.engine_config.forward_only = False  # read by the offload choice only in this method
        try:
            return super()._build_fsdp_module(module)
        finally:
            self.engine_config.forward_only = forward_only


class CPUTrainingWorker(TrainingWorker):
    """``TrainingWorker`` that starts its process group with plain gloo on the CPU platform."""

    def __init__(self, config):
        init_process_group_on_cpu()
        super().__init__(config)
