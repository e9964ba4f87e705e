"""Fault injection for tests/test_runs.py: ``align.train_dpo`` with a SIGKILL planted in the save of one checkpoint.

    python tests/fault_run.py POINT STEP [key=value ...]

POINT, in the save of ``checkpoint-STEP``:
- ``mid-write``: ``optimizer.bin`` in ``checkpoint-STEP.tmp`` is half written when the process dies;
- ``before-rename``: every file, the manifest and the state are in ``checkpoint-STEP.tmp``, not yet renamed;
- ``mid-cleanup``: ``checkpoint-STEP`` is complete; the process dies while deleting an older checkpoint
  (``train.save_total_limit``), half of whose files are gone;
- ``final-before-rename``: the final save is whole in ``final.tmp``, not yet renamed to ``final`` (STEP unused);
- ``mid-cut``: a resume dies right after cutting its first step log back to the checkpoint (STEP unused);
- ``sigterm-in-eval``: SIGTERM arrives while the evaluation at step STEP runs (0: the baseline before training).
SIGKILL: no handler runs, nothing is flushed; as a node failure or the OOM killer.
"""

import io
import os
import shutil
import signal
import sys
from pathlib import Path

import torch

point, step = sys.argv[1], int(sys.argv[2])
tmp = f"checkpoint-{step}.tmp"


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if point == "mid-write":
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, Path)) and tmp in str(f) and str(f).endswith("optimizer.bin"):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            die()
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
elif point in ("before-rename", "final-before-rename"):
    real_rename = Path.rename
    name = tmp if point == "before-rename" else "final.tmp"

    def rename(self, target):
        if self.name == name:
            die()
        return real_rename(self, target)

    Path.rename = rename
elif point == "mid-cleanup":
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        path = Path(path)
        if (path.parent / f"checkpoint-{step}").is_dir() and not path.name.endswith(".tmp"):
            files = sorted(f for f in path.rglob("*") if f.is_file())
            for f in files[: len(files) // 2 + 1]:
                f.unlink()
            die()
        return real_rmtree(path, *args, **kwargs)

    shutil.rmtree = rmtree
elif point == "mid-cut":
    import align.resume

    real_cut = align.resume.cut_log

    def cut_log(path, cut):
        real_cut(path, cut)
        die()

    align.resume.cut_log = cut_log
elif point == "sigterm-in-eval":
    from align.trainer import Trainer

    real_evaluate = Trainer.evaluate

    def evaluate(self, *args, **kwargs):
        if self.global_step == step:
            os.kill(os.getpid(), signal.SIGTERM)  # its handler sets a flag; the evaluation goes on to its end
        return real_evaluate(self, *args, **kwargs)

    Trainer.evaluate = evaluate
else:
    raise SystemExit(f"unknown fault point {point!r}")

from align.train_dpo import main  # noqa: E402

main(sys.argv[3:])
