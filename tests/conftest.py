"""Shared fixtures: toy distributions whose answers are enumerable."""

import pytest
import torch

from align.toy import ToyJoint


def toy_batch(toy: ToyJoint, ctx: int, rows: int, seed: int):
    """Sequences sampled from ``toy``, with the first ``ctx`` tokens as context."""
    ids = toy.sample(rows, seed=seed)
    resp = torch.zeros_like(ids, dtype=torch.bool)
    resp[:, ctx:] = True
    return ids, resp


def toy_pairs(toy: ToyJoint, ctx: int, pairs: int, seed: int):
    """(chosen, rejected, response_mask): two responses per shared context."""
    ids = toy.sample(2 * pairs, seed=seed)
    chosen, rejected = ids[:pairs].clone(), ids[pairs:].clone()
    rejected[:, :ctx] = chosen[:, :ctx]
    resp = torch.zeros_like(chosen, dtype=torch.bool)
    resp[:, ctx:] = True
    return chosen, rejected, resp


@pytest.fixture(scope="session")
def toy_policy():
    return ToyJoint.random(V=3, T=6, seed=0)


@pytest.fixture(scope="session")
def toy_reference(toy_policy):
    return toy_policy.perturbed(0.3, seed=5)


# The longest tests first: with two workers, one that starts last is the suite's tail (the demo alone is 6-9 min).
FIRST = ("tests/test_trainer.py::test_demo_learns_and_saves_everything",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.nodeid not in FIRST)  # stable: the rest keep their order
