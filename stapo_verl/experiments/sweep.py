"""The paper's ablation grids (docs/method.md section 6) as lists of ``stapo-verl train`` runs.

    stapo-verl sweep selection [--model M] [--seeds 0 1 2] [--run] [OVERRIDES...]
        candidate selection (low_entropy, high_entropy, random, all) x q in {0.25, 0.5, 0.75, 0.9}
    stapo-verl sweep tau_prob  [...]
        tau_p in {2e-4, 2e-3, 2e-2, 2e-1} (S2T, q = 0.75)

Prints the runs (one ``stapo-verl train`` command each); ``--run`` runs them one after another.
Every run is ``algorithm=stapo`` plus ``ablation=candidates_<selection>`` with q, tau_p and the
seed as overrides; its experiment name (``stapo_<model>_<label>_seed<seed>``) carries all of
them, so runs never collide. Label each run's eval with ``--method <label> --run-seed <seed>``
(the sweep prints both); the report's ablation table reads the label back (:func:`parse_label`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stapo_verl.method.s2t import CANDIDATE_SELECTIONS

POLICY_LOSS = "actor_rollout_ref.actor.policy_loss"
QUANTILES = (0.25, 0.5, 0.75, 0.9)
TAU_PROBS = (2e-4, 2e-3, 2e-2, 2e-1)
DEFAULT_QUANTILE, DEFAULT_TAU_PROB = 0.75, 2e-3
GRIDS = ("selection", "tau_prob")
LABEL = re.compile(r"^(?P<selection>" + "|".join(CANDIDATE_SELECTIONS) + r")_q(?P<q>[0-9.]+|na)_tp(?P<tau>[0-9.e+-]+)$")


@dataclass(frozen=True)
class SweepRun:
    selection: str
    entropy_quantile: float | None  # None: `all` silences every candidate, q plays no part
    tau_prob: float
    seed: int

    def label(self) -> str:
        """The run's ablation cell, e.g. ``high_entropy_q0.5_tp0.002`` (``eval --method``)."""
        q = "na" if self.entropy_quantile is None else f"{self.entropy_quantile:g}"
        return f"{self.selection}_q{q}_tp{self.tau_prob:g}"

    def name(self, model: str) -> str:
        return f"stapo_{model}_{self.label()}_seed{self.seed}"

    def overrides(self, model: str) -> list[str]:
        q = DEFAULT_QUANTILE if self.entropy_quantile is None else self.entropy_quantile
        return [
            f"ablation=candidates_{self.selection}",
            f"{POLICY_LOSS}.entropy_quantile={q}",
            f"{POLICY_LOSS}.tau_prob={self.tau_prob:g}",
            f"actor_rollout_ref.rollout.seed={self.seed}",
            f"data.seed={self.seed}",
            f"trainer.experiment_name={self.name(model)}",
        ]


def grid_runs(grid: str, seeds: list[int]) -> list[SweepRun]:
    """The runs of one grid, seeds innermost."""
    if grid == "selection":
        cells = [
            (s, None if s == "all" else q, DEFAULT_TAU_PROB)
            for s in CANDIDATE_SELECTIONS
            for q in ([None] if s == "all" else QUANTILES)
        ]
    elif grid == "tau_prob":
        cells = [("low_entropy", DEFAULT_QUANTILE, tau) for tau in TAU_PROBS]
    else:
        raise ValueError(f"sweep grid must be one of {list(GRIDS)}, got {grid!r}")
    if not seeds or any(seed < 0 for seed in seeds):
        raise ValueError(f"sweep --seeds must be one or more integers >= 0, got {seeds}")
    return [SweepRun(s, q, tau, seed) for s, q, tau in cells for seed in seeds]


def parse_label(label: str) -> dict | None:
    """The ablation values of a :meth:`SweepRun.label` (None for any other method label)."""
    match = LABEL.match(label)
    if match is None:
        return None
    q = match["q"]
    return {
        "selection": match["selection"],
        "entropy_quantile": None if q == "na" else float(q),
        "tau_prob": float(match["tau"]),
    }
