"""The CPU comparison's task: sums of two two-digit numbers, with a held-out set by problem identity.

SmolLM2-135M-Instruct is asked ``What is a + b?`` in chat form with one worked example of the same
family as an earlier turn (as the smollm2_135m preset's multiplication task), and answers in
``\\boxed{}``; the DAPO rule reward grades it. Chosen among candidate families by measuring the base
model (``benchmarks/comparison_task.py``, ``benchmarks/results/comparison_task.json``): of the
families whose pass rate at temperature 1 leaves room to rise and to fall (10-60%), the one with
the most distinct problems (4,095).

Problem identity: ``a + b`` and ``b + a`` are one problem. Every problem of the family is listed,
and a fixed share of them (by a hash of the problem, independent of any seed) is held out: no
held-out problem, in either order, is ever a training prompt. The held-out file holds each
held-out problem twice, once per decoding of the paper (``extra_info.sampling``: T 1.0 / top-p
1.0 "aligned" and T 0.7 / top-p 0.9 "default"), told apart by ``data_source``, so that one
validation pass of verl measures both (``stapo_verl/cpu/seeded_agent_loop.py``).
"""

from __future__ import annotations

import hashlib

from stapo_verl.tasks.multiplication import INSTRUCTION

TASK = "smollm2_sums"
FILES_SUBDIR = "sums"  # under the smollm2_135m preset's data/ (stapo_verl.cpu.smollm2.prepare_smollm2)
FIRST = (10, 99)  # the first operand's range (inclusive)
SECOND = (10, 99)  # the second operand's range
WORKED_EXAMPLE = (23, 45)
EXPLANATION = "Addition puts the two amounts together into one total."
HELD_OUT = 200  # held-out problems (each validation: 200 x 2 decodings x avg@k samples)
# the paper's two decodings (stapo_verl.analysis.eval.SETTINGS): name -> (temperature, top_p)
DECODINGS = {"aligned": (1.0, 1.0), "default": (0.7, 0.9)}


def spec() -> dict:
    """What the task's files depend on (the preset remakes them when it changes)."""
    return {
        "task": TASK,
        "first": list(FIRST),
        "second": list(SECOND),
        "held_out": HELD_OUT,
        "example": list(WORKED_EXAMPLE),
        "decodings": {k: list(v) for k, v in DECODINGS.items()},
    }


def data_source(decoding: str) -> str:
    """The held-out rows' data_source per decoding: verl logs ``val-core/<it>/acc/mean@<k>``."""
    return f"{TASK}-{decoding}"


def problems() -> list[tuple[int, int]]:
    """Every distinct problem (a <= b as the identity; asked in the order drawn), sorted."""
    pairs = {(a, b) for a in range(FIRST[0], FIRST[1] + 1) for b in range(SECOND[0], SECOND[1] + 1)}
    return sorted({tuple(sorted(pair)) for pair in pairs})


def _rank(problem: tuple[int, int]) -> str:
    return hashlib.sha256(f"{TASK}/{problem[0]}+{problem[1]}".encode()).hexdigest()


def split() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(training problems, held-out problems): the HELD_OUT problems first by hash are held out."""
    ranked = sorted(problems(), key=_rank)
    return sorted(ranked[HELD_OUT:]), sorted(ranked[:HELD_OUT])


def prompt(a: int, b: int) -> list[dict]:
    x, y = WORKED_EXAMPLE
    return [
        {"role": "user", "content": f"What is {x} + {y}?{INSTRUCTION}"},
        {"role": "assistant", "content": f"{x} + {y} = {x + y}. The answer is \\boxed{{{x + y}}}. {EXPLANATION}"},
        {"role": "user", "content": f"What is {a} + {b}?{INSTRUCTION}"},
    ]


def asked(problem: tuple[int, int]) -> tuple[int, int]:
    """The order a problem is asked in: fixed per problem (by its hash), either way round."""
    return problem if int(_rank(problem), 16) % 2 else problem[::-1]


def _row(a: int, b: int, split_name: str, index: int, source: str, sampling=None) -> dict:
    extra = {"split": split_name, "index": index, "id": f"{TASK}-{min(a, b)}+{max(a, b)}"}
    if sampling is not None:
        extra["sampling"] = sampling
    return {
        "data_source": source,
        "prompt": prompt(a, b),
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(a + b)},
        "extra_info": extra,
    }


def training_rows() -> list[dict]:
    """Every training problem once, in a fixed order (verl's dataloader shuffles with data.seed)."""
    train, _ = split()
    return [_row(*asked(p), "train", i, TASK) for i, p in enumerate(train)]


def held_out_rows() -> list[dict]:
    """Each held-out problem once per decoding (data_source and extra_info.sampling say which)."""
    _, held_out = split()
    rows = []
    for decoding, (temperature, top_p) in DECODINGS.items():
        sampling = {"temperature": temperature, "top_p": top_p}
        rows += [_row(*asked(p), "held_out", i, data_source(decoding), sampling) for i, p in enumerate(held_out)]
    return rows
