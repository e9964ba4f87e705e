"""Model layer: LLaDA and Dream as native bidirectional transformers models.

- ``load_model(name_or_path)``: a hub id, a local directory, or ``tiny:llada`` /
  ``tiny:dream`` (the bundled random tiny models used by tests and the demo);
- ``spec_for(model)``: mask/EOS/pad ids, logit shift, LoRA defaults;
- ``add_lora(model, ...)`` and the reference as the adapter disabled;
- ``save_published(model, out_dir)``: published layout (``model_type: llada``,
  published weight names), LoRA adapter and/or merged weights.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, PreTrainedConfig

from align.models.source import ModelNotFound, check_local, hub_errors  # noqa: F401  (re-exported)

from align.models.base import DiffusionLMOutput, MaskedDiffusionLM, align_logits
from align.models.dream import DreamConfig, DreamModel
from align.models.llada import LLaDAConfig, LLaDAModelLM
from align.models.spec import ModelSpec, spec_for

NATIVE = {"llada": (LLaDAConfig, LLaDAModelLM), "Dream": (DreamConfig, DreamModel)}
for _config_cls, _model_cls in NATIVE.values():
    AutoConfig.register(_config_cls.model_type, _config_cls, exist_ok=True)
    AutoModel.register(_config_cls, _model_cls, exist_ok=True)

__all__ = [
    "DiffusionLMOutput", "MaskedDiffusionLM", "LLaDAConfig", "LLaDAModelLM", "DreamConfig", "DreamModel",
    "ModelSpec", "spec_for", "load_model", "add_lora", "save_published", "logits_fn", "token_scorer",
    "adapter_in_base_dtype", "adapter_dir", "adapter_base", "tokenizer_source", "set_scoring_memory",
    "compile_blocks", "checkpoint_blocks",
]

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def load_model(name_or_path: str, *, dtype=None, attn_implementation: str | None = None,
               trust_remote_code: bool = False, **kwargs):
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
            return _load_adapter(adapter, dtype=dtype, attn_implementation=attn_implementation,
                                 trust_remote_code=trust_remote_code)
        if (Path(name_or_path) / "trainer_state.json").exists():  # a training checkpoint (checkpoint-N)
            return _load_checkpoint(Path(name_or_path), dtype=dtype, attn_implementation=attn_implementation)
    if name_or_path.startswith("tiny:"):
        from align.models.tiny import tiny_model

        model = tiny_model(name_or_path.removeprefix("tiny:"))
        model.config._attn_implementation = attn_implementation or "sdpa"
        return model.to(dtype) if dtype is not None else model
    check_local(name_or_path)
    with hub_errors(name_or_path):
        config_dict, _ = PreTrainedConfig.get_config_dict(
            name_or_path, **{k: v for k, v in kwargs.items() if k in ("revision", "token", "cache_dir")})
    model_type = config_dict.get("model_type")
    if model_type in NATIVE:
        _, model_cls = NATIVE[model_type]
        with hub_errors(name_or_path):
            return model_cls.from_pretrained(name_or_path, dtype=dtype, attn_implementation=attn_implementation or "sdpa",
                                             **kwargs)
    if not trust_remote_code:
        raise ValueError(
            f"{name_or_path}: model_type {model_type!r} has no native implementation in align "
            f"(native: {sorted(NATIVE)}). To load it with the checkpoint's own code, pass trust_remote_code=True "
            "(CLI: model.trust_remote_code=true); its forward must accept (input_ids, attention_mask) and return .logits."
        )
    return AutoModel.from_pretrained(name_or_path, dtype=dtype, attn_implementation=attn_implementation,
                                     trust_remote_code=True, **kwargs)


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
    run = _checkpoint_run_config(Path(path))
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
        raise ValueError(f"{adapter}: the adapter does not record its base model (base_model_name_or_path); "
                         f"load the base with load_model and apply it with peft.PeftModel.from_pretrained")
    model = load_model(base, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


def _checkpoint_run_config(path: Path) -> dict | None:
    """The config a checkpoint was trained with: recorded in its trainer_state.json (the run's config.yaml beside
    it for checkpoints of an older align, which recorded none)."""
    if not (path / "trainer_state.json").exists():
        return None
    recorded = json.loads((path / "trainer_state.json").read_text()).get("config")
    if recorded is not None:
        return recorded
    if not (path.parent / "config.yaml").exists():
        return None
    import yaml

    return yaml.safe_load((path.parent / "config.yaml").read_text())


def _load_checkpoint(path: Path, *, dtype, attn_implementation):
    """A ``checkpoint-N`` of a training run: the run's base (config.yaml beside it) with the checkpoint's
    adapter merged, or its full weights."""
    from safetensors.torch import load_file

    run = _checkpoint_run_config(path)
    weights = path / "model.safetensors"
    if run is None or not weights.exists():
        raise ValueError(f"{path}: not a loadable training checkpoint (needs model.safetensors here and the config "
                         f"it was trained with, in its trainer_state.json or {path.parent}/config.yaml; DeepSpeed "
                         f"checkpoints are read by resuming the run)")
    model = load_model(run["model"]["name_or_path"], dtype=dtype, attn_implementation=attn_implementation)
    state = load_file(str(weights))
    lora = run.get("lora", {})
    if lora.get("enabled"):
        model = add_lora(model, r=lora["r"], alpha=lora["alpha"], dropout=0.0, target_modules=lora.get("target_modules"))
    expected = {n for n, p in model.named_parameters() if p.requires_grad} if lora.get("enabled") else set(model.state_dict())
    missing = sorted(expected - state.keys())
    if missing:
        raise ValueError(f"{weights}: {len(missing)} expected tensors missing, e.g. {missing[0]}")
    model.load_state_dict(state, strict=False)
    return model.merge_and_unload() if lora.get("enabled") else model


def unwrap(model):
    """The underlying MaskedDiffusionLM of a peft / DDP / DeepSpeed-wrapped model."""
    while not isinstance(model, MaskedDiffusionLM):
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            raise TypeError(f"not a masked-diffusion LM: {type(model).__name__}")
    return model


def logits_fn(model):
    """``logits_fn(noised, attention_mask) -> aligned logits`` for the public estimator API."""
    base = unwrap(model)

    def fn(noised, attention_mask=None):
        return align_logits(model(noised, attention_mask=attention_mask).logits, base.logits_shift)

    return fn


def set_scoring_memory(model, *, forward_chunk: int = 0, head_chunk_mib: float = 128) -> None:
    """How the scoring path trades memory for compute (``MaskedDiffusionLM.forward``).

    ``forward_chunk``: noised sequences per backbone chunk, each recomputed in backward (0: all at once);
    ``head_chunk_mib``: size of the LM head's fp32 ``[rows, V]`` logits buffer.
    """
    if forward_chunk < 0 or head_chunk_mib <= 0:
        raise ValueError(f"forward_chunk must be >= 0 and head_chunk_mib > 0; got {forward_chunk}, {head_chunk_mib}")
    base = unwrap(model)
    base.forward_chunk = int(forward_chunk)
    base.head_chunk_elements = max(1, int(head_chunk_mib * 2**20) // 4)


def compile_blocks(model) -> None:
    """``torch.compile`` each transformer block in place (regional compilation), for speed.

    The blocks share their code, so one compilation serves all of them: the first steps pay it (tens of seconds
    at 8B on a GPU), later ones run the fused kernels (RMSNorm, RoPE, SwiGLU, the adapter's scale-and-add).
    Parameter names, the state dict, peft, gradient checkpointing (traced into the compiled block) and the
    numbers are unchanged. Each block keeps a few compiled variants (grad or not, checkpointed or not, a
    first recompilation that makes the sequence length dynamic), so the recompile limit is raised to 32.
    """
    import torch._dynamo

    for attr in ("recompile_limit", "cache_size_limit"):  # the new name, then the old one
        if hasattr(torch._dynamo.config, attr):
            setattr(torch._dynamo.config, attr, max(32, getattr(torch._dynamo.config, attr)))
            break
    for block in unwrap(model).blocks():
        block.compile()


def checkpoint_blocks(model, count: int | None) -> None:
    """With gradient checkpointing on, recompute only the first ``count`` blocks' activations in backward
    (None: all). The others keep theirs: fewer recomputed blocks, a faster step, more activation memory."""
    blocks = unwrap(model).blocks()
    if count is None:
        return
    if not 0 <= count <= len(blocks):
        raise ValueError(f"checkpoint_blocks must be between 0 and the model's {len(blocks)} blocks; got {count}")
    for i, block in enumerate(blocks):
        if not hasattr(block, "gradient_checkpointing"):
            raise TypeError(f"{type(block).__name__} has no per-block gradient_checkpointing switch")
        block.gradient_checkpointing = block.gradient_checkpointing and i < count


def token_scorer(model):
    """The production token scorer (``estimators.TokenScorer``): LM head only at scored positions."""

    def score(noised, attention_mask, targets, score_mask):
        return model(noised, attention_mask=attention_mask, score_mask=score_mask, targets=targets).token_logprobs

    return score


def add_lora(model, *, r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules=None):
    """Wrap ``model`` with a peft LoRA adapter on the family's default targets (attention + MLP)."""
    from peft import LoraConfig, get_peft_model

    spec = spec_for(model)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=target_modules or spec.lora_targets, bias="none")
    return get_peft_model(model, config)


@contextlib.contextmanager
def adapter_in_base_dtype(model, dtype: torch.dtype | None):
    """Run a LoRA model's forward (and backward) with the adapter computing in the base's ``dtype`` (bf16).

    peft keeps adapter weights in fp32 over a bf16 base, and then casts every activation entering an adapter
    to fp32: at each of the 7 adapted projections per block a [tokens, width] fp32 copy, fp32 products and an
    fp32 sum, kept for backward too. On an H100-class GPU that made a LoRA DPO step of LLaDA-8B 1.3x slower
    (benchmarks/RESULTS.md). Here the activations stay in ``dtype`` and autocast casts the small adapter
    weights instead; the fp32 weights stay the master copy the optimizer updates. ``dtype`` None: no change.
    """
    if dtype is None:
        yield
        return
    from peft.helpers import disable_input_dtype_casting

    device_type = next(model.parameters()).device.type
    with disable_input_dtype_casting(model), torch.autocast(device_type, dtype=dtype):
        yield


_REMOTE_CODE_FILES = ("configuration_llada.py", "modeling_llada.py", "configuration_dream.py", "modeling_dream.py",
                      "generation_utils.py", "tokenization_dream.py")


def save_published(model, out_dir: str | Path, *, tokenizer=None, merged: bool = True, adapter: bool = True,
                   source: str | Path | None = None, state_dict: dict | None = None) -> Path:
    """Save in the published layout.

    With a peft model: the adapter goes to ``out_dir/adapter`` (if ``adapter``)
    and the merged full weights to ``out_dir`` (if ``merged``). Without one,
    the full weights go to ``out_dir``. The config keeps ``model_type`` and
    published field names; the published remote-code files are copied from
    ``source`` when it is a local directory holding them, so LLaDA's own
    ``AutoModel.from_pretrained(..., trust_remote_code=True)`` reads the output.
    ``state_dict``: full weights gathered by the caller (DeepSpeed ZeRO-3), for a model without an adapter.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_peft = hasattr(model, "merge_and_unload")
    if is_peft and adapter:
        model.save_pretrained(out / "adapter")
    if merged or not is_peft:
        full = model
        if is_peft:
            import copy

            full = copy.deepcopy(model).merge_and_unload()
        full.save_pretrained(out, safe_serialization=True, state_dict=None if is_peft else state_dict)
        _restore_published_config(out, unwrap(model).config)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if source is not None and Path(source).is_dir():
        for name in _REMOTE_CODE_FILES:
            if (Path(source) / name).exists():
                shutil.copy2(Path(source) / name, out / name)
    return out


def _restore_published_config(out: Path, config) -> None:
    """Keep the published ``architectures``/``auto_map`` (for LLaDA's own loaders)."""
    path = out / "config.json"
    data = json.loads(path.read_text())
    published_arch = {"llada": ["LLaDAModelLM"], "Dream": ["DreamModel"]}
    data["architectures"] = published_arch.get(data.get("model_type"), data.get("architectures"))
    if getattr(config, "auto_map", None):
        data["auto_map"] = config.auto_map
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
