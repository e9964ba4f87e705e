"""ModelSpec: everything the rest of align must know about a model family, in one place.

Mask token id, EOS/pad id, whether logits are shifted, default LoRA targets
and the chat-template family. Values come from the model's config, never
from literals elsewhere. ``spec_for(model_or_config)`` is the only lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from align.models.base import unwrap
from align.models.registry import NATIVE  # the model class owns its logit layout

# LoRA targets per family: attention and MLP projections. LLaDA's block MLP
# output is named ``ff_out`` like its LM head, hence a regex that only matches
# inside blocks.
_LORA_TARGETS = {
    "llada": r".*\.blocks\.\d+\.(q_proj|k_proj|v_proj|attn_out|ff_proj|up_proj|ff_out)$",
    "Dream": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


@dataclass(frozen=True)
class ModelSpec:
    family: str  # config.model_type: "llada" or "Dream"
    mask_token_id: int
    eos_token_id: int
    pad_token_id: int
    logits_shift: bool  # True: the output at i-1 predicts token i
    lora_target_modules: str | tuple[str, ...]

    @property
    def lora_targets(self):
        t = self.lora_target_modules
        return t if isinstance(t, str) else list(t)


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x


def spec_for(model_or_config) -> ModelSpec:
    """The spec of a model (also inside a DDP / DeepSpeed / peft wrapper) or of its config."""
    if isinstance(model_or_config, torch.nn.Module):  # a DeepSpeed engine's .config is DeepSpeed's dict: unwrap
        model_or_config = unwrap(model_or_config, keep_peft=True)
    config = getattr(model_or_config, "config", model_or_config)
    family = config.model_type
    if family not in _LORA_TARGETS:
        raise ValueError(f"no ModelSpec for model_type {family!r}; known: {sorted(_LORA_TARGETS)}")
    mask = getattr(config, "mask_token_id", None)
    if mask is None:
        raise ValueError(f"{family} config has no mask_token_id")
    eos = _first(config.eos_token_id)
    pad = config.pad_token_id if config.pad_token_id is not None else eos
    targets = _LORA_TARGETS[family]
    return ModelSpec(
        family,
        int(mask),
        int(eos),
        int(pad),
        NATIVE[family][1].logits_shift,
        targets if isinstance(targets, str) else tuple(targets),
    )
