"""Typed configuration for DPO training: every default, once, with help text.

Flow: recipe YAML -> :func:`load_config` (with ``key=value`` overrides, dotted
for nested fields) -> :class:`Config` -> the trainer unpacks plain values.
Unknown keys and wrong types fail at start-up with the key named and a
close match suggested. ``recipe=`` takes a name in ``recipes/`` or a path.

Field names follow TRL's ``DPOConfig`` / transformers' ``TrainingArguments``
where those exist (``beta``, ``loss_type``, ``label_smoothing``,
``rpo_alpha``, ``per_device_train_batch_size`` …).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from align.config_checks import validate, validate_dpo
from align.errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


def opt(
    default,
    help: str,
    choices: tuple | None = None,
    *,
    trajectory: bool = True,
    held_out: bool = False,
    reference: bool = False,
):
    """A config field with help text (and allowed values) and its roles, declared once here and read by resume,
    ablate, the reports and the reference cache (:func:`keys_with`): ``trajectory=False``, the key cannot change
    what the weights become (where, how fast and how loudly a run goes; a resume never refuses it);
    ``held_out=True``, it decides the held-out set an evaluation scores (an ablation's arms must agree on it);
    ``reference=True``, it decides the reference model's log-likelihood terms of a pair at an epoch (the key of
    ``train.precompute_ref_log_probs``'s cache, ``DPOObjective.cache_key``)."""
    meta = {"help": help, "trajectory": trajectory, "held_out": held_out, "reference": reference}
    if choices:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SamplerSettings:
    """LLaDA's sampler (``align.sampler.generate``) as the behaviour check, online DPO, the sampler CLI and
    lm-eval's ``generate_until`` take it: the five settings with their help, and one check of them. A user of it
    changes a default with :func:`sampler_default`."""

    gen_length: int = opt(48, "tokens generated per answer")
    block_length: int = opt(16, "semi-autoregressive block length (gen_length is a multiple of it)")
    steps: int = opt(24, "denoising steps in all (a multiple of the number of blocks)")
    temperature: float = opt(1.0, "sampling temperature (0 = greedy; 1 with random remasking draws from the model)")
    remasking: str = opt(
        "random",
        "which predictions a step keeps: random order (with temperature 1, a sample of the model's own "
        "distribution) or LLaDA's low_confidence (favours confident, e.g. short, answers)",
        ("random", "low_confidence"),
    )

    def check_sampler(self, prefix: str = "") -> None:
        """ConfigError naming ``prefix`` + the key when the settings cannot run."""
        for key in ("gen_length", "block_length", "steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{prefix}{key} must be >= 1, got {getattr(self, key)}")
        if self.gen_length % self.block_length or self.steps % (self.gen_length // self.block_length):
            raise ConfigError(
                f"{prefix}gen_length ({self.gen_length}) must be a multiple of block_length ({self.block_length}) "
                f"and {prefix}steps ({self.steps}) a multiple of the number of blocks"
            )
        if not (self.temperature >= 0 and self.temperature != float("inf")):
            raise ConfigError(f"{prefix}temperature must be >= 0 and finite, got {self.temperature}")

    def sampler_kwargs(self) -> dict:
        """The settings as ``align.sampler.generate``'s keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(SamplerSettings)}


def sampler_default(key: str, default):
    """A :class:`SamplerSettings` field with another default (its help, choices and roles kept)."""
    return field(default=default, metadata=SamplerSettings.__dataclass_fields__[key].metadata)


def keys_with(cfg, role: str, value=True) -> set[str]:
    """The dotted keys of config ``cfg`` (an instance or a class) whose field declares ``role`` as ``value``
    (:func:`opt`); a section class's ``ROLES = {role: value}`` holds for all its fields."""
    instance = cfg() if isinstance(cfg, type) else cfg
    found = set()
    for section in dataclasses.fields(instance):
        cls = type(getattr(instance, section.name))
        for f in dataclasses.fields(cls):
            declared = cls.ROLES[role] if role in getattr(cls, "ROLES", {}) else f.metadata.get(role)
            if declared == value:
                found.add(f"{section.name}.{f.name}")
    return found


@dataclass
class ModelArgs:
    name_or_path: str = opt(
        "GSAI-ML/LLaDA-8B-Instruct", "hub id, local directory, or tiny:llada / tiny:dream", reference=True
    )
    tokenizer: str | None = opt(None, "tokenizer hub id or directory; defaults to name_or_path")
    dtype: str = opt("bfloat16", "weights dtype", ("bfloat16", "float32", "float16"), reference=True)
    attn_implementation: str = opt("sdpa", "attention kernel of the native models", ("sdpa", "eager"), trajectory=False)
    trust_remote_code: bool = opt(
        False, "allow checkpoint code for model types align has no native class for", trajectory=False
    )
    gradient_checkpointing: bool = opt(True, "recompute block activations in backward (saves memory)", trajectory=False)
    forward_chunk: int = opt(
        0,
        "noised sequences per backbone chunk when scoring (0: all 2·b·n at once); each chunk "
        "is recomputed in backward, so a step holds one chunk's activations, for one more "
        "policy forward",
        trajectory=False,
    )
    head_chunk_mib: float = opt(
        128,
        "fp32 [rows, vocab] logits buffer of the LM head when scoring, in MiB (smaller: "
        "less memory, more passes over the head weight)",
        trajectory=False,
    )
    checkpoint_blocks: int | None = opt(
        None,
        "with gradient_checkpointing: how many blocks (the first ones) recompute "
        "their activations in backward (null: all); fewer is faster and holds "
        "more activation memory",
        trajectory=False,
    )
    compile: bool = opt(
        False,
        "torch.compile each transformer block in place (native models; not under ZeRO-3): "
        "fused element-wise kernels, compiled once for all blocks in the first steps",
        trajectory=False,
    )
    compile_backend: str = opt(
        "inductor",
        "torch.compile backend for model.compile: inductor generates fused kernels; aot_eager traces the same "
        "forward and backward graphs without generating kernels (debugging, quick CPU checks)",
        ("inductor", "aot_eager"),
        trajectory=False,
    )


@dataclass
class LoraArgs:
    enabled: bool = opt(
        True, "train a LoRA adapter (reference = adapter disabled); false = full fine-tuning", reference=True
    )
    r: int = opt(16, "LoRA rank")
    alpha: int = opt(32, "LoRA alpha (scaling = alpha / r)")
    dropout: float = opt(0.05, "dropout on the LoRA input")
    target_modules: list[str] | None = opt(None, "module names/regex to adapt; default: the family's attention + MLP")


@dataclass
class DataSourceArgs:
    """What DPO and SFT data share: where the records come from, the held-out data, lengths, bad records.
    ``dataset`` and ``format`` are given by each kind of data (:class:`DataArgs`, :class:`SFTDataArgs`)."""

    dataset: str = opt(
        "", "hub id, local .jsonl/.json/.parquet/.csv file, or save_to_disk directory", held_out=True, reference=True
    )
    format: str = opt("auto", "record schema", held_out=True, reference=True)
    config_name: str | None = opt(None, "hub dataset configuration name")
    train_split: str = opt("train", "split to train on")
    eval_dataset: str | None = opt(
        None, "separate held-out dataset (hub id or local file)", held_out=True, reference=True
    )
    eval_split: str | None = opt(
        None, "held-out split of a hub dataset (default 'test'); an error for local files", held_out=True
    )
    eval_fraction: float = opt(
        0.05,
        "local file without eval_dataset: hold out this seeded fraction of its records "
        "(0 = refuse to start unless eval_dataset is given or train.do_eval=false)",
        held_out=True,
        reference=True,
    )
    eval_split_seed: int = opt(
        0, "seed of the held-out fraction (independent of train.seed, so seeds share it)", held_out=True
    )
    max_prompt_length: int = opt(256, "prompt tokens kept (truncation keeps the end)", held_out=True, reference=True)
    over_long_prompt: str = opt(
        "truncate", "prompts longer than max_prompt_length", ("truncate", "skip", "error"), held_out=True
    )
    on_bad_record: str = opt(
        "error",
        "malformed/empty/identical records: fail naming the record, or count and skip",
        ("error", "skip"),
        held_out=True,
    )
    max_train_examples: int | None = opt(None, "use at most this many training records")
    max_eval_examples: int | None = opt(None, "use at most this many held-out records", trajectory=False, held_out=True)


@dataclass
class DataArgs(DataSourceArgs):
    """Preference data (DPO)."""

    dataset: str = opt(
        "PKU-Alignment/PKU-SafeRLHF",
        "hub id, local .jsonl/.json/.parquet/.csv file, or save_to_disk directory",
        held_out=True,
        reference=True,
    )
    format: str = opt(
        "pku_saferlhf",
        "record schema (auto: chosen from the first record's fields, logged)",
        ("pku_saferlhf", "ultrafeedback", "hh_rlhf", "pairs", "auto"),
        held_out=True,
        reference=True,
    )
    preference: str = opt(
        "safer",
        "pku_saferlhf: chosen is the safer or the better response",
        ("safer", "better"),
        held_out=True,
        reference=True,
    )
    max_response_length: int = opt(256, "response tokens kept, EOS included", held_out=True, reference=True)


@dataclass
class SFTDataArgs(DataSourceArgs):
    """Prompt/response data (SFT). The fields they share mean what they mean for DPO data."""

    dataset: str = opt(
        "data/tiny_sft_train.jsonl",
        "hub id, local .jsonl/.json/.parquet/.csv file, or save_to_disk directory",
        held_out=True,
    )
    format: str = opt(
        "prompt_response",
        "record schema: prompt+response, a messages list ending in the answer, or "
        "raw text (all of it scored: pretraining); auto: from the first record's "
        "fields",
        ("prompt_response", "messages", "text", "auto"),
        held_out=True,
    )
    response_padding: str = opt(
        "batch",
        "EOS-extend responses to the longest of the micro-batch (LLaDA) or to "
        "max_response_length (teaches fixed-length generation to end in EOS)",
        ("batch", "max_length"),
    )
    max_response_length: int = opt(256, "response tokens kept, EOS included", held_out=True)


@dataclass
class SFTArgs:
    estimator: str = opt(
        "time_integral",
        "mask draw: time_integral is LLaDA's t ~ U(0,1) with weight 1/t "
        "(docs/method.md §6); the others are unbiased alternatives",
        ("time_integral", "time_free", "any_order"),
    )
    n_samples: int = opt(1, "mask draws per sequence per step (LLaDA: 1)")
    stratified: bool = opt(True, "stratify t across a sequence's draws (n_samples > 1)")


@dataclass
class BehaviourArgs(SamplerSettings):
    ROLES = {"trajectory": False}  # the behaviour check samples; it never changes what the weights become
    prompts: str | None = opt(
        None,
        "jsonl of held-out prompts {prompt, kind: everyday|borderline|harmful, [task_id]} to "
        "sample and judge at every evaluation (eval/refusal_rate, eval/over_refusal_rate, "
        "eval/borderline_refusal_rate; with task ids eval/reward); null = off",
    )
    max_prompts: int | None = opt(None, "judge at most this many prompts of each kind")
    show: int = opt(3, "print this many prompts of each kind with their answers before and after training")
    samples_per_prompt: int = opt(
        1,
        "answers sampled per prompt: rates are means over prompts of each prompt's refusal "
        "share, with standard errors over prompts (several samples separate a prompt's "
        "tendency from the luck of one draw)",
    )
    seed: int | None = opt(
        None,
        "seeds the sampler; null: train.seed, so every run seed samples anew and runs with "
        "the same seed (the arms of an ablation) share the sampler's random numbers",
    )
    eval_steps: int | None = opt(
        None,
        "judge behaviour only at evaluations whose step is a multiple of this (always at "
        "the first and last); null: at every evaluation",
    )
    judge: str | None = opt(
        None,
        "module:function or path/file.py:function scoring each answer, function(prompts, "
        "answers, **record fields) -> scores (align.judges): eval/reward is then the mean "
        "score (default: the bundled world's correct behaviour, where prompts carry task ids)",
    )
    reward_model: str | None = opt(
        None,
        "hub id or directory of an AutoModelForSequenceClassification whose first logit "
        "scores each answer: eval/reward is then the mean score",
    )
    reward_model_dtype: str = opt("bfloat16", "reward model weights dtype", ("bfloat16", "float32", "float16"))
    kl_samples: int = opt(
        4,
        "mask draws per sampled answer for eval/kl, KL(policy || reference) on the policy's own "
        "answers as a difference of likelihood bounds with shared masks (coupled); 0 = off; needs a "
        "reference (DPO, online DPO)",
    )


@dataclass
class EstimatorArgs:
    ROLES = {"reference": True}  # the reference's draws follow the estimator's settings (and the evaluation's)
    estimator: str = opt(
        "time_free", "likelihood estimator (docs/method.md §2)", ("time_free", "any_order", "time_integral")
    )
    n_samples: int = opt(4, "Monte Carlo samples per log-likelihood term")
    coupling: str | None = opt(
        None,
        "shorthand: coupled = both shares on, decoupled = both off",
        ("coupled", "decoupled"),
        trajectory=False,
    )
    share_policy_reference: bool = opt(True, "policy and reference see the same masks")
    share_chosen_rejected: bool = opt(True, "chosen and rejected share the same masks")
    stratified: bool = opt(True, "stratify the mask count across a pair's samples")


@dataclass
class EvalArgs(EstimatorArgs):
    """How held-out pairs are scored: an evaluator of its own, never the training estimator (unless set equal).
    The estimator's settings (``EstimatorArgs``, with the evaluation's own defaults) plus the Monte Carlo groups
    and the seed of the draws.

    Every run that shares these settings and the held-out data is scored on the same masks, whatever its
    training estimator or train.seed: the draws come from generators seeded by (eval.seed, example id)."""

    estimator: str = opt(
        "time_free",
        "likelihood estimator of the evaluation (docs/method.md §2)",
        ("time_free", "any_order", "time_integral"),
    )
    n_samples: int = opt(
        16,
        "Monte Carlo samples per held-out log-likelihood term (>= 2: the eval metrics' Monte "
        "Carlo standard errors come from their spread)",
    )
    mc_groups: int = opt(
        4,
        "stratified: the n draws are this many independent stratified groups, and the Monte Carlo "
        "standard errors come from the spread of the group means; n_samples must be a multiple. "
        "1: one stratified set, whose errors (from the spread of its draws) are upper bounds. "
        "Unstratified draws are iid and need no groups",
    )
    seed: int = opt(
        0,
        "seeds the held-out draws (with the example id); independent of train.seed, so every run and "
        "seed is scored on the same masks",
    )


@dataclass
class LossArgs:
    loss_type: str = opt("sigmoid", "preference loss on the margin Δ", ("sigmoid", "ipo", "hinge", "robust"))
    beta: float = opt(0.1, "DPO temperature β")
    label_smoothing: float = opt(0.0, "cDPO label smoothing (sigmoid) / noise rate (robust), in [0, 0.5)")
    rpo_alpha: float | None = opt(None, "weight of the masked-diffusion NLL on chosen (per token); null = off")


@dataclass
class TrainArgs:
    output_dir: str = opt("outputs/dpo", "checkpoints, logs, resolved config and the final model", trajectory=False)
    seed: int = opt(42, "seeds init, data order and (with example id, epoch) every mask draw", reference=True)
    num_train_epochs: int = opt(1, "passes over the training data")
    max_steps: int = opt(-1, "optimizer steps; > 0 overrides num_train_epochs")
    per_device_train_batch_size: int = opt(1, "pairs per device per micro-step", trajectory=False)
    per_device_eval_batch_size: int = opt(2, "pairs per device per eval step", trajectory=False)
    gradient_accumulation_steps: int = opt(1, "micro-steps per optimizer step", trajectory=False)
    learning_rate: float = opt(5e-7, "peak learning rate")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    adam_beta1: float = opt(0.9, "AdamW β1")
    adam_beta2: float = opt(0.999, "AdamW β2")
    warmup_ratio: float = opt(0.1, "fraction of steps with linear warm-up")
    lr_scheduler_type: str = opt("cosine", "schedule after warm-up", ("cosine", "linear", "constant"))
    max_grad_norm: float = opt(1.0, "gradient clipping; 0 disables")
    mixed_precision: str | None = opt(
        None,
        "override the launcher's mixed precision (null = the accelerate/DeepSpeed "
        "config's; must agree with model.dtype under DeepSpeed)",
        ("no", "bf16", "fp16"),
    )
    logging_steps: int = opt(10, "log every N optimizer steps", trajectory=False)
    do_eval: bool = opt(
        True, "evaluate on held-out pairs (see data.eval_dataset / eval_split / eval_fraction)", trajectory=False
    )
    eval_steps: int = opt(
        100, "evaluate every N optimizer steps (and at the end); 0 = only at the end", trajectory=False
    )
    save_steps: int = opt(
        500, "checkpoint every N optimizer steps (and at the end; also on SIGTERM/SIGINT)", trajectory=False
    )
    precompute_ref_log_probs: bool = opt(
        False,
        "DPO: compute the reference's log-probs of each epoch's draws before "
        "the epoch (no-grad batches of per_device_eval_batch_size, kept under "
        "output_dir/ref_logps); the step then runs the policy only",
        trajectory=False,
    )
    on_nonfinite: str = opt(
        "stop",
        "a step whose loss or gradient norm is NaN/inf on any rank is never applied; then "
        "stop (after a checkpoint of the last good state, naming the step and its examples) "
        "or skip it and go on (counted in the nonfinite_steps metric)",
        ("stop", "skip"),
        trajectory=False,
    )
    save_total_limit: int | None = opt(2, "keep at most this many checkpoints", trajectory=False)
    resume_from_checkpoint: str | None = opt(
        None,
        "'latest' (the newest checkpoint that verifies; in an empty or new "
        "output_dir: start) or a checkpoint directory",
        trajectory=False,
    )
    resume_changes: list[str] | None = opt(
        None,
        "keys a resume may change from the checkpoint's settings (e.g. "
        "[loss.beta,train.learning_rate]); a resume that changes any other "
        "setting deciding the trajectory is refused naming it; data, eval_data and "
        "model name changed content (the encoded data, the base weights) under any path. "
        "Recorded in output_dir/resumes.jsonl",
        trajectory=False,
    )
    overwrite_output_dir: bool = opt(
        False,
        "start afresh in an output_dir that holds another run (its metrics, "
        "checkpoints and final model are deleted); otherwise such a start is refused",
        trajectory=False,
    )
    report_to: str = opt("tensorboard", "metrics backend", ("tensorboard", "wandb", "none"), trajectory=False)
    logging_dir: str | None = opt(
        None,
        "TensorBoard folder of this launch (null: output_dir/runs/<date>_<host>, a "
        "new one per launch, as HF's Trainer)",
        trajectory=False,
    )
    run_name: str | None = opt(None, "wandb run name (TensorBoard folders: train.logging_dir)", trajectory=False)
    save_merged: bool = opt(False, "LoRA: also save merged full weights in the published layout", trajectory=False)
    push_to_hub: bool = opt(
        False, "upload final/ (weights, model card, training config) to the Hub at the end", trajectory=False
    )
    hub_model_id: str | None = opt(
        None, "the Hub repo (user/name or org/name; default: output_dir's name)", trajectory=False
    )
    hub_private_repo: bool = opt(False, "create the Hub repo private", trajectory=False)
    hub_strategy: str = opt(
        "end",
        "what is uploaded: final/ at the end, or also every kept checkpoint",
        ("end", "all_checkpoints"),
        trajectory=False,
    )
    progress_bar: bool = opt(True, "show a progress bar on the main process", trajectory=False)
    disable_dropout: bool = opt(
        True,
        "switch off every dropout module of the policy (default on, as in DPO practice): the policy and "
        "reference terms of a shared draw then differ by the weights alone",
        reference=True,
    )


@dataclass
class TrainingConfig:
    """What every training entry point's config has (TRL's base-config pattern): the model, its adapter, the data,
    the behaviour check and the loop. An objective's config subclasses it, narrows ``data`` and adds its own
    sections (kept between ``data`` and ``behaviour`` in :meth:`to_dict`, so config.yaml reads model → data →
    objective → behaviour → train) and its own checks (:meth:`validate`)."""

    model: ModelArgs = field(default_factory=ModelArgs)
    lora: LoraArgs = field(default_factory=LoraArgs)
    data: DataSourceArgs = field(default_factory=DataSourceArgs)
    behaviour: BehaviourArgs = field(default_factory=BehaviourArgs)
    train: TrainArgs = field(default_factory=TrainArgs)

    def to_dict(self) -> dict:
        tree = dataclasses.asdict(self)
        first, last = ("model", "lora", "data"), ("behaviour", "train")
        middle = [k for k in tree if k not in first + last]
        return {k: tree[k] for k in (*first, *middle, *last)}

    def validate(self) -> None:
        """Checks of the objective's own sections, each naming the key (the common ones are
        ``align.config_checks.validate``'s)."""


@dataclass
class Config(TrainingConfig):
    """DPO training (``align.train_dpo``)."""

    data: DataArgs = field(default_factory=DataArgs)
    estimator: EstimatorArgs = field(default_factory=EstimatorArgs)
    loss: LossArgs = field(default_factory=LossArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)

    def validate(self) -> None:
        validate_dpo(self)


@dataclass
class SFTConfig(TrainingConfig):
    """Masked-diffusion SFT (``align.train_sft``)."""

    data: SFTDataArgs = field(default_factory=SFTDataArgs)
    sft: SFTArgs = field(default_factory=SFTArgs)

    def validate(self) -> None:
        if self.sft.n_samples < 1:
            raise ConfigError(f"sft.n_samples must be >= 1, got {self.sft.n_samples}")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp, key: str):
    """Check ``value`` against annotation ``tp``; strings from the command line are converted."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("null", "none") and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif tp in (int, float):
        numeric = (int,) if tp is int else (int, float)
        if isinstance(value, numeric) and not isinstance(value, bool):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _section_keys(cls, hints) -> dict[str, list[str]]:
    """Top level: each section's key -> the full dotted names it has (``output_dir`` -> ``train.output_dir``)."""
    found: dict[str, list[str]] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            for inner in dataclasses.fields(hints[f.name]):
                found.setdefault(inner.name, []).append(f"{f.name}.{inner.name}")
    return found


def _unknown(key: str, known, sections: dict[str, list[str]] | None = None) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    prefix = key[: -len(leaf)]
    if sections:  # a top-level key that lives in a section, maybe misspelt
        close = difflib.get_close_matches(leaf, list(sections), n=1, cutoff=0.8)
        if close:
            full = " or ".join(repr(k) for k in sections[close[0]])
            return ConfigError(f"unknown config key {key!r}; keys live in sections: did you mean {full}?")
    close = difflib.get_close_matches(leaf, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(sorted(known))}"
    return ConfigError(f"unknown config key {key!r}{hint}")


def build(cls, data: dict, prefix: str = ""):
    """``cls`` from a nested mapping: unknown keys, wrong types and values outside ``choices`` fail naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown(prefix + key, fields, _section_keys(cls, hints) if not prefix else None)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, value, f"{prefix}{key}.")
            continue
        value = _coerce(value, tp, prefix + key)
        choices = fields[key].metadata.get("choices")
        if choices and value is not None and value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{prefix}{key}: {value!r} is not one of {', '.join(map(str, choices))}{hint}")
        kwargs[key] = value
    return cls(**kwargs)


def set_dotted(tree: dict, dotted: str, value) -> None:
    """``tree[a][b] = value`` for ``dotted`` = ``a.b``."""
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
    node[parts[-1]] = value


def resolve_recipe(recipe: str) -> Path:
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    named = RECIPES_DIR / f"{recipe}.yaml"
    if named.exists():
        return named
    known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    close = difflib.get_close_matches(recipe, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"recipe {recipe!r} is neither a YAML file nor one of: {', '.join(known)}{hint}")


def load_config(recipe: str | None = None, overrides: list[str] = (), cls=Config):
    """Build a ``cls`` (:class:`Config` for DPO, :class:`SFTConfig`) from a recipe (name or path) and overrides."""
    tree: dict = {}
    if recipe:
        tree = yaml.safe_load(resolve_recipe(recipe).read_text()) or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    for section in ("estimator", "eval"):
        est = tree.get(section) or {}
        if isinstance(est, dict) and est.get("coupling") is not None:
            implied = est["coupling"] == "coupled"
            # both given and agreeing (a run's config.yaml, which records the flags the shorthand set): fine
            clash = [
                k for k in ("share_policy_reference", "share_chosen_rejected") if k in est and est[k] is not implied
            ]
            if clash:
                raise ConfigError(
                    f"{section}.coupling={est['coupling']} is a shorthand for the share_* flags and "
                    f"{', '.join(f'{k}={est[k]}' for k in clash)} contradicts it; set one or the other "
                    f"({section}.coupling=null to set the flags alone)"
                )
    return validate(build(cls, tree))


def load_resolved(path: Path, cls=Config):
    """A run's resolved ``config.yaml`` back as ``cls`` (its share_* flags are what the coupling shorthand set)."""
    tree = yaml.safe_load(Path(path).read_text()) or {}
    for section in ("estimator", "eval"):
        if isinstance(tree.get(section), dict):
            tree[section]["coupling"] = None
    return validate(build(cls, tree))


def dump_config(cfg, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
