"""verl plugin entry point: ``import verl`` imports this module in every process.

Importing :mod:`stapo_verl.losses` registers the ``stapo`` and ``entropy20`` policy losses;
importing :mod:`stapo_verl.verl_hook` installs the mini-batch token-mask hook as the actor's inner
worker class; :mod:`stapo_verl.cpu` adds the ``cpu`` platform and the ``hf`` rollout
backend. verl logs a plugin's import error at DEBUG level only, so a failure is logged at
ERROR level here, and :func:`require_installed` re-raises it wherever a STAPO config is built
(driver and workers) and in ``stapo-verl check``.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("stapo_verl")

INSTALL_ERROR: BaseException | None = None

try:
    # Plain imports: when one of these modules is what triggered `import verl`, it is still
    # being executed and completes its own registration once verl's import returns.
    # The CPU platform first: verl resolves its platform on first use, and the imports below
    # already use it when VERL_PLATFORM=cpu.
    import stapo_verl.cpu.platform  # noqa: F401
    import stapo_verl.losses  # noqa: F401
    import stapo_verl.verl_hook  # noqa: F401
    from stapo_verl.cpu.registration import register as register_cpu_backends

    register_cpu_backends()
except Exception as exc:  # keep `import verl` working, but make the failure visible
    INSTALL_ERROR = exc
    logger.error("stapo-verl: failed to install into verl: %r", exc)


def require_installed() -> None:
    """Raise if stapo-verl is not installed into verl (with the original error as the cause)."""
    if INSTALL_ERROR is not None:
        raise RuntimeError(f"stapo-verl failed to install into verl: {INSTALL_ERROR!r}") from INSTALL_ERROR
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY
    from verl.workers import engine_workers

    from stapo_verl.verl_hook import TokenMaskTrainingWorker

    missing = [name for name in ("stapo", "entropy20") if name not in POLICY_LOSS_REGISTRY]
    worker = engine_workers.ActorRolloutRefWorker.actor_worker_cls
    if missing or worker is not TokenMaskTrainingWorker:
        raise RuntimeError(
            f"stapo-verl is not installed into verl (unregistered losses: {missing}, actor worker: "
            f"{worker.__qualname__}). Is the package installed and VERL_USE_EXTERNAL_PLUGINS not 'none'?"
        )
