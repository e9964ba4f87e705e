"""Reliability of a long run: non-finite steps are never applied, a signal stops the run after a checkpoint
that resumes exactly (across an epoch boundary), on one process and on two.

NaNs are planted by wrapping the objective's ``compute`` in a trainer built in a child forked from the test
(``in_child``); the signals are real (``os.kill``), sent from outside or by the planted code.
"""

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import (
    DS_ENV,
    ENV,
    LAUNCHERS,
    QUIET,
    ROOT,
    TEST_MODEL,
    demo_trainer,
    fresh_ports,
    in_child,
    losses,
    metrics,
    run_command,
    train,
)

# 24 pairs in batches of 8: 3 steps an epoch, 9 steps = 3 epochs
SHORT = [
    TEST_MODEL,
    "data.max_train_examples=24",
    "train.per_device_train_batch_size=8",
    "train.max_steps=9",
    "train.logging_steps=1",
    "train.eval_steps=0",
    "train.save_steps=100",
    "train.save_total_limit=null",
    "train.do_eval=false",
    "train.learning_rate=1e-3",
    "train.warmup_ratio=0",
]


def _planted_nonfinite_step(out, kind, *overrides):
    """A run whose step 3 has a non-finite loss (``kind="loss"``) or gradient (``"grad"``), planted by wrapping the
    objective's ``compute``; what each step did to the weights."""
    import torch

    from align.checkpoints import complete_checkpoints
    from align.guards import NonFiniteStep

    tr = demo_trainer(out, *SHORT, *overrides)
    params = [p for p in tr.model.parameters() if p.requires_grad]
    snaps, state = {}, {"step": 0}
    compute = tr.objective.compute

    def planted(trainer, batch, epoch, norm):
        state["step"] = trainer.global_step + 1  # the optimizer step in progress (accumulation 1)
        snaps[state["step"]] = [p.detach().clone() for p in params]
        loss, stats, n = compute(trainer, batch, epoch, norm)
        if state["step"] == 3 and kind == "loss":
            loss = loss + float("nan")  # a non-finite loss whose gradients are finite
        return loss, stats, n

    tr.objective.compute = planted
    params[0].register_hook(lambda g: g * float("nan") if state["step"] == 3 and kind == "grad" else g)
    error = None
    try:
        tr.train()
    except NonFiniteStep as e:
        error = str(e)

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(snaps[a], snaps[b]))

    return {
        "error": error,
        "finite": all(bool(torch.isfinite(p).all()) for p in params),
        "applied": {s: not same(s, s + 1) for s in sorted(snaps) if s + 1 in snaps},
        "now_is_before_3": all(torch.equal(p, x) for p, x in zip(params, snaps[3])),
        "checkpoints": sorted(p.name for p in complete_checkpoints(tr.out)),
    }


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_a_nonfinite_step_is_skipped_and_counted(tmp_path, kind):
    out = tmp_path / "run"
    r = in_child(_planted_nonfinite_step, out, kind, "train.on_nonfinite=skip")
    assert r["error"] is None and r["finite"]
    assert r["applied"] == {1: True, 2: True, 3: False, 4: True, 5: True, 6: True, 7: True, 8: True}
    counted = {m["step"]: m["nonfinite_steps"] for m in metrics(out) if "nonfinite_steps" in m}
    assert counted == {s: int(s == 3) for s in range(1, 10)}


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_a_nonfinite_step_stops_the_run_after_saving_the_last_good_state(tmp_path, kind):
    out = tmp_path / "run"
    r = in_child(_planted_nonfinite_step, out, kind)  # train.on_nonfinite=stop is the default
    assert r["error"] is not None and r["error"].startswith("step 3:"), r["error"]
    assert ("the loss was not finite" if kind == "loss" else "the gradient norm was nan") in r["error"]
    assert "demo_safety_train.jsonl:" in r["error"] and "update was not applied" in r["error"]
    assert r["finite"] and r["now_is_before_3"] and r["checkpoints"] == ["checkpoint-2"]
    assert r["applied"] == {1: True, 2: True}


def _start(out, *overrides):
    args = [
        sys.executable,
        "-m",
        "align.train_dpo",
        "recipe=demo",
        f"train.output_dir={out}",
        *QUIET,
        *SHORT,
        *overrides,
    ]
    return subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _logged_steps(out) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def _interrupt(cut, sig) -> int:
    """Start a run, send ``sig`` from outside once a step is logged; check the stop; return the step it stopped
    after."""
    proc = _start(cut, "train.max_steps=9")
    deadline = time.time() + 300
    while not _logged_steps(cut) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, output[-3000:]
    stopped = max(_logged_steps(cut))
    assert 1 <= stopped < 9 and "preempted: stopped by " + sig.name in output, output[-3000:]
    assert sorted(p.name for p in cut.glob("checkpoint-*")) == [f"checkpoint-{stopped}"]
    return stopped


def test_ctrl_c_saves_a_checkpoint_and_exits_75(tmp_path):
    _interrupt(tmp_path / "cut", signal.SIGINT)


def test_sigterm_saves_a_checkpoint_and_resume_continues_exactly(tmp_path):
    """A real SIGTERM from outside, after the first step: the run finishes its step, saves, exits 75; resuming
    gives the uninterrupted run's losses to 1e-6 through two epoch boundaries."""
    full = tmp_path / "full"
    train(full, *SHORT)
    cut = tmp_path / "cut"
    stopped = _interrupt(cut, signal.SIGTERM)
    log = train(cut, *SHORT, "train.resume_from_checkpoint=latest")
    assert f"at step {stopped}" in log
    a, b = losses(full), losses(cut)
    assert sorted(b) == list(range(1, 10))
    for step in range(1, 10):
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])


# ---------------------------------------------------------------- two processes

TORCHRUN, ZERO2 = LAUNCHERS["ddp"], LAUNCHERS["zero2"]
# 8 pairs, 2 ranks x 2: 2 steps an epoch; 6 steps = 3 epochs (small: bf16 runs ~8x slower than fp32 on CPU)
DIST = [
    TEST_MODEL,
    "data.max_train_examples=8",
    "train.per_device_train_batch_size=2",
    "train.max_steps=6",
    "train.logging_steps=1",
    "train.eval_steps=0",
    "train.save_steps=100",
    "train.save_total_limit=null",
    "train.do_eval=false",
    "train.learning_rate=1e-3",
    "train.warmup_ratio=0",
    "train.on_nonfinite=skip",
]


def _dist(launcher, out, *overrides, env_extra, ok=True):
    env = dict(DS_ENV if launcher is ZERO2 else ENV, DIST_CHECK_NAN_RANK="1", DIST_CHECK_NAN_STEP="2", **env_extra)
    extra = ["model.dtype=bfloat16"] if launcher is ZERO2 else []
    proc = run_command(
        fresh_ports([*launcher, "tests/dist_check.py", str(out), *QUIET, *DIST, *extra, *overrides]),
        env=env,
        timeout=600,
    )
    assert (proc.returncode == 0) == ok, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((out / "dist_check.json").read_text()), proc.stdout + proc.stderr


@pytest.mark.distributed
@pytest.mark.parametrize("launcher", [TORCHRUN, ZERO2], ids=["ddp", "zero2_bf16"])
def test_two_ranks_skip_a_nan_on_one_rank_and_stop_together_on_a_signal_to_one_rank(tmp_path, launcher):
    """Rank 1 alone sees a NaN loss at step 2, its gradients finite as planted: under DDP only the step's
    all-reduce tells rank 0; under DeepSpeed (which steps inside backward) the loss's poisoned gradients make
    the engine skip. Neither rank applies step 2. Rank 0 alone gets SIGTERM during step 4: both ranks finish
    step 4, save and stop; the resumed run gives the uninterrupted losses and weights."""
    full = tmp_path / "full"
    ranks, log = _dist(launcher, full, env_extra={})
    assert ("DDP, 2 ranks (cpu)" if launcher is TORCHRUN else "DeepSpeed ZeRO-2, 2 ranks (cpu)") in log  # in words
    assert [r["seen"]["torch"] for r in ranks] == [2, 2]
    assert ranks[0]["param_sums"] == ranks[1]["param_sums"]  # replicas never diverged
    sums = ranks[0]["step_sums"]
    assert sums["3"] == sums["2"] and sums["2"] != sums["1"] and sums["4"] != sums["3"]  # step 2 alone not applied
    counted = {m["step"]: m["nonfinite_steps"] for m in metrics(full) if "nonfinite_steps" in m}
    assert counted == {s: int(s == 2) for s in range(1, 7)}
    cut = tmp_path / "cut"
    ranks, log = _dist(
        launcher, cut, env_extra={"DIST_CHECK_SIGNAL_RANK": "0", "DIST_CHECK_SIGNAL_STEP": "4"}, ok=False
    )
    assert [r["preempted_at"] for r in ranks] == [4, 4], log[-3000:]
    assert sorted(p.name for p in cut.glob("checkpoint-*")) == ["checkpoint-4"]
    ranks, log = _dist(launcher, cut, "train.resume_from_checkpoint=latest", env_extra={})
    assert "at step 4" in log
    a, b = losses(full), losses(cut)
    assert sorted(b) == list(range(1, 7))
    for step in range(5, 7):
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])
    reference = json.loads((full / "dist_check.json").read_text())
    assert ranks[0]["param_sums"] == pytest.approx(reference[0]["param_sums"], abs=1e-6)
