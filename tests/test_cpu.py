"""The CPU backends: the `cpu` platform's registration and the `hf` rollout server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from stapo_verl.cpu.tiny import prepare_tiny


def run_python(code: str, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"} | env
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_cpu_platform_is_selected_only_by_verl_platform():
    code = """
        import verl
        from verl.utils.device import get_device_name, get_nccl_backend
        from verl.workers.engine import EngineRegistry
        from verl.workers.engine_workers import ActorRolloutRefWorker
        print(get_device_name(), get_nccl_backend(), ActorRolloutRefWorker.ref_worker_cls.__name__)
        if get_device_name() == "cpu":
            print(EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__)
    """
    assert run_python(code, VERL_PLATFORM="cpu").split() == [
        "cpu",
        "gloo",
        "CPUTrainingWorker",
        "CPUFSDPEngineWithLMHead",
    ]
    # without it nothing changes for GPU users (here verl falls back to nvidia)
    assert run_python(code).split()[2] == "TrainingWorker"


@pytest.mark.slow
def test_a_process_may_start_by_importing_the_rollout_module():
    """Ray starts the generation server by importing stapo_verl.cpu.hf_rollout first."""
    out = run_python(
        """
        import stapo_verl.cpu.hf_rollout
        from stapo_verl.install_state import INSTALL_ERROR
        from verl.workers.rollout.replica import RolloutReplicaRegistry
        print(INSTALL_ERROR, RolloutReplicaRegistry.get("hf").__name__)
        """,
        VERL_PLATFORM="cpu",
    )
    assert out.split() == ["None", "HFReplica"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny"))
    prepare_tiny(path, sft_steps=20)
    return os.path.join(path, "model")


def make_server(model_path, dtype="float32"):
    """An HF rollout server; fp32 unless asked (the tests below compare with an fp32 forward)."""
    from stapo_verl.cpu.hf_rollout import HFGenerationServer

    config = SimpleNamespace(response_length=12, prompt_length=32, seed=0, dtype=dtype)
    return HFGenerationServer(config, SimpleNamespace(path=model_path), replica_rank=0)


def test_concurrent_requests_share_one_batch_and_log_probs_match_a_forward_pass(tiny_model):
    server = make_server(tiny_model)
    calls = []
    generate_batch = server._generate_batch
    server._generate_batch = lambda prompts, *a: calls.append(len(prompts)) or generate_batch(prompts, *a)
    prompts = [[50, 43, 51, 61], [55, 61], [49, 43, 52, 52, 61]]  # "2+3=", "7=", "1+44="
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}

    async def requests():
        return await asyncio.gather(
            *[server.generate(str(i), prompt_ids=p, sampling_params=params) for i, p in enumerate(prompts)]
        )

    outputs = asyncio.run(requests())
    assert calls == [3]  # one left-padded batch
    for prompt, output in zip(prompts, outputs, strict=True):
        assert 1 <= len(output.token_ids) <= 12
        assert output.stop_reason == ("completed" if output.token_ids[-1] in server.eos_ids else "length")
        assert not any(t in server.eos_ids for t in output.token_ids[:-1])  # cut at the first EOS
        with torch.no_grad():
            logits = server.model(torch.tensor([prompt + output.token_ids])).logits[0, len(prompt) - 1 : -1]
        expected = logits.log_softmax(-1).gather(-1, torch.tensor(output.token_ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(output.log_probs), expected, rtol=1e-4, atol=1e-4)


def test_a_large_validation_is_generated_in_bounded_batches(tiny_model, monkeypatch):
    from stapo_verl.cpu import hf_rollout

    monkeypatch.setattr(hf_rollout, "MAX_BATCH", 2)
    server = make_server(tiny_model)
    calls = []
    generate_batch = server._generate_batch
    server._generate_batch = lambda prompts, *a: calls.append(len(prompts)) or generate_batch(prompts, *a)
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1}

    async def requests():
        return await asyncio.gather(
            *[server.generate(str(i), prompt_ids=[50, 43, 51, 61], sampling_params=params) for i in range(5)]
        )

    assert len(asyncio.run(requests())) == 5 and calls == [2, 2, 1]


def test_seeded_requests_give_the_same_responses_whatever_the_batching(tiny_model):
    """Per-request seeds: a response depends on the rollout seed, the step, its prompt and its
    repeat number, not on which requests share its batch or their order (the CPU comparison's
    methods then see the same samples at step 1)."""
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}
    prompts = [[50, 43, 51, 61], [55, 61], [49, 43, 52, 52, 61], [50, 43, 51, 61]]  # the first one twice

    def responses(order, together, seed=0):
        server = make_server(tiny_model)
        server.config.seed = seed
        server.global_steps = 1  # as a weight sync for step 1 leaves it

        async def requests():
            if together:
                return await asyncio.gather(
                    *[server.generate(str(i), prompt_ids=prompts[i], sampling_params=params) for i in order]
                )
            return [await server.generate(str(i), prompt_ids=prompts[i], sampling_params=params) for i in order]

        outputs = asyncio.run(requests())
        return sorted((tuple(prompts[i]), tuple(out.token_ids)) for i, out in zip(order, outputs, strict=True))

    reference = responses([0, 1, 2, 3], together=True)
    assert responses([3, 2, 1, 0], together=True) == reference
    assert responses([1, 3, 0, 2], together=False) == reference  # one request per batch
    assert responses([0, 1, 2, 3], together=True, seed=1) != reference


def test_a_request_carrying_its_own_seed_is_sampled_with_it_on_any_replica(tiny_model):
    """The seeded agent loop puts a seed in every request: then the response does not depend on
    which replica serves it (1 or 2 trainer ranks give the same samples); without one, the
    server's own seed includes its replica."""
    prompt = [50, 43, 51, 61]

    def response(replica_rank, **seed):
        server = make_server(tiny_model)
        server.replica_rank, server.global_steps = replica_rank, 1
        params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, **seed}
        return [
            tuple(asyncio.run(server.generate(str(i), prompt_ids=prompt, sampling_params=params)).token_ids)
            for i in range(4)
        ]

    seeded = [response(rank, seed=1234) for rank in (0, 1)]
    assert seeded[0] == seeded[1] and len(set(seeded[0])) == 1  # one seed: one response, anywhere
    assert response(0) != response(1)  # the server's own seeds differ per replica


@pytest.mark.parametrize("temperature, top_p, top_k", [(1.0, 1.0, -1), (0.7, 1.0, -1), (1.0, 0.8, -1), (1.0, 1.0, 2)])
def test_seeded_sampling_draws_from_the_tempered_truncated_distribution(temperature, top_p, top_k):
    """The Gumbel-max processor's argmax, over 20,000 seeded rows, has the frequencies of the
    distribution vLLM / HF sampling would draw from (tempered, then top-k / top-p cut)."""
    from stapo_verl.cpu.hf_sampling import SeededSampling

    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    expected = (logits / temperature).softmax(-1)
    if top_k > 0:
        expected[expected.argsort(descending=True)[top_k:]] = 0
    if top_p < 1.0:  # keep tokens while the mass before them is below top_p
        sorted_p, order = expected.sort(descending=True)
        expected[order[(sorted_p.cumsum(0) - sorted_p) >= top_p]] = 0
    expected /= expected.sum()
    rows = 20_000
    processor = SeededSampling(list(range(rows)), temperature, top_p, top_k)
    picks = processor(None, logits.expand(rows, -1)).argmax(-1)
    frequencies = torch.bincount(picks, minlength=5).double() / rows
    torch.testing.assert_close(frequencies, expected.double(), atol=0.012, rtol=0)
    assert torch.equal(
        SeededSampling([7, 8], 1.0, 1.0, -1)(None, logits.expand(2, -1)),
        SeededSampling([7, 8], 1.0, 1.0, -1)(None, logits.expand(2, -1)),
    )


def test_weight_sync_loads_every_weight_or_fails(tiny_model):
    server = make_server(tiny_model)
    state = {k: torch.zeros_like(v) for k, v in server.model.state_dict().items()}
    assert server.update_weights(state, global_steps=7) == len(state)
    assert all(torch.count_nonzero(v) == 0 for v in server.model.state_dict().values())
    assert server.global_steps == 7
    del state["model.norm.weight"]
    with pytest.raises(RuntimeError, match="missing keys \\['model.norm.weight'\\]"):
        server.update_weights(state)


def test_weight_sync_streams_buckets_to_the_server(tiny_model, monkeypatch):
    """The adapter never builds a whole state dict: it ships buckets of about
    WEIGHT_BUCKET_BYTES, then one finish call that checks every weight arrived."""
    import ray

    from stapo_verl.cpu import hf_rollout

    server = make_server(tiny_model)
    calls = []

    class Remote:  # what ray.get_actor returns: method.remote(...) is awaitable
        def __getattr__(self, method):
            async def call(*args):
                calls.append((method, args))
                return getattr(server, method)(*args)

            return SimpleNamespace(remote=call)

    monkeypatch.setattr(ray, "get_actor", lambda name: Remote())
    monkeypatch.setattr(hf_rollout, "WEIGHT_BUCKET_BYTES", 4096)
    adapter = object.__new__(hf_rollout.HFServerAdapter)
    adapter.is_leader, adapter.replica_rank = True, 0
    new_weights = {k: torch.full_like(v, 0.5) for k, v in server.model.state_dict().items()}
    largest = max(v.numel() * v.element_size() for v in new_weights.values())
    asyncio.run(adapter.update_weights(iter(new_weights.items()), global_steps=3))
    buckets = [args[0] for method, args in calls if method == "load_weights"]
    assert len(buckets) > 2 and calls[-1] == ("finish_weight_update", (3,))
    assert all(sum(v.numel() * v.element_size() for v in b.values()) < 4096 + largest for b in buckets)
    assert sorted(k for b in buckets for k in b) == sorted(new_weights)
    assert all(torch.all(v == 0.5) for v in server.model.state_dict().values()) and server.global_steps == 3
    server.load_weights({"model.norm.weight": new_weights["model.norm.weight"]})  # a sync cut short
    with pytest.raises(RuntimeError, match="missing keys"):
        server.finish_weight_update(4)
    with pytest.raises(RuntimeError, match="unexpected keys \\['nope'\\]"):
        server.load_weights({"nope": torch.zeros(1)})


def test_media_requests_are_refused(tiny_model):
    server = make_server(tiny_model)
    with pytest.raises(ValueError, match="text only"):
        asyncio.run(server.generate("r", prompt_ids=[1], sampling_params={}, image_data=["img"]))


def test_demo_arguments_in_any_order(monkeypatch):
    from stapo_verl import cli

    calls = []
    monkeypatch.setattr(cli, "demo", lambda *args: calls.append(args) or 0)
    assert cli.main(["demo", "grpo", "--steps", "2", "trainer.test_freq=1", "--dir", "d", "data.seed=3"]) == 0
    assert cli.main(["demo", "trainer.test_freq=1", "--model", "tiny_cpu", "--verbose"]) == 0
    assert calls == [
        ("grpo", "smollm2_135m", 2, "d", ["trainer.test_freq=1", "data.seed=3"], False),
        ("stapo", "tiny_cpu", 3, cli.DEMO_DIR, ["trainer.test_freq=1"], True),
    ]
    with pytest.raises(SystemExit, match="--steps must be >= 1"):
        cli.main(["demo", "--steps", "0"])


def test_cpu_preset_runs_with_the_cpu_platform(monkeypatch):
    from stapo_verl.cli import train_env

    env = train_env("tiny_cpu", {"STAPO_RUN_DIR": "/runs/x"})
    assert env["VERL_PLATFORM"] == "cpu" and env["VERL_FILE_LOGGER_ROOT"] == "/runs/x/logs"
    assert "VERL_PLATFORM" not in train_env("qwen3_8b", {})


ALLOCATOR_PROBE = """
    import ctypes, resource
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p

    def faults(size, times):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(times):  # what a tensor of `size` bytes does: allocated, written, freed
            p = libc.malloc(size)
            ctypes.memset(p, 1, size)
            libc.free(ctypes.c_void_p(p))
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults(4 << 20, 1)  # the first 4 MiB chunk is mapped; freeing it raises glibc's threshold
    print(faults(4 << 20, 50))
    big = libc.malloc(256 << 20)  # over glibc's 32 MiB ceiling: always mapped
    ctypes.memset(big, 1, 256 << 20)
    with open("/proc/self/smaps_rollup") as f:
        print(next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:")))
"""


def workers_env(overrides: list[str]) -> dict:
    """The environment a CPU preset's Ray workers start with (``ray_kwargs...env_vars``)."""
    from stapo_verl.experiments.launch import compose_config

    return dict(compose_config("stapo", "smollm2_135m", overrides).ray_kwargs.ray_init.runtime_env.env_vars)


def test_the_experiments_that_have_the_machine_alone_use_the_fast_allocator():
    """cpu_allocator=memory is the presets' default (README's first command within 8 GiB); the
    experiments run alone switch to fast, and either is one override away."""
    memory, fast = {"MALLOC_MMAP_THRESHOLD_": "131072"}, {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}

    def allocator(env):
        return {k: v for k, v in env.items() if k.startswith(("MALLOC_MMAP", "GLIBC"))}

    assert allocator(workers_env([])) == memory
    assert allocator(workers_env(["experiment=cpu_comparison"])) == fast
    assert allocator(workers_env(["experiment=cpu_stability"])) == fast
    assert allocator(workers_env(["experiment=cpu_stability", "cpu_allocator=memory"])) == memory
    switched = workers_env(["cpu_allocator=fast"])
    assert allocator(switched) == fast and switched["MALLOC_ARENA_MAX"] == "2"  # the rest of cpu_base's env stays


@pytest.mark.slow
def test_the_allocator_settings_do_what_the_docs_say_in_the_workers_environment():
    """In a process started with the Ray workers' environment: cpu_allocator=memory (the presets')
    faults every freed tensor in afresh; cpu_allocator=fast reuses freed chunks and maps large ones
    in huge pages (benchmarks/results/malloc_settings.json: the page faults cost the update)."""
    import platform

    import verl  # noqa: F401

    pages = 50 * (4 << 20) // 4096  # 4 KiB pages the 50 allocations touch
    unmapped, _ = map(int, run_python(ALLOCATOR_PROBE, **workers_env([])).split())
    assert unmapped >= pages // 2, unmapped  # the presets: every allocation faulted in again
    fast = workers_env(["cpu_allocator=fast"])
    reused, huge_kib = map(int, run_python(ALLOCATOR_PROBE, **fast).split())
    assert reused < pages // 10, (reused, pages)  # freed chunks reused, not faulted in afresh
    thp_path = "/sys/kernel/mm/transparent_hugepage/enabled"
    thp = open(thp_path).read() if os.path.exists(thp_path) else "[never]"
    glibc = tuple(int(x) for x in platform.libc_ver()[1].split(".")[:2])
    if "[never]" in thp or glibc < (2, 35):  # glibc.malloc.hugetlb arrived in 2.35
        pytest.skip(f"no transparent huge pages to ask for here (THP: {thp.strip()}, glibc {glibc})")
    assert huge_kib >= 128 << 10, huge_kib  # most of the 256 MiB chunk in 2 MiB pages


def test_the_demos_progress_shows_only_its_own_steps(tmp_path, capsys):
    """A demo run again in the same directory: the last run's metrics file is not its progress."""
    from stapo_verl import cli

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "data": {"critic/score/mean": 0.5}}) + "\n" for s in (1, 2, 3)))
    writes_one_step = (
        f"open({str(metrics)!r}, 'w').write({json.dumps({'step': 1, 'data': {'critic/score/mean': -0.25}})!r} + '\\n')"
    )
    code = cli.run_with_progress(
        [sys.executable, "-c", writes_one_step], {}, str(tmp_path / "out.log"), str(metrics), 3
    )
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("step")]
    assert len(lines) == 1 and "step 1/3" in lines[0] and "-0.25" in lines[0], lines
