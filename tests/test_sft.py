"""Masked-diffusion SFT: the loss by hand, its expectation against the enumerated bound, the entry point."""

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch

from align import estimators as E
from align.masking import MaskDraw
from tests.conftest import toy_batch
from tests.helpers import BASIC, ENV, QUIET, ROOT, run, run_command


def constant_scorer(logp: float):
    def score(noised, attention_mask, targets, score_mask):
        return torch.where(score_mask, torch.full(targets.shape, logp), torch.zeros(()))

    return score


def test_sft_loss_by_hand():
    """Prompt of 2 tokens, response of L = 4; the draw masks response tokens 1 and 3 at t = 0.5.

    Every masked token has p = 1/2, so Σ_masked log p = 2·log ½ and the loss is
    −(1/L)·(1/t)·Σ = −(1/4)·2·(2·log ½) = log 2 = 0.693147. Unweighted NLL per masked token: log 2.
    """
    ids = torch.tensor([[5, 6, 1, 2, 3, 4]])
    resp = torch.tensor([[False, False, True, True, True, True]])
    masked = torch.tensor([[[False, False, True, False, True, False]]])
    draw = MaskDraw(masked, torch.tensor([[1 / 0.5]], dtype=torch.float64))
    terms = E.sft_terms_from_draw(constant_scorer(math.log(0.5)), ids, resp, draw, mask_token_id=9)
    assert terms.loss.item() == pytest.approx(math.log(2))
    assert terms.masked_token_nll.item() == pytest.approx(math.log(2)) and terms.masked_tokens.item() == 2


def test_sft_loss_is_zero_when_nothing_is_masked_and_ignores_the_prompt():
    ids = torch.tensor([[5, 6, 1, 2]])
    resp = torch.tensor([[False, False, True, True]])
    draw = MaskDraw(torch.zeros(1, 1, 4, dtype=torch.bool), torch.zeros(1, 1, dtype=torch.float64))
    assert E.sft_terms_from_draw(constant_scorer(-3.0), ids, resp, draw, mask_token_id=9).loss.item() == 0.0


@pytest.mark.parametrize("estimator", ["time_integral", "time_free", "any_order"])
def test_sft_loss_expectation_is_the_bound_over_L(toy_policy, estimator):
    """E[loss] = −bound/L (LLaDA's SFT loss is the masked-diffusion bound per token); within 4 standard errors."""
    ids, resp = toy_batch(toy_policy, ctx=2, rows=2, seed=3)  # L = 4 response tokens, 2 visible
    bound = E.enumerate_bound(toy_policy.logits_fn, ids, resp, mask_token_id=toy_policy.mask_token_id)  # [2]
    R = 4000
    rows = ids.repeat_interleave(R, 0)
    terms = E.sft_terms(
        E.scorer_from_logits(toy_policy.logits_fn),
        rows,
        resp.repeat_interleave(R, 0),
        mask_token_id=toy_policy.mask_token_id,
        generator=torch.Generator().manual_seed(0),
        estimator=estimator,
    )
    loss = terms.loss.double().reshape(2, R)
    mean, se = loss.mean(1), loss.std(1) / math.sqrt(R)
    z = (mean - (-bound / 4)) / se
    assert (z.abs() < 4).all(), (mean, -bound / 4, se)


# ---------------------------------------------------------------- entry point

SFT = [
    sys.executable,
    "-m",
    "align.train_sft",
    "recipe=tiny_chat_sft",
    "model.name_or_path=tiny:llada",
    "data.dataset=data/tiny_sft_train.jsonl",
    "data.max_train_examples=64",
    "data.eval_dataset=data/tiny_sft_test.jsonl",
    "data.max_eval_examples=16",
    "behaviour.prompts=null",
    "train.per_device_train_batch_size=8",
    "train.gradient_accumulation_steps=2",
    "train.num_train_epochs=3",
    "train.logging_steps=1",
    "train.eval_steps=0",
    "train.save_steps=3",
    "train.save_total_limit=null",
    *BASIC,
]


def test_sft_help_lists_its_keys():
    proc = run_command([sys.executable, "-m", "align.train_sft", "--help"], env=ENV)
    assert "usage: train_sft.py" in proc.stderr + proc.stdout
    assert "sft.estimator" in proc.stderr + proc.stdout and "data.response_padding" in proc.stderr + proc.stdout


def test_sft_accelerate_launch_script_form(tmp_path):
    out = tmp_path / "launch"
    log = run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            "1",
            "--cpu",
            "align/train_sft.py",
            *SFT[3:],
            "train.max_steps=2",
            f"train.output_dir={out}",
        ]
    )
    assert "single process (cpu)" in log and (out / "final" / "config.json").exists()


@pytest.mark.slow
def test_sft_learns_and_resumes_exactly_across_an_epoch(tmp_path):
    """64 sequences, 16 a step: 4 steps an epoch, 12 in all. Resume at step 6 (inside epoch 1) matches to 1e-6."""
    full = tmp_path / "full"
    run([*SFT, f"train.output_dir={full}"])
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    a = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert sorted(a) == list(range(1, 13))
    nll = [r["masked_token_nll"] for r in records if "masked_token_nll" in r]
    assert sum(nll[-3:]) < sum(nll[:3])  # it learns
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-6", resumed / "checkpoint-6")
    log = run([*SFT, f"train.output_dir={resumed}", "train.resume_from_checkpoint=latest"])
    assert "at step 6" in log
    b = {
        r["step"]: r["loss"]
        for r in map(json.loads, (resumed / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    }
    assert sorted(b) == list(range(7, 13))
    for step in b:
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])
    config = json.loads((full / "final" / "config.json").read_text())
    assert config["model_type"] == "llada"  # full fine-tuning: the published layout
    # SFT -> DPO: the SFT output is the DPO run's model (and tokenizer); its adapter records that base
    dpo = tmp_path / "dpo"
    log = run(
        [
            sys.executable,
            "-m",
            "align.train_dpo",
            "recipe=demo",
            f"model.name_or_path={full / 'final'}",
            f"train.output_dir={dpo}",
            *QUIET,
            "train.max_steps=2",
            "train.eval_steps=0",
            "train.do_eval=false",
        ]
    )
    assert "saved" in log
    from align.models import adapter_base, load_model

    assert adapter_base(dpo / "final") == str(full / "final")
    assert load_model(str(dpo / "final")) is not None


# ---------------------------------------------------------------- the shipped tiny chat model


def test_shipped_tiny_chat_model_loads_like_any_checkpoint():
    from align.models import load_model, spec_for
    from align.models.tokenizer import load_tokenizer

    model = load_model(str(ROOT / "data" / "tiny_chat"), dtype="float32")
    tok = load_tokenizer(str(ROOT / "data" / "tiny_chat"))
    spec = spec_for(model)
    assert type(model).__name__ == "LLaDAModelLM" and spec.mask_token_id == tok.mask_token_id
    info = json.loads((ROOT / "data" / "tiny_chat" / "build_info.json").read_text())
    assert info["sft"]["final_eval_masked_token_nll"] < 2.0  # trained: held-out NLL far below a random model's ~7.3
    assert sum(p.numel() for p in model.parameters()) < 10_000_000


@pytest.mark.slow
def test_build_script_pipeline_runs(tmp_path):
    """The build's stages, a few steps each (the real build takes ~15 minutes and is not rerun by tests)."""
    log = run([sys.executable, "data/build_tiny_model.py", "--quick", "--work", str(tmp_path / "work")])
    # --quick works in <work>/quick, so that a quick check never touches a real build's resumable work files
    assert (tmp_path / "work" / "quick" / "sft" / "final" / "model.safetensors").exists() and '"sft"' in log
    assert (
        subprocess.run(
            ["git", "status", "--porcelain", "data/"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        == ""
    )  # regenerating the corpus reproduces the committed files
