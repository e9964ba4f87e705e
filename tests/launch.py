"""Run ``python -m align.<entry> ...`` for a test as a fresh process, without paying the imports every time.

A run is a separate process, as a real launch is (accelerate keeps process-wide state), but most of a short
run's time on 2 cores went into importing torch, transformers, peft and accelerate (~8 s). So one *zygote*
process per test worker imports them once and forks a child for each run: the child starts with those modules
loaded and nothing else done (the zygote never runs a tensor op, creates no thread pool, no accelerator, no
process group), sets the run's environment, directory and argv, and runs the module as ``python -m`` would.
Exit code, stdout and stderr come back as from ``subprocess.run``.

Used for single-process runs of ``python -m align...`` (and ``python -c``) with the tests' own environment;
anything else (launchers, other environments, signals sent by a test) runs as a plain subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_ZYGOTE_CODE = r"""
import json, os, sys
import torch, transformers, accelerate, peft  # noqa: F401  (what every run imports; no op is run here)
# the entry points' dependencies, not the entry modules themselves (runpy runs those as __main__)
import align.cli, align.trainer, align.dpo, align.sft, align.estimators, align.grid_report  # noqa: F401

for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:  # the run
        import logging, runpy
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(job["env"])
        out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        code = 0
        try:
            if job["argv"][0] == "-m":
                sys.argv = [job["argv"][1], *job["argv"][2:]]
                runpy.run_module(job["argv"][1], run_name="__main__", alter_sys=True)
            else:  # -c CODE args...
                sys.argv = ["-c", *job["argv"][2:]]
                exec(compile(job["argv"][1], "<string>", "exec"), {"__name__": "__main__"})
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        try:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Zygote:
    def __init__(self, env: dict):
        self.env = dict(env)
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE_CODE], cwd=ROOT, env=self.env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
        with self.lock, tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            job = {"argv": argv, "cwd": str(cwd), "env": self.env, "stdout": str(out), "stderr": str(err)}
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            pid = json.loads(self.proc.stdout.readline())["pid"]
            result: dict = {}
            reader = threading.Thread(target=lambda: result.update(json.loads(self.proc.stdout.readline())))
            reader.start()
            reader.join(timeout)
            if reader.is_alive():
                os.kill(pid, 9)
                reader.join()
                raise subprocess.TimeoutExpired(argv, timeout)
            return subprocess.CompletedProcess(argv, result["code"], out.read_text(errors="replace"),
                                               err.read_text(errors="replace"))


_zygotes: dict[str, Zygote] = {}
MAX_ZYGOTES = 2  # the tests' two environments (tests/test_trainer.py's, tests/test_ablate.py's)


def run_python(args: list, *, env: dict, cwd=ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    """``subprocess.run(args, capture_output=True, text=True)``, forked from a warm zygote when ``args`` is
    ``python -m MODULE ...`` or ``python -c CODE ...`` (see the module doc)."""
    args = [str(a) for a in args]
    warm = len(args) >= 3 and args[0] == sys.executable and (args[1] == "-c" or (args[1] == "-m" and args[2].startswith("align.")))
    if os.environ.get("ALIGN_TESTS_NO_ZYGOTE") or not warm:
        return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    key = json.dumps(env, sort_keys=True)
    zygote = _zygotes.get(key)
    if zygote is None and len(_zygotes) >= MAX_ZYGOTES:  # an environment of its own: not worth a warm process
        return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if zygote is None or not zygote.alive():
        zygote = _zygotes[key] = Zygote(env)
    return zygote.run(args[1:], Path(cwd), timeout)
