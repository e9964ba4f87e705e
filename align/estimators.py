"""Likelihood and DPO-margin estimators for masked-diffusion LMs (docs/method.md §2-3).

Public, model-agnostic API (a stable contract; researchers call it directly):

- :func:`log_likelihood` — ``[b, n]`` unbiased single-sample estimates of
  ``log p(response | context)``;
- :func:`dpo_margin` — ``[b, n]`` estimates of the DPO margin Δ, with the two
  coupling axes (policy↔reference, chosen↔rejected) selectable on their own;
- :func:`enumerate_bound` — the exact masked-diffusion bound by enumerating
  every mask (small L only), the value every estimator's mean converges to.

Both estimators are thin wrappers over the production path,
:func:`dpo_terms` / :func:`estimate_from_draw`, which talks to a model through
a *token scorer* instead of full logits:

    scorer(noised_ids [N, T], attention_mask [N, T] | None,
           targets [N, T], score_mask [N, T] bool) -> log p(target) [N, T]

(zero where ``score_mask`` is False). The model layer provides a scorer that
runs the LM head only at masked positions; :func:`scorer_from_logits` adapts a
plain ``logits_fn``. Same generator state in, same numbers out, either way.

Try it: ``pytest tests/test_estimators.py``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from align.masking import Generators, MaskDraw, check_estimator, draw_masks, noise

LogitsFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
TokenScorer = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor], torch.Tensor]


def scorer_from_logits(logits_fn: LogitsFn) -> TokenScorer:
    """Adapt ``logits_fn(noised [N, T], attention_mask) -> logits [N, T, V]`` to a token scorer."""

    def score(noised, attention_mask, targets, score_mask):
        logits = logits_fn(noised, attention_mask)  # [N, T, V]
        logits = logits.to(
            torch.promote_types(logits.dtype, torch.float32)
        )  # at least fp32: bf16 log_softmax loses nats
        logp = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [N, T]
        return torch.where(score_mask, logp, torch.zeros((), dtype=logp.dtype, device=logp.device))

    return score


def _response_positions(response_mask: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    response_mask = response_mask.bool()
    if attention_mask is not None:
        response_mask = response_mask & attention_mask.bool()
    return response_mask


def _expand(x: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """[b, T] -> [b*n, T], sample-major within a row."""
    return None if x is None else x.repeat_interleave(n, dim=0)


def estimate_from_draw(
    scorer: TokenScorer,
    input_ids: torch.Tensor,
    draw: MaskDraw,
    *,
    mask_token_id: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply one draw to ``input_ids`` [b, T]: returns ``[b, n]`` estimates of log p(response)."""
    b, n, T = draw.masked.shape
    masked = draw.masked.reshape(b * n, T)  # [b*n, T]
    targets = _expand(input_ids, n)  # [b*n, T]
    token_logp = scorer(noise(targets, masked, mask_token_id), _expand(attention_mask, n), targets, masked)
    summed = token_logp.reshape(b, n, T).sum(-1)  # [b, n]  Σ_{i∈M} log p(y^i | noised)
    return draw.weight.to(summed.dtype) * summed


def log_likelihood(
    logits_fn: LogitsFn,
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    n_samples: int,
    estimator: str = "time_free",
    mask_token_id: int,
    generator: Generators = None,
    attention_mask: torch.Tensor | None = None,
    stratified: bool = True,
) -> torch.Tensor:
    """Monte Carlo estimates of ``log p(response | context)``: ``[b, n_samples]``.

    input_ids [b, T]; response_mask [b, T] bool marks the response, the only
    positions ever masked or scored; every other position with attention_mask
    1 is visible context. ``estimator``: ``time_free`` (draw m w.p. 1/(m·H_L),
    weight H_L), ``any_order`` (m uniform, weight L/m) or ``time_integral``
    (λ ~ U(0,1), independent masking, weight 1/λ); docs/method.md §2. Column j is
    one unbiased estimate; ``stratified`` spreads m (or λ) of a row's samples
    over the strata of its CDF. ``logits_fn(noised [N, T], attention_mask)``
    returns logits aligned with positions (position i predicts token i).
    """
    response_mask = _response_positions(response_mask, attention_mask)
    draw = draw_masks(response_mask, n_samples, estimator, generator, stratified)
    return estimate_from_draw(
        scorer_from_logits(logits_fn), input_ids, draw, mask_token_id=mask_token_id, attention_mask=attention_mask
    )


@dataclass(frozen=True)
class MarginTerms:
    """The four log-likelihood estimates behind a DPO margin, each ``[b, n]``."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    reference_chosen: torch.Tensor
    reference_rejected: torch.Tensor

    @property
    def chosen_logratio(self) -> torch.Tensor:
        return self.policy_chosen - self.reference_chosen

    @property
    def rejected_logratio(self) -> torch.Tensor:
        return self.policy_rejected - self.reference_rejected

    @property
    def margin(self) -> torch.Tensor:
        """Δ = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)], per sample [b, n]."""
        return self.chosen_logratio - self.rejected_logratio


def draw_margin_masks(
    response_mask: torch.Tensor,
    *,
    n_samples: int,
    estimator: str,
    share_policy_reference: bool,
    share_chosen_rejected: bool,
    generator: Generators,
    stratified: bool,
    groups: int = 1,
) -> dict[str, MaskDraw]:
    """Draws for the four terms ``pc, rc, pr, rr`` (policy/reference × chosen/rejected).

    Shared axes reuse one draw (docs/method.md §3); independent draws are taken
    in the fixed order pc, rc, pr, rr so that a seed fixes every setting.
    ``groups``: stratified draws as that many independent stratified sets (``masking.draw_masks``).
    """

    def new() -> MaskDraw:
        return draw_masks(response_mask, n_samples, estimator, generator, stratified, groups)

    if share_policy_reference and share_chosen_rejected:  # coupled: one (m, M) for all four
        d = new()
        return {"pc": d, "rc": d, "pr": d, "rr": d}
    if share_policy_reference:  # one draw per response, shared by policy and reference
        dc, dr = new(), new()
        return {"pc": dc, "rc": dc, "pr": dr, "rr": dr}
    if share_chosen_rejected:  # one draw per model, shared by the two responses
        dp, dref = new(), new()
        return {"pc": dp, "rc": dref, "pr": dp, "rr": dref}
    return {"pc": new(), "rc": new(), "pr": new(), "rr": new()}  # decoupled


def move_draws(draws: dict[str, MaskDraw], device) -> dict[str, MaskDraw]:
    """The draws on ``device`` (a draw shared by several terms is moved once); asynchronous from pinned memory."""

    def move(t: torch.Tensor) -> torch.Tensor:
        if torch.device(device).type == "cuda" and t.device.type == "cpu":
            t = t.pin_memory()  # a pageable host->device copy would wait for the device's queue
        return t.to(device, non_blocking=True)

    moved = {}
    for d in draws.values():
        if id(d) not in moved:
            moved[id(d)] = MaskDraw(move(d.masked), move(d.weight))
    return {key: moved[id(d)] for key, d in draws.items()}


def _margin_draws(draws, response_mask, attention_mask, device, **settings) -> dict[str, MaskDraw]:
    """The four draws: made now from the generator(s), or the ones given (``draws=``) moved to ``device``."""
    if draws is not None:
        return move_draws(draws, device)
    return draw_margin_masks(_response_positions(response_mask, attention_mask), **settings)


def _score_pair(scorer, chosen_ids, rejected_ids, d_chosen, d_rejected, mask_token_id, attention_mask):
    """One scorer call over [chosen; rejected] (2·b·n rows): ([b, n], [b, n])."""
    b, n, T = d_chosen.masked.shape
    masked = torch.cat([d_chosen.masked, d_rejected.masked]).reshape(2 * b * n, T)
    targets = torch.cat([_expand(chosen_ids, n), _expand(rejected_ids, n)])  # [2bn, T]
    attn = None if attention_mask is None else _expand(attention_mask, n).repeat(2, 1)
    token_logp = scorer(noise(targets, masked, mask_token_id), attn, targets, masked)
    summed = token_logp.reshape(2, b, n, T).sum(-1)  # [2, b, n]
    weight = torch.stack([d_chosen.weight, d_rejected.weight]).to(summed.dtype)
    est = weight * summed
    return est[0], est[1]


def dpo_terms(
    policy_scorer: TokenScorer,
    reference_scorer: TokenScorer,
    chosen_ids: torch.Tensor,
    rejected_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    n_samples: int,
    estimator: str = "time_free",
    share_policy_reference: bool = True,
    share_chosen_rejected: bool = True,
    mask_token_id: int,
    generator: Generators = None,
    attention_mask: torch.Tensor | None = None,
    stratified: bool = True,
    reference_grad: bool = False,
    reference_terms: tuple[torch.Tensor, torch.Tensor] | None = None,
    draws: dict[str, MaskDraw] | None = None,
) -> MarginTerms:
    """Production path of :func:`dpo_margin`: the four ``[b, n]`` terms.

    The policy runs once on the 2·b·n noised chosen and rejected sequences
    (with grad); the reference runs once on its own 2·b·n sequences without
    grad (unless ``reference_grad``). With ``share_policy_reference`` both see
    the identical batch, so identical models give a margin of exactly 0.
    ``reference_terms``: the reference's (chosen, rejected) ``[b, n]`` computed
    beforehand for the same generators (:func:`dpo_reference_terms`); the
    reference is then not run (``reference_scorer`` may be None). The draws
    are made all the same, so the policy terms do not change.
    ``draws``: the four draws of :func:`draw_margin_masks`, made beforehand
    (the trainer draws on the host from host tensors, so the step never waits
    on the device for the response positions); moved to the ids' device.
    """
    check_estimator(estimator)
    if chosen_ids.shape != rejected_ids.shape or chosen_ids.shape != response_mask.shape:
        raise ValueError(
            "chosen_ids, rejected_ids and response_mask must share one [b, T] shape (EOS-extend the shorter "
            f"response); got {tuple(chosen_ids.shape)}, {tuple(rejected_ids.shape)}, {tuple(response_mask.shape)}"
        )
    d = _margin_draws(
        draws,
        response_mask,
        attention_mask,
        chosen_ids.device,
        n_samples=n_samples,
        estimator=estimator,
        share_policy_reference=share_policy_reference,
        share_chosen_rejected=share_chosen_rejected,
        generator=generator,
        stratified=stratified,
    )
    pc, pr = _score_pair(policy_scorer, chosen_ids, rejected_ids, d["pc"], d["pr"], mask_token_id, attention_mask)
    if reference_terms is not None:
        rc, rr = (t.to(device=pc.device, dtype=pc.dtype) for t in reference_terms)
        if rc.shape != pc.shape or rr.shape != pr.shape:
            raise ValueError(
                f"reference_terms have shapes {tuple(rc.shape)}, {tuple(rr.shape)}; expected {tuple(pc.shape)}"
            )
    else:
        with torch.set_grad_enabled(reference_grad and torch.is_grad_enabled()):
            rc, rr = _score_pair(
                reference_scorer, chosen_ids, rejected_ids, d["rc"], d["rr"], mask_token_id, attention_mask
            )
    return MarginTerms(policy_chosen=pc, policy_rejected=pr, reference_chosen=rc, reference_rejected=rr)


@torch.no_grad()
def dpo_reference_terms(
    reference_scorer: TokenScorer,
    chosen_ids: torch.Tensor,
    rejected_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    n_samples: int,
    estimator: str = "time_free",
    share_policy_reference: bool = True,
    share_chosen_rejected: bool = True,
    mask_token_id: int,
    generator: Generators = None,
    attention_mask: torch.Tensor | None = None,
    stratified: bool = True,
    draws: dict[str, MaskDraw] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's (chosen, rejected) terms ``[b, n]`` of :func:`dpo_terms` alone, without grad: the same
    draws from the same generators, so passing them back as ``reference_terms`` reproduces ``dpo_terms``."""
    check_estimator(estimator)
    d = _margin_draws(
        draws,
        response_mask,
        attention_mask,
        chosen_ids.device,
        n_samples=n_samples,
        estimator=estimator,
        share_policy_reference=share_policy_reference,
        share_chosen_rejected=share_chosen_rejected,
        generator=generator,
        stratified=stratified,
    )
    return _score_pair(reference_scorer, chosen_ids, rejected_ids, d["rc"], d["rr"], mask_token_id, attention_mask)


def dpo_margin(
    policy_fn: LogitsFn,
    reference_fn: LogitsFn,
    chosen_ids: torch.Tensor,
    rejected_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    n_samples: int,
    estimator: str = "time_free",
    share_policy_reference: bool = True,
    share_chosen_rejected: bool = True,
    mask_token_id: int,
    generator: Generators = None,
    attention_mask: torch.Tensor | None = None,
    stratified: bool = True,
) -> torch.Tensor:
    """Per-sample estimates of the DPO margin Δ (docs/method.md §3): ``[b, n_samples]``.

    chosen_ids, rejected_ids [b, T] at a common length, one shared
    response_mask [b, T]. ``share_policy_reference`` gives the policy and
    reference terms of a response the same masks (VRPO's antithetic
    sampling); ``share_chosen_rejected`` gives chosen and rejected the same
    masks (the coupled likelihood-ratio estimator, arXiv 2510.24088).
    (True, True) is ``coupled``; (False, False) is ``decoupled``.
    """
    return dpo_terms(
        scorer_from_logits(policy_fn),
        scorer_from_logits(reference_fn),
        chosen_ids,
        rejected_ids,
        response_mask,
        n_samples=n_samples,
        estimator=estimator,
        share_policy_reference=share_policy_reference,
        share_chosen_rejected=share_chosen_rejected,
        mask_token_id=mask_token_id,
        generator=generator,
        attention_mask=attention_mask,
        stratified=stratified,
        reference_grad=True,
    ).margin


@dataclass(frozen=True)
class SFTTerms:
    """Per-sequence results of the masked-diffusion SFT objective, each ``[b]``."""

    loss: torch.Tensor  # −(1/L)·mean_n(weight · Σ_masked log p): LLaDA's normalised SFT loss
    masked_token_nll: torch.Tensor  # unweighted mean −log p over the masked tokens of all n draws (a progress signal)
    masked_tokens: torch.Tensor  # how many tokens the n draws masked in all


def sft_terms(
    scorer: TokenScorer,
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    mask_token_id: int,
    generator: Generators = None,
    attention_mask: torch.Tensor | None = None,
    estimator: str = "time_integral",
    n_samples: int = 1,
    stratified: bool = True,
) -> SFTTerms:
    """The masked-diffusion SFT loss of LLaDA (arXiv 2502.09992, Eq. 5; docs/method.md §4), per sequence.

    The prompt stays visible; response tokens are masked at rate t ~ U(0, 1) and
    scored with weight 1/t; the sum is divided by the response length L (EOS
    padding included), as LLaDA's SFT code normalises by the answer length:

        loss = −(1/L) · (1/t) · Σ_{i masked} log p(y^i | x, noised y)

    Its expectation is −(1/L) times the masked-diffusion bound of
    :func:`enumerate_bound` (the ``time_integral`` estimator). LLaDA floors the
    masking rate at ε = 10⁻³; here t is exactly U(0, 1), so the expectation is
    the bound itself. ``estimator`` ``time_free`` / ``any_order`` give other
    unbiased draws of the same quantity, for ablation.
    """
    response_mask = _response_positions(response_mask, attention_mask)
    draw = draw_masks(response_mask, n_samples, estimator, generator, stratified)
    return sft_terms_from_draw(
        scorer, input_ids, response_mask, draw, mask_token_id=mask_token_id, attention_mask=attention_mask
    )


def sft_terms_from_draw(
    scorer: TokenScorer,
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    draw: MaskDraw,
    *,
    mask_token_id: int,
    attention_mask: torch.Tensor | None = None,
) -> SFTTerms:
    """:func:`sft_terms` for a given draw (weights 1/t for time_integral)."""
    response_mask = _response_positions(response_mask, attention_mask)
    b, n, T = draw.masked.shape
    masked = draw.masked.reshape(b * n, T)
    targets = _expand(input_ids, n)
    token_logp = scorer(noise(targets, masked, mask_token_id), _expand(attention_mask, n), targets, masked)
    summed = token_logp.float().reshape(b, n, T).sum(-1)  # [b, n]
    L = response_mask.sum(-1).to(summed.dtype)  # [b]
    loss = -(draw.weight.to(summed.dtype) * summed).mean(-1) / L
    count = draw.masked.sum((1, 2))  # [b]
    nll = -summed.sum(-1).detach() / count.clamp_min(1).to(summed.dtype)
    return SFTTerms(loss, nll, count)


@torch.no_grad()
def enumerate_bound(
    logits_fn: LogitsFn,
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    mask_token_id: int,
    attention_mask: torch.Tensor | None = None,
    max_len: int = 14,
) -> torch.Tensor:
    """The exact bound ``−E = −Σ_m (1/m)·E_{|M|=m}[S(M)]`` per row, by enumerating all masks: [b] float64.

    Every estimator's expectation (docs/method.md §2). Cost 2^L forward rows per
    row, so L is capped at ``max_len``.
    """
    response_mask = _response_positions(response_mask, attention_mask)
    scorer = scorer_from_logits(logits_fn)
    out = torch.empty(input_ids.shape[0], dtype=torch.float64, device=input_ids.device)
    for i in range(input_ids.shape[0]):
        positions = response_mask[i].nonzero().squeeze(-1).tolist()
        L = len(positions)
        if L == 0 or L > max_len:
            raise ValueError(f"row {i}: response length {L} outside 1..{max_len}")
        subsets = [s for m in range(1, L + 1) for s in itertools.combinations(positions, m)]
        masked = torch.zeros(len(subsets), input_ids.shape[1], dtype=torch.bool, device=input_ids.device)
        for k, s in enumerate(subsets):
            masked[k, list(s)] = True
        ids = input_ids[i].expand(len(subsets), -1)
        attn = None if attention_mask is None else attention_mask[i].expand(len(subsets), -1)
        logp = scorer(noise(ids, masked, mask_token_id), attn, ids, masked).sum(-1).double()  # [2^L - 1]
        m = masked.sum(-1).double()
        n_subsets = torch.tensor([math.comb(L, int(k)) for k in m.tolist()], dtype=torch.float64, device=m.device)
        out[i] = (logp / (m * n_subsets)).sum()
    return out
