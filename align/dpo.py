"""The DPO objective for masked-diffusion LMs (docs/method.md §3, §5).

One micro-batch of preference pairs:

1. pairs EOS-extended to a common L per pair (``align.data``);
2. per pair, a generator seeded by (seed, example id, epoch);
3. ``estimators.dpo_terms``: policy forward with grad on the 2·b·n noised
   sequences, log-probs only at masked positions; reference forward without
   grad on the same (coupled) or its own (decoupled) noised sequences, with
   the LoRA adapter disabled or on the frozen copy (full fine-tuning);
4. Δ̂ = mean over samples; the preference loss (``align.losses``).

Logged (mean over pairs): loss, rewards/{chosen,rejected,accuracies,margins},
logps/{policy,reference}_{chosen,rejected}, and margin/sample_variance, the
per-pair variance of Δ over its n samples: the estimator's own noise.

Held-out pairs are scored by the evaluator of ``cfg.eval``, never by the
training estimator: its own estimator, n and sharing, with draws seeded by
(eval.seed, example id), so every run and seed is scored on the same masks.
Evaluation adds dpo_loss (the preference loss without the RPO term), margin
and logratio/{chosen,rejected} in nats (β-free), and for every metric its
Monte Carlo standard error ``<metric>/mc_se`` (``align.stats``).

    python -m align.train_dpo recipe=demo
"""

from __future__ import annotations

import dataclasses

import torch

from align import estimators as E
from align import stats as S
from align.checkpoints import flat_settings
from align.config import keys_with
from align.data import EVAL_EPOCH, build_dataset, collate, example_generators
from align.losses import preference_loss, rpo_nll
from align.objective import Objective
from align.trainer import Trainer


class DPOObjective(Objective):
    name, unit, needs_reference = "dpo", "pairs", True
    stat_keys = (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/policy_chosen",
        "logps/policy_rejected",
        "logps/reference_chosen",
        "logps/reference_rejected",
        "margin/sample_variance",
    )
    eval_keys = ("dpo_loss", "margin", "logratio/chosen", "logratio/rejected")  # evaluation adds these
    shown = ("eval/dpo_loss", "eval/rewards/accuracies", "eval/margin", "eval/margin/mc_se")
    per_example_keys = (
        "margin",
        "margin/mc_var",
        "logratio/chosen",
        "logratio/rejected",
        "rewards/accuracies",
        "dpo_loss",
    )  # written per held-out pair at every evaluation (eval_examples.jsonl)

    def __init__(self, cfg):
        self.cfg = cfg
        self.uses_step_norm = cfg.loss.rpo_alpha is not None  # only the RPO term spans the optimizer step

    def describe(self) -> str:
        return "training estimator " + describe_estimator(self.cfg.estimator)

    def describe_eval(self) -> str:
        """The evaluator in words, as the logs and ablation summaries name it."""
        return f"{describe_estimator(self.cfg.eval)}, draws seeded by eval.seed={self.cfg.eval.seed} and the example id"

    def settings(self, epoch: int):
        """(estimator settings, seed) of the draws at ``epoch``: the evaluator's for held-out pairs."""
        if epoch == EVAL_EPOCH:
            return self.cfg.eval, self.cfg.eval.seed
        return self.cfg.estimator, self.cfg.train.seed

    def progress(self, metrics: dict) -> dict:
        return {"loss": f"{metrics['loss']:.4f}", "acc": f"{metrics['rewards/accuracies']:.2f}"}

    def build_dataset(self, rows, source, tokenizer, spec, *, limit, indices=None):
        d = self.cfg.data
        return build_dataset(
            rows,
            source,
            tokenizer,
            fmt=d.format,
            preference=d.preference,
            eos_token_id=spec.eos_token_id,
            max_prompt_length=d.max_prompt_length,
            max_response_length=d.max_response_length,
            over_long_prompt=d.over_long_prompt,
            on_bad_record=d.on_bad_record,
            limit=limit,
            indices=indices,
        )

    def collate(self, examples, spec) -> dict:
        return collate(examples, spec.pad_token_id)

    def batch_norm(self, examples) -> float:
        """Pairs per chosen-response token over ``examples``: makes the RPO term token-weighted (losses.rpo_nll)."""
        return len(examples) / sum(len(e.chosen_ids) for e in examples)

    def _draw_settings(self, trainer, batch: dict, epoch: int) -> dict:
        """dpo_terms' settings, with the four draws made on the host from the host copy of the batch: drawing
        from device tensors would wait for the device (the response positions are read on the host)."""
        est, seed = self.settings(epoch)
        host = batch["host"]
        draws = E.draw_margin_masks(
            host["response_mask"].bool() & host["attention_mask"].bool(),
            n_samples=est.n_samples,
            estimator=est.estimator,
            share_policy_reference=est.share_policy_reference,
            share_chosen_rejected=est.share_chosen_rejected,
            generator=example_generators(seed, batch["ids"], epoch),
            stratified=est.stratified,
            groups=mc_groups(est),
        )
        return dict(
            n_samples=est.n_samples,
            estimator=est.estimator,
            share_policy_reference=est.share_policy_reference,
            share_chosen_rejected=est.share_chosen_rejected,
            mask_token_id=trainer.spec.mask_token_id,
            attention_mask=batch["attention_mask"],
            stratified=est.stratified,
            draws=draws,
        )

    def compute(self, trainer, batch: dict, epoch: int, pairs_per_token: float):
        """(mean loss over the micro-batch's pairs, per-pair stats [b], policy tokens)."""
        losses, stats, tokens = self.pair_losses(trainer, batch, epoch, pairs_per_token)
        return losses.mean(), stats, tokens

    def pair_losses(self, trainer, batch: dict, epoch: int, pairs_per_token: float):
        """(loss of each pair [b], per-pair stats [b], policy tokens) of a collated batch of pairs."""
        cfg = self.cfg
        cached = trainer.cached_reference(epoch, batch["ids"])
        policy, reference = trainer.scorers(reference=cached is None)
        terms = E.dpo_terms(
            policy,
            reference,
            batch["chosen_ids"],
            batch["rejected_ids"],
            batch["response_mask"],
            reference_terms=cached,
            **self._draw_settings(trainer, batch, epoch),
        )
        lengths = (batch["response_mask"] & batch["attention_mask"].bool()).sum(-1)  # [b]  common L per pair

        def preference(margin):  # [b] mean margin over samples -> [b] loss (docs/method.md §5)
            return preference_loss(
                margin,
                loss_type=cfg.loss.loss_type,
                beta=cfg.loss.beta,
                label_smoothing=cfg.loss.label_smoothing,
                response_lengths=lengths,
            )

        def objective(margin, policy_chosen):  # the training loss of a pair from its mean estimates [b]
            loss = preference(margin)
            if cfg.loss.rpo_alpha is not None:
                loss = loss + cfg.loss.rpo_alpha * rpo_nll(policy_chosen.unsqueeze(-1), pairs_per_token)
            return loss

        losses = objective(terms.margin.mean(-1), terms.policy_chosen.mean(-1))
        beta = cfg.loss.beta
        with torch.no_grad():
            chosen_r = beta * terms.chosen_logratio.mean(-1).detach()
            rejected_r = beta * terms.rejected_logratio.mean(-1).detach()
            n = terms.margin.shape[-1]
            stats = {
                "loss": losses.detach(),
                "rewards/chosen": chosen_r,
                "rewards/rejected": rejected_r,
                # ties (e.g. every pair at step 0 of LoRA) count ½: chance level, not "wrong" as in TRL
                "rewards/accuracies": (chosen_r > rejected_r).float() + 0.5 * (chosen_r == rejected_r).float(),
                "rewards/margins": chosen_r - rejected_r,
                "logps/policy_chosen": terms.policy_chosen.mean(-1).detach(),
                "logps/policy_rejected": terms.policy_rejected.mean(-1).detach(),
                "logps/reference_chosen": terms.reference_chosen.mean(-1),
                "logps/reference_rejected": terms.reference_rejected.mean(-1),
                "margin/sample_variance": terms.margin.detach().var(-1) if n > 1 else torch.zeros_like(losses),
            }
            if epoch == EVAL_EPOCH:
                stats.update(self._eval_stats(terms, preference, objective))
        tokens = 2 * n * batch["tokens"]
        return losses, {k: v.float() for k, v in stats.items()}, tokens

    def _eval_stats(self, terms, preference, objective) -> dict:
        """Held-out extras [b]: the β-free margin and log-ratios (nats), the loss without RPO, and the Monte Carlo
        variance of every reported per-pair mean (``<key>/mc_var``; ``finish_eval`` turns them into standard
        errors of the means over pairs)."""
        beta, g = self.cfg.loss.beta, mc_groups(self.cfg.eval)
        lc, lr, margin = terms.chosen_logratio.detach(), terms.rejected_logratio.detach(), terms.margin.detach()
        pc = terms.policy_chosen.detach()
        out = {
            "dpo_loss": preference(margin.mean(-1)),
            "margin": margin.mean(-1),
            "logratio/chosen": lc.mean(-1),
            "logratio/rejected": lr.mean(-1),
        }
        mc = {
            "loss": S.delta_variance(objective, margin, pc, groups=g),
            "dpo_loss": S.delta_variance(preference, margin, groups=g),
        }
        # the accuracy gets no Monte Carlo SE (the plug-in Φ(mean/se) is biased: low near 0, high for |z| >= 2);
        # instead, the share of pairs another mask draw could flip: |mean margin| within 2 Monte Carlo SEs of 0
        margin_se = S.mean_variance(margin, groups=g).sqrt()
        out["rewards/sign_uncertain"] = (margin.mean(-1).abs() < 2 * margin_se).float()
        for key, samples, scale in (
            ("margin", margin, 1.0),
            ("logratio/chosen", lc, 1.0),
            ("logratio/rejected", lr, 1.0),
            ("rewards/margins", margin, beta),
            ("rewards/chosen", lc, beta),
            ("rewards/rejected", lr, beta),
            ("logps/policy_chosen", pc, 1.0),
            ("logps/policy_rejected", terms.policy_rejected.detach(), 1.0),
            ("logps/reference_chosen", terms.reference_chosen.detach(), 1.0),
            ("logps/reference_rejected", terms.reference_rejected.detach(), 1.0),
        ):
            mc[key] = scale**2 * S.mean_variance(samples, groups=g)
        out.update({f"{k}/mc_var": v for k, v in mc.items()})
        return out

    def finish_eval(self, means: dict[str, float], count: int) -> dict[str, float]:
        """Means over ``count`` held-out pairs -> reported metrics: ``<key>/mc_var`` becomes ``<key>/mc_se``."""
        out = {}
        for key, value in means.items():
            if key.endswith("/mc_var"):
                out[key.removesuffix("/mc_var") + "/mc_se"] = S.pooled_se(value, count)
            else:
                out[key] = value
        return out

    # ------------------------------------------------------------ train.precompute_ref_log_probs
    def cache_key(self) -> dict:
        """What the reference terms of an (example, epoch) depend on besides the example and epoch: every key whose
        field declares the ``reference`` role (``align.config.opt``), with its value."""
        values = flat_settings(dataclasses.asdict(self.cfg))
        return {key: values[key] for key in sorted(keys_with(self.cfg, "reference"))}

    @torch.no_grad()
    def reference_terms(self, trainer, examples: list, epoch: int, batch_size: int) -> dict[int, tuple]:
        """{example id: (reference chosen [n], rejected [n])} for ``examples`` at ``epoch``, in no-grad batches."""
        _, reference = trainer.scorers()
        out = {}
        for s in range(0, len(examples), batch_size):
            batch = trainer.to_device(self.collate(examples[s : s + batch_size], trainer.spec))
            with trainer.adapter_compute():
                rc, rr = E.dpo_reference_terms(
                    reference,
                    batch["chosen_ids"],
                    batch["rejected_ids"],
                    batch["response_mask"],
                    **self._draw_settings(trainer, batch, epoch),
                )
            for i, example_id in enumerate(batch["ids"].tolist()):
                out[example_id] = (rc[i].float().cpu(), rr[i].float().cpu())
        return out


def mc_groups(est) -> int:
    """Independent stratified groups of an estimator section's draws (the eval section's ``mc_groups``; 1 else)."""
    return getattr(est, "mc_groups", 1) if est.stratified else 1


def describe_estimator(est) -> str:
    """'coupled time_free x16 (stratified)': an estimator section (``estimator`` or ``eval``) in words."""
    shares = (est.share_policy_reference, est.share_chosen_rejected)
    sharing = {
        (True, True): "coupled",
        (False, False): "decoupled",
        (True, False): "policy/reference-shared",
        (False, True): "chosen/rejected-shared",
    }[shares]
    groups = mc_groups(est)
    strat = (f" (stratified, {groups} groups)" if groups > 1 else " (stratified)") if est.stratified else ""
    return f"{sharing} {est.estimator} x{est.n_samples}{strat}"


def dpo_trainer(cfg):
    """The training loop with the DPO objective."""
    return Trainer(cfg, DPOObjective(cfg))
