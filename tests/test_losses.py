"""Preference losses against hand-worked values."""

import math

import pytest
import torch

from align.losses import preference_loss, rpo_nll


def test_sigmoid_at_zero_margin_is_log_two():
    """Δ = 0: −log σ(0) = log 2 ≈ 0.693147, whatever β."""
    loss = preference_loss(torch.tensor([0.0]), loss_type="sigmoid", beta=0.5)
    assert loss.item() == pytest.approx(math.log(2))


def test_sigmoid_worked_value():
    """β = 0.1, Δ = 10: βΔ = 1, −log σ(1) = log(1 + e^−1) = 0.313262."""
    assert preference_loss(torch.tensor([10.0]), beta=0.1).item() == pytest.approx(0.313262, abs=1e-6)


def test_label_smoothing_cdpo():
    """ε = 0.2, βΔ = 1: 0.8·0.313262 + 0.2·(−log σ(−1) = 1.313262) = 0.513262."""
    loss = preference_loss(torch.tensor([10.0]), beta=0.1, label_smoothing=0.2)
    assert loss.item() == pytest.approx(0.8 * 0.313262 + 0.2 * 1.313262, abs=1e-6)


def test_robust():
    """ε = 0.2, βΔ = 1: (0.8·0.313262 − 0.2·1.313262) / 0.6 = −0.020071."""
    loss = preference_loss(torch.tensor([10.0]), loss_type="robust", beta=0.1, label_smoothing=0.2)
    assert loss.item() == pytest.approx((0.8 * 0.313262 - 0.2 * 1.313262) / 0.6, abs=1e-6)


def test_hinge():
    """β = 0.1: Δ = 5 -> 1 − 0.5 = 0.5; Δ = 20 -> max(0, −1) = 0."""
    loss = preference_loss(torch.tensor([5.0, 20.0]), loss_type="hinge", beta=0.1)
    assert loss.tolist() == pytest.approx([0.5, 0.0])


def test_ipo_is_per_token_as_in_trl():
    """TRL's IPO: (chosen_logratio/L_w − rejected_logratio/L_l − 1/(2β))²; here L_w = L_l = L.

    β = 0.1, target 1/(2β) = 5. Δ = 30 over L = 10 tokens: (3 − 5)² = 4. Δ = 100 over L = 20: (5 − 5)² = 0.
    Summed log-ratios without the division would give (30 − 5)² = 625.
    """
    loss = preference_loss(
        torch.tensor([30.0, 100.0]), loss_type="ipo", beta=0.1, response_lengths=torch.tensor([10, 20])
    )
    assert loss.tolist() == pytest.approx([4.0, 0.0])
    with pytest.raises(ValueError, match="response_lengths"):
        preference_loss(torch.tensor([3.0]), loss_type="ipo")


def test_sigmoid_gradient_pushes_margin_up():
    margin = torch.tensor([0.0], requires_grad=True)
    preference_loss(margin, beta=1.0).sum().backward()
    assert margin.grad.item() == pytest.approx(-0.5)  # d/dΔ −log σ(Δ) = −(1 − σ(0)) = −0.5


def test_rpo_nll_is_token_weighted_over_the_batch():
    """TRL's sft term: −mean of log-probs over all chosen tokens of the batch, not a mean of per-pair means.

    Pair 1: log π̂ samples −6, −10 (mean −8) over L = 4 tokens; pair 2: −12 over L = 2. Token-weighted:
    (8 + 12) / (4 + 2) = 3.3333; the per-pair mean of per-token NLLs would be (2 + 6)/2 = 4.
    With P/N = 2/6, the mean of the per-pair shares is the token-weighted value.
    """
    shares = rpo_nll(torch.tensor([[-6.0, -10.0], [-12.0, -12.0]]), pairs_per_token=2 / 6)
    assert shares.mean().item() == pytest.approx(20 / 6)


def test_unknown_loss_type():
    with pytest.raises(ValueError, match="unknown loss_type 'dpo'"):
        preference_loss(torch.zeros(1), loss_type="dpo")
