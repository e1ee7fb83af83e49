"""verl loads stapo-verl by itself (entry point group verl.plugins), and a broken install is loud."""

import os
import subprocess
import sys

import pytest


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


def test_import_verl_alone_registers_losses_and_worker_hook():
    result = run_python(
        "import verl\n"
        "from verl.trainer.ppo.core_algos import get_policy_loss_fn\n"
        "from verl.workers.engine_workers import ActorRolloutRefWorker\n"
        "print(get_policy_loss_fn('stapo').__name__, get_policy_loss_fn('entropy20').__name__)\n"
        "print(ActorRolloutRefWorker.actor_worker_cls.__name__)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "compute_policy_loss_stapo compute_policy_loss_entropy20" in result.stdout
    assert "TokenMaskTrainingWorker" in result.stdout


def test_without_the_plugin_verl_does_not_know_stapo():
    # the control for the test above: the registration really comes from the entry point
    result = run_python(
        "import verl\nfrom verl.trainer.ppo.core_algos import get_policy_loss_fn\nget_policy_loss_fn('stapo')",
        VERL_USE_EXTERNAL_PLUGINS="none",
    )
    assert result.returncode != 0 and "Unsupported loss mode: stapo" in result.stderr


def test_check_command():
    result = subprocess.run(
        [sys.executable, "-m", "stapo_verl", "check"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "stapo-verl OK" in result.stdout


def test_failed_install_is_logged_at_error_level():
    result = run_python(
        "import verl.workers.engine_workers as ew\n"
        "class OtherWorker(ew.TrainingWorker): pass\n"
        "ew.ActorRolloutRefWorker.actor_worker_cls = OtherWorker\n"
        "import stapo_verl.plugin as plugin\n"
        "print('install error:', plugin.INSTALL_ERROR)\n",
        VERL_USE_EXTERNAL_PLUGINS="none",
    )
    assert result.returncode == 0, result.stderr
    assert "stapo-verl: failed to install into verl" in result.stderr
    assert "already replaced by __main__.OtherWorker" in result.stdout


def test_failed_install_fails_config_validation(monkeypatch):
    from stapo_verl import plugin
    from stapo_verl.config import TokenMaskPolicyLossConfig

    monkeypatch.setattr(plugin, "INSTALL_ERROR", ImportError("boom"))
    with pytest.raises(RuntimeError, match="failed to install into verl: ImportError"):
        TokenMaskPolicyLossConfig(loss_mode="stapo")
    TokenMaskPolicyLossConfig(loss_mode="vanilla")  # other modes do not need the plugin
