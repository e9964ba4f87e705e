"""Preference losses as pure functions of margin estimates (METHOD.md §3).

The trainer averages each pair's n per-sample margins into Δ̂ [b] and calls
:func:`preference_loss`. Names and semantics follow TRL's ``DPOConfig``:

- ``sigmoid`` (DPO, Rafailov et al. 2023; with ``label_smoothing`` ε the
  conservative cDPO): ``−(1−ε)·log σ(βΔ) − ε·log σ(−βΔ)``
- ``robust`` (Chowdhury et al. 2024, unbiased under label-flip rate ε):
  ``(−(1−ε)·log σ(βΔ) + ε·log σ(−βΔ)) / (1 − 2ε)``
- ``hinge`` (SLiC, Zhao et al. 2023): ``max(0, 1 − βΔ)``
- ``ipo`` (Azar et al. 2023): ``(Δ − 1/(2β))²``

``rpo_alpha`` adds α times the masked-diffusion NLL of the chosen response
per token, ``−log π̂(y_w|x) / L``, as TRL's RPO term does for AR models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def preference_loss(margin: torch.Tensor, *, loss_type: str = "sigmoid", beta: float = 0.1,
                    label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair loss [b] from margin estimates Δ̂ [b]."""
    z = beta * margin
    eps = label_smoothing
    if loss_type == "sigmoid":
        return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    if loss_type == "robust":
        return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    if loss_type == "hinge":
        return torch.relu(1 - z)
    if loss_type == "ipo":
        return (margin - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")


def sft_nll(policy_chosen: torch.Tensor, response_lengths: torch.Tensor) -> torch.Tensor:
    """Per-token masked-diffusion NLL of the chosen response [b]: −mean_n(log π̂(y_w|x)) / L."""
    return -policy_chosen.mean(-1) / response_lengths.to(policy_chosen.dtype)
