"""Launching runs: composing and checking a run's config and starting ``main_ppo`` (``launch``),
the comparison grid (``grid``), the paper's ablation sweeps (``sweep``).
"""
