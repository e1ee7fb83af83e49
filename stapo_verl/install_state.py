"""Whether :mod:`stapo_verl.plugin` installed stapo-verl into verl.

It imports only :mod:`stapo_verl.compat` of the package, so :mod:`stapo_verl.method.config` can check
the install without an import cycle (config -> plugin -> integration.worker -> config).
"""

from __future__ import annotations

INSTALL_ERROR: BaseException | None = None  # set by stapo_verl.plugin when its imports fail
HOOK = "stapo_verl.integration.worker.ActorWorkerChoice"  # what actor_worker_cls holds once installed


def require_installed() -> None:
    """Raise if stapo-verl is not installed into verl (with the original error as the cause)."""
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY
    from verl.workers import engine_workers  # noqa: F401  (its first import installs the worker hook)

    from stapo_verl import compat

    if INSTALL_ERROR is not None:
        raise RuntimeError(f"stapo-verl failed to install into verl: {INSTALL_ERROR!r}") from INSTALL_ERROR

    missing = [name for name in ("stapo", "entropy20") if name not in POLICY_LOSS_REGISTRY]
    hook = type(compat.actor_worker_cls_attribute())
    if missing or f"{hook.__module__}.{hook.__qualname__}" != HOOK:
        raise RuntimeError(
            f"stapo-verl is not installed into verl (unregistered losses: {missing}, actor worker: "
            f"{compat.actor_worker_cls_attribute()!r}). Is the package installed and VERL_USE_EXTERNAL_PLUGINS "
            "not 'none'?"
        )
