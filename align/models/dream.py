"""Dream (v0 Base / Instruct 7B) as a native transformers model.

A Qwen2 stack with bidirectional attention: RMSNorm, SwiGLU, RoPE, biases on
q/k/v only, grouped-query attention, untied ``lm_head``. Its logits are
shifted: the output at position i−1 predicts token i (``logits_shift``).
Module names reproduce the published checkpoint (``model.layers.N.self_attn.q_proj`` …).
"""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedConfig
from transformers.modeling_layers import GradientCheckpointingLayer

from align.models.base import MaskedDiffusionLM
from align.models.layers import OutputHead, RMSNorm, self_attention


class DreamConfig(PreTrainedConfig):
    model_type = "Dream"

    def __init__(
        self,
        vocab_size: int = 152064,
        hidden_size: int = 3584,
        intermediate_size: int = 18944,
        num_hidden_layers: int = 28,
        num_attention_heads: int = 28,
        num_key_value_heads: int = 4,
        hidden_act: str = "silu",
        max_position_embeddings: int = 131072,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 1000000.0,
        rope_scaling: dict | None = None,
        attention_dropout: float = 0.0,
        use_sliding_window: bool = False,
        mask_token_id: int = 151666,
        bos_token_id: int = 151643,
        eos_token_id: int = 151643,
        pad_token_id: int = 151643,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        if hidden_act != "silu" or rope_scaling is not None or use_sliding_window:
            raise ValueError(
                "Dream configs with non-silu activation, rope_scaling or sliding windows are not supported"
            )
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_act, self.max_position_embeddings = hidden_act, max_position_embeddings
        self.initializer_range, self.rms_norm_eps, self.rope_theta = initializer_range, rms_norm_eps, rope_theta
        self.attention_dropout, self.use_sliding_window = attention_dropout, use_sliding_window
        self.mask_token_id = mask_token_id
        # the published config asks for flash_attention_2; align's SDPA path uses the flash kernel when unpadded
        kwargs.pop("attn_implementation", None)
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )


class DreamAttention(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        d = config.hidden_size
        self.n_heads, self.n_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = d // self.n_heads
        self.config = config
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)

    def forward(self, x, cos, sin, key_mask):
        dropout = self.config.attention_dropout if self.training else 0.0
        return self.o_proj(
            self_attention(
                x,
                self.q_proj,
                self.k_proj,
                self.v_proj,
                self.n_heads,
                self.n_kv_heads,
                cos,
                sin,
                key_mask,
                self.config,
                dropout,
            )
        )


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.self_attn = DreamAttention(config)
        self.mlp = DreamMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, key_mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, key_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class DreamBackbone(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DreamDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DreamModel(MaskedDiffusionLM):
    config_class = DreamConfig
    base_model_prefix = "model"
    _no_split_modules = ["DreamDecoderLayer"]
    logits_shift = True

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        self.model = DreamBackbone(config)
        self.lm_head = OutputHead(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def blocks(self):
        return self.model.layers

    def final_norm(self):
        return self.model.norm

    def rope(self):
        return self.config.hidden_size // self.config.num_attention_heads, self.config.rope_theta
