"""Config: every shipped recipe parses; bad keys and types fail naming the key."""

from pathlib import Path

import pytest
import yaml

from align.cli import help_text
from align.config import RECIPES_DIR, Config, ConfigError, SFTConfig, load_config
from align.train import training_config

RECIPES = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def test_recipes_present():
    assert {"demo", "beavertails", "ultrafeedback", "hh_rlhf", "beavertails_full_zero3"} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_every_shipped_recipe_parses_and_documents_its_launch_command(name):
    """A recipe's header names its entry point (train_dpo, train_sft or train_online_dpo); it parses with that
    entry's config."""
    text = (RECIPES_DIR / f"{name}.yaml").read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert text.startswith("#")
    if any("train_online_dpo" in line for line in header):
        from align.online_dpo import OnlineDPOConfig

        assert load_config(name, cls=OnlineDPOConfig).online.num_generations >= 2
    elif any("train_sft" in line for line in header):
        cfg = load_config(name, cls=SFTConfig)
        assert cfg.sft.n_samples >= 1
    else:
        assert any("train_dpo" in line for line in header)
        assert load_config(name).estimator.n_samples >= 1


def test_beavertails_recipe_is_llada_on_pku_saferlhf_safer():
    cfg = load_config("beavertails")
    assert cfg.model.name_or_path == "GSAI-ML/LLaDA-8B-Instruct"
    assert (cfg.data.dataset, cfg.data.format, cfg.data.preference) == (
        "PKU-Alignment/PKU-SafeRLHF",
        "pku_saferlhf",
        "safer",
    )


def test_dotted_overrides_and_yaml_values():
    cfg = load_config(
        "demo",
        [
            "train.learning_rate=1e-5",
            "estimator.n_samples=8",
            "lora.enabled=false",
            "lora.target_modules=q_proj,v_proj",
            "train.save_total_limit=null",
        ],
    )
    assert cfg.train.learning_rate == 1e-5 and cfg.estimator.n_samples == 8 and cfg.lora.enabled is False
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.train.save_total_limit is None


def test_coupling_shorthand():
    assert load_config("demo", ["estimator.coupling=decoupled"]).estimator.share_policy_reference is False
    cfg = load_config(None, ["estimator.share_chosen_rejected=false"])
    assert cfg.estimator.share_policy_reference and not cfg.estimator.share_chosen_rejected
    with pytest.raises(ConfigError, match="shorthand"):
        load_config(None, ["estimator.coupling=coupled", "estimator.share_chosen_rejected=false"])
    both = ["estimator.coupling=decoupled", "estimator.share_chosen_rejected=false"]  # agreeing: a run's config.yaml
    assert load_config(None, both).estimator.share_policy_reference is False


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.learnig_rate=1", "unknown config key 'train.learnig_rate'; did you mean 'train.learning_rate'"),
        ("estimator.n_sample=4", "did you mean 'estimator.n_samples'"),
        ("trian.seed=1", "unknown config key 'trian'; did you mean 'train'"),
        ("output_dir=x", "unknown config key 'output_dir'; keys live in sections: did you mean 'train.output_dir'?"),
        ("learning_rate=1e-4", "did you mean 'train.learning_rate'?"),
        ("n_sample=2", "did you mean 'estimator.n_samples' or 'eval.n_samples'?"),
        ("train.seed=abc", "train.seed: expected int, got 'abc'"),
        ("train.max_grad_norm=true", "train.max_grad_norm: expected float"),
        ("estimator.estimator=time-free", "not one of time_free, any_order, time_integral; did you mean 'time_free'"),
        ("estimator.n_samples=0", "estimator.n_samples must be >= 1"),
        ("loss.label_smoothing=0.7", "label_smoothing"),
        ("model.forward_chunk=-2", "model.forward_chunk must be >= 0"),
        ("model.head_chunk_mib=0", "model.head_chunk_mib must be > 0"),
        ("model.checkpoint_blocks=-1", "model.checkpoint_blocks must be >= 0"),
        ("model.checkpoint_blocks=1", "it needs model.gradient_checkpointing=true"),  # the demo recipe has it off
        ("model.compile=fast", "model.compile: expected bool"),
    ],
)
def test_bad_keys_and_types_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("demo", [override])
    assert message in str(e.value)


def test_unknown_key_inside_a_recipe_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"loss": {"betta": 0.1}}))
    with pytest.raises(ConfigError, match="loss.betta.*did you mean 'loss.beta'"):
        load_config(str(path))


def test_unknown_recipe_suggests():
    with pytest.raises(ConfigError, match="did you mean 'beavertails'"):
        load_config("beavertail")


def test_cli_and_help():
    cfg = training_config(["recipe=demo", "train.seed=3"], Config, "train_dpo.py")
    assert cfg.train.seed == 3 and cfg.model.name_or_path == "data/tiny_chat"
    text = help_text(Config, "train_dpo.py recipe=NAME|PATH")
    assert "estimator.share_policy_reference" in text and "TRL" not in text
    assert Path(RECIPES_DIR).is_dir()


@pytest.mark.parametrize(
    "override,message",
    [
        ("behaviour.block_length=0", "behaviour.block_length must be >= 1"),  # was a ZeroDivisionError
        ("behaviour.gen_length=0", "behaviour.gen_length must be >= 1"),
        ("train.seed=-1", "train.seed must be >= 0"),  # was a numpy traceback
        ("lora.r=0", "lora.r must be >= 1"),  # was a peft traceback
        ("lora.alpha=0", "lora.alpha must be > 0"),  # trained nothing and saved final/
        ("train.num_train_epochs=0", "trains nothing"),
        ("train.per_device_eval_batch_size=0", "train.per_device_eval_batch_size must be >= 1"),  # failed at the end
        ("behaviour.judge=align.judges:no_such", "behaviour.judge"),
    ],
)
def test_settings_that_cannot_run_fail_at_start_up_in_one_line(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", [override])


def test_a_tracker_that_is_not_installed_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"wandb is not installed; pip install -e '\.\[wandb\]'"):
        load_config("demo", ["train.report_to=wandb"])


def test_an_online_judge_typo_and_broken_behaviour_prompts_fail_before_anything_is_written(tmp_path):
    from align.online_dpo import OnlineDPOConfig

    with pytest.raises(ConfigError, match="has no function 'correct_behaviour_jugde'"):
        load_config("demo_online", ["online.judge=align.judges:correct_behaviour_jugde"], OnlineDPOConfig)
    broken = tmp_path / "prompts.jsonl"
    broken.write_text('{"prompt": "How do I bake bread?", "kind": "everyday"}\n{"prompt": "x", "kind": \n')
    with pytest.raises(ConfigError, match=r"behaviour.prompts: .*prompts.jsonl:2: not JSON"):
        load_config("demo", [f"behaviour.prompts={broken}"])


def test_a_config_yaml_written_by_an_earlier_align_still_loads_and_starts_a_run_from_it():
    """A run's config.yaml from before the config base class (committed): it loads as a recipe and as a resolved
    config, to the same values."""
    from align.config import load_resolved

    old = Path(__file__).parent / "data" / "run_config_2026-12-07.yaml"
    cfg = load_config(str(old))
    assert cfg.model.name_or_path == "data/tiny_chat" and cfg.eval.n_samples == 8 and cfg.loss.rpo_alpha == 1.0
    resolved, recipe = load_resolved(old).to_dict(), cfg.to_dict()
    for section in ("estimator", "eval"):  # the resolved form keeps the flags the coupling shorthand set
        assert resolved[section].pop("coupling") is None and recipe[section].pop("coupling") == "coupled"
    assert resolved == recipe
    assert list(cfg.to_dict()) == ["model", "lora", "data", "estimator", "loss", "eval", "behaviour", "train"]


def test_key_roles_are_declared_on_the_fields_and_read_by_resume_and_ablate():
    """A key's role lives in its field (align.config.opt): resume compares every key not declared
    trajectory=False (so a key added without a role is compared, never silently ignored), and an ablation's arms
    must agree on every held_out=True key."""
    from align.checkpoints import trajectory_settings
    from align.config import Config, keys_with
    from align.grid_report import HELD_OUT_KEYS

    skip = keys_with(Config, "trajectory", False)
    assert {"train.output_dir", "train.eval_steps", "model.compile", "data.max_eval_examples"} <= skip
    assert {f"behaviour.{k}" for k in ("prompts", "judge", "temperature")} <= skip  # the section's ROLES
    cfg = load_config("demo")
    settings = trajectory_settings(cfg, "no")
    assert "loss.beta" in settings and "train.learning_rate" in settings and "data.dataset" in settings
    assert not set(settings) & skip
    flat = {f"{s}.{k}" for s, section in cfg.to_dict().items() for k in section}
    assert set(settings) == flat - skip  # everything else is compared
    assert {"eval_dataset", "eval_fraction", "max_prompt_length", "preference"} <= set(HELD_OUT_KEYS)


def test_the_reference_cache_is_keyed_by_the_keys_declared_reference():
    """train.precompute_ref_log_probs reuses saved reference terms only under the same key (DPOObjective.cache_key):
    the keys whose field declares reference=True, read from the fields, not a hand-kept list."""
    from align.dpo import DPOObjective

    def key(*overrides):
        return DPOObjective(load_config("demo", list(overrides))).cache_key()

    base = key()
    assert {"model.name_or_path", "lora.enabled", "train.seed", "data.dataset", "eval.n_samples"} <= set(base)
    assert {"estimator.n_samples", "estimator.share_policy_reference", "train.disable_dropout"} <= set(base)
    for override in ("estimator.n_samples=4", "eval.seed=3", "data.max_response_length=32", "train.seed=1"):
        assert key(override) != base, override
    for override in ("train.learning_rate=1e-3", "loss.beta=0.5", "train.output_dir=elsewhere", "behaviour.steps=48"):
        assert key(override) == base, override
