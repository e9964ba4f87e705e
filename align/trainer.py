"""The DPO training loop for masked-diffusion LMs, on accelerate (METHOD.md §5).

One optimizer step, for each of ``gradient_accumulation_steps`` micro-batches:

1. this rank's slice of the global micro-batch: pairs EOS-extended to a
   common L per pair (``align.data``);
2. per pair, a generator seeded by (seed, example id, epoch): the masks of a
   pair are the same whatever the world size, accumulation or resume;
3. ``estimators.dpo_terms``: policy forward with grad on the 2·b·n noised
   sequences, log-probs only at masked positions; reference forward without
   grad on the same (coupled) or its own (decoupled) noised sequences, with
   the LoRA adapter disabled or on the frozen copy (full fine-tuning);
4. Δ̂ = mean over samples; loss (``align.losses``); backward.

Logged every ``logging_steps`` (mean over the window, all ranks): loss,
rewards/{chosen,rejected,accuracies,margins}, logps/{policy,reference}_{chosen,rejected},
margin/sample_variance (the per-pair variance of Δ over its n samples),
grad_norm, learning_rate, tokens_per_second; the same ``eval/…`` metrics on
the held-out split every ``eval_steps``. Metrics also go to
``output_dir/metrics.jsonl``.

Checkpoints (``output_dir/checkpoint-N``) are written to ``checkpoint-N.tmp``
and renamed only when complete, so resume never sees a half-written one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from align import estimators as E
from align.config import Config, ConfigError, dump_config
from align.data import build_dataset, collate, holdout_split, is_local, load_records, rank_micro_batches
from align.losses import preference_loss, rpo_nll
from align.models import add_lora, load_model, save_published, spec_for, token_scorer
from align.models.tokenizer import load_tokenizer

log = logging.getLogger("align.trainer")
EVAL_EPOCH = -1  # eval draws are keyed to a fixed epoch: the same masks at every evaluation


def example_generators(seed: int, ids: torch.Tensor, epoch: int) -> list[torch.Generator]:
    """One generator per example, seeded by (seed, example id, epoch) through numpy's SeedSequence."""
    gens = []
    for i in ids.tolist():
        state = np.random.SeedSequence([seed, int(i), epoch + 1]).generate_state(2, dtype=np.uint32)
        gens.append(torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1))
    return gens


class DPOTrainer:
    def __init__(self, cfg: Config):
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs, set_seed

        self.cfg = cfg
        t = cfg.train
        self.out = Path(t.output_dir)
        log_with = None if t.report_to == "none" else t.report_to
        # Without cpu=True, accelerate on a GPU-less machine picks no backend under torchrun; but cpu=True
        # turns DeepSpeed off, so DeepSpeed on CPU (DS_ACCELERATOR=cpu) keeps cpu=False.
        # DeepSpeed on CPU also needs an explicit gloo backend, or accelerate sets the world size to 1.
        use_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        on_cpu = not torch.cuda.is_available()
        handlers = [InitProcessGroupKwargs(backend="gloo")] if on_cpu and use_deepspeed else []
        self.accelerator = Accelerator(gradient_accumulation_steps=t.gradient_accumulation_steps,
                                       mixed_precision=t.mixed_precision, log_with=log_with, project_dir=str(self.out),
                                       cpu=on_cpu and not use_deepspeed, kwargs_handlers=handlers)
        acc = self.accelerator
        self.world, self.rank = acc.num_processes, acc.process_index
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != self.world:
            raise RuntimeError(f"launcher started {launched} processes but accelerate sees a world of {self.world} "
                               f"({acc.distributed_type}); every rank would train on everything")
        set_seed(t.seed)
        self.deepspeed = acc.distributed_type.name == "DEEPSPEED"

        # ---- model, tokenizer, spec
        m = cfg.model
        self.tokenizer = load_tokenizer(m.tokenizer or m.name_or_path, trust_remote_code=m.trust_remote_code)
        def load():
            return load_model(m.name_or_path, dtype=m.dtype, attn_implementation=m.attn_implementation,
                              trust_remote_code=m.trust_remote_code)

        model = load()
        self.spec = spec_for(model)
        if m.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.reference = None
        if cfg.lora.enabled:
            model = add_lora(model, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                             target_modules=cfg.lora.target_modules)
        else:
            # a second load, not a deepcopy: under ZeRO-3 init the loaded parameters are already partitioned
            self.reference = load().requires_grad_(False).eval()
        if t.disable_dropout:
            disable_dropout(model)
        model.train()

        # ---- data
        self.train_data, self.eval_data = self._load_data()
        self.micro_global = t.per_device_train_batch_size * self.world
        self.micro_per_epoch = len(self.train_data) // self.micro_global
        if self.micro_per_epoch < t.gradient_accumulation_steps:
            raise ConfigError(f"{len(self.train_data)} training pairs fill fewer than one optimizer step of "
                              f"{self.micro_global * t.gradient_accumulation_steps} pairs")
        dropped = len(self.train_data) - self.micro_per_epoch * self.micro_global
        if dropped:
            acc.print(f"each epoch leaves out {dropped} pair(s) (a different random set every epoch) to fill "
                      f"whole global batches of {self.micro_global}")
        self.steps_per_epoch = self.micro_per_epoch / t.gradient_accumulation_steps  # may be fractional
        self.total_steps = (t.max_steps if t.max_steps > 0
                            else self.micro_per_epoch * t.num_train_epochs // t.gradient_accumulation_steps)

        # ---- optimizer, schedule, distribution
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
                                      weight_decay=t.weight_decay)
        from transformers import get_scheduler

        self.warmup_steps = math.ceil(t.warmup_ratio * self.total_steps)  # rounded up, as HF's Trainer does
        self.scheduler = get_scheduler(t.lr_scheduler_type if t.lr_scheduler_type != "constant" else "constant_with_warmup",
                                       optimizer, num_warmup_steps=self.warmup_steps,
                                       num_training_steps=self.total_steps)
        if self.deepspeed:  # we batch ourselves, so DeepSpeed cannot read the micro-batch size off a dataloader
            ds = acc.state.deepspeed_plugin.deepspeed_config
            ds["train_micro_batch_size_per_gpu"] = t.per_device_train_batch_size
            if ds.get("gradient_clipping") == "auto":
                ds["gradient_clipping"] = t.max_grad_norm
        self.model, self.optimizer = acc.prepare(model, optimizer)
        acc.register_for_checkpointing(self.scheduler)
        if self.reference is not None:
            self.reference = self._prepare_reference(self.reference)
        if cfg.lora.enabled:
            trainable = {n for n, p in unwrap_peft(self.model).named_parameters() if p.requires_grad}
            # checkpoints hold the adapter only; frozen base weights come from name_or_path on resume
            acc.register_save_state_pre_hook(_keep_only(trainable))
        self.global_step = 0

    # ------------------------------------------------------------ data
    def _load_data(self):
        """(train, held-out) encoded pairs. Held-out pairs are never training pairs (see README, Data)."""
        d, acc = self.cfg.data, self.accelerator
        common = dict(fmt=d.format, preference=d.preference, eos_token_id=self.spec.eos_token_id,
                      max_prompt_length=d.max_prompt_length, max_response_length=d.max_response_length,
                      over_long_prompt=d.over_long_prompt, on_bad_record=d.on_bad_record)
        if d.eval_split is not None and is_local(d.eval_dataset or d.dataset):
            raise ConfigError(f"data.eval_split={d.eval_split!r} names a split of a hub dataset, but the held-out data "
                              f"would come from the local file {d.eval_dataset or d.dataset}; set data.eval_split=null "
                              f"(a local file is held out by data.eval_fraction, or give data.eval_dataset=FILE)")
        rows, source = load_records(d.dataset, d.train_split, d.config_name)
        train_idx, eval_data = None, []
        if self.cfg.train.do_eval:
            if d.eval_dataset is not None:
                eval_rows, eval_source = load_records(d.eval_dataset, d.eval_split or "test", d.config_name)
                eval_data, report = build_dataset(eval_rows, eval_source, self.tokenizer, limit=d.max_eval_examples,
                                                  **common)
                acc.print(report.summary())
            elif is_local(d.dataset):
                if d.eval_fraction == 0:
                    raise ConfigError(f"{d.dataset} is a local file and no held-out data is named: give "
                                      f"data.eval_dataset=FILE, or data.eval_fraction>0 to hold out part of it, or "
                                      f"train.do_eval=false")
                train_idx, held = holdout_split(len(rows), d.eval_fraction, d.eval_split_seed)
                eval_data, report = build_dataset(rows, f"{source} (held out)", self.tokenizer,
                                                  limit=d.max_eval_examples, indices=held, **common)
                acc.print(f"holding out {len(held)} of {len(rows)} records of {source} for evaluation "
                          f"(data.eval_fraction={d.eval_fraction}, data.eval_split_seed={d.eval_split_seed}); "
                          f"their ids are in {self.out / 'eval_ids.json'}")
                acc.print(report.summary())
            else:
                eval_rows, eval_source = load_records(d.dataset, d.eval_split or "test", d.config_name)
                eval_data, report = build_dataset(eval_rows, eval_source, self.tokenizer, limit=d.max_eval_examples,
                                                  **common)
                acc.print(report.summary())
        train_data, report = build_dataset(rows, source, self.tokenizer, limit=d.max_train_examples,
                                           indices=train_idx, **common)
        acc.print(report.summary())
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "eval_ids.json").write_text(json.dumps({
                "source": d.eval_dataset or d.dataset, "held_out_of_training_file": train_idx is not None,
                "ids": [e.id for e in eval_data]}))
        return train_data, eval_data

    # ------------------------------------------------------------ reference
    def _prepare_reference(self, reference):
        if not self.deepspeed:
            return reference.to(self.accelerator.device)
        import deepspeed

        ds = self.accelerator.state.deepspeed_plugin.deepspeed_config
        config = {"train_micro_batch_size_per_gpu": ds.get("train_micro_batch_size_per_gpu", 1),
                  "zero_optimization": {"stage": ds["zero_optimization"]["stage"]},
                  "bf16": ds.get("bf16", {"enabled": False}), "fp16": ds.get("fp16", {"enabled": False})}
        if config["zero_optimization"]["stage"] != 3:
            config["zero_optimization"]["stage"] = 0  # only ZeRO-3 shards parameters; a frozen copy needs no more
        engine, *_ = deepspeed.initialize(model=reference, config=config)
        engine.eval()
        return engine

    def _scorers(self):
        policy = token_scorer(self.model)
        if self.reference is not None:
            return policy, token_scorer(self.reference)
        peft_model = unwrap_peft(self.model)

        def reference(*args):
            with peft_model.disable_adapter():
                return policy(*args)

        return policy, reference

    # ------------------------------------------------------------ one batch
    def compute(self, batch: dict, epoch: int, pairs_per_token: float = 0.0) -> tuple[torch.Tensor, dict, int]:
        """(mean loss of the micro-batch, per-pair stats, policy tokens) for one micro-batch.

        ``pairs_per_token``: pairs / chosen-response tokens of the whole optimizer step (all ranks and
        micro-batches); it makes the RPO term a token-weighted NLL over the global batch, as TRL's is.
        """
        cfg, dev = self.cfg, self.accelerator.device
        est = cfg.estimator
        batch = {k: v.to(dev) for k, v in batch.items()}
        policy, reference = self._scorers()
        terms = E.dpo_terms(
            policy, reference, batch["chosen_ids"], batch["rejected_ids"], batch["response_mask"],
            n_samples=est.n_samples, estimator=est.estimator, share_policy_reference=est.share_policy_reference,
            share_chosen_rejected=est.share_chosen_rejected, mask_token_id=self.spec.mask_token_id,
            generator=example_generators(cfg.train.seed, batch["ids"].cpu(), epoch),
            attention_mask=batch["attention_mask"], stratified=est.stratified,
        )
        margin = terms.margin.mean(-1)  # [b]  average over samples, then the loss (METHOD.md §5)
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
                "rewards/accuracies": (chosen_r > rejected_r).float() + 0.5 * (chosen_r == rejected_r).float(), "rewards/margins": chosen_r - rejected_r,
                "logps/policy_chosen": terms.policy_chosen.mean(-1).detach(),
                "logps/policy_rejected": terms.policy_rejected.mean(-1).detach(),
                "logps/reference_chosen": terms.reference_chosen.mean(-1),
                "logps/reference_rejected": terms.reference_rejected.mean(-1),
                "margin/sample_variance": terms.margin.detach().var(-1) if n > 1 else torch.zeros_like(margin),
            }
        tokens = 2 * n * int(batch["attention_mask"].sum())
        return losses.mean(), {k: v.float() for k, v in stats.items()}, tokens

    # ------------------------------------------------------------ metrics
    def _reduce(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        """Mean over all pairs on all ranks of per-pair stats (sums + counts reduced)."""
        keys = sorted(sums)
        vec = torch.stack([sums[k] for k in keys] + [torch.tensor(float(count), device=sums[keys[0]].device)])
        vec = self.accelerator.reduce(vec, reduction="sum")
        return {k: (vec[i] / vec[-1]).item() for i, k in enumerate(keys)}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if not self.eval_data:
            return {}
        self.model.eval()
        mine = self.eval_data[self.rank :: self.world]
        bs = self.cfg.train.per_device_eval_batch_size
        sums, count = {}, 0
        ppt = len(self.eval_data) / sum(len(e.chosen_ids) for e in self.eval_data)
        for s in range(0, len(mine), bs):
            _, stats, _ = self.compute(collate(mine[s : s + bs], self.spec.pad_token_id), EVAL_EPOCH, ppt)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0) + v.sum()
            count += len(stats["loss"])
        if count == 0:  # a rank with no eval pairs still joins the reduction
            sums = {k: torch.zeros((), device=self.accelerator.device) for k in _STAT_KEYS}
        self.model.train()
        return {f"eval/{k}": v for k, v in self._reduce(sums, count).items()}

    def _log(self, metrics: dict, step: int):
        self.accelerator.log(metrics, step=step)
        if self.accelerator.is_main_process:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")

    # ------------------------------------------------------------ checkpoints
    def checkpoints(self) -> list[Path]:
        done = [p for p in self.out.glob("checkpoint-*") if p.is_dir() and not p.name.endswith(".tmp")
                and (p / "trainer_state.json").exists()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def save_checkpoint(self):
        acc = self.accelerator
        final = self.out / f"checkpoint-{self.global_step}"
        tmp = self.out / f"checkpoint-{self.global_step}.tmp"
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        # LoRA under DeepSpeed: its engine saves the module itself (accelerate's save hooks do not run)
        extra = {"exclude_frozen_parameters": True} if self.deepspeed and self.cfg.lora.enabled else {}
        acc.save_state(str(tmp), **extra)
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / "trainer_state.json").write_text(json.dumps({"global_step": self.global_step}))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)  # atomic: a checkpoint without trainer_state.json or named .tmp is never resumed
            limit = self.cfg.train.save_total_limit
            if limit:
                for old in self.checkpoints()[:-limit]:
                    shutil.rmtree(old)
        acc.wait_for_everyone()

    def resume(self, which: str):
        path = Path(which)
        if which == "latest":
            found = self.checkpoints()
            if not found:
                self.accelerator.print(f"no complete checkpoint in {self.out}; starting from scratch")
                return
            path = found[-1]
        if not (path / "trainer_state.json").exists():
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no trainer_state.json)")
        # LoRA checkpoints hold the adapter only: the frozen base comes from name_or_path
        strict = {"load_module_strict": False} if self.deepspeed else {"strict": False}
        self.accelerator.load_state(str(path), **strict)
        self.global_step = json.loads((path / "trainer_state.json").read_text())["global_step"]
        if self.accelerator.is_main_process:
            _truncate_metrics(self.out / "metrics.jsonl", self.global_step)
        self.accelerator.wait_for_everyone()
        self.accelerator.print(f"resumed from {path} at step {self.global_step}")

    # ------------------------------------------------------------ loop
    def micro_batches(self, start_micro: int):
        """Yield (epoch, micro-step, this rank's examples) from global micro-step ``start_micro`` on."""
        t = self.cfg.train
        for epoch, micro, mine in rank_micro_batches(len(self.train_data), seed=t.seed, world=self.world,
                                                     rank=self.rank, per_device=t.per_device_train_batch_size,
                                                     start_micro=start_micro):
            yield epoch, micro, [self.train_data[i] for i in mine]

    def _step_pairs_per_token(self, first_micro: int) -> float:
        """P/N over the optimizer step that starts at ``first_micro``: all ranks, all accumulation micro-steps.

        The order is a pure function of the seed, so every rank computes it alone (no communication).
        """
        t = self.cfg.train
        pairs = tokens = 0
        for rank in range(self.world):
            gen = rank_micro_batches(len(self.train_data), seed=t.seed, world=self.world, rank=rank,
                                     per_device=t.per_device_train_batch_size, start_micro=first_micro)
            for _ in range(t.gradient_accumulation_steps):
                _, _, mine = next(gen)
                pairs += len(mine)
                tokens += sum(len(self.train_data[i].chosen_ids) for i in mine)
        return pairs / tokens

    def train(self):
        cfg, acc, t = self.cfg, self.accelerator, self.cfg.train
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.out / "config.yaml")
        if t.report_to != "none":
            acc.init_trackers(t.run_name or self.out.name, config=_flat(cfg.to_dict()))
        if t.resume_from_checkpoint:
            self.resume(t.resume_from_checkpoint)
        acc.print(f"{acc.distributed_type.name}, world size {self.world}; {len(self.train_data)} train / {len(self.eval_data)} eval pairs; "
                  f"{self.total_steps} steps of {self.micro_global * t.gradient_accumulation_steps} pairs; "
                  f"estimator {cfg.estimator.estimator} x{cfg.estimator.n_samples}, share policy/reference "
                  f"{cfg.estimator.share_policy_reference}, chosen/rejected {cfg.estimator.share_chosen_rejected}")
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.global_step, desc="dpo",
                   disable=not (t.progress_bar and acc.is_main_process))
        if self.global_step == 0 and t.eval_steps:
            metrics = self.evaluate()  # the untrained baseline: accuracy near chance, margins near 0
            if metrics:
                self._log(metrics, 0)
                acc.print("step 0: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in _SHOWN))
        params = [p for p in self.model.parameters() if p.requires_grad]
        sums, count, tokens, grad_norms, skipped = {}, 0, 0, [], 0
        train_seconds = 0.0  # time inside training steps only: evaluation and saving are not counted
        micro_consumed = self.global_step * t.gradient_accumulation_steps
        batches = self.micro_batches(micro_consumed)
        pairs_per_token = 0.0
        while self.global_step < self.total_steps:
            started = time.perf_counter()
            epoch, micro, examples = next(batches)
            if micro % t.gradient_accumulation_steps == 0:
                pairs_per_token = self._step_pairs_per_token(micro)
            with acc.accumulate(self.model):
                loss, stats, n_tokens = self.compute(collate(examples, self.spec.pad_token_id), epoch, pairs_per_token)
                acc.backward(loss)
                if acc.sync_gradients:
                    norm = acc.clip_grad_norm_(params, t.max_grad_norm if t.max_grad_norm > 0 else float("inf"))
                    if norm is not None:
                        grad_norms.append(float(norm))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            micro_consumed = micro + 1
            for k, v in stats.items():
                sums[k] = sums.get(k, 0) + v.sum()
            count += len(examples)
            tokens += n_tokens
            train_seconds += time.perf_counter() - started
            if not acc.sync_gradients:
                continue
            # an optimizer step skipped by the fp16 loss scaler leaves the schedule where it was (as HF's Trainer
            # does); global_step still counts the batches consumed, so resume and max_steps stay defined by data
            if acc.optimizer_step_was_skipped:
                skipped += 1
            else:
                self.scheduler.step()
            self.global_step += 1
            bar.update(1)
            last = self.global_step == self.total_steps
            if self.global_step % t.logging_steps == 0 or last:
                metrics = self._reduce(sums, count)
                total_tokens = self.accelerator.reduce(torch.tensor(float(tokens), device=acc.device), "sum").item()
                metrics.update({"grad_norm": sum(grad_norms) / max(len(grad_norms), 1),
                                "learning_rate": self.scheduler.get_last_lr()[0],
                                "tokens_per_second": total_tokens / train_seconds,
                                "optimizer_steps_skipped": skipped,
                                "epoch": micro_consumed / self.micro_per_epoch})
                self._log(metrics, self.global_step)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['rewards/accuracies']:.2f}")
                sums, count, tokens, grad_norms, skipped = {}, 0, 0, [], 0
                train_seconds = 0.0
            if (t.eval_steps and self.global_step % t.eval_steps == 0) or last:
                metrics = self.evaluate()
                if metrics:
                    self._log(metrics, self.global_step)
                    acc.print(f"step {self.global_step}: " + ", ".join(
                        f"{k} {v:.4g}" for k, v in metrics.items() if k in _SHOWN))
            if self.global_step % t.save_steps == 0 or last:
                self.save_checkpoint()
        bar.close()
        self.save_final()
        for tracker in acc.trackers:
            tracker.finish()

    def close(self):
        """Tear down the process group (after :meth:`train`; the entry point calls it)."""
        self.accelerator.end_training()

    def save_final(self):
        acc = self.accelerator
        acc.wait_for_everyone()
        state_dict = acc.get_state_dict(self.model)  # gathers ZeRO-3 shards
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            out = self.out / "final"
            if self.cfg.lora.enabled:
                model.save_pretrained(out / "adapter", state_dict=state_dict)
                if self.cfg.train.save_merged:
                    save_published(model, out, tokenizer=self.tokenizer, merged=True, adapter=False,
                                   source=self.cfg.model.name_or_path)
            else:
                save_published(model, out, tokenizer=self.tokenizer, source=self.cfg.model.name_or_path,
                               state_dict=state_dict)
            self.tokenizer.save_pretrained(out)
            acc.print(f"saved {out}")
        acc.wait_for_everyone()


_STAT_KEYS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
              "logps/policy_chosen", "logps/policy_rejected", "logps/reference_chosen", "logps/reference_rejected",
              "margin/sample_variance"]
_SHOWN = {"eval/loss", "eval/rewards/accuracies", "eval/rewards/margins", "eval/margin/sample_variance"}


def disable_dropout(model: torch.nn.Module) -> int:
    """Set p = 0 on every dropout module (LoRA's included), as TRL's ``disable_dropout_in_model``; returns the count."""
    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
            n += 1
    return n


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only the records up to ``step``: a resumed run logs what came after the checkpoint again."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def unwrap_peft(model):
    """The PeftModel inside a DDP/DeepSpeed wrapper."""
    while not hasattr(model, "disable_adapter"):
        model = model.module
    return model


def _keep_only(names: set[str]):
    """An accelerate save-state hook that keeps only ``names`` in each saved state dict."""

    def hook(models, weights, output_dir):
        for w in weights:
            kept = {k: v for k, v in w.items() if k.removeprefix("module.") in names}
            w.clear()
            w.update(kept)

    return hook


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
