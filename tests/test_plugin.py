"""verl loads stapo-verl by itself (entry point group verl.plugins), and a broken install is loud."""

import os
import subprocess
import sys

import pytest


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


@pytest.mark.slow
def test_import_verl_alone_registers_losses_and_worker_hook():
    result = run_python(
        "import sys, verl\n"
        "print('engines loaded by import verl:', 'verl.workers.engine_workers' in sys.modules)\n"
        "from verl.trainer.ppo.core_algos import get_policy_loss_fn\n"
        "from verl.workers.engine_workers import ActorRolloutRefWorker\n"
        "print(get_policy_loss_fn('stapo').__name__, get_policy_loss_fn('entropy20').__name__)\n"
        "print(type(ActorRolloutRefWorker.__dict__['actor_worker_cls']).__name__)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "compute_policy_loss_stapo compute_policy_loss_entropy20" in result.stdout
    assert "ActorWorkerChoice" in result.stdout
    # the hook waits for verl's engine workers: Ray processes that never train stay ~140 MB smaller
    assert "engines loaded by import verl: False" in result.stdout


@pytest.mark.slow
def test_without_the_plugin_verl_does_not_know_stapo():
    # the control for the test above: the registration really comes from the entry point
    result = run_python(
        "import verl\nfrom verl.trainer.ppo.core_algos import get_policy_loss_fn\nget_policy_loss_fn('stapo')",
        VERL_USE_EXTERNAL_PLUGINS="none",
    )
    assert result.returncode != 0 and "Unsupported loss mode: stapo" in result.stderr


@pytest.mark.slow
def test_check_command():
    result = subprocess.run([sys.executable, "-m", "stapo_verl", "check"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "stapo-verl OK" in result.stdout


@pytest.mark.slow
def test_failed_install_is_logged_at_error_level():
    result = run_python(
        "import verl.workers.engine_workers as ew\n"
        "class OtherWorker(ew.TrainingWorker): pass\n"
        "ew.ActorRolloutRefWorker.actor_worker_cls = OtherWorker\n"
        "import stapo_verl.plugin\n"
        "from stapo_verl import install_state\n"
        "print('install error:', install_state.INSTALL_ERROR)\n",
        VERL_USE_EXTERNAL_PLUGINS="none",
    )
    assert result.returncode == 0, result.stderr
    assert "stapo-verl: failed to install into verl" in result.stderr
    assert "already replaced by __main__.OtherWorker" in result.stdout


def test_failed_install_fails_config_validation(monkeypatch):
    from stapo_verl import install_state
    from stapo_verl.method.config import TokenMaskPolicyLossConfig

    monkeypatch.setattr(install_state, "INSTALL_ERROR", ImportError("boom"))
    with pytest.raises(RuntimeError, match="failed to install into verl: ImportError"):
        TokenMaskPolicyLossConfig(loss_mode="stapo")
    TokenMaskPolicyLossConfig(loss_mode="vanilla")  # other modes do not need the plugin


def stapo_import_graph() -> dict[str, set[str]]:
    """Module -> the stapo_verl modules it imports (at module level or inside functions)."""
    import ast

    root = os.path.join(os.path.dirname(__file__), "..", "stapo_verl")
    files = {}
    for directory, _, names in os.walk(root):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                module = "stapo_verl." + os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                files[module.removesuffix(".__init__")] = path
    graph = {}
    for module, path in files.items():
        targets = set()
        with open(path) as f:
            for node in ast.walk(ast.parse(f.read())):
                if isinstance(node, ast.Import):
                    targets |= {alias.name for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module:
                    targets |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[module] = {t for t in targets if t in files and t != module}
    return graph


def test_no_import_cycles_in_the_package():
    graph = stapo_import_graph()
    assert "stapo_verl.integration.worker" in graph["stapo_verl.plugin"]  # the graph sees the imports
    state = {}  # module -> "open" while on the DFS path, "done" after

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            assert state.get(target) != "open", "import cycle: " + " -> ".join(path + [target])
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


# The package's rooms, lowest first: a module imports only from its own room or lower ones (the
# plugin and the command line, at the top, may import anything). compat, install_state and runlog are
# rooms of one module each, used everywhere and importing nothing of the package.
ROOMS = [
    "compat",
    "install_state",
    "runlog",
    "recipe",
    "method",
    "tasks",
    "cpu",
    "experiments",
    "analysis",
    "integration",
]


def room(module: str) -> str | None:
    """The room of a module (None for the package itself and its top-level modules)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ROOMS) else None


def test_imports_only_go_down_the_rooms():
    graph = stapo_import_graph()
    rooms = {room(m) for m in graph} - {None}
    assert rooms == set(ROOMS), rooms  # every module is in a room, or top-level
    upward = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if room(module) and room(target) and ROOMS.index(room(target)) > ROOMS.index(room(module))
    ]
    assert not upward, upward
    top_level = sorted(m for m in graph if room(m) is None)
    assert top_level == ["stapo_verl", "stapo_verl.__main__", "stapo_verl.cli", "stapo_verl.plugin"]


OPT_IN_PROBE = """
import verl, sys
from omegaconf import OmegaConf
from verl.workers import engine_workers as ew
from verl.single_controller.ray.base import ResourcePoolManager
from verl.workers.rollout.base import _ROLLOUT_REGISTRY
import verl.experimental.agent_loop.agent_loop as al

def actor_of(**policy_loss):
    worker = ew.ActorRolloutRefWorker.__new__(ew.ActorRolloutRefWorker)
    worker.config = OmegaConf.create({"actor": {"policy_loss": policy_loss}})
    cls = worker.actor_worker_cls
    return cls.__module__ + "." + cls.__qualname__

check = ResourcePoolManager._check_resource_available
print("grpo", actor_of(loss_mode="vanilla"))
print("grpo_is_verls", actor_of(loss_mode="vanilla") == "verl.workers.engine_workers.TrainingWorker")
print("stapo", actor_of(loss_mode="stapo"))
print("gspo_with_mask", actor_of(loss_mode="gspo", token_mask="s2t"))
print("placement_check", check.__module__, getattr(check, "stapo_verl", False))
print("hf_rollout", ("hf", "async") in _ROLLOUT_REGISTRY)
print("seeded_loop", "seeded_single_turn_agent" in al._agent_loop_registry)
print("ref_worker", ew.ActorRolloutRefWorker.ref_worker_cls.__qualname__)
"""


def probe(**env) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    result = subprocess.run(
        [sys.executable, "-c", OPT_IN_PROBE], capture_output=True, text=True, timeout=300, env={**environment, **env}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(line.split(" ", 1) for line in result.stdout.splitlines() if not line.startswith("stapo-verl:"))


@pytest.mark.slow
def test_a_run_that_asks_for_nothing_of_the_plugin_gets_verls_own_classes():
    """Installed, the plugin leaves a GPU run of GRPO on verl's own actor worker (the class
    itself), verl's own placement check, rollout and agent-loop registries and reference worker."""
    seen = probe()
    assert seen["grpo"] == "verl.workers.engine_workers.TrainingWorker" and seen["grpo_is_verls"] == "True"
    assert seen["placement_check"] == "verl.single_controller.ray.base False"
    assert seen["hf_rollout"] == seen["seeded_loop"] == "False"
    assert seen["ref_worker"] == "TrainingWorker"
    # a token mask, by its loss or put under another loss, is what selects the hook
    assert seen["stapo"] == seen["gspo_with_mask"] == "stapo_verl.integration.worker.TokenMaskTrainingWorker"


@pytest.mark.slow
def test_the_cpu_platform_turns_on_the_cpu_backends():
    seen = probe(VERL_PLATFORM="cpu")
    assert seen["grpo"] == "stapo_verl.cpu.workers.CPUTrainingWorker"  # gloo process group, verl's worker otherwise
    assert seen["placement_check"].endswith("True")
    assert seen["hf_rollout"] == seen["seeded_loop"] == "True"
    assert seen["ref_worker"] == "CPUTrainingWorker"
    assert seen["stapo"] == "stapo_verl.integration.worker.TokenMaskTrainingWorker"
