"""Record schemas: what a record of each ``data.format`` holds, read into (prompt messages, responses).

Preference pairs (DPO, and scoring ``pairs``):

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

SFT records: ``prompt_response``, ``messages``, ``text`` (:func:`extract_sft`). Scoring adds ``response`` (a
prompt may be absent) and ``choices`` (:func:`extract_response`, :func:`extract_choices`).
A record that does not fit raises :class:`BadRecord` saying why (and which schema its fields look like).
"""

from __future__ import annotations

import re

from align.data.sources import BadRecord, Records


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
    if (
        len(chosen) != k + 1
        or len(rejected) != k + 1
        or "assistant" != chosen[-1]["role"]
        or "assistant" != rejected[-1]["role"]
    ):
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
            if (
                name == "pairs"
                and "prompt" not in row
                and all(isinstance(row[k], str) and "\n\nAssistant:" in row[k] for k in ("chosen", "rejected"))
            ):
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


def resolve_format(rows, fmt: str, source: str, sft: bool = False, option: str = "data.format") -> tuple[str, str]:
    """(``fmt``, or for ``auto`` the schema of the first readable record; a note saying so). ``option``: the
    setting's name in messages (``format`` when scoring)."""
    if fmt != "auto":
        return fmt, ""
    first = next((i for i, r in enumerate(rows) if isinstance(r, dict)), None)
    found = detect_format(rows[first], sft) if first is not None else None
    where = rows.where(first) if isinstance(rows, Records) and first is not None else source
    if found is None:
        fields = ", ".join(sorted(rows[first])) if first is not None else "no readable record"
        schemas = "; ".join(f"{k}: {', '.join(v)}" for k, v in (SFT_SCHEMAS if sft else PREFERENCE_SCHEMAS).items())
        raise BadRecord(
            f"{where}: {option}=auto cannot tell the schema from the fields ({fields}); known: {schemas}. Set {option}"
        )
    return found, f"{option}=auto chose {found} (the fields of {where})"


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


def extract_response(row) -> tuple[list[dict], str]:
    """Scoring ``response``: (prompt messages, possibly none; the response). ``response`` with an optional
    ``prompt`` (string or messages), or ``text`` alone (all of it scored)."""
    if not isinstance(row, dict):
        raise BadRecord(f"record is {type(row).__name__}, not an object")
    if "response" in row:
        messages = [] if row.get("prompt") in (None, "") else _prompt(row)
        response = row["response"]
    elif "text" in row:
        messages, response = [], row["text"]
    else:
        raise BadRecord("needs 'response' (with 'prompt') or 'text'")
    if not isinstance(response, str) or not response.strip():
        raise BadRecord("empty or non-string response")
    return messages, response


def extract_choices(row) -> tuple[list[dict], list[str], int]:
    """Scoring ``choices``: (prompt messages, the choices, the index of the right one). ``prompt`` (or
    ``question``; string or messages), ``choices`` (at least two non-empty strings), ``label``."""
    if not isinstance(row, dict):
        raise BadRecord(f"record is {type(row).__name__}, not an object")
    choices, label = row.get("choices"), row.get("label")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise BadRecord("'choices' must be a list of at least 2 non-empty strings")
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
        raise BadRecord(f"'label' must be an index into the {len(choices)} choices, got {label!r}")
    prompt = row.get("prompt", row.get("question", ""))
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) and prompt else (prompt or [])
    return messages, choices, label


PROMPT_FORMATS = ("prompt", "messages", "auto")


def extract_prompt(row, fmt: str) -> list[dict]:
    """Online DPO: a record's prompt as messages, ending in a user turn.

    - ``prompt``: ``prompt``, a string (one user turn) or a conversation;
    - ``messages``: a conversation; a last assistant message (an answer someone wrote) is dropped, so SFT and
      chat datasets serve as prompt sources;
    - ``auto``: ``prompt`` when the record has that field, else ``messages``. Any preference record with a
      ``prompt`` field (pku_saferlhf, pairs) is a prompt record too.
    """
    if not isinstance(row, dict):
        raise BadRecord(f"record is {type(row).__name__}, not an object")
    if fmt == "auto":
        fmt = "prompt" if "prompt" in row else "messages" if "messages" in row else None
        if fmt is None:
            raise BadRecord(f"neither a 'prompt' nor a 'messages' field (fields: {', '.join(sorted(row))[:120]})")
    if fmt == "prompt":
        messages = _prompt(row)
    elif fmt == "messages":
        messages = _messages(row.get("messages"), "messages")
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
    else:
        raise ValueError(f"unknown prompt format {fmt!r}; expected one of {', '.join(PROMPT_FORMATS)}")
    if not messages or messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise BadRecord("the prompt must end in a non-empty user message")
    return messages
