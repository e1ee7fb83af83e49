"""Readable dumps of silenced tokens (JSONL), so a user can see what S2T silences.

One line per token: its group (``silenced``, or ``kept_candidate``: an S2T candidate that keeps
its gradient), decoded text, a little decoded context on each side, p, H and A. Bounded: at
most ``max_tokens`` lines per group and dump. ``stapo-verl report --dumps`` draws them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import torch


def token_records(
    response_ids: torch.Tensor,
    row_lengths: torch.Tensor,
    selected: torch.Tensor,
    log_prob: torch.Tensor,
    entropy: torch.Tensor,
    advantages: torch.Tensor,
    decode: Callable[[list[int]], str],
    context_tokens: int = 8,
    max_tokens: int = 200,
) -> list[dict]:
    """Records for the first ``max_tokens`` selected tokens.

    Args:
        response_ids, selected, log_prob, entropy, advantages: flat per response token
            (responses concatenated), shape (n,).
        row_lengths: response length of each row, summing to n.
        decode: token ids -> text (the tokenizer's ``decode``).
    """
    starts = torch.cat([torch.zeros(1, dtype=torch.long), row_lengths.long().cumsum(0)[:-1]])
    rows = torch.repeat_interleave(torch.arange(len(row_lengths)), row_lengths.long())
    records = []
    for index in torch.nonzero(selected.reshape(-1)).squeeze(1)[:max_tokens].tolist():
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


def read_token_dumps(paths: list[str]) -> dict[str, list[str]]:
    """group -> decoded tokens, from dump files or directories of ``silenced_tokens.rank*.jsonl``
    (lines without a group, from older dumps, are silenced tokens)."""
    from stapo_verl.runlog import read_jsonl

    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(f for f in os.listdir(path) if f.startswith("silenced_tokens.rank") and f.endswith(".jsonl"))
            if not found:
                raise FileNotFoundError(f"{path}: no silenced_tokens.rank*.jsonl (policy_loss.dump_dir writes them)")
            files += [os.path.join(path, f) for f in found]
        else:
            files.append(path)
    groups: dict[str, list[str]] = {}
    for path in files:
        for record in read_jsonl(path):
            groups.setdefault(record.get("group", "silenced"), []).append(record["token"])
    return groups


def append_jsonl(path: str, records: list[dict], **fields) -> None:
    """Append records (each with ``fields`` added, e.g. the update index) to a JSONL file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps({**fields, **record}, ensure_ascii=False) + "\n")
