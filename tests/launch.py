"""Start the tests' runs (``python -m align...``, launchers, scripts) without paying the imports every time.

Every run is a process of its own, as a real launch is (accelerate keeps process-wide state), but most of a
short run's time on 2 cores went into importing torch, transformers, peft and accelerate (~4.4 s a process,
~250 processes a suite). So each test worker keeps one warm server per environment (tests/warm.py) and
:func:`run_python` starts ``python ...`` through its client: the run is forked from a process that has imported
those and done nothing else. The environment handed to the run also names the server to the run's own
children: ``PYTHON_EXEC`` (torchrun starts its workers with it, and so does ``align.ablate`` its cells) is a
wrapper of the client, so the ranks of a two-rank launch start warm too, through the launcher's real code path.

``ALIGN_TESTS_COLD=1`` runs everything as plain subprocesses (the same tests, each run paying its imports).
"""

from __future__ import annotations

import atexit
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENT = Path(__file__).resolve().parent / "warm.py"
# read by the run, never at import (PYTHONPATH: the run's sys.path is set from it, tests/warm.py), so one server
# serves all their values
RUNTIME_ONLY = ("DIST_CHECK_", "DS_ACCELERATOR", "PYTHONPATH")


class Server:
    def __init__(self, env: dict):
        self.dir = tempfile.mkdtemp(prefix="align-warm-")
        self.socket = os.path.join(self.dir, "socket")
        self.python = os.path.join(self.dir, "python")  # PYTHON_EXEC for launchers: a python that starts warm
        Path(self.python).write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(CLIENT))} "$@"\n')
        os.chmod(self.python, 0o755)
        cpu_log = []  # tests/conftest.py: per-worker file of the warm runs' CPU
        if os.environ.get("ALIGN_TESTS_CPU_LOG"):
            cpu_log = [f"{os.environ['ALIGN_TESTS_CPU_LOG']}.{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.runs"]
        self.log = open(os.path.join(self.dir, "server.log"), "w")  # the server's own errors, if any
        self.proc = subprocess.Popen(
            [sys.executable, str(CLIENT), "--serve", self.socket, *cpu_log],
            cwd=ROOT,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        self.ready = self.proc.stdout.readline().strip() == "ready"

    def alive(self) -> bool:
        return self.ready and self.proc.poll() is None

    def env(self, env: dict) -> dict:
        return dict(env, ALIGN_WARM_SOCKET=self.socket, PYTHON_EXEC=self.python)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()  # the server kills its runs and exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


_servers: dict[str, Server] = {}  # by environment, least recently used first
MAX_SERVERS = 3  # a worker meets 2 environments (the suite's, test_ablate's); a third evicts the least recent
_unavailable = False  # a server could not start (no pidfds): every run starts cold


@atexit.register
def _close_all():
    for server in _servers.values():
        server.close()


def server_for(env: dict) -> Server | None:
    global _unavailable
    if os.environ.get("ALIGN_TESTS_COLD") or _unavailable:
        return None
    base = {k: v for k, v in env.items() if not k.startswith(RUNTIME_ONLY)}
    key = json.dumps(base, sort_keys=True)
    server = _servers.pop(key, None)
    if server is not None and not server.alive():
        server.close()
        server = None
    if server is None:
        while len(_servers) >= MAX_SERVERS:  # runs are synchronous: the evicted server has none in flight
            _servers.pop(next(iter(_servers))).close()
        server = Server(base)
        if not server.alive():
            server.close()
            _unavailable = True
            return None
    _servers[key] = server  # now the most recent
    return server


def python_command(args: list, env: dict) -> tuple[list[str], dict]:
    """``args`` (a command line) and ``env`` as they should be run: ``python ...`` through the warm client."""
    args = [str(a) for a in args]
    if not args or args[0] != sys.executable or len(args) < 2:
        return args, env
    server = server_for(env)
    if server is None:
        return args, env
    return [sys.executable, str(CLIENT), *args[1:]], server.env(env)


def run_python(args: list, *, env: dict, cwd=ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    """``subprocess.run(args, capture_output=True, text=True)``, warm when ``args`` starts with this python."""
    args, env = python_command(args, env)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
