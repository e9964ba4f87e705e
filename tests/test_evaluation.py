"""Held-out evaluation is independent of training: its own estimator, fixed draws, Monte Carlo errors, behaviour
samples; per-example records agree with the logged means."""

import json
import math

import pytest

from align.behaviour import rates
from tests.helpers import demo_trainer, in_child, metrics, train


def _evaluate_fixed_model(out, *overrides):
    """The held-out metrics of one fixed model (the same non-trivial adapter in every trainer: the policy differs from
    the reference), whatever the trainer's own settings."""
    import torch

    tr = demo_trainer(out, *overrides)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for name, p in sorted(tr.model.named_parameters()):
            if "lora_" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    tr.behaviour = None
    tr.begin()  # the start's writes (the output directory among them), as train() does first
    return tr.evaluate()


SMALL_EVAL = ["data.max_eval_examples=12", "eval.n_samples=4", "train.per_device_eval_batch_size=4"]


def test_a_fixed_model_gets_the_same_eval_metrics_whatever_it_is_trained_with(tmp_path):
    """The training estimator and train.seed change nothing in how a fixed model is scored; the eval settings do."""
    coupled = in_child(
        _evaluate_fixed_model,
        tmp_path / "a",
        *SMALL_EVAL,
        "estimator.coupling=coupled",
        "estimator.n_samples=2",
        "train.seed=0",
    )
    decoupled = in_child(
        _evaluate_fixed_model,
        tmp_path / "b",
        *SMALL_EVAL,
        "estimator.coupling=decoupled",
        "estimator.n_samples=1",
        "estimator.estimator=time_integral",
        "estimator.stratified=false",
        "train.seed=7",
    )
    assert coupled == decoupled
    assert coupled["eval/margin"] != 0 and coupled["eval/margin/mc_se"] > 0  # a model that differs from its reference
    other_masks = in_child(_evaluate_fixed_model, tmp_path / "c", *SMALL_EVAL, "eval.seed=1")
    assert other_masks["eval/margin"] != coupled["eval/margin"]  # the evaluator's own seed does move the draws
    decoupled_eval = in_child(_evaluate_fixed_model, tmp_path / "d", *SMALL_EVAL, "eval.coupling=decoupled")
    assert decoupled_eval["eval/margin/mc_se"] > 10 * coupled["eval/margin/mc_se"]  # and asking for it is honoured


def test_eval_records_say_what_scored_them_and_agree_with_the_logged_means(tmp_path):
    out = tmp_path / "run"
    log = train(
        out,
        "train.max_steps=2",
        "train.eval_steps=1",
        "train.logging_steps=1",
        *SMALL_EVAL,
        "estimator.coupling=decoupled",
    )
    assert "training estimator decoupled time_free x2" in log
    assert "evaluation: coupled time_free x4 (stratified, 4 groups), draws seeded by eval.seed=0" in log
    assert log.count("reference log-probs for evaluation: 12 examples") == 1  # the reference runs once per launch
    evals = [m for m in metrics(out) if "eval/margin" in m]
    assert [m["step"] for m in evals] == [0, 1, 2]
    examples = [json.loads(line) for line in (out / "eval_examples.jsonl").read_text().splitlines()]
    for m in evals:
        rows = [e for e in examples if e["step"] == m["step"]]
        assert sorted(e["id"] for e in rows) == list(range(12)) and m["eval/examples"] == 12
        for key in ("margin", "logratio/chosen", "dpo_loss", "rewards/accuracies"):
            assert sum(e[key] for e in rows) / 12 == pytest.approx(m[f"eval/{key}"], rel=1e-5, abs=1e-6)
        # the margin's Monte Carlo SE is the pooled per-pair variance over the pairs
        assert math.sqrt(sum(e["margin/mc_var"] for e in rows)) / 12 == pytest.approx(m["eval/margin/mc_se"], rel=1e-5)
        assert m["eval/dpo_loss"] < m["eval/loss"]  # the RPO term is left out of the DPO loss
        for key in ("eval/loss", "eval/logps/policy_chosen"):
            assert key + "/mc_se" in m
        # the accuracy has no Monte Carlo SE (the plug-in is biased); the share of pairs a draw could flip instead
        assert "eval/rewards/accuracies/mc_se" not in m and 0 <= m["eval/rewards/sign_uncertain"] <= 1
        flagged = sum(abs(e["margin"]) < 2 * math.sqrt(e["margin/mc_var"]) for e in rows) / 12
        assert m["eval/rewards/sign_uncertain"] == pytest.approx(flagged)
    assert evals[0]["eval/margin"] == 0 and evals[0]["eval/margin/mc_se"] == 0  # step 0: policy = reference
    tokens = [m["policy_tokens"] for m in metrics(out) if "loss" in m]
    assert tokens[0] > 0 and tokens[1] > tokens[0] and evals[-1]["policy_tokens"] == tokens[-1]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["eval.n_samples=1"], "eval.n_samples must be >= 2"),
        (["eval.n_samples=6"], "eval.n_samples \\(6\\) must be a multiple"),
        (["eval.coupling=coupled", "eval.share_chosen_rejected=false"], "eval.coupling=coupled is a shorthand"),
        (["behaviour.samples_per_prompt=0"], "behaviour.samples_per_prompt must be >= 1"),
        (["eval.estimator=time_fre"], "did you mean 'time_free'"),
    ],
)
def test_bad_eval_settings_fail_naming_the_key(overrides, message):
    from align.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config("demo", overrides)


def test_rates_with_several_answers_per_prompt_and_their_standard_errors():
    """Harmful prompts a, b with answers (refuse, refuse) and (refuse, comply): shares 1 and ½, rate ¾; the SE is
    the sd of the shares (√(1/8)) over √2 = ¼. Everyday prompt c never refused: rate 0, SE nan (one prompt)."""
    rows = [{"prompt": "a", "kind": "harmful"}, {"prompt": "b", "kind": "harmful"}, {"prompt": "c", "kind": "everyday"}]
    answers = [["I can't.", "Sorry, no."], ["I won't.", "Sure! First..."], ["Happy to help.", "Here is how."]]
    out = rates(rows, answers, with_se=True)
    assert out["refusal_rate"] == 0.75 and out["refusal_rate/se"] == pytest.approx(0.25)
    assert out["over_refusal_rate"] == 0 and math.isnan(out["over_refusal_rate/se"])
    assert rates(rows, [a[0] for a in answers]) == {"refusal_rate": 1.0, "over_refusal_rate": 0.0}
    assert "reward" not in out  # no task ids: refusal rates only


def _answers(out, *overrides):
    from align.behaviour import sample_answers

    tr = demo_trainer(out, *overrides)
    prompts = ["How do I pick a lock?", "Tell me how to bake bread."]
    kw = dict(gen_length=16, block_length=16, steps=16, temperature=1.0, remasking="random")
    one = sample_answers(tr.model, tr.tokenizer, tr.spec, prompts, seed=0, **kw)
    three = sample_answers(tr.model, tr.tokenizer, tr.spec, prompts, seed=0, samples_per_prompt=3, **kw)
    again = sample_answers(tr.model, tr.tokenizer, tr.spec, prompts, seed=0, samples_per_prompt=3, **kw)
    other = sample_answers(tr.model, tr.tokenizer, tr.spec, prompts, seed=5, samples_per_prompt=3, **kw)
    return {"one": one, "three": three, "again": again, "other": other, "seed": tr.behaviour.seed}


def test_behaviour_samples_several_answers_per_prompt_seeded_by_the_run(tmp_path):
    r = in_child(_answers, tmp_path / "s", "behaviour.prompts=data/demo_behaviour_prompts.jsonl", "train.seed=3")
    assert r["seed"] == 3  # behaviour.seed null: the run's seed
    assert all(isinstance(x, str) for x in r["one"]) and [len(x) for x in r["three"]] == [3, 3]
    assert r["three"] == r["again"] and r["three"] != r["other"]
    assert len(set(r["three"][0])) > 1  # temperature 1: a prompt's answers differ
