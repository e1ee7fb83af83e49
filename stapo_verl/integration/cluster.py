"""Can the Ray cluster place verl's trainer processes? Refused at once, naming the numbers, if not.

verl puts each of its "nodes" (``trainer.nnodes`` of them, ``trainer.n_gpus_per_node`` processes
each) in a Ray placement group packed onto one Ray node (``STRICT_PACK``), a bundle of one GPU
slot and ``max_colocate_count`` CPU slots per process, and then waits for the groups with no
timeout. Its own check before that compares only the cluster's total of GPU slots: ranks per node
that no single node can hold (two 1-slot nodes asked for ``n_gpus_per_node=2``), or CPU slots
short, pass the check and then wait forever. :func:`install_placement_check` adds the per-node
check to verl's (the plugin installs it when verl's Ray module is imported), so such a run fails
before any worker starts, in one line.
"""

from __future__ import annotations


def placement_problem(
    groups: list[int], nodes: list[dict[str, float]], cpus_per_process: float, gpu: str = "GPU"
) -> str | None:
    """Why ``groups`` (processes per placement group, each group on one node) do not fit on
    ``nodes`` (each node's free resources, e.g. ``{"GPU": 1, "CPU": 8}``), or None.

    First-fit decreasing over the nodes, the largest groups first: exact when the groups are
    equal (verl's ``[n_gpus_per_node] * nnodes``), and for the other cases a group that fits
    nowhere by this rule is reported, not waited for."""
    free = [dict(node) for node in nodes]
    for processes in sorted(groups, reverse=True):
        need = {gpu: processes, "CPU": processes * cpus_per_process}
        node = next((n for n in free if all(n.get(k, 0) >= v for k, v in need.items())), None)
        if node is None:
            slots = sorted((int(n.get(gpu, 0)), int(n.get("CPU", 0))) for n in nodes)
            return (
                f"the Ray cluster cannot place {len(groups)} node(s) x {max(groups)} trainer process(es) "
                f"(trainer.nnodes x trainer.n_gpus_per_node; each node's processes need {processes} {gpu} and "
                f"{processes * cpus_per_process:g} CPU slots free on one Ray node); its {len(nodes)} node(s) "
                f"have ({gpu}, CPU) slots free: {slots}"
            )
        for key, value in need.items():
            node[key] -= value
    return None


def install_placement_check() -> None:
    """Wrap verl's ``ResourcePoolManager._check_resource_available`` with :func:`placement_problem`."""
    from stapo_verl import compat

    def make(verl_check):
        def check_resource_available(self):
            from verl.utils.device import get_resource_name

            gpu = get_resource_name()
            available = compat.available_resources_per_node()  # as verl's own check reads them
            groups = [n for spec in self.resource_pool_spec.values() for n in spec]
            problem = placement_problem(groups, list(available.values()), self.max_colocate_count, gpu)
            if problem is not None:
                raise ValueError(f"stapo-verl: {problem}")
            return verl_check(self)

        return check_resource_available

    compat.wrap_resource_check(make)
