"""Shared fixtures: toy distributions whose answers are enumerable; one thread per test worker."""

import os
from pathlib import Path

# The cores shared out among the pytest-xdist workers, before torch starts its thread pool: with `-n 2` on 2 cores,
# two workers (and the runs they start, which inherit the environment) of 2 OpenMP threads each would spin for
# cores the other holds. Inductor compiles in the test's own process instead of starting a worker pool per run.
_threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
# Runs are forked from the test process after its imports (tests/helpers.py): what libraries read from the
# environment at import time must already be what the runs are given.
for _key, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_key, _value)

import pytest  # noqa: E402
import torch  # noqa: E402

# The test process itself computes on one thread: runs are forked from it (tests/helpers.py), and a child forked
# after GNU OpenMP has started its thread pool can hang in its first parallel region. Each run sets its own
# thread count from its environment's OMP_NUM_THREADS (the cores shared out above).
torch.set_num_threads(1)

from align.toy import ToyJoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


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


# the tiny chat tokenizer, and a tiny reward model with it (online DPO and the behaviour check score with it)
@pytest.fixture(scope="session")
def tokenizer():
    from align.models.tokenizer import load_tokenizer

    return load_tokenizer(str(ROOT / "data" / "tiny_chat"))


@pytest.fixture(scope="session")
def reward_model_dir(tmp_path_factory, tokenizer):
    """A tiny sequence-classification reward model with the tiny chat tokenizer (its chat template), saved."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("reward_model")
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# The longest tests first: with two workers, one that starts last is the suite's tail (the demo alone is 6-9 min).
FIRST = ("tests/test_trainer.py::test_demo_learns_and_saves_everything",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.nodeid not in FIRST)  # stable: the rest keep their order


# Where the suite's CPU goes (durations under -n 2 are wall times that stretch with the other worker's load):
# ALIGN_TESTS_CPU_LOG=FILE appends, per test, the CPU seconds of the worker and of the processes it waited for (its
# forked runs and launchers, tests/helpers.py); tests/cpu_report.py sorts them.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    path = os.environ.get("ALIGN_TESTS_CPU_LOG")
    if not path:
        return (yield)
    import json
    import time

    before, start = os.times(), time.time()
    try:
        return (yield)
    finally:
        after = os.times()
        cpu = sum(
            getattr(after, k) - getattr(before, k) for k in ("user", "system", "children_user", "children_system")
        )
        with open(path, "a") as f:
            f.write(
                json.dumps(
                    {
                        "test": item.nodeid,
                        "start": start,
                        "end": time.time(),
                        "cpu": cpu,
                        "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
                    }
                )
                + "\n"
            )
