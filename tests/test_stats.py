"""align.stats: Monte Carlo errors of held-out metrics against repeated evaluation on the toy, and the intervals
of ablation summaries against simulations whose answer is known."""

import math
import random

import pytest
import torch

from align import estimators as E
from align import stats as S
from align.losses import preference_loss
from align.toy import ToyJoint
from tests.conftest import toy_pairs


@pytest.mark.parametrize(
    "df,expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (5, 2.5706), (9, 2.2622), (30, 2.0423), (200, 1.9719)]
)
def test_t_quantiles_match_the_table(df, expected):
    """Two-sided 95% critical values of Student's t (any statistics table)."""
    assert S.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert S.t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-4)


def test_t_interval_by_hand():
    """values 1, 2, 3: mean 2, sd 1, se 1/√3; t(0.975, 2) = 4.3027, half-width 2.4841."""
    ci = S.t_interval([1, 2, 3])
    assert ci["mean"] == 2 and ci["se"] == pytest.approx(1 / math.sqrt(3))
    assert (ci["lo"], ci["hi"]) == pytest.approx((2 - 2.48417, 2 + 2.48417), abs=1e-4)
    one = S.t_interval([5.0, None, float("nan")])
    assert one["n"] == 1 and one["mean"] == 5 and math.isnan(one["lo"])


R = 400  # repeated evaluations of the same pairs


@pytest.fixture(scope="module")
def repeated_margins():
    """[R, P, n] per-sample coupled margins of 8 toy pairs, evaluated R times with fresh draws; iid and stratified."""
    policy = ToyJoint.random(V=3, T=6, seed=0)
    reference = policy.perturbed(0.3, seed=5)
    chosen, rejected, resp = toy_pairs(policy, 2, 8, seed=3)
    rep = lambda x: x.repeat_interleave(R, 0)  # noqa: E731
    out = {}
    for name, stratified, groups in (("iid", False, 1), ("stratified", True, 1), ("groups", True, 4)):
        draws = E.draw_margin_masks(
            rep(resp),
            n_samples=8,
            estimator="time_free",
            share_policy_reference=True,
            share_chosen_rejected=True,
            generator=torch.Generator().manual_seed(1),
            stratified=stratified,
            groups=groups,
        )
        terms = E.dpo_terms(
            E.scorer_from_logits(policy.logits_fn),
            E.scorer_from_logits(reference.logits_fn),
            rep(chosen),
            rep(rejected),
            rep(resp),
            n_samples=8,
            mask_token_id=policy.mask_token_id,
            draws=draws,
        )
        out[name] = terms.margin.double().reshape(8, R, 8).transpose(0, 1)
    return out


def _metrics(m, groups: int = 1):
    """(statistic per evaluation [R], its estimated Monte Carlo variance per evaluation [R]) for three metrics."""
    R, P, n = m.shape
    flat = m.reshape(R * P, n)  # every function is row-wise: all evaluations at once
    loss = lambda x: preference_loss(x, beta=1.0)  # noqa: E731
    means = m.mean(-1)  # [R, P]
    per_eval = lambda v: v.reshape(R, P).mean(-1) / P  # noqa: E731  mean over pairs of v_i, over P: var of the mean
    return {
        "margin": (means.mean(-1), per_eval(S.mean_variance(flat, groups))),
        "dpo_loss": (loss(means).mean(-1), per_eval(S.delta_variance(loss, flat, groups=groups))),
    }


@pytest.mark.parametrize("draws,groups", [("iid", 1), ("groups", 4)])
@pytest.mark.parametrize("metric,allowance", [("margin", 0.0), ("dpo_loss", 0.05)])
def test_mc_errors_match_the_spread_of_repeated_evaluations(repeated_margins, draws, groups, metric, allowance):
    """The estimated Monte Carlo variance of a held-out metric, averaged over R evaluations, equals the variance of
    the metric across those evaluations: for iid draws from their sample spread, for stratified draws made as 4
    independent stratified groups from the spread of the group means. The empirical variance has relative
    standard error √(2/(R−1)) ≈ 7%; tolerance 4 of them, plus the approximation of each estimate (delta method:
    exact for the mean)."""
    statistic, estimated = _metrics(repeated_margins[draws], groups)[metric]
    ratio = (estimated.mean() / statistic.var()).item()
    assert abs(ratio - 1) < 4 * math.sqrt(2 / (R - 1)) + allowance, ratio


def test_one_stratified_set_has_less_variance_than_its_sample_spread_says(repeated_margins):
    """Why stratified held-out draws come in independent groups: the spread of one stratified set over-states
    the variance of its mean (here by about 40%), while the groups' spread does not."""
    statistic, naive = _metrics(repeated_margins["stratified"])["margin"]
    assert (naive.mean() / statistic.var()).item() > 1 + 4 * math.sqrt(2 / (R - 1))
    statistic, grouped = _metrics(repeated_margins["groups"], 4)["margin"]
    assert abs((grouped.mean() / statistic.var()).item() - 1) < 4 * math.sqrt(2 / (R - 1))


def test_delta_variance_of_a_linear_function_is_exact():
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(S.delta_variance(lambda a, b: 2 * a - 3 * b, x, y), S.mean_variance(2 * x - 3 * y))


def test_sign_variance_without_spread_is_zero():
    """A coupled margin of two identical models is exactly 0 in every sample: no Monte Carlo error."""
    assert S.sign_variance(torch.zeros(3, 4)).tolist() == [0, 0, 0]


def _simulated_experiment(rng: random.Random, seeds: int, difference: float) -> tuple[dict, dict]:
    """Per-seed outcomes of two arms sharing a large seed effect (same initial adapter, data order)."""
    a, b = {}, {}
    for s in range(seeds):
        shared = rng.gauss(0, 3.0)
        a[s] = 10 + difference + shared + rng.gauss(0, 0.5)
        b[s] = 10 + shared + rng.gauss(0, 0.5)
    return a, b


@pytest.mark.parametrize("difference", [0.0, 1.0])
def test_paired_interval_covers_the_known_difference_95_percent_of_the_time(difference):
    """Simulated ablations with a known arm difference (0: the same model under two arm labels): the paired 95%
    interval over 5 seeds covers it in 95% of 2,000 experiments (binomial SE 0.5%; tolerance 4 SEs)."""
    rng = random.Random(0)
    trials, covered = 2000, 0
    for _ in range(trials):
        a, b = _simulated_experiment(rng, 5, difference)
        d = S.paired_difference(a, b)
        covered += d["lo"] <= difference <= d["hi"]
    assert abs(covered / trials - 0.95) < 4 * math.sqrt(0.95 * 0.05 / trials)


def test_pairing_by_seed_is_what_makes_the_interval_narrow():
    """The seed effect (sd 3) cancels in paired differences (sd √2·0.5): unpaired, the interval would be far wider."""
    a, b = _simulated_experiment(random.Random(1), 5, 1.0)
    paired = S.paired_difference(a, b)
    assert paired["lo"] > 0 and paired["hi"] - paired["lo"] < 3
    unpaired = S.paired_difference(a, dict(zip(a, list(b.values())[1:] + list(b.values())[:1])))
    assert unpaired["hi"] - unpaired["lo"] > 2 * (paired["hi"] - paired["lo"])
