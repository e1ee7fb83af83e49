"""stapo_verl.tasks.reward: exact on the benchmarks' gold answers, bounded and crash-free on anything."""

import contextlib
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from unittest import mock

import pandas as pd
import pytest
from test_data import BENCHMARKS, data_file

from stapo_verl.tasks.data import convert_file
from stapo_verl.tasks.reward import compute_score, last_boxed_answer

# Gold answers that math-verify 0.9.0 itself misparses, so that a perturbed answer of the same
# shape still "verifies" (the dapo grader is right on all three). Listed in docs/evaluation.md.
KNOWN_EXCEPTIONS = {
    "Minerva-261": "math-verify parses the gold expression as the number 2",
    "Olympiad-Bench-75": "the trailing '.' makes math-verify parse the set as 0",
    "Olympiad-Bench-121": "'N=n' parses as Eq(n, n) (symbols are case-folded)",
}
CALL_BOUND_S = 5.0  # generous: no single reward call may block longer


def perturb(gold: str) -> str:
    """A wrong answer close to the gold one."""
    try:
        return str(int(gold) + 1)
    except ValueError:
        pass
    try:
        return repr(float(gold) + 1)
    except ValueError:
        return f"{gold}+1"


@pytest.fixture(scope="module", params=["fixtures", "full"])
def benchmark_golds(request, tmp_path_factory):
    """Every benchmark's (id, gold answer): the committed fixtures (which hold the known
    exceptions), or the full files (1,546 answers) when $STAPO_FULL_DATA_DIR is set."""
    out = tmp_path_factory.mktemp("benchmarks")
    golds = {}
    for name in BENCHMARKS:
        report = convert_file(data_file(request.param, name), str(out), split="test")
        frame = pd.read_parquet(report.output)
        golds[name] = list(
            zip(frame.extra_info.map(lambda e: e["id"]), frame.reward_model.map(lambda r: r["ground_truth"]))
        )
    return golds


def test_gold_answers_score_correct_and_perturbed_ones_wrong(benchmark_golds, capsys):
    failures, lines, exceptions_seen = [], [], set()
    disagreements = Counter()
    for name, records in benchmark_golds.items():
        ok = Counter()
        for record_id, gold in records:
            right = f"Let me compute. Therefore, the final answer is $\\boxed{{{gold}}}$."
            wrong = f"Let me compute. Therefore, the final answer is $\\boxed{{{perturb(gold)}}}$."
            scores = {
                ("dapo", "right"): compute_score(name, right, gold, grader="dapo")["score"] == 1.0,
                ("dapo", "wrong"): compute_score(name, wrong, gold, grader="dapo")["score"] == -1.0,
                ("math_verify", "right"): compute_score(name, right, gold, grader="math_verify")["score"] == 1.0,
                ("math_verify", "wrong"): compute_score(name, wrong, gold, grader="math_verify")["score"] == 0.0,
            }
            ok.update(key for key, good in scores.items() if good)
            bad = [key for key, good in scores.items() if not good]
            if record_id in KNOWN_EXCEPTIONS:  # keep the list exact: each still fails, and only there
                assert bad == [("math_verify", "wrong")], (record_id, bad)
                exceptions_seen.add(record_id)
            elif bad:
                failures.append((record_id, gold, bad))
            disagreements[name] += scores[("dapo", "wrong")] != scores[("math_verify", "wrong")]
        n = len(records)
        lines.append(
            f"{name:>14}: n={n:4d}  dapo right {ok['dapo', 'right'] / n:7.2%} wrong {ok['dapo', 'wrong'] / n:7.2%}"
            f"  math_verify right {ok['math_verify', 'right'] / n:7.2%} wrong {ok['math_verify', 'wrong'] / n:7.2%}"
            f"  graders disagree on perturbed: {disagreements[name]}"
        )
    with capsys.disabled():
        print("\nreward on gold answers written as \\boxed{gold} (right) and perturbed (wrong):")
        print("\n".join(lines))
    assert not failures, failures[:20]
    assert exceptions_seen == set(KNOWN_EXCEPTIONS)  # both sources hold all three


def adversarial_outputs(count=2000, seed=0):
    rng = random.Random(seed)
    fixed = [
        "",
        " ",
        "\\boxed{",
        "\\boxed{}",
        "}" * 1000,
        "\\boxed{" * 5000,
        "{" * 100000 + "\\boxed{1}",
        "\\boxed{" + "{" * 50000 + "1" + "}" * 50000 + "}",
        "x" * 1_000_000,
        "\\boxed{1}" * 20000,
        "\\boxed{9^{9^{9^{9^{9^{9^{9}}}}}}}",
        "\\boxed{10^{10^{10^{10}}}!}",
        "\\boxed{(((((((((((1)))))))))))}",
        "\\boxed{\\frac{\\frac{\\frac{\\frac{1}{2}}{3}}{4}}{5}}",
        "\\boxed{\\sqrt{\\sqrt{\\sqrt{\\sqrt{2}}}}}",
        "\\boxed{" + "+".join(["x"] * 3000) + "}",
        "\\boxed{" + "\\left(" * 300 + "1" + "\\right)" * 300 + "}",
        "\\boxed{\\int_0^\\infty e^{-x^2} dx}",
        "\\boxed{\\sum_{n=1}^{\\infty} n^{n^{n}}}",
        "\\boxed{0/0}",
        "\\boxed{\\begin{pmatrix}" + "1&" * 500 + "1\\end{pmatrix}}",
        "\\boxed{∞ ∑ ∫ √ π ≈ ≠}",
        "\\boxed{\x00\x01\x02}",
        "\ud83d\ude00 \\boxed{😀}",
        "$" * 10000,
        "\\boxed{" + "$" * 999 + "}",
        "\\boxed{" + "a$" * 499 + "}",
        "\\boxed{\\text{" + "a" * 5000 + "}}",
        "\\boxed{1e999999}",
        "\\boxed{10**10**10**10}",
        "\\\\" * 50000,
    ]
    atoms = [
        "\\boxed{",
        "}",
        "{",
        "\\frac",
        "\\sqrt",
        "^",
        "_",
        "\\left(",
        "\\right)",
        "$",
        "9",
        "x",
        "\\pi",
        "\\infty",
        "!",
        "\\cdot",
        "=",
        ",",
        "\\text{",
        " ",
        "\\\\",
        "π",
        "é",
        "\x00",
        "e",
        "-",
    ]
    outputs = list(fixed)
    while len(outputs) < count:
        kind = rng.random()
        if kind < 0.5:
            body = "".join(rng.choice(atoms) for _ in range(rng.randint(1, 200)))
        elif kind < 0.8:
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))).decode("utf-8", errors="replace")
        else:
            depth = rng.randint(1, 60)
            body = "\\boxed{" + "^{".join(str(rng.randint(2, 99)) for _ in range(depth)) + "}" * depth
        outputs.append(body if rng.random() < 0.5 else f"Reasoning... \\boxed{{{body}}}")
    return outputs


@pytest.mark.parametrize("grader", ["dapo", "math_verify"])
@pytest.mark.slow
def test_fuzz_never_raises_and_is_bounded(grader, capsys):
    # the fixed hostile cases and random ones (the hostile family below covers infinities and towers)
    outputs = adversarial_outputs(300)
    assert len(outputs) >= 300
    slowest, timed_out = 0.0, 0
    for output in outputs:
        start = time.perf_counter()
        result = compute_score("fuzz", output, "42", grader=grader, hard_timeout_s=3.0)
        elapsed = time.perf_counter() - start
        slowest = max(slowest, elapsed)
        timed_out += bool(result.get("timed_out"))
        assert set(result) >= {"score", "acc", "pred"} and result["score"] in (-1.0, 0.0)
        assert elapsed < CALL_BOUND_S, (elapsed, output[:200])
    with capsys.disabled():
        print(
            f"\n{grader}: {len(outputs)} adversarial outputs, slowest call {slowest:.2f} s, {timed_out} hard timeouts"
        )
    # sanity: the grader is still alive and right after the storm
    assert compute_score("fuzz", "\\boxed{42}", "42", grader=grader)["acc"]


def test_hard_timeout_kills_and_restarts_the_helper():
    start = time.perf_counter()
    result = compute_score("x", "\\boxed{9^{9^{9^{9^{9^{9}}}}}}", "1", grader="math_verify", hard_timeout_s=0.2)
    assert result["timed_out"] and result["score"] == 0.0 and time.perf_counter() - start < CALL_BOUND_S
    assert compute_score("x", "\\boxed{\\frac{1}{2}}", "0.5", grader="math_verify")["acc"]


def test_works_from_a_thread():
    results = []

    def grade():
        results.append(compute_score("x", "so \\boxed{\\frac{1}{2}}", "0.5", grader="math_verify"))
        results.append(compute_score("x", "so \\boxed{3}", "3", grader="dapo"))

    threads = [threading.Thread(target=grade) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and all(r["acc"] for r in results)


@pytest.mark.slow
def test_works_in_a_ray_task():
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote
        def grade(solution, gold, grader):
            from stapo_verl.tasks.reward import compute_score

            return compute_score("x", solution, gold, grader=grader)

        results = ray.get(
            [grade.remote("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", "math_verify"), grade.remote("\\boxed{7}", "7", "dapo")]
        )
    finally:
        ray.shutdown()
    assert [r["acc"] for r in results] == [True, True]


@pytest.mark.parametrize("grader, grade", [("dapo", "dapo_score"), ("math_verify", "math_verify_score")])
def test_result_keys_never_vary(grader, grade, caplog):
    """verl collects every returned key per sample: a grader failure must keep the same keys."""
    from unittest import mock

    import stapo_verl.tasks.reward as reward

    normal = compute_score("x", "\\boxed{1}", "1", grader=grader)
    deep = compute_score("x", "\\boxed{" + "{" * 20 + "1" + "}" * 20 + "}", "1", grader=grader)
    with mock.patch.object(reward, grade, side_effect=RecursionError("boom")):
        failed = compute_score("x", "\\boxed{1}", "1", grader=grader)
    assert set(failed) == set(deep) == set(normal) and not failed["acc"]
    assert "failed on a response" in caplog.text


def test_grader_semantics():
    assert compute_score("x", "\\boxed{1/2}", "\\frac{1}{2}", grader="dapo")["score"] == -1.0  # strict: string match
    assert compute_score("x", "\\boxed{1/2}", "\\frac{1}{2}", grader="math_verify")["score"] == 1.0  # symbolic
    assert compute_score("x", "\\boxed{1} then \\boxed{2}", "2", grader="dapo")["acc"]  # the last box counts
    assert compute_score("x", "the answer is 2", "2", grader="dapo")["score"] == -1.0  # no box, no reward
    long_gold = "\\left( 3, \\frac{\\pi}{2} \\right)" * 4  # verl's strict_box_verify would miss it (100 chars)
    assert compute_score("x", f"...\\boxed{{{long_gold}}}", long_gold, grader="dapo")["acc"]
    assert last_boxed_answer("\\boxed{" + "1" * 2000 + "}") is None  # over-long "answers" are not parsed
    with pytest.raises(ValueError, match="grader must be one of"):
        compute_score("x", "\\boxed{1}", "1", grader="llm")


def test_the_cpu_budget_interrupts_even_code_that_swallows_the_first_interruption():
    """The helper's budget is CPU time (SIGPROF), re-armed until the block ends."""
    from stapo_verl.tasks.reward import CpuBudget, CpuBudgetExceeded

    budget = CpuBudget()
    swallowed = 0
    with pytest.raises(CpuBudgetExceeded):
        with budget.limit(0.05):
            while True:
                try:
                    while True:
                        pass
                except BaseException:  # sympy-like code that swallows everything, once
                    swallowed += 1
                    if swallowed > 1:
                        raise
    assert budget.expired and swallowed == 2
    with budget.limit(5.0):
        sum(range(1000))
    assert not budget.expired


def test_an_interrupted_exchange_never_shifts_later_grades(monkeypatch):
    """A request interrupted after it was sent (Ctrl-C, a signal) must not leave its reply to be
    read as the next request's: issue 16's reproduction graded 1 vs 2 right and 3 vs 3 wrong."""
    from stapo_verl.tasks import reward

    helper = reward._HelperProcess()
    try:
        assert helper.call("\\boxed{1}", "1", 60) == (True, "1")
        connection = type(helper._conn)
        poll = connection.poll

        def interrupted(self, *args):
            raise KeyboardInterrupt

        monkeypatch.setattr(connection, "poll", interrupted)
        with pytest.raises(KeyboardInterrupt):
            helper.call("\\boxed{7}", "7", 60)  # sent, then interrupted while waiting
        monkeypatch.setattr(connection, "poll", poll)
        assert helper.call("\\boxed{1}", "2", 60) == (False, "1")
        assert helper.call("\\boxed{3}", "3", 60) == (True, "3")
    finally:
        helper.stop()


def test_a_bad_timeout_is_refused_before_anything_is_sent():
    for bad in ("10", 0, -1, True, None):
        with pytest.raises(ValueError, match="hard_timeout_s must be a positive number of seconds"):
            compute_score("x", "\\boxed{7}", "7", grader="math_verify", hard_timeout_s=bad)
    assert compute_score("x", "\\boxed{1}", "2", grader="math_verify")["acc"] is False
    assert compute_score("x", "\\boxed{3}", "3", grader="math_verify")["acc"] is True


@pytest.mark.parametrize("grader", ["dapo", "math_verify"])
@pytest.mark.parametrize("gold", ["", "  ", "\\boxed{}", "$\\boxed{}$", None, ["42"], 42])
def test_a_missing_or_non_string_gold_answer_never_scores_correct(grader, gold, caplog, monkeypatch):
    from stapo_verl.tasks import reward

    monkeypatch.setattr(reward, "_warned", set())
    for response in ("I give up \\boxed{}", "\\boxed{None}", "\\boxed{42}", "\\boxed{['42']}", ""):
        result = compute_score("src", response, gold, grader=grader)
        assert result["acc"] is False and result["score"] == (-1.0 if grader == "dapo" else 0.0)
        assert set(result) == set(compute_score("src", "\\boxed{1}", "1", grader=grader))
    assert caplog.text.count("is not a non-empty string") == 1  # logged once, not per response


@pytest.mark.slow
def test_a_script_without_a_main_guard_runs_once(tmp_path):
    script = tmp_path / "grade.py"
    script.write_text(
        "from stapo_verl.tasks.reward import compute_score\n"
        "print('script body ran')\n"
        "print(compute_score('x', '\\\\boxed{7}', '7', grader='math_verify')['acc'])\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["script body ran", "True"]
    assert "Traceback" not in result.stderr and "ERROR" not in result.stderr


def test_an_over_long_gold_answer_is_wrong_without_normalising_it(caplog, monkeypatch):
    from stapo_verl.tasks import reward

    monkeypatch.setattr(reward, "_warned", set())
    gold = "1" * 100_000  # verl's DAPO normaliser took 113 s on this
    with mock.patch("verl.utils.reward_score.math_dapo.normalize_final_answer") as normalise:
        assert compute_score("src", f"\\boxed{{{gold}}}", gold, grader="dapo")["score"] == -1.0
    normalise.assert_not_called()
    assert "a ground truth of 100,000 characters" in caplog.text


# ---------------------------------------------------------------- issue 27: no wrong "correct"

# Found by a user: math-verify 0.9.0 (sympy 1.14) grades these equal to the gold (docs/evaluation.md, "What the graders guarantee").
ISSUE_27_TABLE = [
    ("42", "\\boxed{9^{\\infty^{99}}}"),
    ("42", "\\boxed{e^{\\infty^{99}}}"),
    ("42", "\\boxed{\\infty^\\infty}"),
    ("\\{1,2\\}", "\\boxed{2^{9^{99^{9^{99^{\\infty^{e^{e^{2}}}}}}}}}"),
]
HOSTILE_GOLDS = ["42", "\\frac{1}{2}", "2\\sqrt{3}", "\\{1,2\\}", "[0,1]", "0", "-3"]
# Right answers in another form: math-verify's equivalences must stay right, per gold.
RIGHT_FORMS = {
    "42": ["\\frac{84}{2}", "6\\cdot 7", "42^{1}", "42.0", "40+2"],
    "\\frac{1}{2}": ["0.5", "\\frac{2}{4}", "1/2"],
    "2\\sqrt{3}": ["\\sqrt{12}", "2 \\sqrt{3}"],
    "\\{1,2\\}": ["\\{2,1\\}", "\\{1, 2\\}"],
    "[0,1]": ["[0, 1]"],
    "0": ["0", "0.0", "1-1", "e^{-\\infty}"],  # e^{-oo}: 0 in the extended reals (sympy evaluates it)
    "-3": ["-3", "-\\frac{6}{2}"],
}


def hostile_answers() -> list[str]:
    """Wrong for every finite gold: towers, infinities, indeterminate forms, sets and intervals
    holding infinity, and a few exponents too large to evaluate."""
    bases, tops = ["9", "e", "2", "42", "\\pi", "0", "1"], ["\\infty", "-\\infty", "\\infty^{99}", "e^{e^{2}}"]
    # (0 and 1 to a finite power are 0 and 1: those towers stay finite and are left out)
    answers = [f"{b}^{{{t}}}" for b in bases for t in tops if "infty" in t or b not in ("0", "1")]
    answers += [f"{b}^{{9^{{99^{{{t}}}}}}}" for b in ("2", "9") for t in ("\\infty", "\\infty^{e}")]
    answers += [
        "\\infty",
        "-\\infty",
        "\\pm\\infty",
        "\\infty^\\infty",
        "\\infty^{-\\infty}",
        "\\frac{1}{0}",
        "\\frac{0}{0}",
        "0^0",
        "\\infty-\\infty",
        "0\\cdot\\infty",
        "1^\\infty",
        "\\frac{\\infty}{\\infty}",
        "\\infty^0",
        "\\infty+42",
        "42\\infty",
        "\\sqrt{\\infty}",
        "\\log(0)",
        "e^{\\infty}-e^{\\infty}",
        "\\{\\infty\\}",
        "\\{1, \\infty\\}",
        "\\{1,2,\\infty\\}",
        "[0, \\infty)",
        "(-\\infty, \\infty)",
        "[42, \\infty]",
        "(-\\infty, 0]",
        "\\{42^{\\infty}\\}",
    ]
    return answers


HUGE_EXPONENTS = ["2^{9^{99}}", "9^{9^{9^{9}}}"]  # sympy would expand them: CPU budget / memory cap


def hostile_family() -> list[tuple[str, str, bool]]:
    """(gold, response, true grade): every hostile answer against every gold (all wrong), the
    right forms (all right), and the huge exponents against one gold (wrong; they cost seconds)."""
    cases = [
        (gold, f"So the answer is $\\boxed{{{a}}}$.", False)
        for gold in HOSTILE_GOLDS
        for a in hostile_answers()
        if a not in RIGHT_FORMS[gold]
    ]
    cases += [(gold, f"\\boxed{{{a}}}", True) for gold, forms in RIGHT_FORMS.items() for a in forms]
    cases += [("42", f"\\boxed{{{a}}}", False) for a in HUGE_EXPONENTS]
    return cases


@pytest.mark.parametrize("gold, response", ISSUE_27_TABLE)
def test_the_issue_27_table_is_graded_wrong(gold, response):
    assert compute_score("x", response, gold, grader="math_verify")["acc"] is False
    assert compute_score("x", response, gold, grader="dapo")["acc"] is False


def test_infinite_golds_keep_their_right_answers():
    for gold, response in [("\\infty", "\\infty"), ("[1,\\infty)", "[1, \\infty)"), ("(-\\infty, 0]", "(-\\infty,0]")]:
        assert compute_score("x", f"\\boxed{{{response}}}", gold, grader="math_verify")["acc"], (gold, response)
    assert not compute_score("x", "\\boxed{[2, \\infty)}", "[1,\\infty)", grader="math_verify")["acc"]


def grades(cases, grader="math_verify") -> list[bool]:
    return [compute_score("x", response, gold, grader=grader)["acc"] for gold, response, _ in cases]


@pytest.fixture(scope="module")
def family_grades():
    """The hostile family graded once, in order (shared by the tests below)."""
    cases = hostile_family()
    return cases, grades(cases)


@pytest.mark.slow
def test_no_hostile_answer_is_graded_correct_and_right_forms_stay_right(family_grades):
    cases, graded = family_grades
    assert len(cases) > 300
    wrong = [(gold, response, truth) for (gold, response, truth), got in zip(cases, graded) if got != truth]
    assert not wrong, wrong[:20]


@pytest.mark.slow
def test_a_grade_does_not_depend_on_what_was_graded_before(family_grades):
    """sympy's cache once carried one comparison into the next: reversed order, same grades."""
    cases, graded = family_grades
    assert grades(cases[::-1])[::-1] == graded


class Starvation:
    """Two busy processes on the machine's cores, and the grading helper stopped and continued
    in bursts (SIGSTOP / SIGCONT): a helper that gets a fraction of the CPU, irregularly."""

    def __init__(self, stop_s=0.03, run_s=0.03):
        self.stop_s, self.run_s, self.bursts = stop_s, run_s, 0
        self._done = threading.Event()

    def _stop_and_continue(self):
        import os
        import signal

        from stapo_verl.tasks import reward

        while not self._done.is_set():
            process = reward._helper._process
            pid = process.pid if process is not None else None
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile: the next helper's turn
                    try:
                        os.kill(pid, signal.SIGSTOP)
                        time.sleep(self.stop_s)
                    finally:
                        os.kill(pid, signal.SIGCONT)
                    self.bursts += 1
            time.sleep(self.run_s)

    def __enter__(self):
        self._busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        self._thread = threading.Thread(target=self._stop_and_continue, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        for busy in self._busy:
            busy.kill()
            busy.wait()


@pytest.mark.slow
def test_grades_under_starvation_equal_the_grades_alone(family_grades):
    """A grade is a function of (response, gold): CPU-time budgets, not wall-clock ones. (Every
    fourth case of the family, and the huge exponents, whose grading comes near the budget.)"""
    cases, graded = family_grades
    chosen = [i for i, (_, response, _) in enumerate(cases) if i % 4 == 0 or any(h in response for h in HUGE_EXPONENTS)]
    with Starvation() as starvation:
        starved = grades([cases[i] for i in chosen])
    assert starvation.bursts > 50  # the helper really was stopped, many times
    assert starved == [graded[i] for i in chosen]


def test_the_dapo_grader_and_the_preset_tasks_pay_no_hostile_answer():
    """The training reward (dapo: last box, normalised string equality) pays no hostile answer,
    neither against the family's golds nor against the CPU presets' own tasks' gold answers,
    graded the way their configs ask (reward_kwargs.grader)."""
    cases = hostile_family()
    assert [(gold, r) for (gold, r, truth), got in zip(cases, grades(cases, "dapo")) if got and not truth] == []
    from stapo_verl.cpu.tiny import arithmetic_rows
    from stapo_verl.tasks.multiplication import problem_rows as multiplication_rows

    for model, rows in (
        ("smollm2_135m", multiplication_rows(16, 0, "train")),
        ("tiny_cpu", arithmetic_rows(16, 0, "train")),
    ):
        grader = preset_grader(model)
        for row in rows:
            gold = row["reward_model"]["ground_truth"]
            for answer in hostile_answers() + HUGE_EXPONENTS:
                assert not compute_score(row["data_source"], f"\\boxed{{{answer}}}", gold, grader=grader)["acc"]
            assert compute_score(row["data_source"], f"\\boxed{{{gold}}}", gold, grader=grader)["acc"]


def preset_grader(model: str) -> str:
    import verl  # noqa: F401  (the plugin's config resolvers)
    from hydra import compose, initialize_config_dir

    from stapo_verl.recipe import CONFIG_DIR, CONFIG_NAME

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(CONFIG_NAME, overrides=[f"model={model}"])
    assert cfg.reward.custom_reward_function.path == "pkg://stapo_verl.tasks.reward"
    return cfg.reward.custom_reward_function.reward_kwargs.grader
