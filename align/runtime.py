"""Where a run executes: the accelerator (one process, DDP or DeepSpeed ZeRO), its precision, the launch in words,
and the settings that are refused or adjusted because of the ZeRO stage.

Everything here reads the launcher's environment (``accelerate launch`` / ``torchrun`` and the accelerate or
DeepSpeed config it names); the recipe says nothing about hardware. Exercised by every training test, e.g.
``accelerate launch --config_file recipes/accelerate/zero3.yaml align/train_dpo.py recipe=demo``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from align.config import ConfigError

MIXED = {"bfloat16": "bf16", "float16": "fp16", "float32": "no"}  # model.dtype -> the matching mixed precision


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
            return MIXED[cfg.model.dtype]
    return None


def check_precision(dtype: str, mixed: str, deepspeed: bool) -> str:
    """Fail when ``model.dtype`` and the effective precision disagree; return a description for the log.

    Under DeepSpeed the engine holds the weights in its own precision, so it must be the checkpoint's:
    bf16 weights trained with bf16 off would silently train and save fp32 (and fp32 weights under bf16
    would be cast). Without DeepSpeed, autocast to bf16/fp16 over fp32 weights is fine; bf16 weights with
    fp16 autocast (or the reverse) is not.
    """
    expected = MIXED[dtype]
    if deepspeed and mixed != expected:
        raise ConfigError(
            f"model.dtype={dtype} but DeepSpeed would train in {mixed!r} (mixed precision from the "
            f"accelerate config or train.mixed_precision); make them agree: model.dtype=bfloat16 with "
            f"mixed_precision bf16, or model.dtype=float32 with mixed_precision no"
        )
    if not deepspeed and expected in ("bf16", "fp16") and mixed in ("bf16", "fp16") and mixed != expected:
        raise ConfigError(f"model.dtype={dtype} cannot run under {mixed} autocast; set train.mixed_precision=no")
    return f"weights {dtype}, mixed precision {mixed}" + (" (DeepSpeed)" if deepspeed else "")


def build_accelerator(cfg, out: Path, logging_dir: Path):
    """The run's ``Accelerator``, after checking that it sees every process the launcher started."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration

    t = cfg.train
    # Without cpu=True, accelerate on a GPU-less machine picks no backend under torchrun; but cpu=True
    # turns DeepSpeed off, so DeepSpeed on CPU (DS_ACCELERATOR=cpu) keeps cpu=False.
    # DeepSpeed on CPU also needs an explicit gloo backend, or accelerate sets the world size to 1.
    use_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    on_cpu = not torch.cuda.is_available()
    handlers = [InitProcessGroupKwargs(backend="gloo")] if on_cpu and use_deepspeed else []
    acc = Accelerator(
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        mixed_precision=requested_precision(cfg, use_deepspeed),
        log_with=None if t.report_to == "none" else t.report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(logging_dir.parent)),
        cpu=on_cpu and not use_deepspeed,
        kwargs_handlers=handlers,
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != acc.num_processes:
        raise RuntimeError(
            f"launcher started {launched} processes but accelerate sees a world of {acc.num_processes} "
            f"({acc.distributed_type}); every rank would train on everything"
        )
    return acc


def uses_deepspeed(acc) -> bool:
    return acc.distributed_type.name == "DEEPSPEED"


def zero_stage(acc) -> int | None:
    """The ZeRO stage of a DeepSpeed launch, None without DeepSpeed."""
    if not uses_deepspeed(acc):
        return None
    return acc.state.deepspeed_plugin.deepspeed_config["zero_optimization"]["stage"]


def refuse_unsupported(cfg, acc) -> None:
    """Settings this launch cannot honour, refused at start-up (ConfigError, one line naming the key)."""
    m, deepspeed, zero3 = cfg.model, uses_deepspeed(acc), zero_stage(acc) == 3
    if cfg.lora.enabled and cfg.train.save_merged and zero3:
        # merging a deep copy of a partitioned model writes empty (0,)-shaped tensors
        raise ConfigError(
            "train.save_merged=true is not supported under ZeRO-3: the base weights are partitioned "
            "across ranks. Train without it (final/adapter is saved), then load the base with the "
            "adapter on one machine and merge there (peft's merge_and_unload)"
        )
    if not cfg.lora.enabled and m.dtype != "float32" and not deepspeed:
        # plain AdamW on bf16/fp16 weights keeps its moments in that dtype and rounds small updates away
        # (at lr 5e-7 nearly every weight stays unchanged); DeepSpeed keeps fp32 master weights instead
        raise ConfigError(
            f"full fine-tuning (lora.enabled=false) with model.dtype={m.dtype} outside DeepSpeed "
            f"would train {m.dtype} weights with {m.dtype} optimizer state, and small updates round "
            f"away. Use model.dtype=float32 (add train.mixed_precision=bf16 for bf16 compute), or "
            f"launch with a ZeRO config (recipes/accelerate/zero2.yaml, zero3.yaml), which keeps "
            f"fp32 master weights"
        )
    if m.compile and zero3:
        raise ConfigError(
            "model.compile=true is not supported under ZeRO-3 (its parameter gathering hooks run "
            "inside every block); use it with DDP, ZeRO-2 or one process"
        )


def configure_deepspeed(acc, t) -> None:
    """Fill in what the DeepSpeed config cannot know before ``accelerator.prepare`` (no-op without DeepSpeed)."""
    if not uses_deepspeed(acc):
        return
    ds = acc.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = t.per_device_train_batch_size  # we batch: no dataloader to read it off
    if ds.get("gradient_clipping") == "auto":
        ds["gradient_clipping"] = t.max_grad_norm
    if str(ds.get("bf16", {}).get("enabled", False)).lower() in ("true", "auto"):
        # ZeRO-1/2 in bf16 apply a NaN/inf gradient unless asked to check (fp32 and ZeRO-3 always check):
        # the non-finite guard needs the engine to skip such a step
        ds["bf16"].setdefault("check_grad_overflow", True)


def describe_launch(acc) -> str:
    """The launch in words: 'single process (cpu)', 'DDP, 8 ranks (cuda)', 'DeepSpeed ZeRO-3, 16 ranks (cuda)'."""
    world = acc.num_processes
    ranks = f", {world} ranks" if world > 1 else ""
    if uses_deepspeed(acc):
        what = f"DeepSpeed ZeRO-{zero_stage(acc)}" + (ranks or ", 1 rank")
    elif world == 1:
        what = "single process"
    else:
        kind = acc.distributed_type.name
        what = ("DDP" if kind.startswith("MULTI_") else kind.replace("_", " ")) + ranks
    return f"{what} ({acc.device.type})"


def run_folder_name() -> str:
    """``<date>_<host>`` as HF's Trainer names a run's TensorBoard folder (``Nov26_12-40-03_host``)."""
    import socket
    from datetime import datetime

    return f"{datetime.now():%b%d_%H-%M-%S}_{socket.gethostname()}"
