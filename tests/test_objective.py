"""The written objective contract (align/objective.py): the three objectives satisfy it, and its optional members
have the defaults the loop relies on instead of hasattr."""

import pytest

from align.config import Config, SFTConfig, load_config
from align.dpo import DPOObjective
from align.objective import REQUIRED, Objective, ObjectiveProtocol
from align.online_dpo import OnlineDPOConfig, OnlineDPOObjective
from align.sft import SFTObjective


@pytest.mark.parametrize(
    "objective_cls,config_cls,recipe",
    [
        (DPOObjective, Config, "demo"),
        (SFTObjective, SFTConfig, "tiny_chat_sft"),
        (OnlineDPOObjective, OnlineDPOConfig, "demo_online"),
    ],
)
def test_each_objective_satisfies_the_contract(objective_cls, config_cls, recipe):
    objective = objective_cls(load_config(recipe, [], config_cls))
    assert isinstance(objective, Objective) and isinstance(objective, ObjectiveProtocol)
    for member in REQUIRED:  # defined by the objective itself, not the contract's NotImplementedError
        owner = next(k for k in type(objective).__mro__ if member in vars(k) or member in vars(objective))
        assert owner is not Objective or member in vars(objective), (objective_cls.__name__, member)
    assert isinstance(objective.name, str) and isinstance(objective.needs_reference, bool)
    assert isinstance(objective.uses_step_norm, bool) and isinstance(objective.per_example_keys, tuple)
    if objective_cls is not OnlineDPOObjective:  # the default: a window's metrics as they are
        assert objective.finish_train({"a": 1.0}, None) == {"a": 1.0}


def test_an_objective_missing_a_required_method_says_which():
    class Half(Objective):
        name, unit, needs_reference = "half", "pairs", False

    with pytest.raises(NotImplementedError):
        Half().compute(None, {}, 0, 0.0)
    assert Half().per_example_keys == () and Half().caches_reference
