"""Command line.

    stapo-verl check                      verify that `import verl` loads stapo-verl
    stapo-verl config-path                print the Hydra config directory (for --config-path)
    stapo-verl train METHOD [MODEL] [OVERRIDES...] [--dry-run]
                                          run verl's main_ppo with algorithm=METHOD model=MODEL
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

from stapo_verl.recipe import CONFIG_DIR, CONFIG_NAME, METHODS, MODELS


def check() -> int:
    """Import verl the way a worker does and report whether stapo-verl is installed into it."""
    import verl  # loads the plugin through the verl.plugins entry point

    from stapo_verl.plugin import require_installed

    require_installed()
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.workers.engine_workers import ActorRolloutRefWorker

    worker = ActorRolloutRefWorker.actor_worker_cls
    print(
        f"verl {verl.__version__}: policy losses stapo -> {get_policy_loss_fn('stapo').__name__}, "
        f"entropy20 -> {get_policy_loss_fn('entropy20').__name__}; "
        f"actor worker {worker.__module__}.{worker.__qualname__}"
    )
    print("stapo-verl OK")
    return 0


def train_command(method: str, model: str, overrides: list[str]) -> list[str]:
    """The main_ppo command line for one method and model preset."""
    if method not in METHODS:
        raise SystemExit(f"stapo-verl: unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if model not in MODELS:
        raise SystemExit(f"stapo-verl: unknown model {model!r}; valid models: {', '.join(MODELS)}")
    return [
        sys.executable, "-m", "verl.trainer.main_ppo",
        "--config-path", CONFIG_DIR, "--config-name", CONFIG_NAME,
        f"algorithm={method}", f"model={model}", *overrides,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stapo-verl", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="verify that `import verl` registers the STAPO losses and worker hook")
    commands.add_parser("config-path", help="print the directory of the Hydra configs")
    train = commands.add_parser("train", help="run verl's main_ppo with the paper's recipe")
    train.add_argument("method", help=f"one of: {', '.join(METHODS)}")
    train.add_argument("model", nargs="?", default=MODELS[0], help=f"one of: {', '.join(MODELS)}")
    train.add_argument(
        "overrides", nargs=argparse.REMAINDER, help="extra Hydra overrides (and main_ppo flags), passed through"
    )
    train.add_argument("--dry-run", action="store_true", help="print the command, do not run it (anywhere)")
    argv = list(sys.argv[1:] if argv is None else argv)
    dry_run = "--dry-run" in argv  # taken out by hand: REMAINDER would pass it on to main_ppo
    args = parser.parse_args([a for a in argv if a != "--dry-run"])
    if args.command == "check":
        return check()
    if args.command == "config-path":
        print(CONFIG_DIR)
        return 0
    command = train_command(args.method, args.model, args.overrides)
    print(shlex.join(command), flush=True)
    return 0 if dry_run else subprocess.call(command)
