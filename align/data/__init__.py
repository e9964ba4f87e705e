"""Data: one module each for where records come from, what a record of each schema holds, how it is encoded and
batched, which records are held out, and in which order and with which seeds training meets them.

- ``align.data.sources``: hub datasets, local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` files and
  ``save_to_disk`` directories, read with each row's file and line (:func:`load_records`);
- ``align.data.formats``: the record schemas (``pku_saferlhf``, ``ultrafeedback``, ``hh_rlhf``, ``pairs``; SFT's
  ``prompt_response``, ``messages``, ``text``; scoring's ``response`` and ``choices``; online DPO's prompts) and
  ``format=auto``;
- ``align.data.encoding``: chat template, truncation, EOS-extension, the bad-record policy and padding, the same
  for training and scoring;
- ``align.data.splits``: the held-out data of a run;
- ``align.data.order``: epoch orders, per-rank micro-batches and the seeds of mask draws.

The names below are the package's public API (``from align.data import load_records, build_dataset, collate``).
"""

from align.data.encoding import (
    DataReport,
    Encoded,
    EncodedPrompt,
    EncodedSFT,
    build_dataset,
    build_prompt_dataset,
    build_scoring_dataset,
    build_sft_dataset,
    collate,
    collate_responses,
    collate_sft,
    common_length,
    content_key,
    encode_pair,
    encode_prompt,
    encode_records,
    encode_response,
    encode_sft,
    pad_rows,
)
from align.data.formats import (
    PREFERENCE_SCHEMAS,
    PROMPT_FORMATS,
    SFT_FORMATS,
    SFT_SCHEMAS,
    detect_format,
    extract,
    extract_choices,
    extract_prompt,
    extract_response,
    extract_sft,
    from_hh_rlhf,
    from_pairs,
    from_pku_saferlhf,
    from_ultrafeedback,
    resolve_format,
)
from align.data.order import EVAL_EPOCH, epoch_order, example_generators, holdout_split, rank_micro_batches
from align.data.sources import (
    LOCAL_SUFFIXES,
    SUPPORTED_FORMS,
    BadRecord,
    OverLongPrompt,
    Records,
    Unparsable,
    is_local,
    load_records,
)

__all__ = [
    "BadRecord",
    "OverLongPrompt",
    "Records",
    "Unparsable",
    "load_records",
    "is_local",
    "LOCAL_SUFFIXES",
    "SUPPORTED_FORMS",
    "detect_format",
    "resolve_format",
    "extract",
    "extract_sft",
    "extract_response",
    "extract_choices",
    "from_pku_saferlhf",
    "from_ultrafeedback",
    "from_hh_rlhf",
    "from_pairs",
    "PREFERENCE_SCHEMAS",
    "SFT_SCHEMAS",
    "SFT_FORMATS",
    "PROMPT_FORMATS",
    "extract_prompt",
    "Encoded",
    "EncodedSFT",
    "EncodedPrompt",
    "build_prompt_dataset",
    "DataReport",
    "encode_prompt",
    "encode_response",
    "common_length",
    "encode_pair",
    "encode_sft",
    "encode_records",
    "build_dataset",
    "build_sft_dataset",
    "build_scoring_dataset",
    "content_key",
    "pad_rows",
    "collate",
    "collate_sft",
    "collate_responses",
    "EVAL_EPOCH",
    "example_generators",
    "epoch_order",
    "rank_micro_batches",
    "holdout_split",
]
