"""Uncertainty of what align reports: Monte Carlo errors of held-out metrics, intervals over seeds and pairs.

Two sources of error are kept apart:

- **Monte Carlo error** (the estimator's): a held-out metric averages, over P pairs, a function of each
  pair's n-sample mean. Its Monte Carlo variance is estimated from the spread of the n samples:
  :func:`mean_variance` (a mean: ``s²/n``), :func:`delta_variance` (a smooth function of means, e.g. the
  DPO loss: the delta method through autograd). The reward accuracy gets none: :func:`sign_variance`, the
  plug-in ``p(1 − p)`` with ``p = Φ(mean/se)``, is biased (see its doc) and is used by no log or report;
  align reports instead the share of pairs whose mean is within 2 SEs of 0 (another draw could flip them). The
  metric's Monte
  Carlo standard error is ``sqrt(Σ_i v_i) / P`` (:func:`pooled_se`). Stratified draws are not independent:
  they are made as G independent stratified groups, and each variance comes from the spread of the group
  means (``groups=G``); the sample spread of a single stratified set would over-state it.
- **Sampling error** (the experiment's): seeds (initialisation, data order) and held-out pairs. Ablation
  summaries give Student-t 95% intervals of means and of paired differences (:func:`t_interval`).

    pytest tests/test_stats.py
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


# ------------------------------------------------------------------------------------- Monte Carlo error
def _group_means(samples: torch.Tensor, groups: int) -> torch.Tensor:
    """[b, n] -> [b, groups] means of consecutive sets of n/groups samples."""
    b, n = samples.shape
    if n % groups:
        raise ValueError(f"{n} samples do not split into {groups} groups")
    return samples.reshape(b, groups, n // groups).mean(-1)


def mean_variance(samples: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """[b, n] per-sample estimates -> [b] Monte Carlo variance of their mean.

    ``groups`` = 1: the samples are iid, ``s²/n`` (n >= 2). ``groups`` G > 1: the samples are G independent sets
    (e.g. each one stratified draw, ``masking.draw_masks(groups=G)``) of n/G consecutive samples; the variance
    of the overall mean is the spread of the G set means over G, unbiased whatever the dependence inside a set.
    """
    x = samples.detach().double()
    if groups > 1:
        return _group_means(x, groups).var(-1, correction=1) / groups
    n = x.shape[-1]
    if n < 2:
        raise ValueError("the Monte Carlo variance of a mean needs at least 2 samples")
    return x.var(-1, correction=1) / n


def delta_variance(fn: Callable[..., torch.Tensor], *samples: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """[b] Monte Carlo variance of ``fn(mean_1, ..., mean_K)`` by the delta method.

    ``samples``: K tensors [b, n], the per-sample estimates whose row means ``fn`` takes ([b] each); ``fn``
    returns [b], row i depending on row i alone. Linearised, ``fn`` of the means is the mean of the
    per-sample values ``u_ij = Σ_k ∂fn_i/∂mean_k,i · x_k,ij``, so its variance is that of the mean of u
    (:func:`mean_variance`, with ``groups``); for a linear ``fn`` this is exact.
    """
    means = [s.detach().double().mean(-1).requires_grad_(True) for s in samples]
    with torch.enable_grad():
        out = fn(*means)
        grads = torch.autograd.grad(out.sum(), means, allow_unused=True)
    u = sum(g.unsqueeze(-1) * s.detach().double() for g, s in zip(grads, samples) if g is not None)
    if not torch.is_tensor(u):  # fn does not depend on the samples
        return torch.zeros(samples[0].shape[0], dtype=torch.float64, device=samples[0].device)
    return mean_variance(u, groups)


def sign_variance(samples: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """[b] Monte Carlo variance of ``1[mean > 0] + ½·1[mean = 0]`` for [b, n] samples.

    The mean is approximately normal around its expectation with standard error ``se`` (:func:`mean_variance`,
    with ``groups``), so ``p = P(mean > 0) ≈ Φ(mean / se)`` and the indicator's variance is ``p(1 − p)``. Rows
    without spread (e.g. a coupled margin of two identical models, exactly 0) have none. **Biased**, in both
    directions: with 4 groups (3 degrees of freedom in ``se``) a simulation put its expectation at 0.60x the
    true variance at z = 0, 2.3x at z = 2 and 12x at z = 3. align's logs and reports do not use it
    (``benchmarks/eval_mc_calibration.py`` measures it against repeated evaluations).
    """
    mean = samples.detach().double().mean(-1)
    se = mean_variance(samples, groups).sqrt()
    z = torch.where(se > 0, mean / se.clamp_min(1e-300), torch.zeros_like(mean))
    p = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    return torch.where(se > 0, p * (1 - p), torch.zeros_like(mean))


def pooled_se(mean_of_variances: float, count: int) -> float:
    """Standard error of a mean over ``count`` items whose own variances average ``mean_of_variances``."""
    return math.sqrt(max(mean_of_variances, 0.0) / count) if count else float("nan")


# ------------------------------------------------------------------------------------- intervals
def t_cdf(x: float, df: int) -> float:
    """Student-t CDF with ``df`` degrees of freedom (exact series for integer df)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    theta = math.atan2(x, math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:  # odd df: (2/π)(θ + s·c·(1 + c²·2/3 + c⁴·(2·4)/(3·5) + ...)), series up to df-2
        total, term = 0.0, s * c if df > 1 else 0.0
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c * c * (2 * k) / (2 * k + 1)
        a = (2 / math.pi) * (theta + total)
    else:  # even df: s·(1 + c²/2 + c⁴·(1·3)/(2·4) + ...), series up to df-2
        total, term = 0.0, 1.0
        for k in range(1, df // 2 + 1):
            total += term
            term *= c * c * (2 * k - 1) / (2 * k)
        a = s * total
    return 0.5 * (1 + a)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0 < p < 1:
        raise ValueError("p must be in (0, 1)")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > p:
        lo *= 2
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, abs(mid)):
            break
    return (lo + hi) / 2


def t_interval(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean of ``values`` with its Student-t ``level`` interval: {mean, lo, hi, se, n} (one value: no interval)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "se": float("nan"), "n": 0}
    mean = sum(xs) / n
    if n == 1:
        return {"mean": mean, "lo": float("nan"), "hi": float("nan"), "se": float("nan"), "n": 1}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    se = sd / math.sqrt(n)
    half = t_quantile(0.5 + level / 2, n - 1) * se
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "se": se, "n": n}


def paired_difference(a: dict, b: dict, level: float = 0.95) -> dict:
    """``a − b`` over the keys both have (seeds, or pairs), with its t interval; ``wins``: how often a > b."""
    keys = [
        k
        for k in a
        if k in b
        and a[k] is not None
        and b[k] is not None
        and math.isfinite(float(a[k]))
        and math.isfinite(float(b[k]))
    ]
    diffs = [float(a[k]) - float(b[k]) for k in keys]
    out = t_interval(diffs, level)
    out["wins"] = sum(d > 0 for d in diffs)
    return out


def binomial_se(p: float, n: int) -> float:
    """Standard error of a proportion ``p`` over ``n`` independent items."""
    return math.sqrt(p * (1 - p) / n) if n else float("nan")
