"""align.cli: the one command-line layer of train_dpo, train_sft, score, ablate and the sampler."""

import dataclasses

import pytest

from align.cli import help_text, overrides, parse_options, value_of
from align.config import Config, ConfigError
from align.sampler import SampleOptions
from align.score import ScoreConfig


def pairs(*argv):
    return overrides(list(argv), prog="test", help_page=lambda: "page")


def test_key_value_dashed_and_spaced_forms_parse_alike():
    assert pairs("steps=8", "--gen-length=16", "--block-length", "8", "--prompt", "Q: why?") == [
        ("steps", "8"),
        ("gen_length", "16"),
        ("block_length", "8"),
        ("prompt", "Q: why?"),
    ]
    opts = parse_options(
        pairs("--model", "data/tiny_chat", "--steps", "8", "--prompt", "Q: why?", "temperature=0.5"), SampleOptions
    )
    assert (opts.model, opts.steps, opts.prompt, opts.temperature) == ("data/tiny_chat", 8, "Q: why?", 0.5)


def test_values_read_as_yaml_except_text_that_is_not_a_value():
    assert value_of("null") is None and value_of("") is None and value_of("[a,b]") == ["a", "b"]
    assert value_of("3") == 3 and value_of("true") is True and value_of("Q: why?") == "Q: why?"


def test_a_stray_argument_a_typo_and_a_wrong_type_fail_naming_them():
    with pytest.raises(ConfigError, match="'steps' is not key=value"):
        pairs("steps")
    with pytest.raises(ConfigError, match="did you mean 'n_samples'"):
        parse_options(pairs("n_sample=4"), ScoreConfig)
    with pytest.raises(ConfigError, match="steps: expected int"):
        parse_options(pairs("steps=many"), SampleOptions)
    with pytest.raises(ConfigError, match="remasking: 'lowest' is not one of"):
        parse_options(pairs("remasking=lowest"), SampleOptions)


def test_help_lists_every_key_sectioned_or_flat(capsys):
    with pytest.raises(SystemExit) as stop:
        pairs("steps=1", "--help")
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == "page"
    flat = help_text(ScoreConfig, "usage")
    assert all(f"  {f.name} = " in flat for f in dataclasses.fields(ScoreConfig))
    sectioned = help_text(Config, "usage")
    assert "train:" in sectioned and "  train.learning_rate = " in sectioned and "  data.on_bad_record = " in sectioned
