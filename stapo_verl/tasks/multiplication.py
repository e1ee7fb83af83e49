"""The smollm2_135m preset's own task (the demo's): single-digit products with a worked example.

``What is a * b?`` (a, b in 2..9) asked in chat form with one worked example as an earlier turn,
so that SmolLM2-135M-Instruct answers in ``\\boxed{}`` and is right about a quarter of the time
at temperature 1: groups of rollouts get mixed rewards and GRPO advantages are not all zero
(``benchmarks/smollm2_task.py`` measures it).
"""

from __future__ import annotations

TASK_DATA_SOURCE = "smollm2_multiplication"
INSTRUCTION = " Put your final answer within \\boxed{}."
WORKED_EXAMPLE = [
    {"role": "user", "content": "What is 2 * 5?" + INSTRUCTION},
    # The second sentence invites free text after the answer: correct responses then carry rare
    # tokens that earn a reward without affecting it, the S2T candidates (about 11 per 1000 tokens).
    {
        "role": "assistant",
        "content": "2 * 5 = 10. The answer is \\boxed{10}. Multiplication is repeated addition, so five twos make ten.",
    },
]


def prompt(a: int, b: int) -> list[dict]:
    return [*WORKED_EXAMPLE, {"role": "user", "content": f"What is {a} * {b}?{INSTRUCTION}"}]


def problem_rows(count: int, seed: int, split: str) -> list[dict]:
    """verl RL rows (the layout ``python -m stapo_verl.tasks.data`` writes) of single-digit products."""
    import random

    rng = random.Random(f"{seed}-{split}")
    rows = []
    for index in range(count):
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        rows.append(
            {
                "data_source": TASK_DATA_SOURCE,
                "prompt": prompt(a, b),
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(a * b)},
                "extra_info": {"split": split, "index": index, "id": f"{TASK_DATA_SOURCE}-{split}-{index}"},
            }
        )
    return rows
