"""align.model_card: the card of a trained output (Hub front matter, training, results) and the upload on request,
with the uploader injected (no network, no fake server)."""

import json
from types import SimpleNamespace

import pytest
import yaml
from huggingface_hub import ModelCard

from align.config import Config, SFTConfig
from align.model_card import push_output, write_card


def run_dir(tmp_path, cfg, evals):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in evals))
    return run


def test_a_dpo_card_names_base_data_method_evaluator_and_results(tmp_path):
    cfg = Config()  # the defaults: LLaDA 8B Instruct on PKU-SafeRLHF, LoRA, coupled time_free
    evals = [
        {
            "step": 0,
            "eval/rewards/accuracies": 0.5,
            "eval/refusal_rate": 0.4,
            "eval/over_refusal_rate": 0.1,
            "eval/examples": 64,
        },
        {"step": 5, "loss": 0.3},
        {
            "step": 10,
            "eval/rewards/accuracies": 0.875,
            "eval/rewards/accuracies/mc_se": 0.02,
            "eval/refusal_rate": 0.9,
            "eval/refusal_rate/se": 0.05,
            "eval/over_refusal_rate": 0.05,
            "eval/examples": 64,
        },
    ]
    run = run_dir(tmp_path, cfg, evals)
    write_card(run / "final", base=cfg.model.name_or_path, run=run, family="llada")
    card = ModelCard.load(run / "final" / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "GSAI-ML/LLaDA-8B-Instruct" and data["license"] == "mit"
    assert data["datasets"] == ["PKU-Alignment/PKU-SafeRLHF"] and data["library_name"] == "transformers"
    assert {"dpo", "masked-diffusion", "lora", "align"} <= set(data["tags"])
    text = card.text
    assert "DPO (sigmoid loss, β = 0.1" in text and "LLaDA family" in text
    assert "**Training estimator**: coupled `time_free`, 4 draws per term" in text
    assert "**Evaluator** (held-out metrics below): coupled `time_free`, 16 draws per term" in text
    assert "Held-out evaluation at step 10 (64 examples" in text and "| rewards/accuracies | 0.875 | 0.02 |" in text
    assert "| refusal_rate | 0.400 | 0.900 |" in text and "LoRA r = 16" in text
    assert "[training_config.yaml](training_config.yaml)" in text
    assert yaml.safe_load((run / "final" / "training_config.yaml").read_text()) == cfg.to_dict()


def test_an_sft_card_and_a_card_without_a_run(tmp_path):
    cfg = SFTConfig()
    cfg.lora.enabled = False
    run = run_dir(tmp_path, cfg, [])
    write_card(run / "final", base="Dream-org/Dream-v0-Base-7B", run=run, family="Dream")
    card = ModelCard.load(run / "final" / "README.md")
    assert "sft" in card.data.tags and "lora" not in card.data.tags and card.data.license == "apache-2.0"
    assert "supervised fine-tuning" in card.text and "full fine-tuning" in card.text
    assert "No held-out evaluation" in card.text
    bare = tmp_path / "bare"
    bare.mkdir()
    write_card(bare, base="some/model", merged=True)
    assert ModelCard.load(bare / "README.md").data.base_model == "some/model"


@pytest.mark.parametrize("strategy", ["end", "all_checkpoints"])
def test_push_uploads_final_and_checkpoints_on_request(tmp_path, strategy, capsys):
    out = tmp_path / "my-run"
    for name in ("final", "checkpoint-2", "checkpoint-4", "runs"):
        (out / name).mkdir(parents=True)
    calls = []

    def upload(folder, repo_id, private, path_in_repo):
        calls.append((folder.name, repo_id, private, path_in_repo))
        return f"https://hub/{repo_id}"

    train = SimpleNamespace(hub_model_id=None, hub_private_repo=True, hub_strategy=strategy)
    assert push_output(out, train, upload=upload) == 0
    expected = [("final", "my-run", True, "")]
    if strategy == "all_checkpoints":
        expected += [("checkpoint-2", "my-run", True, "checkpoint-2"), ("checkpoint-4", "my-run", True, "checkpoint-4")]
    assert calls == expected and "pushed" in capsys.readouterr().out


def test_a_failed_push_says_why_in_one_line_and_leaves_the_output(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "final").mkdir(parents=True)
    (out / "final" / "weights").write_text("w")

    def upload(folder, repo_id, private, path_in_repo):
        raise PermissionError("401 Unauthorized: invalid token\nmore detail")

    train = SimpleNamespace(hub_model_id="me/x", hub_private_repo=False, hub_strategy="end")
    assert push_output(out, train, upload=upload) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PermissionError: 401 Unauthorized: invalid token" in err[0] and "hf upload me/x" in err[0]
    assert (out / "final" / "weights").read_text() == "w"
