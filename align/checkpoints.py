"""A run's checkpoints: what each one records, how it is verified, which one a resume takes, and what may change.

A checkpoint is written to ``checkpoint-N.tmp``; when every rank's files are there, the main process writes
``manifest.json`` (every file with its size and sha256) and ``trainer_state.json`` (the step, the data position, the
settings that decide the trajectory, the batch geometry), then renames the folder to ``checkpoint-N``
(:func:`save_checkpoint`). A
resume verifies a checkpoint before it reads it: the state file parses, every file of the manifest is there
with its size and its sha256 (hashed only for the checkpoint a resume takes, and the damaged newer ones it
passes over), every safetensors file's header and length agree and every torch file is a whole zip archive.
A run's ``final/`` is written the same way (``final.tmp`` with a manifest, renamed; :func:`verify_final`).
``latest`` takes the newest checkpoint that verifies and names the damaged ones it passed over.

The settings that decide the trajectory are every key of the config except those whose field declares
``trajectory=False`` (``align.config.opt``: how fast, where and how loudly it runs, and the behaviour check,
which only samples).
The batch geometry (per-device batch, world size, accumulation) is compared as what the data order depends
on: the global batch and the examples each epoch uses. How a launch decides to resume: ``align.resume``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zipfile
from pathlib import Path

from align.config import keys_with
from align.errors import CheckpointError  # noqa: F401 (re-exported)

MANIFEST = "manifest.json"
STATE = "trainer_state.json"

GEOMETRY_KEYS = ("train.per_device_train_batch_size", "train.gradient_accumulation_steps")


def trajectory_settings(cfg, precision: str | None) -> dict:
    """The dotted settings of config ``cfg`` that decide the trajectory: every key but those whose field declares
    ``trajectory=False`` (``align.config.opt``: where, how fast and how loudly a run goes, and the behaviour check,
    which only samples); a key added without a role is compared. ``precision``: the effective mixed precision."""
    skip = keys_with(cfg, "trajectory", False)
    settings = {k: v for k, v in flat_settings(cfg.to_dict()).items() if k not in skip}
    settings.pop("train.mixed_precision", None)  # the setting (null: the launcher's) is not what ran: ``precision`` is
    if precision is not None:
        settings["train.mixed_precision"] = precision
    return settings


def flat_settings(tree: dict, prefix: str = "") -> dict:
    """{section: {key: v}} -> {'section.key': v}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_settings(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_settings(old: dict, new: dict) -> dict[str, tuple]:
    """{key: (old, new)} of the keys present in both whose values differ (a key one side lacks is not compared:
    a setting added to align since the checkpoint was written)."""
    return {k: (old[k], new[k]) for k in sorted(old.keys() & new.keys()) if old[k] != new[k]}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """``manifest.json``: every file under ``directory`` (but the manifest and the state file) with its size and
    sha256."""
    paths = [p for p in sorted(directory.rglob("*")) if p.is_file() and p.name not in (MANIFEST, STATE)]
    files = {str(p.relative_to(directory)): p.stat().st_size for p in paths}
    digests = {str(p.relative_to(directory)): file_sha256(p) for p in paths}
    (directory / MANIFEST).write_text(json.dumps({"files": files, "sha256": digests}, indent=1) + "\n")


def check_manifest(directory: Path) -> None:
    """Every file the manifest lists is there with its size and (where recorded) its sha256; a manifest of an
    unexpected shape is damaged. CheckpointError naming the first bad file."""
    manifest = directory / MANIFEST
    try:
        record = json.loads(manifest.read_text())
        files, digests = record["files"], record.get("sha256", {})
        if not (isinstance(files, dict) and isinstance(digests, dict)):
            raise TypeError("files and sha256 must be objects")
        files = {str(name): int(size) for name, size in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{manifest} is damaged ({type(e).__name__}: {e})") from None
    for name, size in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (the manifest lists it)")
        if path.stat().st_size != size:
            raise CheckpointError(
                f"{path} has {path.stat().st_size} bytes, the manifest says {size} (truncated or overwritten)"
            )
    for name, digest in digests.items():
        if name in files and file_sha256(directory / name) != digest:
            raise CheckpointError(
                f"{directory / name} has its recorded size but not its recorded content (sha256 differs): corrupted"
            )


def verify_final(directory: Path) -> str | None:
    """Why a run's ``final/`` does not verify (None when it does): written with a manifest, every file whole."""
    directory = Path(directory)
    if not directory.is_dir():
        return f"{directory} does not exist"
    if not (directory / MANIFEST).exists():
        return f"{directory} has no {MANIFEST} (its save did not finish, or an align older than manifests wrote it)"
    try:
        check_manifest(directory)
    except CheckpointError as e:
        return str(e)
    return None


def _check_safetensors(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "shorter than a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"its header says {n} bytes but the file has {size - 8} after the length"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "its safetensors header is not valid JSON"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"{size} bytes, but its header describes {8 + n + end} (truncated or overwritten)"
    return None


def _check_zip(path: Path) -> str | None:
    with open(path, "rb") as f:
        if f.read(2) != b"PK":  # not a torch zip archive (a text file, a legacy pickle): nothing to check
            return None
    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        return f"not a whole torch archive ({e})"
    return None


def verify_checkpoint(directory: Path) -> dict:
    """The checkpoint's ``trainer_state.json``, after checking every file (see the module doc); a damaged
    checkpoint raises :class:`CheckpointError` naming the first bad file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist")
    state_file = directory / STATE
    if not state_file.exists():
        raise CheckpointError(f"{directory} is not a complete checkpoint (no {STATE})")
    try:
        state = json.loads(state_file.read_text())
        int(state["global_step"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{state_file} is damaged ({e})") from None
    manifest = directory / MANIFEST
    if not manifest.exists() and "geometry" in state:  # written with a manifest (an older align wrote none)
        raise CheckpointError(f"{manifest} is missing (the checkpoint was written with one)")
    if manifest.exists():
        check_manifest(directory)
    tensors = 0
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        problem = None
        if path.suffix == ".safetensors":
            problem, tensors = _check_safetensors(path), tensors + 1
        elif path.suffix in (".bin", ".pt", ".pth", ".pkl"):
            problem, tensors = _check_zip(path), tensors + 1
        if problem:
            raise CheckpointError(f"{path} is damaged: {problem}")
    if not tensors:
        raise CheckpointError(f"{directory} holds no weight or optimizer files")
    return state


def recorded_config(path: Path) -> dict | None:
    """The config a checkpoint was trained with: recorded in its trainer_state.json (the run's config.yaml beside
    it for checkpoints of an older align, which recorded none); None when ``path`` is not a checkpoint."""
    path = Path(path)
    if not (path / STATE).exists():
        return None
    recorded = json.loads((path / STATE).read_text()).get("config")
    if recorded is not None:
        return recorded
    if not (path.parent / "config.yaml").exists():
        return None
    import yaml

    return yaml.safe_load((path.parent / "config.yaml").read_text())


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint, its state file first: a deletion cut short leaves a folder no resume takes."""
    (Path(path) / STATE).unlink(missing_ok=True)
    shutil.rmtree(path)


def complete_checkpoints(out: Path) -> list[Path]:
    """``checkpoint-N`` folders with a state file (never ``.tmp`` ones), oldest first."""
    found = [
        p
        for p in Path(out).glob("checkpoint-*")
        if p.is_dir() and p.name.split("-", 1)[1].isdigit() and (p / STATE).exists()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def trajectory_of(checkpoint: Path) -> str | None:
    """The run (trajectory id) a checkpoint belongs to; None when it records none (older align) or is unreadable."""
    try:
        return json.loads((Path(checkpoint) / STATE).read_text()).get("trajectory")
    except (OSError, ValueError, AttributeError):
        return None


def latest_verified(out: Path) -> tuple[Path | None, dict | None, list[str]]:
    """(the newest checkpoint that verifies or None, its trainer_state, the reasons of the newer ones passed over)."""
    passed = []
    for path in reversed(complete_checkpoints(out)):
        try:
            return path, verify_checkpoint(path), passed
        except CheckpointError as e:
            passed.append(str(e))
    return None, None, passed


def save_checkpoint(
    acc, out: Path, step: int, state: dict, *, exclude_frozen: bool, keep: int | None, extra=None
) -> Path:
    """Write ``out/checkpoint-<step>`` from every rank: ``accelerator.save_state`` into ``checkpoint-<step>.tmp``,
    then (main process) the manifest, ``trainer_state.json`` = ``state`` and the atomic rename; the oldest
    complete checkpoints beyond ``keep`` (``train.save_total_limit``) are deleted, state file first.
    ``exclude_frozen``: LoRA under DeepSpeed, whose engine saves the module itself (accelerate's save hooks,
    which keep only the adapter, do not run there). ``extra(directory)``: the objective's own files (every rank)."""
    final, tmp = out / f"checkpoint-{step}", out / f"checkpoint-{step}.tmp"
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    acc.save_state(str(tmp), **({"exclude_frozen_parameters": True} if exclude_frozen else {}))
    if extra is not None:
        extra(tmp)
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_manifest(tmp)  # every rank's files, with their sizes: a resume verifies them
        (tmp / STATE).write_text(json.dumps(state, default=str))
        if final.exists():
            remove_checkpoint(final)
        tmp.rename(final)  # atomic: a checkpoint without trainer_state.json or named .tmp is never resumed
        if keep:  # this run's checkpoints only: a checkpoint of another trajectory is never counted or removed
            ours = [p for p in complete_checkpoints(out) if trajectory_of(p) in (None, state.get("trajectory"))]
            for old in ours[:-keep]:
                remove_checkpoint(old)
    acc.wait_for_everyone()
    return final


def keep_only(names: set[str]):
    """An accelerate save-state hook that keeps only ``names`` in each saved state dict (a LoRA checkpoint holds
    the adapter; the frozen base comes from ``model.name_or_path`` on resume)."""

    def hook(models, weights, output_dir):
        for w in weights:
            kept = {k: v for k, v in w.items() if k.removeprefix("module.") in names}
            w.clear()
            w.update(kept)

    return hook
