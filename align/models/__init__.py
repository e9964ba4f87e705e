"""Model layer: LLaDA and Dream as native bidirectional transformers models.

- ``align.models.registry``: the native families (``model_type: llada``, ``Dream``) and their Auto registration;
- ``align.models.loading``: ``load_model(name_or_path)`` for a hub id, a local directory, ``tiny:llada`` /
  ``tiny:dream`` (the bundled random tiny models used by tests), a LoRA output or a training checkpoint;
- ``align.models.spec``: ``spec_for(model)``: mask/EOS/pad ids, logit shift, LoRA defaults;
- ``align.models.running``: ``unwrap``, the scorers the estimators call, ``add_lora`` (the reference is the
  adapter disabled) and the speed/memory switches.

Saving in the published layout is ``align.export.save_published``.
"""

from align.models.base import DiffusionLMOutput, MaskedDiffusionLM, align_logits
from align.models.dream import DreamConfig, DreamModel
from align.models.llada import LLaDAConfig, LLaDAModelLM
from align.models.loading import adapter_base, adapter_dir, load_model, resolve_dtype, tokenizer_source
from align.models.registry import NATIVE
from align.models.running import (
    adapter_in_base_dtype,
    add_lora,
    checkpoint_blocks,
    compile_blocks,
    disable_dropout,
    logits_fn,
    set_scoring_memory,
    token_scorer,
    unwrap,
)
from align.models.source import ModelNotFound, check_local, hub_errors
from align.models.spec import ModelSpec, spec_for

__all__ = [
    "DiffusionLMOutput",
    "MaskedDiffusionLM",
    "LLaDAConfig",
    "LLaDAModelLM",
    "DreamConfig",
    "DreamModel",
    "NATIVE",
    "ModelSpec",
    "spec_for",
    "load_model",
    "add_lora",
    "unwrap",
    "logits_fn",
    "token_scorer",
    "align_logits",
    "adapter_in_base_dtype",
    "adapter_dir",
    "adapter_base",
    "tokenizer_source",
    "set_scoring_memory",
    "resolve_dtype",
    "compile_blocks",
    "checkpoint_blocks",
    "disable_dropout",
    "ModelNotFound",
    "check_local",
    "hub_errors",
]
