"""Hydra configs for verl's main_ppo: ``config/stapo_trainer.yaml`` with groups ``algorithm`` and ``model``."""

import os

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")
CONFIG_NAME = "stapo_trainer"
METHODS = ("stapo", "grpo", "entropy20", "justrl")
MODELS = ("qwen3_1.7b", "qwen3_8b", "qwen3_14b", "tiny_cpu")  # tiny_cpu: the CPU demo / CI preset
CPU_MODELS = ("tiny_cpu",)  # run with VERL_PLATFORM=cpu
# where model/tiny_cpu.yaml looks for the tiny model and data unless STAPO_TINY_DIR is set
TINY_DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "stapo-verl", "tiny")
