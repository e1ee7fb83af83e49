"""One actor update on verl's FSDP engine: GRPO vs STAPO (both sources) vs 20-Entropy.

The actor worker is built as verl's ``ActorRolloutRefWorker.init_model`` builds it (our
``TokenMaskTrainingWorker`` on verl's FSDP2 engine, verl's ``ppo_loss``, remove-padding), in this
process, and fed the mini-batch layout verl's v1 trainer sends to ``update_actor`` (old
log-probs and entropy from verl's own log-prob pass, as the trainer computes them). The variants
run interleaved in one process on one worker (the loss function is switched between calls);
reported: median wall time of ``train_batch`` and peak device memory per variant, and the ratios
to GRPO.

    python benchmarks/actor_step.py          # GPU: Qwen3-1.7B-shaped random bf16 model, 8 x (512 + 1536)
    python benchmarks/actor_step.py --tiny   # anywhere (CPU: VERL_PLATFORM=cpu): the plumbing only
    python benchmarks/actor_step.py --smollm2  # CPU: SmolLM2-135M (the real-model preset), fp32

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
}


def setup_environment() -> str:
    """One-rank torch.distributed environment; the cpu platform when there is no GPU."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        os.environ["VERL_PLATFORM"] = "cpu"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    return device


def make_model_dir(path: str, tiny: bool, device: str) -> None:
    """Random weights in a Qwen3-1.7B shape (or the tiny preset's shape), saved as an HF model."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from stapo_verl.tiny import byte_tokenizer, tiny_qwen3_config

    tokenizer = byte_tokenizer()
    if tiny:
        config = tiny_qwen3_config(tokenizer)
    else:  # Qwen3-1.7B-Base's config.json
        config = Qwen3Config(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                             num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                             rope_theta=1000000, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(torch.float32 if tiny else torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


FP32_OVERRIDES = [  # what the CPU presets set (config/cpu_base.yaml): verl's default computes in bf16
    "actor_rollout_ref.actor.fsdp_config.dtype=float32", "actor_rollout_ref.actor.fsdp_config.model_dtype=fp32",
    "++actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype: fp32, reduce_dtype: fp32, buffer_dtype: fp32}",
]  # fmt: skip


def actor_section(model_path: str, args, extra: tuple[str, ...] = ()):
    """verl's actor/model/rollout config, composed as main_ppo composes it (the stapo recipe)."""
    from hydra import compose, initialize_config_dir

    from stapo_verl.recipe import CONFIG_DIR, CONFIG_NAME

    overrides = [
        "algorithm=stapo", f"actor_rollout_ref.model.path={model_path}",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        f"actor_rollout_ref.model.enable_gradient_checkpointing={not (args.tiny or args.smollm2)}",
        f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={args.max_token_len}",
        f"actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu={args.max_token_len}",
        "actor_rollout_ref.actor.use_torch_compile=false",
    ]  # fmt: skip
    if args.tiny:
        overrides += ["actor_rollout_ref.actor.fsdp_config.dtype=float32"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(CONFIG_NAME, overrides=overrides + list(extra)).actor_rollout_ref


def build_worker(cfg):
    """``ActorRolloutRefWorker.init_model``'s actor part, in this process."""
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import HFModelConfig, TrainingWorkerConfig

    from stapo_verl.verl_hook import TokenMaskTrainingWorker

    model_config: HFModelConfig = omega_conf_to_dataclass(cfg.model)
    actor = omega_conf_to_dataclass(cfg.actor)
    actor.model_config = model_config
    training = TrainingWorkerConfig(model_type="language_model", model_config=model_config, engine_config=actor.engine,
                                    optimizer_config=actor.optim, checkpoint_config=actor.checkpoint)  # fmt: skip
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


def mini_batch(args, vocab: int, old_pass=None):
    """verl's update_actor layout: jagged prompt+response rows, group advantages, old stats."""
    import torch
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    g = torch.Generator().manual_seed(0)
    jagged = lambda rows: torch.nested.as_nested_tensor(rows, layout=torch.jagged)  # noqa: E731
    prompts = [torch.randint(0, vocab, (args.prompt,), generator=g) for _ in range(args.rows)]
    responses = [torch.randint(0, vocab, (args.response,), generator=g) for _ in range(args.rows)]
    ones = [torch.ones(args.response, dtype=torch.int64) for _ in range(args.rows)]
    signs = [1.0 if i % 2 else -1.0 for i in range(args.rows)]  # half the rows A > 0
    data = TensorDict({
        "input_ids": jagged([torch.cat([p, r]) for p, r in zip(prompts, responses, strict=True)]),
        "position_ids": jagged([torch.arange(args.prompt + args.response) for _ in range(args.rows)]),
        "prompts": jagged(prompts), "responses": jagged(responses),
        "response_mask": jagged(ones), "loss_mask": jagged([o.clone() for o in ones]),
        "advantages": jagged([torch.full((args.response,), s) for s in signs]),
    }, batch_size=[args.rows])  # fmt: skip
    tu.assign_non_tensor(data, calculate_entropy=False, global_batch_size=args.rows, temperature=1.0,
                         global_token_num=[args.prompt + args.response] * args.rows, update_lr_scheduler=False,
                         disable_auto_offload=True)  # fmt: skip
    if old_pass is not None:
        data["old_log_probs"], data["entropy"] = old_pass
    return data


def old_log_prob_pass(worker, args, vocab):
    """The trainer's old-log-prob pass (entropy on), response-aligned: what `old` reads."""
    from verl.utils import tensordict_utils as tu

    from stapo_verl.verl_hook import response_values

    data = mini_batch(args, vocab)
    tu.assign_non_tensor(data, calculate_entropy=True, compute_loss=False)
    output = worker.infer_batch(data)
    as_jagged = lambda flat: _split(flat, args)  # noqa: E731
    return as_jagged(response_values(tu.get(output, "log_probs"), data)), as_jagged(
        response_values(tu.get(output, "entropy"), data))  # fmt: skip


def _split(flat, args):
    import torch

    return torch.nested.as_nested_tensor(list(flat.float().cpu().split(args.response)), layout=torch.jagged)


def check_variant_ran(name: str, output) -> None:
    """The update logged the mask metrics of its variant (and no others): nothing was mislabelled."""
    from verl.utils import tensordict_utils as tu

    keys = set(tu.get(output, "metrics"))
    expected = {"grpo": None, "stapo_current": "s2t/silenced", "stapo_old": "s2t/silenced",
                "entropy20": "entropy20/kept_tokens"}[name]  # fmt: skip
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
    parser.add_argument("--rows", type=int, help="sequences (default 8; --tiny 4, --smollm2 24)")
    parser.add_argument("--prompt", type=int, help="prompt tokens (default 512; --tiny 16, --smollm2 109)")
    parser.add_argument("--response", type=int, help="response tokens (default 1536; --tiny 48, --smollm2 64)")
    parser.add_argument(
        "--repeats", type=int, help="timed calls per variant and round (default 5; --tiny 2, --smollm2 3)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    # the preset's mini-batch for --smollm2: 24 responses, 109-token prompts, <= 64-token answers
    sizes = (4, 16, 48, 2) if args.tiny else (24, 109, 64, 3) if args.smollm2 else (8, 512, 1536, 5)
    for name, default in zip(("rows", "prompt", "response", "repeats"), sizes):
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.max_token_len = (args.prompt + args.response) * 2
    device = setup_environment()

    import torch
    from common import cpu_description, write_result

    import stapo_verl.plugin  # noqa: F401  (losses, worker hook, cpu platform; also without pip install)

    if args.smollm2:
        from stapo_verl.cli import cpu_model_dir
        from stapo_verl.smollm2 import prepare_smollm2

        files = cpu_model_dir("smollm2_135m")
        prepare_smollm2(files)
        model_dir = os.path.join(files, "model")
    else:
        model_dir = tempfile.mkdtemp(prefix="stapo_actor_step_")
        make_model_dir(model_dir, args.tiny, device)
    cfg = actor_section(model_dir, args, tuple(FP32_OVERRIDES) if args.smollm2 else ())
    worker = build_worker(cfg)
    vocab = 260 if args.tiny else 49152 if args.smollm2 else 151936
    old_pass = old_log_prob_pass(worker, args, vocab)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    samples = {name: {"seconds": [], "peak_gib": []} for name in VARIANTS}
    memory = PeakRss if device == "cpu" else contextlib.nullcontext
    for round_index in range(args.rounds):
        for name, overrides in VARIANTS.items():
            worker.set_loss_fn(loss_fn(cfg, overrides))
            worker.train_batch(mini_batch(args, vocab, old_pass))  # warm-up (allocator, kernels)
            for _ in range(args.repeats):
                data = mini_batch(args, vocab, old_pass)
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                sync()
                with memory() as rss:
                    start = time.perf_counter()
                    output = worker.train_batch(data)
                    sync()
                    samples[name]["seconds"].append(time.perf_counter() - start)
                if device == "cuda":
                    samples[name]["peak_gib"].append(torch.cuda.max_memory_allocated() / 2**30)
                else:
                    samples[name]["peak_gib"].append(rss.added_gib)
            check_variant_ran(name, output)
            latest = statistics.median(samples[name]["seconds"][-args.repeats :])
            print(f"round {round_index + 1}/{args.rounds} {name}: {1000 * latest:.1f} ms", flush=True)
    results = {}
    for name, values in samples.items():
        results[name] = {"median_ms": 1000 * statistics.median(values["seconds"]),
                         "peak_gib": max(values["peak_gib"]) if values["peak_gib"] else None}  # fmt: skip
    for name, values in results.items():
        values["time_vs_grpo"] = values["median_ms"] / results["grpo"]["median_ms"]
        if values["peak_gib"] is not None:
            values["memory_vs_grpo"] = values["peak_gib"] / results["grpo"]["peak_gib"]
    import transformers
    from verl import __version__ as verl_version

    record = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name() if device == "cuda" else cpu_description(),
        "versions": {"torch": torch.__version__, "verl": verl_version, "transformers": transformers.__version__,
                     "python": sys.version.split()[0]},  # fmt: skip
        "model": "tiny (Qwen3 shape, 90k params)" if args.tiny else "SmolLM2-135M-Instruct, fp32" if args.smollm2
        else "Qwen3-1.7B shape, random bf16",
        "memory": "peak CUDA allocation" if device == "cuda" else "peak RSS added during the call (5 ms samples)",
        "batch": {"rows": args.rows, "prompt": args.prompt, "response": args.response},
        "repeats": args.repeats, "rounds": args.rounds,
        "results": results,
    }  # fmt: skip
    suffix = f"{device}_tiny" if args.tiny else f"{device}_smollm2" if args.smollm2 else device
    write_result(record, args.out or os.path.join(os.path.dirname(__file__), "results", f"actor_step_{suffix}.json"))


if __name__ == "__main__":
    main()
