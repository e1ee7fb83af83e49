"""CPU cost of the policy loss alone: STAPO vs vanilla GRPO on one paper-sized mini-batch.

What STAPO adds to verl's loss path is (1) building the S2T mask once per mini-batch and
(2) nothing else: the loss is verl's own ``vanilla`` objective on the masked ``response_mask``.
This times verl's ``compute_policy_loss_vanilla`` forward + backward on (512, 4096) tensors
(2.1M tokens) with and without (1), median of 7 interleaved rounds, and writes JSON.
No model: the per-token statistics are synthetic (as in mask_cpu.py).

    python benchmarks/loss_cpu.py [--rows 512] [--length 4096] [--out benchmarks/results/loss_cpu.json]
"""

import argparse
import datetime
import os
import statistics
import time

import torch
from common import cpu_description, write_result


def actor_config():
    import verl
    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose("ppo_trainer", overrides=["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1"])
    actor = cfg.actor_rollout_ref.actor
    actor.clip_ratio_high, actor.clip_ratio_c = 0.28, 10.0
    return omega_conf_to_dataclass(actor)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "loss_cpu.json"))
    args = parser.parse_args()

    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    from stapo_verl.method.s2t import s2t_spurious_mask

    config = actor_config()
    # what verl's ppo_loss fills in before calling the policy loss
    config.global_batch_info.update(
        dp_size=1,
        batch_num_tokens=args.rows * args.length,
        global_batch_size=args.rows,
        loss_scale_factor=config.loss_scale_factor,
    )
    vanilla = get_policy_loss_fn("vanilla")
    g = torch.Generator().manual_seed(0)
    shape = (args.rows, args.length)
    old_log_prob = -torch.empty(shape).exponential_(1.0, generator=g)  # P(p < 0.002) = 0.002
    theta = (old_log_prob + 0.01 * torch.randn(shape, generator=g)).requires_grad_(True)
    entropy = torch.rand(shape, generator=g) * 3
    advantages = torch.randn(args.rows, 1, generator=g).expand(shape).contiguous()
    response_mask = torch.ones(shape)

    def loss_step(mask):
        loss, _ = vanilla(
            old_log_prob=old_log_prob,
            log_prob=theta,
            advantages=advantages,
            response_mask=mask,
            loss_agg_mode="token-mean",
            config=config,
            rollout_is_weights=None,
        )
        loss.backward()
        theta.grad = None

    def grpo():
        loss_step(response_mask)

    def stapo():
        with torch.no_grad():
            silenced = s2t_spurious_mask(theta.detach(), entropy, advantages, response_mask.bool()).spurious_mask
        loss_step(response_mask * ~silenced)

    times = {"grpo": [], "stapo": []}
    for _ in range(args.rounds):  # interleaved: both see the same machine state
        for name, fn in (("grpo", grpo), ("stapo", stapo)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {name: 1000 * statistics.median(values) for name, values in times.items()}
    silenced = s2t_spurious_mask(theta.detach(), entropy, advantages, response_mask.bool()).spurious_mask
    result = {
        "date": datetime.date.today().isoformat(),
        "device": cpu_description(),
        "torch": torch.__version__,
        "tokens": args.rows * args.length,
        "silenced": int(silenced.sum()),
        "rounds": args.rounds,
        "grpo_loss_fwd_bwd_ms": medians["grpo"],
        "stapo_loss_fwd_bwd_ms": medians["stapo"],
        "ratio": medians["stapo"] / medians["grpo"],
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
