"""Runs that cannot be corrupted: a resume checks what it resumes, a failed start writes nothing, ``latest``
means a checkpoint or an empty directory, damaged checkpoints are caught (fault injection with SIGKILL), and
every start-up failure is one line.

Runs use 8 training pairs in micro-batches of 2 (4 steps an epoch), so 6 steps cross an epoch boundary.
"""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from align.checkpoints import CheckpointError
from align.config import ConfigError
from align.resume import resume_position
from align.runlock import check_output_dir
from tests.helpers import ENV, QUIET, ROOT, TEST_MODEL, losses, metrics, run_command, train

RUN = [
    TEST_MODEL,
    "data.max_train_examples=8",
    "data.max_eval_examples=4",
    "train.per_device_train_batch_size=2",
    "train.max_steps=6",
    "train.save_steps=2",
    "train.logging_steps=1",
    "train.eval_steps=0",
    "train.save_total_limit=null",
    "train.warmup_ratio=0",
]


def snapshot(directory: Path) -> dict:
    """Every file under ``directory`` with a hash of its bytes (a failed start must leave it unchanged)."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def fails(out, *overrides, script=("-m", "align.train_dpo")) -> str:
    """A start that must fail with one line (no traceback); returns stderr."""
    proc = run_command(
        [sys.executable, *script, "recipe=demo", f"train.output_dir={out}", *QUIET, *overrides], env=ENV, timeout=300
    )
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [
        line
        for line in proc.stderr.splitlines()
        if line.startswith(("config error", "data error", "checkpoint error", "error"))
    ]
    assert len(errors) == 1, proc.stderr[-3000:]  # one line says what is wrong
    return proc.stdout + proc.stderr


def fault_run(point: str, step: int, out: Path, *overrides):
    """``tests/fault_run.py POINT STEP``: the demo recipe into ``out`` with a fault planted (a process of its own:
    SIGKILL and signals are what these tests are about)."""
    return subprocess.run(
        [sys.executable, "tests/fault_run.py", point, str(step), "recipe=demo", f"train.output_dir={out}"]
        + [*QUIET, *RUN, *overrides],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted run with checkpoints 2, 4, 6 (read only: tests copy it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(out, *RUN)
    return out


def copy_run(finished, to: Path) -> Path:
    shutil.copytree(finished, to)
    return to


# ---------------------------------------------------------------- 2. resume verifies what it resumes


def test_a_resume_with_changed_settings_is_refused_naming_each_and_the_directory_is_unchanged(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    before = snapshot(out)
    err = fails(
        out,
        *RUN,
        "train.resume_from_checkpoint=latest",
        "train.per_device_train_batch_size=4",
        "estimator.estimator=any_order",
        "loss.beta=0.5",
    )
    assert "config error: resuming from" in err and "checkpoint-6" in err
    assert "estimator.estimator: time_free -> any_order" in err and "loss.beta: 0.1 -> 0.5" in err
    assert "global batch: 2 pairs" in err and "-> 4 pairs" in err and "train.resume_changes" in err
    assert snapshot(out) == before


def test_named_changes_resume_and_are_recorded_beside_the_untouched_config(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    edited = yaml.safe_load((out / "config.yaml").read_text())
    edited["loss"]["beta"] = 0.9  # a hand edit of the run's config.yaml: neither compared nor written to the card
    (out / "config.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    config = (out / "config.yaml").read_bytes()
    log = train(
        out,
        *RUN,
        "train.resume_from_checkpoint=" + str(out / "checkpoint-4"),
        "loss.beta=0.5",
        "train.learning_rate=1e-4",
        "train.resume_changes=[loss.beta,train.learning_rate]",
    )
    assert "resumed from" in log and "at step 4; loss.beta changed: 0.1 -> 0.5" in log
    assert "train.learning_rate changed: 0.001 -> 0.0001" in log  # the demo recipe's 1e-3
    assert (out / "config.yaml").read_bytes() == config  # how the run started stays on record
    (record,) = [json.loads(line) for line in (out / "resumes.jsonl").read_text().splitlines()]
    assert record["step"] == 4 and record["changed"] == {"loss.beta": [0.1, 0.5], "train.learning_rate": [1e-3, 1e-4]}
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["settings"]["loss.beta"] == 0.5  # the next resume compares with what it was trained with
    # the saved model's record is the effective config, with the resume beside it (config.yaml is the start's)
    saved = yaml.safe_load((out / "final" / "training_config.yaml").read_text())
    assert saved["loss"]["beta"] == 0.5 and saved["train"]["learning_rate"] == 1e-4
    assert (out / "final" / "resumes.jsonl").read_text() == (out / "resumes.jsonl").read_text()
    assert "0.5" in (out / "final" / "README.md").read_text()
    logged = [m for m in metrics(out) if "loss" in m]
    assert [m["step"] for m in logged] == [1, 2, 3, 4, 5, 6]  # the records after step 4 were replaced, not appended
    before = {m["step"]: m["learning_rate"] for m in metrics(finished) if "loss" in m}
    for m in logged:  # the new peak rate on the same schedule position (the optimizer's saved rate gave way)
        assert m["learning_rate"] == pytest.approx(before[m["step"]] / (10 if m["step"] > 4 else 1), rel=1e-9)


def test_a_run_started_from_a_finished_runs_config_yaml_gives_its_losses(finished, tmp_path):
    out = tmp_path / "again"
    proc = run_command(
        [sys.executable, "-m", "align.train_dpo", f"recipe={finished / 'config.yaml'}", f"train.output_dir={out}"]
        + ["train.max_steps=2", "train.report_to=none", "train.progress_bar=false"],
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = losses(finished), losses(out)
    assert sorted(b) == [1, 2]
    for step in b:  # the first two steps' rates do not depend on the step budget (no warm-up)
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])


def test_keys_that_cannot_change_the_trajectory_are_allowed_and_recorded(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    extra = ["train.hub_model_id=me/tiny-dpo", "data.max_eval_examples=2"]
    log = train(out, *RUN, *extra, f"train.resume_from_checkpoint={out / 'checkpoint-4'}")
    assert "train.hub_model_id changed: None -> me/tiny-dpo (it cannot change the trajectory" in log
    assert "data.max_eval_examples changed: 4 -> 2" in log and "eval_data changed: the held-out data" in log
    (record,) = [json.loads(line) for line in (out / "resumes.jsonl").read_text().splitlines()]
    assert record["changed"] == {} and set(record["recorded"]) == {
        "train.hub_model_id",
        "data.max_eval_examples",
        "eval_data",
    }
    a, b = losses(finished), losses(out)
    for step in b:
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])


def test_resume_position_under_a_new_batch_geometry():
    state = {"global_step": 3, "geometry": {"micro_consumed": 5, "micro_global": 4, "micro_per_epoch": 2}}
    # micro 5 of 4 examples, 2 a epoch: epoch 2, 4 examples in
    assert resume_position(state, micro_global=4, micro_per_epoch=2, accumulation=1) == (5, "")
    micro, note = resume_position(state, micro_global=2, micro_per_epoch=5, accumulation=1)
    assert micro == 2 * 5 + 2 and "epoch 2, 4 examples in" in note
    micro, note = resume_position(state, micro_global=4, micro_per_epoch=1, accumulation=1)
    assert micro == 3 and "continuing with epoch 3" in note  # an epoch of 4 examples: the 4 seen end it
    with pytest.raises(
        CheckpointError,
        match="4 examples into epoch 2, which is not a whole number of the new global micro-batches of 8",
    ):
        resume_position(state, micro_global=8, micro_per_epoch=1, accumulation=1)
    assert resume_position({"global_step": 3}, micro_global=4, micro_per_epoch=2, accumulation=2) == (6, "")


@pytest.mark.distributed
def test_a_changed_world_size_with_the_same_global_batch_resumes_exactly(finished, tmp_path):
    """Written by 2 DDP ranks (2 pairs each), resumed by one process with accumulation 2: the same global
    batches and masks, so the uninterrupted two-rank run's losses, across the epoch boundary."""
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29581",
        "align/train_dpo.py",
    ]
    two = tmp_path / "two"
    common = [*RUN, "train.per_device_train_batch_size=1"]
    train(two, *common, launcher=torchrun)
    one = tmp_path / "one"
    one.mkdir()
    shutil.copytree(two / "checkpoint-2", one / "checkpoint-2")
    log = train(one, *common, "train.gradient_accumulation_steps=2", "train.resume_from_checkpoint=latest")
    assert "world size 2 -> 1, same global batch" in log and "at step 2" in log
    a, b = losses(two), losses(one)
    assert sorted(b) == [3, 4, 5, 6]
    for step in b:
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])


def test_a_resume_compares_the_data_and_the_base_model_by_content(tmp_path):
    """Fingerprints of the encoded data and the base weights (align.fingerprint): the same content under another
    path resumes (said); a record edited in place, a grown file (named as the data, not as the batch geometry)
    and base weights replaced in place are refused naming what changed, unless named in train.resume_changes."""
    from safetensors.torch import load_file, save_file

    lines = (ROOT / "data" / "demo_safety_train.jsonl").read_text().splitlines(keepends=True)
    data, model, out = tmp_path / "train.jsonl", tmp_path / "model", tmp_path / "run"
    data.write_text("".join(lines[:8]))
    shutil.copytree(ROOT / "data" / "tiny_chat", model)
    args = [*RUN, "data.max_train_examples=null", f"data.dataset={data}", f"model.name_or_path={model}"]
    train(out, *args)
    moved = tmp_path / "moved.jsonl"
    shutil.copy(data, moved)
    log = train(out, *args, f"data.dataset={moved}", "train.resume_from_checkpoint=latest")
    assert f"data.dataset: {data} -> {moved} (the same content: " in log and "nothing to do" in log
    latest = "train.resume_from_checkpoint=latest"
    record = json.loads(lines[2])
    record["response_0"] += " Thanks."
    data.write_text("".join(lines[:2]) + json.dumps(record) + "\n" + "".join(lines[3:8]))
    err = fails(out, *args, latest)
    assert "data: the training data as encoded " in err and f"(data.dataset={data})" in err
    data.write_text("".join(lines[:10]))  # grown: the epoch is longer, and that is the data's doing
    err = fails(out, *args, latest)
    assert "data: the training data as encoded " in err and "global batch" not in err
    data.write_text("".join(lines[:8]))
    weights = load_file(model / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] * 1.01
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    err = fails(out, *args, latest)
    assert "model: the base model's weights " in err and f"(model.name_or_path={model})" in err
    log = train(out, *args, "train.resume_changes=[model]", f"train.resume_from_checkpoint={out / 'checkpoint-4'}")
    assert "at step 4; model changed: the base model's weights" in log
    (resumed,) = [json.loads(line) for line in (out / "resumes.jsonl").read_text().splitlines()]
    assert list(resumed["changed"]) == ["model"]


# ---------------------------------------------------------------- 3. nothing written before start-up succeeds


def test_a_failed_start_writes_nothing_and_a_retry_works(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    before = snapshot(out)
    err = fails(out, *RUN, f"train.resume_from_checkpoint={out / 'checkpoint-44'}")
    assert f"checkpoint error: checkpoint {out / 'checkpoint-44'} does not exist" in err
    assert snapshot(out) == before
    fresh = tmp_path / "fresh"  # fails after the data (and its held-out split) are read: nothing may be left
    err = fails(fresh, *RUN, "data.max_train_examples=1")
    assert "fill fewer than one optimizer step" in err and not fresh.exists()
    log = train(fresh, *RUN, "train.max_steps=2")  # the retry is not refused as "already holds a run"
    assert (fresh / "eval_ids.json").exists() and sorted(losses(fresh)) == [1, 2]
    assert log.count("data/demo_safety_train.jsonl: 8/8 records kept") == 1  # each data summary printed once


# ---------------------------------------------------------------- 4. latest: a checkpoint or an empty directory


def test_latest_in_a_run_without_a_checkpoint_is_refused_in_an_empty_directory_starts(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    for path in out.glob("checkpoint-*"):
        shutil.rmtree(path)
    before = snapshot(out)
    # with overwrite_output_dir off, and on (the demo recipe sets it: its quick start can be run again): latest
    # never deletes a run, as HF's Trainer treats a resume without a checkpoint as an error
    for overwrite in ("false", "true"):
        err = fails(out, *RUN, "train.resume_from_checkpoint=latest", f"train.overwrite_output_dir={overwrite}")
        assert "holds a finished run (final/)" in err and "no complete checkpoint to resume from" in err, err
        assert "latest never deletes a run" in err
        assert snapshot(out) == before  # metrics.jsonl not appended to, final/ not replaced
    empty = tmp_path / "empty"
    empty.mkdir()
    log = train(empty, *RUN, "train.max_steps=2", "train.resume_from_checkpoint=latest")
    assert "starting from scratch" in log and sorted(losses(empty)) == [1, 2]


def test_latest_in_a_finished_run_does_nothing(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    before = snapshot(out)
    log = train(out, *RUN, "train.resume_from_checkpoint=latest")
    assert "the run is finished, nothing to do" in log and snapshot(out) == before


def test_sigkill_while_a_resume_cuts_the_logs_and_the_next_resume_is_exact(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    shutil.rmtree(out / "checkpoint-6")
    shutil.rmtree(out / "final")
    proc = fault_run("mid-cut", 0, out, "train.resume_from_checkpoint=latest")
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert max(m["step"] for m in metrics(out)) == 4  # cut, in place, before the process died
    train(out, *RUN, "train.resume_from_checkpoint=latest")
    a, b = losses(finished), losses(out)
    assert sorted(b) == [1, 2, 3, 4, 5, 6] and len([m for m in metrics(out) if "loss" in m]) == 6
    for step in b:
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])


# ---------------------------------------------------------------- one run per directory: a lock


def test_a_second_run_into_a_held_directory_fails_naming_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path):
    """The main process holds flock on the output directory (align.runlock): a second start fails in one line
    naming the holder's pid and writes nothing; once the holder is SIGKILLed the lock is gone with it."""
    out = tmp_path / "run"
    hold = "import sys, time; from align.runlock import OutputLock; OutputLock(sys.argv[1]).acquire(); "
    hold += "print('held', flush=True); time.sleep(600)"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(out)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        err = fails(out, *RUN)
        assert f"is in use by another run (pid {holder.pid}: " in err and "align.runlock" in err, err
        assert list(out.iterdir()) == []  # nothing written by the refused start
    finally:
        holder.kill()
        holder.wait()
    train(out, *RUN, "train.max_steps=2")
    assert sorted(losses(out)) == [1, 2]
    fresh = tmp_path / "a" / "b"  # made to be locked, removed again by a start that fails
    fails(fresh, *RUN, "data.max_train_examples=1")
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------- one trajectory per directory


def relabel(run: Path, trajectory: str) -> None:
    """Make ``run``'s checkpoints another run's (their recorded trajectory id; the manifest leaves the state out)."""
    for state_file in run.glob("checkpoint-*/trainer_state.json"):
        state = json.loads(state_file.read_text())
        state["trajectory"] = trajectory
        state_file.write_text(json.dumps(state))


def test_one_trajectory_per_directory(finished, tmp_path):
    """Another run's checkpoint is refused into a directory holding a run; resuming an older checkpoint moves the
    abandoned later ones aside (named) and continues exactly; latest refuses checkpoints of two runs."""
    ours, theirs = copy_run(finished, tmp_path / "ours"), copy_run(finished, tmp_path / "theirs")
    relabel(theirs, "0123456789abcdef")
    before = snapshot(ours)
    err = fails(ours, *RUN, f"train.resume_from_checkpoint={theirs / 'checkpoint-4'}")
    assert "is another run's checkpoint" in err and "one trajectory per directory" in err
    assert snapshot(ours) == before
    log = train(ours, *RUN, f"train.resume_from_checkpoint={ours / 'checkpoint-2'}")
    (aside,) = (ours / "abandoned").iterdir()
    assert f"checkpoint-4, checkpoint-6 (the abandoned trajectory's) moved to {aside}" in log
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    a, b = losses(finished), losses(ours)
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in b:
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])
    shutil.copytree(theirs / "checkpoint-6", ours / "checkpoint-8")  # a foreign checkpoint copied in
    err = fails(ours, *RUN, "train.resume_from_checkpoint=latest")
    assert "belong to 2 runs" in err and "0123456" in err and "name the one to resume" in err


# ---------------------------------------------------------------- 5. damaged checkpoints


def test_a_damaged_latest_checkpoint_is_passed_over_by_name_and_refused_when_named(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    weights = out / "checkpoint-6" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    (out / "checkpoint-4" / "optimizer.bin").unlink()
    err = fails(out, *RUN, f"train.resume_from_checkpoint={out / 'checkpoint-6'}")
    assert f"checkpoint error: {weights} has" in err and "the manifest says" in err
    err = fails(out, *RUN, f"train.resume_from_checkpoint={out / 'checkpoint-4'}")
    assert f"{out / 'checkpoint-4' / 'optimizer.bin'} is missing" in err
    log = train(out, *RUN, "train.resume_from_checkpoint=latest")
    assert "passed over a damaged checkpoint" in log and str(weights) in log
    assert "checkpoint-4/optimizer.bin is missing" in log and "checkpoint-2 at step 2" in log
    a, b = losses(finished), losses(out)
    for step in range(3, 7):
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])


@pytest.mark.parametrize("point,resumes_at", [("mid-write", 2), ("before-rename", 2), ("mid-cleanup", 4)])
def test_sigkill_during_a_save_resumes_from_the_newest_complete_checkpoint(finished, tmp_path, point, resumes_at):
    """SIGKILL (no handler runs) while checkpoint-4 is written, before it is renamed, or while an older one is
    deleted after it: the resume takes the newest complete checkpoint and gives the uninterrupted losses."""
    out = tmp_path / "run"
    limit = ["train.save_total_limit=1"] if point == "mid-cleanup" else []
    proc = fault_run(point, 4, out, *limit)
    assert proc.returncode == -9, proc.stderr[-3000:]
    log = train(out, *RUN, *limit, "train.resume_from_checkpoint=latest")
    assert f"checkpoint-{resumes_at} at step {resumes_at}" in log
    a, b = losses(finished), losses(out)
    assert sorted(b) == [1, 2, 3, 4, 5, 6]  # each step logged once
    for step in b:
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])


# ---------------------------------------------------------------- logs that survive


def test_a_step_log_is_cut_in_place_a_torn_last_line_is_cut_and_a_damaged_line_refused(tmp_path):
    from align.resume import cut_log, plan_log_cut

    def log(*records: bytes) -> Path:
        path = tmp_path / "metrics.jsonl"
        path.write_bytes(b"".join(records))
        return path

    def rec(step):
        return (json.dumps({"step": step, "loss": 0.5}) + "\n").encode()

    path = log(rec(0), rec(1), rec(2), rec(3))
    inode = path.stat().st_ino
    cut, note = plan_log_cut(path, 2)
    assert cut == len(rec(0) + rec(1) + rec(2)) and note is None
    cut_log(path, cut)  # one truncate: the same file, the kept bytes never rewritten
    assert path.read_bytes() == rec(0) + rec(1) + rec(2) and path.stat().st_ino == inode
    for torn in (rec(2)[:9], rec(2)[:-1]):  # cut mid-record, or a whole record without its newline
        cut, note = plan_log_cut(log(rec(0), rec(1), torn), 5)
        assert cut == len(rec(0) + rec(1)) and f"a torn last line ({len(torn)} bytes" in note
    assert plan_log_cut(log(rec(0), rec(1)), 1) == (None, None)
    assert plan_log_cut(log(rec(0), rec(3), rec(1)), 2) == (rec(0) + rec(1), None)  # not a prefix: a new file
    with pytest.raises(CheckpointError, match="line 2 is not a step record"):
        plan_log_cut(log(rec(0), b"garbage\n", rec(1)), 2)


def test_a_resume_cuts_a_torn_metrics_line_and_refuses_a_damaged_log_writing_nothing(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    shutil.rmtree(out / "checkpoint-6")
    shutil.rmtree(out / "final")
    metrics_log = out / "metrics.jsonl"
    good = metrics_log.read_bytes()
    lines = good.splitlines(keepends=True)
    metrics_log.write_bytes(lines[0] + b"not a record\n" + b"".join(lines[1:]))
    before = snapshot(out)
    err = fails(out, *RUN, "train.resume_from_checkpoint=latest")
    assert f"{metrics_log}: line 2 is not a step record" in err
    assert snapshot(out) == before and not (out / "resumes.jsonl").exists()  # nothing written
    metrics_log.write_bytes(good + b'{"step": 7, "loss": 0.6')  # the process died while appending a line
    log = train(out, *RUN, "train.resume_from_checkpoint=latest")
    assert "metrics.jsonl: a torn last line (23 bytes" in log and "checkpoint-4 at step 4" in log
    a, b = losses(finished), losses(out)
    assert sorted(b) == [1, 2, 3, 4, 5, 6]  # each step logged once
    for step in b:
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])


def test_sigkill_in_the_final_save_is_completed_by_latest_and_a_corrupt_final_is_redone(finished, tmp_path):
    """final/ is written as checkpoints are (final.tmp with a manifest, renamed): SIGKILL before the rename leaves
    no final/, and latest completes the save without training again; a final/ whose bytes changed at the same
    size does not verify (sha256), so latest saves it again."""
    out = tmp_path / "run"
    proc = fault_run("final-before-rename", 0, out)
    assert proc.returncode == -9 and (out / "final.tmp").is_dir() and not (out / "final").exists()
    log = train(out, *RUN, "train.resume_from_checkpoint=latest")
    assert "checkpoint-6 at step 6" in log and (out / "final" / "manifest.json").exists()
    assert not (out / "final.tmp").exists() and sorted(losses(out)) == [1, 2, 3, 4, 5, 6]
    log = train(out, *RUN, "train.resume_from_checkpoint=latest")
    assert "verifies: the run is finished, nothing to do" in log
    weights = next((out / "final").rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])  # same size, header intact: only the hash can tell
    weights.write_bytes(bytes(data))
    log = train(out, *RUN, "train.resume_from_checkpoint=latest")
    assert "the final save is redone" in log and "sha256 differs" in log
    assert "nothing to do" in train(out, *RUN, "train.resume_from_checkpoint=latest")


def test_same_size_corruption_and_a_manifest_of_another_shape_are_damage_not_tracebacks(finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    weights = out / "checkpoint-6" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])
    weights.write_bytes(bytes(data))
    (out / "checkpoint-4" / "manifest.json").write_text('{"files": ["model.safetensors"]}')
    shutil.rmtree(out / "final")
    err = fails(out, *RUN, f"train.resume_from_checkpoint={out / 'checkpoint-4'}")
    assert "manifest.json is damaged" in err
    log = train(out, *RUN, "train.resume_from_checkpoint=latest")
    assert f"{weights} has its recorded size but not its recorded content (sha256 differs)" in log
    assert "checkpoint-2 at step 2" in log
    a, b = losses(finished), losses(out)
    for step in range(3, 7):
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])


@pytest.mark.parametrize("step", [0, 2])
def test_sigterm_during_an_evaluation_stops_with_75_and_latest_continues_exactly(finished, tmp_path, step):
    """SIGTERM while the baseline (step 0) or a mid-run evaluation runs: the evaluation ends, a checkpoint of that
    step is saved, the process exits 75; latest continues (the baseline is not logged twice) to the
    uninterrupted run's losses (evaluations do not change the trajectory)."""
    out = tmp_path / "run"
    evals = ["train.eval_steps=2", "train.save_steps=3"]  # the step-2 checkpoint is the stop's own
    proc = fault_run("sigterm-in-eval", step, out, *evals)
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert f"stopped by SIGTERM after step {step}" in proc.stdout + proc.stderr
    assert (out / f"checkpoint-{step}" / "trainer_state.json").exists()
    log = train(out, *RUN, *evals, "train.resume_from_checkpoint=latest")
    assert f"checkpoint-{step} at step {step}" in log
    a, b = losses(finished), losses(out)
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    for s in b:
        assert b[s] == pytest.approx(a[s], abs=1e-6), (s, a[s], b[s])
    evaluated = [m["step"] for m in metrics(out) if "eval/loss" in m]
    assert evaluated == [0, 2, 4, 6]  # each evaluation logged once


def test_a_nan_right_after_a_resume_names_the_checkpoint_as_the_suspect(finished, tmp_path):
    """A checkpoint damaged in a way its checks cannot see (NaN weights, manifest rewritten to match): the first
    step after resuming from it is not finite, and the stop names that checkpoint, not the data or the rate."""
    from safetensors.torch import load_file, save_file

    from align.checkpoints import write_manifest

    out = copy_run(finished, tmp_path / "run")
    checkpoint = out / "checkpoint-4"
    weights = load_file(checkpoint / "model.safetensors")
    for name in weights:
        weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    write_manifest(checkpoint)
    proc = run_command(
        [sys.executable, "-m", "align.train_dpo", "recipe=demo", f"train.output_dir={out}", *QUIET, *RUN]
        + [f"train.resume_from_checkpoint={checkpoint}"],
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"step 5, the first step after resuming from {checkpoint}" in proc.stderr
    assert "The first suspect is that checkpoint" in proc.stderr


def test_latest_falls_back_past_a_checkpoint_that_verifies_but_does_not_load(finished, tmp_path):
    """Weights of another shape with a manifest to match (every check passes, loading fails): latest names it and
    resumes from the checkpoint before, exactly; the same checkpoint named explicitly is refused in one line."""
    from safetensors.torch import load_file, save_file

    from align.checkpoints import write_manifest

    out = copy_run(finished, tmp_path / "run")
    shutil.rmtree(out / "final")
    checkpoint = out / "checkpoint-6"
    weights = load_file(checkpoint / "model.safetensors")
    for name in weights:
        weights[name] = torch.cat([weights[name], weights[name][:1]])
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    write_manifest(checkpoint)
    err = fails(out, *RUN, f"train.resume_from_checkpoint={checkpoint}")
    assert f"cannot load {checkpoint} into this model and optimizer" in err
    log = train(out, *RUN, "train.resume_from_checkpoint=latest")
    assert f"{checkpoint} does not load; resuming from {out / 'checkpoint-4'} instead" in log
    a, b = losses(finished), losses(out)
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in b:
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])


# ---------------------------------------------------------------- 6, 7. held-out data and one-line failures


def test_an_empty_held_out_set_is_refused_naming_the_numbers(tmp_path):
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"prompt": "only a prompt"}\n{not json\n')
    err = fails(tmp_path / "o", *RUN, f"data.eval_dataset={bad}", "data.on_bad_record=skip")
    assert "config error: no held-out pairs to evaluate on" in err and f"{bad} gave none" in err
    assert f"{bad}: 0/2 records kept; skipped: 1 missing field 'response_0', 1 not valid JSON" in err


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.learning_rate=-1"], "config error: train.learning_rate must be finite and > 0, got -1.0"),
        (["loss.beta=nan"], "config error: loss.beta must be finite and > 0, got nan"),
        (["train.warmup_ratio=2"], "config error: train.warmup_ratio must be finite and in [0, 1], got 2.0"),
        (["data.dataset={tmp}/header.csv", "data.format=pairs"], "holds no records (a header only)"),
        (["data.dataset={tmp}/latin1.csv", "data.format=pairs"], "latin1.csv:2: not valid UTF-8"),
        (["train.output_dir={tmp}/a_file"], "is a file, not a directory"),
        (["train.output_dir={tmp}/a_file/run"], "is a file, not a directory"),
        (["train.resume_from_checkpoint={tmp}/nowhere/checkpoint-3"], "checkpoint error: checkpoint {tmp}/nowhere"),
        (["train.output_dir={tmp}/dangling"], "is a dangling symlink (to {tmp}/nowhere)"),
        (["data.dataset={tmp}/quote.csv", "data.format=pairs"], "quote.csv: cannot be read as csv (ParserError"),
        (["data.dataset={tmp}/bad.parquet"], "bad.parquet: cannot be read as parquet (ArrowInvalid"),
        (["data.dataset={tmp}/surrogate.jsonl"], "surrogate.jsonl:1: not valid text: a lone surrogate in field"),
        (["train.logging_dir={tmp}/a_file"], "train.logging_dir={tmp}/a_file: {tmp}/a_file is a file"),
    ],
    ids=[
        "lr",
        "beta",
        "warmup",
        "header-csv",
        "latin1-csv",
        "out-file",
        "out-under-file",
        "no-checkpoint",
        "dangling-out",
        "open-quote-csv",
        "bad-parquet",
        "surrogate",
        "logging-dir-file",
    ],
)
def test_start_up_failures_are_one_line(tmp_path, overrides, message):
    (tmp_path / "header.csv").write_text("prompt,chosen,rejected\n")
    (tmp_path / "latin1.csv").write_bytes(b"prompt,chosen,rejected\ncaf\xe9,a,b\n")
    (tmp_path / "a_file").write_text("not a directory")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "quote.csv").write_text('prompt,chosen,rejected\n"unterminated,a,b\nx,y,z\n')
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not a parquet file")
    record = json.loads((ROOT / "data" / "demo_safety_train.jsonl").read_text().splitlines()[0])
    record["prompt"] = "\ud800 " + record["prompt"]  # JSON allows a lone surrogate; UTF-8 cannot encode it
    (tmp_path / "surrogate.jsonl").write_text(json.dumps(record) + "\n")
    overrides = [o.format(tmp=tmp_path) for o in overrides]
    out = [o.split("=", 1)[1] for o in overrides if o.startswith("train.output_dir=")]
    err = fails(out[0] if out else tmp_path / "o", *RUN, *overrides)
    assert message.format(tmp=tmp_path) in err, err[-2000:]


def test_an_output_directory_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    """As root (CI) a read-only directory is writable all the same, so the check is exercised through os.access."""
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
    with pytest.raises(ConfigError, match=f"train.output_dir={tmp_path}/run: {tmp_path} is not writable"):
        check_output_dir(tmp_path / "run")
    check_output_dir(tmp_path.parent / "elsewhere")
