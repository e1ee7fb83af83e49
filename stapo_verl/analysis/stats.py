"""Statistics for the paper's tables: avg@k, bootstrap intervals, paired tests (numpy only).

One method x model size x decoding setting is a dict ``benchmark -> scores`` where ``scores`` is
an array of shape (seeds, problems): the accuracy of each problem in each seed's run, i.e. the
mean over that run's k samples. Problem columns are in the same order for every method.

- avg@k of a benchmark = mean over problems and seeds (the paper's avg@N, with seeds pooled).
- Average = unweighted mean of the benchmarks' avg@k (as the paper's "Avg" column).
- Bootstrap: resample seeds (one draw per replicate, shared by all benchmarks: a seed is a
  whole training run) and problems (per benchmark), with replacement.
- Paired test of A vs B: per-problem differences of the seed-averaged accuracies; a sign-flip
  permutation test of their mean (two-sided), and a bootstrap interval of the difference.
"""

from __future__ import annotations

import numpy as np

AVERAGE = "average"


def as_scores(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validate ``benchmark -> (seeds, problems)`` arrays of accuracies in [0, 1]."""
    checked = {}
    for bench, values in scores.items():
        array = np.asarray(values, dtype=float)
        if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
            raise ValueError(f"scores[{bench!r}] must have shape (seeds, problems), got {array.shape}")
        if not np.all((array >= 0) & (array <= 1)):
            raise ValueError(f"scores[{bench!r}] must be accuracies in [0, 1]")
        checked[bench] = array
    if not checked:
        raise ValueError("no benchmarks")
    return checked


def avg_at_k(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-benchmark avg@k and their unweighted average, in percent."""
    scores = as_scores(scores)
    table = {bench: 100.0 * float(values.mean()) for bench, values in scores.items()}
    table[AVERAGE] = float(np.mean(list(table.values())))
    return table


def _weights(rng: np.random.Generator, size: int, replicates: int) -> np.ndarray:
    """Bootstrap resampling as weights: (replicates, size), each row sums to 1."""
    return rng.multinomial(size, np.full(size, 1.0 / size), size=replicates) / size


def bootstrap_ci(
    scores: dict[str, np.ndarray], replicates: int = 2000, level: float = 0.95, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals (percent) for each benchmark's avg@k and the average."""
    scores = as_scores(scores)
    rng = np.random.default_rng(seed)
    n_seeds = {values.shape[0] for values in scores.values()}
    if len(n_seeds) != 1:
        raise ValueError(f"every benchmark needs the same seeds, got seed counts {sorted(n_seeds)}")
    seed_weights = _weights(rng, n_seeds.pop(), replicates)  # shared by all benchmarks
    replicate_means = {}
    for bench, values in scores.items():
        problem_weights = _weights(rng, values.shape[1], replicates)
        replicate_means[bench] = 100.0 * np.einsum("rs,sp,rp->r", seed_weights, values, problem_weights)
    replicate_means[AVERAGE] = np.mean([replicate_means[b] for b in scores], axis=0)
    tail = 100.0 * (1.0 - level) / 2.0
    return {
        key: (float(np.percentile(means, tail)), float(np.percentile(means, 100.0 - tail)))
        for key, means in replicate_means.items()
    }


def paired_test(
    a: dict[str, np.ndarray],
    b: dict[str, np.ndarray],
    permutations: int = 10000,
    replicates: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """A vs B on the same problems: mean difference (points), its interval and a p-value.

    Returns ``{benchmark or "average": {"diff", "ci_low", "ci_high", "p_value"}}``. The average's
    statistic is the unweighted mean over benchmarks of their mean differences; its sign flips
    are drawn per problem in every benchmark at once.
    """
    a, b = as_scores(a), as_scores(b)
    if set(a) != set(b):
        raise ValueError(f"paired test needs the same benchmarks, got {sorted(a)} and {sorted(b)}")
    rng = np.random.default_rng(seed)
    diffs = {}
    for bench in a:
        if a[bench].shape[1] != b[bench].shape[1]:
            raise ValueError(f"{bench}: {a[bench].shape[1]} vs {b[bench].shape[1]} problems; pairing needs the same")
        diffs[bench] = 100.0 * (a[bench].mean(axis=0) - b[bench].mean(axis=0))
    flipped, boot = {}, {}
    for bench, d in diffs.items():
        signs = rng.choice(np.array([-1.0, 1.0]), size=(permutations, d.size))
        flipped[bench] = (signs * d).mean(axis=1)
        boot[bench] = _weights(rng, d.size, replicates) @ d
    observed = {bench: float(d.mean()) for bench, d in diffs.items()}
    observed[AVERAGE] = float(np.mean(list(observed.values())))
    flipped[AVERAGE] = np.mean([flipped[bench] for bench in diffs], axis=0)
    boot[AVERAGE] = np.mean([boot[bench] for bench in diffs], axis=0)
    tail = 100.0 * (1.0 - level) / 2.0
    result = {}
    for key, value in observed.items():
        # ties count as extreme (a tolerance for float sums); +1: the observed labelling is one of them
        extreme = np.count_nonzero(np.abs(flipped[key]) >= abs(value) - 1e-9)
        result[key] = {
            "diff": value,
            "ci_low": float(np.percentile(boot[key], tail)),
            "ci_high": float(np.percentile(boot[key], 100.0 - tail)),
            "p_value": float((extreme + 1) / (permutations + 1)),
        }
    return result


def relative_gain_over_best(averages: dict[str, dict[str, float]], target: str) -> dict:
    """The paper's headline: ``target``'s relative gain (percent) over the strongest other method
    of each model size by the average column, then the mean over sizes.

    Args:
        averages: model -> method -> average accuracy; sizes without ``target`` or without
            another method are left out.

    Returns:
        ``{"gain": mean percent or None, "per_model": {model: {"baseline", "baseline_avg",
        "target_avg", "gain"}}}``.
    """
    per_model = {}
    for model, by_method in averages.items():
        baselines = {m: v for m, v in by_method.items() if m != target}
        if target not in by_method or not baselines:
            continue
        best = max(baselines, key=baselines.get)
        per_model[model] = {
            "baseline": best,
            "baseline_avg": baselines[best],
            "target_avg": by_method[target],
            "gain": 100.0 * (by_method[target] / baselines[best] - 1.0),
        }
    gain = float(np.mean([m["gain"] for m in per_model.values()])) if per_model else None
    return {"gain": gain, "per_model": per_model}


def bootstrap_averages(
    methods: dict[str, dict[str, np.ndarray]], replicates: int = 2000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Bootstrap replicates (percent) of each method's average over benchmarks, paired: one
    problem draw per benchmark shared by all methods (they are evaluated on the same problems),
    an independent seed draw per method (its seeds are its own training runs)."""
    methods = {name: as_scores(scores) for name, scores in methods.items()}
    benches = sorted(next(iter(methods.values())))
    rng = np.random.default_rng(seed)
    problem_weights = {}
    for bench in benches:
        sizes = {scores[bench].shape[1] for scores in methods.values() if bench in scores}
        if len(sizes) != 1 or any(bench not in scores for scores in methods.values()):
            raise ValueError(f"{bench}: every method needs the same problems to pair them")
        problem_weights[bench] = _weights(rng, sizes.pop(), replicates)
    result = {}
    for name, scores in methods.items():
        seed_weights = _weights(rng, scores[benches[0]].shape[0], replicates)
        per_bench = [np.einsum("rs,sp,rp->r", seed_weights, scores[b], problem_weights[b]) for b in benches]
        result[name] = 100.0 * np.mean(per_bench, axis=0)
    return result


# ---------------------------------------------------------------- over seeds (a few training runs)


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for aa in (
            m * (b - m) * x / ((qam + 2 * m) * (a + 2 * m)),
            -(a + m) * (qab + m) * x / ((a + 2 * m) * (qap + 2 * m)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    import math

    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1.0 - x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_critical(df: int, level: float = 0.95) -> float:
    """The two-sided critical value: P(|T| >= value) = 1 - level (bisection on the p-value)."""
    low, high = 0.0, 1e6
    for _ in range(200):
        mid = (low + high) / 2.0
        low, high = (mid, high) if t_two_sided_p(mid, df) > 1.0 - level else (low, mid)
    return (low + high) / 2.0


def seed_interval(values, level: float = 0.95) -> dict:
    """Mean of per-seed values and its t interval (n - 1 degrees of freedom; none from one seed)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return {"mean": mean, "low": None, "high": None, "n": len(values)}
    half = t_critical(len(values) - 1, level) * float(values.std(ddof=1)) / float(np.sqrt(len(values)))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(values)}


def paired_t(differences, level: float = 0.95) -> dict:
    """Paired differences (one per seed): mean, t interval and the two-sided paired t-test p-value."""
    result = seed_interval(differences, level)
    values = np.asarray(differences, dtype=float)
    sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    if len(values) < 2:
        result["p"] = None
    elif sd == 0.0:
        result["p"] = 1.0 if result["mean"] == 0.0 else 0.0
    else:
        result["p"] = t_two_sided_p(result["mean"] / (sd / float(np.sqrt(len(values)))), len(values) - 1)
    return result
