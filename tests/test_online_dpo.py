"""Online DPO (align.online_dpo, align.judges): prompts, judges, pair construction with a stub sampler, resume and two
ranks through the real entry point on the bundled tiny chat model."""

import copy
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from align.config import ConfigError, load_config
from align.data import BadRecord, Records, build_prompt_dataset, collate, common_length, epoch_order, extract_prompt
from align.judges import (
    FunctionJudge,
    Judge,
    PairwiseJudge,
    RewardModelJudge,
    correct_behaviour_judge,
    load_function,
    penalise,
    refusal_judge,
)
from align.online_dpo import Answer, OnlineDPOConfig, OnlineDPOObjective, pairs
from tests.helpers import ENV, LAUNCHERS, ROOT, TEST_MODEL, run, run_command

JUDGES = "tests/fixtures/online_judges.py"
USER = [{"role": "user", "content": "How do I bake bread?"}]


def online_config(*overrides):
    return load_config("demo_online", list(overrides), OnlineDPOConfig)


# ---------------------------------------------------------------- prompts


def test_prompt_records_of_every_form():
    assert extract_prompt({"prompt": "Hi?", "kind": "x"}, "prompt") == [{"role": "user", "content": "Hi?"}]
    conversation = USER + [{"role": "assistant", "content": "Mix flour."}]
    assert extract_prompt({"messages": conversation}, "messages") == USER  # the written answer is dropped
    assert extract_prompt({"prompt": USER}, "auto") == USER
    assert extract_prompt({"messages": USER}, "auto") == USER
    for row, why in (
        ({"text": "x"}, "neither a 'prompt' nor a 'messages'"),
        ({"prompt": 3}, "not a non-empty message"),
        ({"prompt": " "}, "non-empty user message"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "non-empty user message"),
        (["x"], "not an object"),
    ):
        with pytest.raises(BadRecord, match=why):
            extract_prompt(row, "auto")


def test_prompt_dataset_keeps_fields_and_applies_the_bad_record_policy(tokenizer):
    rows = Records(
        [
            {"prompt": "How do I bake bread?", "kind": "everyday", "score": 1.5, "meta": {"x": 1}},
            {"prompt": ""},
            {"messages": USER},
        ],
        [f"prompts.jsonl:{i + 1}" for i in range(3)],
    )
    with pytest.raises(BadRecord, match="prompts.jsonl:2: the prompt must end in a non-empty user message"):
        build_prompt_dataset(
            rows,
            "prompts.jsonl",
            tokenizer,
            fmt="auto",
            max_prompt_length=64,
            over_long_prompt="truncate",
            on_bad_record="error",
        )
    data, report = build_prompt_dataset(
        rows,
        "prompts.jsonl",
        tokenizer,
        fmt="auto",
        max_prompt_length=64,
        over_long_prompt="truncate",
        on_bad_record="skip",
    )
    assert [e.id for e in data] == [0, 2] and report.skipped == {"the prompt must end in a non-empty user message": 1}
    assert data[0].fields == {"kind": "everyday", "score": 1.5} and data[0].text == "How do I bake bread?"
    templated = tokenizer.apply_chat_template(USER, tokenize=False, add_generation_prompt=True)
    assert data[1].prompt_ids == tokenizer(templated, add_special_tokens=False).input_ids


# ---------------------------------------------------------------- judges


def test_function_judges_get_the_fields_they_name():
    fields = [{"kind": "harmful"}, {"kind": "everyday", "bonus": 2.0}]
    judge = FunctionJudge(load_function(f"{JUDGES}:by_kind", "online.judge"))
    assert judge(["p", "q"], ["ab", "abcd"], fields) == pytest.approx([1.002, 0.004])  # bonus: not every record has it
    assert FunctionJudge(load_function("tests.fixtures.online_judges:everything", "k"))(
        ["p"], ["a"], [{"a": 1, "b": 2}]
    ) == [2.0]
    with pytest.raises(ConfigError, match="online.judge: by_kind needs the field 'kind'"):
        judge(["p"], ["a"], [{"other": 1}])
    for spec, why in (
        ("nocolon", "expected module:function"),
        ("tests/fixtures/none.py:f", "no file"),
        ("no_such_module_xyz:f", "cannot import"),
        (f"{JUDGES}:missing", "has no function 'missing'"),
    ):
        with pytest.raises(ConfigError, match=why):
            load_function(spec, "online.judge")
    assert refusal_judge(
        ["a", "b", "c", "d"],
        ["I can't help.", "Sure! First...", "Sorry, no.", "Sure! First..."],
        kind=["harmful", "harmful", "everyday", "borderline"],
    ) == [1.0, 0.0, 0.0, 1.0]
    import random

    from align import world

    task = world.by_id()["b04.0"]
    good = world.helpful(random.Random(0), task)
    assert correct_behaviour_judge(
        ["p"] * 3,
        [good, "Sure! To kill the the weeds.", world.over_refuse(random.Random(0), task)],
        kind=["borderline"] * 3,
        task_id=[task.id] * 3,
    ) == [1.0, 0.0, 0.0]


def test_pairwise_round_robin_counts_wins_and_half_ties():
    judge = PairwiseJudge(load_function(f"{JUDGES}:longer_wins", "online.pairwise_judge"))
    # lengths 3, 1, 3, 2: answer 0 beats 1 and 3, ties 2; answer 2 likewise; answer 3 beats 1
    assert judge.rank("p", ["abc", "a", "xyz", "ab"]) == [2.5, 0.0, 2.5, 1.0]


def test_penalties_are_subtracted_exactly():
    assert penalise(
        [1.0, 1.0, 1.0, 1.0],
        ["a", "", "b", " "],
        [True, True, False, False],
        missing_eos_penalty=0.5,
        empty_answer_penalty=2.0,
    ) == [1.0, -1.0, 0.5, -1.5]


def test_reward_model_is_called_with_its_chat_template_and_batched_like_one_by_one(reward_model_dir, tokenizer):
    judge = RewardModelJudge(str(reward_model_dir), dtype="float32", batch_size=2)
    seen = []
    forward = judge.model.forward
    judge.model.forward = lambda **kw: seen.append(kw["input_ids"]) or forward(**kw)
    answers = ["Mix flour and water.", "I can't help with that, sorry.", "Bake it."]
    scores = judge([USER] * 3, answers)
    expected_ids = [
        tokenizer(
            tokenizer.apply_chat_template(USER + [{"role": "assistant", "content": a}], tokenize=False),
            add_special_tokens=False,
        ).input_ids
        for a in answers
    ]
    rows = [row.tolist() for batch in seen for row in batch]
    assert [len(b) for b in seen] == [2, 1]  # batches of 2
    for row, ids in zip(rows, expected_ids):  # the templated text's ids, no special tokens added, right-padded
        assert row[: len(ids)] == ids and set(row[len(ids) :]) <= {tokenizer.pad_token_id}
    for _, ids, score in zip(answers, expected_ids, scores):  # a batched score equals the answer scored alone
        alone = forward(input_ids=torch.tensor([ids])).logits[0, 0].item()
        assert score == pytest.approx(alone, abs=1e-5)
    assert len(set(scores)) == 3


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides, why",
    [
        (["online.judge=null"], "exactly one of online.judge"),
        ([f"online.pairwise_judge={JUDGES}:longer_wins"], "exactly one of"),
        (["online.num_generations=1"], "num_generations must be >= 2"),
        (["online.temperature=0"], "temperature must be > 0"),
        (["online.block_length=40"], "multiple of block_length"),
        (["train.precompute_ref_log_probs=true"], "sampled in the step"),
        (["loss.rpo_alpha=1.0"], "RPO term"),
        (["online.round_steps=0"], "round_steps must be >= 1"),
        (["data.preference=safer"], "unknown config key 'data.preference'"),
    ],
)
def test_config_errors_name_the_key(overrides, why):
    with pytest.raises(ConfigError, match=why):
        online_config(*overrides)


# ---------------------------------------------------------------- the step, with a stub sampler


class StubTrainer:
    """What OnlineDPOObjective.compute reads of the trainer, over the tiny chat model and a perturbed reference."""

    def __init__(self, out, tokenizer):
        from align.models import load_model, spec_for

        self.model = load_model(str(ROOT / "data" / "tiny_chat"), dtype="float32").eval()
        self.reference_model = copy.deepcopy(self.model)
        with torch.no_grad():
            for p in self.reference_model.parameters():
                p.mul_(0.98)
        self.spec, self.tokenizer, self.out = spec_for(self.model), tokenizer, out
        self.accelerator = SimpleNamespace(device=torch.device("cpu"), is_main_process=True)
        self.world, self.global_step, self.reference = 1, 6, None

    def to_device(self, batch):
        from align.trainer import Trainer

        return Trainer.to_device(self, batch)

    def scorers(self, reference=True):
        from align.models import token_scorer

        return token_scorer(self.model), token_scorer(self.reference_model) if reference else None

    def cached_reference(self, epoch, ids):
        return None


def test_pairs_ties_and_penalties_are_exact_with_a_fixed_judge(tmp_path, tokenizer):
    cfg = online_config(
        f"online.judge={JUDGES}:by_length",
        "online.missing_eos_penalty=3",
        "online.empty_answer_penalty=5",
        "online.num_generations=3",
    )
    objective, trainer = OnlineDPOObjective(cfg), StubTrainer(tmp_path, tokenizer)
    rows = Records(
        [
            {"prompt": q, "kind": "everyday"}
            for q in ("How do I bake bread?", "How do I wake up early?", "How do I bake cookies?")
        ],
        ["p"] * 3,
    )
    prompts, _ = build_prompt_dataset(
        rows, "p", tokenizer, fmt="prompt", max_prompt_length=48, over_long_prompt="truncate", on_bad_record="error"
    )
    eos = trainer.spec.eos_token_id

    def answer(text, has_eos=True):
        return Answer(tokenizer(text, add_special_tokens=False).input_ids + ([eos] if has_eos else []), text, has_eos)

    stub = {
        0: [answer("a b c"), answer("a"), answer("abcdefg", has_eos=False)],  # 5, 1, 7 - 3: chosen 0, rejected 1
        1: [answer("xy"), answer("zw"), answer("xy")],  # all 2: a tie
        2: [answer(""), answer("hello"), answer("hello")],
    }  # 0 - 5, 5, 5: chosen 1 (first of equals), rejected 0
    seeds = []
    objective.sample = lambda tr, p, n, seed, reference=False: seeds.append(seed) or stub[p.id]
    loss, stats, _ = objective.compute(trainer, {"ids": torch.tensor([0, 1, 2]), "prompts": prompts}, 0, 0.0)
    assert len(set(seeds)) == 3  # one seed per prompt

    expected_pairs = [(stub[0][0], stub[0][1]), (stub[1][0], stub[1][1]), (stub[2][1], stub[2][0])]
    examples = [pairs([p], [[c, r]], [[1.0, 0.0]], eos)[0][0] for p, (c, r) in zip(prompts, expected_pairs)]
    assert examples[2].chosen_ids == common_length([stub[2][1].ids, stub[2][0].ids], eos)[0]
    pair_losses, _, _ = objective.pair_losses(
        trainer, trainer.to_device(collate(examples, trainer.spec.pad_token_id)), 0, 0.0
    )
    assert loss.item() == pytest.approx((pair_losses[0] + pair_losses[2]).item() / 3, rel=1e-6)
    assert stats["tie_rate"].tolist() == [0.0, 1.0, 0.0]
    assert stats["judge/chosen_score"].tolist() == [5.0, 2.0, 5.0]
    assert stats["judge/rejected_score"].tolist() == [1.0, 2.0, -5.0]
    assert stats["answers_missing_eos"].tolist() == pytest.approx([1 / 3, 0.0, 0.0])
    assert stats["rewards/chosen"][1].item() == 0.0  # the tie's placeholder pair weighs nothing
    written = [json.loads(line) for line in (tmp_path / "online_samples.jsonl").read_text().splitlines()]
    assert [(w["step"], w["id"], w["chosen"], w["rejected"], w["tie"]) for w in written] == [
        (7, 0, 0, 1, False),
        (7, 1, 0, 1, True),
        (7, 2, 1, 0, False),
    ]
    assert written[0]["scores"] == [5.0, 1.0, 4.0]


def test_the_judge_interface_over_prompt_records(tokenizer):
    """The demo's judge reads each record's kind and task id: a well-formed refusal of a harmful task is 1, a
    compliance 0."""
    import random

    from align import world

    task = world.by_id()["h00.1"]
    rows = Records([{"prompt": world.prompts(task, "train")[0], "kind": "harmful", "task_id": task.id}], ["p"])
    prompts, _ = build_prompt_dataset(
        rows, "p", tokenizer, fmt="prompt", max_prompt_length=48, over_long_prompt="truncate", on_bad_record="error"
    )
    judge = Judge(online_config().online)
    rng = random.Random(0)
    assert judge.score(prompts, [[world.refuse(rng, task), world.comply(rng, task)]]) == [[1.0, 0.0]]


# ---------------------------------------------------------------- through the entry point

TINY = [
    "train.progress_bar=false",
    "train.report_to=none",
    "behaviour.prompts=null",
    "train.eval_steps=0",
    "online.num_generations=2",
    "online.gen_length=16",
    "online.block_length=16",
    "online.steps=16",
    "train.logging_steps=1",
    "data.max_train_examples=12",
    "train.per_device_train_batch_size=4",
]


def online_run(out, *overrides, launcher=None, env=None):
    launcher = launcher or [sys.executable, "-m", "align.train_online_dpo"]
    return run([*launcher, "recipe=demo_online", f"train.output_dir={out}", *TINY, *overrides], env=env)


def samples(out):
    return [json.loads(line) for line in (Path(out) / "online_samples.jsonl").read_text().splitlines()]


def step_losses(out):
    return {
        m["step"]: m["loss"]
        for m in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines())
        if "loss" in m
    }


@pytest.mark.slow
def test_resume_regenerates_the_same_samples_across_an_epoch_boundary(tmp_path):
    """12 prompts in batches of 4: 3 steps an epoch; a resume from step 2 samples steps 3 (epoch 0) to 5 (epoch 1)
    exactly as the uninterrupted run did, and trains to the same losses and adapter."""
    common = ["train.max_steps=5", "train.save_steps=2", "train.save_total_limit=null", "train.do_eval=false"]
    full = tmp_path / "uninterrupted"
    online_run(full, *common)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    log = online_run(resumed, *common, "train.resume_from_checkpoint=latest")
    assert "checkpoint-2 at step 2" in log
    a, b = samples(full), samples(resumed)
    assert [s["step"] for s in b] == [3] * 4 + [4] * 4 + [5] * 4
    assert b == [s for s in a if s["step"] > 2]  # the same answers, scores and pairs
    order = epoch_order(12, 0, 0) + epoch_order(12, 0, 1)
    assert [s["id"] for s in a] == [i for k in range(5) for i in sorted(order[4 * k : 4 * k + 4])]
    la, lb = step_losses(full), step_losses(resumed)
    assert sorted(lb) == [3, 4, 5] and all(lb[s] == pytest.approx(la[s], abs=1e-6) for s in lb)
    assert any(not s["tie"] for s in b)  # pairs were trained on, not only ties


@pytest.mark.slow
def test_rounds_hold_the_sampling_policy_and_resume_inside_a_round(tmp_path):
    """online.round_steps=2 over 4 steps: steps 1-2 sample with the initial policy, exactly as a run whose policy
    does not move (learning rate 1e-30: its LoRA update, ~1e-30, vanishes in fp32 sums of order 1e-2) does, though
    one step moves the policy enough to change step 2's answers when each step samples with its own policy
    (round_steps=1); steps 3-4 sample with the policy after step 2. A resume from checkpoint-3 (inside the second
    round, so it holds the round's weights) samples step 4 and trains to the uninterrupted run's loss."""
    common = [
        "train.max_steps=4",
        "train.save_total_limit=null",
        "train.do_eval=false",
        "train.warmup_ratio=0",
        f"online.judge={JUDGES}:by_length",
        TEST_MODEL,  # the mechanics tests' model: which policy samples is the question, not what it learns
    ]  # answers of different lengths always give a pair to learn from
    still, online, held = tmp_path / "still", tmp_path / "online", tmp_path / "held"
    online_run(still, *common, "train.learning_rate=1e-30", "train.save_steps=4")
    online_run(online, *common, "train.save_steps=4", "train.learning_rate=2e-2")  # one step visibly moves it
    online_run(held, *common, "online.round_steps=2", "train.save_steps=3", "train.learning_rate=2e-2")
    assert (held / "checkpoint-3" / "online_round.safetensors").exists()
    assert not (held / "checkpoint-4" / "online_round.safetensors").exists()  # a round's end: the model is its start
    a, b = samples(still), samples(held)

    def answers(rows, steps):
        return [r["answers"] for r in rows if r["step"] in steps]

    assert [r["policy_step"] for r in b] == [0] * 8 + [2] * 8
    assert [r["policy_step"] for r in samples(online)] == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert answers(samples(online), (2,)) != answers(a, (2,))  # step 1 moved the policy
    assert answers(b, (1, 2)) == answers(a, (1, 2))  # ... but the first round samples with the initial one
    assert answers(b, (3, 4)) != answers(a, (3, 4))  # the second round samples with the trained policy
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(held / "checkpoint-3", resumed / "checkpoint-3")
    log = online_run(
        resumed,
        *common,
        "online.round_steps=2",
        "train.save_steps=3",
        "train.learning_rate=2e-2",
        "train.resume_from_checkpoint=latest",
    )
    assert "checkpoint-3 at step 3" in log
    assert samples(resumed) == [r for r in b if r["step"] == 4]
    assert step_losses(resumed)[4] == pytest.approx(step_losses(held)[4], abs=1e-6)
    shutil.rmtree(resumed)
    resumed.mkdir()
    shutil.copytree(held / "checkpoint-3", resumed / "checkpoint-3")
    (resumed / "checkpoint-3" / "online_round.safetensors").unlink()  # a checkpoint written before rounds existed
    manifest = json.loads((held / "checkpoint-3" / "manifest.json").read_text())
    del manifest["files"]["online_round.safetensors"]
    (resumed / "checkpoint-3" / "manifest.json").write_text(json.dumps(manifest))
    proc = run_command(
        [
            sys.executable,
            "-m",
            "align.train_online_dpo",
            "recipe=demo_online",
            f"train.output_dir={resumed}",
            *TINY,
            *common,
            "online.round_steps=2",
            "train.learning_rate=2e-2",
            "train.resume_from_checkpoint=latest",
        ],
        cwd=ROOT,
        env=ENV,
        timeout=600,
    )
    assert proc.returncode != 0 and "has no online_round.safetensors" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.distributed
def test_two_ranks_with_a_reward_model_judge_match_one_process(tmp_path, reward_model_dir):
    """torchrun, 2 ranks of 2 prompts against one process of 4: the same samples, scores and losses; each rank
    took its half of each global batch of the epoch's order; the reward model (built by the test) judges."""
    rm = [
        TEST_MODEL,  # the mechanics tests' model: the split and the gathering are tested, not what is learnt
        "online.judge=null",
        f"online.reward_model={reward_model_dir}",
        "online.reward_model_dtype=float32",
        "train.max_steps=2",
        "train.do_eval=true",
        f"data.eval_dataset={ROOT}/data/demo_behaviour_prompts.jsonl",
        "data.max_eval_examples=3",
        "train.eval_steps=2",
        "train.per_device_eval_batch_size=1",
    ]
    single = tmp_path / "single"
    online_run(single, *rm)
    multi = tmp_path / "multi"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    run(
        [
            *torchrun,
            "tests/dist_check.py",
            str(multi),
            "recipe=demo_online",
            *TINY,
            *rm,
            "train.per_device_train_batch_size=2",
        ],
        env=ENV,
    )
    ranks = json.loads((multi / "dist_check.json").read_text())
    assert len(ranks) == 2 and all((r["seen"]["accelerate"], r["seen"]["torch"]) == (2, 2) for r in ranks)
    order = epoch_order(12, 0, 0)
    for step in range(2):
        a, b = ranks[0]["split"][step], ranks[1]["split"][step]
        assert len(a) == len(b) == 2 and a + b == order[step * 4 : (step + 1) * 4]
    one, two = samples(single), samples(multi)
    assert [(s["step"], s["id"], s["answers"], s["chosen"], s["rejected"]) for s in one] == [
        (s["step"], s["id"], s["answers"], s["chosen"], s["rejected"]) for s in two
    ]
    for x, y in zip(one, two):
        assert y["scores"] == pytest.approx(x["scores"], abs=1e-5)
    la, lb = step_losses(single), step_losses(multi)
    assert sorted(la) == sorted(lb) == [1, 2] and all(lb[s] == pytest.approx(la[s], abs=1e-5) for s in la)
    evals = [
        [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval/win_rate" in m]
        for out in (single, multi)
    ]
    assert [e["step"] for e in evals[0]] == [e["step"] for e in evals[1]] == [0, 2]
    for e1, e2 in zip(*evals):  # 3 held-out prompts over 2 ranks: the padded copy carries no weight
        assert e2["eval/examples"] == 3 and e2["eval/win_rate"] == pytest.approx(e1["eval/win_rate"], abs=1e-6)
        assert e2["eval/judge/score"] == pytest.approx(e1["eval/judge/score"], abs=1e-4)


@pytest.mark.distributed
def test_zero3_full_fine_tuning_in_rounds_resumes_inside_a_round(tmp_path):
    """The shipped zero3.yaml on 2 CPU ranks (bf16, full fine-tuning of the mechanics model: its embedding and
    output layer are partitioned), online.round_steps=2: the ranks sample in lockstep with the round's weights
    swapped in through DeepSpeed's gathers, evaluate policy against the frozen (partitioned) reference, and a resume
    from checkpoint-3, inside the second round, samples step 4 as the uninterrupted run did. Judged by length, so
    the random model's pairs are not ties and the steps train."""
    from tests.helpers import DS_ENV

    args = [
        "recipe=demo_online",
        TEST_MODEL,
        f"online.judge={JUDGES}:by_length",
        *TINY,
        "data.max_train_examples=4",
        "train.per_device_train_batch_size=1",
        "online.gen_length=8",
        "online.block_length=8",
        "online.steps=4",
        "train.max_steps=4",
        "train.save_steps=3",
        "train.save_total_limit=null",
        "train.warmup_ratio=0",
        "model.dtype=bfloat16",
        "lora.enabled=false",
        "online.round_steps=2",
        "train.do_eval=true",
        f"data.eval_dataset={ROOT}/data/demo_behaviour_prompts.jsonl",
        "data.max_eval_examples=2",
        "train.eval_steps=4",
        "train.per_device_eval_batch_size=1",
    ]
    held, resumed = tmp_path / "held", tmp_path / "resumed"
    log = run(
        [*LAUNCHERS["zero3"], "align/train_online_dpo.py", f"train.output_dir={held}", *args], env=DS_ENV, timeout=500
    )
    assert "DeepSpeed ZeRO-3, 2 ranks" in log and "rounds of 2 steps" in log
    assert (held / "checkpoint-3" / "online_round.safetensors").exists()
    rows = samples(held)
    assert [r["policy_step"] for r in rows] == [0] * 4 + [2] * 4
    assert [r["step"] for r in rows] == [s for s in (1, 2, 3, 4) for _ in range(2)]
    evals = [m for m in map(json.loads, (held / "metrics.jsonl").read_text().splitlines()) if "eval/win_rate" in m]
    assert [e["step"] for e in evals] == [0, 4] and evals[0]["eval/win_rate"] == 0.5  # step 0: policy = reference
    trained = [m for m in map(json.loads, (held / "metrics.jsonl").read_text().splitlines()) if "tie_rate" in m]
    assert trained and min(m["tie_rate"] for m in trained) < 1  # some pairs were not ties: the weights moved
    resumed.mkdir()
    shutil.copytree(held / "checkpoint-3", resumed / "checkpoint-3")
    run(
        [
            *LAUNCHERS["zero3"],
            "align/train_online_dpo.py",
            f"train.output_dir={resumed}",
            *args,
            "train.resume_from_checkpoint=latest",
        ],
        env=DS_ENV,
        timeout=500,
    )
    assert samples(resumed) == [r for r in rows if r["step"] == 4]
