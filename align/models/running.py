"""How a loaded model runs: the bare model inside its wrappers (:func:`unwrap`), the scorers the estimators call
(:func:`logits_fn`, :func:`token_scorer`), LoRA (:func:`add_lora`, :func:`adapter_in_base_dtype`) and the
speed/memory switches of align's native models (:func:`set_scoring_memory`, :func:`compile_blocks`,
:func:`checkpoint_blocks`)."""

from __future__ import annotations

import contextlib

import torch

from align.models.base import MaskedDiffusionLM, align_logits, unwrap  # noqa: F401 (unwrap: re-exported)
from align.models.spec import spec_for


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


def compile_blocks(model, backend: str = "inductor") -> None:
    """``torch.compile`` each transformer block in place (regional compilation), for speed.

    The blocks share their code, so one compilation serves all of them: the first steps pay it (tens of seconds
    at 8B on a GPU), later ones run the fused kernels (RMSNorm, RoPE, SwiGLU, the adapter's scale-and-add).
    Parameter names, the state dict, peft, gradient checkpointing (traced into the compiled block) and the
    numbers are unchanged. Each block keeps a few compiled variants (grad or not, checkpointed or not, a
    first recompilation that makes the sequence length dynamic), so the recompile limit is raised to 32.
    ``backend``: torch.compile's (``aot_eager`` traces the same graphs, forward and backward, without generating
    kernels: a quick check of the compiled path on a CPU).
    """
    import torch._dynamo

    for attr in ("recompile_limit", "cache_size_limit"):  # the new name, then the old one
        if hasattr(torch._dynamo.config, attr):
            setattr(torch._dynamo.config, attr, max(32, getattr(torch._dynamo.config, attr)))
            break
    for block in unwrap(model).blocks():
        block.compile(backend=backend)


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
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules or spec.lora_targets, bias="none"
    )
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


def disable_dropout(model: torch.nn.Module) -> int:
    """Set p = 0 on every dropout module (LoRA's included), as TRL's ``disable_dropout_in_model``; returns the count."""
    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
            n += 1
    return n
