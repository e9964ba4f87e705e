"""Loading a masked-diffusion LM: a hub id, a local directory, ``tiny:llada`` / ``tiny:dream``, a LoRA training
output (its base with the adapter merged) or a training ``checkpoint-N`` (the config it records says what to
build); and where a model's tokenizer is."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModel, PreTrainedConfig

from align.checkpoints import recorded_config  # the layout of a training checkpoint is align.checkpoints'
from align.models.registry import NATIVE
from align.models.running import add_lora
from align.models.source import check_local, hub_errors
from align.models.tiny import tiny_model

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def load_model(
    name_or_path: str, *, dtype=None, attn_implementation: str | None = None, trust_remote_code: bool = False, **kwargs
):
    """Load a masked-diffusion LM. Returns a module with ``forward(input_ids, attention_mask)`` -> ``.logits``.

    ``model_type: llada`` and ``Dream`` load into align's native implementation
    (no remote code). Other model types load through ``AutoModel`` only with
    ``trust_remote_code=True``. ``tiny:llada`` / ``tiny:dream`` build the
    bundled tiny random models offline.
    """
    dtype = resolve_dtype(dtype)
    if not name_or_path.startswith("tiny:") and not (Path(name_or_path) / "config.json").exists():
        adapter = adapter_dir(name_or_path)
        if adapter is not None:  # a LoRA training output: its base, with the adapter merged in
            return _load_adapter(
                adapter, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
            )
        if (Path(name_or_path) / "trainer_state.json").exists():  # a training checkpoint (checkpoint-N)
            return _load_checkpoint(Path(name_or_path), dtype=dtype, attn_implementation=attn_implementation)
    if name_or_path.startswith("tiny:"):
        model = tiny_model(name_or_path.removeprefix("tiny:"))
        model.config._attn_implementation = attn_implementation or "sdpa"
        return model.to(dtype) if dtype is not None else model
    check_local(name_or_path)
    with hub_errors(name_or_path):
        config_dict, _ = PreTrainedConfig.get_config_dict(
            name_or_path, **{k: v for k, v in kwargs.items() if k in ("revision", "token", "cache_dir")}
        )
    model_type = config_dict.get("model_type")
    if model_type in NATIVE:
        _, model_cls = NATIVE[model_type]
        with hub_errors(name_or_path):
            return model_cls.from_pretrained(
                name_or_path, dtype=dtype, attn_implementation=attn_implementation or "sdpa", **kwargs
            )
    if not trust_remote_code:
        raise ValueError(
            f"{name_or_path}: model_type {model_type!r} has no native implementation in align "
            f"(native: {sorted(NATIVE)}). To load it with the checkpoint's own code, pass trust_remote_code=True "
            "(CLI: model.trust_remote_code=true); its forward must accept (input_ids, attention_mask) and return "
            ".logits."
        )
    return AutoModel.from_pretrained(
        name_or_path, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=True, **kwargs
    )


def adapter_dir(path) -> Path | None:
    """The LoRA adapter of a training output: ``path`` itself or ``path/adapter`` (``final/``), else None."""
    if str(path).startswith("tiny:"):
        return None
    for d in (Path(path), Path(path) / "adapter"):
        if (d / "adapter_config.json").exists():
            return d
    return None


def adapter_base(path) -> str | None:
    """The base model a LoRA output or training checkpoint was trained from, or None if it is not one."""
    d = adapter_dir(path)
    if d is not None:
        return json.loads((d / "adapter_config.json").read_text()).get("base_model_name_or_path")
    run = recorded_config(Path(path))
    if run is not None and run.get("lora", {}).get("enabled"):
        return run["model"]["name_or_path"]
    return None


def tokenizer_source(model: str) -> str:
    """Where the tokenizer of ``model`` is: the directory itself when it holds one, else its base model's
    (a LoRA output or a training checkpoint)."""
    if Path(model, "tokenizer_config.json").exists() or not Path(model).exists():
        return model
    return adapter_base(model) or model


def _load_adapter(adapter: Path, *, dtype, attn_implementation, trust_remote_code):
    from peft import PeftModel

    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{adapter}: the adapter does not record its base model (base_model_name_or_path); "
            f"load the base with load_model and apply it with peft.PeftModel.from_pretrained"
        )
    model = load_model(base, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


def _load_checkpoint(path: Path, *, dtype, attn_implementation):
    """A ``checkpoint-N`` of a training run: the run's base (config.yaml beside it) with the checkpoint's
    adapter merged, or its full weights."""
    from safetensors.torch import load_file

    run = recorded_config(path)
    weights = path / "model.safetensors"
    if run is None or not weights.exists():
        raise ValueError(
            f"{path}: not a loadable training checkpoint (needs model.safetensors here and the config "
            f"it was trained with, in its trainer_state.json or {path.parent}/config.yaml; DeepSpeed "
            f"checkpoints are read by resuming the run)"
        )
    model = load_model(run["model"]["name_or_path"], dtype=dtype, attn_implementation=attn_implementation)
    state = load_file(str(weights))
    lora = run.get("lora", {})
    if lora.get("enabled"):
        model = add_lora(
            model, r=lora["r"], alpha=lora["alpha"], dropout=0.0, target_modules=lora.get("target_modules")
        )
    expected = (
        {n for n, p in model.named_parameters() if p.requires_grad} if lora.get("enabled") else set(model.state_dict())
    )
    missing = sorted(expected - state.keys())
    if missing:
        raise ValueError(f"{weights}: {len(missing)} expected tensors missing, e.g. {missing[0]}")
    model.load_state_dict(state, strict=False)
    return model.merge_and_unload() if lora.get("enabled") else model
