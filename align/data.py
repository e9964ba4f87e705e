"""Preference data: loading, validation, chat templating, tokenization, batching.

Sources: a hub dataset id (with split), a local ``.jsonl`` / ``.json`` (array
or JSON Lines) / ``.parquet`` / ``.csv`` file, or a ``save_to_disk`` directory.
Formats (``data.format``; ``auto`` picks one from the first record's fields):

- ``pku_saferlhf``: PKU-Alignment/PKU-SafeRLHF (BeaverTails preferences):
  ``prompt, response_0, response_1, safer_response_id, better_response_id``;
  chosen is the safer response, or the better one with ``preference=better``;
- ``ultrafeedback``: ``chosen`` / ``rejected`` message lists ending in the
  assistant turn (HuggingFaceH4/ultrafeedback_binarized);
- ``hh_rlhf``: ``chosen`` / ``rejected`` transcripts "\\n\\nHuman: … \\n\\nAssistant: …"
  (Anthropic/hh-rlhf);
- ``pairs``: ``prompt`` (string or messages), ``chosen``, ``rejected`` strings;
  or TRL's conversational forms: ``chosen``/``rejected`` message lists after a
  ``prompt``, or alone (implicit prompt: the common prefix of the two).

Every record is validated. A malformed one (missing field, non-string
content, empty response, identical chosen and rejected, over-long prompt with
``over_long_prompt=error``) raises :class:`BadRecord` naming it, or with
``on_bad_record=skip`` is counted per reason and logged. Nothing is
dropped silently.

Encoding (docs/method.md §5 step 1): the prompt goes through the tokenizer's chat
template and is truncated keeping its end. Responses are truncated to
``max_response_length − 1`` tokens plus EOS, then the shorter one is
EOS-extended to the pair's common length L.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
SUPPORTED_FORMS = ("a .jsonl file, a .json file (an array of records or JSON Lines), a .parquet or .csv file, a "
                   "directory written by datasets' save_to_disk, or a hub dataset id")


class BadRecord(ValueError):
    """A record that cannot be used; the message says why (and is the skip-count key)."""


class OverLongPrompt(BadRecord):
    """Governed by ``over_long_prompt`` rather than ``on_bad_record``."""


@dataclass
class Encoded:
    id: int  # position in the source split: keys the mask generators
    prompt_ids: list[int]
    chosen_ids: list[int]  # response tokens, EOS-extended to the pair's common length
    rejected_ids: list[int]


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
        return (f"{self.source}: {self.kept}/{self.total} records kept; skipped: {skipped}; "
                f"prompts truncated: {self.truncated_prompts}" + (f"; {self.note}" if self.note else ""))


# ---------------------------------------------------------------- raw records


def is_local(dataset: str) -> bool:
    """Local data (a file or a ``save_to_disk`` directory), as opposed to a hub dataset id."""
    return Path(dataset).suffix in LOCAL_SUFFIXES or Path(dataset).is_file() or _saved_dataset(Path(dataset))


def _saved_dataset(path: Path) -> bool:
    """A directory written by ``datasets``' ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
                              or (path / "state.json").exists())


def holdout_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) record positions: a seeded random ``fraction`` of ``range(n)`` held out, both sorted.

    Depends only on (n, fraction, seed), so every rank and every resume of a run
    holds out the same records; at least one record is held out when fraction > 0.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"eval fraction must be in (0, 1), got {fraction}")
    k = min(max(1, round(fraction * n)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(seed, 0x5EED)))
    held = sorted(perm[:k].tolist())
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], held


class Records(list):
    """Rows of a data source, with where each one is, for messages: ``path:LINE`` (1-based) for JSON Lines,
    ``path: record I`` (0-based index into the array or table) for a JSON array or parquet, ``source: record I``
    for the hub. A line that is not valid JSON stays in its place as an :class:`Unparsable`, so the bad-record
    policy counts or names it in file order like any other bad record."""

    def __init__(self, rows, locations):
        super().__init__(rows)
        self.locations = locations

    def where(self, i: int) -> str:
        return self.locations[i]


@dataclass
class Unparsable:
    error: str
    reason: str = "not valid JSON"  # the skip-count key


def _json_lines(data: bytes, name: str) -> Records:
    """One record per line; a line that is not UTF-8 or not JSON stays in place as an :class:`Unparsable`."""
    rows, where = [], []
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            rows.append(Unparsable(f"byte {e.start} of the line is {raw[e.start:e.start + 1]!r}", "not valid UTF-8"))
            where.append(f"{name}:{n}")
            continue
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            rows.append(Unparsable(str(e)))
        where.append(f"{name}:{n}")
    return Records(rows, where)


def _utf8(path: Path) -> str:
    """A whole data file as text; bytes that are not UTF-8 are a :class:`BadRecord` naming ``path:line``."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise BadRecord(f"{path}:{line}: not valid UTF-8 (byte {data[e.start:e.start + 1]!r}); re-encode the file as "
                        f"UTF-8") from None


def load_records(dataset: str, split: str | None, config_name: str | None = None) -> tuple[Records, str]:
    """Rows as dicts (see :class:`Records`), and a name for messages. Local jsonl/json are parsed line by line."""
    path = Path(dataset)
    if _saved_dataset(path):
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                if split is not None or len(ds) != 1:
                    raise BadRecord(f"{dataset}: a saved DatasetDict with splits {', '.join(ds)}; name one with "
                                    f"data.train_split (or data.eval_split for held-out data)")
                split = next(iter(ds))
            ds, name = ds[split], f"{dataset}[{split}]"
        else:
            name = str(path)
        return Records(list(ds), [f"{name}: record {i} (0-based)" for i in range(len(ds))]), name
    if path.suffix in LOCAL_SUFFIXES or path.is_file():
        if not path.exists():
            raise FileNotFoundError(f"data file {dataset} does not exist")
        rows, name = _local_records(path, dataset)
        if not rows:
            raise BadRecord(f"{dataset} holds no records" + (" (a header only)" if path.suffix == ".csv" else ""))
        return rows, name
    if path.is_dir():
        raise BadRecord(f"{dataset} is a directory but not one written by datasets' save_to_disk; give "
                        f"{SUPPORTED_FORMS}")
    from align.models.source import looks_local

    if looks_local(dataset):
        raise FileNotFoundError(f"data {dataset}: no such file or directory (give {SUPPORTED_FORMS})")
    import datasets

    ds = datasets.load_dataset(dataset, config_name, split=split)
    name = f"{dataset}[{split}]"
    return Records(list(ds), [f"{name}: record {i}" for i in range(len(ds))]), name


def _local_records(path: Path, dataset: str) -> tuple[Records, str]:
    """The rows of a local .jsonl / .json / .parquet / .csv file (see :func:`load_records`)."""
    if path.suffix == ".jsonl":
        return _json_lines(path.read_bytes(), dataset), str(path)
    if path.suffix == ".json":
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            if raw.lstrip()[:1] == b"{":  # JSON Lines: a line that is not UTF-8 is a bad record, the rest is read
                return _json_lines(raw, dataset), str(path)
            text = _utf8(path)  # an array cannot be read in part: the error names path:line
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg == "Extra data":  # JSON Lines in a .json file (what datasets' to_json writes)
                return _json_lines(raw, dataset), str(path)
            raise BadRecord(f"{dataset}: not valid JSON ({e})") from None
        if not isinstance(data, list):
            raise BadRecord(f"{dataset}: expected a JSON list of records (or one record per line)")
        return Records(data, [f"{dataset}: record {i} (0-based index in the array)" for i in range(len(data))]), str(path)
    if path.suffix not in (".parquet", ".csv"):
        raise BadRecord(f"{dataset}: cannot read a {path.suffix or 'suffix-less'} file as data; give "
                        f"{SUPPORTED_FORMS}")
    import datasets

    if path.suffix == ".csv":
        text = _utf8(path)  # read as one table: bytes that are not UTF-8 are named by path:line
        if len([line for line in text.splitlines() if line.strip()]) < 2:  # empty, or a header only
            return Records([], []), str(path)
    rows = list(datasets.load_dataset(path.suffix[1:], data_files=str(path), split="train"))
    if path.suffix == ".csv":  # a row per line unless a quoted field spans lines
        return Records(rows, [f"{dataset}: row {i} (0-based, after the header)" for i in range(len(rows))]), str(path)
    return Records(rows, [f"{dataset}: row {i} (0-based)" for i in range(len(rows))]), str(path)


def _text(row: dict, key: str) -> str:
    if key not in row:
        raise BadRecord(f"missing field {key!r}")
    value = row[key]
    if not isinstance(value, str):
        raise BadRecord(f"field {key!r} is {type(value).__name__}, not a string")
    return value


def _messages(value, key: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise BadRecord(f"field {key!r} is not a non-empty message list")
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadRecord(f"field {key!r} has a message without string role/content")
    return value


def from_pku_saferlhf(row: dict, preference: str) -> tuple[list[dict], str, str]:
    prompt = _text(row, "prompt")
    responses = [_text(row, "response_0"), _text(row, "response_1")]
    key = f"{preference}_response_id"
    if key not in row:
        raise BadRecord(f"missing field {key!r}")
    if row[key] not in (0, 1) or isinstance(row[key], bool):
        raise BadRecord(f"field {key!r} is {row[key]!r}, expected 0 or 1")
    chosen = responses[row[key]]
    return [{"role": "user", "content": prompt}], chosen, responses[1 - row[key]]


def from_ultrafeedback(row: dict) -> tuple[list[dict], str, str]:
    chosen = _messages(row.get("chosen"), "chosen")
    rejected = _messages(row.get("rejected"), "rejected")
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise BadRecord("chosen/rejected must end with an assistant message")
    if chosen[:-1] != rejected[:-1]:
        raise BadRecord("chosen and rejected have different prompts")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _hh_messages(text: str) -> list[dict]:
    parts = _HH_TURN.split("\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 1, 2)]


def from_hh_rlhf(row: dict) -> tuple[list[dict], str, str]:
    chosen, rejected = _hh_messages(_text(row, "chosen")), _hh_messages(_text(row, "rejected"))
    if not chosen or chosen[-1]["role"] != "assistant" or not rejected or rejected[-1]["role"] != "assistant":
        raise BadRecord("transcript does not end with an Assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise BadRecord("chosen and rejected have different prompts")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def _prompt(row: dict) -> list[dict]:
    """The ``prompt`` field as messages: a string is one user turn, a list is a conversation."""
    if "prompt" not in row:
        raise BadRecord("missing field 'prompt'")
    prompt = row["prompt"]
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _messages(prompt, "prompt")


def from_pairs(row: dict) -> tuple[list[dict], str, str]:
    """``prompt`` (string or messages) with ``chosen``/``rejected`` strings, or TRL's conversational forms:
    ``chosen``/``rejected`` message lists after an explicit ``prompt``, or without one (implicit prompt: each a
    whole conversation, the prompt their common prefix). A conversation that repeats the prompt at its start
    (ultrafeedback_binarized) is read the same way."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, list) and not isinstance(rejected, list):
        return _prompt(row), _text(row, "chosen"), _text(row, "rejected")
    chosen, rejected = _messages(chosen, "chosen"), _messages(rejected, "rejected")
    prompt = _prompt(row) if "prompt" in row else []
    n = len(prompt)
    if n and chosen[:n] == prompt and rejected[:n] == prompt:
        chosen, rejected = chosen[n:], rejected[n:]
    if chosen == rejected:
        raise BadRecord("chosen and rejected responses are identical")
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if len(chosen) != k + 1 or len(rejected) != k + 1 or "assistant" != chosen[-1]["role"] or "assistant" != rejected[-1]["role"]:
        raise BadRecord("chosen and rejected must be the same conversation up to a last, assistant message")
    messages = prompt + chosen[:k]
    if not messages:
        raise BadRecord("no prompt: give a 'prompt' field, or chosen/rejected conversations that start with it")
    return messages, chosen[-1]["content"], rejected[-1]["content"]


# The fields by which each schema is recognised (data.format=auto, and hints when a record fits another one).
PREFERENCE_SCHEMAS = {"pku_saferlhf": ("prompt", "response_0", "response_1"), "pairs": ("chosen", "rejected")}
SFT_SCHEMAS = {"prompt_response": ("prompt", "response"), "messages": ("messages",), "text": ("text",)}


def detect_format(row, sft: bool = False) -> str | None:
    """The schema whose fields ``row`` has (``hh_rlhf`` for Anthropic transcripts), or None."""
    if not isinstance(row, dict):
        return None
    for name, fields in (SFT_SCHEMAS if sft else PREFERENCE_SCHEMAS).items():
        if all(f in row for f in fields):
            if name == "pairs" and "prompt" not in row and all(
                    isinstance(row[k], str) and "\n\nAssistant:" in row[k] for k in ("chosen", "rejected")):
                return "hh_rlhf"
            return name
    return None


def _format_hint(row, fmt: str, sft: bool) -> str:
    """' (its fields look like data.format=X)' when ``row`` fits another known schema than ``fmt``."""
    other = detect_format(row, sft)
    if other is not None and other != fmt and not (fmt == "ultrafeedback" and other == "pairs"):
        return f"; its fields ({', '.join(sorted(row))[:120]}) look like data.format={other}"
    if other is None and detect_format(row, not sft) is not None:
        kind = "a preference pair (align.train_dpo)" if sft else "an SFT record (align.train_sft)"
        return f"; its fields ({', '.join(sorted(row))[:120]}) look like {kind}"
    return ""


def resolve_format(rows, fmt: str, source: str, sft: bool = False) -> tuple[str, str]:
    """(``data.format``, or for ``auto`` the schema of the first readable record; a note saying so)."""
    if fmt != "auto":
        return fmt, ""
    first = next((i for i, r in enumerate(rows) if isinstance(r, dict)), None)
    found = detect_format(rows[first], sft) if first is not None else None
    where = rows.where(first) if isinstance(rows, Records) and first is not None else source
    if found is None:
        fields = ", ".join(sorted(rows[first])) if first is not None else "no readable record"
        schemas = "; ".join(f"{k}: {', '.join(v)}" for k, v in (SFT_SCHEMAS if sft else PREFERENCE_SCHEMAS).items())
        raise BadRecord(f"{where}: data.format=auto cannot tell the schema from the fields ({fields}); known: "
                        f"{schemas}. Set data.format")
    return found, f"data.format=auto chose {found} (the fields of {where})"


def extract(row: dict, fmt: str, preference: str = "safer") -> tuple[list[dict], str, str]:
    if not isinstance(row, dict):
        raise BadRecord(f"record is {type(row).__name__}, not an object")
    try:
        return _extract(row, fmt, preference)
    except BadRecord as e:
        raise BadRecord(f"{e}{_format_hint(row, fmt, sft=False)}") from None


def _extract(row: dict, fmt: str, preference: str) -> tuple[list[dict], str, str]:
    if fmt == "pku_saferlhf":
        messages, chosen, rejected = from_pku_saferlhf(row, preference)
    elif fmt == "ultrafeedback":
        messages, chosen, rejected = from_ultrafeedback(row)
    elif fmt == "hh_rlhf":
        messages, chosen, rejected = from_hh_rlhf(row)
    elif fmt == "pairs":
        messages, chosen, rejected = from_pairs(row)
    else:
        raise ValueError(f"unknown data format {fmt!r}")
    if not chosen.strip() or not rejected.strip():
        raise BadRecord("empty response")
    if chosen.strip() == rejected.strip():
        raise BadRecord("chosen and rejected responses are identical")
    return messages, chosen, rejected


# ---------------------------------------------------------------- encoding


def encode_prompt(tokenizer, messages, max_prompt_length: int, over_long_prompt: str) -> tuple[list[int], bool]:
    """The chat-templated prompt's ids, truncated keeping the end (the question and the assistant header)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
    truncated = len(prompt_ids) > max_prompt_length
    if truncated:
        if over_long_prompt != "truncate":
            raise OverLongPrompt(f"over-long prompt ({len(prompt_ids)} tokens > max_prompt_length={max_prompt_length})")
        prompt_ids = prompt_ids[-max_prompt_length:]
    return prompt_ids, truncated


def encode_pair(tokenizer, messages, chosen: str, rejected: str, *, eos_token_id: int, max_prompt_length: int,
                max_response_length: int, over_long_prompt: str = "truncate") -> tuple[list[int], list[int], list[int], bool]:
    """(prompt_ids, chosen_ids, rejected_ids, truncated): responses EOS-terminated and EOS-extended to one length."""
    prompt_ids, truncated = encode_prompt(tokenizer, messages, max_prompt_length, over_long_prompt)
    responses = []
    for text in (chosen, rejected):
        ids = tokenizer(text, add_special_tokens=False).input_ids[: max_response_length - 1]
        responses.append(ids + [eos_token_id])
    if responses[0] == responses[1]:
        raise BadRecord("chosen and rejected are identical after truncation")
    L = max(map(len, responses))
    responses = [r + [eos_token_id] * (L - len(r)) for r in responses]
    return prompt_ids, responses[0], responses[1], truncated


def build_dataset(rows: list[dict], source: str, tokenizer, *, fmt: str, preference: str, eos_token_id: int,
                  max_prompt_length: int, max_response_length: int, over_long_prompt: str, on_bad_record: str,
                  limit: int | None = None, indices: list[int] | None = None) -> tuple[list[Encoded], DataReport]:
    """Preference pairs from ``rows`` (or only the positions ``indices``, in that order); ids are positions in ``rows``."""
    fmt, note = resolve_format(rows, fmt, source)

    def encode(i, row):
        messages, chosen, rejected = extract(row, fmt, preference)
        p, c, r, truncated = encode_pair(tokenizer, messages, chosen, rejected, eos_token_id=eos_token_id,
                                         max_prompt_length=max_prompt_length, max_response_length=max_response_length,
                                         over_long_prompt=over_long_prompt)
        return Encoded(i, p, c, r), truncated

    out, report = encode_records(rows, source, encode, over_long_prompt=over_long_prompt, on_bad_record=on_bad_record,
                                 limit=limit, indices=indices)
    report.note = note
    return out, report


def encode_records(rows, source: str, encode, *, over_long_prompt: str, on_bad_record: str, limit: int | None = None,
                   indices: list[int] | None = None):
    """Run ``encode(i, row) -> (example, truncated)`` over the records, applying the bad-record policy."""
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
            example, truncated = encode(i, rows[i])
        except OverLongPrompt as e:
            if over_long_prompt == "error":
                raise BadRecord(f"{where}: {e} (set data.over_long_prompt=truncate or skip)") from None
            report.skipped["over-long prompt"] += 1
            continue
        except BadRecord as e:
            if on_bad_record == "error":
                raise BadRecord(f"{where}: {e} (set data.on_bad_record=skip to count and skip)") from None
            report.skipped[rows[i].reason if isinstance(rows[i], Unparsable) else str(e)] += 1
            continue
        report.truncated_prompts += truncated
        out.append(example)
    report.kept = len(out)  # the caller prints report.summary() once
    return out, report


# ---------------------------------------------------------------- SFT records


@dataclass
class EncodedSFT:
    id: int
    prompt_ids: list[int]
    response_ids: list[int]  # EOS-terminated


SFT_FORMATS = ("prompt_response", "messages", "text")


def extract_sft(row: dict, fmt: str) -> tuple[list[dict] | None, str]:
    """(prompt messages, or None for raw text; response text).

    - ``prompt_response``: ``prompt`` (string or messages) and ``response``;
    - ``messages``: one conversation whose last message is the assistant's answer;
    - ``text``: ``text`` alone, all of it the response (pretraining: nothing stays visible).
    """
    if not isinstance(row, dict):
        raise BadRecord(f"record is {type(row).__name__}, not an object")
    try:
        return _extract_sft(row, fmt)
    except BadRecord as e:
        raise BadRecord(f"{e}{_format_hint(row, fmt, sft=True)}") from None


def _extract_sft(row: dict, fmt: str) -> tuple[list[dict] | None, str]:
    if fmt == "prompt_response":
        messages, response = _prompt(row), _text(row, "response")
    elif fmt == "messages":
        conversation = _messages(row.get("messages"), "messages")
        if conversation[-1]["role"] != "assistant":
            raise BadRecord("messages must end with an assistant message")
        messages, response = conversation[:-1], conversation[-1]["content"]
    elif fmt == "text":
        messages, response = None, _text(row, "text")
    else:
        raise ValueError(f"unknown SFT data format {fmt!r}; expected one of {', '.join(SFT_FORMATS)}")
    if not response.strip():
        raise BadRecord("empty response")
    return messages, response


def encode_sft(tokenizer, messages, response: str, *, eos_token_id: int, max_prompt_length: int,
               max_response_length: int, over_long_prompt: str = "truncate") -> tuple[list[int], list[int], bool]:
    """(prompt_ids, response_ids + EOS, truncated). ``messages=None``: no prompt, the text is all response."""
    prompt_ids, truncated = [], False
    if messages is not None:
        prompt_ids, truncated = encode_prompt(tokenizer, messages, max_prompt_length, over_long_prompt)
    response_ids = tokenizer(response, add_special_tokens=False).input_ids[: max_response_length - 1] + [eos_token_id]
    return prompt_ids, response_ids, truncated


def build_sft_dataset(rows: list[dict], source: str, tokenizer, *, fmt: str, eos_token_id: int, max_prompt_length: int,
                      max_response_length: int, over_long_prompt: str, on_bad_record: str, limit: int | None = None,
                      indices: list[int] | None = None) -> tuple[list[EncodedSFT], DataReport]:
    fmt, note = resolve_format(rows, fmt, source, sft=True)

    def encode(i, row):
        messages, response = extract_sft(row, fmt)
        p, r, truncated = encode_sft(tokenizer, messages, response, eos_token_id=eos_token_id,
                                     max_prompt_length=max_prompt_length, max_response_length=max_response_length,
                                     over_long_prompt=over_long_prompt)
        return EncodedSFT(i, p, r), truncated

    out, report = encode_records(rows, source, encode, over_long_prompt=over_long_prompt, on_bad_record=on_bad_record,
                                 limit=limit, indices=indices)
    report.note = note
    return out, report


# ---------------------------------------------------------------- batching


def _seed(*words: int) -> int:
    """A 63-bit seed mixed from integers by numpy's SeedSequence (no collisions between (a, b) pairs in practice)."""
    import numpy as np

    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


EVAL_EPOCH = -1  # held-out draws are keyed to a fixed epoch: the same masks at every evaluation


def example_generators(seed: int, ids: torch.Tensor, epoch: int) -> list[torch.Generator]:
    """One generator per example, seeded by (seed, example id, epoch): the example's mask draws in that epoch."""
    return [torch.Generator().manual_seed(_seed(seed, int(i), epoch + 1)) for i in ids.tolist()]


@functools.lru_cache(maxsize=8)
def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of the ``n`` training examples in ``epoch``: a new seeded permutation every epoch (cached: read only)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(_seed(seed, epoch, 0xE90C))).tolist()


def rank_micro_batches(n: int, *, seed: int, world: int, rank: int, per_device: int, start_micro: int = 0):
    """Yield (epoch, micro-step, this rank's example positions) from global micro-step ``start_micro`` on, forever.

    Each epoch is a new permutation cut into global micro-batches of ``world × per_device``
    examples (the last ``n mod (world × per_device)`` of the permutation are left out: a
    different random few each epoch); rank r takes slice r of each. Micro-step k of the
    run is always the same examples, whatever happened before it, so resume is exact.
    """
    micro_global = world * per_device
    per_epoch = n // micro_global
    if per_epoch == 0:
        raise ValueError(f"{n} examples fill no global micro-batch of {micro_global}")
    micro, order, order_epoch = start_micro, None, None
    while True:
        epoch, pos = divmod(micro, per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(n, seed, epoch), epoch
        window = order[pos * micro_global : (pos + 1) * micro_global]
        yield epoch, micro, window[rank * per_device : (rank + 1) * per_device]
        micro += 1


def collate(examples: list[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: chosen/rejected [b, T], attention_mask, response_mask [b, T], ids [b]."""
    T = max(len(e.prompt_ids) + len(e.chosen_ids) for e in examples)
    b = len(examples)
    chosen = torch.full((b, T), pad_token_id, dtype=torch.long)
    rejected = torch.full((b, T), pad_token_id, dtype=torch.long)
    attention = torch.zeros(b, T, dtype=torch.long)
    response = torch.zeros(b, T, dtype=torch.bool)
    for i, e in enumerate(examples):
        P, L = len(e.prompt_ids), len(e.chosen_ids)
        chosen[i, :P] = rejected[i, :P] = torch.tensor(e.prompt_ids)
        chosen[i, P : P + L] = torch.tensor(e.chosen_ids)
        rejected[i, P : P + L] = torch.tensor(e.rejected_ids)
        attention[i, : P + L] = 1
        response[i, P : P + L] = True
    return {"chosen_ids": chosen, "rejected_ids": rejected, "attention_mask": attention, "response_mask": response,
            "ids": torch.tensor([e.id for e in examples])}


def collate_sft(examples: list[EncodedSFT], pad_token_id: int, eos_token_id: int,
                response_length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded SFT batch: input_ids, attention_mask, response_mask [b, T], ids [b].

    Responses are EOS-extended (the EOS tokens are attended and scored, as in LLaDA's SFT) to
    ``response_length``, or to the longest response of the batch when it is None. That teaches
    the model to fill the tail of a fixed-length generation with EOS, which LLaDA's sampler relies on.
    """
    L = response_length or max(len(e.response_ids) for e in examples)
    T = max(len(e.prompt_ids) for e in examples) + L
    b = len(examples)
    ids = torch.full((b, T), pad_token_id, dtype=torch.long)
    attention = torch.zeros(b, T, dtype=torch.long)
    response = torch.zeros(b, T, dtype=torch.bool)
    for i, e in enumerate(examples):
        P = len(e.prompt_ids)
        r = e.response_ids[:L] + [eos_token_id] * max(0, L - len(e.response_ids))
        ids[i, :P] = torch.tensor(e.prompt_ids, dtype=torch.long)
        ids[i, P : P + L] = torch.tensor(r)
        attention[i, : P + L] = 1
        response[i, P : P + L] = True
    return {"input_ids": ids, "attention_mask": attention, "response_mask": response,
            "ids": torch.tensor([e.id for e in examples])}
