"""The checks of a configuration that its types cannot express (``align.config.load_config`` runs them after the
types): ranges, settings that need each other, the coupling shorthand filled into the share_* flags. Each fails
with one line naming the key."""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
from pathlib import Path

from align.errors import ConfigError
from align.functions import load_function


def validate(cfg):
    """Checks a type cannot express, each failing with one line naming the key; fills the share_* flags from
    the coupling shorthand. Returns ``cfg``."""
    _validate_train(cfg)
    _validate_model(cfg)
    _validate_data_and_behaviour(cfg)
    cfg.validate()  # the objective's own sections (align.config.TrainingConfig and its subclasses)
    return cfg


def _validate_train(cfg) -> None:
    if cfg.train.logging_dir:  # TensorBoard's folder: a file there (or above it) fails late, after writing
        p = Path(cfg.train.logging_dir)
        blocker = next((q for q in (p, *p.absolute().parents) if q.exists() and not q.is_dir()), None)
        if blocker is not None:
            raise ConfigError(f"train.logging_dir={p}: {blocker} is a file, not a directory")
    positive = {
        "train.per_device_train_batch_size": cfg.train.per_device_train_batch_size,
        "train.gradient_accumulation_steps": cfg.train.gradient_accumulation_steps,
        "data.max_prompt_length": cfg.data.max_prompt_length,
        "data.max_response_length": getattr(cfg.data, "max_response_length", 1),  # online DPO: gen_length
        "train.logging_steps": cfg.train.logging_steps,
        "train.save_steps": cfg.train.save_steps,
        "train.per_device_eval_batch_size": cfg.train.per_device_eval_batch_size,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    t = cfg.train
    if t.seed < 0:
        raise ConfigError(f"train.seed must be >= 0 (numpy and torch seed from it), got {t.seed}")
    if t.max_steps <= 0 and t.num_train_epochs < 1:
        raise ConfigError(
            f"train.num_train_epochs={t.num_train_epochs}, train.max_steps={t.max_steps}: trains nothing; give "
            "num_train_epochs >= 1 or max_steps >= 1"
        )
    if cfg.lora.enabled and cfg.lora.r < 1:
        raise ConfigError(f"lora.r must be >= 1 (the adapter's rank), got {cfg.lora.r}")
    if cfg.lora.enabled and not cfg.lora.alpha > 0:
        raise ConfigError(
            f"lora.alpha must be > 0 (the adapter's scale is alpha / r; 0 trains nothing), got {cfg.lora.alpha}"
        )
    if t.report_to == "wandb":
        if importlib.util.find_spec("wandb") is None:
            raise ConfigError(
                "train.report_to=wandb: wandb is not installed; pip install -e '.[wandb]' (or report_to=none)"
            )
    for key, value, low, high in (
        ("train.learning_rate", t.learning_rate, 0, None),
        ("train.warmup_ratio", t.warmup_ratio, 0, 1),
        ("train.weight_decay", t.weight_decay, 0, None),
        ("train.adam_beta1", t.adam_beta1, 0, 1),
        ("train.adam_beta2", t.adam_beta2, 0, 1),
        ("train.max_grad_norm", t.max_grad_norm, 0, None),
    ):
        closed = key != "train.learning_rate"  # a learning rate of 0 trains nothing
        ok = math.isfinite(value) and (value >= low if closed else value > low) and (high is None or value <= high)
        if not ok:
            where = f"in [{low}, {high}]" if high is not None else (f">= {low}" if closed else f"> {low}")
            raise ConfigError(f"{key} must be finite and {where}, got {value}")
    if t.resume_changes:
        # and the content fingerprints a resume compares (align.resume.FINGERPRINTS)
        known = [f"{s}.{k}" for s, section in cfg.to_dict().items() for k in section] + ["data", "eval_data", "model"]
        for key in t.resume_changes:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                raise ConfigError(
                    f"train.resume_changes: unknown config key {key!r}"
                    + (f"; did you mean {close[0]!r}?" if close else "; give dotted keys such as loss.beta")
                )


def _validate_model(cfg) -> None:
    if cfg.model.forward_chunk < 0:
        raise ConfigError(f"model.forward_chunk must be >= 0 (0: no chunking), got {cfg.model.forward_chunk}")
    if not cfg.model.head_chunk_mib > 0:
        raise ConfigError(f"model.head_chunk_mib must be > 0, got {cfg.model.head_chunk_mib}")
    if cfg.model.checkpoint_blocks is not None:
        if cfg.model.checkpoint_blocks < 0:
            raise ConfigError(
                f"model.checkpoint_blocks must be >= 0 (null: all blocks), got {cfg.model.checkpoint_blocks}"
            )
        if not cfg.model.gradient_checkpointing:
            raise ConfigError(
                "model.checkpoint_blocks chooses which blocks gradient checkpointing recomputes; it needs "
                "model.gradient_checkpointing=true"
            )


def _validate_data_and_behaviour(cfg) -> None:
    if not 0 <= cfg.data.eval_fraction < 1:
        raise ConfigError(f"data.eval_fraction must be in [0, 1), got {cfg.data.eval_fraction}")
    bh = cfg.behaviour
    if bh.samples_per_prompt < 1:
        raise ConfigError(f"behaviour.samples_per_prompt must be >= 1, got {bh.samples_per_prompt}")
    if bh.eval_steps is not None and bh.eval_steps < 1:
        raise ConfigError(f"behaviour.eval_steps must be >= 1 (null: at every evaluation), got {bh.eval_steps}")
    bh.check_sampler("behaviour.")
    if bh.max_prompts is not None and bh.max_prompts < 1:
        raise ConfigError(f"behaviour.max_prompts must be >= 1, got {bh.max_prompts}")
    if bh.judge and bh.reward_model:
        raise ConfigError("behaviour: set behaviour.judge or behaviour.reward_model, not both")
    if bh.kl_samples < 0 or bh.kl_samples == 1:
        raise ConfigError(
            f"behaviour.kl_samples must be 0 (off) or >= 2 (its Monte Carlo SE needs two draws), got {bh.kl_samples}"
        )
    if bh.prompts:
        check_prompt_file(bh.prompts)
    if bh.judge:
        load_function(bh.judge, "behaviour.judge")  # a typo fails at start-up, before anything is written


def validate_dpo(cfg) -> None:
    validate_estimators(cfg, (("estimator", 1), ("eval", 2)))
    validate_loss(cfg)


def validate_estimators(cfg, sections) -> None:
    """The estimator sections ``(name, least n_samples)``: the coupling shorthand, n_samples, stratified groups."""
    for section, least in sections:
        est = getattr(cfg, section)
        if est.coupling is not None:
            est.share_policy_reference = est.share_chosen_rejected = est.coupling == "coupled"
        if est.n_samples < least:
            why = " (the Monte Carlo standard errors of the eval metrics need two draws)" if section == "eval" else ""
            raise ConfigError(f"{section}.n_samples must be >= {least}{why}, got {est.n_samples}")
    ev = getattr(cfg, "eval", None)
    if ev is not None and ev.stratified and (ev.mc_groups < 1 or ev.n_samples % ev.mc_groups):
        raise ConfigError(
            f"eval.mc_groups={ev.mc_groups}: stratified held-out draws are made as independent groups "
            f"whose spread gives the Monte Carlo errors; eval.n_samples ({ev.n_samples}) must be a "
            f"multiple of it (>= 1)"
        )


def validate_loss(cfg) -> None:
    if not 0 <= cfg.loss.label_smoothing < 0.5:
        raise ConfigError(f"loss.label_smoothing must be in [0, 0.5), got {cfg.loss.label_smoothing}")
    if not (math.isfinite(cfg.loss.beta) and cfg.loss.beta > 0):
        raise ConfigError(f"loss.beta must be finite and > 0, got {cfg.loss.beta}")
    if cfg.loss.rpo_alpha is not None and not (math.isfinite(cfg.loss.rpo_alpha) and cfg.loss.rpo_alpha >= 0):
        raise ConfigError(f"loss.rpo_alpha must be finite and >= 0 (null: off), got {cfg.loss.rpo_alpha}")


BEHAVIOUR_KINDS = ("everyday", "borderline", "harmful")


def check_prompt_file(path: str) -> list[dict]:
    """``behaviour.prompts``: JSON lines ``{"prompt": str, "kind": everyday|borderline|harmful, ...}``; a missing
    file or a bad line is one ConfigError naming ``path:line``. Returns the records."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"behaviour.prompts={path}: no such file")
    rows = []
    try:
        text = p.read_text()
    except UnicodeDecodeError as e:
        raise ConfigError(f"behaviour.prompts={path}: not UTF-8 ({e.reason})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"behaviour.prompts: {path}:{n}: not JSON ({e.msg})") from None
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("prompt"), str)
            or row.get("kind") not in BEHAVIOUR_KINDS
        ):
            raise ConfigError(
                f'behaviour.prompts: {path}:{n}: expected {{"prompt": str, "kind": one of {BEHAVIOUR_KINDS}}}'
            )
        rows.append(row)
    if not rows:
        raise ConfigError(f"behaviour.prompts={path}: no prompts")
    return rows
