"""Statistics of an ablation grid: intervals that carry every source of error, multiplicity, censored speed.

An ablation compares arms (training settings) over S seeds, each run scored on the same J held-out units (pairs,
or prompts for behaviour) that come from C clusters (the task a unit asks about: ``task_id`` in the bundled data,
else the prompt text). A final outcome is a mean over the run x unit table ``Y[s, j]``, and its uncertainty has
three sources:

- **seeds** (initialisation, data order, sampler): rows of the table vary;
- **held-out units, clustered**: columns vary, and columns of one task vary together;
- **the evaluator's Monte Carlo error**: each unit's value is an n-draw estimate. Every run draws the same masks
  for a unit (``eval.seed``), so that error is shared by the unit's column and acts like a unit effect; draws of
  different units are independent, so it is part of the column spread and is carried by the cluster term below
  (a simulated test with a known Monte Carlo component checks this).

:func:`two_way` estimates the variance of the grand mean by the method of moments for a crossed seeds x clusters
design: ``V = V_seed + V_cluster - V_residual`` with ``V_seed`` the spread of the row means over S(S-1),
``V_cluster`` the cluster-robust spread of the column means (sums over each cluster's columns), and
``V_residual = MS_residual / (S J)`` the seed x unit interaction counted in both (without clusters this is the
exactly unbiased ANOVA estimator of ``σ²_seed/S + σ²_unit/J + σ²_residual/(SJ)``); a sum below the larger of
``V_seed`` and ``V_cluster`` (each at most the variance in expectation) is raised to it. The interval is
Student-t with Satterthwaite's degrees of freedom: with few seeds the seed term dominates and the interval widens as it
must (t with about S-1 df). A paired difference between arms is the same computation on ``Y_A - Y_B`` over
the seeds and units both arms have.

With few seeds the t interval leans on normality; :func:`sign_flip_p` gives the exact two-sided p-value of the
per-seed mean differences (all 2^S sign patterns; with 5 seeds the smallest possible p is 2/32 = 0.0625).
:func:`holm` adjusts a family of p-values (Holm 1979, family-wise error). :func:`tost` is the equivalence
test: the 90% interval inside ``±margin``.

Learning speed (:func:`crossing`): the step where a learning curve first reaches a target, interpolated linearly
between the two evaluations around the crossing; a run that never reaches it is right-censored at its last
evaluation. :func:`restricted_mean` summarises censored times by the restricted mean ``E[min(T, τ)]`` (a lower
bound of the mean when any run is censored) and the Kaplan-Meier median (without censoring before τ, the
sample median; "not reached" when half the runs are censored).

    pytest tests/test_grid_stats.py
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from align.stats import t_cdf, t_quantile


def _nan_result(n_seeds: int, n_units: int, n_clusters: int) -> dict:
    nan = float("nan")
    return {
        "mean": nan,
        "lo": nan,
        "hi": nan,
        "se": nan,
        "df": nan,
        "p": nan,
        "seeds": n_seeds,
        "units": n_units,
        "clusters": n_clusters,
        "v_seed": nan,
        "v_cluster": nan,
        "v_residual": nan,
    }


def t_p_value(t: float, df: float) -> float:
    """Two-sided p of a t statistic; a fractional df is rounded down (conservative)."""
    if not math.isfinite(t):
        return 0.0 if math.isinf(t) else float("nan")
    d = max(1, int(math.floor(df))) if math.isfinite(df) else 10**6
    d = min(d, 10**6)
    if d >= 10**5:
        return math.erfc(abs(t) / math.sqrt(2))
    return 2 * (1 - t_cdf(abs(t), d))


def _t_q(level: float, df: float) -> float:
    d = max(1, int(math.floor(df))) if math.isfinite(df) else 10**6
    if d >= 10**5:
        return math.sqrt(2) * _erfinv(level)
    return t_quantile(0.5 + level / 2, d)


def _erfinv(y: float) -> float:
    lo, hi = 0.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.erf(mid) < y else (lo, mid)
    return (lo + hi) / 2


def two_way(table, clusters: Sequence | None = None, level: float = 0.95) -> dict:
    """Mean of a seeds x units table with an interval over seeds, clustered units and the evaluator's error.

    ``table``: [S, J] (complete); ``clusters``: J labels (None: every unit its own cluster). Returns mean, lo, hi,
    se, df (Satterthwaite), p (two-sided, of mean = 0), the variance terms, and seeds/units/clusters counts.
    With one seed the seed variance cannot be estimated: the interval is over clusters only (``v_seed`` nan).
    """
    Y = np.asarray(table, dtype=np.float64)
    if Y.ndim != 2:
        raise ValueError("two_way needs a [seeds, units] table")
    S, J = Y.shape
    labels = list(range(J)) if clusters is None else list(clusters)
    if len(labels) != J:
        raise ValueError(f"{len(labels)} cluster labels for {J} units")
    _, inv = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    C = int(inv.max()) + 1 if J else 0
    if S == 0 or J == 0 or not np.isfinite(Y).all():
        return _nan_result(S, J, C)
    mean = float(Y.mean())
    row, col = Y.mean(1), Y.mean(0)
    v_seed = float(((row - mean) ** 2).sum() / (S * (S - 1))) if S > 1 else float("nan")
    u_c = np.bincount(inv, weights=(col - mean) / J, minlength=C)
    v_cluster = float(C / (C - 1) * (u_c**2).sum()) if C > 1 else float("nan")
    if S > 1 and J > 1:
        resid = Y - row[:, None] - col[None, :] + mean
        ms_res = float((resid**2).sum() / ((S - 1) * (J - 1)))
        v_residual = ms_res / (S * J)
    else:
        v_residual = 0.0
    terms = [(v, d) for v, d in ((v_seed, S - 1), (v_cluster, C - 1)) if math.isfinite(v)]
    if not terms:
        return {**_nan_result(S, J, C), "mean": mean}
    v = sum(x for x, _ in terms) - (v_residual if len(terms) == 2 else 0.0)
    largest, largest_df = max(terms)
    if v <= largest:
        # each term alone is at most the variance in expectation: a sum below the largest is a downward
        # fluctuation of the subtraction (it would also make Satterthwaite's df collapse); use that term
        v, df = largest, float(largest_df)
    else:
        denom = sum(x**2 / d for x, d in terms) + (v_residual**2 / ((S - 1) * (J - 1)) if S > 1 and J > 1 else 0.0)
        df = v**2 / denom if denom > 0 else float("inf")
    se = math.sqrt(v)
    half = _t_q(level, df) * se
    p = t_p_value(mean / se, df) if se > 0 else (1.0 if mean == 0 else 0.0)
    return {
        "mean": mean,
        "lo": mean - half,
        "hi": mean + half,
        "se": se,
        "df": df,
        "p": p,
        "seeds": S,
        "units": J,
        "clusters": C,
        "v_seed": v_seed,
        "v_cluster": v_cluster,
        "v_residual": v_residual,
    }


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Exact two-sided p-value of mean(diffs) = 0 by flipping signs (every pattern; for up to 16 values)."""
    d = [float(x) for x in diffs]
    n = len(d)
    if n == 0:
        return float("nan")
    if n > 16:
        raise ValueError("sign_flip_p enumerates 2^n patterns: at most 16 values")
    observed = abs(sum(d))
    hits = sum(
        abs(sum(s * x for s, x in zip(signs, d))) >= observed - 1e-12 for signs in itertools.product((1, -1), repeat=n)
    )
    return hits / 2**n


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order; nan stays nan."""
    idx = [i for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    order = sorted(idx, key=lambda i: p_values[i])
    m = len(order)
    adjusted = [float("nan")] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def tost(result: dict, margin: float, alpha: float = 0.05) -> bool:
    """Equivalence within ±margin by two one-sided tests: the (1 - 2α) interval lies inside (−margin, margin)."""
    if not math.isfinite(result.get("se", float("nan"))):
        return False
    half = _t_q(1 - 2 * alpha, result["df"]) * result["se"]
    return -margin < result["mean"] - half and result["mean"] + half < margin


def verdict(
    result: dict,
    *,
    alpha: float = 0.05,
    p: float | None = None,
    margin: float | None = None,
    names: tuple[str, str] = ("first", "second"),
) -> str:
    """Words for a difference: which side is higher, "no difference detected", or equivalence by TOST."""
    p = result.get("p") if p is None else p
    if result.get("se") == 0:
        return "identical in every seed and unit (no variation to test)"
    if p is not None and math.isfinite(p) and p < alpha:
        return f"{names[0]} higher" if result["mean"] > 0 else f"{names[1]} higher"
    if margin is not None and tost(result, margin, alpha):
        return f"equivalent within ±{margin:g} (TOST, α = {alpha:g})"
    return "no difference detected"


# ---------------------------------------------------------------------------------------------- learning speed
def crossing(steps: Sequence[float], values: Sequence[float], target: float) -> tuple[float, bool]:
    """(step, reached): the first crossing of ``target``, interpolated between evaluations; not reached: the last
    step, censored."""
    pts = [(float(s), float(v)) for s, v in zip(steps, values) if v is not None and math.isfinite(float(v))]
    if not pts:
        return float("nan"), False
    for i, (s, v) in enumerate(pts):
        if v >= target:
            if i == 0:
                return s, True
            s0, v0 = pts[i - 1]
            return s0 + (target - v0) / (v - v0) * (s - s0), True
    return pts[-1][0], False


def restricted_mean(times: Sequence[float], reached: Sequence[bool], level: float = 0.95) -> dict:
    """Censored times (one per seed): restricted mean E[min(T, τ)] with its t interval over seeds, the
    Kaplan-Meier median (None: not reached), and how many were censored."""
    t = [float(x) for x in times]
    n = len(t)
    out = {"n": n, "censored": sum(not r for r in reached), "tau": max(t) if t else float("nan")}
    if n == 0:
        return {**out, "mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "median": None}
    mean = sum(t) / n
    if n > 1:
        sd = math.sqrt(sum((x - mean) ** 2 for x in t) / (n - 1))
        half = _t_q(level, n - 1) * sd / math.sqrt(n)
    else:
        half = float("nan")
    out.update(mean=mean, lo=mean - half, hi=mean + half)
    # Kaplan-Meier median: events in time order; the survival drops at each event by 1/at-risk
    surv, at_risk, median = 1.0, n, None
    for x, r in sorted(zip(t, reached), key=lambda z: (z[0], not z[1])):
        if r:
            surv *= 1 - 1 / at_risk
            if surv <= 0.5 and median is None:
                median = x
        at_risk -= 1
    out["median"] = median
    return out
