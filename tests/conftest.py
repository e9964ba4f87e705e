"""Shared fixtures: toy distributions whose answers are enumerable; one thread per test worker."""

import os

# The cores shared out among the pytest-xdist workers, before torch starts its thread pool: with `-n 2` on 2 cores,
# two workers (and the runs they start, which inherit the environment) of 2 OpenMP threads each would spin for
# cores the other holds. Inductor compiles in the test's own process instead of starting a worker pool per run.
_threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from align.toy import ToyJoint  # noqa: E402


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


# Where the suite's CPU goes (durations under -n 2 are wall times that stretch with the other worker's load):
# ALIGN_TESTS_CPU_LOG=FILE appends, per test, the CPU seconds of the worker and the processes it waited for, and
# each warm run's CPU seconds (tests/warm.py); tests/cpu_report.py adds them up per test.
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
