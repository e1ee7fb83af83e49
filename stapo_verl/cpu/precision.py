"""The CPU presets' precision: ``stapo.cpu_precision`` = ``auto`` (default), ``bf16`` or ``fp32``.

``bf16`` is what verl does on GPU and what the paper's runs used: FSDP2 mixed precision with bf16
compute (``param_dtype``), fp32 master weights, gradient reduction and optimizer state, and bf16
rollouts. ``fp32`` computes everything in fp32. ``auto`` is bf16 where the CPU multiplies bf16
in hardware, else fp32.

Why ``auto`` looks at instruction sets: bf16 is fast on a CPU only when its matrix instructions
take bf16 operands (x86: AMX-BF16 tiles or AVX512-BF16 dot products; Arm: the BF16 extension).
Without them bf16 products fall back to slow kernels and bf16 runs far slower than fp32 while
still rounding like bf16 (benchmarks/matrix_rate.py). The flags are read from what the kernel reports
(``/proc/cpuinfo``: x86 ``flags``, Arm ``Features``; macOS: ``sysctl hw.optional.arm.FEAT_BF16``),
i.e. what the OS has enabled, without importing torch. Measured effect: benchmarks/cpu_precision.py.

The presets' YAML reads the choice through the OmegaConf resolver ``stapo.cpu_dtype``, which the
plugin registers on ``import verl`` (every process that composes or resolves a config).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable

PRECISIONS = ("auto", "bf16", "fp32")
# kernel flag -> the name a user knows, in order of preference
NATIVE_BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16", "bf16": "the Arm BF16 extension"}
# the spellings verl's configs use for each precision: fsdp mixed_precision (short) and dtype fields (torch)
DTYPE_NAMES = {"short": {"bf16": "bf16", "fp32": "fp32"}, "torch": {"bf16": "bfloat16", "fp32": "float32"}}
RESOLVER = "stapo.cpu_dtype"


def cpu_flags(cpuinfo_path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the kernel reports (empty where it reports none we can read)."""
    flags: set[str] = set()
    if os.path.exists(cpuinfo_path):
        with open(cpuinfo_path, errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    flags.update(value.split())
    elif sys.platform == "darwin":
        probe = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True)
        if probe.stdout.strip() == "1":
            flags.add("bf16")
    return flags


def native_bf16(flags: Iterable[str] | None = None) -> str | None:
    """The name of the CPU's native bf16 matrix instructions, or None."""
    flags = set(cpu_flags() if flags is None else flags)
    return next((name for flag, name in NATIVE_BF16_FLAGS.items() if flag in flags), None)


def resolve_precision(setting: str, flags: Iterable[str] | None = None) -> tuple[str, str]:
    """``(precision, reason)`` for a ``stapo.cpu_precision`` setting: precision is bf16 or fp32."""
    if setting not in PRECISIONS:
        raise ValueError(f"stapo.cpu_precision must be one of {list(PRECISIONS)}, got {setting!r}")
    native = native_bf16(flags)
    if setting == "auto":
        if native:
            return "bf16", f"this CPU has {native}"
        return "fp32", f"this CPU has no native bf16 matrix instructions ({', '.join(NATIVE_BF16_FLAGS.values())})"
    if setting == "bf16" and not native:
        return "bf16", (
            "stapo.cpu_precision=bf16 on a CPU without native bf16 matrix instructions: bf16 is "
            "emulated in fp32 here and runs slower than fp32"
        )
    return setting, f"stapo.cpu_precision={setting}"


_warned = False


def cpu_dtype(setting: str, style: str = "short") -> str:
    """The OmegaConf resolver: ``${stapo.cpu_dtype:${stapo.cpu_precision},torch}`` -> ``bfloat16``.
    Warns once per process (stderr) when bf16 is forced on a CPU that emulates it."""
    global _warned
    if style not in DTYPE_NAMES:
        raise ValueError(f"{RESOLVER}: style must be one of {list(DTYPE_NAMES)}, got {style!r}")
    precision, reason = resolve_precision(setting)
    if setting == "bf16" and native_bf16() is None and not _warned:
        _warned = True
        print(f"stapo-verl: warning: {reason}", file=sys.stderr, flush=True)
    return DTYPE_NAMES[style][precision]


def register_resolver() -> None:
    """``stapo.cpu_dtype`` for the presets' YAML (idempotent; not cached: each resolution reads it)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, cpu_dtype)
