"""Command line: ``stapo-verl check`` (or ``python -m stapo_verl check``)."""

from __future__ import annotations

import argparse


def check() -> int:
    """Import verl the way a worker does and report whether stapo-verl is installed into it."""
    import verl  # loads the plugin through the verl.plugins entry point

    from stapo_verl.plugin import require_installed

    require_installed()
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.workers.engine_workers import ActorRolloutRefWorker

    worker = ActorRolloutRefWorker.actor_worker_cls
    print(f"verl {verl.__version__}: policy losses stapo -> {get_policy_loss_fn('stapo').__name__}, "
          f"entropy20 -> {get_policy_loss_fn('entropy20').__name__}; actor worker {worker.__module__}.{worker.__qualname__}")
    print("stapo-verl OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stapo-verl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="verify that `import verl` registers the STAPO losses and worker hook")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check()
    return 2
