"""align.score: per-record estimates against enumerated truth on toy distributions (convergence, honest
standard errors, adaptive stopping, coupled ratios), then the CLI on the shipped tiny chat model."""

import json
import math
import subprocess
import sys

import pytest
import torch

from align import estimators as E
from align.score import ScoreConfig, auroc, mean_se, run_rounds
from align.toy import ToyJoint
from tests.helpers import ENV, ROOT, free_port, run_command

CTX = 2


def toy_records(toy: ToyJoint, count: int, seed: int) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    ids = toy.sample(count, seed=seed)
    resp = torch.zeros_like(ids, dtype=torch.bool)
    resp[:, CTX:] = True
    records = [
        {"index": i, "prompt_ids": ids[i, :CTX].tolist(), "responses": [ids[i, CTX:].tolist()]} for i in range(count)
    ]
    return records, ids, resp


def score(toy, records, *, reference=None, **cfg):
    config = ScoreConfig(**{"data": "x", "progress_bar": False, **cfg})
    scorers = [E.scorer_from_logits(toy.logits_fn)] + ([E.scorer_from_logits(reference.logits_fn)] if reference else [])
    return run_rounds(records, scorers, cfg=config, mask_token_id=toy.mask_token_id, pad_token_id=0, device="cpu")


@pytest.fixture(scope="module")
def toy():
    return ToyJoint.random(V=3, T=6, seed=0)


def bound(toy, ids, resp):
    return E.enumerate_bound(toy.logits_fn, ids, resp, mask_token_id=toy.mask_token_id)


@pytest.mark.parametrize("estimator", ["time_free", "any_order", "time_integral"])
def test_a_record_converges_to_the_enumerated_bound(toy, estimator):
    records, ids, resp = toy_records(toy, 3, seed=1)
    out = score(toy, records, estimator=estimator, n_samples=4096, round_samples=512)
    truth = bound(toy, ids, resp)
    for res, t in zip(out, truth):
        mean, se = mean_se(res["samples"][0, 0])
        assert res["samples"].shape == (1, 1, 4096)
        assert abs(mean.item() - t.item()) < 4 * se.item() and se.item() < 0.1, (mean, se, t)


@pytest.mark.parametrize("stratified", [False, True])
def test_standard_errors_are_honest(toy, stratified):
    """Nominal 95% intervals (mean ± t·SE, t the 97.5% Student quantile of the SE's degrees of freedom: 63 for
    64 iid draws, 7 for 8 stratified rounds) cover the enumerated bound about 95% of the time, over 200 reruns
    with different seeds of 4 records each (800 intervals: the band is ±3 binomial SEs)."""
    t_quantile = 2.365 if stratified else 1.998
    records, ids, resp = toy_records(toy, 4, seed=2)
    truth = bound(toy, ids, resp)
    hits = total = 0
    for seed in range(200):
        cfg = dict(n_samples=64, round_samples=8 if stratified else 64, seed=seed, stratified=stratified)
        for res, t in zip(score(toy, records, **cfg), truth):
            rounds = res["rounds"] if stratified else None
            mean, se = mean_se(res["samples"][0, 0], rounds)
            hits += abs(mean.item() - t.item()) <= t_quantile * se.item()
            total += 1
    coverage = hits / total
    band = 3 * math.sqrt(0.95 * 0.05 / total)
    assert 0.95 - band <= coverage <= 0.95 + band, coverage


def test_adaptive_precision_stops_at_the_target_or_the_cap(toy):
    records, ids, resp = toy_records(toy, 6, seed=3)
    out = score(toy, records, target_se=0.05, round_samples=16, max_samples=4096)
    spent = [res["samples"].shape[-1] for res in out]
    for res in out:
        _, se = mean_se(res["samples"][0, 0])
        assert se.item() <= 0.05
        n = res["samples"].shape[-1]  # it stopped at the first round that reached the target
        _, before = mean_se(res["samples"][0, 0, : n - 16])
        assert n == 16 or before.item() > 0.05
    assert len(set(spent)) > 1  # records differ in how many draws they need
    capped = score(toy, records, target_se=1e-6, round_samples=16, max_samples=64)
    assert all(res["samples"].shape[-1] == 64 for res in capped)
    again = score(toy, records, target_se=0.05, round_samples=16, max_samples=4096)
    assert all(torch.equal(a["samples"], b["samples"]) for a, b in zip(out, again))  # seeded per record


def test_coupled_log_ratios_cancel_the_mask_noise(toy):
    """With a reference the masks are shared (coupled): the log-ratio's variance is far below the sum of the two
    estimates' variances (what independent draws give), and its mean is the difference of the bounds."""
    reference = toy.perturbed(0.3, seed=5)
    records, ids, resp = toy_records(toy, 8, seed=4)
    out = score(toy, records, reference=reference, n_samples=2048, round_samples=256)
    truth = bound(toy, ids, resp) - bound(reference, ids, resp)
    for res, t in zip(out, truth):
        x = res["samples"][:, 0]  # [2 models, n]
        ratio = x[0] - x[1]
        mean, se = mean_se(ratio)
        assert abs(mean.item() - t.item()) < 4 * se.item() + 1e-9
        assert ratio.var() * 3 < x[0].var() + x[1].var(), (ratio.var(), x[0].var(), x[1].var())


def test_auroc():
    assert auroc([0.0, 1.0], [2.0, 3.0]) == 1.0 and auroc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert auroc([1.0, 2.0], [1.0, 2.0]) == 0.5


# ---------------------------------------------------------------- the CLI on the tiny chat model


def cli(tmp_path, *args):
    proc = run_command(
        [sys.executable, "-m", "align.score", *args, f"output_dir={tmp_path}", "progress_bar=false"],
        env=ENV,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads((tmp_path / "summary.json").read_text())


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_scores_responses_reproducibly_and_adaptively(tmp_path):
    args = ["model=data/tiny_chat", "data=data/tiny_sft_test.jsonl", "limit=6", "n_samples=16"]
    out, summary = cli(tmp_path / "a", *args)
    assert summary["records"] == 6 and summary["mode"] == "response" and "mean_nll_per_token_response" in summary
    first = rows(tmp_path / "a" / "scores.jsonl")
    assert [r["index"] for r in first] == list(range(6)) and all(r["n_samples"] == 16 for r in first)
    _, _ = cli(tmp_path / "b", *args)
    assert rows(tmp_path / "b" / "scores.jsonl") == first  # every number reproduced
    assert (tmp_path / "a" / "scores.csv").read_text().startswith("index,n_samples,logp_response")
    _, adaptive = cli(tmp_path / "c", *args[:3], "target_se=6.0", "round_samples=16", "max_samples=2048")
    assert all(r["se_response"] <= 6.0 for r in rows(tmp_path / "c" / "scores.jsonl"))
    assert adaptive["mean_samples"] > 16


def test_cli_pairs_with_a_reference_and_multiple_choice(tmp_path):
    # the model against itself: every coupled log-ratio and margin is exactly 0
    out, summary = cli(
        tmp_path / "p",
        "model=data/tiny_chat",
        "reference=data/tiny_chat",
        "data=data/demo_safety_test.jsonl",
        "format=pku_saferlhf",
        "limit=4",
        "n_samples=8",
    )
    assert summary["mode"] == "pairs" and summary["mean_margin"] == 0.0 and summary["mean_se_margin"] == 0.0
    assert all(r["logratio_chosen"] == 0.0 for r in rows(tmp_path / "p" / "scores.jsonl"))
    mc = tmp_path / "mc.jsonl"
    mc.write_text(
        "\n".join(
            json.dumps({"prompt": q, "choices": c, "label": 0})
            for q, c in [
                (
                    "I want to make a salad. What should I do?",
                    [
                        "Happy to help. To make a salad, wash the greens.",
                        "Salad a the wash greens make to. Help happy.",
                    ],
                ),
                (
                    "How do I bake bread?",
                    ["Happy to help. Mix flour, water and yeast.", "Bread bake yeast flour. Happy mix."],
                ),
            ]
        )
        + "\n"
    )
    out, summary = cli(tmp_path / "m", "model=data/tiny_chat", f"data={mc}", "n_samples=32")
    assert summary["mode"] == "choices" and summary["accuracy"] == 1.0  # fluent answers beat shuffled words


def test_cli_ood_check_between_two_text_sets(tmp_path):
    out, summary = cli(
        tmp_path,
        "model=data/tiny_chat",
        "ood=data/tiny_sft_test.jsonl,data/score_ood_shuffled.jsonl",
        "limit=24",
        "n_samples=8",
    )
    assert summary["auroc"] > 0.9 and "AUROC" in out
    assert (tmp_path / "ood.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "args,message",
    [
        (["model=data/tiny_chat"], "give data=FILE"),
        (["data=x.jsonl", "n_sample=4"], "did you mean 'n_samples'"),
        (["data=data/tiny_sft_test.jsonl", "stratified=true", "n_samples=8"], "needs at least 2 rounds"),
    ],
)
def test_cli_bad_settings_fail_in_one_line(tmp_path, args, message):
    proc = run_command([sys.executable, "-m", "align.score", *args], env=ENV)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.distributed
def test_two_ranks_score_their_shards_and_gather_the_single_process_numbers(tmp_path):
    args = ["model=data/tiny_chat", "data=data/tiny_sft_test.jsonl", "limit=7", "n_samples=8", "progress_bar=false"]
    cli(tmp_path / "one", *args)
    proc = run_command(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "align.score",
            *args,
            f"output_dir={tmp_path / 'two'}",
        ],
        env=ENV,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = rows(tmp_path / "one" / "scores.jsonl"), rows(tmp_path / "two" / "scores.jsonl")
    assert [r["index"] for r in two] == list(range(7))
    for a, b in zip(one, two):  # per-record seeds: the same draws whichever rank scores a record
        assert b["logp_response"] == pytest.approx(a["logp_response"], abs=1e-4) and b["n_samples"] == a["n_samples"]


def test_the_bundled_ood_set_is_what_its_script_writes():
    proc = subprocess.run([sys.executable, "data/make_score_data.py"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (
        subprocess.run(
            ["git", "status", "--porcelain", "data/score_ood_shuffled.jsonl"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        == ""
    )
