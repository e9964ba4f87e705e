"""Tokenizer loading, paired with ``load_model``: hub id, local directory, or ``tiny:<family>``."""

from __future__ import annotations

from align.models.source import check_local, hub_errors
from align.models.tiny import tiny_tokenizer


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False, **kwargs):
    if name_or_path.startswith("tiny:"):
        return tiny_tokenizer()
    from transformers import AutoTokenizer

    check_local(name_or_path, "tokenizer")
    with hub_errors(name_or_path, "tokenizer"):
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    if tok.chat_template is None:
        raise ValueError(
            f"{name_or_path}: tokenizer has no chat template; set data.chat_template=false to feed raw text"
        )
    return tok
