"""Tiny LLaDA / Dream models and an offline tokenizer, for tests and the demo.

The tokenizer is a byte-level BPE (vocab 512) trained on the bundled demo
text in ``data/``, with LLaDA's special tokens (``<|endoftext|>`` = EOS = pad,
``<|mdm_mask|>``, header and end-of-turn tokens) and a LLaDA-style chat
template. Models are random, seeded, and small (2 layers, hidden 64).
Everything is built offline and deterministically; nothing is downloaded.

Used as ``load_model("tiny:llada")`` / ``load_tokenizer("tiny:llada")``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from align.models.dream import DreamConfig
from align.models.llada import LLaDAConfig
from align.models.registry import NATIVE

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|startoftext|>",
    "<|mdm_mask|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
# Renders a conversation the way LLaDA-8B-Instruct's template does: BOS, then
# "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>" per
# turn, then the assistant header when a generation prompt is asked for.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim "
    "+ '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
VOCAB_SIZE = 512


def _corpus():
    for path in sorted(DATA_DIR.glob("demo_safety_*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            yield from (row[k] for k in ("prompt", "response_0", "response_1"))


def train_bpe(texts, vocab_size: int) -> str:
    """A byte-level BPE with LLaDA's special tokens, trained on ``texts``; returned as tokenizer JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return tok.to_str()


@functools.cache
def _tokenizer_json() -> str:
    return train_bpe(_corpus(), VOCAB_SIZE)


def tiny_tokenizer(tokenizer_json: str | None = None):
    """A transformers fast tokenizer with mask/EOS/pad tokens and a chat template (default: the bundled vocab-512
    one)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json or _tokenizer_json()),
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        mask_token="<|mdm_mask|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_config(family: str):
    tok = tiny_tokenizer()
    ids = dict(mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vocab = len(tok)
    if family == "llada":
        return LLaDAConfig(
            d_model=64,
            n_heads=4,
            n_kv_heads=4,
            n_layers=2,
            mlp_hidden_size=128,
            vocab_size=vocab,
            embedding_size=vocab,
            max_sequence_length=512,
            rope_theta=500000.0,
            **ids,
        )
    if family == "dream":
        return DreamConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=tok.bos_token_id,
            **ids,
        )
    raise ValueError(f"unknown tiny family {family!r}; expected 'llada' or 'dream'")


def tiny_model(family: str, seed: int = 0):
    config = tiny_config(family)
    torch.manual_seed(seed)
    model_cls = NATIVE[config.model_type][1]
    return model_cls(config).float()
