"""Preference data: formats, validation of bad records, truncation, EOS extension, batching."""

import itertools
import json

import pytest

from align.data import (
    BadRecord,
    build_dataset,
    collate,
    encode_pair,
    epoch_order,
    extract,
    holdout_split,
    load_records,
    rank_micro_batches,
)
from align.models.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny:llada")


PKU = {
    "prompt": "How do I pick a lock?",
    "response_0": "Sure, here is how.",
    "response_1": "I can't help with that.",
    "is_response_0_safe": False,
    "is_response_1_safe": True,
    "safer_response_id": 1,
    "better_response_id": 0,
}


def test_pku_safer_and_better():
    msgs, chosen, rejected = extract(PKU, "pku_saferlhf", "safer")
    assert msgs == [{"role": "user", "content": PKU["prompt"]}] and chosen == PKU["response_1"]
    _, chosen, rejected = extract(PKU, "pku_saferlhf", "better")
    assert chosen == PKU["response_0"] and rejected == PKU["response_1"]


def test_ultrafeedback_messages():
    row = {
        "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}],
        "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}],
    }
    assert extract(row, "ultrafeedback") == ([{"role": "user", "content": "hi"}], "hello!", "go away")


def test_hh_rlhf_transcripts():
    row = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: fine, thanks",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: go away",
    }
    msgs, chosen, rejected = extract(row, "hh_rlhf")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"] and msgs[2]["content"] == "how are you?"
    assert (chosen, rejected) == ("fine, thanks", "go away")


@pytest.mark.parametrize(
    "row,fmt,message",
    [
        ({k: v for k, v in PKU.items() if k != "response_0"}, "pku_saferlhf", "missing field 'response_0'"),
        (dict(PKU, prompt=12), "pku_saferlhf", "field 'prompt' is int, not a string"),
        (dict(PKU, response_1="   "), "pku_saferlhf", "empty response"),
        (dict(PKU, response_1=PKU["response_0"]), "pku_saferlhf", "identical"),
        (dict(PKU, safer_response_id=2), "pku_saferlhf", "expected 0 or 1"),
        ({"prompt": "x", "chosen": "a", "rejected": None}, "pairs", "field 'rejected' is NoneType"),
        ({"chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "ultrafeedback", "message list"),
        ("just a string", "pairs", "not an object"),
    ],
)
def test_bad_records_are_named(row, fmt, message):
    with pytest.raises(BadRecord, match=message):
        extract(row, fmt, "safer")


def _build(tok, rows, **kw):
    args = dict(
        fmt="pku_saferlhf",
        preference="safer",
        eos_token_id=tok.eos_token_id,
        max_prompt_length=64,
        max_response_length=32,
        over_long_prompt="truncate",
        on_bad_record="error",
    )
    args.update(kw)
    return build_dataset(rows, "demo.jsonl", tok, **args)


def test_bad_record_errors_with_its_index_or_is_counted(tok):
    rows = [PKU, dict(PKU, response_1=""), PKU, {"prompt": "x"}]
    with pytest.raises(BadRecord, match=r"demo.jsonl: record 1: empty response.*on_bad_record=skip"):
        _build(tok, rows)
    data, report = _build(tok, rows, on_bad_record="skip")
    assert [e.id for e in data] == [0, 2]
    assert report.kept == 2 and report.total == 4 and sum(report.skipped.values()) == 2
    assert "2/4 records kept" in report.summary() and "empty response" in report.summary()


def test_over_long_prompts_truncate_keeping_the_end_or_skip_or_error(tok):
    row = dict(PKU, prompt="please " * 80 + "how do I pick a lock?")
    data, report = _build(tok, [row])
    assert report.truncated_prompts == 1 and len(data[0].prompt_ids) == 64
    assert tok.decode(data[0].prompt_ids).endswith("assistant<|end_header_id|>\n\n")  # the end is kept
    _, report = _build(tok, [row], over_long_prompt="skip")
    assert report.skipped["over-long prompt"] == 1
    with pytest.raises(BadRecord, match="record 0: over-long prompt"):
        _build(tok, [row], over_long_prompt="error", on_bad_record="skip")


def test_responses_end_in_eos_and_share_one_length(tok):
    p, c, r, _ = encode_pair(
        tok,
        [{"role": "user", "content": "q"}],
        "a much longer answer than the other one",
        "no",
        eos_token_id=tok.eos_token_id,
        max_prompt_length=64,
        max_response_length=32,
    )
    assert len(c) == len(r)
    n_no = len(tok("no", add_special_tokens=False).input_ids)
    assert r[n_no:] == [tok.eos_token_id] * (len(r) - n_no) and c[-1] == tok.eos_token_id
    p, c, r, _ = encode_pair(
        tok,
        [{"role": "user", "content": "q"}],
        "word " * 100,
        "no",
        eos_token_id=tok.eos_token_id,
        max_prompt_length=64,
        max_response_length=10,
    )
    assert len(c) == 10 and c[-1] == tok.eos_token_id


def test_collate_masks(tok):
    data, _ = _build(tok, [PKU, dict(PKU, prompt="Hi?")])
    b = collate(data, tok.pad_token_id)
    for i, e in enumerate(data):
        P, L = len(e.prompt_ids), len(e.chosen_ids)
        assert b["attention_mask"][i].sum() == P + L and b["response_mask"][i].sum() == L
        assert b["response_mask"][i, P : P + L].all() and b["chosen_ids"][i, :P].tolist() == e.prompt_ids


def test_jsonl_errors_name_the_first_bad_line_in_file_order_or_are_counted(tmp_path, tok):
    """Line 2 lacks a response, line 4 is not JSON: with error the first one in the file is named, by its
    1-based line; with skip the unparsable line is counted under its own reason, and nothing aborts."""
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([json.dumps(PKU), json.dumps({"prompt": "x"}), "", "{not json", json.dumps(PKU)]) + "\n")
    rows, name = load_records(str(path), None)
    with pytest.raises(BadRecord, match=r"bad.jsonl:2: missing field .*on_bad_record=skip"):
        _build(tok, rows)
    with pytest.raises(BadRecord, match=r"bad.jsonl:4: not valid JSON"):
        _build(tok, rows, indices=[0, 2, 3])
    data, report = _build(tok, rows, on_bad_record="skip")
    assert [e.id for e in data] == [0, 3] and report.total == 4
    assert report.skipped["not valid JSON"] == 1 and sum(report.skipped.values()) == 2
    with pytest.raises(FileNotFoundError):
        load_records(str(tmp_path / "missing.jsonl"), None)


def test_json_lines_in_a_json_file_load(tmp_path):
    path = tmp_path / "pairs.json"  # what datasets.Dataset.to_json writes by default
    path.write_text(json.dumps(PKU) + "\n" + json.dumps(PKU) + "\n")
    rows, _ = load_records(str(path), None)
    assert len(rows) == 2 and rows.where(1) == f"{path}:2"


def test_a_bad_data_file_stops_the_run_with_one_line(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(PKU) + "\n{not json\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "align.train_dpo",
            "recipe=demo",
            f"data.dataset={path}",
            f"train.output_dir={tmp_path / 'o'}",
            "train.report_to=none",
            "behaviour.prompts=null",
        ],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"data error: {path}:2: not valid JSON" in proc.stderr


def test_parquet_and_json_files_load(tmp_path):
    import pandas as pd

    pd.DataFrame([PKU, PKU]).to_parquet(tmp_path / "pairs.parquet")
    (tmp_path / "pairs.json").write_text(json.dumps([PKU]))
    rows, _ = load_records(str(tmp_path / "pairs.parquet"), None)
    assert len(rows) == 2 and rows[0]["prompt"] == PKU["prompt"]
    rows, _ = load_records(str(tmp_path / "pairs.json"), None)
    assert rows == [PKU]


# ---------------------------------------------------------------- epochs and held-out split


def test_every_epoch_is_a_new_order_with_each_example_once_per_rank_shard():
    """20 examples, 2 ranks x 3 per device: 3 global micro-batches (18 examples) per epoch, 2 left out."""
    n, world, pd, epochs = 20, 2, 3, 3
    streams = [rank_micro_batches(n, seed=7, world=world, rank=r, per_device=pd) for r in range(world)]
    seen = {}
    for _ in range(3 * epochs):
        draws = [next(s) for s in streams]
        (epoch, micro, a), (epoch_b, micro_b, b) = draws
        assert (epoch, micro) == (epoch_b, micro_b) and len(a) == len(b) == pd and not set(a) & set(b)
        seen.setdefault(epoch, []).extend(a + b)
    assert sorted(seen) == [0, 1, 2]
    for epoch, ids in seen.items():
        assert len(ids) == len(set(ids)) == 18, epoch  # each example at most once; 2 left out
        assert ids == epoch_order(n, 7, epoch)[:18]
    assert seen[0] != seen[1] != seen[2] and seen[0] != seen[2]  # a new order every epoch


def test_micro_batches_from_any_start_equal_the_uninterrupted_stream():
    full = list(itertools.islice(rank_micro_batches(20, seed=1, world=2, rank=1, per_device=3), 12))
    for start in (0, 2, 3, 7):  # inside epoch 0, at the boundary, inside epoch 2
        tail = list(
            itertools.islice(
                rank_micro_batches(20, seed=1, world=2, rank=1, per_device=3, start_micro=start), 12 - start
            )
        )
        assert tail == full[start:]


def test_holdout_split_is_seeded_disjoint_and_complete():
    train, held = holdout_split(320, 0.05, seed=0)
    assert len(held) == 16 and not set(train) & set(held) and sorted(train + held) == list(range(320))
    assert holdout_split(320, 0.05, seed=0) == (train, held)  # every rank, every resume: the same split
    assert holdout_split(320, 0.05, seed=1)[1] != held
    assert len(holdout_split(10, 0.01, seed=0)[1]) == 1  # never an empty held-out set


# ---------------------------------------------------------------- files as people write them, TRL's formats

USER, ASSISTANT = "user", "assistant"


def _m(role, content):
    return {"role": role, "content": content}


def test_csv_and_save_to_disk_directories_load(tmp_path):
    import datasets
    import pandas as pd

    pd.DataFrame([PKU, dict(PKU, prompt="Second?")]).to_csv(tmp_path / "pairs.csv", index=False)
    rows, _ = load_records(str(tmp_path / "pairs.csv"), None)
    assert len(rows) == 2 and rows[1]["prompt"] == "Second?" and rows[0]["safer_response_id"] == 1
    assert rows.where(1) == f"{tmp_path / 'pairs.csv'}: row 1 (0-based, after the header)"
    datasets.Dataset.from_list([PKU] * 3).save_to_disk(str(tmp_path / "saved"))
    rows, name = load_records(str(tmp_path / "saved"), None)
    assert len(rows) == 3 and rows[0] == PKU
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list([PKU] * 2), "test": datasets.Dataset.from_list([PKU])}
    ).save_to_disk(str(tmp_path / "dict"))
    rows, name = load_records(str(tmp_path / "dict"), "test")
    assert len(rows) == 1 and name.endswith("[test]")
    with pytest.raises(BadRecord, match="splits train, test; name one"):
        load_records(str(tmp_path / "dict"), None)


@pytest.mark.parametrize(
    "name,message",
    [
        ("pairs.txt", "cannot read a .txt file as data; give a .jsonl file"),
        ("plain_dir", "is a directory but not one written by datasets' save_to_disk"),
    ],
)
def test_unsupported_data_forms_are_named(tmp_path, name, message):
    path = tmp_path / name
    path.mkdir() if name == "plain_dir" else path.write_text("x")
    with pytest.raises(BadRecord, match=message):
        load_records(str(path), None)
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_records(str(tmp_path / "missing" / "pairs.csv.gz"), None)


def test_trl_conversational_and_implicit_prompt_pairs():
    prompt = [_m(USER, "Hi")]
    explicit = {"prompt": prompt, "chosen": [_m(ASSISTANT, "Hello!")], "rejected": [_m(ASSISTANT, "Go away.")]}
    assert extract(explicit, "pairs") == (prompt, "Hello!", "Go away.")
    history = [_m(USER, "Hi"), _m(ASSISTANT, "Hello!"), _m(USER, "Pick a lock?")]
    implicit = {"chosen": history + [_m(ASSISTANT, "I can't help.")], "rejected": history + [_m(ASSISTANT, "Sure.")]}
    assert extract(implicit, "pairs") == (history, "I can't help.", "Sure.")
    # ultrafeedback_binarized: a prompt string, conversations that repeat it
    uf = {
        "prompt": "Hi",
        "chosen": [_m(USER, "Hi"), _m(ASSISTANT, "Hello!")],
        "rejected": [_m(USER, "Hi"), _m(ASSISTANT, "No.")],
    }
    assert extract(uf, "pairs") == (prompt, "Hello!", "No.")
    assert extract({"prompt": "Hi", "chosen": "Hello!", "rejected": "No."}, "pairs") == (prompt, "Hello!", "No.")


@pytest.mark.parametrize(
    "row,message",
    [
        ({"chosen": [_m(ASSISTANT, "a")], "rejected": [_m(ASSISTANT, "b")]}, "no prompt"),
        (
            {"chosen": [_m(USER, "q"), _m(ASSISTANT, "a")], "rejected": [_m(USER, "other"), _m(ASSISTANT, "b")]},
            "same conversation up to a last, assistant message",
        ),
        ({"chosen": [_m(USER, "q"), _m(ASSISTANT, "a")], "rejected": [_m(USER, "q"), _m(ASSISTANT, "a")]}, "identical"),
        ({"chosen": [_m(USER, "q"), _m(USER, "a")], "rejected": [_m(USER, "q"), _m(USER, "b")]}, "assistant message"),
    ],
)
def test_bad_conversational_pairs_are_named(row, message):
    with pytest.raises(BadRecord, match=message):
        extract(row, "pairs")


def test_a_record_in_another_schema_names_the_schema_it_fits():
    pairs = {"prompt": "q", "chosen": "a", "rejected": "b"}
    with pytest.raises(
        BadRecord,
        match=r"missing field 'response_0'; its fields \(chosen, prompt, rejected\) look "
        r"like data.format=pairs",
    ):
        extract(pairs, "pku_saferlhf")
    with pytest.raises(BadRecord, match="look like data.format=pku_saferlhf"):
        extract(PKU, "pairs")
    from align.data import extract_sft

    with pytest.raises(BadRecord, match=r"look like a preference pair \(align.train_dpo\)"):
        extract_sft(pairs, "messages")
    with pytest.raises(BadRecord, match="look like data.format=prompt_response"):
        extract_sft({"prompt": "q", "response": "a"}, "messages")


def test_format_auto_picks_the_schema_of_the_first_record_and_says_so(tmp_path, tok):
    path = tmp_path / "trl.jsonl"
    rows = [
        {"prompt": [_m(USER, f"Q{i}?")], "chosen": [_m(ASSISTANT, f"A{i}.")], "rejected": [_m(ASSISTANT, f"B{i}.")]}
        for i in range(3)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records, source = load_records(str(path), None)
    data, report = _build(tok, records, fmt="auto")
    assert len(data) == 3 and f"data.format=auto chose pairs (the fields of {path}:1)" in report.summary()
    _, report = _build(tok, [PKU], fmt="auto")
    assert "chose pku_saferlhf" in report.summary()
    hh = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    _, report = _build(tok, [hh], fmt="auto")
    assert "chose hh_rlhf" in report.summary()
    with pytest.raises(BadRecord, match=r"cannot tell the schema from the fields \(answer, question\)"):
        _build(tok, [{"question": "q", "answer": "a"}], fmt="auto")


def test_a_csv_of_pairs_trains_with_format_auto(tmp_path):
    """A user's own file: the demo's pairs rewritten as prompt/chosen/rejected columns in a CSV."""
    import sys

    import pandas as pd

    from tests.helpers import ENV, QUIET, ROOT, run_command

    rows = [json.loads(line) for line in (ROOT / "data" / "demo_safety_train.jsonl").read_text().splitlines()][:64]
    pairs = [
        {
            "prompt": r["prompt"],
            "chosen": r[f"response_{r['safer_response_id']}"],
            "rejected": r[f"response_{1 - r['safer_response_id']}"],
        }
        for r in rows
    ]
    pd.DataFrame(pairs).to_csv(tmp_path / "mine.csv", index=False)
    proc = run_command(
        [
            sys.executable,
            "-m",
            "align.train_dpo",
            "recipe=demo",
            f"data.dataset={tmp_path / 'mine.csv'}",
            "data.format=auto",
            "data.eval_dataset=null",
            "train.max_steps=2",
            f"train.output_dir={tmp_path / 'out'}",
            *QUIET,
        ],
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert f"data.format=auto chose pairs (the fields of {tmp_path / 'mine.csv'}: row 0" in log
    assert "holding out 3 of 64 records" in log and (tmp_path / "out" / "final").exists()


def test_bytes_that_are_not_utf8_are_named_by_line_and_counted_under_skip(tmp_path, tok):
    """A latin-1 line in a UTF-8 file: named as path:line (error) or counted as its own skip reason (skip); the other
    lines load. A CSV or a JSON array is read whole, so there the file stops with path:line named."""
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        json.dumps(PKU).encode()
        + b"\n"
        + json.dumps({**PKU, "prompt": "caf\xe9"}).encode("latin-1").replace(b"\\u00e9", b"\xe9")
        + b"\n"
        + json.dumps(PKU).encode()
        + b"\n"
    )
    rows, _ = load_records(str(path), None)
    assert len(rows) == 3
    with pytest.raises(BadRecord, match=r"mixed.jsonl:2: not valid UTF-8 .*on_bad_record=skip"):
        _build(tok, rows)
    data, report = _build(tok, rows, on_bad_record="skip")
    assert [e.id for e in data] == [0, 2] and report.skipped == {"not valid UTF-8": 1}
    table = tmp_path / "pairs.csv"
    table.write_bytes(b"prompt,chosen,rejected\nhi,a,b\ncaf\xe9,a,b\n")
    with pytest.raises(BadRecord, match=r"pairs.csv:3: not valid UTF-8"):
        load_records(str(table), None)


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("header.csv", "prompt,chosen,rejected\n", r"header.csv holds no records \(a header only\)"),
        ("empty.jsonl", "\n\n", r"empty.jsonl holds no records"),
        ("empty.json", "[]", r"empty.json holds no records"),
    ],
)
def test_a_data_file_without_records_is_named(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(BadRecord, match=message):
        load_records(str(tmp_path / name), None)


def test_scoring_encodes_records_as_training_does(tmp_path, tok):
    """One encoding path: a pair scored has the ids training gives it, a response scored the ids of SFT (EOS
    included), and choices are EOS-extended to their common length like a pair."""
    from align.data import build_scoring_dataset, build_sft_dataset, encode_pair

    eos = tok.eos_token_id
    pair = {"prompt": "How do I bake bread?", "chosen": "Mix flour and water.", "rejected": "No. " * 40}
    kw = dict(
        eos_token_id=eos,
        max_prompt_length=8,
        max_response_length=12,
        over_long_prompt="truncate",
        on_bad_record="error",
    )
    mode, (record,), report = build_scoring_dataset([pair], "x", tok, fmt="auto", preference="safer", **kw)
    p, c, r, truncated = encode_pair(
        tok,
        [{"role": "user", "content": pair["prompt"]}],
        pair["chosen"],
        pair["rejected"],
        eos_token_id=eos,
        max_prompt_length=8,
        max_response_length=12,
    )
    assert mode == "pairs" and record["prompt_ids"] == p and record["responses"] == [c, r]
    assert report.truncated_prompts == 1 == int(truncated) and len(r) == 12 and r[-1] == eos

    sft = {"prompt": "How do I bake bread?", "response": "Mix flour and water."}
    mode, (record,), _ = build_scoring_dataset([sft], "x", tok, fmt="auto", preference="safer", **kw)
    (trained,), _ = build_sft_dataset([sft], "x", tok, fmt="prompt_response", **kw)
    assert mode == "response" and record["prompt_ids"] == trained.prompt_ids
    assert record["responses"] == [trained.response_ids] and trained.response_ids[-1] == eos

    mc = {"prompt": "Pick one.", "choices": ["yes", "no, not at all"], "label": 1}
    mode, (record,), _ = build_scoring_dataset([mc], "x", tok, fmt="auto", preference="safer", **kw)
    a, b = record["responses"]
    assert mode == "choices" and record["label"] == 1 and len(a) == len(b) and a[-1] == b[-1] == eos


def test_scoring_applies_the_bad_record_policy(tok):
    from align.data import BadRecord, build_scoring_dataset

    rows = [{"prompt": "a", "response": "fine"}, {"prompt": "b", "response": "  "}, {"prompt": "c", "response": "ok"}]
    kw = dict(
        fmt="response",
        preference="safer",
        eos_token_id=tok.eos_token_id,
        max_prompt_length=64,
        max_response_length=64,
        over_long_prompt="truncate",
    )
    with pytest.raises(BadRecord, match=r"x: record 1: empty or non-string response \(set on_bad_record=skip"):
        build_scoring_dataset(rows, "x", tok, on_bad_record="error", **kw)
    _, kept, report = build_scoring_dataset(rows, "x", tok, on_bad_record="skip", **kw)
    assert [r["index"] for r in kept] == [0, 2] and report.skipped == {"empty or non-string response": 1}


def test_scoring_bare_continuations_and_draws_keyed_by_content(tok):
    """``response_eos=false``: a response is its bare ids (lm-eval's continuation), for response records only;
    ``seed_by=content``: a record's key is a hash of its tokens, the same at any position in any file."""
    from align.config import ConfigError
    from align.data import build_scoring_dataset, content_key

    kw = dict(
        preference="safer",
        eos_token_id=tok.eos_token_id,
        max_prompt_length=64,
        max_response_length=64,
        over_long_prompt="truncate",
        on_bad_record="error",
    )
    rows = [{"prompt": "a", "response": "fine"}, {"prompt": "b", "response": "ok then"}]
    _, with_eos, _ = build_scoring_dataset(rows, "x", tok, fmt="response", **kw)
    _, bare, _ = build_scoring_dataset(rows, "x", tok, fmt="response", response_eos=False, seed_by="content", **kw)
    assert [b["responses"][0] + [tok.eos_token_id] for b in bare] == [r["responses"][0] for r in with_eos]
    assert [r["key"] for r in with_eos] == [0, 1]  # seed_by=index: the position
    _, moved, _ = build_scoring_dataset(
        rows[::-1], "y", tok, fmt="response", response_eos=False, seed_by="content", **kw
    )
    assert [r["key"] for r in moved] == [r["key"] for r in bare][::-1] != [0, 1]
    assert bare[0]["key"] == content_key(bare[0]["prompt_ids"], bare[0]["responses"]) < 2**62
    pair = {"prompt": "p", "chosen": "yes", "rejected": "no"}
    with pytest.raises(ConfigError, match="response_eos=false scores bare continuations: response records only"):
        build_scoring_dataset([pair], "x", tok, fmt="auto", response_eos=False, **kw)
