"""What leaves a run: trainable and merged state dicts gathered for saving (ZeRO-3 included) and the read-back
check of every save (:func:`verify_saved`)."""

from __future__ import annotations

from pathlib import Path

import torch


def trainable_state_dict(model, keep: bool) -> dict[str, torch.Tensor]:
    """The trainable parameters on CPU (``keep``: this rank keeps them). Under ZeRO-3 they are gathered
    collectively, so every rank must call this; nothing else of the model is gathered or copied."""
    import contextlib

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    gather = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for _, p in named):  # ZeRO-3 partitioned parameters
        import deepspeed

        gather = deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None)
    with gather:
        return {n: p.detach().to("cpu", copy=True) for n, p in named} if keep else {}


def merged_state_dict(peft_model) -> dict[str, torch.Tensor]:
    """Base weights with every LoRA delta merged, on CPU, in the base model's parameter names; one adapted
    layer's delta on the device at a time (no copy of the model)."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    merged = {}
    for name, p in base.named_parameters():
        if "lora_" not in name:
            merged[name.replace(".base_layer.", ".")] = p.detach().to("cpu", copy=True)
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            key = f"{name}.weight"
            delta = sum(module.get_delta_weight(a).detach().float().cpu() for a in module.active_adapters)
            merged[key] = (merged[key].float() + delta).to(merged[key].dtype)
    return merged


def published_shapes(tensors: dict, config) -> dict[str, tuple]:
    """Names and shapes a save of ``tensors`` must hold (a tied output embedding is stored once)."""
    shapes = {k: tuple(getattr(v, "shape", v)) for k, v in tensors.items()}
    if getattr(config, "tie_word_embeddings", False):
        for key in ("lm_head.weight", "model.transformer.ff_out.weight"):
            shapes.pop(key, None)
    return shapes


def verify_saved(directory: Path, expected: dict[str, tuple]) -> None:
    """Read back the safetensors in ``directory``: every expected tensor there with its shape, none empty."""
    from safetensors import safe_open

    found = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                found[k] = tuple(st.get_slice(k).get_shape())
    missing = sorted(expected.keys() - found.keys())
    wrong = sorted(k for k in expected.keys() & found.keys() if found[k] != expected[k])
    empty = sorted(k for k, shape in found.items() if 0 in shape)
    if missing or wrong or empty:
        raise RuntimeError(
            f"the weights written to {directory} do not match the model: "
            + "; ".join(f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
                        for what, keys in (("missing", missing), ("wrong shape", wrong), ("empty", empty)) if keys))
