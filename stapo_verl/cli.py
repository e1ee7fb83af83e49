"""Command line.

    stapo-verl check                      verify that `import verl` loads stapo-verl
    stapo-verl config-path                print the Hydra config directory (for --config-path)
    stapo-verl train METHOD [MODEL] [OVERRIDES...] [--dry-run]
                                          run verl's main_ppo with algorithm=METHOD model=MODEL
    stapo-verl demo [METHOD] [--steps N] [--dir DIR] [OVERRIDES...]
                                          the whole loop on CPU with the tiny preset (minutes)
    stapo-verl eval MODEL_DIR --out DIR [...]   a checkpoint on the six benchmarks (-h for options)
    stapo-verl report EVAL_DIR... [--logs LOG...] --out DIR   tables, error bars, plots
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time

from stapo_verl.recipe import CONFIG_DIR, CONFIG_NAME, CPU_MODELS, METHODS, MODELS, TINY_DEFAULT_DIR

DEMO_DIR = os.path.join("outputs", "stapo-verl-demo")


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


def train_env(model: str, env: dict | None = None) -> dict:
    """The environment for main_ppo: the CPU presets run verl on the ``cpu`` platform."""
    env = dict(os.environ if env is None else env)
    if model in CPU_MODELS:
        env["VERL_PLATFORM"] = "cpu"
        # verl's `file` logger writes <root>/<project>/<experiment>.jsonl (Ray workers inherit this)
        run_dir = env.get("STAPO_RUN_DIR", os.path.join("outputs", "stapo-verl"))
        env.setdefault("VERL_FILE_LOGGER_ROOT", os.path.abspath(os.path.join(run_dir, "logs")))
    return env


def demo(method: str, steps: int, out_dir: str, overrides: list[str]) -> int:
    """Build the tiny model and data (once), train ``steps`` steps on CPU, print a metric table."""
    from stapo_verl.runlog import format_summary, read_metrics
    from stapo_verl.tiny import prepare_tiny

    out_dir = os.path.abspath(out_dir)
    tiny_dir = os.path.join(out_dir, "tiny")
    started = time.time()
    print(f"stapo-verl demo: tiny model and data in {tiny_dir}", flush=True)
    built = prepare_tiny(tiny_dir)
    print(f"  {built['parameters']:,} parameters, SFT loss {built['sft_final_loss']:.3f}", flush=True)
    # a fresh run each time (verl would resume from the last demo's checkpoint); overridable
    command = train_command(
        method, "tiny_cpu", [f"trainer.total_training_steps={steps}", "trainer.resume_mode=disable", *overrides]
    )
    env = train_env("tiny_cpu", {**os.environ, "STAPO_TINY_DIR": tiny_dir, "STAPO_RUN_DIR": out_dir})
    log_path = os.path.join(out_dir, "logs", "stapo", f"{method}_tiny_cpu.jsonl")
    print(f"  logs: {log_path}\n  checkpoints: {os.path.join(out_dir, 'checkpoints')}", flush=True)
    print(shlex.join(command), flush=True)
    returncode = subprocess.call(command, env=env)
    if returncode != 0:
        print(f"stapo-verl demo: main_ppo failed (exit {returncode}); its output is above", file=sys.stderr)
        return returncode
    rows = read_metrics(log_path)
    print(f"\nstapo-verl demo: {method}, {steps} steps on CPU in {time.time() - started:.0f} s")
    if not any("actor/pg_loss" in row for row in rows):
        print(f"stapo-verl demo: no training step was logged in {log_path}", file=sys.stderr)
        return 1
    print(format_summary(rows))
    return 0


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
    demo_parser = commands.add_parser("demo", help="train on CPU with the tiny preset and print per-step metrics")
    demo_parser.add_argument("method", nargs="?", default="stapo", help=f"one of: {', '.join(METHODS)}")
    demo_parser.add_argument("--steps", type=int, default=3, help="training steps (default 3)")
    demo_parser.add_argument("--dir", default=DEMO_DIR, help=f"output directory (default {DEMO_DIR})")
    demo_parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (key=value), passed through")
    commands.add_parser("eval", help="evaluate a checkpoint on the six benchmarks", add_help=False)
    commands.add_parser("report", help="tables with error bars and paired tests, training plots", add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"]:
        from stapo_verl import eval as evaluation

        return evaluation.main(argv[1:])
    if argv[:1] == ["report"]:
        from stapo_verl import report

        return report.main(argv[1:])
    if argv[:1] == ["demo"]:  # options and overrides in any order
        args = demo_parser.parse_intermixed_args(argv[1:])
        if "=" in args.method:  # `stapo-verl demo key=value`: an override, not a method
            args.overrides, args.method = [args.method, *args.overrides], "stapo"
        if args.steps < 1:
            raise SystemExit(f"stapo-verl demo: --steps must be >= 1, got {args.steps}")
        return demo(args.method, args.steps, args.dir, args.overrides)
    dry_run = "--dry-run" in argv  # taken out by hand: REMAINDER would pass it on to main_ppo
    args = parser.parse_args([a for a in argv if a != "--dry-run"])
    if args.command == "check":
        return check()
    if args.command == "config-path":
        print(CONFIG_DIR)
        return 0
    command = train_command(args.method, args.model, args.overrides)
    print(shlex.join(command), flush=True)
    if dry_run:
        return 0
    if args.model in CPU_MODELS:  # the tiny model and data are built locally, once
        from stapo_verl.tiny import prepare_tiny

        prepare_tiny(os.environ.get("STAPO_TINY_DIR", TINY_DEFAULT_DIR))
    return subprocess.call(command, env=train_env(args.model))
