"""The stability study's criteria, judged from a run's raw logs (``stapo-verl report --grid``).

The criteria and the rule for "STAPO prevents it" were fixed before the study's first run
(``examples/results/cpu_stability/README.md``); this module is them, as written there:

1. entropy collapse: ``actor/entropy`` below ``COLLAPSE_BELOW`` nats at ``CONSECUTIVE`` steps in a row;
2. entropy explosion: ``actor/entropy`` above ``EXPLODE_ABOVE`` x its step-1 value, ``CONSECUTIVE`` in a row;
3. accuracy collapse: held-out avg@k at T 1.0 / top-p 1.0 ``ACCURACY_DROP`` points or more below the
   best earlier validation of the run (its seed's validation before training included);
4. reward collapse: from step ``REWARD_FROM_STEP``, the mean ``critic/score/mean`` of the last
   ``REWARD_WINDOW`` steps ``REWARD_DROP`` or more below the best mean of any ``REWARD_WINDOW``
   consecutive steps that ended before.

Each criterion gives the step at which it is first met (the first of the consecutive steps for 1
and 2), or None. Pure functions over rows as ``runlog.read_metrics`` returns them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

COLLAPSE_BELOW = 0.1
EXPLODE_ABOVE = 1.5
CONSECUTIVE = 3
ACCURACY_DROP = 10.0  # points
REWARD_WINDOW = 5
REWARD_DROP = 0.3
REWARD_FROM_STEP = 15
CRITERIA = ("entropy_collapse", "entropy_explosion", "accuracy_collapse", "reward_collapse")
# a secondary reading added after the pilot, and labelled so wherever it is shown: at 4 prompts a
# step a 5-step reward mean has a standard deviation of ~0.16 from sampling alone, and both pilot
# runs met criterion 4 while their reward rose (examples/results/cpu_stability/README.md)
WITHOUT_REWARD = ("entropy_collapse", "entropy_explosion", "accuracy_collapse")
BASELINES = ("justrl", "grpo", "entropy20")
CONTROL = "random_control"  # stapo_verl.experiments.grid.CONTROLS
SEEDS_NEEDED = 3
MAJORITY = 2  # of SEEDS_NEEDED


def training_steps(rows: list[dict]) -> list[dict]:
    """The rows of training steps: verl logs a validation between steps in a row of its own."""
    return [row for row in rows if "actor/entropy" in row]


def first_of_consecutive(steps: list[int], met: list[bool], length: int) -> int | None:
    """The first step of the first ``length`` consecutive logged steps (no gap) that all meet."""
    for i in range(len(steps) - length + 1):
        window = steps[i : i + length]
        if all(met[i : i + length]) and window[-1] - window[0] == length - 1:
            return window[0]
    return None


def entropy_collapse(rows: list[dict]) -> int | None:
    train = training_steps(rows)
    return first_of_consecutive(
        [r["step"] for r in train], [r["actor/entropy"] < COLLAPSE_BELOW for r in train], CONSECUTIVE
    )


def entropy_explosion(rows: list[dict]) -> int | None:
    train = training_steps(rows)
    first = next((r["actor/entropy"] for r in train if r["step"] == 1), None)
    if first is None:
        return None
    return first_of_consecutive(
        [r["step"] for r in train], [r["actor/entropy"] > EXPLODE_ABOVE * first for r in train], CONSECUTIVE
    )


def accuracy_collapse(accuracy: dict[int, float]) -> int | None:
    """``accuracy``: step -> held-out accuracy in percent (step 0: before training)."""
    best = None
    for step in sorted(accuracy):
        if best is not None and step > 0 and accuracy[step] <= best - ACCURACY_DROP:
            return step
        best = accuracy[step] if best is None else max(best, accuracy[step])
    return None


def reward_collapse(rows: list[dict]) -> int | None:
    train = [r for r in rows if "critic/score/mean" in r]
    steps = [r["step"] for r in train]
    means = [
        float(np.mean([r["critic/score/mean"] for r in train[i - REWARD_WINDOW + 1 : i + 1]]))
        for i in range(REWARD_WINDOW - 1, len(train))
    ]  # means[j]: the window ending at train[j + REWARD_WINDOW - 1]
    for j in range(1, len(means)):
        step = steps[j + REWARD_WINDOW - 1]
        if step >= REWARD_FROM_STEP and means[j] <= max(means[:j]) - REWARD_DROP:
            return step
    return None


def judge(rows: list[dict], accuracy: dict[int, float]) -> dict:
    """One run: the step at which each criterion is first met (None: never), whether any was."""
    steps: dict[str, int | None] = {
        "entropy_collapse": entropy_collapse(rows),
        "entropy_explosion": entropy_explosion(rows),
        "accuracy_collapse": accuracy_collapse(accuracy),
        "reward_collapse": reward_collapse(rows),
    }
    met = [s for s in steps.values() if s is not None]
    return {"steps": steps, "unstable": bool(met), "first": min(met) if met else None}


def prevents(
    unstable: Callable[[str], list[bool]], baseline: str, target: str = "stapo", control: str = CONTROL
) -> dict:
    """The README's rule for "STAPO prevents <baseline>'s instability". ``unstable(method)``: one
    bool per finished seed of that method. Counts need ``SEEDS_NEEDED`` finished seeds per arm."""
    counts = {m: unstable(m) for m in (baseline, target, control)}
    text = ", ".join(f"{m} unstable in {sum(v)} of {len(v)} seeds" if v else f"{m}: no run" for m, v in counts.items())
    base, stapo, ctrl = counts[baseline], counts[target], counts[control]
    if len(base) < SEEDS_NEEDED or len(stapo) < SEEDS_NEEDED:
        return {"verdict": "not decidable: fewer than 3 seeds finished", "numbers": text}
    if sum(base) < MAJORITY:
        return {"verdict": f"not decidable: {baseline} is unstable in fewer than 2 seeds", "numbers": text}
    if sum(stapo) >= MAJORITY:
        return {"verdict": "contradicted", "numbers": text}
    if len(ctrl) < SEEDS_NEEDED:
        return {
            "verdict": "silencing prevents it; S2T against the random control not decidable (fewer than 3 "
            "control seeds)",
            "numbers": text,
        }
    if sum(ctrl) >= MAJORITY:
        return {"verdict": "supported", "numbers": text}
    return {"verdict": "silencing prevents it, not S2T's choice of tokens", "numbers": text}
