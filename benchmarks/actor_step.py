"""The actor update of one training step on verl's FSDP engine: GRPO vs STAPO (both sources) vs
20-Entropy (both scopes).

The actor worker is built as verl's ``ActorRolloutRefWorker.init_model`` builds it (our
``TokenMaskTrainingWorker`` on verl's FSDP2 engine, verl's ``ppo_loss``, remove-padding), in this
process, and fed what verl's v1 trainer sends to ``update_actor``: a step's batch (several PPO
mini-batches, ``train_mini_batch``), GRPO groups of 8 responses to one prompt with Bernoulli
rewards (each group its own success rate) and group z-score advantages, old log-probs and
entropy from verl's own log-prob pass. The variants run interleaved in one process on one worker
(the loss function is switched between steps); reported per variant: median wall time of the
step's update and its peak memory, their ratios to GRPO, and the time spent in the ``current``
statistics pass (where STAPO's extra cost goes); ``--profile`` then profiles that pass.

    python benchmarks/actor_step.py          # GPU: Qwen3-1.7B-shaped random bf16 model, 4 x 16 x (512 + 1536)
    python benchmarks/actor_step.py --tiny   # anywhere (CPU: VERL_PLATFORM=cpu): the plumbing only
    python benchmarks/actor_step.py --smollm2  # CPU: SmolLM2-135M (the real-model preset), fp32
    python benchmarks/actor_step.py --smollm2 --bf16  # ... in the presets' bf16 (stapo.cpu_precision=bf16)

On CPU, memory is the peak resident set size during the call (sampled every 5 ms), minus the
size before it: what the update adds on top of the model and optimizer.

Writes ``benchmarks/results/actor_step_<device>.json`` (or ``--out``).
"""

import argparse
import contextlib
import datetime
import os
import socket
import statistics
import sys
import tempfile
import time

VARIANTS = {  # name -> policy_loss overrides (on top of verl's actor defaults)
    "grpo": {"loss_mode": "vanilla"},
    "stapo_current": {"loss_mode": "stapo", "stats_source": "current"},
    "stapo_old": {"loss_mode": "stapo", "stats_source": "old"},
    "entropy20": {"loss_mode": "entropy20"},
    "entropy20_micro_batch": {"loss_mode": "entropy20", "top_entropy_scope": "micro_batch"},
}
GROUP = 8  # GRPO responses per prompt


def setup_environment() -> str:
    """One-rank torch.distributed environment; the cpu platform when there is no GPU."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        os.environ["VERL_PLATFORM"] = "cpu"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    return device


def make_model_dir(path: str, tiny: bool, device: str) -> None:
    """Random weights in a Qwen3-1.7B shape (or the tiny preset's shape), saved as an HF model."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from stapo_verl.cpu.tiny import byte_tokenizer, tiny_qwen3_config

    tokenizer = byte_tokenizer()
    if tiny:
        config = tiny_qwen3_config(tokenizer)
    else:  # Qwen3-1.7B-Base's config.json
        config = Qwen3Config(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=6144,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=32768,
            rope_theta=1000000,
            tie_word_embeddings=True,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(torch.float32 if tiny else torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


FP32_OVERRIDES = [  # what the CPU presets set (config/cpu_base.yaml): verl's default computes in bf16
    "actor_rollout_ref.actor.fsdp_config.dtype=float32",
    "actor_rollout_ref.actor.fsdp_config.model_dtype=fp32",
    "++actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype: fp32, reduce_dtype: fp32, buffer_dtype: fp32}",
]
BF16_OVERRIDES = [  # the CPU presets in bf16: bf16 compute, fp32 master weights and reduction
    "actor_rollout_ref.actor.fsdp_config.dtype=bfloat16",
    "actor_rollout_ref.actor.fsdp_config.model_dtype=fp32",
    "++actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype: bf16, reduce_dtype: fp32, buffer_dtype: fp32}",
]


def actor_section(model_path: str, args, extra: tuple[str, ...] = ()):
    """verl's actor/model/rollout config, composed as main_ppo composes it (the stapo recipe)."""
    from hydra import compose, initialize_config_dir

    from stapo_verl.recipe import CONFIG_DIR, CONFIG_NAME

    overrides = [
        "algorithm=stapo",
        f"actor_rollout_ref.model.path={model_path}",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        f"actor_rollout_ref.model.enable_gradient_checkpointing={not (args.tiny or args.smollm2)}",
        f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={args.max_token_len}",
        f"actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu={args.max_token_len}",
        "actor_rollout_ref.actor.use_torch_compile=false",
    ]
    if args.tiny:
        overrides += ["actor_rollout_ref.actor.fsdp_config.dtype=float32"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(CONFIG_NAME, overrides=overrides + list(extra)).actor_rollout_ref


def build_worker(cfg):
    """``ActorRolloutRefWorker.init_model``'s actor part, in this process."""
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import HFModelConfig, TrainingWorkerConfig

    from stapo_verl.integration.worker import TokenMaskTrainingWorker

    model_config: HFModelConfig = omega_conf_to_dataclass(cfg.model)
    actor = omega_conf_to_dataclass(cfg.actor)
    actor.model_config = model_config
    training = TrainingWorkerConfig(
        model_type="language_model",
        model_config=model_config,
        engine_config=actor.engine,
        optimizer_config=actor.optim,
        checkpoint_config=actor.checkpoint,
    )
    engine = training.engine_config
    engine.use_dynamic_bsz = True
    engine.infer_max_token_len_per_gpu = cfg.rollout.log_prob_max_token_len_per_gpu
    engine.max_token_len_per_gpu = cfg.actor.ppo_max_token_len_per_gpu
    engine.use_remove_padding = model_config.get("use_remove_padding", False)
    worker = TokenMaskTrainingWorker(config=training)
    worker.reset()
    return worker


def loss_fn(cfg, overrides: dict):
    from functools import partial

    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.utils.losses import ppo_loss

    actor = OmegaConf.create(OmegaConf.to_container(cfg.actor))
    for key, value in overrides.items():
        actor.policy_loss[key] = value
    return partial(ppo_loss, config=omega_conf_to_dataclass(actor))


def step_batch(args, vocab: int, old_pass=None):
    """verl's update_actor input for one step: ``args.mini_batches`` x ``args.rows`` responses in
    GRPO groups of 8 (one prompt each), jagged prompt+response rows, group z-score advantages
    (verl's GRPO: (r - mean) / (std + 1e-6)), the old pass's statistics when given."""
    import torch
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    g = torch.Generator().manual_seed(0)
    rows = args.mini_batches * args.rows
    jagged = lambda values: torch.nested.as_nested_tensor(values, layout=torch.jagged)  # noqa: E731
    prompts = [torch.randint(0, vocab, (args.prompt,), generator=g) for _ in range(rows // GROUP)]
    prompts = [prompt for prompt in prompts for _ in range(GROUP)]
    responses = [torch.randint(0, vocab, (args.response,), generator=g) for _ in range(rows)]
    ones = [torch.ones(args.response, dtype=torch.int64) for _ in range(rows)]
    success = torch.rand(rows // GROUP, 1, generator=g)  # each prompt its own pass rate
    rewards = (torch.rand(rows // GROUP, GROUP, generator=g) < success).float()
    advantages = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)).reshape(-1)
    data = TensorDict(
        {
            "input_ids": jagged([torch.cat([p, r]) for p, r in zip(prompts, responses, strict=True)]),
            "position_ids": jagged([torch.arange(args.prompt + args.response) for _ in range(rows)]),
            "prompts": jagged(prompts),
            "responses": jagged(responses),
            "response_mask": jagged(ones),
            "loss_mask": jagged([o.clone() for o in ones]),
            "advantages": jagged([torch.full((args.response,), float(a)) for a in advantages]),
        },
        batch_size=[rows],
    )
    # what the v1 trainer's _update_actor passes (verl's actor defaults: 1 epoch, no shuffle)
    tu.assign_non_tensor(
        data,
        calculate_entropy=False,
        global_batch_size=args.rows,
        mini_batch_size=args.rows,
        epochs=1,
        seed=42,
        dataloader_kwargs={"shuffle": False},
        temperature=1.0,
        global_token_num=[args.prompt + args.response] * rows,
        disable_auto_offload=True,
    )
    if old_pass is not None:
        data["old_log_probs"], data["entropy"] = old_pass
    return data, float((advantages > 0).float().mean())


def old_log_prob_pass(worker, args, vocab):
    """The trainer's old-log-prob pass (entropy on), response-aligned: what `old` reads."""
    from verl.utils import tensordict_utils as tu

    from stapo_verl.integration.token_mask import response_values

    data, _ = step_batch(args, vocab)
    tu.assign_non_tensor(data, calculate_entropy=True, compute_loss=False)
    output = worker.infer_batch(data)
    as_jagged = lambda flat: _split(flat, args)  # noqa: E731
    return as_jagged(response_values(tu.get(output, "log_probs"), data)), as_jagged(
        response_values(tu.get(output, "entropy"), data)
    )


def _split(flat, args):
    import torch

    return torch.nested.as_nested_tensor(list(flat.float().cpu().split(args.response)), layout=torch.jagged)


class StatsPassTimer:
    """Seconds and rows of the worker's ``current`` statistics passes (``_current_policy_stats``)."""

    def __init__(self, worker, sync):
        self.seconds, self.rows = 0.0, 0
        original = worker._current_policy_stats

        def timed(data, rows=None):
            sync()
            start = time.perf_counter()
            stats = original(data, rows)
            sync()
            self.seconds += time.perf_counter() - start
            self.rows += len(data) if rows is None else len(rows)
            return stats

        worker._current_policy_stats = timed


def check_variant_ran(name: str, output) -> None:
    """The update logged the mask metrics of its variant (and no others): nothing was mislabelled."""
    from verl.utils import tensordict_utils as tu

    keys = set(tu.get(output, "metrics"))
    expected = {
        "grpo": None,
        "stapo_current": "s2t/silenced",
        "stapo_old": "s2t/silenced",
        "entropy20": "entropy20/kept_tokens",
        "entropy20_micro_batch": "entropy20/kept_tokens",
    }[name]
    masked = {k for k in keys if k.startswith(("s2t/", "entropy20/"))}
    if (expected is None and masked) or (expected is not None and expected not in keys):
        raise RuntimeError(f"{name}: unexpected mask metrics {sorted(masked)}")


class PeakRss:
    """Peak resident set size (bytes) above the starting one while the block runs (CPU memory)."""

    def __enter__(self):
        import threading

        import psutil

        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        self.added_gib = (self.peak - self.start) / 2**30


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny preset's shape and a small batch")
    parser.add_argument("--smollm2", action="store_true", help="SmolLM2-135M (the smollm2_135m preset's model), fp32")
    parser.add_argument("--bf16", action="store_true", help="with --smollm2: in the presets' bf16 instead")
    parser.add_argument("--mini-batches", type=int, help="PPO mini-batches per step (default 4; --tiny 2)")
    parser.add_argument("--rows", type=int, help="responses per mini-batch, a multiple of 8 (default 16; --tiny 8)")
    parser.add_argument("--prompt", type=int, help="prompt tokens (default 512; --tiny 16, --smollm2 109)")
    parser.add_argument("--response", type=int, help="response tokens (default 1536; --tiny 48, --smollm2 64)")
    parser.add_argument(
        "--rounds", type=int, help="interleaved rounds, one timed step per variant each (default 3; --tiny 1)"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument(
        "--profile",
        action="store_true",
        help="then profile one `current` statistics pass (diagnostics on and off) and one GRPO "
        "mini-batch update (torch.profiler, top operators), into <out>_profile.json",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override of the composed config on top of the others (repeatable), e.g. "
        "actor_rollout_ref.actor.fsdp_config.reshard_after_forward=false; recorded in the result",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    # --smollm2: the preset's prompts (109 tokens) and answers (<= 64 tokens)
    sizes = (2, 8, 16, 48, 1) if args.tiny else (4, 16, 109, 64, 3) if args.smollm2 else (4, 16, 512, 1536, 3)
    for name, default in zip(("mini_batches", "rows", "prompt", "response", "rounds"), sizes):
        if getattr(args, name) is None:
            setattr(args, name, default)
    variants = args.variants.split(",")
    if args.bf16 and not args.smollm2:
        parser.error("--bf16 goes with --smollm2 (the GPU default is bf16 already)")
    if "grpo" not in variants or not set(variants) <= set(VARIANTS) or args.rows % GROUP:
        parser.error(f"--variants must include grpo and come from {list(VARIANTS)}; --rows a multiple of {GROUP}")
    args.max_token_len = (args.prompt + args.response) * 2
    device = setup_environment()

    import torch
    from common import cpu_description, write_result

    import stapo_verl.plugin  # noqa: F401  (losses, worker hook, cpu platform; also without pip install)

    if args.smollm2:
        from stapo_verl.cli import cpu_model_dir
        from stapo_verl.cpu.smollm2 import prepare_smollm2

        files = cpu_model_dir("smollm2_135m")
        prepare_smollm2(files)
        model_dir = os.path.join(files, "model")
    else:
        model_dir = tempfile.mkdtemp(prefix="stapo_actor_step_")
        make_model_dir(model_dir, args.tiny, device)
    precision = tuple(BF16_OVERRIDES if args.bf16 else FP32_OVERRIDES) if args.smollm2 else ()
    cfg = actor_section(model_dir, args, precision + tuple(args.override))
    worker = build_worker(cfg)
    vocab = 260 if args.tiny else 49152 if args.smollm2 else 151936
    old_pass = old_log_prob_pass(worker, args, vocab)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    stats_pass = StatsPassTimer(worker, sync)
    memory = PeakRss if device == "cpu" else contextlib.nullcontext
    samples = {name: {"seconds": [], "peak_gib": [], "stats_pass_s": [], "stats_pass_rows": []} for name in variants}

    def update(name):
        """One step's actor update (verl's train_mini_batch over every mini-batch) under ``name``."""
        worker.set_loss_fn(loss_fn(cfg, VARIANTS[name]))
        data, positive_share = step_batch(args, vocab, old_pass)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        before = (stats_pass.seconds, stats_pass.rows)
        sync()
        with memory() as rss:
            start = time.perf_counter()
            output = worker.train_mini_batch(data)
            sync()
            seconds = time.perf_counter() - start
        check_variant_ran(name, output)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else rss.added_gib
        return seconds, peak, stats_pass.seconds - before[0], stats_pass.rows - before[1], positive_share

    update("stapo_current")  # warm-up: allocator, kernels, both the training and the statistics forward
    for round_index in range(args.rounds):
        for name in variants:
            seconds, peak, pass_seconds, pass_rows, positive_share = update(name)
            for key, value in zip(
                ("seconds", "peak_gib", "stats_pass_s", "stats_pass_rows"), (seconds, peak, pass_seconds, pass_rows)
            ):
                samples[name][key].append(value)
            print(
                f"round {round_index + 1}/{args.rounds} {name}: {seconds:.2f} s, peak {peak:.2f} GiB, "
                f"statistics pass {pass_seconds:.2f} s over {pass_rows} rows",
                flush=True,
            )
    results = {}
    for name, values in samples.items():
        results[name] = {
            "median_s": statistics.median(values["seconds"]),
            "seconds": values["seconds"],
            "peak_gib": max(values["peak_gib"]),
            "stats_pass_s": statistics.median(values["stats_pass_s"]),
            "stats_pass_rows": values["stats_pass_rows"][0],
        }
    for values in results.values():
        values["time_vs_grpo"] = values["median_s"] / results["grpo"]["median_s"]
        values["memory_vs_grpo"] = values["peak_gib"] / results["grpo"]["peak_gib"]
    import transformers
    from verl import __version__ as verl_version

    record = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name() if device == "cuda" else cpu_description(),
        "versions": {
            "torch": torch.__version__,
            "verl": verl_version,
            "transformers": transformers.__version__,
            "python": sys.version.split()[0],
        },
        "model": "tiny (Qwen3 shape, 90k params)"
        if args.tiny
        else f"SmolLM2-135M-Instruct, {'bf16' if args.bf16 else 'fp32'}"
        if args.smollm2
        else "Qwen3-1.7B shape, random bf16",
        "memory": "peak CUDA allocation" if device == "cuda" else "peak RSS added during the step (5 ms samples)",
        "step": {
            "mini_batches": args.mini_batches,
            "rows_per_mini_batch": args.rows,
            "group": GROUP,
            "prompt": args.prompt,
            "response": args.response,
            "max_token_len_per_micro_batch": args.max_token_len,
            "positive_advantage_share": positive_share,
        },
        "rounds": args.rounds,
        "overrides": args.override,
        "results": results,
    }
    suffix = f"{device}_tiny" if args.tiny else f"{device}_smollm2" if args.smollm2 else device
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"actor_step_{suffix}.json")
    write_result(record, out)
    if args.profile:
        write_profile(args, worker, cfg, vocab, old_pass, device, os.path.splitext(out)[0] + "_profile.json")


def top_operators(run, count: int = 12) -> dict:
    """Wall time of ``run()`` and its operators with the most self time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    seconds = time.perf_counter() - start
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return {
        "seconds": seconds,
        "top_self_cpu": [
            {"op": e.key, "ms": e.self_cpu_time_total / 1000, "share": e.self_cpu_time_total / total, "calls": e.count}
            for e in events[:count]
        ],
    }


def write_profile(args, worker, cfg, vocab, old_pass, device, out: str):
    """Where STAPO `current`'s extra time goes: its statistics pass over the responses of one
    mini-batch that can hold a candidate, with diagnostics (sum pi^2) on and off, next to one
    GRPO update of that mini-batch."""
    import torch
    from common import cpu_description, write_result
    from verl.utils import tensordict_utils as tu

    from stapo_verl.integration.token_mask import rows_that_can_hold_a_candidate

    data, _ = step_batch(args, vocab, old_pass)
    mini_batch = tu.index_select_tensor_dict(data, torch.arange(args.rows, 2 * args.rows))  # the step's second
    tu.assign_non_tensor(
        mini_batch, global_token_num=[args.prompt + args.response] * args.rows, update_lr_scheduler=False
    )
    rows = rows_that_can_hold_a_candidate(mini_batch)
    record = {
        "date": datetime.date.today().isoformat(),
        "device": cpu_description() if device == "cpu" else torch.cuda.get_device_name(),
        "mini_batch_rows": args.rows,
        "pass_rows": len(rows),
    }
    for diagnostics in (True, False):
        worker.set_loss_fn(loss_fn(cfg, {**VARIANTS["stapo_current"], "diagnostics": diagnostics}))
        worker._current_policy_stats(mini_batch, rows)  # warm
        key = f"stats_pass_diagnostics_{'on' if diagnostics else 'off'}"
        record[key] = top_operators(lambda: worker._current_policy_stats(mini_batch, rows))
    worker.set_loss_fn(loss_fn(cfg, VARIANTS["grpo"]))
    record["grpo_mini_batch_update"] = top_operators(lambda: worker.train_batch(mini_batch.copy()))
    for key in ("stats_pass_diagnostics_on", "stats_pass_diagnostics_off"):
        record[key]["vs_grpo_mini_batch_update"] = record[key]["seconds"] / record["grpo_mini_batch_update"]["seconds"]
    write_result(record, out)


if __name__ == "__main__":
    main()
