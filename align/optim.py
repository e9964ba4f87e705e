"""The optimizer the trainer builds (and the benchmarks reuse)."""

from __future__ import annotations

import torch


def adamw(params: list, **kwargs) -> torch.optim.AdamW:
    """AdamW, fused where every parameter allows it (CPU or CUDA, floating point): one kernel per parameter
    group instead of foreach's temporaries of every parameter's size (at full fine-tuning of a model whose
    embedding and head dominate, foreach's temporaries were as large as the gradients) and a faster step on a
    GPU. Other devices keep PyTorch's default implementation."""
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, fused=fused or None, **kwargs)
