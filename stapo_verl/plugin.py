"""verl plugin entry point: ``import verl`` imports this module in every process.

Importing :mod:`stapo_verl.losses` registers the ``stapo`` and ``entropy20`` policy losses;
importing :mod:`stapo_verl.verl_hook` installs the mini-batch token-mask hook as the actor's inner
worker class; :mod:`stapo_verl.cpu` adds the ``cpu`` platform and the ``hf`` rollout
backend. verl logs a plugin's import error at DEBUG level only, so a failure is logged at
ERROR level here and kept in :mod:`stapo_verl.install_state`, whose ``require_installed``
re-raises it wherever a STAPO config is built (driver and workers) and in ``stapo-verl check``.
"""

from __future__ import annotations

import logging

from stapo_verl import install_state

logger = logging.getLogger("stapo_verl")

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
    install_state.INSTALL_ERROR = exc
    logger.error("stapo-verl: failed to install into verl: %r", exc)
