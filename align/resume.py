"""How a launch starts: a new run, an overwrite, or a resume, decided before anything is written.

:func:`plan_start` claims the output directory (refusing another run's directory unless told to overwrite,
``latest`` in a directory with no checkpoint that verifies, a damaged checkpoint named explicitly);
:func:`check_resume` compares the checkpoint's recorded settings and batch geometry with this launch's and finds
the data position to continue from; :func:`load_checkpoint` reads model, optimizer, schedule and random states
into memory; :func:`write_start` does every write of a start (an overwrite's deletions, ``config.yaml`` or
``resumes.jsonl``, ``eval_ids.json``, step logs cut back to the checkpoint's step) once every check has passed.
How a checkpoint is written and verified: ``align.checkpoints``. Exercised by ``tests/test_runs.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from align.checkpoints import (
    GEOMETRY_KEYS,
    CheckpointError,
    changed_settings,
    complete_checkpoints,
    flat_settings,
    latest_verified,
    trajectory_of,
    verify_checkpoint,
)
from align.config import ConfigError, dump_config
from align.runlock import check_output_dir

RUN_FILES = (
    "metrics.jsonl",
    "config.yaml",
    "eval_ids.json",
    "behaviour.jsonl",
    "eval_examples.jsonl",
    "final",
    "final.tmp",
    "runs",
    "ref_logps",
    "resumes.jsonl",
    "online_samples.jsonl",
    "abandoned",
)
BESIDE_A_RUN = ("train.log", "ablate_status.json")  # what align.ablate writes into a cell's directory
STEP_LOGS = (
    "metrics.jsonl",
    "eval_examples.jsonl",
    "behaviour.jsonl",
    "online_samples.jsonl",
)  # records keyed by step, cut on resume


@dataclass
class StartPlan:
    """How this launch starts. ``remove``: run files an overwrite deletes; ``notes``: what to say at the start."""

    mode: str = "new"  # new | overwrite | resume
    checkpoint: Path | None = None
    state: dict | None = None  # the checkpoint's trainer_state.json
    remove: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cuts: dict = field(default_factory=dict)  # a resume's step logs: {name: (cut, note)} (plan_log_cut)
    abandon: list[str] = field(default_factory=list)  # later checkpoints of the trajectory a resume leaves
    trajectory: str = ""  # the id every checkpoint of this run records (a resume keeps the checkpoint's)


@dataclass
class Resumed:
    """Where a resume continues: the step, the global micro-step of the data order, the policy tokens so far,
    and the settings named in ``train.resume_changes`` that changed ({key: (old, new)})."""

    global_step: int
    start_micro: int
    policy_tokens: int
    changes: dict
    recorded: dict = field(default_factory=dict)  # changes that cannot change the trajectory: allowed, recorded


def resume_position(state: dict, *, micro_global: int, micro_per_epoch: int, accumulation: int) -> tuple[int, str]:
    """(the global micro-step to continue from under the current batch geometry, a note when it was mapped).

    The checkpoint records its micro-step and the geometry it counted in; its data position is (epoch, examples
    into the epoch's order). Under another geometry that position is a whole number of the new micro-batches or
    the resume is refused; an epoch that is now shorter than the position goes on with the next epoch.
    """
    geometry = state.get("geometry")
    if geometry is None:  # written before checkpoints recorded their geometry: the step counts micro-steps alike
        return state["global_step"] * accumulation, ""
    old_micro, old_global, old_per_epoch = (
        geometry["micro_consumed"],
        geometry["micro_global"],
        geometry["micro_per_epoch"],
    )
    if (old_global, old_per_epoch) == (micro_global, micro_per_epoch):
        return old_micro, ""
    epoch, offset = divmod(old_micro, old_per_epoch)
    offset *= old_global  # examples into the epoch's order
    if offset >= micro_per_epoch * micro_global:
        return (epoch + 1) * micro_per_epoch, (
            f"data position: epoch {epoch} uses {micro_per_epoch * micro_global} "
            f"examples under the new batch geometry, {offset} were already seen; "
            f"continuing with epoch {epoch + 1}"
        )
    if offset % micro_global:
        raise CheckpointError(
            f"the checkpoint stands {offset} examples into epoch {epoch}, which is not a whole "
            f"number of the new global micro-batches of {micro_global}"
        )
    return epoch * micro_per_epoch + offset // micro_global, (
        f"data position: epoch {epoch}, {offset} examples in, under the new batch geometry"
    )


def plan_start(t, out: Path) -> StartPlan:
    """Decide how the launch with train settings ``t`` starts in ``out``, reading only. Refuses (ConfigError /
    CheckpointError, one line) an output directory that is a file or not writable, a new run into another run's
    directory, ``latest`` in a directory that holds a run but no checkpoint that verifies, and a damaged
    explicit checkpoint."""
    check_output_dir(out)
    found = []
    if out.is_dir():
        found = sorted(
            p.name for p in out.iterdir() if p.name in RUN_FILES or re.fullmatch(r"checkpoint-\d+(\.tmp)?", p.name)
        )
    plan = StartPlan()
    which = t.resume_from_checkpoint
    if which == "latest":
        mixed = sorted({trajectory_of(p) for p in complete_checkpoints(out)} - {None}) if out.is_dir() else []
        if len(mixed) > 1:
            raise CheckpointError(
                f"train.resume_from_checkpoint=latest: the checkpoints in {out} belong to {len(mixed)} runs "
                f"(trajectories {', '.join(m[:8] for m in mixed)}): name the one to resume"
            )
        path, state, passed = latest_verified(out) if out.is_dir() else (None, None, [])
        plan.notes += [f"passed over a damaged checkpoint: {reason}" for reason in passed]
        if path is not None:
            plan.mode, plan.checkpoint, plan.state = "resume", path, state
            plan.trajectory = state.get("trajectory") or uuid.uuid4().hex
            return plan
        if passed:
            raise CheckpointError(
                f"train.resume_from_checkpoint=latest: no checkpoint in {out} verifies: " + "; ".join(passed)
            )
        if not found:
            plan.notes.append(f"no checkpoint in {out} yet; starting from scratch")
            plan.trajectory = uuid.uuid4().hex
            return plan
        # a run's files but no checkpoint: refused whatever train.overwrite_output_dir says (latest never deletes)
        what = "a finished run (final/)" if "final" in found else "a run"
        raise CheckpointError(
            f"train.resume_from_checkpoint=latest: train.output_dir={out} holds {what} "
            f"({', '.join(found[:4])}{' ...' if len(found) > 4 else ''}) and no complete checkpoint to resume "
            f"from; latest never deletes a run: start it again without resume_from_checkpoint and with "
            f"train.overwrite_output_dir=true, or choose another train.output_dir"
        )
    elif which:
        plan.mode, plan.checkpoint = "resume", Path(which)
        plan.state = verify_checkpoint(plan.checkpoint)
        own = complete_checkpoints(out) if out.is_dir() else []
        step = int(plan.state["global_step"])
        if plan.checkpoint.resolve().parent != out.resolve() and found:
            ours = {trajectory_of(p) for p in own} - {None}
            if not ours or plan.state.get("trajectory") not in ours:
                raise CheckpointError(
                    f"train.resume_from_checkpoint={which} is another run's checkpoint and "
                    f"train.output_dir={out} holds a run of its own ({', '.join(found[:4])}"
                    f"{' ...' if len(found) > 4 else ''}): one trajectory per directory; resume it into its own "
                    f"directory or into an empty one"
                )
        # an older checkpoint: the later ones belong to the trajectory this resume abandons (moved aside, named)
        plan.abandon = [p.name for p in own if int(p.name.split("-")[1]) > step]
        plan.trajectory = plan.state.get("trajectory") or uuid.uuid4().hex
        return plan
    plan.trajectory = uuid.uuid4().hex
    if found:
        if not t.overwrite_output_dir:
            raise ConfigError(
                f"train.output_dir={out} already holds a run ({', '.join(found[:4])}"
                f"{' ...' if len(found) > 4 else ''}): continue it with "
                f"train.resume_from_checkpoint=latest, choose another train.output_dir, or set "
                f"train.overwrite_output_dir=true to replace it"
            )
        # overwrite removes only a run's own files, and only from a directory that is a run's (its config.yaml)
        others = sorted(p.name for p in out.iterdir() if p.name not in found and p.name not in BESIDE_A_RUN)
        if "config.yaml" not in found or others:
            why = f"files that are not a run's ({', '.join(others[:4])}{' ...' if len(others) > 4 else ''})"
            raise ConfigError(
                f"train.overwrite_output_dir=true: {out} holds "
                + (why if others else f"{', '.join(found[:4])} but no config.yaml (not an align run's directory)")
                + ": overwrite removes only a run's own files; move the others or choose another train.output_dir"
            )
        plan.mode, plan.remove = "overwrite", found
    return plan


# keys outside the trajectory whose changes a resume says and records (the rest are where and how fast it runs)
RECORDED_KEYS = {
    "train.push_to_hub",
    "train.hub_model_id",
    "train.hub_private_repo",
    "train.hub_strategy",
    "data.max_eval_examples",
    "train.eval_steps",
    "train.do_eval",
    "train.save_steps",
    "train.save_total_limit",
    "train.logging_steps",
    "train.report_to",
    "train.run_name",
}


# what a content fingerprint stands for in messages and train.resume_changes, and the path keys it makes moot
FINGERPRINTS = {
    "data": ("data.dataset", "the training data as encoded"),
    "eval_data": ("data.eval_dataset", "the held-out data as encoded"),
    "model": ("model.name_or_path", "the base model's weights"),
}


def check_resume(
    plan: StartPlan,
    *,
    t,
    settings: dict,
    geometry: dict,
    deepspeed: bool,
    unit: str,
    fingerprints: dict | None = None,
    cfg_dict: dict | None = None,
) -> Resumed:
    """Refuse a resume whose trajectory settings differ from the checkpoint's (unless named in
    ``train.resume_changes``), and find where in the data it continues; reads the checkpoint's records only.

    ``settings``: this launch's trajectory settings; ``geometry``: its ``world``, ``per_device``, ``accumulation``,
    ``micro_global`` and ``micro_per_epoch``. Notes for the start go to ``plan.notes``.
    """
    path, state = plan.checkpoint, plan.state
    old = state.get("settings")
    if old is None:  # written by an align that did not record settings: its run's config.yaml, if any
        config = path.parent / "config.yaml"
        if config.exists():
            recorded = flat_settings(yaml.safe_load(config.read_text()) or {})
            old = {k: v for k, v in recorded.items() if k in settings and k != "train.mixed_precision"}
            plan.notes.append(f"{path} records no settings (older align): compared with {config}")
        else:
            old = {}
            plan.notes.append(f"{path} records no settings (older align): not verified")
    changes = changed_settings(old, settings)
    recorded = state.get("fingerprints") or {}
    content = {}  # fingerprint name -> (old, new): content that changed, whatever its path says
    for name, (key, what) in FINGERPRINTS.items():
        if name not in recorded or fingerprints is None:
            continue
        if recorded[name] != fingerprints.get(name):
            where = settings.get(key, old.get(key))
            content[name] = (f"{what} {recorded[name]}", f"{fingerprints.get(name)} ({key}={where})")
        elif key in changes:  # the same content under another path or hub id: allowed, and said
            a, b = changes.pop(key)
            plan.notes.append(f"{key}: {a} -> {b} (the same content: {recorded[name]})")
    # the held-out data's content cannot change the trajectory: allowed and recorded (below), never refused
    recorded = {"eval_data": content.pop("eval_data")} if "eval_data" in content else {}
    changes = {**content, **changes}
    was_geometry, now = state.get("geometry"), geometry
    if was_geometry is not None:
        g = was_geometry
        was = (g["micro_global"] * g["accumulation"], g["micro_global"] * g["micro_per_epoch"])
        new = (now["micro_global"] * now["accumulation"], now["micro_global"] * now["micro_per_epoch"])
        # a grown or shrunk data file changes the epoch's length: named as the data, not as the batch geometry
        if was != new and not (was[0] == new[0] and "data" in content):
            changes["global batch"] = (
                f"{was[0]} {unit}, {was[1]} an epoch (world {g['world']} x {g['per_device']} per "
                f"device x {g['accumulation']} accumulation)",
                f"{new[0]} {unit}, {new[1]} an epoch (world {now['world']} x {now['per_device']} x "
                f"{now['accumulation']})",
            )
        if g["world"] != now["world"]:
            if deepspeed or g["deepspeed"]:
                raise CheckpointError(
                    f"{path} was written by {g['world']} DeepSpeed ranks; it resumes on "
                    f"{g['world']} (DeepSpeed keeps each rank's optimizer partition), "
                    f"not {now['world']}"
                )
            plan.notes.append(f"world size {g['world']} -> {now['world']}, same global batch and data order")
    named = set(t.resume_changes or [])
    allowed = named | ({"global batch"} if set(GEOMETRY_KEYS) & named else set())
    refused = {k: v for k, v in changes.items() if k not in allowed}
    if refused:
        listed = "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in refused.items())
        raise ConfigError(
            f"resuming from {path} with settings that decide the trajectory changed: {listed}. Resume "
            f"with the checkpoint's settings, or name the keys you mean to change in "
            f"train.resume_changes=[key,...] (recorded in resumes.jsonl)"
        )
    try:
        start_micro, note = resume_position(
            state,
            micro_global=now["micro_global"],
            micro_per_epoch=now["micro_per_epoch"],
            accumulation=now["accumulation"],
        )
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if note:
        plan.notes.append(note)
    # the step logs' cuts, planned now (a damaged log refused before anything is written)
    plan.cuts = {name: plan_log_cut(Path(t.output_dir) / name, int(state["global_step"])) for name in STEP_LOGS}
    # what cannot change the trajectory but changed (hub ids, held-out limits, logging; the held-out data's
    # content): allowed, said and recorded in resumes.jsonl
    if isinstance(state.get("config"), dict) and cfg_dict is not None:
        before, now = flat_settings(state["config"]), flat_settings(cfg_dict)
        for key in sorted(RECORDED_KEYS):
            if key in before and key in now and before[key] != now[key]:
                recorded[key] = (before[key], now[key])
    for key, (a, b) in recorded.items():
        plan.notes.append(f"{key} changed: {a} -> {b} (it cannot change the trajectory: allowed, recorded)")
    return Resumed(int(state["global_step"]), start_micro, int(state.get("policy_tokens", 0)), changes, recorded)


def load_checkpoint(acc, path: Path, *, deepspeed: bool, changes: dict, t, optimizer, scheduler) -> None:
    """The checkpoint's model, optimizer, schedule and random states, into memory (nothing is written); the
    optimizer settings named as changed (``train.resume_changes``) then replace the saved ones."""
    # LoRA checkpoints hold the adapter only: the frozen base comes from name_or_path
    strict = {"load_module_strict": False} if deepspeed else {"strict": False}
    try:
        acc.load_state(str(path), **strict)
    except Exception as e:  # e.g. an adapter of another shape named in train.resume_changes
        if os.environ.get("ALIGN_DEBUG"):
            raise
        raise CheckpointError(
            f"cannot load {path} into this model and optimizer: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if set(changes) & {"train.learning_rate", "train.weight_decay", "train.adam_beta1", "train.adam_beta2"}:
        for group in optimizer.param_groups:
            group.update(initial_lr=t.learning_rate, weight_decay=t.weight_decay, betas=(t.adam_beta1, t.adam_beta2))
        scheduler.base_lrs = [t.learning_rate] * len(scheduler.base_lrs)
        for group, fn in zip(optimizer.param_groups, scheduler.lr_lambdas):
            group["lr"] = t.learning_rate * fn(scheduler.last_epoch)


def write_start(
    acc, out: Path, plan: StartPlan, *, cfg, resumed: Resumed | None, world: int, eval_ids: dict | None
) -> None:
    """Everything a start writes, after every check has passed: an overwrite's deletions, config.yaml (a new run's;
    a resume never rewrites it and records itself in resumes.jsonl), eval_ids.json, the step logs cut back to the
    checkpoint's step. Main process only; every rank waits for it."""
    if acc.is_main_process:
        for name in plan.remove:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if plan.remove:
            acc.print(f"overwrite: removed the earlier run's {', '.join(plan.remove)} from {out}")
        out.mkdir(parents=True, exist_ok=True)
        if plan.mode == "resume" and plan.abandon:
            aside = out / "abandoned" / f"after-step-{plan.state['global_step']}-{time.strftime('%Y%m%d-%H%M%S')}"
            aside.mkdir(parents=True)
            for name in plan.abandon:
                os.replace(out / name, aside / name)
            acc.print(
                f"resuming from an older checkpoint: {', '.join(plan.abandon)} (the abandoned trajectory's) moved "
                f"to {aside}"
            )
        if plan.mode == "resume":
            if not (out / "config.yaml").exists():  # a checkpoint copied into a new directory
                (out / "config.yaml").write_text(
                    yaml.safe_dump(plan.state.get("config") or cfg.to_dict(), sort_keys=False)
                )
            with open(out / "resumes.jsonl", "a") as f:
                f.write(
                    json.dumps(
                        {
                            "step": resumed.global_step,
                            "checkpoint": str(plan.checkpoint),
                            "world": world,
                            "changed": {k: list(v) for k, v in resumed.changes.items()},
                            "recorded": {k: list(v) for k, v in resumed.recorded.items()},
                        },
                        default=str,
                    )
                    + "\n"
                )
            for name, (cut, note) in plan.cuts.items():
                if cut is not None:
                    cut_log(out / name, cut)
                if note:
                    acc.print(note)
        else:
            dump_config(cfg, out / "config.yaml")
        if eval_ids is not None and not (plan.mode == "resume" and (out / "eval_ids.json").exists()):
            (out / "eval_ids.json").write_text(json.dumps(eval_ids))
    acc.wait_for_everyone()


def plan_log_cut(path: Path, step: int) -> tuple[int | bytes | None, str | None]:
    """How to cut a step log so that it keeps the records up to ``step`` (a resumed run logs what came after the
    checkpoint again), reading only: ``(cut, note)``. ``cut`` is the byte offset to truncate at (the records are
    in step order, so the kept ones are a prefix), the kept bytes when they are not a prefix (written to a new
    file and renamed into place), or None when nothing is to cut. A torn last line (no newline, or not JSON:
    the process died while appending it) is cut and named in ``note``; a line that is not a record anywhere
    else is refused (CheckpointError naming the file and line)."""
    if not path.exists():
        return None, None
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the file ends with a newline
    offset, kept, prefix, dropped, note, position = 0, [], True, False, None, 0
    for number, line in enumerate(lines, 1):
        end = position + len(line) + 1
        try:
            record_step = int(json.loads(line)["step"]) if line.strip() else None
            whole = end <= len(data)
        except (ValueError, KeyError, TypeError):
            record_step, whole = None, False
        if not whole or (record_step is None and line.strip()):
            if number < len(lines):
                raise CheckpointError(
                    f"{path}: line {number} is not a step record ({line[:60]!r}); the log is damaged: repair "
                    f"or remove it to resume"
                )
            note = f"{path.name}: a torn last line ({len(line)} bytes, written by a process that died) was cut"
            break
        if record_step is not None and record_step <= step:
            kept.append(line)
            prefix = prefix and not dropped
            if prefix:
                offset = end
        elif record_step is not None:
            dropped = True
        position = end
    if prefix or not kept:
        return (None, note) if offset == len(data) else (offset, note)
    return b"".join(line + b"\n" for line in kept), note


def cut_log(path: Path, cut: int | bytes) -> None:
    """Cut ``path`` at a byte offset in place (one truncate: the records before it are never rewritten), or
    replace it by the kept bytes through a new file renamed into place (never half written)."""
    if isinstance(cut, int):
        os.truncate(path, cut)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(cut)
    os.replace(tmp, path)
