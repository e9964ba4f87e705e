"""Estimators against enumerated exact values on toy distributions (docs/method.md §2-4).

Monte Carlo checks replicate each sequence R times in the batch: rows are
independent draws (each with its own stratification offset), so the row
means are i.i.d. and their spread gives an honest standard error even when
the n samples inside a row are stratified.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from align import estimators as E
from align.masking import ESTIMATORS, draw_masks, mask_count_probs, noise, sample_weight
from align.toy import TinyDenoiser, ToyJoint
from tests.conftest import toy_batch, toy_pairs

R, N = 400, 50  # 20,000 samples per sequence


def mc_check(samples: torch.Tensor, exact: torch.Tensor, n_rows: int, k: float = 4.0):
    """samples [n_rows*R, N]: assert each sequence's mean is within k standard errors of exact."""
    row_means = samples.mean(1).reshape(n_rows, R)
    mean = row_means.mean(1)
    se = row_means.std(1) / math.sqrt(R)
    z = (mean - exact) / se
    assert (z.abs() < k).all(), f"z-scores {z.tolist()} (mean {mean.tolist()}, exact {exact.tolist()})"


def exact_expectation(toy: ToyJoint, ids: torch.Tensor, resp: torch.Tensor, estimator: str) -> float:
    """E[estimate] of one row, enumerating the estimator's own draw distribution.

    time_free / any_order: Σ_m P(m) · mean over m-subsets of w(m)·Σ_{i∈M} log p(y^i | rest).
    time_integral: Σ_M ∫_0^1 λ^m (1−λ)^{L−m} / λ dλ · Σ_{i∈M} log p(y^i | rest), with the
    integral by 64-point Gauss–Legendre (exact: the integrand is a polynomial of degree L−1).
    """
    positions = resp.nonzero().squeeze(-1).tolist()
    L = len(positions)
    total = 0.0
    nodes, wts = np.polynomial.legendre.leggauss(64)
    lam, lam_w = (nodes + 1) / 2, wts / 2
    for m in range(1, L + 1):
        subsets = list(itertools.combinations(positions, m))
        masked = torch.zeros(len(subsets), ids.numel(), dtype=torch.bool)
        for k, s in enumerate(subsets):
            masked[k, list(s)] = True
        rows = ids.expand(len(subsets), -1)
        logits = toy.logits_fn(noise(rows, masked, toy.mask_token_id))
        logp = logits.log_softmax(-1).gather(-1, rows[..., None]).squeeze(-1)
        sums = torch.where(masked, logp, 0.0).sum(-1)  # [C(L, m)]
        if estimator == "time_integral":
            total += float((lam ** (m - 1) * (1 - lam) ** (L - m) * lam_w).sum()) * sums.sum().item()
        else:
            p_m = mask_count_probs(L, estimator)[m - 1].item()
            w = sample_weight(torch.tensor([m]), L, estimator).item()
            total += p_m * w * sums.mean().item()
    return total


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("ctx", [1, 2])
def test_exact_expectation_equals_log_prob(toy_policy, estimator, ctx):
    ids, resp = toy_batch(toy_policy, ctx=ctx, rows=3, seed=11)
    exact = toy_policy.log_prob(ids, resp)
    for i in range(3):
        assert exact_expectation(toy_policy, ids[i], resp[i], estimator) == pytest.approx(exact[i].item(), abs=1e-5)


def test_enumerate_bound_equals_log_prob_for_oracle(toy_policy):
    ids, resp = toy_batch(toy_policy, ctx=2, rows=4, seed=3)
    bound = E.enumerate_bound(toy_policy.logits_fn, ids, resp, mask_token_id=toy_policy.mask_token_id)
    torch.testing.assert_close(bound, toy_policy.log_prob(ids, resp), atol=1e-10, rtol=0)


@pytest.mark.parametrize("stratified", [True, False])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_log_likelihood_monte_carlo_mean(estimator, stratified):
    toy = ToyJoint.random(V=4, T=5, seed=1)  # context 1, response 4, vocab 4
    ids, resp = toy_batch(toy, ctx=1, rows=2, seed=7)
    g = torch.Generator().manual_seed(123)
    est = E.log_likelihood(
        toy.logits_fn,
        ids.repeat_interleave(R, 0),
        resp.repeat_interleave(R, 0),
        n_samples=N,
        estimator=estimator,
        mask_token_id=toy.mask_token_id,
        generator=g,
        stratified=stratified,
    )
    assert est.shape == (2 * R, N)
    mc_check(est, toy.log_prob(ids, resp), n_rows=2)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("share_pr,share_cr", [(True, True), (True, False), (False, True), (False, False)])
def test_dpo_margin_monte_carlo_mean(toy_policy, toy_reference, estimator, share_pr, share_cr):
    chosen, rejected, resp = toy_pairs(toy_policy, ctx=2, pairs=2, seed=21)
    exact = (toy_policy.log_prob(chosen, resp) - toy_reference.log_prob(chosen, resp)) - (
        toy_policy.log_prob(rejected, resp) - toy_reference.log_prob(rejected, resp)
    )
    g = torch.Generator().manual_seed(7)
    rep = lambda x: x.repeat_interleave(R, 0)  # noqa: E731
    margin = E.dpo_margin(
        toy_policy.logits_fn,
        toy_reference.logits_fn,
        rep(chosen),
        rep(rejected),
        rep(resp),
        n_samples=N,
        estimator=estimator,
        share_policy_reference=share_pr,
        share_chosen_rejected=share_cr,
        mask_token_id=toy_policy.mask_token_id,
        generator=g,
    )
    mc_check(margin, exact, n_rows=2)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_tiny_transformer_converges_to_enumerated_bound(estimator):
    model = TinyDenoiser(vocab=5, seed=0)
    ids = torch.tensor([[1, 2, 0, 4, 3, 3], [2, 0, 1, 1, 4, 2]])
    resp = torch.zeros_like(ids, dtype=torch.bool)
    resp[:, 2:] = True
    bound = E.enumerate_bound(model, ids, resp, mask_token_id=model.mask_token_id)
    g = torch.Generator().manual_seed(5)
    est = E.log_likelihood(
        model,
        ids.repeat_interleave(R, 0),
        resp.repeat_interleave(R, 0),
        n_samples=N,
        estimator=estimator,
        mask_token_id=model.mask_token_id,
        generator=g,
    )
    mc_check(est, bound, n_rows=2)


# ---------------------------------------------------------------- invariants


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_context_never_masked_or_scored(toy_policy, estimator):
    ids, resp = toy_batch(toy_policy, ctx=2, rows=3, seed=1)
    seen = []

    def spy(noised, attention_mask):
        seen.append(noised.clone())
        logits = toy_policy.logits_fn(noised)
        logits[:, :2] = torch.randn(logits[:, :2].shape, dtype=logits.dtype) * 100  # garbage at context
        return logits

    a = E.log_likelihood(
        spy,
        ids,
        resp,
        n_samples=64,
        estimator=estimator,
        mask_token_id=toy_policy.mask_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    b = E.log_likelihood(
        toy_policy.logits_fn,
        ids,
        resp,
        n_samples=64,
        estimator=estimator,
        mask_token_id=toy_policy.mask_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    assert not (seen[0][:, :2] == toy_policy.mask_token_id).any()
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_padding_never_changes_an_estimate(estimator):
    model = TinyDenoiser(vocab=5, seed=1)
    ids = torch.tensor([[1, 2, 0, 4, 3, 3], [2, 0, 1, 1, 4, 2]])
    resp = torch.zeros_like(ids, dtype=torch.bool)
    resp[:, 2:] = True
    padded = torch.cat([ids, torch.randint(0, 5, (2, 5))], 1)
    attn = torch.cat([torch.ones(2, 6), torch.zeros(2, 5)], 1).long()
    resp_padded = torch.cat([resp, torch.ones(2, 5, dtype=torch.bool)], 1)  # padding flagged too: must be ignored
    kw = dict(n_samples=16, estimator=estimator, mask_token_id=model.mask_token_id)
    a = E.log_likelihood(model, ids, resp, generator=torch.Generator().manual_seed(3), **kw)
    b = E.log_likelihood(
        model, padded, resp_padded, attention_mask=attn, generator=torch.Generator().manual_seed(3), **kw
    )
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_left_padding_gives_the_same_draw():
    resp = torch.tensor([[0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    left = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    for est in ESTIMATORS:
        a = draw_masks(resp, 32, est, torch.Generator().manual_seed(9))
        b = draw_masks(left, 32, est, torch.Generator().manual_seed(9))
        assert torch.equal(a.masked[..., 1:4], b.masked[..., 4:7]) and torch.equal(a.weight, b.weight)
        assert not b.masked[..., :4].any() and not b.masked[..., 7:].any()


@pytest.mark.parametrize("stratified", [True, False])
def test_full_mask_m_equals_L_is_drawn_at_its_rate(stratified):
    """P(m = L) = 1/(L·H_L) for time_free; L/L = 1/L for any_order."""
    L, n = 5, 4000
    resp = torch.ones(1, L, dtype=torch.bool)
    for est, p in [("time_free", 1 / (L * sum(1 / k for k in range(1, L + 1)))), ("any_order", 1 / L)]:
        d = draw_masks(resp.expand(10, L), n, est, torch.Generator().manual_seed(1), stratified)
        freq = (d.masked.sum(-1) == L).double().mean().item()
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / (10 * n)), (est, freq, p)


def test_same_seed_identical_outputs(toy_policy, toy_reference):
    chosen, rejected, resp = toy_pairs(toy_policy, ctx=2, pairs=3, seed=2)
    kw = dict(n_samples=8, mask_token_id=toy_policy.mask_token_id, share_policy_reference=False)
    a = E.dpo_margin(
        toy_policy.logits_fn,
        toy_reference.logits_fn,
        chosen,
        rejected,
        resp,
        generator=torch.Generator().manual_seed(4),
        **kw,
    )
    b = E.dpo_margin(
        toy_policy.logits_fn,
        toy_reference.logits_fn,
        chosen,
        rejected,
        resp,
        generator=torch.Generator().manual_seed(4),
        **kw,
    )
    c = E.dpo_margin(
        toy_policy.logits_fn,
        toy_reference.logits_fn,
        chosen,
        rejected,
        resp,
        generator=torch.Generator().manual_seed(5),
        **kw,
    )
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("share_cr", [True, False])
def test_identical_policy_and_reference_give_exactly_zero(toy_policy, estimator, share_cr):
    chosen, rejected, resp = toy_pairs(toy_policy, ctx=2, pairs=3, seed=2)
    margin = E.dpo_margin(
        toy_policy.logits_fn,
        toy_policy.logits_fn,
        chosen,
        rejected,
        resp,
        n_samples=16,
        estimator=estimator,
        share_chosen_rejected=share_cr,
        share_policy_reference=True,
        mask_token_id=toy_policy.mask_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(margin, torch.zeros_like(margin))


def test_per_row_generators_make_a_row_independent_of_its_batch(toy_policy):
    ids, resp = toy_batch(toy_policy, ctx=2, rows=3, seed=5)
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(3)]  # noqa: E731
    full = E.log_likelihood(toy_policy.logits_fn, ids, resp, n_samples=8, mask_token_id=3, generator=gens())
    alone = E.log_likelihood(
        toy_policy.logits_fn, ids[1:2], resp[1:2], n_samples=8, mask_token_id=3, generator=[gens()[1]]
    )
    torch.testing.assert_close(full[1:2], alone, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- variance


def _margin_variance(pol, ref, estimator, share_pr, share_cr, reps=4000):
    chosen, rejected, resp = toy_pairs(pol, ctx=2, pairs=2, seed=21)
    rep = lambda x: x.repeat_interleave(reps, 0)  # noqa: E731
    m = E.dpo_margin(
        pol.logits_fn,
        ref.logits_fn,
        rep(chosen),
        rep(rejected),
        rep(resp),
        n_samples=1,
        estimator=estimator,
        share_policy_reference=share_pr,
        share_chosen_rejected=share_cr,
        mask_token_id=pol.mask_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    return m.reshape(2, reps).var(1)  # per-sample variance, per pair


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_coupled_variance_at_most_a_fifth_of_decoupled(toy_policy, toy_reference, estimator):
    coupled = _margin_variance(toy_policy, toy_reference, estimator, True, True)
    decoupled = _margin_variance(toy_policy, toy_reference, estimator, False, False)
    assert (coupled <= decoupled / 5).all(), (coupled, decoupled)


def test_time_free_variance_below_time_integral(toy_policy, toy_reference):
    for share in [(True, True), (False, False)]:
        tf = _margin_variance(toy_policy, toy_reference, "time_free", *share)
        ti = _margin_variance(toy_policy, toy_reference, "time_integral", *share)
        assert (tf < ti).all(), (share, tf, ti)


# ---------------------------------------------------------------- errors


def test_empty_response_names_the_row(toy_policy):
    ids, resp = toy_batch(toy_policy, ctx=2, rows=3, seed=1)
    resp[1] = False
    with pytest.raises(ValueError, match="row 1"):
        E.log_likelihood(toy_policy.logits_fn, ids, resp, n_samples=2, mask_token_id=3)


def test_unknown_estimator_is_rejected(toy_policy):
    ids, resp = toy_batch(toy_policy, ctx=2, rows=1, seed=1)
    with pytest.raises(ValueError, match="unknown estimator 'time-free'"):
        E.log_likelihood(toy_policy.logits_fn, ids, resp, n_samples=2, mask_token_id=3, estimator="time-free")


def test_mismatched_pair_shapes_are_rejected(toy_policy):
    chosen, rejected, resp = toy_pairs(toy_policy, ctx=2, pairs=2, seed=2)
    with pytest.raises(ValueError, match="common|share one"):
        E.dpo_margin(
            toy_policy.logits_fn, toy_policy.logits_fn, chosen, rejected[:, :-1], resp, n_samples=2, mask_token_id=3
        )


@pytest.mark.parametrize("share", [(True, True), (False, False)])
def test_draws_made_ahead_and_reference_terms_read_back_give_dpo_terms(toy_policy, share):
    """The trainer's path: draws made on the host beforehand (``draws=``), the reference's terms computed apart
    (``dpo_reference_terms``) and passed back (``reference_terms=``): the same four terms as one ``dpo_terms``."""
    reference = toy_policy.perturbed(0.3, seed=3)
    chosen, rejected, resp = toy_pairs(toy_policy, ctx=2, pairs=5, seed=4)
    kw = dict(
        n_samples=3,
        estimator="time_free",
        share_policy_reference=share[0],
        share_chosen_rejected=share[1],
        mask_token_id=toy_policy.mask_token_id,
    )
    policy_s, reference_s = E.scorer_from_logits(toy_policy.logits_fn), E.scorer_from_logits(reference.logits_fn)
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(5)]  # noqa: E731
    whole = E.dpo_terms(policy_s, reference_s, chosen, rejected, resp, generator=gens(), **kw)
    draws = E.draw_margin_masks(
        resp,
        n_samples=3,
        estimator="time_free",
        share_policy_reference=share[0],
        share_chosen_rejected=share[1],
        generator=gens(),
        stratified=True,
    )
    ahead = E.dpo_terms(policy_s, reference_s, chosen, rejected, resp, draws=draws, **kw)
    ref = E.dpo_reference_terms(reference_s, chosen, rejected, resp, generator=gens(), **kw)
    apart = E.dpo_terms(policy_s, None, chosen, rejected, resp, generator=gens(), reference_terms=ref, **kw)
    for terms in (ahead, apart):
        for name in ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected"):
            torch.testing.assert_close(getattr(terms, name), getattr(whole, name), atol=1e-6, rtol=1e-6)
