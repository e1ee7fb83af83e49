"""Several trainer ranks, and two Ray nodes, through verl's own main_ppo on CPU (issue 28).

S2T's decisions are mini-batch-global (the entropy quantile over every rank's candidates, the
renormalising token count over all ranks). Here one seeded step of the tiny preset (one PPO
mini-batch: e2e_runs.ONE_MINI_BATCH) runs on one rank (the toy grid's STAPO run, conftest.toy_grid)
and on two ranks, and what verl logged is compared: the same samples (the seeded agent loop
puts a seed in every request, so two rollout replicas sample what one does), the same S2T
decisions, the same loss and gradient norm to float precision (fp32: the two runs split the
mini-batch into other micro-batches and sum in another order). The two STAPO ranks run on two
Ray nodes joined on this machine (``ray start --head`` + ``ray start --address``, each offering
one "GPU" slot), through ``ray_kwargs.ray_init.address`` as on a cluster. (20-Entropy's
mini-batch scope over ranks: test_distributed, on verl's loss path with two gloo ranks.)
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from e2e_runs import ALL_POSITIVE_ARE_CANDIDATES, EXACT, ONE_MINI_BATCH, train, training_rows

pytestmark = pytest.mark.e2e
NO_VALIDATION = ("trainer.val_before_train=false", "trainer.test_freq=-1")
# float tolerance of the one-vs-two-ranks comparison: fp32; the two runs cut the (one) mini-batch
# into other micro-batches and reduce gradients in another order
RELATIVE = 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwoRayNodes:
    """A head node and a second node on this machine, both on 127.0.0.1, one "GPU" slot each.
    Stopped by killing only their own processes (``ray stop`` would stop every Ray on the machine)."""

    def __init__(self, temp_dir: str):
        self.temp_dir, self.port = temp_dir, free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Ray 2.60's `ray start --head` authenticates with the token in ~/.ray/auth_token: every
        # process that joins (a node, a driver) must be in token mode too
        self.env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "token"}

    def _ray(self, *args: str) -> None:
        ray = os.path.join(os.path.dirname(sys.executable), "ray")
        result = subprocess.run(
            [
                ray,
                "start",
                "--node-ip-address=127.0.0.1",
                "--num-cpus=8",
                "--num-gpus=1",
                "--disable-usage-stats",
                *args,
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    def __enter__(self):
        self._ray("--head", f"--port={self.port}", f"--temp-dir={self.temp_dir}", "--include-dashboard=false")
        self._ray(f"--address={self.address}")
        return self

    def nodes(self) -> list[dict]:
        code = (
            f"import ray; ray.init(address='{self.address}'); "
            "print([n['Resources'].get('GPU', 0) for n in ray.nodes() if n['Alive']])"
        )
        result = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        return eval(result.stdout.strip().splitlines()[-1])

    def __exit__(self, *exc):
        mine = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().decode(errors="replace")
            except OSError:
                continue
            if self.temp_dir in cmdline or f"127.0.0.1:{self.port}" in cmdline:
                mine.append(int(pid))
        for pid in mine:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1)


@pytest.fixture(scope="module")
def two_ray_nodes():
    import tempfile

    with TwoRayNodes(tempfile.mkdtemp(prefix="ray_", dir="/tmp")) as cluster:  # short: Ray's socket paths
        assert cluster.nodes() == [1.0, 1.0]
        yield cluster


def joining(cluster: TwoRayNodes) -> list[str]:
    """verl's usual way onto an existing cluster: ray_init's address (the CPU presets' default,
    ``local``, starts a Ray of the run's own); their local sizes (num_cpus, num_gpus) must go, as
    Ray refuses them when it joins a cluster."""
    return [
        f"ray_kwargs.ray_init.address={cluster.address}",
        "ray_kwargs.ray_init.num_cpus=null",
        "ray_kwargs.ray_init.num_gpus=null",
    ]


def first_step(log) -> dict:
    return next(row for row in training_rows(log) if row["step"] == 1)


def assert_same_samples(one: dict, two: dict) -> None:
    for key in ("response_length/mean", "response_length/max", "critic/score/mean", "critic/advantages/max"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key


def test_stapo_decides_alike_on_one_rank_and_on_two_ray_nodes(tiny_dir, toy_grid, two_ray_nodes, tmp_path):
    from conftest import INTERRUPTED

    # the same step on one rank: the toy grid's STAPO run (fp32, tau_p = 1, one mini-batch, data and
    # rollout seed 0; its validation before training changes no sample)
    one = first_step(toy_grid.out / "runs" / INTERRUPTED / "metrics.jsonl")
    train(
        "stapo",
        tiny_dir,
        tmp_path,
        1,
        ALL_POSITIVE_ARE_CANDIDATES,
        EXACT,
        ONE_MINI_BATCH,
        "data.seed=0",
        "actor_rollout_ref.rollout.seed=0",
        "trainer.nnodes=2",
        "trainer.n_gpus_per_node=1",
        *joining(two_ray_nodes),
        *NO_VALIDATION,
        env=two_ray_nodes.env,
    )
    two = first_step(tmp_path / "logs" / "stapo" / "stapo_tiny_cpu.jsonl")
    assert_same_samples(one, two)
    assert one["actor/s2t/candidates"] > 0 and one["actor/s2t/silenced"] > 0  # S2T acts at this threshold
    for key in ("actor/s2t/valid_tokens", "actor/s2t/candidates", "actor/s2t/silenced"):
        assert two[key] == one[key], key  # counts: exactly
    assert two["actor/s2t/tau_entropy"] == pytest.approx(one["actor/s2t/tau_entropy"], rel=RELATIVE)
    # the two ranks held different numbers of candidates, and the rule pooled them
    assert one["actor/s2t/candidates_rank_min"] == one["actor/s2t/candidates_rank_max"] == one["actor/s2t/candidates"]
    low, high = two["actor/s2t/candidates_rank_min"], two["actor/s2t/candidates_rank_max"]
    assert low < high and low + high == two["actor/s2t/candidates"]
    for key in ("actor/pg_loss", "actor/grad_norm"):
        assert two[key] == pytest.approx(one[key], rel=RELATIVE), key


# In a process of verl's on the CPU platform that joined the two nodes: the plugin installed the
# per-node check when verl's Ray module was imported, and the check reads the real cluster's free slots
PLACE_TWO_RANKS_ON_ONE_NODE = """
import ray
from verl.single_controller.ray.base import ResourcePoolManager
ray.init(address={address!r})
manager = ResourcePoolManager(resource_pool_spec={{"global_pool": [{per_node}] * {nnodes}}}, mapping={{}})
try:
    manager._check_resource_available()
except ValueError as error:
    print(error)
"""


def test_ranks_the_cluster_cannot_place_are_refused_naming_the_numbers(two_ray_nodes):
    """2 ranks on one node where each node has 1 slot, which verl's own check (the cluster's
    total) lets through and then waits for forever. (The other shapes the cluster cannot hold,
    e.g. 3 nodes on 2: test_cluster, on the check itself.)"""
    nnodes, per_node = 1, 2
    code = PLACE_TWO_RANKS_ON_ONE_NODE.format(address=two_ray_nodes.address, nnodes=nnodes, per_node=per_node)
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**two_ray_nodes.env, "VERL_PLATFORM": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = next(line for line in result.stdout.splitlines() if "the Ray cluster cannot place" in line)
    assert f"cannot place {nnodes} node(s) x {per_node} trainer process(es)" in line
    # the cluster's free (GPU, CPU) slots per node
    assert re.search(r"\(GPU, CPU\) slots free: \[\(1, \d+\), \(1, \d+\)\]", line), line
