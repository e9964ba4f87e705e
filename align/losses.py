"""Preference losses as pure functions of margin estimates (docs/method.md §3).

The trainer averages each pair's n per-sample margins into Δ̂ [b] and calls
:func:`preference_loss`. Names and semantics follow TRL's ``DPOConfig``:

- ``sigmoid`` (DPO, Rafailov et al. 2023; with ``label_smoothing`` ε the
  conservative cDPO): ``−(1−ε)·log σ(βΔ) − ε·log σ(−βΔ)``
- ``robust`` (Chowdhury et al. 2024, unbiased under label-flip rate ε):
  ``(−(1−ε)·log σ(βΔ) + ε·log σ(−βΔ)) / (1 − 2ε)``
- ``hinge`` (SLiC, Zhao et al. 2023): ``max(0, 1 − βΔ)``
- ``ipo`` (Azar et al. 2023, Eq. 17, in TRL's length-normalised form):
  ``(Δ/L − 1/(2β))²``. TRL (1.16, ``DPOTrainer``, ``loss_type="ipo"``)
  divides each response's log-ratio by its completion length before the
  square; here both responses of a pair are EOS-extended to one length L
  (docs/method.md §3), so the per-token margin is Δ/L. ``response_lengths`` is L.

``rpo_alpha`` (RPO, Pang et al. 2024; TRL 1.16 writes it as
``loss_type=["sigmoid", "sft"]``, ``loss_weights=[1, α]``) adds α times the
chosen responses' NLL averaged over *tokens*, not over pairs:
``α · Σ_i −log π̂(y_w,i|x_i) / Σ_i L_i``. TRL takes the token mean over one
micro-batch on one device; the trainer takes it over the whole optimizer step
(all ranks and accumulation steps), so the loss does not depend on how a
global batch is split. :func:`rpo_nll` returns each pair's share of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def preference_loss(
    margin: torch.Tensor,
    *,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    response_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair loss [b] from margin estimates Δ̂ [b]; ``ipo`` also needs the pairs' response lengths L [b]."""
    z = beta * margin
    eps = label_smoothing
    if loss_type == "sigmoid":
        return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    if loss_type == "robust":
        return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    if loss_type == "hinge":
        return torch.relu(1 - z)
    if loss_type == "ipo":
        if response_lengths is None:
            raise ValueError("loss_type='ipo' averages the log-ratios per token: pass response_lengths")
        return (margin / response_lengths.to(margin.dtype) - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")


def rpo_nll(policy_chosen: torch.Tensor, pairs_per_token: float) -> torch.Tensor:
    """Each pair's share [b] of the token-averaged NLL of the chosen responses.

    ``policy_chosen`` [b, n]: per-sample estimates of log π(y_w|x) (sums over the response).
    ``pairs_per_token`` = P / N for the P pairs and N chosen-response tokens that the loss
    averages over. The mean over those P pairs of the result is ``Σ_i −log π̂(y_w,i|x_i) / N``.
    """
    return -policy_chosen.mean(-1) * pairs_per_token
