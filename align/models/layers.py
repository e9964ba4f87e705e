"""Building blocks shared by the LLaDA and Dream implementations.

Semantics follow the published modeling code of both families:
RMSNorm normalizes in float32, casts back, then scales by the weight; RoPE
uses the half-split ("rotate_half") layout, computed in float32; attention is
bidirectional (no causal mask), with padding keys masked out; the MLP is
SwiGLU, ``down(silu(gate(x)) * up(x))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x·rsqrt(mean(x²) + eps) in float32, as published: one fused kernel on CUDA instead of five
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


def fp32_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T (+ bias)`` with fp32 output, whatever the weights' dtype and any autocast in force.

    bf16 weights are upcast exactly, so the product is the bf16 model's logits without the final rounding to
    bf16 (steps of 0.125 for logits in [16, 32): 0.01-0.035 nats per token at a 126k vocabulary).
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float())


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    return torch.promote_types(weight.dtype, torch.float32)  # fp32 for bf16/fp16/fp32 weights, fp64 stays


class _TargetLogprobs(torch.autograd.Function):
    """``log_softmax(hidden @ weight.T + bias)[targets]`` over [K, d] rows, ``chunk`` rows at a time, in fp32.

    Forward keeps only the per-row log-normalisers; backward recomputes each chunk's logits once and turns
    them into the gradient in place (``g · (onehot − softmax)``), so a single [chunk, V] fp32 buffer is alive
    at any time (autograd through log_softmax/gather held about four). Weight gradients only when the head
    trains (full fine-tuning)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk):
        ct = _compute_dtype(weight)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            w = weight.to(ct)
            b = None if bias is None else bias.to(ct)
            out = torch.empty(hidden.shape[0], dtype=ct, device=hidden.device)
            lse = torch.empty_like(out)
            for s in range(0, hidden.shape[0], chunk):
                z = F.linear(hidden[s : s + chunk].to(ct), w, b)  # [k, V], the one buffer of this chunk
                picked = z.gather(-1, targets[s : s + chunk, None]).squeeze(-1)
                top = z.amax(-1)
                lse[s : s + chunk] = top + z.sub_(top[:, None]).exp_().sum(-1).log()  # in place: no second [k, V]
                out[s : s + chunk] = picked - lse[s : s + chunk]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        ct = _compute_dtype(weight)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            w = weight.to(ct)
            b = None if bias is None else bias.to(ct)
            grad_h = torch.empty(hidden.shape, dtype=ct, device=hidden.device) if need_h else None
            grad_w = torch.zeros_like(w) if need_w else None
            grad_b = torch.zeros_like(b) if need_b else None
            for s in range(0, hidden.shape[0], ctx.chunk):
                h = hidden[s : s + ctx.chunk].to(ct)
                g = grad[s : s + ctx.chunk].to(ct)
                z = F.linear(h, w, b)
                z.sub_(lse[s : s + ctx.chunk, None]).exp_().mul_(-g[:, None])  # -g·softmax
                rows = torch.arange(z.shape[0], device=z.device)
                z[rows, targets[s : s + ctx.chunk]] += g  # + g·onehot
                if need_h:
                    grad_h[s : s + ctx.chunk] = z @ w
                if need_w:
                    grad_w.addmm_(z.T, h)
                if need_b:
                    grad_b += z.sum(0)
        return (
            None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None,
            None,
        )


class OutputHead(nn.Linear):
    """The LM head (an ``nn.Linear``, same parameter names).

    ``head(x)``: logits; fp32 logits from low-precision weights when ``x`` is fp32 (:func:`fp32_linear`).
    ``head(hidden, targets=t, chunk=c)``: fp32 ``log p(t)`` for each row of ``hidden`` [K, d] without ever
    holding more than ``c`` rows of logits, in forward or backward (:class:`_TargetLogprobs`). It is one
    module call per forward, so DeepSpeed ZeRO-3 gathers the (1 GiB at 8B) weight once per forward and once
    per backward, not once per chunk.
    """

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None, chunk: int | None = None) -> torch.Tensor:
        if targets is not None:
            return _TargetLogprobs.apply(x, self.weight, self.bias, targets, chunk or x.shape[0] or 1)
        if x.dtype == torch.float32:
            return fp32_linear(x, self.weight, self.bias)
        return super().forward(x)


def rotary_tables(seq_len: int, head_dim: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables [T, head_dim] in float32 (frequencies repeated for both halves)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([freqs, freqs], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [b, h, T, d]: rotate in float32, return in x's dtype."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[b, T] 0/1 -> boolean key mask [b, 1, 1, T] for SDPA, or None when nothing is padded."""
    if attention_mask is None or bool(attention_mask.bool().all()):
        return None  # lets SDPA pick the flash kernel
    return attention_mask.bool()[:, None, None, :]


def attention(q, k, v, key_mask, implementation: str, dropout: float = 0.0) -> torch.Tensor:
    """Bidirectional attention. q [b, h, T, d], k/v [b, h_kv, T, d] -> [b, h, T, d]."""
    groups = q.shape[1] // k.shape[1]
    if implementation == "eager":
        if groups > 1:
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
        probs = F.dropout(scores.float().softmax(-1).to(q.dtype), dropout)
        return probs @ v
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=key_mask, dropout_p=dropout, is_causal=False, enable_gqa=groups > 1
    )


def self_attention(
    h, q_proj, k_proj, v_proj, n_heads: int, n_kv_heads: int, cos, sin, key_mask, config, dropout: float = 0.0
) -> torch.Tensor:
    """Project, rotate and attend bidirectionally: h [b, T, d] -> [b, T, n_heads·head_dim] (before the output
    projection)."""
    b, T, _ = h.shape
    q = q_proj(h).view(b, T, n_heads, -1).transpose(1, 2)
    k = k_proj(h).view(b, T, n_kv_heads, -1).transpose(1, 2)
    v = v_proj(h).view(b, T, n_kv_heads, -1).transpose(1, 2)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    impl = check_attention_implementation(getattr(config, "_attn_implementation", None))
    return attention(q, k, v, key_mask, impl, dropout).transpose(1, 2).reshape(b, T, -1)


SUPPORTED_ATTENTION = ("sdpa", "eager")


def check_attention_implementation(name: str | None) -> str:
    name = name or "sdpa"
    if name not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"attn_implementation={name!r} is not supported by align's native models; use one of "
            f"{SUPPORTED_ATTENTION} ('sdpa' dispatches to the flash kernel on GPU when no padding is present)"
        )
    return name
