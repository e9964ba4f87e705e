"""The masked-diffusion SFT objective (LLaDA, arXiv 2502.09992 Eq. 5; docs/method.md §6).

One micro-batch of prompt/response records: the prompt stays visible; each
sequence draws t ~ U(0, 1) from its own generator, seeded by (seed, example
id, epoch), masks each response token with probability t, and scores the
masked tokens with weight 1/t, normalised by the response length L (EOS
padding included) as LLaDA's SFT code does (``estimators.sft_terms``).

Logged: loss (the weighted objective, noisy step to step), masked_token_nll
(the unweighted mean −log p of the masked tokens: the curve to watch) and
masked_fraction.

    python -m align.train_sft recipe=tiny_chat_sft
"""

from __future__ import annotations

from align import estimators as E
from align.data import build_sft_dataset, collate_sft, example_generators
from align.masking import draw_masks
from align.objective import Objective


class SFTObjective(Objective):
    name, unit, needs_reference, uses_step_norm = "sft", "sequences", False, False
    stat_keys = ("loss", "masked_token_nll", "masked_fraction")
    shown = ("eval/loss", "eval/masked_token_nll")

    def __init__(self, cfg):
        self.cfg = cfg

    def describe(self) -> str:
        s = self.cfg.sft
        return f"SFT, masks {s.estimator} x{s.n_samples}"

    def describe_eval(self) -> str:
        s = self.cfg.sft
        return f"the SFT loss with masks {s.estimator} x{s.n_samples}, draws seeded by train.seed and the example id"

    def finish_eval(self, means: dict[str, float], count: int) -> dict[str, float]:
        return means

    def progress(self, metrics: dict) -> dict:
        return {"loss": f"{metrics['loss']:.4f}", "nll": f"{metrics['masked_token_nll']:.3f}"}

    def build_dataset(self, rows, source, tokenizer, spec, *, limit, indices=None):
        d = self.cfg.data
        return build_sft_dataset(
            rows,
            source,
            tokenizer,
            fmt=d.format,
            eos_token_id=spec.eos_token_id,
            max_prompt_length=d.max_prompt_length,
            max_response_length=d.max_response_length,
            over_long_prompt=d.over_long_prompt,
            on_bad_record=d.on_bad_record,
            limit=limit,
            indices=indices,
        )

    def collate(self, examples, spec) -> dict:
        d = self.cfg.data
        length = d.max_response_length if d.response_padding == "max_length" else None
        return collate_sft(examples, spec.pad_token_id, spec.eos_token_id, length)

    def batch_norm(self, examples) -> float:
        return 0.0  # each sequence is normalised by its own length (LLaDA): nothing spans the step

    def compute(self, trainer, batch: dict, epoch: int, norm: float):
        s = self.cfg.sft
        policy, _ = trainer.scorers(reference=False)
        host = batch["host"]  # drawn on the host from host tensors: no wait for the device
        draw = draw_masks(
            host["response_mask"].bool() & host["attention_mask"].bool(),
            s.n_samples,
            s.estimator,
            example_generators(self.cfg.train.seed, batch["ids"], epoch),
            s.stratified,
        )
        draw = E.move_draws({"d": draw}, batch["input_ids"].device)["d"]
        terms = E.sft_terms_from_draw(
            policy,
            batch["input_ids"],
            batch["response_mask"],
            draw,
            mask_token_id=trainer.spec.mask_token_id,
            attention_mask=batch["attention_mask"],
        )
        L = batch["response_mask"].sum(-1).float()  # [b]
        stats = {
            "loss": terms.loss.detach(),
            "masked_token_nll": terms.masked_token_nll,
            "masked_fraction": terms.masked_tokens.float() / (L * s.n_samples),
        }
        tokens = s.n_samples * batch["tokens"]
        return terms.loss.mean(), {k: v.float() for k, v in stats.items()}, tokens
