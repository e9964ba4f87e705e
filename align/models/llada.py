"""LLaDA (8B Base / Instruct, LLaDA 1.5) as a native transformers model.

A stack of Llama blocks with bidirectional attention: RMSNorm, SwiGLU
(``ff_out(silu(ff_proj(x)) * up_proj(x))``), RoPE (θ from the config), no
biases, untied output head ``ff_out``. Module names reproduce the published
checkpoint exactly (``model.transformer.blocks.N.q_proj.weight`` …), so
published weights load with no key mapping and our saves are published-layout.
The config keeps every published field (``d_model``, ``n_layers`` …) so a
saved ``config.json`` stays readable by LLaDA's own code.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.modeling_layers import GradientCheckpointingLayer

from align.models.base import MaskedDiffusionLM
from align.models.layers import OutputHead, RMSNorm, fp32_linear, self_attention


class LLaDAConfig(PreTrainedConfig):
    model_type = "llada"

    def __init__(
        self,
        d_model: int = 4096,
        n_heads: int = 32,
        n_kv_heads: int | None = None,
        n_layers: int = 32,
        mlp_hidden_size: int = 12288,
        vocab_size: int = 126464,
        embedding_size: int | None = 126464,
        max_sequence_length: int = 4096,
        rope_theta: float = 500000.0,
        rms_norm_eps: float = 1e-5,
        include_bias: bool = False,
        include_qkv_bias: bool = False,
        weight_tying: bool = False,
        block_type: str = "llama",
        activation_type: str = "silu",
        layer_norm_type: str = "rms",
        rope: bool = True,
        alibi: bool = False,
        attention_layer_norm: bool = False,
        scale_logits: bool = False,
        init_std: float = 0.02,
        mask_token_id: int = 126336,
        eos_token_id: int = 126081,
        pad_token_id: int = 126081,
        use_cache: bool = False,
        **kwargs,
    ):
        unsupported = {
            "block_type": (block_type, "llama"),
            "activation_type": (activation_type, "silu"),
            "layer_norm_type": (layer_norm_type, "rms"),
            "rope": (rope, True),
            "alibi": (alibi, False),
            "attention_layer_norm": (attention_layer_norm, False),
            "scale_logits": (scale_logits, False),
        }
        for key, (value, expected) in unsupported.items():
            if value != expected:
                raise ValueError(
                    f"LLaDA config {key}={value!r} is not supported (the published models use {expected!r})"
                )
        self.d_model, self.n_heads, self.n_layers = d_model, n_heads, n_layers
        self.n_kv_heads = n_kv_heads
        self.mlp_hidden_size, self.vocab_size = mlp_hidden_size, vocab_size
        self.embedding_size = embedding_size
        self.max_sequence_length, self.rope_theta, self.rms_norm_eps = max_sequence_length, rope_theta, rms_norm_eps
        self.include_bias, self.include_qkv_bias, self.weight_tying = include_bias, include_qkv_bias, weight_tying
        self.block_type, self.activation_type, self.layer_norm_type = block_type, activation_type, layer_norm_type
        self.rope, self.alibi, self.attention_layer_norm, self.scale_logits = (
            rope,
            alibi,
            attention_layer_norm,
            scale_logits,
        )
        self.init_std, self.mask_token_id, self.use_cache = init_std, mask_token_id, use_cache
        kwargs.setdefault("tie_word_embeddings", weight_tying)
        super().__init__(eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)

    @property
    def effective_n_kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    # names the rest of transformers (and peft, DeepSpeed auto-config) look for
    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layers

    @property
    def num_attention_heads(self) -> int:
        return self.n_heads


class LLaDABlock(GradientCheckpointingLayer):
    def __init__(self, config: LLaDAConfig):
        super().__init__()
        d, head_dim = config.d_model, config.d_model // config.n_heads
        kv = config.effective_n_kv_heads * head_dim
        qkv_bias = config.include_bias or config.include_qkv_bias
        self.n_heads, self.n_kv_heads = config.n_heads, config.effective_n_kv_heads
        self.config = config
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=qkv_bias)
        self.k_proj = nn.Linear(d, kv, bias=qkv_bias)
        self.v_proj = nn.Linear(d, kv, bias=qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=config.include_bias)
        self.ff_proj = nn.Linear(d, config.mlp_hidden_size, bias=config.include_bias)  # gated by silu
        self.up_proj = nn.Linear(d, config.mlp_hidden_size, bias=config.include_bias)
        self.ff_out = nn.Linear(config.mlp_hidden_size, d, bias=config.include_bias)

    def forward(self, x, cos, sin, key_mask):
        att = self_attention(
            self.attn_norm(x),
            self.q_proj,
            self.k_proj,
            self.v_proj,
            self.n_heads,
            self.n_kv_heads,
            cos,
            sin,
            key_mask,
            self.config,
        )
        x = x + self.attn_out(att)
        h = self.ff_norm(x)
        return x + self.ff_out(nn.functional.silu(self.ff_proj(h)) * self.up_proj(h))


class LLaDAModel(nn.Module):
    """Holds ``transformer`` = {wte, blocks, ln_f, ff_out}, as in the published checkpoint."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        modules = {
            "wte": nn.Embedding(config.embedding_size or config.vocab_size, config.d_model),
            "blocks": nn.ModuleList(LLaDABlock(config) for _ in range(config.n_layers)),
            "ln_f": RMSNorm(config.d_model, config.rms_norm_eps),
        }
        if not config.weight_tying:
            modules["ff_out"] = OutputHead(
                config.d_model, config.embedding_size or config.vocab_size, bias=config.include_bias
            )
        self.transformer = nn.ModuleDict(modules)


class LLaDAModelLM(MaskedDiffusionLM):
    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDABlock"]
    logits_shift = False

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def set_input_embeddings(self, value):
        self.model.transformer.wte = value

    def get_output_embeddings(self):
        t = self.model.transformer
        return t.wte if self.config.weight_tying else t.ff_out

    def output_head(self):
        t = self.model.transformer
        if self.config.weight_tying:
            return lambda h: (
                fp32_linear(h, t.wte.weight) if h.dtype == torch.float32 else nn.functional.linear(h, t.wte.weight)
            )
        return t.ff_out

    def blocks(self):
        return self.model.transformer.blocks

    def final_norm(self):
        return self.model.transformer.ln_f

    def rope(self):
        return self.config.d_model // self.config.n_heads, self.config.rope_theta
