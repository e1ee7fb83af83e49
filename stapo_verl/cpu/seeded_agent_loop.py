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
"""

from __future__ import annotations

import verl  # noqa: F401  isort: skip  (verl first, as every stapo_verl module that uses it)
import collections
import json
from typing import Any

from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

from stapo_verl.hf_sampling import request_seed

class SeededSingleTurnAgentLoop(SingleTurnAgentLoop):
    repeats: collections.Counter = collections.Counter()  # per worker process: requests per prompt

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> Any:
        if sampling_params.get("temperature", 1.0) > 0 and "seed" not in sampling_params:
            prompt = json.dumps([dict(message) for message in kwargs["raw_prompt"]], sort_keys=True, default=str)
            repeat = SeededSingleTurnAgentLoop.repeats[prompt]
            SeededSingleTurnAgentLoop.repeats[prompt] += 1
            # the repeat-th request (from 0) with this prompt (its messages as JSON)
            sampling_params = {**sampling_params, "seed": request_seed(self.rollout_config.seed, repeat, prompt)}
        return await super().run(sampling_params, **kwargs)

