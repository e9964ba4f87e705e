"""How a record becomes token ids and ids become a batch: one path for training (DPO pairs, SFT) and scoring.

docs/method.md §5 step 1: the prompt goes through the tokenizer's chat template and is truncated keeping its end
(:func:`encode_prompt`). A response is truncated to ``max_response_length − 1`` tokens plus EOS
(:func:`encode_response`); the responses of one record (a pair's chosen and rejected, a question's choices) are
EOS-extended to their common length so they can share one set of masks (:func:`common_length`). Every record
passes the bad-record policy (:func:`encode_records`): a malformed one (missing field, non-string content, empty
response, identical chosen and rejected, over-long prompt with ``over_long_prompt=error``) raises
:class:`BadRecord` naming it, or with ``on_bad_record=skip`` is counted per reason; nothing is dropped silently.
Batches are right-padded rows of prompt + response (:func:`pad_rows`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from align.config import ConfigError
from align.data.formats import extract, extract_choices, extract_prompt, extract_response, extract_sft, resolve_format
from align.data.sources import BadRecord, OverLongPrompt, Records, Unparsable


@dataclass
class Encoded:
    id: int  # position in the source split: keys the mask generators
    prompt_ids: list[int]
    chosen_ids: list[int]  # response tokens, EOS-extended to the pair's common length
    rejected_ids: list[int]


@dataclass
class EncodedSFT:
    id: int
    prompt_ids: list[int]
    response_ids: list[int]  # EOS-terminated


@dataclass
class EncodedPrompt:
    """A prompt of online DPO: its ids (chat-templated, with the assistant header), its messages, and the record's
    other scalar fields (a judge may ask for them by name, e.g. ``kind``)."""

    id: int
    prompt_ids: list[int]
    messages: list[dict]
    fields: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The last user message: what a judge reads as "the prompt"."""
        return self.messages[-1]["content"]


@dataclass
class DataReport:
    source: str
    total: int = 0
    kept: int = 0
    truncated_prompts: int = 0
    skipped: Counter = field(default_factory=Counter)
    note: str = ""  # e.g. the schema data.format=auto chose

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        return (
            f"{self.source}: {self.kept}/{self.total} records kept; skipped: {skipped}; "
            f"prompts truncated: {self.truncated_prompts}" + (f"; {self.note}" if self.note else "")
        )


# ---------------------------------------------------------------- a record's ids


def encode_prompt(
    tokenizer, messages, max_prompt_length: int, over_long_prompt: str, chat_template: bool = True
) -> tuple[list[int], bool]:
    """The chat-templated prompt's ids, truncated keeping the end (the question and the assistant header).
    ``chat_template=False`` (scoring raw text): the messages' contents joined by newlines."""
    if chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n".join(m["content"] for m in messages)
    prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
    truncated = len(prompt_ids) > max_prompt_length
    if truncated:
        if over_long_prompt != "truncate":
            raise OverLongPrompt(f"over-long prompt ({len(prompt_ids)} tokens > max_prompt_length={max_prompt_length})")
        prompt_ids = prompt_ids[-max_prompt_length:]
    return prompt_ids, truncated


def encode_response(tokenizer, text: str, eos_token_id: int, max_response_length: int, eos: bool = True) -> list[int]:
    """The response's ids, truncated to ``max_response_length − 1``, then EOS (``eos=False``: the bare text's ids,
    truncated to ``max_response_length``: a continuation as lm-eval scores it)."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return ids[: max_response_length - 1] + [eos_token_id] if eos else ids[:max_response_length]


def common_length(responses: list[list[int]], eos_token_id: int) -> list[list[int]]:
    """EOS-extended to the longest, so the responses of one record can share one set of masks."""
    L = max(map(len, responses))
    return [r + [eos_token_id] * (L - len(r)) for r in responses]


def encode_pair(
    tokenizer,
    messages,
    chosen: str,
    rejected: str,
    *,
    eos_token_id: int,
    max_prompt_length: int,
    max_response_length: int,
    over_long_prompt: str = "truncate",
) -> tuple[list[int], list[int], list[int], bool]:
    """(prompt_ids, chosen_ids, rejected_ids, truncated): responses EOS-terminated and EOS-extended to one length."""
    prompt_ids, truncated = encode_prompt(tokenizer, messages, max_prompt_length, over_long_prompt)
    responses = [encode_response(tokenizer, text, eos_token_id, max_response_length) for text in (chosen, rejected)]
    if responses[0] == responses[1]:
        raise BadRecord("chosen and rejected are identical after truncation")
    chosen_ids, rejected_ids = common_length(responses, eos_token_id)
    return prompt_ids, chosen_ids, rejected_ids, truncated


def encode_sft(
    tokenizer,
    messages,
    response: str,
    *,
    eos_token_id: int,
    max_prompt_length: int,
    max_response_length: int,
    over_long_prompt: str = "truncate",
) -> tuple[list[int], list[int], bool]:
    """(prompt_ids, response_ids + EOS, truncated). ``messages=None``: no prompt, the text is all response."""
    prompt_ids, truncated = [], False
    if messages is not None:
        prompt_ids, truncated = encode_prompt(tokenizer, messages, max_prompt_length, over_long_prompt)
    return prompt_ids, encode_response(tokenizer, response, eos_token_id, max_response_length), truncated


# ---------------------------------------------------------------- datasets, with the bad-record policy


def check_text(value, field: str = "") -> None:
    """BadRecord when a string of the record is not text a tokenizer can take (a lone surrogate such as
    ``"\\ud800"``, which JSON allows and UTF-8 cannot encode)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRecord(f"not valid text: a lone surrogate in field {field or 'value'!r}") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(item, f"{field}.{key}" if field else str(key))
    elif isinstance(value, (list, tuple)):
        for n, item in enumerate(value):
            check_text(item, f"{field}[{n}]")


def encode_records(
    rows,
    source: str,
    encode,
    *,
    over_long_prompt: str,
    on_bad_record: str,
    limit: int | None = None,
    indices: list[int] | None = None,
    option_prefix: str = "data.",
):
    """Run ``encode(i, row) -> (example, truncated)`` over the records, applying the bad-record policy.
    ``option_prefix``: how the policy's options are named in messages (``data.`` in training, none in scoring)."""
    report = DataReport(source)
    out = []
    for i in range(len(rows)) if indices is None else indices:
        if limit is not None and len(out) >= limit:
            break
        report.total += 1
        where = rows.where(i) if isinstance(rows, Records) else f"{source}: record {i}"
        try:
            if isinstance(rows[i], Unparsable):
                raise BadRecord(f"{rows[i].reason} ({rows[i].error})")
            check_text(rows[i])
            example, truncated = encode(i, rows[i])
        except OverLongPrompt as e:
            if over_long_prompt == "error":
                raise BadRecord(f"{where}: {e} (set {option_prefix}over_long_prompt=truncate or skip)") from None
            report.skipped["over-long prompt"] += 1
            continue
        except BadRecord as e:
            if on_bad_record == "error":
                raise BadRecord(f"{where}: {e} (set {option_prefix}on_bad_record=skip to count and skip)") from None
            report.skipped[rows[i].reason if isinstance(rows[i], Unparsable) else str(e)] += 1
            continue
        report.truncated_prompts += truncated
        out.append(example)
    report.kept = len(out)  # the caller prints report.summary() once
    return out, report


def build_dataset(
    rows: list[dict],
    source: str,
    tokenizer,
    *,
    fmt: str,
    preference: str,
    eos_token_id: int,
    max_prompt_length: int,
    max_response_length: int,
    over_long_prompt: str,
    on_bad_record: str,
    limit: int | None = None,
    indices: list[int] | None = None,
) -> tuple[list[Encoded], DataReport]:
    """Preference pairs from ``rows`` (or only the positions ``indices``, in that order); ids are positions in
    ``rows``."""
    fmt, note = resolve_format(rows, fmt, source)

    def encode(i, row):
        messages, chosen, rejected = extract(row, fmt, preference)
        p, c, r, truncated = encode_pair(
            tokenizer,
            messages,
            chosen,
            rejected,
            eos_token_id=eos_token_id,
            max_prompt_length=max_prompt_length,
            max_response_length=max_response_length,
            over_long_prompt=over_long_prompt,
        )
        return Encoded(i, p, c, r), truncated

    out, report = encode_records(
        rows,
        source,
        encode,
        over_long_prompt=over_long_prompt,
        on_bad_record=on_bad_record,
        limit=limit,
        indices=indices,
    )
    report.note = note
    return out, report


def build_sft_dataset(
    rows: list[dict],
    source: str,
    tokenizer,
    *,
    fmt: str,
    eos_token_id: int,
    max_prompt_length: int,
    max_response_length: int,
    over_long_prompt: str,
    on_bad_record: str,
    limit: int | None = None,
    indices: list[int] | None = None,
) -> tuple[list[EncodedSFT], DataReport]:
    fmt, note = resolve_format(rows, fmt, source, sft=True)

    def encode(i, row):
        messages, response = extract_sft(row, fmt)
        p, r, truncated = encode_sft(
            tokenizer,
            messages,
            response,
            eos_token_id=eos_token_id,
            max_prompt_length=max_prompt_length,
            max_response_length=max_response_length,
            over_long_prompt=over_long_prompt,
        )
        return EncodedSFT(i, p, r), truncated

    out, report = encode_records(
        rows,
        source,
        encode,
        over_long_prompt=over_long_prompt,
        on_bad_record=on_bad_record,
        limit=limit,
        indices=indices,
    )
    report.note = note
    return out, report


def build_prompt_dataset(
    rows,
    source: str,
    tokenizer,
    *,
    fmt: str,
    max_prompt_length: int,
    over_long_prompt: str,
    on_bad_record: str,
    limit: int | None = None,
    indices: list[int] | None = None,
) -> tuple[list[EncodedPrompt], DataReport]:
    """Prompts for online DPO (``formats.extract_prompt``), through the same template, truncation and bad-record
    policy as training pairs; ids are positions in ``rows``."""

    def encode(i, row):
        messages = extract_prompt(row, fmt)
        prompt_ids, truncated = encode_prompt(tokenizer, messages, max_prompt_length, over_long_prompt)
        fields = {
            k: v for k, v in row.items() if k not in ("prompt", "messages") and isinstance(v, (str, int, float, bool))
        }
        return EncodedPrompt(i, prompt_ids, messages, fields), truncated

    return encode_records(
        rows,
        source,
        encode,
        over_long_prompt=over_long_prompt,
        on_bad_record=on_bad_record,
        limit=limit,
        indices=indices,
    )


def build_scoring_dataset(
    rows,
    source: str,
    tokenizer,
    *,
    fmt: str,
    preference: str,
    eos_token_id: int,
    max_prompt_length: int,
    max_response_length: int,
    over_long_prompt: str,
    on_bad_record: str,
    chat_template: bool = True,
    limit: int | None = None,
    response_eos: bool = True,
    seed_by: str = "index",
) -> tuple[str, list[dict], DataReport]:
    """(mode, records, report) for ``align.score``: each record ``{"index", "key", "prompt_ids", "responses": [ids,
    ...]}`` (``"label"`` too for choices), its responses encoded and EOS-extended as in training. ``fmt``:
    ``response``, ``choices``, a preference schema, or ``auto`` (choices, response, else the preference schema of the
    first record); mode is response, choices or pairs. ``response_eos=False`` (response mode only): responses are
    scored as bare continuations, without EOS. ``key`` seeds the record's draws: its index, or (``seed_by="content"``)
    :func:`content_key` of its tokens."""
    if fmt == "auto":
        first = next((r for r in rows if isinstance(r, dict)), None)
        if first is not None and "choices" in first:
            fmt = "choices"
        elif first is not None and ("response" in first or ("text" in first and "chosen" not in first)):
            fmt = "response"
    note = ""
    if fmt not in ("response", "choices"):
        fmt, note = resolve_format(rows, fmt, source, option="format")
    mode = fmt if fmt in ("response", "choices") else "pairs"
    if not response_eos and mode != "response":
        raise ConfigError(f"response_eos=false scores bare continuations: response records only, not {mode} ({source})")
    if seed_by not in ("index", "content"):
        raise ValueError(f"seed_by={seed_by!r}; expected 'index' or 'content'")

    def prompt(messages):
        if not messages:
            return [], False
        return encode_prompt(tokenizer, messages, max_prompt_length, over_long_prompt, chat_template)

    def encode(i, row):
        label = None
        if mode == "response":
            messages, response = extract_response(row)
            texts = [response]
        elif mode == "choices":
            messages, texts, label = extract_choices(row)
        else:
            messages, chosen, rejected = extract(row, fmt, preference)
            texts = [chosen, rejected]
        prompt_ids, truncated = prompt(messages)
        responses = [encode_response(tokenizer, t, eos_token_id, max_response_length, eos=response_eos) for t in texts]
        if mode == "pairs" and responses[0] == responses[1]:
            raise BadRecord("chosen and rejected are identical after truncation")
        if not all(responses):
            raise BadRecord("empty response")
        responses = common_length(responses, eos_token_id)
        key = i if seed_by == "index" else content_key(prompt_ids, responses)
        record = {"index": i, "key": key, "prompt_ids": prompt_ids, "responses": responses}
        if label is not None:
            record["label"] = label
        return record, truncated

    out, report = encode_records(
        rows,
        source,
        encode,
        over_long_prompt=over_long_prompt,
        on_bad_record=on_bad_record,
        limit=limit,
        option_prefix="",
    )
    report.note = note
    return mode, out, report


def content_key(prompt_ids: list[int], responses: list[list[int]]) -> int:
    """A 62-bit key of a record's tokens: seeded by it, a record gets the same masks wherever it is scored (any file,
    order, batch or lm-eval run; and so for every model scored on it: a coupled comparison across runs)."""
    import hashlib

    words = [len(prompt_ids), *prompt_ids] + [t for r in responses for t in (len(r), *r)]
    digest = hashlib.sha256(",".join(map(str, words)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


# ---------------------------------------------------------------- batches


def pad_rows(rows: list[tuple[list[int], list[int]]], pad_token_id: int):
    """Rows of (prompt ids, response ids), right-padded to the longest: (ids, attention_mask, response_mask), each
    ``[rows, T]`` (long, long, bool)."""
    T = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), T), pad_token_id, dtype=torch.long)
    attention = torch.zeros(len(rows), T, dtype=torch.long)
    response = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, (p, r) in enumerate(rows):
        P, L = len(p), len(r)
        ids[i, : P + L] = torch.tensor(p + r, dtype=torch.long)
        attention[i, : P + L] = 1
        response[i, P : P + L] = True
    return ids, attention, response


def collate(examples: list[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: chosen/rejected [b, T], attention_mask, response_mask [b, T], ids [b]."""
    chosen, attention, response = pad_rows([(e.prompt_ids, e.chosen_ids) for e in examples], pad_token_id)
    rejected, _, _ = pad_rows([(e.prompt_ids, e.rejected_ids) for e in examples], pad_token_id)  # same lengths
    return {
        "chosen_ids": chosen,
        "rejected_ids": rejected,
        "attention_mask": attention,
        "response_mask": response,
        "ids": torch.tensor([e.id for e in examples]),
    }


def collate_sft(
    examples: list[EncodedSFT], pad_token_id: int, eos_token_id: int, response_length: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded SFT batch: input_ids, attention_mask, response_mask [b, T], ids [b].

    Responses are EOS-extended (the EOS tokens are attended and scored, as in LLaDA's SFT) to
    ``response_length``, or to the longest response of the batch when it is None. That teaches
    the model to fill the tail of a fixed-length generation with EOS, which LLaDA's sampler relies on.
    """
    L = response_length or max(len(e.response_ids) for e in examples)
    responses = [e.response_ids[:L] + [eos_token_id] * (L - len(e.response_ids[:L])) for e in examples]
    ids, attention, response = pad_rows([(e.prompt_ids, r) for e, r in zip(examples, responses)], pad_token_id)
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "response_mask": response,
        "ids": torch.tensor([e.id for e in examples]),
    }


def collate_responses(records: list[dict], pad_token_id: int):
    """Scoring: every record's responses after its prompt, right-padded: (ids, response_mask, attention, groups),
    ``groups[g]``: the rows of record g (they share its masks)."""
    rows = [(r["prompt_ids"], resp) for r in records for resp in r["responses"]]
    ids, attention, response = pad_rows(rows, pad_token_id)
    return ids, response, attention, [len(r["responses"]) for r in records]
