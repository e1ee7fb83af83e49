"""Readable dumps of silenced tokens (JSONL), so a user can see what S2T silences.

One line per silenced token: its decoded text, a little decoded context on each side, p, H and
A. Bounded: at most ``max_tokens`` lines per dump.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import torch


def silenced_token_records(
    response_ids: torch.Tensor,
    row_lengths: torch.Tensor,
    silenced: torch.Tensor,
    log_prob: torch.Tensor,
    entropy: torch.Tensor,
    advantages: torch.Tensor,
    decode: Callable[[list[int]], str],
    context_tokens: int = 8,
    max_tokens: int = 200,
) -> list[dict]:
    """Records for the first ``max_tokens`` silenced tokens.

    Args:
        response_ids, silenced, log_prob, entropy, advantages: flat per response token
            (responses concatenated), shape (n,).
        row_lengths: response length of each row, summing to n.
        decode: token ids -> text (the tokenizer's ``decode``).
    """
    starts = torch.cat([torch.zeros(1, dtype=torch.long), row_lengths.long().cumsum(0)[:-1]])
    rows = torch.repeat_interleave(torch.arange(len(row_lengths)), row_lengths.long())
    records = []
    for index in torch.nonzero(silenced.reshape(-1)).squeeze(1)[:max_tokens].tolist():
        row = int(rows[index])
        start, end = int(starts[row]), int(starts[row] + row_lengths[row])
        ids = response_ids[max(start, index - context_tokens) : min(end, index + context_tokens + 1)].tolist()
        offset = index - max(start, index - context_tokens)
        records.append(
            {
                "row": row,
                "position": index - start,
                "token": decode([int(response_ids[index])]),
                "before": decode(ids[:offset]),
                "after": decode(ids[offset + 1 :]),
                "prob": float(torch.exp(log_prob[index].double())),
                "entropy": float(entropy[index]),
                "advantage": float(advantages[index]),
            }
        )
    return records


def append_jsonl(path: str, records: list[dict], **fields) -> None:
    """Append records (each with ``fields`` added, e.g. the update index) to a JSONL file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps({**fields, **record}, ensure_ascii=False) + "\n")
