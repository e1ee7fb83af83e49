"""Whether :mod:`stapo_verl.plugin` installed stapo-verl into verl.

It imports no other stapo_verl module, so :mod:`stapo_verl.method.config` can check the install without
an import cycle (config -> plugin -> integration.worker -> config).
"""

from __future__ import annotations

INSTALL_ERROR: BaseException | None = None  # set by stapo_verl.plugin when its imports fail
HOOK_WORKER = "stapo_verl.integration.worker.TokenMaskTrainingWorker"


def require_installed() -> None:
    """Raise if stapo-verl is not installed into verl (with the original error as the cause)."""
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY
    from verl.workers import engine_workers  # its first import installs the worker hook (stapo_verl.plugin)

    if INSTALL_ERROR is not None:
        raise RuntimeError(f"stapo-verl failed to install into verl: {INSTALL_ERROR!r}") from INSTALL_ERROR

    missing = [name for name in ("stapo", "entropy20") if name not in POLICY_LOSS_REGISTRY]
    worker = engine_workers.ActorRolloutRefWorker.actor_worker_cls
    if missing or f"{worker.__module__}.{worker.__qualname__}" != HOOK_WORKER:
        raise RuntimeError(
            f"stapo-verl is not installed into verl (unregistered losses: {missing}, actor worker: "
            f"{worker.__qualname__}). Is the package installed and VERL_USE_EXTERNAL_PLUGINS not 'none'?"
        )
