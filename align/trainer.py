"""The training loop for masked-diffusion LMs, on accelerate, with the objective plugged in.

One loop serves DPO (``align.dpo``) and SFT (``align.sft``). An *objective*
owns what differs: how records are encoded and batched, whether a reference
model is needed, the loss and per-example statistics of a micro-batch, and the
names of its metrics. The loop owns the rest:

- accelerate / DeepSpeed set-up, model + tokenizer loading, LoRA or full
  fine-tuning, and the frozen reference copy when the objective needs one;
- data: loading, the held-out split, and every epoch a new seeded order cut
  into per-rank micro-batches (``align.data.rank_micro_batches``); mask draws
  come from per-example generators seeded by (seed, example id, epoch), so a
  micro-step is the same whatever the world size, accumulation or resume;
- optimizer, schedule, gradient accumulation and clipping; metrics averaged
  over the logging window and all ranks (``metrics.jsonl``, TensorBoard or
  wandb, a progress bar); evaluation at step 0, every ``eval_steps`` and at
  the end, with the behaviour check (``align.behaviour``) when configured;
- checkpoints written to ``checkpoint-N.tmp`` and renamed only when complete,
  verified and checked against the settings on resume (``align.checkpoints``),
  and the final save in the published layout (``align.export``).

Stopping on signals and non-finite steps: ``align.guards``; the precomputed
reference log-probs: ``align.reference``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import torch

from align.checkpoints import (GEOMETRY_KEYS, STATE, CheckpointError, changed_settings, check_output_dir, flat,
                               complete_checkpoints, latest_verified, remove_checkpoint, resume_position, trajectory_settings,
                               verify_checkpoint, write_manifest)
from align.config import ConfigError, dump_config, parse_cli
from align.data import EVAL_EPOCH, holdout_split, is_local, load_records, rank_micro_batches
from align.export import merged_state_dict, published_shapes, trainable_state_dict, verify_saved
from align.guards import PREEMPTED_EXIT_CODE, NonFiniteStep, Preempted, StopSignals
from align.models import (MaskedDiffusionLM, adapter_in_base_dtype, add_lora, check_local, checkpoint_blocks,
                          compile_blocks, load_model, resolve_dtype, save_published, set_scoring_memory, spec_for,
                          token_scorer, tokenizer_source)
from align.models.tokenizer import load_tokenizer
from align.optim import adamw
from align.reference import ReferenceCache

log = logging.getLogger("align.trainer")


_MIXED = {"bfloat16": "bf16", "float16": "fp16", "float32": "no"}


def requested_precision(cfg, use_deepspeed: bool) -> str | None:
    """What to ask accelerate for: ``train.mixed_precision`` when set, else None (= the launcher's setting).

    A DeepSpeed JSON config with ``"bf16": {"enabled": "auto"}`` resolves "auto" from accelerate's mixed
    precision, which an accelerate config next to a JSON file may not name; there it follows ``model.dtype``.
    """
    if cfg.train.mixed_precision is not None:
        return cfg.train.mixed_precision
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if use_deepspeed and path and os.path.exists(path):
        ds = json.loads(Path(path).read_text())
        if "auto" in (str(ds.get("bf16", {}).get("enabled")), str(ds.get("fp16", {}).get("enabled"))):
            return _MIXED[cfg.model.dtype]
    return None


def check_precision(dtype: str, mixed: str, deepspeed: bool) -> str:
    """Fail when ``model.dtype`` and the effective precision disagree; return a description for the log.

    Under DeepSpeed the engine holds the weights in its own precision, so it must be the checkpoint's:
    bf16 weights trained with bf16 off would silently train and save fp32 (and fp32 weights under bf16
    would be cast). Without DeepSpeed, autocast to bf16/fp16 over fp32 weights is fine; bf16 weights with
    fp16 autocast (or the reverse) is not.
    """
    expected = _MIXED[dtype]
    if deepspeed and mixed != expected:
        raise ConfigError(f"model.dtype={dtype} but DeepSpeed would train in {mixed!r} (mixed precision from the "
                          f"accelerate config or train.mixed_precision); make them agree: model.dtype=bfloat16 with "
                          f"mixed_precision bf16, or model.dtype=float32 with mixed_precision no")
    if not deepspeed and expected in ("bf16", "fp16") and mixed in ("bf16", "fp16") and mixed != expected:
        raise ConfigError(f"model.dtype={dtype} cannot run under {mixed} autocast; set train.mixed_precision=no")
    return f"weights {dtype}, mixed precision {mixed}" + (" (DeepSpeed)" if deepspeed else "")


class Trainer:
    """The training loop, with the objective (DPO, SFT) plugged in: see ``align.dpo`` and ``align.sft``."""

    def __init__(self, cfg, objective):
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, set_seed

        self.cfg, self.objective = cfg, objective
        t = cfg.train
        self.out = Path(t.output_dir)
        log_with = None if t.report_to == "none" else t.report_to
        # Without cpu=True, accelerate on a GPU-less machine picks no backend under torchrun; but cpu=True
        # turns DeepSpeed off, so DeepSpeed on CPU (DS_ACCELERATOR=cpu) keeps cpu=False.
        # DeepSpeed on CPU also needs an explicit gloo backend, or accelerate sets the world size to 1.
        use_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        on_cpu = not torch.cuda.is_available()
        handlers = [InitProcessGroupKwargs(backend="gloo")] if on_cpu and use_deepspeed else []
        # TensorBoard events as HF's Trainer writes them: output_dir/runs/<date>_<host>/, one folder per launch
        self.logging_dir = Path(t.logging_dir) if t.logging_dir else self.out / "runs" / run_folder_name()
        self.accelerator = Accelerator(gradient_accumulation_steps=t.gradient_accumulation_steps,
                                       mixed_precision=requested_precision(cfg, use_deepspeed), log_with=log_with,
                                       project_config=ProjectConfiguration(project_dir=str(self.out),
                                                                           logging_dir=str(self.logging_dir.parent)),
                                       cpu=on_cpu and not use_deepspeed, kwargs_handlers=handlers)
        acc = self.accelerator
        self.world, self.rank = acc.num_processes, acc.process_index
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != self.world:
            raise RuntimeError(f"launcher started {launched} processes but accelerate sees a world of {self.world} "
                               f"({acc.distributed_type}); every rank would train on everything")
        set_seed(t.seed)
        self.deepspeed = acc.distributed_type.name == "DEEPSPEED"
        # Start-up writes nothing until every check (config, output directory, checkpoint, data, model) has passed:
        # a failed start leaves the directory as it was. begin() (the start of train()) does the writing.
        self.start = self._plan_start()
        self.precision = check_precision(cfg.model.dtype, str(acc.mixed_precision), self.deepspeed)
        zero3 = self.deepspeed and acc.state.deepspeed_plugin.deepspeed_config["zero_optimization"]["stage"] == 3
        if cfg.lora.enabled and t.save_merged and zero3:
            # merging a deep copy of a partitioned model writes empty (0,)-shaped tensors
            raise ConfigError("train.save_merged=true is not supported under ZeRO-3: the base weights are partitioned "
                              "across ranks. Train without it (final/adapter is saved), then load the base with the "
                              "adapter on one machine and merge there (peft's merge_and_unload)")

        # ---- model, tokenizer, spec
        m = cfg.model
        check_local(m.name_or_path)  # a mistyped path: one line naming it, before transformers reads it as a hub id
        self.tokenizer = load_tokenizer(m.tokenizer or tokenizer_source(m.name_or_path),  # or a LoRA output's base
                                        trust_remote_code=m.trust_remote_code)
        if not cfg.lora.enabled and m.dtype != "float32" and not self.deepspeed:
            # plain AdamW on bf16/fp16 weights keeps its moments in that dtype and rounds small updates away
            # (at lr 5e-7 nearly every weight stays unchanged); DeepSpeed keeps fp32 master weights instead
            raise ConfigError(f"full fine-tuning (lora.enabled=false) with model.dtype={m.dtype} outside DeepSpeed "
                              f"would train {m.dtype} weights with {m.dtype} optimizer state, and small updates round "
                              f"away. Use model.dtype=float32 (add train.mixed_precision=bf16 for bf16 compute), or "
                              f"launch with a ZeRO config (recipes/accelerate/zero2.yaml, zero3.yaml), which keeps "
                              f"fp32 master weights")

        if m.compile and zero3:
            raise ConfigError("model.compile=true is not supported under ZeRO-3 (its parameter gathering hooks run "
                              "inside every block); use it with DDP, ZeRO-2 or one process")

        def load():
            model = load_model(m.name_or_path, dtype=m.dtype, attn_implementation=m.attn_implementation,
                               trust_remote_code=m.trust_remote_code)
            if isinstance(model, MaskedDiffusionLM):
                set_scoring_memory(model, forward_chunk=m.forward_chunk, head_chunk_mib=m.head_chunk_mib)
                if m.compile:
                    compile_blocks(model)
            else:
                asked = [f"model.{key}" for key, on in (("forward_chunk", m.forward_chunk > 0), ("compile", m.compile),
                                                          ("checkpoint_blocks", m.checkpoint_blocks is not None)) if on]
                if asked:
                    raise ConfigError(f"{', '.join(asked)}: only align's native models have these settings; "
                                      f"{m.name_or_path} loaded as {type(model).__name__}")
            return model

        model = load()
        self.spec = spec_for(model)
        if m.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            try:
                checkpoint_blocks(model, m.checkpoint_blocks)
            except ValueError as e:
                raise ConfigError(f"model.checkpoint_blocks: {e}") from None
        self.reference = None
        if cfg.lora.enabled:
            model = add_lora(model, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                             target_modules=cfg.lora.target_modules)
        elif objective.needs_reference:
            # a second load, not a deepcopy: under ZeRO-3 init the loaded parameters are already partitioned
            self.reference = load().requires_grad_(False).eval()
        if t.disable_dropout:
            disable_dropout(model)
        model.train()
        # LoRA over a bf16/fp16 base outside DeepSpeed: the adapter computes in the base's dtype (its fp32 weights
        # stay the master copy). DeepSpeed casts the whole module to its precision and keeps masters itself.
        self.adapter_dtype = (resolve_dtype(m.dtype) if cfg.lora.enabled and m.dtype != "float32" and not self.deepspeed
                              else None)

        # ---- data
        self.train_data, self.eval_data = self._load_data()
        self.micro_global = t.per_device_train_batch_size * self.world
        self.micro_per_epoch = len(self.train_data) // self.micro_global
        if self.micro_per_epoch < t.gradient_accumulation_steps:
            raise ConfigError(f"{len(self.train_data)} training examples fill fewer than one optimizer step of "
                              f"{self.micro_global * t.gradient_accumulation_steps}")
        dropped = len(self.train_data) - self.micro_per_epoch * self.micro_global
        if dropped:
            acc.print(f"each epoch leaves out {dropped} example(s) (a different random set every epoch) to fill "
                      f"whole global batches of {self.micro_global}")
        self.steps_per_epoch = self.micro_per_epoch / t.gradient_accumulation_steps  # may be fractional
        self.global_step, self.start_micro, self.policy_tokens = 0, 0, 0  # policy_tokens: all ranks, so far
        self.changes = {}  # resume: {key: (old, new)} of the settings named in train.resume_changes that changed
        if self.start["checkpoint"] is not None:
            self._check_resume(self.start["checkpoint"], self.start["state"])
        self.start_step = self.global_step
        # with epochs: the micro-steps left over the epochs, on from where this launch starts
        self.total_steps = (t.max_steps if t.max_steps > 0 else self.global_step + (
            self.micro_per_epoch * t.num_train_epochs - self.start_micro) // t.gradient_accumulation_steps)

        # ---- optimizer, schedule, distribution
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = adamw(params, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), weight_decay=t.weight_decay)
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
            if str(ds.get("bf16", {}).get("enabled", False)).lower() in ("true", "auto"):
                # ZeRO-1/2 in bf16 apply a NaN/inf gradient unless asked to check (fp32 and ZeRO-3 always check):
                # the non-finite guard needs the engine to skip such a step
                ds["bf16"].setdefault("check_grad_overflow", True)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        acc.register_for_checkpointing(self.scheduler)
        if self.reference is not None:
            self.reference = self._prepare_reference(self.reference)
        if cfg.lora.enabled:
            trainable = {n for n, p in unwrap_peft(self.model).named_parameters() if p.requires_grad}
            # checkpoints hold the adapter only; frozen base weights come from name_or_path on resume
            acc.register_save_state_pre_hook(_keep_only(trainable))
        if self.start["checkpoint"] is not None:
            self._load_checkpoint(self.start["checkpoint"])
        self.behaviour = None
        if cfg.behaviour.prompts:
            from align.behaviour import BehaviourEval

            self.behaviour = BehaviourEval(cfg.behaviour, self.tokenizer, self.spec, seed=t.seed)
        self.shown = set(self.objective.shown) | ({"eval/refusal_rate", "eval/over_refusal_rate"} if self.behaviour else set())
        self.reference_cache = None
        if t.precompute_ref_log_probs:
            if not objective.needs_reference:
                raise ConfigError(f"train.precompute_ref_log_probs=true: the {objective.name} objective has no "
                                  f"reference model")
            if not t.disable_dropout:
                raise ConfigError("train.precompute_ref_log_probs=true needs a reference that gives the same numbers "
                                  "ahead of time as in the step, but train.disable_dropout=false leaves dropout on "
                                  "(a random reference); set train.disable_dropout=true or compute it in the step")
        if objective.needs_reference:
            # the held-out draws are the same at every evaluation and the reference is frozen: its eval terms are
            # computed once (in eval mode, so dropout is off) and kept; training epochs use it only when precomputed
            self.reference_cache = ReferenceCache(self.out / "ref_logps", self.objective.cache_key(), self.rank,
                                                  self.world, persist=t.precompute_ref_log_probs)

    # ------------------------------------------------------------ data
    def _load_data(self):
        """(train, held-out) encoded examples. Held-out records are never training records (see README, Data)."""
        d, acc = self.cfg.data, self.accelerator

        def build(rows, source, *, limit, indices=None):
            data, report = self.objective.build_dataset(rows, source, self.tokenizer, self.spec, limit=limit,
                                                        indices=indices)
            acc.print(report.summary())
            return data

        if d.eval_split is not None and is_local(d.eval_dataset or d.dataset):
            raise ConfigError(f"data.eval_split={d.eval_split!r} names a split of a hub dataset, but the held-out data "
                              f"would come from the local file {d.eval_dataset or d.dataset}; set data.eval_split=null "
                              f"(a local file is held out by data.eval_fraction, or give data.eval_dataset=FILE)")
        rows, source = load_records(d.dataset, d.train_split, d.config_name)
        self.train_where = getattr(rows, "where", None)  # record id -> "path:LINE" for messages
        train_idx, eval_data = None, []
        if self.cfg.train.do_eval:
            if d.eval_dataset is not None or not is_local(d.dataset):  # a separate dataset, or the hub's eval split
                eval_rows, eval_source = load_records(d.eval_dataset or d.dataset, d.eval_split or "test",
                                                      d.config_name)
                eval_data = build(eval_rows, eval_source, limit=d.max_eval_examples)
            else:
                if d.eval_fraction == 0:
                    raise ConfigError(f"{d.dataset} is a local file and no held-out data is named: give "
                                      f"data.eval_dataset=FILE, or data.eval_fraction>0 to hold out part of it, or "
                                      f"train.do_eval=false")
                train_idx, held = holdout_split(len(rows), d.eval_fraction, d.eval_split_seed)
                acc.print(f"holding out {len(held)} of {len(rows)} records of {source} for evaluation "
                          f"(data.eval_fraction={d.eval_fraction}, data.eval_split_seed={d.eval_split_seed}); "
                          f"their ids are in {self.out / 'eval_ids.json'}")
                eval_data = build(rows, f"{source} (held out)", limit=d.max_eval_examples, indices=held)
        train_data = build(rows, source, limit=d.max_train_examples, indices=train_idx)
        if self.cfg.train.do_eval and not eval_data:
            held = (f"data.eval_fraction={d.eval_fraction} of the {len(rows)} records of {source} held out "
                    f"{len(held)}" if train_idx is not None else f"{d.eval_dataset or d.dataset} gave none")
            raise ConfigError(f"no held-out {self.objective.unit} to evaluate on ({held}; data.max_eval_examples="
                              f"{d.max_eval_examples}; the data report above counts the skipped ones): raise "
                              f"data.eval_fraction, give data.eval_dataset=FILE, or set train.do_eval=false")
        self.eval_ids = {"source": d.eval_dataset or d.dataset, "held_out_of_training_file": train_idx is not None,
                         "ids": [e.id for e in eval_data]}
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

    def cached_reference(self, epoch: int, ids: torch.Tensor):
        """The reference's precomputed (chosen, rejected) terms of examples ``ids`` at ``epoch``, or None when the
        step computes them: held-out terms always come from the cache, training terms only when precomputed."""
        if self.reference_cache is None or (epoch != EVAL_EPOCH and not self.cfg.train.precompute_ref_log_probs):
            return None
        return self.reference_cache.get(epoch, ids)

    def scorers(self, reference: bool = True):
        """(policy, reference) token scorers; the reference is the frozen copy or the policy with its adapter off."""
        policy = token_scorer(self.model)
        if not reference:
            return policy, None
        if self.reference is not None:
            return policy, token_scorer(self.reference)
        peft_model = unwrap_peft(self.model)

        def reference(*args):
            with peft_model.disable_adapter():
                return policy(*args)

        return policy, reference

    # ------------------------------------------------------------ one batch
    def adapter_compute(self):
        """Context for the policy's forward and backward (``models.adapter_in_base_dtype``)."""
        return adapter_in_base_dtype(self.model, self.adapter_dtype)

    def compute(self, batch: dict, epoch: int, norm: float = 0.0) -> tuple[torch.Tensor, dict, int]:
        """(mean loss of the micro-batch, per-example stats [b] each, tokens through the policy).

        ``norm``: the objective's normaliser for the whole optimizer step (``objective.batch_norm``).
        """
        return self.objective.compute(self, self.to_device(batch), epoch, norm)

    def to_device(self, batch: dict) -> dict:
        """The batch on the device, except what the host needs: example ids (they seed the mask generators) and
        the count of non-padding tokens (for throughput), so the step never waits on the device for them."""
        device = self.accelerator.device
        out = {k: v if k == "ids" else v.to(device, non_blocking=True) for k, v in batch.items()}
        out["tokens"] = int(batch["attention_mask"].sum())
        out["host"] = batch  # the host copy: mask draws read response positions from it
        return out

    def collate(self, examples: list) -> dict:
        return self.objective.collate(examples, self.spec)

    # ------------------------------------------------------------ metrics
    def _reduce(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        """Mean over all pairs on all ranks of per-pair stats (sums + counts reduced)."""
        keys = sorted(sums)
        vec = torch.stack([sums[k] for k in keys] + [torch.tensor(float(count), device=sums[keys[0]].device)])
        vec = self.accelerator.reduce(vec, reduction="sum")
        return {k: (vec[i] / vec[-1]).item() for i, k in enumerate(keys)}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out metrics (with the objective's evaluator), the behaviour check when due; per-example values are
        appended to ``eval_examples.jsonl``."""
        if not self.eval_data:
            return {}
        self.model.eval()
        # Every rank runs the same number of forwards: under ZeRO-3 each forward gathers parameters collectively,
        # so a rank with one batch more than the others would wait forever. Short shards are padded with copies
        # of an example that carry zero weight in the sums.
        mine = self.eval_data[self.rank :: self.world]
        real = len(mine)
        per_rank = math.ceil(len(self.eval_data) / self.world)
        mine = mine + [self.eval_data[0]] * (per_rank - real)
        bs = self.cfg.train.per_device_eval_batch_size
        if self.reference_cache is not None:  # eval draws are the same at every evaluation: computed once
            self.reference_cache.ensure(self, EVAL_EPOCH, mine, bs)
        sums: dict[str, torch.Tensor] = {}
        examples = []  # (example id, {key: value}) of this rank's real examples
        keys = getattr(self.objective, "per_example_keys", ())
        norm = self.objective.batch_norm(self.eval_data)
        for s in range(0, per_rank, bs):
            with self.adapter_compute():
                _, stats, _ = self.compute(self.collate(mine[s : s + bs]), EVAL_EPOCH, norm)
            weight = (torch.arange(s, s + len(stats["loss"]), device=self.accelerator.device) < real).float()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0) + (v * weight).sum()
            for i, example in enumerate(mine[s : s + bs]):
                if s + i < real and keys:
                    examples.append((example.id, {k: float(stats[k][i]) for k in keys if k in stats}))
        metrics = self.objective.finish_eval(self._reduce(sums, real), len(self.eval_data))
        metrics = {f"eval/{k}": v for k, v in metrics.items()}
        metrics["eval/examples"] = len(self.eval_data)
        metrics["policy_tokens"] = self.policy_tokens
        if keys:
            self._write_eval_examples(examples)
        if self.behaviour is not None and self.behaviour.due(self.global_step, self.global_step == self.total_steps):
            metrics.update(self.behaviour.evaluate(self, self.global_step))
        self.model.train()
        return metrics

    def _write_eval_examples(self, examples: list) -> None:
        """Per held-out example metrics of this evaluation, gathered from every rank, in ``eval_examples.jsonl``."""
        from accelerate.utils import gather_object

        everything = gather_object(examples) if self.world > 1 else examples
        if self.accelerator.is_main_process:
            with open(self.out / "eval_examples.jsonl", "a") as f:
                for example_id, values in sorted(everything, key=lambda x: x[0]):
                    f.write(json.dumps({"step": self.global_step, "id": example_id, **values}) + "\n")

    def _log(self, metrics: dict, step: int):
        self.accelerator.log(metrics, step=step)
        if self.accelerator.is_main_process:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")

    # ------------------------------------------------------------ checkpoints
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
            write_manifest(tmp)  # every rank's files, with their sizes: a resume verifies them
            (tmp / STATE).write_text(json.dumps({"global_step": self.global_step, "policy_tokens": self.policy_tokens,
                                                 "geometry": self._geometry(), "settings": self._settings(),
                                                 "config": self.cfg.to_dict()}, default=str))
            if final.exists():
                remove_checkpoint(final)
            tmp.rename(final)  # atomic: a checkpoint without trainer_state.json or named .tmp is never resumed
            limit = self.cfg.train.save_total_limit
            if limit:
                for old in complete_checkpoints(self.out)[:-limit]:
                    remove_checkpoint(old)
        acc.wait_for_everyone()

    def _geometry(self) -> dict:
        t = self.cfg.train
        return {"world": self.world, "per_device": t.per_device_train_batch_size,
                "accumulation": t.gradient_accumulation_steps, "micro_global": self.micro_global,
                "micro_per_epoch": self.micro_per_epoch, "examples": len(self.train_data),
                "micro_consumed": self.start_micro + (self.global_step - self.start_step) * t.gradient_accumulation_steps,
                "deepspeed": self.deepspeed}

    def _settings(self) -> dict:
        return trajectory_settings(self.cfg.to_dict(), str(self.accelerator.mixed_precision))

    RUN_FILES = ("metrics.jsonl", "config.yaml", "eval_ids.json", "behaviour.jsonl", "eval_examples.jsonl", "final", "runs",
                 "ref_logps", "resumes.jsonl")
    STEP_LOGS = ("metrics.jsonl", "eval_examples.jsonl", "behaviour.jsonl")  # records keyed by step, cut on resume

    def describe_launch(self) -> str:
        """The launch in words: 'single process (cpu)', 'DDP, 8 ranks (cuda)', 'DeepSpeed ZeRO-3, 16 ranks (cuda)'."""
        acc = self.accelerator
        kind = acc.distributed_type.name
        ranks = f", {self.world} ranks" if self.world > 1 else ""
        if self.deepspeed:
            stage = acc.state.deepspeed_plugin.deepspeed_config["zero_optimization"]["stage"]
            what = f"DeepSpeed ZeRO-{stage}" + (ranks or ", 1 rank")
        elif self.world == 1:
            what = "single process"
        else:
            what = ("DDP" if kind.startswith("MULTI_") else kind.replace("_", " ")) + ranks
        return f"{what} ({acc.device.type})"

    def _plan_start(self) -> dict:
        """How this launch starts, decided before anything is written: {"mode": new | overwrite | resume,
        "checkpoint": the verified checkpoint or None, "state": its trainer_state, "remove": run files an
        overwrite deletes, "notes": what to say}. Refuses (ConfigError / CheckpointError, one line) an output
        directory that is a file or not writable, a new run into another run's directory, ``latest`` in a
        directory that holds a run but no checkpoint that verifies, and a damaged explicit checkpoint."""
        t = self.cfg.train
        check_output_dir(self.out)
        found = []
        if self.out.is_dir():
            found = sorted(p.name for p in self.out.iterdir() if p.name in self.RUN_FILES
                           or re.fullmatch(r"checkpoint-\d+(\.tmp)?", p.name))
        plan = {"mode": "new", "checkpoint": None, "state": None, "remove": [], "notes": []}
        which = t.resume_from_checkpoint
        if which == "latest":
            path, state, passed = latest_verified(self.out) if self.out.is_dir() else (None, None, [])
            plan["notes"] += [f"passed over a damaged checkpoint: {reason}" for reason in passed]
            if path is not None:
                plan.update(mode="resume", checkpoint=path, state=state)
                return plan
            if passed:
                raise CheckpointError(f"train.resume_from_checkpoint=latest: no checkpoint in {self.out} verifies: "
                                      + "; ".join(passed))
            if not found:
                plan["notes"].append(f"no checkpoint in {self.out} yet; starting from scratch")
                return plan
            which = None  # a run's files but no checkpoint: as a new run into it (refused unless overwriting)
        elif which:
            path = Path(which)
            plan.update(mode="resume", checkpoint=path, state=verify_checkpoint(path))
            return plan
        if found:
            if not t.overwrite_output_dir:
                why = (" and no complete checkpoint to resume from" if t.resume_from_checkpoint == "latest" else "")
                raise ConfigError(f"train.output_dir={self.out} already holds a run ({', '.join(found[:4])}"
                                  f"{' ...' if len(found) > 4 else ''}){why}: continue it with "
                                  f"train.resume_from_checkpoint=latest, choose another train.output_dir, or set "
                                  f"train.overwrite_output_dir=true to replace it")
            plan.update(mode="overwrite", remove=found)
        return plan

    def _check_resume(self, path: Path, state: dict) -> None:
        """Refuse a resume whose trajectory settings differ from the checkpoint's (unless named in
        train.resume_changes), and find where in the data it continues; reads the checkpoint's records only."""
        t = self.cfg.train
        old = state.get("settings")
        if old is None:  # written by an align that did not record settings: its run's config.yaml, if any
            config = path.parent / "config.yaml"
            if config.exists():
                import yaml

                old = trajectory_settings(yaml.safe_load(config.read_text()) or {}, None)
                self.start["notes"].append(f"{path} records no settings (older align): compared with {config}")
            else:
                old = {}
                self.start["notes"].append(f"{path} records no settings (older align): not verified")
        changes = changed_settings(old, self._settings())
        geometry = state.get("geometry")
        if geometry is not None:
            was = (geometry["micro_global"] * geometry["accumulation"], geometry["micro_global"] * geometry["micro_per_epoch"])
            now = (self.micro_global * t.gradient_accumulation_steps, self.micro_global * self.micro_per_epoch)
            if was != now:  # accepted when train.resume_changes names a geometry key
                changes["global batch"] = (
                    f"{was[0]} {self.objective.unit}, {was[1]} an epoch (world {geometry['world']} x {geometry['per_device']} per "
                    f"device x {geometry['accumulation']} accumulation)",
                    f"{now[0]} {self.objective.unit}, {now[1]} an epoch (world {self.world} x {t.per_device_train_batch_size} x "
                    f"{t.gradient_accumulation_steps})")
            if geometry["world"] != self.world:
                if self.deepspeed or geometry["deepspeed"]:
                    raise CheckpointError(f"{path} was written by {geometry['world']} DeepSpeed ranks; it resumes on "
                                          f"{geometry['world']} (DeepSpeed keeps each rank's optimizer partition), "
                                          f"not {self.world}")
                self.start["notes"].append(f"world size {geometry['world']} -> {self.world}, same global batch and data "
                                           f"order")
        allowed = set(t.resume_changes or []) | ({"global batch"} if set(GEOMETRY_KEYS) & set(t.resume_changes or []) else set())
        refused = {k: v for k, v in changes.items() if k not in allowed}
        if refused:
            listed = "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in refused.items())
            raise ConfigError(f"resuming from {path} with settings that decide the trajectory changed: {listed}. Resume "
                              f"with the checkpoint's settings, or name the keys you mean to change in "
                              f"train.resume_changes=[key,...] (recorded in resumes.jsonl)")
        self.changes = changes
        try:
            self.start_micro, note = resume_position(state, micro_global=self.micro_global,
                                                     micro_per_epoch=self.micro_per_epoch,
                                                     accumulation=t.gradient_accumulation_steps)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        if note:
            self.start["notes"].append(note)
        self.global_step = int(state["global_step"])
        self.policy_tokens = int(state.get("policy_tokens", 0))

    def _load_checkpoint(self, path: Path) -> None:
        """The checkpoint's model, optimizer, schedule and random states, into memory (nothing is written)."""
        # LoRA checkpoints hold the adapter only: the frozen base comes from name_or_path
        strict = {"load_module_strict": False} if self.deepspeed else {"strict": False}
        try:
            self.accelerator.load_state(str(path), **strict)
        except Exception as e:  # e.g. an adapter of another shape named in train.resume_changes
            if os.environ.get("ALIGN_DEBUG"):
                raise
            raise CheckpointError(f"cannot load {path} into this model and optimizer: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}") from None
        named = set(self.changes)
        if named & {"train.learning_rate", "train.weight_decay", "train.adam_beta1", "train.adam_beta2"}:
            t = self.cfg.train  # the optimizer's saved hyperparameters give way to the ones named as changed
            for group in self.optimizer.param_groups:
                group.update(initial_lr=t.learning_rate, weight_decay=t.weight_decay, betas=(t.adam_beta1, t.adam_beta2))
            self.scheduler.base_lrs = [t.learning_rate] * len(self.scheduler.base_lrs)
            for group, fn in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
                group["lr"] = t.learning_rate * fn(self.scheduler.last_epoch)

    def begin(self) -> None:
        """Everything a start writes, after every check has passed: an overwrite's deletions, config.yaml (a new
        run's; a resume never rewrites it, and records itself in resumes.jsonl), eval_ids.json, the step logs cut
        back to the checkpoint's step, the trackers."""
        acc, t, plan = self.accelerator, self.cfg.train, self.start
        for note in plan["notes"]:
            acc.print(note)
        if acc.is_main_process:
            for name in plan["remove"]:
                path = self.out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            self.out.mkdir(parents=True, exist_ok=True)
            if plan["mode"] == "resume":
                path = plan["checkpoint"]
                if not (self.out / "config.yaml").exists():  # a checkpoint copied into a new directory
                    config = plan["state"].get("config") or self.cfg.to_dict()
                    import yaml

                    (self.out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
                with open(self.out / "resumes.jsonl", "a") as f:
                    f.write(json.dumps({"step": self.global_step, "checkpoint": str(path), "world": self.world,
                                        "changed": {k: list(v) for k, v in self.changes.items()}}, default=str) + "\n")
                for name in self.STEP_LOGS:
                    _truncate_metrics(self.out / name, self.global_step)
            else:
                dump_config(self.cfg, self.out / "config.yaml")
            if self.eval_data and not (plan["mode"] == "resume" and (self.out / "eval_ids.json").exists()):
                (self.out / "eval_ids.json").write_text(json.dumps(self.eval_ids))
        acc.wait_for_everyone()
        if plan["mode"] == "resume":
            changed = "".join(f"; {k} changed: {a} -> {b}" for k, (a, b) in self.changes.items())
            acc.print(f"resumed from {plan['checkpoint']} at step {self.global_step}{changed}")
        if t.report_to == "tensorboard":
            # no hyperparameters through accelerate: its add_hparams writes two more time-stamped folders; the
            # resolved config goes in as text (and is output_dir/config.yaml)
            acc.init_trackers(self.logging_dir.name)
            if acc.is_main_process:
                import yaml

                text = yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)
                acc.get_tracker("tensorboard", unwrap=True).add_text("config", f"```yaml\n{text}```")
        elif t.report_to != "none":
            scalars = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat(self.cfg.to_dict()).items()}
            acc.init_trackers(t.run_name or self.out.name, config=scalars,
                              init_kwargs={t.report_to: {"name": t.run_name}} if t.run_name else {})

    # ------------------------------------------------------------ loop
    def micro_batches(self, start_micro: int):
        """Yield (epoch, micro-step, this rank's examples) from global micro-step ``start_micro`` on."""
        t = self.cfg.train
        for epoch, micro, mine in rank_micro_batches(len(self.train_data), seed=t.seed, world=self.world,
                                                     rank=self.rank, per_device=t.per_device_train_batch_size,
                                                     start_micro=start_micro):
            yield epoch, micro, [self.train_data[i] for i in mine]

    def _precompute_reference(self, epoch: int, micro: int) -> None:
        """The reference terms of every example this rank meets in ``epoch`` from micro-step ``micro`` on."""
        t = self.cfg.train
        mine = []
        for e, _, idx in rank_micro_batches(len(self.train_data), seed=t.seed, world=self.world, rank=self.rank,
                                            per_device=t.per_device_train_batch_size, start_micro=micro):
            if e != epoch:
                break
            mine += [self.train_data[i] for i in idx]
        self.reference_cache.ensure(self, epoch, mine, t.per_device_eval_batch_size, drop_older=True)

    def _step_norm(self, first_micro: int) -> float:
        """The objective's normaliser over the optimizer step that starts at ``first_micro``.

        A step is every rank's micro-batches of all accumulation micro-steps. The order is a pure
        function of the seed, so every rank lists the whole step alone (no communication).
        """
        t = self.cfg.train
        examples = []
        for rank in range(self.world):
            gen = rank_micro_batches(len(self.train_data), seed=t.seed, world=self.world, rank=rank,
                                     per_device=t.per_device_train_batch_size, start_micro=first_micro)
            for _ in range(t.gradient_accumulation_steps):
                examples += [self.train_data[i] for i in next(gen)[2]]
        return self.objective.batch_norm(examples)

    def train(self):
        cfg, acc, t = self.cfg, self.accelerator, self.cfg.train
        if self.global_step >= self.total_steps and (self.out / "final").is_dir():
            acc.print(f"{self.start['checkpoint']} is at step {self.global_step} of {self.total_steps} and "
                      f"{self.out / 'final'} is saved: the run is finished, nothing to do")
            return
        self.begin()
        unit = self.objective.unit
        acc.print(f"{self.describe_launch()}; {len(self.train_data)} train / "
                  f"{len(self.eval_data)} eval {unit}; {self.total_steps} steps of "
                  f"{self.micro_global * t.gradient_accumulation_steps} {unit}; {self.precision}; "
                  f"{self.objective.describe()}")
        if self.eval_data:
            acc.print(f"evaluation: {self.objective.describe_eval()}")
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.global_step, desc=self.objective.name,
                   disable=not (t.progress_bar and acc.is_main_process))
        if self.global_step == 0 and t.eval_steps:
            metrics = self.evaluate()  # the untrained baseline: accuracy near chance, margins near 0
            if metrics:
                self._log(metrics, 0)
                acc.print("step 0: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in self.shown))
        params = [p for p in self.model.parameters() if p.requires_grad]
        sums, count, tokens, grad_norms, skipped, nonfinite = {}, 0, 0, [], 0, 0
        train_seconds = 0.0  # time inside training steps only: evaluation and saving are not counted
        micro_consumed = self.start_micro
        batches = self.micro_batches(micro_consumed)
        norm = 0.0
        window = []  # this rank's (example ids, loss) of the optimizer step in progress
        step_tokens = 0  # this rank's policy tokens of the optimizer step in progress
        prepared_epoch = None  # train.precompute_ref_log_probs: the epoch whose reference terms are at hand
        stop = StopSignals().install()
        try:
            while self.global_step < self.total_steps:
                epoch, micro, examples = next(batches)
                if t.precompute_ref_log_probs and epoch != prepared_epoch:
                    self._precompute_reference(epoch, micro)
                    prepared_epoch = epoch
                started = time.perf_counter()
                if (micro - self.start_micro) % t.gradient_accumulation_steps == 0 and self.objective.uses_step_norm:
                    norm = self._step_norm(micro)
                with acc.accumulate(self.model):
                    with self.adapter_compute():
                        loss, stats, n_tokens = self.compute(self.collate(examples), epoch, norm)
                        # a non-finite loss poisons every gradient it reaches (NaN·0 is NaN), so that DeepSpeed, which
                        # steps inside backward, sees a non-finite gradient norm and skips the step on every rank
                        poison = torch.where(torch.isfinite(loss.detach()), 1.0, float("nan"))
                        acc.backward(loss * poison)  # under DeepSpeed this also steps at the end of the accumulation
                    window.append(([e.id for e in examples], loss.detach()))
                    step_tokens += n_tokens
                    verdict = None
                    if acc.sync_gradients:
                        grad_norm = acc.clip_grad_norm_(params, t.max_grad_norm if t.max_grad_norm > 0 else float("inf"))
                        verdict = self._step_verdict(window, grad_norm, stop.received, step_tokens)
                        if verdict["apply"] or acc.scaler is not None:
                            # fp16's loss scaler must see every step (its unscale_ already ran in clipping); a
                            # non-finite loss has poisoned the gradients, so the scaler skips that step itself
                            self.optimizer.step()
                        if verdict["apply"] and grad_norm is not None:
                            grad_norms.append(float(grad_norm))
                        self.optimizer.zero_grad(set_to_none=True)
                micro_consumed = micro + 1
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0) + v.sum()
                count += len(examples)
                tokens += n_tokens
                train_seconds += time.perf_counter() - started
                if verdict is None:
                    continue
                window, step_tokens = [], 0
                self.policy_tokens += verdict["tokens"]
                if verdict["nonfinite"]:
                    if t.on_nonfinite == "stop":
                        self._stop_nonfinite(verdict)
                    nonfinite += 1
                    acc.print(f"step {self.global_step + 1}: {verdict['what']}; the update was not applied "
                              f"(train.on_nonfinite=skip)")
                # an optimizer step skipped by the fp16 loss scaler (or a skipped non-finite step) leaves the schedule
                # where it was (as HF's Trainer does); global_step still counts the batches consumed, so resume and
                # max_steps stay defined by data
                elif acc.optimizer_step_was_skipped:
                    skipped += 1
                else:
                    self.scheduler.step()
                self.global_step += 1
                bar.update(1)
                last = self.global_step == self.total_steps
                stopping = verdict["stop"]
                if self.global_step % t.logging_steps == 0 or last or stopping:
                    metrics = self._reduce(sums, count)
                    total_tokens = acc.reduce(torch.tensor(float(tokens), device=acc.device), "sum").item()
                    metrics.update({"grad_norm": sum(grad_norms) / max(len(grad_norms), 1),
                                    "learning_rate": self.scheduler.get_last_lr()[0],
                                    "tokens_per_second": total_tokens / train_seconds,
                                    "optimizer_steps_skipped": skipped,
                                    "nonfinite_steps": nonfinite,
                                    "policy_tokens": self.policy_tokens,
                                    "epoch": micro_consumed / self.micro_per_epoch})
                    self._log(metrics, self.global_step)
                    bar.set_postfix(self.objective.progress(metrics))
                    sums, count, tokens, grad_norms, skipped, nonfinite = {}, 0, 0, [], 0, 0
                    train_seconds = 0.0
                if stopping and not last:  # preempted: no evaluation, a checkpoint of this step, then out
                    self.save_checkpoint()
                    bar.close()
                    raise Preempted(self.global_step, verdict["stop"], self.out)
                if (t.eval_steps and self.global_step % t.eval_steps == 0) or last:
                    metrics = self.evaluate()
                    if metrics:
                        self._log(metrics, self.global_step)
                        acc.print(f"step {self.global_step}: " + ", ".join(
                            f"{k} {v:.4g}" for k, v in metrics.items() if k in self.shown))
                if self.global_step % t.save_steps == 0 or last:
                    self.save_checkpoint()
        finally:
            stop.restore()
        bar.close()
        if self.behaviour is not None:
            self.behaviour.report(self)
        self.save_final()
        for tracker in acc.trackers:
            tracker.finish()

    def _step_verdict(self, window: list, grad_norm, signal_name: str | None, tokens: int = 0) -> dict:
        """Whether the optimizer step just accumulated may be applied, and whether to stop after it: decided
        alike on every rank from one all-reduce of (non-finite loss, non-finite gradient norm, signal received);
        the same all-reduce sums the step's policy tokens (``tokens`` on this rank) into ``verdict["tokens"]``.

        Non-finite means NaN or inf in any micro-batch loss of the step on any rank, or in the (global) gradient
        norm; under fp16 an inf gradient norm is the loss scaler's business (it skips the step and lowers its
        scale), so there only the loss counts. Under DeepSpeed the engine steps inside ``backward``: its own
        overflow check (on for bf16 here, always on for fp32 and ZeRO-3) skips a non-finite gradient norm.
        """
        acc = self.accelerator
        device = acc.device
        loss_bad = torch.stack([~torch.isfinite(loss) for _, loss in window]).any().float().to(device)
        grad_bad = torch.zeros((), device=device)
        if grad_norm is not None and str(acc.mixed_precision) != "fp16":
            grad_bad = (~torch.isfinite(torch.as_tensor(grad_norm, dtype=torch.float32, device=device))).float()
        flags = torch.stack([loss_bad, grad_bad, torch.tensor(float(signal_name is not None), device=device)]).double()
        flags = torch.cat([flags, torch.tensor([float(tokens)], dtype=torch.float64, device=device)])
        loss_ranks, grad_ranks, signal_ranks, step_tokens = acc.reduce(flags, reduction="sum").tolist()
        nonfinite = loss_ranks > 0 or grad_ranks > 0
        verdict = {"apply": not nonfinite, "nonfinite": nonfinite, "tokens": int(step_tokens),
                   "stop": (signal_name or "a signal on another rank") if signal_ranks > 0 else None}
        if nonfinite:
            what = []
            if loss_ranks:
                what.append(f"the loss was not finite on {int(loss_ranks)} of {self.world} rank(s)")
            if grad_ranks:
                what.append(f"the gradient norm was {float(grad_norm)}")
            verdict["what"] = " and ".join(what)
            if self.deepspeed and not acc.optimizer_step_was_skipped:
                log.warning("DeepSpeed applied the step although %s (its gradient norm was finite)", verdict["what"])
            # the offending micro-batches (every micro-batch of the step when no loss was non-finite)
            from accelerate.utils import gather_object

            mine = [i for ids, loss in window if not bool(torch.isfinite(loss)) or not loss_ranks for i in ids]
            verdict["ids"] = sorted(set(gather_object(mine)))
        return verdict

    def _stop_nonfinite(self, verdict: dict) -> None:
        """train.on_nonfinite=stop: a checkpoint of the last good state (the step was not applied), then out."""
        t = self.cfg.train
        if not (self.global_step > 0 and self.global_step % t.save_steps == 0):  # else saved at the end of that step
            self.save_checkpoint()
        ids = verdict["ids"]
        where = ""
        if self.train_where is not None:
            where = " (" + ", ".join(self.train_where(i) for i in ids[:8]) + (" ..." if len(ids) > 8 else "") + ")"
        raise NonFiniteStep(
            f"step {self.global_step + 1}: {verdict['what']}; the update was not applied on any rank. Examples of the "
            f"offending micro-batch(es): ids {ids[:32]}{' ...' if len(ids) > 32 else ''}{where}. The last good state "
            f"is saved as {self.out / f'checkpoint-{self.global_step}'}. Lower train.learning_rate or look at these "
            f"records, then resume with train.resume_from_checkpoint=latest; or set train.on_nonfinite=skip to skip "
            f"such steps (counted as nonfinite_steps)")

    def close(self):
        """Tear down the process group (after :meth:`train`; the entry point calls it)."""
        self.accelerator.end_training()

    def save_final(self):
        """``final/``: the adapter (LoRA) and/or full weights in the published layout, each checked after writing.

        LoRA: only the trainable parameters are gathered (under ZeRO-3 collectively, to rank 0's CPU); the
        base is never copied to save an adapter. ``save_merged`` (DDP / ZeRO-2) merges on rank 0's CPU one
        layer at a time, without a second copy of the model on the GPU. Full fine-tuning: the full state dict
        (gathered from ZeRO-3 shards on rank 0).
        """
        acc = self.accelerator
        acc.wait_for_everyone()
        out = self.out / "final"
        if self.cfg.lora.enabled:
            peft_model = unwrap_peft(self.model)
            adapter = trainable_state_dict(peft_model, acc.is_main_process)
            if acc.is_main_process:
                from peft import get_peft_model_state_dict

                for config in peft_model.peft_config.values():  # load_model(final/) finds the base through this
                    config.base_model_name_or_path = self.cfg.model.name_or_path
                peft_model.save_pretrained(out / "adapter", state_dict=adapter)
                expected = get_peft_model_state_dict(peft_model, state_dict=adapter)
                verify_saved(out / "adapter", {k: tuple(v.shape) for k, v in expected.items()})
                if self.cfg.train.save_merged:
                    merged = merged_state_dict(peft_model)
                    save_published(peft_model.get_base_model(), out, tokenizer=self.tokenizer, state_dict=merged,
                                   source=self.cfg.model.name_or_path)
                    verify_saved(out, published_shapes(merged, peft_model.get_base_model().config))
        else:
            state_dict = acc.get_state_dict(self.model)  # gathers ZeRO-3 shards on rank 0
            if acc.is_main_process:
                model = acc.unwrap_model(self.model)
                save_published(model, out, tokenizer=self.tokenizer, source=self.cfg.model.name_or_path,
                               state_dict=state_dict)
                shapes = {n: tuple(getattr(p, "ds_shape", p.shape)) for n, p in model.named_parameters()}
                verify_saved(out, published_shapes(shapes, model.config))
        if acc.is_main_process:
            self.tokenizer.save_pretrained(out)
            acc.print(f"saved {out}")
        acc.wait_for_everyone()


def run_folder_name() -> str:
    """``<date>_<host>`` as HF's Trainer names a run's TensorBoard folder (``Nov26_12-40-03_host``)."""
    import socket
    from datetime import datetime

    return f"{datetime.now():%b%d_%H-%M-%S}_{socket.gethostname()}"


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
    """The PeftModel inside a DDP/DeepSpeed wrapper (DeepSpeed's engine forwards attribute lookups to its
    module, so an attribute test would stop at the engine)."""
    from peft import PeftModel

    while not isinstance(model, PeftModel):
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


def main(config_cls, objective_cls, prog: str, argv: list[str] | None = None) -> None:
    """The shared body of the entry points (``align.train_dpo``, ``align.train_sft``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "datasets", "torch.distributed", "accelerate", "deepspeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from align.data import BadRecord

    try:
        cfg = parse_cli(sys.argv[1:] if argv is None else argv, config_cls, prog)
        trainer = Trainer(cfg, objective_cls(cfg))
    except (ConfigError, BadRecord, CheckpointError, FileNotFoundError) as e:  # one line, no traceback
        if os.environ.get("ALIGN_DEBUG"):
            raise
        kind = ("config error" if isinstance(e, ConfigError) else "data error" if isinstance(e, BadRecord)
                else "checkpoint error" if isinstance(e, CheckpointError) else "error")
        raise SystemExit(f"{kind}: {e} (ALIGN_DEBUG=1 shows the traceback)") from None
    try:
        trainer.train()
    except Preempted as e:  # SIGTERM/SIGINT: checkpoint written on every rank
        trainer.accelerator.print(f"preempted: {e}")
        close_and_exit(trainer, PREEMPTED_EXIT_CODE)
    except NonFiniteStep as e:  # checkpoint of the last good state written
        trainer.accelerator.print(f"non-finite step: {e}", file=sys.stderr)
        close_and_exit(trainer, 1)
    close_and_exit(trainer)


def close_and_exit(trainer, code: int = 0) -> None:
    """End a run's process with ``code`` (0 after a finished run), the process group torn down first."""
    trainer.close()
    exit_process(code, distributed=trainer.world > 1)


def exit_process(code: int, *, distributed: bool) -> None:
    """Exit with ``code``. With several processes, leave without running C++ static destructors: under gloo
    (plain DDP and DeepSpeed on CPU) a rank occasionally aborts there ("terminate called without an active
    exception") after a run that wrote everything, and the launcher then reports the run as failed."""
    if distributed:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        sys.exit(code)
