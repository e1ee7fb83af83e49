"""Math rewards for verl: ``compute_score`` with two graders, safe in Ray workers and threads.

Use through verl's custom reward function::

    reward.custom_reward_function.path=<this file>   (stapo-verl config-path prints the recipe's)
    reward.custom_reward_function.name=compute_score
    +reward.reward_kwargs.grader=dapo                 # or math_verify

Graders:

- ``dapo`` (the paper's training reward): the content of the response's last ``\\boxed{}``,
  normalised with verl's DAPO normaliser (``math_dapo.normalize_final_answer``), must equal the
  normalised ground truth: +1, else -1. Unlike verl's ``strict_box_verify`` it searches the whole
  response (verl only looks at its last 100 characters, which misses answers longer than ~90
  characters) and normalises both sides.
- ``math_verify``: symbolic equivalence with math-verify (1 / 0), the default for evaluation.
  math-verify's own timeouts use ``signal.alarm``, which only works in a process's main thread,
  and a stuck sympy call cannot be interrupted from another thread. So it runs in a helper
  process (in its main thread, with math-verify's timeouts on) that is killed and restarted when
  a call exceeds ``hard_timeout_s``: no call blocks the caller longer than that.

``compute_score`` never raises on model output: malformed input scores as wrong.
"""

from __future__ import annotations

import atexit
import cmath
import contextlib
import logging
import multiprocessing
import re
import sys
import threading
from typing import Any

logger = logging.getLogger("stapo_verl")

GRADERS = ("dapo", "math_verify")
# Longest boxed answer a grader looks at; gold answers in the six benchmarks are < 220 chars.
MAX_ANSWER_CHARS = 1000
# Deepest brace nesting math_verify will try to parse (gold answers: <= 3). Power towers and the
# like cost sympy seconds each and are never a right answer.
MAX_BRACE_DEPTH = 12
# Longest gold answer graded (the six benchmarks' are < 220 chars; the converter refuses longer):
# verl's DAPO normaliser is superlinear, 113 s on a 100k-character string.
MAX_GOLD_CHARS = 10_000
# math_verify reads the response from this many characters before its last \boxed{}, or, without
# one, only this many trailing characters.
CONTEXT_BEFORE_BOX_CHARS = 100
UNBOXED_TAIL_CHARS = 2000
# CPU seconds one math_verify grade (two parses and the comparison) may use in the helper
# process; past it the answer is wrong. Grades take milliseconds (tests/test_reward.py).
MATH_VERIFY_CPU_BUDGET_S = 2.0
# The helper's address-space cap: math-verify and sympy need ~0.1 GB.
HELPER_MEMORY_BYTES = 2 * 2**30
# Graded once when a helper starts: imports and parser set-up, so that they are not charged to
# the first real grade's CPU budget.
WARM_UP = (
    ("\\frac{84}{2}", "42"),
    ("[0, 1)", "[0,1)"),
    ("\\{2, 1\\}", "\\{1,2\\}"),
    ("2\\sqrt{3}", "\\sqrt{12}"),
    ("x = 3", "3"),
    ("0.5", "\\frac{1}{2}"),
)
# How long a new helper process may take to import math-verify and sympy.
HELPER_START_TIMEOUT_S = 300


def strip_boxed(answer: str) -> str:
    """``\\boxed{x}`` -> ``x`` (AIME24's ground truths are stored boxed); other strings unchanged."""
    from verl.utils.reward_score.math_dapo import last_boxed_only_string, remove_boxed

    answer = answer.strip()
    boxed = last_boxed_only_string(answer) if answer.startswith("\\boxed{") else None
    return remove_boxed(boxed) if boxed is not None and len(boxed) == len(answer) else answer


def clean_ground_truth(answer: str) -> str:
    """Gold answer as a model would box it: no ``\\boxed{}`` wrapper, no ``$`` delimiters."""
    # `$` first: `$\\boxed{}$` must come out empty, not as `\\boxed{}`
    answer = re.sub(r"(?<!\\)\$", "", answer).strip()
    return strip_boxed(answer).strip()


def last_boxed_answer(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (None if absent, unbalanced or too long)."""
    from verl.utils.reward_score.math_dapo import last_boxed_only_string, remove_boxed

    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    # bounded scan: an answer longer than MAX_ANSWER_CHARS is not an answer
    boxed = last_boxed_only_string(text[start : start + len("\\boxed{") + MAX_ANSWER_CHARS + 1])
    return remove_boxed(boxed) if boxed is not None else None


def dapo_score(solution: str, ground_truth: str) -> dict[str, Any]:
    from verl.utils.reward_score.math_dapo import normalize_final_answer

    pred = last_boxed_answer(solution)
    correct = pred is not None and normalize_final_answer(pred) == normalize_final_answer(strip_boxed(ground_truth))
    return {"score": 1.0 if correct else -1.0, "acc": bool(correct), "pred": pred}


# ---------------------------------------------------------------- math_verify in a helper process


class CpuBudgetExceeded(BaseException):
    """Raised by the helper's CPU-time timer (a BaseException: math-verify's ``except Exception``
    must not turn it into a "not equal" and go on comparing in a half-interrupted sympy)."""


class CpuBudget:
    """A CPU-time limit for the code under :meth:`limit`, from ``setitimer(ITIMER_PROF)``.

    CPU time, not wall time: a grade must not depend on how much of the machine the helper got
    (issue 27: with math-verify's wall-clock ``signal.alarm`` timeouts, 5 of ~600 grades changed
    with both cores busy). The timer keeps firing until the block ends, so code that swallows one
    interruption is interrupted again, and :attr:`expired` records that it fired at all.
    """

    REPEAT_S = 0.01

    def __init__(self):
        import signal

        self.expired = False
        signal.signal(signal.SIGPROF, self._fire)

    def _fire(self, signum, frame):
        self.expired = True
        raise CpuBudgetExceeded()

    @contextlib.contextmanager
    def limit(self, seconds: float):
        import signal

        self.expired = False
        signal.setitimer(signal.ITIMER_PROF, seconds, self.REPEAT_S)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)


def _non_finite(expressions) -> bool:
    """Whether any parsed expression holds an infinity or nan anywhere in its tree (unevaluated
    ones included: math-verify parses with evaluate=False, so ``9^{\\infty^{99}}`` stays a tower)."""
    from sympy import S

    non_finite = {S.Infinity, S.NegativeInfinity, S.ComplexInfinity, S.NaN}
    return any(hasattr(e, "atoms") and not non_finite.isdisjoint(e.atoms()) for e in expressions)


def _numeric_value(expression):
    """A scalar number's value at 30 digits (a percentage read as math-verify reads it: 9% as 9),
    or None when it is not a plain number (symbols, sets, relations, matrices)."""
    from math_verify.grader import get_pct_val
    from sympy import Expr

    expression = get_pct_val(expression, expression)
    if not isinstance(expression, Expr) or not expression.is_number:
        return None
    return complex(expression.evalf(30))  # raises on a value that is not finite or not a number


def confirmed_equal(gold: list, pred: list) -> bool:
    """An independent check of a math-verify "equal" (its ``verify`` said True for these parses).

    sympy's ``simplify`` mis-handles unevaluated infinities: ``simplify(42 - 9**(oo**99))`` is 0,
    so math-verify 0.9.0 grades ``9^{\\infty^{99}}`` (and towers holding ``\\infty``) equal to
    any finite gold. Kept only if: the texts are the same; or the prediction holds no infinity or
    nan where the gold holds none, and, when both are scalar numbers, their values are finite and
    agree to 1e-6 relative (math-verify's own float rounding is 6 decimals).
    """
    gold_texts = {x.strip() for x in gold if isinstance(x, str)} - {""}
    if gold_texts & {x.strip() for x in pred if isinstance(x, str)}:
        return True
    gold_expressions = [x for x in gold if not isinstance(x, str)]
    pred_expressions = [x for x in pred if not isinstance(x, str)]
    if _non_finite(pred_expressions) and not _non_finite(gold_expressions):
        return False
    for g in gold_expressions[:1]:
        for p in pred_expressions[:1]:
            try:
                g_value, p_value = _numeric_value(g), _numeric_value(p)
            except (TypeError, ValueError, OverflowError, ArithmeticError):
                return False  # a scalar with no finite value is no finite gold's equal
            if g_value is not None and p_value is not None:
                scale = max(1.0, abs(g_value))
                if not (cmath.isfinite(g_value) and cmath.isfinite(p_value)) or abs(g_value - p_value) > 1e-6 * scale:
                    return False
    return True


def _grade(parse, verify, solution: str, ground_truth: str) -> tuple[bool, str | None]:
    """(correct, pred) with math-verify's own timeouts off (the caller bounds CPU time)."""
    gold = parse(f"\\boxed{{{ground_truth}}}", parsing_timeout=None)
    pred = parse(solution, parsing_timeout=None)
    correct = bool(gold and pred and verify(gold, pred, timeout_seconds=None) and confirmed_equal(gold, pred))
    return correct, str(pred[-1]) if pred else None


def _math_verify_main(conn) -> None:
    """Helper process loop: (solution, ground_truth) -> (correct, pred, clean) with math-verify.

    Each grade starts from an empty sympy cache (a cache filled by an earlier comparison changed
    later grades: ``\\infty^\\infty`` was equal to 42 right after ``9^{\\infty^{99}}`` had been
    compared) and runs under a CPU-time budget. ``clean`` is False when the budget interrupted
    it: such a grade is never "correct", and the caller replaces this process (code interrupted
    mid-way may leave state behind). Memory is capped, so that an answer like ``2^{9^{99}}``,
    which sympy tries to expand inside one C call no signal interrupts, fails with MemoryError
    instead of taking the machine's memory until the caller's wall-clock bound kills it.
    """
    import logging
    import resource

    from math_verify import parse, verify
    from sympy.core.cache import clear_cache

    resource.setrlimit(resource.RLIMIT_AS, (HELPER_MEMORY_BYTES, HELPER_MEMORY_BYTES))
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled": the budget below bounds it
    budget = CpuBudget()
    for answer, gold in WARM_UP:  # lazy imports and parser set-up: not charged to the first real grade
        _grade(parse, verify, f"\\boxed{{{answer}}}", gold)
    conn.send("ready")  # imports done: the caller's time bound starts with the first call
    while True:
        try:
            solution, ground_truth = conn.recv()
        except EOFError:
            return
        clear_cache()
        try:
            with budget.limit(MATH_VERIFY_CPU_BUDGET_S):
                correct, pred = _grade(parse, verify, solution, ground_truth)
            reply = (correct and not budget.expired, pred, not budget.expired)
        except BaseException:  # the budget, MemoryError, recursion, sympy errors: wrong
            reply = (False, None, False)
        conn.send(reply)


@contextlib.contextmanager
def _main_module_hidden():
    """multiprocessing's spawn and forkserver children re-import the parent's ``__main__`` (a
    caller's script without a ``__main__`` guard would run again inside the helper, printing
    twice). The helper needs nothing from it: hide it while the child is created."""
    main = sys.modules.get("__main__")
    saved = {key: main.__dict__[key] for key in ("__file__", "__spec__") if main is not None and key in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__spec__ = None
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


class _HelperProcess:
    """One helper process, restarted after a timeout or a crash. Thread-safe (one call at a time)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._process = None
        self._conn = None

    def _start(self) -> None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            # forkserver, not fork: forking a process that runs threads (Ray, tokenizers) can
            # deadlock. Preloading math-verify there makes a restart after a timeout cheap.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["math_verify"])
        else:
            context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_math_verify_main, args=(child,), daemon=True)
        with _main_module_hidden():
            self._process.start()
        child.close()
        if not (self._conn.poll(HELPER_START_TIMEOUT_S) and self._conn.recv() == "ready"):
            self.stop()
            raise RuntimeError(f"math_verify helper process did not start within {HELPER_START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self._process is not None and self._process.pid is not None:  # pid None: never started
            self._process.kill()
            self._process.join()
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None

    def call(self, solution: str, ground_truth: str, hard_timeout_s: float) -> tuple[bool, str | None] | None:
        """(correct, pred), or None when the call ran past ``hard_timeout_s`` or the helper died.
        A grade the helper's CPU budget interrupted comes back wrong; the helper is then replaced."""
        with self._lock:
            reply = self._call_once(solution, ground_truth, hard_timeout_s)
            if reply is None:
                return None
            correct, pred, clean = reply
            if not clean:
                self.stop()  # the next call starts a fresh helper
            return correct, pred

    def _call_once(self, solution: str, ground_truth: str, hard_timeout_s: float):
        if self._process is None or not self._process.is_alive():
            self.stop()
            self._start()
        try:
            self._conn.send((solution, ground_truth))
            if self._conn.poll(hard_timeout_s):
                return self._conn.recv()
        except (EOFError, OSError):
            pass
        except BaseException:
            # Interrupted while a request is out (Ctrl-C, a signal, any error): its reply may
            # still arrive, and the next call would read it as its own. Discard this helper.
            self.stop()
            raise
        self.stop()  # stuck or dead: the next call starts a fresh one
        return None


_helper = _HelperProcess()
atexit.register(_helper.stop)


def brace_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif char == "}":
            depth -= 1
    return deepest


def wrong_answer(grader: str) -> dict[str, Any]:
    """The result for an answer that is wrong without grading, with the keys the grader always
    returns (verl's reward managers collect every key per sample: they must not vary)."""
    if grader == "dapo":
        return {"score": -1.0, "acc": False, "pred": None}
    return {"score": 0.0, "acc": False, "pred": None, "timed_out": False}


def math_verify_score(solution: str, ground_truth: str, hard_timeout_s: float = 10.0) -> dict[str, Any]:
    boxed = last_boxed_answer(solution)
    if boxed is not None and brace_depth(boxed) > MAX_BRACE_DEPTH:
        return wrong_answer("math_verify")
    # Only the end of the response, from a little before the last box: math-verify parses every
    # math span it finds, so a long response costs time for nothing. (The box alone is not
    # enough: math-verify reads `$\\boxed{x}$` and `\\boxed{x}` differently for some tuples.)
    box_start = solution.rfind("\\boxed{")
    start = len(solution) - UNBOXED_TAIL_CHARS if boxed is None else box_start - CONTEXT_BEFORE_BOX_CHARS
    text = solution[max(0, start) :]
    result = _helper.call(text, strip_boxed(ground_truth), hard_timeout_s)
    correct, pred = result if result is not None else (False, None)
    return {"score": 1.0 if correct else 0.0, "acc": correct, "pred": pred, "timed_out": result is None}


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def compute_score(
    data_source: Any = None,
    solution_str: Any = "",
    ground_truth: Any = "",
    extra_info: Any = None,
    grader: str = "dapo",
    hard_timeout_s: float = 10.0,
    **_: Any,
) -> dict[str, Any]:
    """verl's custom-reward signature; returns {"score", "acc", "pred", ...}.

    Args:
        data_source, extra_info: unused (accepted because verl passes them).
        solution_str: the decoded response.
        ground_truth: the reference answer (a plain string; a ``\\boxed{}`` wrapper is removed).
            An empty, non-string or over-long (> MAX_GOLD_CHARS) one scores every response as
            wrong, with a warning (once).
        grader: ``dapo`` (+1 / -1) or ``math_verify`` (1 / 0).
        hard_timeout_s: math_verify only: the longest a call may block.
    """
    # configuration errors, not model output: fail loudly, before anything is sent to a helper
    if grader not in GRADERS:
        raise ValueError(f"reward grader must be one of {list(GRADERS)}, got {grader!r}")
    if isinstance(hard_timeout_s, bool) or not isinstance(hard_timeout_s, (int, float)) or not hard_timeout_s > 0:
        raise ValueError(f"reward hard_timeout_s must be a positive number of seconds, got {hard_timeout_s!r}")
    solution = solution_str if isinstance(solution_str, str) else ""
    # A missing gold answer must never match a missing prediction (\boxed{} vs "", None vs "None").
    if not isinstance(ground_truth, str) or not clean_ground_truth(ground_truth):
        _warn_once(
            f"stapo-verl reward: ground truth {ground_truth!r} is not a non-empty string "
            f"(data_source {data_source!r}); every response to it scores as wrong"
        )
        return wrong_answer(grader)
    if len(ground_truth) > MAX_GOLD_CHARS:
        _warn_once(
            f"stapo-verl reward: a ground truth of {len(ground_truth):,} characters (data_source "
            f"{data_source!r}) is over {MAX_GOLD_CHARS:,}; every response to it scores as wrong"
        )
        return wrong_answer(grader)
    gold = ground_truth
    try:
        if grader == "dapo":
            return dapo_score(solution, gold)
        return math_verify_score(solution, gold, hard_timeout_s)
    except Exception:  # never let a model output crash a week of training, but say so
        logger.exception("stapo-verl reward: grader %s failed on a response; scoring it as wrong", grader)
        return wrong_answer(grader)
