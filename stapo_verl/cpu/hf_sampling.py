"""Batched sampling with HF transformers, shared by the ``hf`` rollout server and ``stapo-verl eval``.

Token-in, token-out like vLLM: prompts are token ids (left-padded into one ``generate`` call),
each response ends at its first EOS (included), and the raw model log-probabilities of the
sampled tokens can be returned (vLLM's default ``raw_logprobs``). With ``seeds``, each prompt
draws from its own random generator (as vLLM's per-request ``seed``), so a response does not
depend on which other prompts share its batch or in what order they came.
"""

from __future__ import annotations

import hashlib

import torch


def request_seed(*parts) -> int:
    """A request's sampling seed from what identifies it (rollout seed, step, prompt, repeat number):
    the same parts give the same seed in every process and run (Python's hash() of a str does not)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # < 2**63: a valid seed for torch and vLLM


def eos_and_pad_ids(model, tokenizer) -> tuple[set[int], int]:
    """The model's EOS ids (generation config, else the tokenizer's) and a pad id."""
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    return eos_ids, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)


def cut_at_eos(token_ids: list[int], eos_ids: set[int]) -> tuple[list[int], bool]:
    """Tokens up to and including the first EOS, and whether one was found."""
    for i, token in enumerate(token_ids):
        if token in eos_ids:
            return token_ids[: i + 1], True
    return token_ids, False


class SeededSampling:
    """A logits processor that samples each row with its own generator, for greedy ``generate``:
    the argmax of the tempered, top-p/top-k-truncated log-probabilities plus Gumbel noise is a
    sample from that distribution (the Gumbel-max trick). One noise draw per row and step, so a
    row's draws never depend on the other rows."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, top_k: int):
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        log_probs = (scores.float() / self.temperature).log_softmax(-1)
        if self.top_k > 0:
            kth = log_probs.topk(min(self.top_k, log_probs.shape[-1]), dim=-1).values[:, -1:]
            log_probs = log_probs.masked_fill(log_probs < kth, -torch.inf)
        if self.top_p < 1.0:  # keep the most probable tokens until their mass reaches top_p
            sorted_log_probs, order = log_probs.sort(dim=-1, descending=True)
            mass_before = sorted_log_probs.exp().cumsum(-1) - sorted_log_probs.exp()
            drop_sorted = mass_before >= self.top_p
            log_probs = log_probs.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), -torch.inf)
        uniform = torch.stack(
            [torch.rand(log_probs.shape[-1], generator=g, dtype=torch.float64) for g in self.generators]
        ).clamp_(min=1e-300)
        gumbel = -torch.log(-torch.log(uniform))
        return (log_probs.double() + gumbel.to(log_probs.device)).float()


@torch.no_grad()
def sample(
    model,
    prompts: list[list[int]],
    *,
    eos_ids: set[int],
    pad_id: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = -1,
    log_probs: bool = False,
    seeds: list[int] | None = None,
) -> list[tuple[list[int], bool, list[float] | None]]:
    """Per prompt: (response ids cut at EOS, stopped at EOS, log-probs or None). temperature 0 =
    greedy; ``seeds`` (one per prompt): each prompt sampled with its own generator."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, width - len(prompt) :] = 1
    if temperature <= 0:
        sampling = {"do_sample": False}
    elif seeds is not None:
        if len(seeds) != len(prompts):
            raise ValueError(f"sample: {len(seeds)} seeds for {len(prompts)} prompts")
        sampling = {"do_sample": False, "logits_processor": [SeededSampling(seeds, temperature, top_p, top_k)]}
    else:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k if top_k > 0 else 0}
    out = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        max_new_tokens=max_new_tokens,
        eos_token_id=sorted(eos_ids),
        pad_token_id=pad_id,
        return_dict_in_generate=True,
        output_logits=log_probs,
        **sampling,
    )
    new_tokens = out.sequences[:, width:]
    token_log_probs = None
    if log_probs:  # raw model distribution, before temperature / top-p; one step at a time (memory)
        token_log_probs = torch.cat(
            [step.float().log_softmax(-1).gather(-1, new_tokens[:, t, None]) for t, step in enumerate(out.logits)],
            dim=1,
        )
    results = []
    for row in range(len(prompts)):
        token_ids, stopped = cut_at_eos(new_tokens[row].tolist(), eos_ids)
        row_log_probs = token_log_probs[row, : len(token_ids)].tolist() if token_log_probs is not None else None
        results.append((token_ids, stopped, row_log_probs))
    return results
