"""Two-sample statistics for comparing trained models, without SciPy: Welch's t interval, its p-value and the
minimum detectable effect of a design.

Every comparison of trained models in this project reports mean, spread, n and a 95% interval; a gain whose
interval contains 0 is "no evidence", never a gain or a loss.
"""

from __future__ import annotations

import math
import statistics


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b), by Lentz's continued fraction (converges fast for x < (a+1)/(a+b+2))."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return math.exp(log_front) * fraction / a


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    low, high = -1e3, 1e3
    for _ in range(200):
        middle = (low + high) / 2.0
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


def welch(a: list[float], b: list[float], confidence: float = 0.95) -> dict:
    """Difference of means ``mean(a) - mean(b)`` with Welch's interval and two-sided p-value.

    Needs at least two values on each side; returns None figures otherwise.
    """
    if len(a) < 2 or len(b) < 2:
        diff = statistics.fmean(a) - statistics.fmean(b) if a and b else None
        return {"diff": diff, "ci": None, "p_value": None, "df": None}
    var_a, var_b = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(var_a + var_b)
    if se == 0.0:
        return {"diff": diff, "ci": [diff, diff], "p_value": 0.0 if diff else 1.0, "df": None}
    df = (var_a + var_b) ** 2 / (var_a ** 2 / (len(a) - 1) + var_b ** 2 / (len(b) - 1))
    half = t_quantile(0.5 + confidence / 2.0, df) * se
    p_value = 2.0 * (1.0 - t_cdf(abs(diff) / se, df))
    return {"diff": diff, "ci": [diff - half, diff + half], "p_value": p_value, "df": df}


def pooled_std(groups: list[list[float]]) -> float | None:
    """Pooled standard deviation of several groups (each with its own mean)."""
    usable = [g for g in groups if len(g) > 1]
    dof = sum(len(g) - 1 for g in usable)
    if dof == 0:
        return None
    return math.sqrt(sum(statistics.variance(g) * (len(g) - 1) for g in usable) / dof)


def minimum_detectable_effect(std: float, n_a: int, n_b: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true difference a two-sided t-test of this design finds with ``power`` (equal spread ``std``)."""
    df = max(n_a + n_b - 2, 1)
    return (t_quantile(1 - alpha / 2, df) + t_quantile(power, df)) * std * math.sqrt(1 / n_a + 1 / n_b)


def runs_for_effect(std: float, effect: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Runs per arm for :func:`minimum_detectable_effect` to reach ``effect``."""
    n = 2
    while minimum_detectable_effect(std, n, n, alpha, power) > effect and n < 10_000:
        n += 1
    return n


def paired(a: dict, b: dict, confidence: float = 0.95, power: float = 0.8) -> dict:
    """Mean of the per-key differences ``a[k] - b[k]`` over the keys both hold (seeds), with its t interval,
    two-sided p-value, the spread of the differences and the minimum detectable effect of this many pairs.

    Right when both arms share what each seed fixes (data order, augmentation): seed-to-seed variation common to
    both arms then cancels in the difference.
    """
    keys = sorted(set(a) & set(b))
    diffs = [a[k] - b[k] for k in keys]
    result = {"n": len(diffs), "diff": statistics.fmean(diffs) if diffs else None, "ci": None, "p_value": None,
              "std": None, "mde": None}
    if len(diffs) < 2:
        return result
    std = statistics.stdev(diffs)
    se = std / math.sqrt(len(diffs))
    df = len(diffs) - 1
    result["std"] = std
    result["mde"] = (t_quantile(0.5 + confidence / 2.0, df) + t_quantile(power, df)) * se
    if se == 0.0:
        result.update(ci=[result["diff"], result["diff"]], p_value=0.0 if result["diff"] else 1.0)
        return result
    half = t_quantile(0.5 + confidence / 2.0, df) * se
    result["ci"] = [result["diff"] - half, result["diff"] + half]
    result["p_value"] = 2.0 * (1.0 - t_cdf(abs(result["diff"]) / se, df))
    return result
