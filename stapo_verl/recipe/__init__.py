"""Hydra configs for verl's main_ppo: ``config/stapo_trainer.yaml`` with groups ``algorithm`` and ``model``."""

import json
import os

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")
CONFIG_NAME = "stapo_trainer"
METHODS = ("stapo", "grpo", "entropy20", "justrl")
# The CPU presets (run with VERL_PLATFORM=cpu): model name -> (the environment variable their
# model/<name>.yaml reads for the directory of their locally made files, its default).
CPU_MODELS = {
    "smollm2_135m": ("STAPO_SMOLLM2_DIR", os.path.join(os.path.expanduser("~"), ".cache", "stapo-verl", "smollm2")),
    "tiny_cpu": ("STAPO_TINY_DIR", os.path.join(os.path.expanduser("~"), ".cache", "stapo-verl", "tiny")),
}
MODELS = ("qwen3_1.7b", "qwen3_8b", "qwen3_14b", *CPU_MODELS)


def built_files(marker: str, spec: dict) -> dict | None:
    """What a CPU preset's maker recorded in ``marker`` (JSON), if it made the files ``spec`` describes."""
    if not os.path.exists(marker):
        return None
    with open(marker) as f:
        built = json.load(f)
    return built if {k: built.get(k) for k in spec} == spec else None
