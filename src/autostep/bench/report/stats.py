"""The report's statistics: time to target, paired comparisons with the baseline, bootstrap intervals.

* **wins / ties / losses** against the tuned baseline, per problem: a two-sided paired t-test (95 %)
  on the per-seed log ratio of final train losses, seeds paired (each seed fixes initialisation and
  data order for every method).  A tie is a difference the seeds cannot tell from zero; one seed
  cannot, so with one seed every comparison is ``n/a``.  A run that diverges where the baseline does
  not is a loss (and the reverse a win).
* **median train-loss ratio**: the median over problems of each problem's geometric-mean ratio to the
  baseline, with a 95 % percentile bootstrap interval over seeds (seeds resampled with replacement,
  2000 resamples, fixed generator).
"""

from __future__ import annotations

import math
import random
import statistics

from .common import LOSS_FLOOR

__all__ = ["time_to_target", "paired_compare"]


# two-sided 95 % quantiles of Student's t, by degrees of freedom
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t975(df: int) -> float:
    if df in _T975:
        return _T975[df]
    keys = sorted(_T975)
    for k in keys:
        if df < k:
            return _T975[k]  # the next larger df tabulated below it is conservative enough
    return 1.96


def time_to_target(curve: list, target: float) -> tuple[float, float]:
    """(steps, CPU seconds) at the first curve point whose smoothed loss is <= target; inf if never."""
    for step, ema, _lr, cpu in curve:
        if ema is not None and math.isfinite(ema) and ema <= target:
            return float(step), float(cpu)
    return math.inf, math.inf


def log_ratio(m: float, b: float) -> float:
    """log(m / b) of two final train losses; a divergence (inf / NaN) is +inf on its side."""
    bad_m = m is None or not math.isfinite(m)
    bad_b = b is None or not math.isfinite(b)
    if bad_m and bad_b:
        return 0.0
    if bad_m:
        return math.inf
    if bad_b:
        return -math.inf
    return math.log(max(m, LOSS_FLOOR)) - math.log(max(b, LOSS_FLOOR))


def paired_compare(method: dict, base: dict) -> dict:
    """Compare per-seed final train losses ``{seed: loss}`` of a method and the baseline.

    Returns ``verdict`` ("win", "tie", "loss" or "n/a" with fewer than two paired seeds), the
    geometric-mean ``ratio`` and its 95 % paired-t interval ``lo``/``hi``, and ``n`` (paired seeds).
    """
    seeds = sorted(set(method) & set(base))
    d = [log_ratio(method[s], base[s]) for s in seeds]
    out = {"n": len(d), "ratio": math.nan, "lo": math.nan, "hi": math.nan, "verdict": "n/a"}
    if not d:
        return out
    if any(math.isinf(x) for x in d):
        pos, neg = any(x == math.inf for x in d), any(x == -math.inf for x in d)
        out["ratio"] = math.exp(statistics.median(d)) if not (pos and neg) else math.nan
        out["verdict"] = "loss" if pos and not neg else "win" if neg and not pos else "tie"
        out["lo"], out["hi"] = (1.0, math.inf) if pos and not neg else (0.0, 1.0) if neg else (0.0, math.inf)
        return out
    mean = statistics.fmean(d)
    out["ratio"] = math.exp(mean)
    if len(d) < 2:
        return out
    sd = statistics.stdev(d)
    half = t975(len(d) - 1) * sd / math.sqrt(len(d))
    lo, hi = mean - half, mean + half
    out["lo"], out["hi"] = math.exp(lo), math.exp(hi)
    out["verdict"] = "win" if hi < 0 else "loss" if lo > 0 else "tie"
    return out


def bootstrap_median_ratio(per_problem: dict, n_boot: int = 2000, seed: int = 0) -> tuple:
    """Median over problems of the geometric-mean ratio, and its 95 % bootstrap interval over seeds.

    ``per_problem`` maps a problem to its list of per-seed log ratios (paired by seed)."""
    probs = {p: d for p, d in per_problem.items() if d}
    if not probs:
        return math.nan, math.nan, math.nan

    def stat(sample: dict) -> float:
        vals = []
        for d in sample.values():
            vals.append(math.inf if any(x == math.inf for x in d) and not any(x == -math.inf for x in d)
                        else -math.inf if any(x == -math.inf for x in d) and not any(x == math.inf for x in d)
                        else statistics.fmean([x for x in d if math.isfinite(x)] or [0.0]))
        return statistics.median(vals)

    point = stat(probs)
    rng = random.Random(seed)  # a private generator: the report never touches global randomness
    boots = []
    for _ in range(n_boot):
        boots.append(stat({p: [d[rng.randrange(len(d))] for _ in d] for p, d in probs.items()}))
    boots.sort()
    lo, hi = boots[int(0.025 * (n_boot - 1))], boots[int(math.ceil(0.975 * (n_boot - 1)))]
    exp = lambda x: math.exp(x) if math.isfinite(x) else (math.inf if x > 0 else 0.0)  # noqa: E731
    return exp(point), exp(lo), exp(hi)
