"""Write the bundled text: the tiny chat model's corpus and the demo's preference, validation and prompt sets.

The world (tasks, kinds, answer templates, splits, judging rules) is ``align/world.py``: 330 tasks, everyday,
borderline (benign requests that look harmful) and harmful, 61 of them held out of every training text. Every
record carries ``task_id`` (the cluster for statistics), ``kind`` and ``task``.

Files (all deterministic):

- ``tiny_pretrain.jsonl`` ``{"text"}``: question + answer as plain text (training tasks, training phrasings),
  for masked-diffusion pretraining of the tiny chat model;
- ``tiny_sft_train.jsonl`` / ``tiny_sft_test.jsonl`` ``{"prompt", "response", ...}``: SFT dialogues. Everyday
  requests are helped; harmful ones are refused in half of the records and complied with in the other half;
  borderline ones are helped in 40% and refused in 60% (the refusal wording of harmful requests). So the SFT
  model refuses harmful requests about half of the time and over-refuses borderline ones more often than not:
  DPO has room on both. The test file asks held-out prompts (held-out tasks and held-out phrasings);
- ``demo_safety_train.jsonl`` (320 pairs: training tasks, training phrasings), ``demo_safety_val.jsonl``
  (160 pairs of *training tasks*, own draws: the split that ``grid.select`` chooses settings on) and
  ``demo_safety_test.jsonl`` (one pair per held-out prompt: 513): preference pairs in the PKU-SafeRLHF schema
  (``prompt, response_0, response_1, is_response_*_safe, safer_response_id, better_response_id``). Harmful:
  refusal vs compliance, the refusal safer. Everyday and borderline: helpful answer vs needless refusal (both
  safe, the helpful one marked safer). ``better`` = ``safer`` in 90% of training pairs (label noise), in every
  validation and test pair;
- ``demo_behaviour_prompts.jsonl`` ``{"prompt", "kind", "task_id", "task", "split"}``: the 513 held-out prompts
  (244 of the 61 held-out tasks, 269 held-out phrasings of training tasks), interleaved by kind and shuffled, so
  that ``behaviour.max_prompts`` takes a spread of tasks;
- ``demo_behaviour_val_prompts.jsonl``: one training phrasing of every training task (269), for choosing settings
  by behaviour without touching the held-out prompts;
- ``demo_online_prompts.jsonl``: every training phrasing of every training task (never a held-out one), the
  prompts of online DPO (``recipe=demo_online``).

Run: ``python data/make_demo_data.py``
"""

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from align import world  # noqa: E402

SFT_MIX = {"everyday": 0.4, "borderline": 0.3, "harmful": 0.3}
PAIR_MIX = {"everyday": 0.25, "borderline": 0.35, "harmful": 0.4}


def fields(task, split: str) -> dict:
    return {"task_id": task.id, "kind": task.kind, "task": task.text, "split": split}


def pick_kind(rng, mix: dict) -> str:
    return rng.choices(list(mix), weights=list(mix.values()))[0]


def sft_answer(rng, task) -> str:
    """The SFT corpus's behaviour: help everyday; refuse or comply 50/50 with harmful; help borderline 40%."""
    if task.kind == "everyday":
        return world.helpful(rng, task)
    if task.kind == "harmful":
        return world.refuse(rng, task) if rng.random() < 0.5 else world.comply(rng, task)
    return world.helpful(rng, task) if rng.random() < 0.4 else world.over_refuse(rng, task)


def train_dialogue(rng):
    task = rng.choice(world.training_tasks(pick_kind(rng, SFT_MIX)))
    return task, rng.choice(world.prompts(task, "train")), sft_answer(rng, task)


def held_out_prompts() -> list[tuple]:
    """(task, prompt, split) of every held-out prompt: held-out tasks first, then held-out phrasings."""
    out = [(t, p, "heldout_task") for t in world.held_out_tasks() for p in world.prompts(t, "test")]
    return out + [(t, world.prompts(t, "test")[0], "heldout_phrasing") for t in world.training_tasks()]


def interleave(rows: list[dict], rng) -> list[dict]:
    """Shuffle within each kind, then take kinds in turn: any prefix holds all three kinds in about equal parts."""
    by_kind = {k: [r for r in rows if r["kind"] == k] for k in world.KINDS}
    for group in by_kind.values():
        rng.shuffle(group)
    out = []
    for i in range(max(map(len, by_kind.values()))):
        out += [group[i] for group in by_kind.values() if i < len(group)]
    return out


def pretrain_texts(n, rng):
    return [{"text": f"{prompt} {answer}"} for _, prompt, answer in (train_dialogue(rng) for _ in range(n))]


def sft_train(n, rng):
    return [{"prompt": p, "response": a, **fields(t, "train")} for t, p, a in (train_dialogue(rng) for _ in range(n))]


def sft_test(n, rng):
    chosen = rng.sample(held_out_prompts(), n)
    return [{"prompt": p, "response": sft_answer(rng, t), **fields(t, split)} for t, p, split in chosen]


def pair(rng, task, prompt, split, noise: float) -> dict:
    good, bad = world.good_answer(rng, task), world.bad_answer(rng, task)
    safer = rng.randrange(2)
    responses = [bad, bad]
    responses[safer] = good
    better = safer if rng.random() >= noise else 1 - safer
    other_safe = task.kind != "harmful"
    return {
        "prompt": prompt,
        "response_0": responses[0],
        "response_1": responses[1],
        "is_response_0_safe": safer == 0 or other_safe,
        "is_response_1_safe": safer == 1 or other_safe,
        "better_response_id": better,
        "safer_response_id": safer,
        **fields(task, split),
    }


def train_pairs(n, rng, noise: float, split: str):
    rows = []
    for _ in range(n):
        task = rng.choice(world.training_tasks(pick_kind(rng, PAIR_MIX)))
        rows.append(pair(rng, task, rng.choice(world.prompts(task, "train")), split, noise))
    return rows


def test_pairs(rng):
    return interleave([pair(rng, t, p, split, 0.0) for t, p, split in held_out_prompts()], rng)


def behaviour_prompts(rng):
    return interleave([{"prompt": p, **fields(t, split)} for t, p, split in held_out_prompts()], rng)


def behaviour_val_prompts(rng):
    rows = [
        {"prompt": rng.choice(world.prompts(t, "train")), **fields(t, "validation")} for t in world.training_tasks()
    ]
    return interleave(rows, rng)


def online_prompts():
    return [{"prompt": q, **fields(t, "train")} for t in world.training_tasks() for q in world.prompts(t, "train")]


def write(path: Path, rows):
    """Write to a temporary file, then rename: a reader (a test running meanwhile) sees the old or the new file,
    never a partial one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    here = Path(__file__).parent
    write(here / "tiny_pretrain.jsonl", pretrain_texts(8000, random.Random(10)))
    write(here / "tiny_sft_train.jsonl", sft_train(12000, random.Random(11)))
    write(here / "tiny_sft_test.jsonl", sft_test(200, random.Random(12)))
    write(here / "demo_safety_train.jsonl", train_pairs(320, random.Random(0), 0.1, "train"))
    write(here / "demo_safety_val.jsonl", train_pairs(160, random.Random(2), 0.0, "validation"))
    write(here / "demo_safety_test.jsonl", test_pairs(random.Random(1)))
    write(here / "demo_behaviour_prompts.jsonl", behaviour_prompts(random.Random(3)))
    write(here / "demo_behaviour_val_prompts.jsonl", behaviour_val_prompts(random.Random(4)))
    write(here / "demo_online_prompts.jsonl", online_prompts())
