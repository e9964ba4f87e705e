"""The bundled world (align/world.py): its size, splits and records, and the rules that judge an answer."""

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from align import world

ROOT = Path(__file__).resolve().parents[1]


def test_three_kinds_of_tasks_and_held_out_tasks_in_each():
    kinds = Counter(t.kind for t in world.tasks())
    assert kinds == {"everyday": 150, "borderline": 90, "harmful": 90}
    assert len({t.id for t in world.tasks()}) == len({t.text for t in world.tasks()}) == 330
    held = Counter(t.kind for t in world.held_out_tasks())
    assert held == {"everyday": 25, "borderline": 18, "harmful": 18}  # one object of every family
    # borderline tasks share their verbs with harmful ones: the kind is in the object, not a keyword
    verbs = lambda kind: {t.text.split()[0] for t in world.tasks() if t.kind == kind}  # noqa: E731
    assert len(verbs("borderline") & verbs("harmful")) >= 15


def test_every_answer_the_world_writes_is_well_formed_for_its_task_and_not_for_another():
    rng = random.Random(0)
    for task in world.tasks():
        for make in (world.helpful, world.comply, world.refuse, world.over_refuse):
            if make in (world.helpful,) and task.kind == "harmful" or make is world.comply and task.kind != "harmful":
                continue
            answer = make(rng, task)
            assert world.well_formed(task.id, answer), (task, answer)
    bake, sew = world.by_id()["e00.0"], world.by_id()["e20.0"]
    assert not world.well_formed(sew.id, world.helpful(rng, bake))  # about another task
    answer = world.helpful(rng, bake)
    words = answer.split()
    assert not world.well_formed(bake.id, " ".join(words[:4] + [words[3]] + words[4:]))  # a word repeated
    assert not world.well_formed(bake.id, " ".join(words[:-2]))  # cut short: not a sentence of the world
    assert not world.well_formed(bake.id, "")


def test_correct_behaviour_by_kind():
    rng = random.Random(1)
    h, b, e = world.by_id()["h02.1"], world.by_id()["b02.1"], world.by_id()["e03.1"]
    assert world.judge(h.id, "harmful", world.refuse(rng, h))["correct"]
    assert not world.judge(h.id, "harmful", world.comply(rng, h))["correct"]
    assert world.judge(b.id, "borderline", world.helpful(rng, b))["correct"]
    assert not world.judge(b.id, "borderline", world.over_refuse(rng, b))["correct"]
    assert world.judge(e.id, "everyday", world.helpful(rng, e))["correct"]


def test_bundled_records_carry_task_ids_and_the_sets_have_the_promised_sizes():
    def rows(name):
        return [json.loads(x) for x in (ROOT / "data" / name).read_text().splitlines()]

    test = rows("demo_safety_test.jsonl")
    assert len(test) >= 300 and len({r["prompt"] for r in test}) >= 300
    assert all(world.by_id()[r["task_id"]].kind == r["kind"] for r in test)
    val = rows("demo_safety_val.jsonl")
    assert {r["split"] for r in val} == {"validation"}
    assert not {r["task_id"] for r in val} & {t.id for t in world.held_out_tasks()}  # training tasks only
    assert not {r["prompt"] for r in val} & {r["prompt"] for r in test}
    train = rows("demo_safety_train.jsonl")
    assert Counter(r["kind"] for r in train).keys() == {"everyday", "borderline", "harmful"}
    # borderline pairs prefer the helpful answer over the refusal
    for r in (r for r in train + test if r["kind"] == "borderline"):
        assert not world.is_refusal(r[f"response_{r['safer_response_id']}"])
        assert world.is_refusal(r[f"response_{1 - r['safer_response_id']}"])
    assert len({r["prompt"] for r in rows("demo_behaviour_val_prompts.jsonl")}) == 269


@pytest.mark.parametrize(
    "name", ["tiny_sft_train.jsonl", "tiny_pretrain.jsonl", "demo_safety_train.jsonl", "demo_online_prompts.jsonl"]
)
def test_no_training_text_mentions_a_held_out_task(name):
    text = (ROOT / "data" / name).read_text()
    assert not [t.text for t in world.held_out_tasks() if f" {t.text}" in text]
