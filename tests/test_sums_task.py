"""The CPU comparison's task: enough problems, a held-out set disjoint by problem identity, both
decodings per held-out problem, graded by the training reward."""

from stapo_verl.tasks import sums
from stapo_verl.tasks.reward import compute_score


def identity(row: dict) -> tuple[int, int]:
    question = row["prompt"][-1]["content"]
    a, b = question.removeprefix("What is ").split("?")[0].split(" + ")
    return tuple(sorted((int(a), int(b))))


def test_thousands_of_problems_and_a_held_out_set_no_training_prompt_touches():
    train, held_out = sums.training_rows(), sums.held_out_rows()
    train_ids = {identity(row) for row in train}
    held_ids = {identity(row) for row in held_out}
    assert len(train_ids) + len(held_ids) == len(sums.problems()) >= 2000
    assert len(held_ids) == sums.HELD_OUT >= 200 and len(train_ids) == len(train)
    assert not train_ids & held_ids  # by identity: a + b and b + a are one problem
    assert sums.split() == sums.split()  # fixed, whatever the seed


def test_each_held_out_problem_comes_once_per_decoding():
    rows = sums.held_out_rows()
    by_source = {}
    for row in rows:
        by_source.setdefault(row["data_source"], []).append(row)
    assert set(by_source) == {sums.data_source(d) for d in sums.DECODINGS}
    for decoding, (temperature, top_p) in sums.DECODINGS.items():
        group = by_source[sums.data_source(decoding)]
        assert len(group) == sums.HELD_OUT
        assert all(row["extra_info"]["sampling"] == {"temperature": temperature, "top_p": top_p} for row in group)
    assert [r["prompt"] for r in by_source["smollm2_sums-aligned"]] == [
        r["prompt"] for r in by_source["smollm2_sums-default"]
    ]


def test_the_training_reward_grades_the_task():
    row = sums.training_rows()[7]
    a, b = identity(row)
    gold = row["reward_model"]["ground_truth"]
    assert gold == str(a + b)
    assert compute_score(row["data_source"], f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}.", gold)["acc"]
    assert not compute_score(row["data_source"], f"The answer is \\boxed{{{a + b + 1}}}.", gold)["acc"]
    assert "\\boxed{68}" in row["prompt"][1]["content"]  # the worked example: 23 + 45


def test_the_held_out_prompts_share_prefix_blocks_in_vllms_cache(smollm2_dir):
    """With vLLM-CPU's KV block of BLOCK_SIZE tokens (cpu_rollout=vllm), every held-out prompt
    begins with full blocks its neighbours share, so vLLM's prefix cache serves them; with its
    default block of 128 none would be full (the prompts are shorter)."""
    import os

    from transformers import AutoTokenizer

    from stapo_verl.cpu.vllm_cpu import BLOCK_SIZE

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(smollm2_dir, "model"))
    prompts = [
        tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)
        for row in sums.held_out_rows()
    ]
    prompts = [p["input_ids"] if isinstance(p, dict) or hasattr(p, "keys") else p for p in prompts]
    shared = min(next((i for i, (a, b) in enumerate(zip(p, prompts[0])) if a != b), len(p)) for p in prompts[1:])
    assert max(len(p) for p in prompts) < 128  # vLLM-CPU's default block: never full
    assert shared // BLOCK_SIZE >= 2, shared  # at least two blocks of every prompt come from the cache


def test_the_cpu_presets_run_their_faster_settings():
    """The settings of the faster step (benchmarks/results/cpu_speed.json) are in effect."""
    import verl  # noqa: F401

    from stapo_verl.cpu.vllm_cpu import BLOCK_SIZE
    from stapo_verl.experiments.launch import compose_config

    demo = compose_config("stapo", "smollm2_135m", [])
    assert demo.actor_rollout_ref.model.enable_gradient_checkpointing is False
    assert demo.actor_rollout_ref.actor.ppo_max_token_len_per_gpu == 512  # the demo's memory
    comparison = compose_config("stapo", "smollm2_135m", ["experiment=cpu_comparison", "cpu_rollout=vllm"])
    assert comparison.actor_rollout_ref.actor.ppo_max_token_len_per_gpu == 2048
    assert comparison.actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu == 4096
    assert comparison.actor_rollout_ref.ref.log_prob_max_token_len_per_gpu == 4096
    assert comparison.actor_rollout_ref.rollout.engine_kwargs.vllm.block_size == BLOCK_SIZE
    assert comparison.actor_rollout_ref.rollout.enable_prefix_caching is True
