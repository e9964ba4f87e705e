"""Random mask draws for masked-diffusion likelihood estimators (docs/method.md §2).

This module owns the forward noising process as pure functions: which response
positions are masked in each Monte Carlo sample, and the importance weight
that turns the summed log-probabilities of the masked tokens into an unbiased
estimate of ``log p(response | context)``. It knows nothing about models.

A draw for ``b`` rows and ``n`` samples is a :class:`MaskDraw`:

    masked  [b, n, T] bool   positions replaced by the mask token
    weight  [b, n]   float64 the estimate of sample j is  weight * Σ_masked log p

Every row is drawn on its own, from the response positions of that row only,
so a row's draw depends on nothing but its response length and its generator
state: padding, other rows and the total length ``T`` never change it. A list
of generators (one per row) makes each row's draw reproducible on its own,
which the trainer uses to key draws by example id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

ESTIMATORS = ("time_free", "any_order", "time_integral")

Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass(frozen=True)
class MaskDraw:
    """Masks and importance weights of ``n`` samples for each of ``b`` rows."""

    masked: torch.Tensor  # [b, n, T] bool
    weight: torch.Tensor  # [b, n] float64

    @property
    def n_samples(self) -> int:
        return self.masked.shape[1]


def check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")


def harmonic(L: int) -> float:
    """H_L = Σ_{k=1..L} 1/k."""
    return math.fsum(1.0 / k for k in range(1, L + 1))


def mask_count_probs(L: int, estimator: str) -> torch.Tensor:
    """P(m) for m = 1..L as a float64 tensor [L] (time_free and any_order only).

    time_free: P(m) = 1/(m·H_L) (arXiv 2510.24088, Thm 4.1); any_order: uniform.
    """
    check_estimator(estimator)
    m = torch.arange(1, L + 1, dtype=torch.float64)
    if estimator == "time_free":
        return (1.0 / m) / harmonic(L)
    if estimator == "any_order":
        return torch.full((L,), 1.0 / L, dtype=torch.float64)
    raise ValueError("time_integral draws a masking rate, not a mask count")


def sample_weight(m: torch.Tensor, L: int, estimator: str) -> torch.Tensor:
    """Importance weight of a draw with ``m`` masked positions out of ``L``.

    time_free: H_L; any_order: L/m (LLaDA's likelihood script). For
    time_integral the weight is 1/λ and depends on λ, not on m.
    """
    if estimator == "time_free":
        return torch.full_like(m, harmonic(L), dtype=torch.float64)
    if estimator == "any_order":
        return L / m.to(torch.float64)
    raise ValueError("time_integral weights are 1/λ")


def _uniforms(n: int, stratified: bool, generator: torch.Generator | None, groups: int = 1) -> torch.Tensor:
    """n uniforms on [0, 1), float64. Stratified: one offset U and u_j = (U + j/n) mod 1.

    Each u_j is marginally U(0, 1), so every sample alone stays unbiased, while
    the n of them cover the n strata of the CDF exactly once (docs/method.md §2).
    With ``groups`` G > 1 the n uniforms are G independent stratified sets of n/G,
    one after the other: the spread of the G set means estimates the Monte Carlo
    variance, which one stratified set cannot (its samples are not independent).
    """
    if stratified:
        if n % groups:
            raise ValueError(f"{n} samples do not split into {groups} stratified groups")
        k = n // groups
        offset = torch.rand(groups, 1, dtype=torch.float64, generator=generator)
        return torch.remainder(offset + torch.arange(k, dtype=torch.float64) / k, 1.0).reshape(n)
    return torch.rand(n, dtype=torch.float64, generator=generator)


def _draw_row(L: int, n: int, estimator: str, stratified: bool, generator: torch.Generator | None, groups: int = 1):
    """Masks over the L response positions of one row: ([n, L] bool, [n] float64)."""
    u = _uniforms(n, stratified, generator, groups)  # [n]
    keys = torch.rand(n, L, dtype=torch.float64, generator=generator)  # [n, L]
    if estimator == "time_integral":
        # each position masked independently w.p. λ = u; value S(M)/λ, 0 when nothing is masked
        masked = keys < u[:, None]
        weight = torch.where(masked.any(-1), 1.0 / u.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
        return masked, weight
    # m by inverse CDF, then a uniform m-subset: the m positions with the smallest keys
    cdf = mask_count_probs(L, estimator).cumsum(0)
    cdf[-1] = 1.0  # m = L is always reachable despite rounding
    m = (torch.searchsorted(cdf, u, right=False) + 1).clamp(1, L)  # [n]
    rank = keys.argsort(-1).argsort(-1)  # [n, L]
    masked = rank < m[:, None]
    return masked, sample_weight(m, L, estimator)


def draw_masks(
    response_mask: torch.Tensor,
    n_samples: int,
    estimator: str = "time_free",
    generator: Generators = None,
    stratified: bool = True,
    groups: int = 1,
) -> MaskDraw:
    """Draw ``n_samples`` masks per row over the positions where ``response_mask`` is True.

    response_mask: [b, T] bool. generator: one ``torch.Generator`` for the
    batch (rows consume it in order), a sequence of ``b`` generators (row i
    uses only generators[i]), or None for torch's global generator.
    ``groups`` (with ``stratified``): the samples are that many independent
    stratified sets, consecutive along the sample axis.
    Raises ValueError naming the row if a row has no response position.
    """
    check_estimator(estimator)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if response_mask.dim() != 2 or response_mask.dtype != torch.bool:
        raise ValueError(
            f"response_mask must be a [b, T] bool tensor, got {tuple(response_mask.shape)} {response_mask.dtype}"
        )
    b, T = response_mask.shape
    if isinstance(generator, Sequence):
        if len(generator) != b:
            raise ValueError(f"got {len(generator)} generators for {b} rows")
        row_generators = list(generator)
    else:
        row_generators = [generator] * b
    resp = response_mask.cpu()
    masked = torch.zeros(b, n_samples, T, dtype=torch.bool)
    weight = torch.empty(b, n_samples, dtype=torch.float64)
    for i in range(b):
        positions = resp[i].nonzero().squeeze(-1)
        if positions.numel() == 0:
            raise ValueError(f"row {i} has an empty response: nothing to mask or score")
        row_masked, weight[i] = _draw_row(
            positions.numel(), n_samples, estimator, stratified, row_generators[i], groups
        )
        masked[i][:, positions] = row_masked
    return MaskDraw(masked.to(response_mask.device), weight.to(response_mask.device))


def noise(input_ids: torch.Tensor, masked: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """The forward process: replace masked positions by the mask token. Shapes match."""
    return torch.where(masked, torch.as_tensor(mask_token_id, device=input_ids.device), input_ids)
