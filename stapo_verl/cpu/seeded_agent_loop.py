"""verl's single-turn agent loop with a seed in every sampling request (the CPU presets' default).

verl 0.9.1 seeds vLLM requests only under ``rollout.full_determinism``, and then with the same
seed for every request of a replica (a prompt's n rollouts would come out identical). This agent
loop gives each request its own seed, made from the rollout seed, the prompt's messages and how
many requests with that prompt this agent-loop worker has sent before (so the n rollouts of a
prompt differ, and a prompt seen again in a later epoch gets new seeds). vLLM samples a seeded
request with its own generator: the same seed gives the same responses whatever the batching,
so the runs of a comparison see the same samples at step 1. Greedy requests (validation) are
left alone. The count lives in the agent-loop worker, so the seeds are reproducible with one
worker (``rollout.agent.num_workers=1``, the CPU presets' setting).

A data row may carry its own decoding in ``extra_info["sampling"]`` (``temperature``, ``top_p``):
a validation file then holds the same problems under two decodings (the paper's T 1.0 / top-p 1.0
and T 0.7 / top-p 0.9) told apart by their ``data_source``, and one validation pass measures both.
"""

from __future__ import annotations

import verl  # noqa: F401  isort: skip  (verl first, as every stapo_verl module that uses it)
import collections
import json
from typing import Any

from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

from stapo_verl.cpu.hf_sampling import request_seed

ROW_SAMPLING_KEYS = ("temperature", "top_p")


def row_sampling(extra_info: Any) -> dict[str, float]:
    """A row's own decoding (``extra_info["sampling"]``), checked: only temperature and top_p."""
    sampling = extra_info.get("sampling") if isinstance(extra_info, dict) else None
    if not sampling:
        return {}
    unknown = sorted(set(sampling) - set(ROW_SAMPLING_KEYS))
    if unknown:
        raise ValueError(f"extra_info.sampling accepts {list(ROW_SAMPLING_KEYS)}, got {unknown}")
    return {key: float(value) for key, value in sampling.items() if value is not None}


class SeededSingleTurnAgentLoop(SingleTurnAgentLoop):
    repeats: collections.Counter = collections.Counter()  # per worker process: requests per prompt

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> Any:
        own = row_sampling(kwargs.get("extra_info"))
        sampling_params = {**sampling_params, **own}
        if sampling_params.get("temperature", 1.0) > 0 and "seed" not in sampling_params:
            prompt = json.dumps([dict(message) for message in kwargs["raw_prompt"]], sort_keys=True, default=str)
            if own:  # the same prompt under its own decoding: its repeats are counted apart
                prompt = json.dumps([prompt, own], sort_keys=True)
            repeat = SeededSingleTurnAgentLoop.repeats[prompt]
            SeededSingleTurnAgentLoop.repeats[prompt] += 1
            # the repeat-th request (from 0) with this prompt (its messages as JSON)
            sampling_params = {**sampling_params, "seed": request_seed(self.rollout_config.seed, repeat, prompt)}
        return await super().run(sampling_params, **kwargs)
