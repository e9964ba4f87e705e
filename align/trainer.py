"""The training loop for masked-diffusion LMs, on accelerate, with the objective plugged in.

    python -m align.train_dpo recipe=demo        # the loop with the DPO objective (align.dpo); SFT: align.train_sft

One loop serves DPO (``align.dpo``) and SFT (``align.sft``). An *objective* owns what differs: how records are
encoded and batched, whether a reference model is needed, the loss and per-example statistics of a micro-batch,
and the names of its metrics. :class:`Trainer` owns the rest, read top to bottom: set-up as named steps
(accelerator, model, data, resume, optimizer, evaluation), :meth:`Trainer.train` (the loop), :meth:`Trainer.evaluate`
and :meth:`Trainer.compute` (one micro-batch through the objective). Every epoch has a new seeded order cut into
per-rank micro-batches (``align.data.rank_micro_batches``); mask draws come from per-example generators seeded by
(seed, example id, epoch), so a micro-step is the same whatever the world size, accumulation or resume.

Beside the loop, one module each: ``align.runtime`` (accelerator, precision, the launch, ZeRO-stage settings),
``align.resume`` (new run, overwrite or resume, and what a start writes), ``align.checkpoints`` (how a
checkpoint is written, verified and rotated), ``align.metrics`` (the metric window, metrics.jsonl, trackers),
``align.export`` (the final save), ``align.guards`` (SIGTERM/SIGINT, non-finite steps), ``align.reference`` (the
reference model and its precomputed log-probs), ``align.cli`` (the command line and the exit).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from align.behaviour import BehaviourEval
from align.checkpoints import (
    CheckpointError,
    complete_checkpoints,
    keep_only,
    save_checkpoint,
    trajectory_settings,
    verify_checkpoint,
    verify_final,
)
from align.config import ConfigError
from align.data import EVAL_EPOCH, rank_micro_batches
from align.data.order import epoch_rest, step_positions
from align.data.splits import load_splits
from align.export import save_final
from align.fingerprint import data_fingerprint, model_fingerprint
from align.guards import Preempted, StopSignals, nonfinite_stop, step_verdict, stop_agreed
from align.metrics import MetricWindow, log_metrics, reduce_means, start_trackers, write_eval_examples
from align.models import (
    MaskedDiffusionLM,
    adapter_in_base_dtype,
    add_lora,
    check_local,
    checkpoint_blocks,
    compile_blocks,
    disable_dropout,
    load_model,
    resolve_dtype,
    set_scoring_memory,
    spec_for,
    token_scorer,
    tokenizer_source,
    unwrap,
)
from align.models.tokenizer import load_tokenizer
from align.optim import adamw
from align.reference import ReferenceCache, prepare_reference
from align.resume import check_resume, load_checkpoint, plan_start, write_start
from align.runlock import lock_output_dir
from align.runtime import (
    build_accelerator,
    check_precision,
    configure_deepspeed,
    describe_launch,
    refuse_unsupported,
    run_folder_name,
    uses_deepspeed,
)


class Trainer:
    """The training loop, with the objective (DPO, SFT) plugged in: see ``align.dpo`` and ``align.sft``."""

    def __init__(self, cfg, objective):
        self.cfg, self.objective = cfg, objective
        self.out = Path(cfg.train.output_dir)
        # Start-up writes nothing until every check (config, output directory, checkpoint, data, model) has passed:
        # a failed start leaves the directory as it was. begin() (the start of train()) does the writing.
        self.lock = None
        try:
            self._setup_accelerator()
            self.start = plan_start(cfg.train, self.out)
            self._setup_model()
            self._setup_data()
            self._setup_resume()
            self._setup_optimizer()
            self._setup_evaluation()
        except BaseException:  # a failed start: the directory is free again (and removed if the lock made it)
            if self.lock is not None:
                self.lock.release()
            raise

    # ------------------------------------------------------------ set-up, in order
    def _setup_accelerator(self) -> None:
        """The accelerator (``align.runtime``), the seed, and the settings this launch refuses."""
        from accelerate.utils import set_seed

        t = self.cfg.train
        # TensorBoard events as HF's Trainer writes them: output_dir/runs/<date>_<host>/, one folder per launch
        self.logging_dir = Path(t.logging_dir) if t.logging_dir else self.out / "runs" / run_folder_name()
        self.accelerator = acc = build_accelerator(self.cfg, self.out, self.logging_dir)
        self.world, self.rank = acc.num_processes, acc.process_index
        self.lock = lock_output_dir(acc, self.out)  # one run per output directory (align.runlock)
        set_seed(t.seed)
        self.deepspeed = uses_deepspeed(acc)
        self.precision = check_precision(self.cfg.model.dtype, str(acc.mixed_precision), self.deepspeed)
        refuse_unsupported(self.cfg, acc)

    def _load_model(self):
        """The model as ``model.*`` asks: scoring memory and compiled blocks for align's native models."""
        m = self.cfg.model
        model = load_model(
            m.name_or_path,
            dtype=m.dtype,
            attn_implementation=m.attn_implementation,
            trust_remote_code=m.trust_remote_code,
        )
        if isinstance(model, MaskedDiffusionLM):
            set_scoring_memory(model, forward_chunk=m.forward_chunk, head_chunk_mib=m.head_chunk_mib)
            if m.compile:
                compile_blocks(model, backend=m.compile_backend)
            return model
        asked = [
            f"model.{key}"
            for key, on in (
                ("forward_chunk", m.forward_chunk > 0),
                ("compile", m.compile),
                ("checkpoint_blocks", m.checkpoint_blocks is not None),
            )
            if on
        ]
        if asked:
            raise ConfigError(
                f"{', '.join(asked)}: only align's native models have these settings; "
                f"{m.name_or_path} loaded as {type(model).__name__}"
            )
        return model

    def _setup_model(self) -> None:
        """Tokenizer, policy (LoRA or full), the frozen reference copy when full fine-tuning needs one."""
        cfg, m = self.cfg, self.cfg.model
        check_local(m.name_or_path)  # a mistyped path: one line naming it, before transformers reads it as a hub id
        self.tokenizer = load_tokenizer(
            m.tokenizer or tokenizer_source(m.name_or_path),  # or a LoRA output's base
            trust_remote_code=m.trust_remote_code,
        )
        model = self._load_model()
        self.spec = spec_for(model)
        # content identity, compared by a resume (align.fingerprint): the data's is added by _setup_data
        self.fingerprints = {"model": model_fingerprint(m.name_or_path, getattr(model, "config", None))}
        if m.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            try:
                checkpoint_blocks(model, m.checkpoint_blocks)
            except ValueError as e:
                raise ConfigError(f"model.checkpoint_blocks: {e}") from None
        self.reference = None
        if cfg.lora.enabled:
            model = add_lora(
                model,
                r=cfg.lora.r,
                alpha=cfg.lora.alpha,
                dropout=cfg.lora.dropout,
                target_modules=cfg.lora.target_modules,
            )
        elif self.objective.needs_reference:
            # a second load, not a deepcopy: under ZeRO-3 init the loaded parameters are already partitioned
            self.reference = self._load_model().requires_grad_(False).eval()
        if cfg.train.disable_dropout:
            disable_dropout(model)
        model.train()
        self.model = model  # wrapped by accelerate in _setup_optimizer
        # LoRA over a bf16/fp16 base outside DeepSpeed: the adapter computes in the base's dtype (its fp32 weights
        # stay the master copy). DeepSpeed casts the whole module to its precision and keeps masters itself.
        self.adapter_dtype = (
            resolve_dtype(m.dtype) if cfg.lora.enabled and m.dtype != "float32" and not self.deepspeed else None
        )

    def _setup_data(self) -> None:
        """Training and held-out examples, and how an epoch is cut into global micro-batches."""
        t = self.cfg.train
        acc, d = self.accelerator, self.cfg.data

        def build(rows, source, *, limit, indices=None):
            data, report = self.objective.build_dataset(
                rows, source, self.tokenizer, self.spec, limit=limit, indices=indices
            )
            acc.print(report.summary())
            return data

        self.train_data, self.eval_data, self.train_where, self.eval_ids = load_splits(
            d, do_eval=t.do_eval, build=build, unit=self.objective.unit, out=self.out, say=acc.print
        )
        self.fingerprints["data"] = data_fingerprint(self.train_data)
        self.fingerprints["eval_data"] = data_fingerprint(self.eval_data)
        self.micro_global = t.per_device_train_batch_size * self.world
        self.micro_per_epoch = len(self.train_data) // self.micro_global
        if self.micro_per_epoch < t.gradient_accumulation_steps:
            raise ConfigError(
                f"{len(self.train_data)} training examples fill fewer than one optimizer step of "
                f"{self.micro_global * t.gradient_accumulation_steps}"
            )
        dropped = len(self.train_data) - self.micro_per_epoch * self.micro_global
        if dropped:
            acc.print(
                f"each epoch leaves out {dropped} example(s) (a different random set every epoch) to fill whole "
                f"global batches of {self.micro_global}"
            )
        self.steps_per_epoch = self.micro_per_epoch / t.gradient_accumulation_steps  # may be fractional

    def _setup_resume(self) -> None:
        """Where this launch starts (``align.resume``): step 0, or the checkpoint's step and data position."""
        t = self.cfg.train
        self.global_step, self.start_micro, self.start_step = 0, 0, 0
        self.policy_tokens = 0  # all ranks, so far
        self.resumed = None
        if self.start.checkpoint is not None:
            self.resumed = check_resume(
                self.start,
                t=t,
                settings=self._settings(),
                geometry=self._geometry(),
                deepspeed=self.deepspeed,
                unit=self.objective.unit,
                fingerprints=self.fingerprints,
                cfg_dict=self.cfg.to_dict(),
            )
            self.global_step, self.start_micro = self.resumed.global_step, self.resumed.start_micro
            self.policy_tokens = self.resumed.policy_tokens
        self.start_step = self.global_step
        # with epochs: the micro-steps left over the epochs, on from where this launch starts
        self.total_steps = (
            t.max_steps
            if t.max_steps > 0
            else self.global_step
            + (self.micro_per_epoch * t.num_train_epochs - self.start_micro) // t.gradient_accumulation_steps
        )

    def _setup_optimizer(self) -> None:
        """AdamW and the schedule, everything through ``accelerator.prepare``, then the checkpoint's states."""
        from transformers import get_scheduler

        acc, t = self.accelerator, self.cfg.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = adamw(params, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), weight_decay=t.weight_decay)
        self.warmup_steps = math.ceil(t.warmup_ratio * self.total_steps)  # rounded up, as HF's Trainer does
        self.scheduler = get_scheduler(
            t.lr_scheduler_type if t.lr_scheduler_type != "constant" else "constant_with_warmup",
            optimizer,
            num_warmup_steps=self.warmup_steps,
            num_training_steps=self.total_steps,
        )
        configure_deepspeed(acc, t)
        self.model, self.optimizer = acc.prepare(self.model, optimizer)
        acc.register_for_checkpointing(self.scheduler)
        if self.reference is not None:
            self.reference = prepare_reference(acc, self.reference)
        if self.cfg.lora.enabled:
            trainable = {n for n, p in unwrap(self.model, keep_peft=True).named_parameters() if p.requires_grad}
            # checkpoints hold the adapter only; frozen base weights come from name_or_path on resume
            acc.register_save_state_pre_hook(keep_only(trainable))
        while self.resumed is not None:
            try:
                load_checkpoint(
                    acc,
                    self.start.checkpoint,
                    deepspeed=self.deepspeed,
                    changes=self.resumed.changes,
                    t=t,
                    optimizer=self.optimizer,
                    scheduler=self.scheduler,
                )
                break
            except CheckpointError as e:  # latest falls back past a checkpoint that verifies but does not load
                if t.resume_from_checkpoint != "latest" or not self._fall_back(str(e)):
                    raise
        if self.resumed is not None:
            self.objective.load_state(self, self.start.checkpoint)  # online DPO: a round's sampling weights

    def _fall_back(self, why: str) -> bool:
        """``latest``: the newest checkpoint older than the one that failed to load and that verifies becomes the
        one this launch resumes from (its position and settings checked again); False when there is none."""
        failed = self.start.checkpoint
        step = int(self.start.state["global_step"])
        self.start.notes.append(f"passed over a checkpoint that does not load: {why}")
        for path in reversed(complete_checkpoints(self.out)):
            if int(path.name.split("-")[1]) >= step:
                continue
            try:
                state = verify_checkpoint(path)
            except CheckpointError as e:
                self.start.notes.append(f"passed over a damaged checkpoint: {e}")
                continue
            self.start.checkpoint, self.start.state = path, state
            self._setup_resume()
            self.accelerator.print(f"{failed} does not load; resuming from {path} instead")
            return True
        return False

    def _setup_evaluation(self) -> None:
        """The behaviour check, the metrics shown at each evaluation, and the reference cache."""
        t, objective = self.cfg.train, self.objective
        self.behaviour = None
        if self.cfg.behaviour.prompts:
            self.behaviour = BehaviourEval(self.cfg.behaviour, self.tokenizer, self.spec, seed=t.seed)
        self.shown = set(objective.shown) | (
            {"eval/refusal_rate", "eval/over_refusal_rate", "eval/reward"} if self.behaviour else set()
        )
        self.reference_cache = None
        if t.precompute_ref_log_probs:
            if not objective.needs_reference:
                raise ConfigError(
                    f"train.precompute_ref_log_probs=true: the {objective.name} objective has no reference model"
                )
            if not t.disable_dropout:
                raise ConfigError(
                    "train.precompute_ref_log_probs=true needs a reference that gives the same numbers "
                    "ahead of time as in the step, but train.disable_dropout=false leaves dropout on "
                    "(a random reference); set train.disable_dropout=true or compute it in the step"
                )
        if objective.needs_reference and objective.caches_reference:
            # the held-out draws are the same at every evaluation and the reference is frozen: its eval terms are
            # computed once (in eval mode, so dropout is off) and kept; training epochs use it only when precomputed
            self.reference_cache = ReferenceCache(
                self.out / "ref_logps", objective.cache_key(), self.rank, self.world, persist=t.precompute_ref_log_probs
            )

    # ------------------------------------------------------------ reference
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
        peft_model = unwrap(self.model, keep_peft=True)

        def reference(*args):
            with peft_model.disable_adapter():
                return policy(*args)

        return policy, reference

    # ------------------------------------------------------------ one micro-batch
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
        out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) and k != "ids" else v for k, v in batch.items()}
        out["tokens"] = int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
        out["host"] = batch  # the host copy: mask draws read response positions from it
        return out

    def collate(self, examples: list) -> dict:
        return self.objective.collate(examples, self.spec)

    # ------------------------------------------------------------ metrics
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
        keys = self.objective.per_example_keys
        norm = self.objective.batch_norm(self.eval_data)
        for s in range(0, per_rank, bs):
            with self.adapter_compute():
                _, stats, _ = self.compute(self.collate(mine[s : s + bs]), EVAL_EPOCH, norm)
            weight = (
                torch.arange(s, s + len(next(iter(stats.values()))), device=self.accelerator.device) < real
            ).float()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0) + (v * weight).sum()
            for i, example in enumerate(mine[s : s + bs]):
                if s + i < real and keys:
                    examples.append((example.id, {k: float(stats[k][i]) for k in keys if k in stats}))
        metrics = self.objective.finish_eval(reduce_means(self.accelerator, sums, real), len(self.eval_data))
        metrics = {f"eval/{k}": v for k, v in metrics.items()}
        metrics["eval/examples"] = len(self.eval_data)
        metrics["policy_tokens"] = self.policy_tokens
        if keys:
            write_eval_examples(self.accelerator, self.out, self.global_step, examples, self.world)
        if self.behaviour is not None and self.behaviour.due(self.global_step, self.global_step == self.total_steps):
            metrics.update(self.behaviour.evaluate(self, self.global_step))
        self.model.train()
        return metrics

    # ------------------------------------------------------------ start and checkpoints
    def begin(self) -> None:
        """Everything a start writes (``align.resume.write_start``), then the trackers."""
        acc, plan = self.accelerator, self.start
        for note in plan.notes:
            acc.print(note)
        write_start(
            acc,
            self.out,
            plan,
            cfg=self.cfg,
            resumed=self.resumed,
            world=self.world,
            eval_ids=self.eval_ids if self.eval_data else None,
        )
        if self.lock is not None:
            self.lock.keep()
        if self.resumed is not None:
            changed = "".join(f"; {k} changed: {a} -> {b}" for k, (a, b) in self.resumed.changes.items())
            acc.print(f"resumed from {plan.checkpoint} at step {self.global_step}{changed}")
        start_trackers(acc, self.cfg, self.logging_dir, self.out)

    def save_checkpoint(self) -> None:
        """``checkpoint-<global_step>`` (``align.checkpoints.save_checkpoint``) with this run's record."""
        state = {
            "global_step": self.global_step,
            "policy_tokens": self.policy_tokens,
            "geometry": self._geometry(),
            "settings": self._settings(),
            "config": self.cfg.to_dict(),
            "trajectory": self.start.trajectory,  # one trajectory per directory (align.resume)
            "fingerprints": self.fingerprints,  # what it trained on, as content (align.fingerprint)
        }
        extra = self.objective.save_state  # online DPO: a round's sampling weights
        save_checkpoint(
            self.accelerator,
            self.out,
            self.global_step,
            state,
            exclude_frozen=self.deepspeed and self.cfg.lora.enabled,
            keep=self.cfg.train.save_total_limit,
            extra=extra and (lambda directory: extra(self, directory)),
        )

    def _geometry(self) -> dict:
        t = self.cfg.train
        consumed = self.start_micro + (self.global_step - self.start_step) * t.gradient_accumulation_steps
        return {
            "world": self.world,
            "per_device": t.per_device_train_batch_size,
            "accumulation": t.gradient_accumulation_steps,
            "micro_global": self.micro_global,
            "micro_per_epoch": self.micro_per_epoch,
            "examples": len(self.train_data),
            "micro_consumed": consumed,
            "deepspeed": self.deepspeed,
        }

    def _settings(self) -> dict:
        return trajectory_settings(self.cfg, str(self.accelerator.mixed_precision))

    # ------------------------------------------------------------ loop
    def micro_batches(self, start_micro: int):
        """Yield (epoch, micro-step, this rank's examples) from global micro-step ``start_micro`` on."""
        t = self.cfg.train
        for epoch, micro, mine in rank_micro_batches(
            len(self.train_data),
            seed=t.seed,
            world=self.world,
            rank=self.rank,
            per_device=t.per_device_train_batch_size,
            start_micro=start_micro,
        ):
            yield epoch, micro, [self.train_data[i] for i in mine]

    def _precompute_reference(self, epoch: int, micro: int) -> None:
        """The reference terms of every example this rank meets in ``epoch`` from micro-step ``micro`` on."""
        t = self.cfg.train
        mine = epoch_rest(
            len(self.train_data),
            seed=t.seed,
            world=self.world,
            rank=self.rank,
            per_device=t.per_device_train_batch_size,
            start_micro=micro,
        )
        self.reference_cache.ensure(
            self, epoch, [self.train_data[i] for i in mine], t.per_device_eval_batch_size, drop_older=True
        )

    def _step_norm(self, first_micro: int) -> float:
        """The objective's normaliser over the optimizer step that starts at ``first_micro`` (all ranks)."""
        t = self.cfg.train
        step = step_positions(
            len(self.train_data),
            seed=t.seed,
            world=self.world,
            per_device=t.per_device_train_batch_size,
            accumulation=t.gradient_accumulation_steps,
            first_micro=first_micro,
        )
        return self.objective.batch_norm([self.train_data[i] for i in step])

    def train(self):
        """The loop: evaluate at step 0, then optimizer steps of accumulated micro-batches, each followed by the
        non-finite/signal verdict (``align.guards``), logging, evaluation and checkpoints when due; the final
        save (``align.export``) at the end. (One method on purpose: the loop reads top to bottom; each step it
        takes is a named method.)"""
        acc, t = self.accelerator, self.cfg.train
        if self.global_step >= self.total_steps:
            unverified = verify_final(self.out / "final")
            if unverified is None:
                for note in self.start.notes:
                    acc.print(note)
                acc.print(
                    f"{self.start.checkpoint} is at step {self.global_step} of {self.total_steps} and "
                    f"{self.out / 'final'} verifies: the run is finished, nothing to do"
                )
                return
            if (self.out / "final").exists():
                acc.print(f"the final save is redone: {unverified}")
        self.begin()
        self._announce()
        from tqdm.auto import tqdm

        bar = tqdm(
            total=self.total_steps,
            initial=self.global_step,
            desc=self.objective.name,
            disable=not (t.progress_bar and acc.is_main_process),
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        window = MetricWindow()
        batches = self.micro_batches(self.start_micro)
        norm, micro_consumed = 0.0, self.start_micro
        step_losses, step_tokens = [], 0  # this rank's (example ids, loss) and policy tokens of the step in progress
        prepared_epoch = None  # train.precompute_ref_log_probs: the epoch whose reference terms are at hand
        stop = StopSignals().install()
        try:
            # the untrained baseline (accuracy near chance, margins near 0); a resume at step 0 logged it already
            if self.global_step == 0 and t.eval_steps and self.resumed is None:
                self._evaluate_and_log()
                self._stop_if_asked(stop, bar, saved=False)
            while self.global_step < self.total_steps:
                epoch, micro, examples = next(batches)
                if t.precompute_ref_log_probs and epoch != prepared_epoch:
                    self._precompute_reference(epoch, micro)
                    prepared_epoch = epoch
                started = time.perf_counter()
                if (micro - self.start_micro) % t.gradient_accumulation_steps == 0 and self.objective.uses_step_norm:
                    norm = self._step_norm(micro)
                with acc.accumulate(self.model):
                    stats, n_tokens = self._forward_backward(examples, epoch, norm, step_losses)
                    step_tokens += n_tokens
                    verdict = (
                        self._optimizer_step(params, step_losses, step_tokens, stop, window)
                        if acc.sync_gradients
                        else None
                    )
                micro_consumed = micro + 1
                window.add(stats, len(examples), n_tokens, time.perf_counter() - started)
                if verdict is None:
                    continue
                step_losses, step_tokens = [], 0
                self._advance(verdict, window)
                bar.update(1)
                last = self.global_step == self.total_steps
                if self.global_step % t.logging_steps == 0 or last or verdict["stop"]:
                    self._log_window(window, micro_consumed, bar)
                if verdict["stop"] and not last:  # preempted: no evaluation, a checkpoint of this step, then out
                    self.save_checkpoint()
                    bar.close()
                    raise Preempted(self.global_step, verdict["stop"], self.out)
                evaluated = bool(t.eval_steps and self.global_step % t.eval_steps == 0) or last
                if evaluated:
                    self._evaluate_and_log()
                saved = self.global_step % t.save_steps == 0 or last
                if saved:
                    self.save_checkpoint()
                if evaluated and not last:
                    self._stop_if_asked(stop, bar, saved=saved)  # a stop asked for during the evaluation
        finally:
            stop.restore()
        bar.close()
        if self.behaviour is not None:
            self.behaviour.report(self)
        save_final(acc, self.model, self.out / "final", cfg=self.cfg, tokenizer=self.tokenizer)
        for tracker in acc.trackers:
            tracker.finish()

    def _stop_if_asked(self, stop: StopSignals, bar, *, saved: bool) -> None:
        """After an evaluation: when any rank received SIGTERM/SIGINT, a checkpoint of this step (unless just
        saved), then :class:`Preempted` (exit 75; ``latest`` continues from it)."""
        asked = stop_agreed(self.accelerator, stop.received)
        if asked is None:
            return
        if not saved:
            self.save_checkpoint()
        bar.close()
        raise Preempted(self.global_step, asked, self.out)

    def _forward_backward(self, examples: list, epoch: int, norm: float, step_losses: list) -> tuple[dict, int]:
        """One micro-batch's loss and its backward; (per-example stats, policy tokens). Its (ids, loss) go to
        ``step_losses`` for the step's verdict."""
        with self.adapter_compute():
            loss, stats, n_tokens = self.compute(self.collate(examples), epoch, norm)
            # a non-finite loss poisons every gradient it reaches (NaN·0 is NaN), so that DeepSpeed, which steps
            # inside backward, sees a non-finite gradient norm and skips the step on every rank
            poison = torch.where(torch.isfinite(loss.detach()), 1.0, float("nan"))
            self.accelerator.backward(loss * poison)  # under DeepSpeed this also steps at the end of the accumulation
        step_losses.append(([e.id for e in examples], loss.detach()))
        return stats, n_tokens

    def _announce(self) -> None:
        acc, t, unit = self.accelerator, self.cfg.train, self.objective.unit
        acc.print(
            f"{describe_launch(acc)}; {len(self.train_data)} train / {len(self.eval_data)} eval {unit}; "
            f"{self.total_steps} steps of {self.micro_global * t.gradient_accumulation_steps} {unit}; "
            f"{self.precision}; {self.objective.describe()}"
        )
        if self.eval_data:
            acc.print(f"evaluation: {self.objective.describe_eval()}")

    def _optimizer_step(
        self, params, step_losses: list, step_tokens: int, stop: StopSignals, window: MetricWindow
    ) -> dict:
        """Clip, decide (one all-reduce, ``align.guards.step_verdict``) and apply the accumulated step."""
        acc, t = self.accelerator, self.cfg.train
        grad_norm = acc.clip_grad_norm_(params, t.max_grad_norm if t.max_grad_norm > 0 else float("inf"))
        verdict = step_verdict(acc, step_losses, grad_norm, stop.received, step_tokens)
        if verdict["apply"] or acc.scaler is not None:
            # fp16's loss scaler must see every step (its unscale_ already ran in clipping); a non-finite loss has
            # poisoned the gradients, so the scaler skips that step itself
            self.optimizer.step()
        if verdict["apply"] and grad_norm is not None:
            window.grad_norms.append(float(grad_norm))
        self.optimizer.zero_grad(set_to_none=True)
        return verdict

    def _advance(self, verdict: dict, window: MetricWindow) -> None:
        """Count the step: the schedule moves on unless the step was not applied."""
        acc, t = self.accelerator, self.cfg.train
        self.policy_tokens += verdict["tokens"]
        if verdict["nonfinite"]:
            if t.on_nonfinite == "stop":  # a checkpoint of the last good state (the step was not applied), then out
                # right after a resume the state is the checkpoint's own, which is then the suspect: not saved again
                suspect = self.start.checkpoint if self.resumed and self.global_step == self.start_step else None
                if suspect is None and not (self.global_step > 0 and self.global_step % t.save_steps == 0):
                    self.save_checkpoint()  # (else saved after that step)
                raise nonfinite_stop(verdict, self.global_step, self.out, self.train_where, resumed_from=suspect)
            window.nonfinite += 1
            acc.print(
                f"step {self.global_step + 1}: {verdict['what']}; the update was not applied (train.on_nonfinite=skip)"
            )
        # an optimizer step skipped by the fp16 loss scaler (or a skipped non-finite step) leaves the schedule where
        # it was (as HF's Trainer does); global_step still counts the batches consumed, so resume and max_steps
        # stay defined by data
        elif acc.optimizer_step_was_skipped:
            window.skipped += 1
        else:
            self.scheduler.step()
        self.global_step += 1

    def _log_window(self, window: MetricWindow, micro_consumed: int, bar) -> None:
        """The window's means over all ranks, with the optimizer's figures; then a new window."""
        acc = self.accelerator
        metrics = reduce_means(acc, window.sums, window.count)
        total_tokens = acc.reduce(torch.tensor(float(window.tokens), device=acc.device), "sum").item()
        metrics.update(
            {
                "grad_norm": sum(window.grad_norms) / max(len(window.grad_norms), 1),
                "learning_rate": self.scheduler.get_last_lr()[0],
                "tokens_per_second": total_tokens / window.seconds,
                "optimizer_steps_skipped": window.skipped,
                "nonfinite_steps": window.nonfinite,
                "policy_tokens": self.policy_tokens,
                "epoch": micro_consumed / self.micro_per_epoch,
            }
        )
        metrics = self.objective.finish_train(metrics, window)  # online DPO: shares of the window as a whole
        log_metrics(self.accelerator, self.out, metrics, self.global_step)
        bar.set_postfix(self.objective.progress(metrics))
        window.reset()

    def _evaluate_and_log(self) -> None:
        metrics = self.evaluate()
        if metrics:
            log_metrics(self.accelerator, self.out, metrics, self.global_step)
            self.accelerator.print(
                f"step {self.global_step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in self.shown)
            )

    def close(self):
        """Tear down the process group and release the output directory (after :meth:`train`; the entry point
        calls it)."""
        self.accelerator.end_training()
        if self.lock is not None:
            self.lock.release()
