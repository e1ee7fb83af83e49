"""stapo.cpu_precision: auto picks bf16 where the CPU multiplies bf16 natively, else fp32; the CPU
presets' actor, reference and rollout follow it; bad values are refused before anything starts."""

from __future__ import annotations

import pytest

from stapo_verl.cpu import precision
from stapo_verl.cpu.precision import cpu_flags, native_bf16, resolve_precision

X86_WITHOUT = "fpu vme sse sse2 avx avx2 fma avx512f avx512bw avx512_vnni"
X86_AMX = X86_WITHOUT + " avx512_bf16 amx_bf16 amx_tile amx_int8"


def test_auto_is_fp32_without_native_bf16_and_bf16_with_it():
    assert resolve_precision("auto", X86_WITHOUT.split())[0] == "fp32"
    assert resolve_precision("auto", X86_AMX.split()) == ("bf16", "this CPU has AMX-BF16")
    assert resolve_precision("auto", [*X86_WITHOUT.split(), "avx512_bf16"]) == ("bf16", "this CPU has AVX512-BF16")
    assert resolve_precision("auto", "fp asimd sve bf16 i8mm".split())[0] == "bf16"  # Arm's Features line
    assert "no native bf16 matrix instructions" in resolve_precision("auto", [])[1]
    for setting in ("bf16", "fp32"):  # an explicit choice is taken as it is, on any CPU
        assert resolve_precision(setting, X86_AMX.split())[0] == resolve_precision(setting, [])[0] == setting


def test_flags_come_from_the_kernels_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text(f"processor\t: 0\nflags\t\t: {X86_AMX}\n\nprocessor\t: 1\nflags\t\t: {X86_AMX}\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm bf16 sve\nCPU implementer\t: 0x41\n")
    assert native_bf16(cpu_flags(str(x86))) == "AMX-BF16"
    assert native_bf16(cpu_flags(str(arm))) == "the Arm BF16 extension"
    assert "amx_bf16" not in cpu_flags(str(tmp_path / "missing"))  # no file: no flags claimed


def test_an_unknown_value_lists_the_accepted_ones():
    with pytest.raises(ValueError, match=r"stapo.cpu_precision must be one of \['auto', 'bf16', 'fp32'\], got 'fp16'"):
        resolve_precision("fp16")


def test_bf16_forced_on_a_cpu_without_it_runs_after_one_warning(monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_flags", lambda: set(X86_WITHOUT.split()))
    monkeypatch.setattr(precision, "_warned", False)
    assert [precision.cpu_dtype("bf16", "torch") for _ in range(3)] == ["bfloat16"] * 3
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and "runs slower than fp32" in warnings[0]
    assert precision.cpu_dtype("auto") == "fp32"


def compose_preset(model: str, *overrides: str):
    import verl  # noqa: F401  (the plugin registers the resolver)
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from stapo_verl.recipe import CONFIG_DIR, CONFIG_NAME

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(CONFIG_NAME, overrides=["algorithm=stapo", f"model={model}", *overrides])
    OmegaConf.resolve(cfg)  # as main_ppo does
    return cfg


def dtypes(cfg) -> dict:
    actor, ref = cfg.actor_rollout_ref.actor.fsdp_config, cfg.actor_rollout_ref.ref.fsdp_config
    return {
        "actor_compute": actor.mixed_precision.param_dtype,
        "ref_compute": ref.mixed_precision.param_dtype,
        "rollout": cfg.actor_rollout_ref.rollout.dtype,
        "master_weights": (actor.model_dtype, ref.model_dtype),
        "reduce": (actor.mixed_precision.reduce_dtype, ref.mixed_precision.reduce_dtype),
    }


BF16 = {
    "actor_compute": "bf16",
    "ref_compute": "bf16",
    "rollout": "bfloat16",
    "master_weights": ("fp32", "fp32"),
    "reduce": ("fp32", "fp32"),
}
FP32 = {**BF16, "actor_compute": "fp32", "ref_compute": "fp32", "rollout": "float32"}


@pytest.mark.parametrize("model", ["smollm2_135m", "tiny_cpu"])
@pytest.mark.slow
def test_the_cpu_presets_follow_the_switch_as_verl_on_gpu(model, monkeypatch):
    """bf16 = verl's GPU mixed precision: bf16 compute and rollout, fp32 master weights and
    gradient reduction; fp32 = fp32 everywhere; auto follows the CPU's flags."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: set(X86_AMX.split()))
    assert dtypes(compose_preset(model)) == BF16
    assert dtypes(compose_preset(model, "stapo.cpu_precision=fp32")) == FP32
    monkeypatch.setattr(precision, "cpu_flags", lambda: set(X86_WITHOUT.split()))
    assert dtypes(compose_preset(model)) == FP32
    assert dtypes(compose_preset(model, "stapo.cpu_precision=bf16")) == BF16


def test_the_train_command_names_the_precision_and_refuses_a_bad_value(monkeypatch):
    from stapo_verl.cli import check_config

    monkeypatch.setattr(precision, "cpu_flags", lambda: set(X86_AMX.split()))
    assert check_config("stapo", "tiny_cpu", []) == "bf16: this CPU has AMX-BF16"
    assert check_config("stapo", "tiny_cpu", ["stapo.cpu_precision=fp32"]) == "fp32: stapo.cpu_precision=fp32"
    assert check_config("stapo", "qwen3_1.7b", []) == ""  # GPU presets: verl's own bf16
    with pytest.raises(ValueError, match=r"must be one of \['auto', 'bf16', 'fp32'\], got 'half'"):
        check_config("stapo", "smollm2_135m", ["stapo.cpu_precision=half"])


def test_the_hf_rollout_server_samples_in_the_rollout_dtype_and_syncs_fp32_weights(tmp_path):
    import torch
    from test_cpu import make_server

    from stapo_verl.cpu.tiny import prepare_tiny

    prepare_tiny(str(tmp_path), sft_steps=5)
    server = make_server(str(tmp_path / "model"), dtype="bfloat16")
    assert {p.dtype for p in server.model.parameters()} == {torch.bfloat16}
    # (named_parameters: a tied output layer appears once, as the sync sends it)
    master = {name: torch.randn_like(t, dtype=torch.float32) for name, t in server.model.named_parameters()}
    server.update_weights(master, global_steps=1)  # the actor's fp32 master weights, cast on load
    own = server.model.state_dict()
    assert all(own[name].dtype == torch.bfloat16 and torch.equal(own[name], w.bfloat16()) for name, w in master.items())
