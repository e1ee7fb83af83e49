"""verl's vLLM worker extension, made to reload weights on vLLM's CPU backend.

After loading, vLLM-CPU repacks every linear layer's weight into a oneDNN handle and replaces
the ``weight`` Parameter with an empty one (``dispatch_cpu_unquantized_gemm``), so verl's weight
sync, which calls ``model.load_weights`` per bucket, finds no ``weight_loader`` to load into.
vLLM's layerwise reload (``vllm.model_executor.model_loader.reload``) restores each layer's
load-time parameters, loads, and repacks the layer once all its weights have arrived: the
sync runs inside it. Selected by ``cpu_rollout=vllm`` through
``rollout.engine_kwargs.vllm.worker_extension_cls`` (vLLM's extension point for its workers), and
by ``stapo-verl eval --engine vllm`` on CPU. Importing it (in vLLM's worker process) also puts the
sort-free top-p into vLLM's sampler (:mod:`stapo_verl.cpu.vllm_sampling`).
"""

from __future__ import annotations

import verl  # noqa: F401  isort: skip  (verl first, as every stapo_verl module that uses it)
from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension

from stapo_verl import compat
from stapo_verl.cpu import vllm_sampling

vllm_sampling.install()


class CPUReloadWorkerExtension(vLLMColocateWorkerExtension):
    def update_weights_from_ipc(self, peft_config: dict = None, base_sync_done=False, use_shm: bool = False):
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

        if peft_config:
            raise NotImplementedError("cpu_rollout=vllm: LoRA weight sync is not supported on CPU")
        models = compat.models_of(self)
        for model, _ in models:
            initialize_layerwise_reload(model)
        try:
            super().update_weights_from_ipc(peft_config, base_sync_done, use_shm)
        finally:
            for model, model_config in models:
                finalize_layerwise_reload(model, model_config)
