"""``rollout.name=hf``: a rollout backend for verl 0.9.1 that serves generation with HF transformers.

verl's rollouts are servers (vLLM/SGLang/TRT-LLM) that verl's agent loop calls through
``RolloutReplicaRegistry``; none of them runs without a GPU. This one does, for the tiny CPU
preset and tests. Two pieces, following verl's hybrid (colocated) mode:

- :class:`HFGenerationServer`: one Ray actor per replica holding an HF model copy. Requests that
  arrive together are sampled as one batch (:func:`stapo_verl.cpu.hf_sampling.sample`: token-in,
  token-out like vLLM, raw log-probs). Each request is sampled with its own seed: the request's
  ``seed`` where it carries one (as vLLM; the CPU presets' seeded agent loop gives every request
  one, so samples do not depend on how many replicas serve them), else one made from the rollout
  seed, the replica, the training step, its prompt and how many requests with that prompt came
  before it in the step (:func:`stapo_verl.cpu.hf_sampling.request_seed`). The same seed gives the
  same responses whatever the batching, so runs of different methods see the same samples at step 1.
- :class:`HFServerAdapter`: the ``BaseRollout`` inside each trainer worker. verl's weight sync
  (``checkpoint_engine.backend=naive``) hands it the actor's parameters; the replica's first rank
  ships them to its server through Ray's object store, in buckets.

Single-turn text only (no images, tools or LoRA); sleep/wake are no-ops (nothing to offload).
"""

from __future__ import annotations

import verl  # noqa: F401  isort: skip  (first: the plugin registers the cpu platform)
import asyncio
import collections
import threading
from collections.abc import Generator
from typing import Any

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

from stapo_verl.cpu.hf_sampling import eos_and_pad_ids, request_seed, sample

BATCH_WAIT_S = 0.02  # gather the agent loop's concurrent requests into one batch
# At most this many sequences per generate call: a validation of thousands of samples would
# otherwise hold the KV cache of all of them at once (SmolLM2-135M: ~4 MB per 173-token sequence).
MAX_BATCH = 256
# Weights travel to the server in buckets of about this size: a whole state dict in one message
# would hold two extra model copies at once (the sender's and the receiver's).
WEIGHT_BUCKET_BYTES = 128 * 2**20


def server_name(replica_rank: int, name_suffix: str = "") -> str:
    return f"stapo_hf_server_{replica_rank}{name_suffix}"


def sampling_key(sampling_params: dict[str, Any], max_tokens: int) -> tuple:
    """Requests with equal keys can share one ``generate`` call."""
    top_k = int(sampling_params.get("top_k", -1) or -1)
    return (
        float(sampling_params.get("temperature", 1.0)),
        float(sampling_params.get("top_p", 1.0)),
        top_k if top_k > 0 else -1,
        max_tokens,
    )


class HFGenerationServer:
    """The replica's generation server (a Ray actor; async methods share one event loop)."""

    def __init__(self, config: Any, model_config: Any, replica_rank: int):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from verl.utils.fs import copy_to_local
        from verl.utils.torch_dtypes import PrecisionType

        self.config = config
        self.replica_rank = replica_rank
        path = copy_to_local(model_config.path)  # a DictConfig here, as verl's replicas receive it
        # rollout.dtype, as vLLM reads it (the CPU presets set the actor's precision); the weight
        # sync casts the actor's fp32 master weights into it
        dtype = PrecisionType.to_dtype(config.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        self.eos_ids, self.pad_id = eos_and_pad_ids(self.model, tokenizer)
        self.global_steps: int | None = None
        # (key, prompt, log-probs?, seed, reply)
        self._pending: list[tuple[tuple, list[int], bool, int, asyncio.Future]] = []
        self._prompt_repeats: collections.Counter = collections.Counter()  # requests per prompt in this step
        self._drain_task: asyncio.Task | None = None
        self._model_lock = threading.Lock()  # generation and weight loads never overlap
        self._synced: set[str] = set()  # weights loaded by the sync in progress

    def max_tokens(self, prompt_len: int, sampling_params: dict[str, Any]) -> int:
        # as verl's vLLM server: at most response_length, and within prompt + response length
        limit = min(self.config.response_length, self.config.prompt_length + self.config.response_length - prompt_len)
        requested = sampling_params.get("max_tokens", sampling_params.get("max_new_tokens"))
        return max(1, min(limit, int(requested)) if requested is not None else limit)

    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: Any = None,
        video_data: Any = None,
        **kwargs: Any,
    ) -> TokenOutput:
        if image_data is not None or video_data is not None or kwargs.get("audio_data") is not None:
            raise ValueError("rollout.name=hf generates text only; this request carries images, video or audio")
        future = asyncio.get_running_loop().create_future()
        prompt_ids = [int(t) for t in prompt_ids]
        max_tokens = self.max_tokens(len(prompt_ids), sampling_params)
        key = sampling_key(sampling_params, max_tokens)
        repeat = self._prompt_repeats[tuple(prompt_ids)]
        self._prompt_repeats[tuple(prompt_ids)] += 1
        seed = sampling_params.get("seed")  # a request's own seed, as vLLM takes it (the seeded agent loop's)
        if seed is None:  # else: the repeat-th request (from 0) with these prompt ids in this step, on this replica
            seed = request_seed(
                int(getattr(self.config, "seed", 0) or 0), self.replica_rank, self.global_steps, repeat, prompt_ids
            )
        self._pending.append((key, prompt_ids, bool(sampling_params.get("logprobs")), seed, future))
        if self._drain_task is None or self._drain_task.done():
            self._drain_task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(BATCH_WAIT_S)
            key, _, want_log_probs, _, _ = self._pending[0]
            batch = [r for r in self._pending if r[0] == key and r[2] == want_log_probs][:MAX_BATCH]
            taken = {id(r) for r in batch}
            self._pending = [r for r in self._pending if id(r) not in taken]
            try:
                outputs = await asyncio.to_thread(
                    self._generate_batch, [r[1] for r in batch], key, want_log_probs, [r[3] for r in batch]
                )
            except Exception as exc:
                for request in batch:
                    request[4].set_exception(exc)
                continue
            for request, output in zip(batch, outputs, strict=True):
                request[4].set_result(output)

    def _generate_batch(
        self, prompts: list[list[int]], key: tuple, want_log_probs: bool, seeds: list[int]
    ) -> list[TokenOutput]:
        temperature, top_p, top_k, max_tokens = key
        with self._model_lock:
            responses = sample(
                self.model,
                prompts,
                eos_ids=self.eos_ids,
                pad_id=self.pad_id,
                max_new_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                log_probs=want_log_probs,
                seeds=seeds,
            )
        return [
            TokenOutput(
                token_ids=token_ids,
                log_probs=log_probs,
                stop_reason="completed" if stopped else "length",
                extra_fields={"global_steps": self.global_steps},
            )
            for token_ids, stopped, log_probs in responses
        ]

    def load_weights(self, weights: dict[str, torch.Tensor]) -> int:
        """Copy one bucket of the actor's weights into the model, in place (a sync streams the
        weights in buckets, so neither side ever holds a second copy of the whole model)."""
        own = self.model.state_dict()
        unexpected = [name for name in weights if name not in own]
        if unexpected:
            raise RuntimeError(f"hf rollout weight sync: unexpected keys {unexpected[:5]}")
        with self._model_lock, torch.no_grad():
            for name, tensor in weights.items():
                own[name].copy_(tensor)
        self._synced.update(weights)
        return len(weights)

    def finish_weight_update(self, global_steps: int | None = None) -> int:
        """End a sync: every model weight must have been loaded (tied ones excepted)."""
        synced, self._synced = self._synced, set()
        tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
        missing = [name for name in self.model.state_dict() if name not in synced and name not in tied]
        if missing:
            raise RuntimeError(f"hf rollout weight sync: missing keys {missing[:5]}")
        self.global_steps = global_steps
        self._prompt_repeats.clear()  # a new step: seeds count repeats from 0 again
        return len(synced)

    def update_weights(self, state_dict: dict[str, torch.Tensor], global_steps: int | None = None) -> int:
        """A whole sync in one call."""
        self.load_weights(state_dict)
        return self.finish_weight_update(global_steps)

    # The replica's control calls: nothing is offloaded or cached between requests.
    async def wake_up(self) -> None: ...
    async def sleep(self) -> None: ...
    async def clear_kv_cache(self) -> None: ...
    async def release_kv_cache(self) -> None: ...
    async def resume_kv_cache(self) -> None: ...
    async def abort_all_requests(self, reject_request: bool = False) -> None: ...
    async def resume_generation(self) -> None: ...
    async def start_profile(self, **kwargs: Any) -> None: ...
    async def stop_profile(self) -> None: ...


class HFReplica(RolloutReplica):
    """One HF generation server per replica, on the local node (hybrid and standalone modes)."""

    async def launch_servers(self) -> None:
        name = server_name(self.replica_rank, self.name_suffix)
        server = (
            ray.remote(HFGenerationServer)
            .options(name=name, num_cpus=0, max_concurrency=self.max_concurrency)
            .remote(self.config, self.model_config, self.replica_rank)
        )
        await server.wake_up.remote()  # raises here if the model does not load
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"hf://{name}"

    def rollout_worker_use_gpu(self) -> bool:
        return False


class HFServerAdapter(BaseRollout):
    """The rollout object in each hybrid trainer worker: forwards weight syncs to its server."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, *args: Any, **kwargs: Any):
        super().__init__(config, model_config, device_mesh)
        rollout_world_size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.replica_rank, local_rank = divmod(rank, rollout_world_size)
        self.is_leader = local_rank == 0

    async def resume(self, tags: list[str]) -> None: ...

    async def release(self) -> None: ...

    async def update_weights(
        self, weights: Generator[tuple[str, torch.Tensor], None, None], wire_format: str = "named_tensors", **kwargs
    ) -> None:
        if wire_format != "named_tensors":
            raise ValueError(f"rollout.name=hf accepts wire_format 'named_tensors', got {wire_format!r}")
        if kwargs.get("peft_config") is not None:
            raise ValueError("rollout.name=hf does not serve LoRA adapters (set model.lora.merge=true)")
        server = ray.get_actor(server_name(self.replica_rank)) if self.is_leader else None
        bucket, bucket_bytes = {}, 0
        for name, tensor in weights:  # every rank iterates: gathering FSDP shards is collective
            if self.is_leader:
                bucket[name] = tensor.detach().to("cpu", copy=True)
                bucket_bytes += tensor.numel() * tensor.element_size()
                if bucket_bytes >= WEIGHT_BUCKET_BYTES:
                    await server.load_weights.remote(bucket)
                    bucket, bucket_bytes = {}, 0
        if self.is_leader:
            if bucket:
                await server.load_weights.remote(bucket)
            await server.finish_weight_update.remote(kwargs.get("global_steps"))
