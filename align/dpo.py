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

    python -m align.train_dpo recipe=demo
"""

from __future__ import annotations

import dataclasses

import torch

from align import estimators as E
from align.data import build_dataset, collate, example_generators
from align.losses import preference_loss, rpo_nll


class DPOObjective:
    name, unit, needs_reference = "dpo", "pairs", True
    stat_keys = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                 "logps/policy_chosen", "logps/policy_rejected", "logps/reference_chosen", "logps/reference_rejected",
                 "margin/sample_variance")
    shown = ("eval/loss", "eval/rewards/accuracies", "eval/rewards/margins", "eval/margin/sample_variance")

    def __init__(self, cfg):
        self.cfg = cfg
        self.uses_step_norm = cfg.loss.rpo_alpha is not None  # only the RPO term spans the optimizer step

    def describe(self) -> str:
        est = self.cfg.estimator
        return (f"estimator {est.estimator} x{est.n_samples}, share policy/reference {est.share_policy_reference}, "
                f"chosen/rejected {est.share_chosen_rejected}")

    def progress(self, metrics: dict) -> dict:
        return {"loss": f"{metrics['loss']:.4f}", "acc": f"{metrics['rewards/accuracies']:.2f}"}

    def build_dataset(self, rows, source, tokenizer, spec, *, limit, indices=None):
        d = self.cfg.data
        return build_dataset(rows, source, tokenizer, fmt=d.format, preference=d.preference,
                             eos_token_id=spec.eos_token_id, max_prompt_length=d.max_prompt_length,
                             max_response_length=d.max_response_length, over_long_prompt=d.over_long_prompt,
                             on_bad_record=d.on_bad_record, limit=limit, indices=indices)

    def collate(self, examples, spec) -> dict:
        return collate(examples, spec.pad_token_id)

    def batch_norm(self, examples) -> float:
        """Pairs per chosen-response token over ``examples``: makes the RPO term token-weighted (losses.rpo_nll)."""
        return len(examples) / sum(len(e.chosen_ids) for e in examples)

    def _draw_settings(self, trainer, batch: dict, epoch: int) -> dict:
        """dpo_terms' settings, with the four draws made on the host from the host copy of the batch: drawing
        from device tensors would wait for the device (the response positions are read on the host)."""
        est = self.cfg.estimator
        host = batch["host"]
        draws = E.draw_margin_masks(host["response_mask"].bool() & host["attention_mask"].bool(),
                                    n_samples=est.n_samples, estimator=est.estimator,
                                    share_policy_reference=est.share_policy_reference,
                                    share_chosen_rejected=est.share_chosen_rejected,
                                    generator=example_generators(self.cfg.train.seed, batch["ids"], epoch),
                                    stratified=est.stratified)
        return dict(n_samples=est.n_samples, estimator=est.estimator, share_policy_reference=est.share_policy_reference,
                    share_chosen_rejected=est.share_chosen_rejected, mask_token_id=trainer.spec.mask_token_id,
                    attention_mask=batch["attention_mask"], stratified=est.stratified, draws=draws)

    def compute(self, trainer, batch: dict, epoch: int, pairs_per_token: float):
        cfg = self.cfg
        cached = trainer.reference_cache.get(epoch, batch["ids"]) if trainer.reference_cache is not None else None
        policy, reference = trainer.scorers(reference=cached is None)
        terms = E.dpo_terms(policy, reference, batch["chosen_ids"], batch["rejected_ids"], batch["response_mask"],
                            reference_terms=cached, **self._draw_settings(trainer, batch, epoch))
        margin = terms.margin.mean(-1)  # [b]  average over samples, then the loss (docs/method.md §5)
        lengths = (batch["response_mask"] & batch["attention_mask"].bool()).sum(-1)  # [b]  common L per pair
        losses = preference_loss(margin, loss_type=cfg.loss.loss_type, beta=cfg.loss.beta,
                                 label_smoothing=cfg.loss.label_smoothing, response_lengths=lengths)
        if cfg.loss.rpo_alpha is not None:
            losses = losses + cfg.loss.rpo_alpha * rpo_nll(terms.policy_chosen, pairs_per_token)
        beta = cfg.loss.beta
        with torch.no_grad():
            chosen_r = beta * terms.chosen_logratio.mean(-1).detach()
            rejected_r = beta * terms.rejected_logratio.mean(-1).detach()
            n = terms.margin.shape[-1]
            stats = {
                "loss": losses.detach(),
                "rewards/chosen": chosen_r, "rewards/rejected": rejected_r,
                # ties (e.g. every pair at step 0 of LoRA) count ½: chance level, not "wrong" as in TRL
                "rewards/accuracies": (chosen_r > rejected_r).float() + 0.5 * (chosen_r == rejected_r).float(),
                "rewards/margins": chosen_r - rejected_r,
                "logps/policy_chosen": terms.policy_chosen.mean(-1).detach(),
                "logps/policy_rejected": terms.policy_rejected.mean(-1).detach(),
                "logps/reference_chosen": terms.reference_chosen.mean(-1),
                "logps/reference_rejected": terms.reference_rejected.mean(-1),
                "margin/sample_variance": terms.margin.detach().var(-1) if n > 1 else torch.zeros_like(margin),
            }
        tokens = 2 * n * batch["tokens"]
        return losses.mean(), {k: v.float() for k, v in stats.items()}, tokens

    # ------------------------------------------------------------ train.precompute_ref_log_probs
    def cache_key(self) -> dict:
        """What the reference terms of an (example, epoch) depend on besides the example and epoch."""
        c = self.cfg
        return {"model": c.model.name_or_path, "dtype": c.model.dtype, "lora": c.lora.enabled, "seed": c.train.seed,
                "estimator": dataclasses.asdict(c.estimator), "disable_dropout": c.train.disable_dropout,
                "data": {k: getattr(c.data, k) for k in ("dataset", "format", "preference", "max_prompt_length",
                                                          "max_response_length", "eval_dataset", "eval_fraction")}}

    @torch.no_grad()
    def reference_terms(self, trainer, examples: list, epoch: int, batch_size: int) -> dict[int, tuple]:
        """{example id: (reference chosen [n], rejected [n])} for ``examples`` at ``epoch``, in no-grad batches."""
        _, reference = trainer.scorers()
        out = {}
        for s in range(0, len(examples), batch_size):
            batch = trainer.to_device(self.collate(examples[s : s + batch_size], trainer.spec))
            with trainer.adapter_compute():
                rc, rr = E.dpo_reference_terms(reference, batch["chosen_ids"], batch["rejected_ids"],
                                               batch["response_mask"], **self._draw_settings(trainer, batch, epoch))
            for i, example_id in enumerate(batch["ids"].tolist()):
                out[example_id] = (rc[i].float().cpu(), rr[i].float().cpu())
        return out


def DPOTrainer(cfg):
    """The training loop with the DPO objective."""
    from align.trainer import Trainer

    return Trainer(cfg, DPOObjective(cfg))
