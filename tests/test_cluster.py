"""The per-node placement check added to verl's resource check (stapo_verl/integration/cluster.py)."""

import pytest

from stapo_verl.integration.cluster import placement_problem

TWO_ONE_SLOT_NODES = [{"GPU": 1.0, "CPU": 8.0}, {"GPU": 1.0, "CPU": 8.0}]


def test_groups_that_fit_node_by_node_pass():
    assert placement_problem([1, 1], TWO_ONE_SLOT_NODES, 3) is None
    assert placement_problem([8, 8], [{"GPU": 8, "CPU": 96}] * 2, 3) is None
    assert placement_problem([2, 2], [{"GPU": 4, "CPU": 32}], 3) is None  # two groups on one big node


@pytest.mark.parametrize(
    "groups, nodes, why",
    [
        ([2], TWO_ONE_SLOT_NODES, "1 node(s) x 2 trainer process(es)"),  # verl's total check passes: 2 >= 2
        ([1, 1, 1], TWO_ONE_SLOT_NODES, "3 node(s) x 1 trainer process(es)"),
        ([1, 1], [{"GPU": 1, "CPU": 2}, {"GPU": 1, "CPU": 8}], "3 CPU slots"),  # GPU slots enough, CPU not
    ],
)
def test_groups_no_node_can_hold_are_named_with_the_clusters_free_slots(groups, nodes, why):
    problem = placement_problem(groups, nodes, 3)
    assert why in problem and "trainer.nnodes x trainer.n_gpus_per_node" in problem
    assert str(sorted((int(n["GPU"]), int(n["CPU"])) for n in nodes)) in problem


def test_the_check_goes_in_front_of_verls(monkeypatch):
    """(The plugin installs it only on the CPU platform: tests/test_plugin.py.)"""
    import ray
    import verl  # noqa: F401
    from verl.single_controller.ray.base import ResourcePoolManager

    from stapo_verl.integration.cluster import install_placement_check

    before = ResourcePoolManager._check_resource_available
    install_placement_check()
    check = ResourcePoolManager._check_resource_available
    monkeypatch.setattr(ResourcePoolManager, "_check_resource_available", before)  # this process's verl back after
    assert getattr(check, "stapo_verl", False)
    monkeypatch.setattr(
        ray._private.state,
        "available_resources_per_node",
        lambda: {"a": {"GPU": 1.0, "CPU": 8.0}, "b": {"GPU": 1.0, "CPU": 8.0}},
    )
    manager = ResourcePoolManager(resource_pool_spec={"global_pool": [2]}, mapping={})
    with pytest.raises(ValueError, match=r"stapo-verl: the Ray cluster cannot place 1 node\(s\) x 2"):
        check(manager)


def test_a_run_that_joins_a_cluster_hands_its_environment_to_the_workers():
    """On a Ray of the run's own the workers inherit the driver's environment; on a joined
    cluster only ray_init's runtime_env reaches them: the preset's files, run dir and metrics."""
    from stapo_verl.cli import forwarded_env, joins_a_cluster

    assert joins_a_cluster(["ray_kwargs.ray_init.address=10.0.0.1:6379"])
    assert not joins_a_cluster([]) and not joins_a_cluster(["ray_kwargs.ray_init.address=local"])
    env = {"STAPO_TINY_DIR": "/data/tiny", "STAPO_RUN_DIR": "/runs/a", "VERL_FILE_LOGGER_PATH": "/runs/a/m.jsonl"}
    assert forwarded_env("tiny_cpu", env) == [
        "++ray_kwargs.ray_init.runtime_env.env_vars.STAPO_TINY_DIR='/data/tiny'",
        "++ray_kwargs.ray_init.runtime_env.env_vars.STAPO_RUN_DIR='/runs/a'",
        "++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH='/runs/a/m.jsonl'",
    ]
