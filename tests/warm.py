"""Warm Python for the tests: ``warm.py [-u] (-m MODULE | -c CODE | SCRIPT) [ARGS]`` behaves as ``python`` would,
in a process forked from a server that has already imported torch, transformers, accelerate, peft and align.

Why: a run's process on 2 cores spent ~4.4 s importing those before doing anything, and the suite starts some
250 of them (each rank of a two-rank launch, each ablation cell, each launcher). The run is still a process of
its own, as a real launch is (accelerate keeps process-wide state): the server never runs a tensor op, creates
no thread pool, accelerator or process group; it forks, and the child takes the client's stdin/stdout/stderr,
directory, environment and argv and runs the target as ``python`` would, then exits as the interpreter does
(threads joined, atexit handlers run, streams flushed; see :func:`_run_and_exit`).

Client (this file run without ``--serve``; imports nothing heavy): connects to ``$ALIGN_WARM_SOCKET``, hands
over its three standard streams and the job, prints nothing of its own, relays SIGINT/SIGTERM/SIGHUP/SIGUSR1/
SIGUSR2 to the run and exits as the run did (same code, or killed by the same signal). So a launcher that
starts ``$PYTHON_EXEC -u script`` (torchrun does; tests/launch.py points it at a wrapper of this client) sees
and controls its workers as it would cold ones. Without a server, or for arguments it does not know, it execs
the real interpreter.

Server (``--serve SOCKET [CPU_LOG]``): started by tests/launch.py with the tests' environment (import-time reads of the
environment, such as HF_HUB_OFFLINE, see the same values a cold run would). A run whose client goes away
(killed by a timeout) is killed; when the server's stdin closes (its test worker ended) it kills what is left
and exits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time

RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def _target(argv: list[str]):
    """(unbuffered, kind, what, args) for python-style argv this client runs warm; None for anything else."""
    unbuffered = False
    i = 0
    while i < len(argv) and argv[i] == "-u":
        unbuffered, i = True, i + 1
    if i < len(argv) and argv[i] in ("-m", "-c") and i + 1 < len(argv):
        return unbuffered, argv[i], argv[i + 1], argv[i + 2 :]
    if i < len(argv) and not argv[i].startswith("-"):
        return unbuffered, "script", argv[i], argv[i + 1 :]
    return None


# ------------------------------------------------------------------------------------------------- client


def client(argv: list[str]) -> None:
    path = os.environ.get("ALIGN_WARM_SOCKET")
    conn = None
    if path and _target(argv) is not None:
        try:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(path)
        except OSError:
            conn = None
    if conn is None:
        os.execv(sys.executable, [sys.executable, *argv])
    socket.send_fds(conn, [b"j"], [0, 1, 2])
    conn.sendall(json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode() + b"\n")
    replies = conn.makefile("r")
    pid = json.loads(replies.readline())["pid"]
    for sig in RELAYED:
        signal.signal(sig, lambda signum, _frame: os.kill(pid, signum))
    line = replies.readline()
    if not line:
        sys.exit(1)  # the server died (it kills its runs when it goes)
    status = json.loads(line)["status"]
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status))


# ------------------------------------------------------------------------------------------------- server


def _read_job(conn: socket.socket):
    _, fds, _, _ = socket.recv_fds(conn, 1, 3)
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1 << 16)
        if not chunk:
            raise EOFError
        data += chunk
    return json.loads(data), fds


def _become_run(job: dict, fds: list[int]):
    """In the forked child: take the client's streams, directory, environment and argv; return what to run."""
    import io

    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    unbuffered, kind, what, args = _target(job["argv"])
    unbuffered = unbuffered or bool(os.environ.get("PYTHONUNBUFFERED"))

    def stream(fd, mode, **kw):
        raw = open(fd, mode + "b", buffering=0 if unbuffered and mode == "w" else -1, closefd=False)
        return io.TextIOWrapper(raw, encoding="utf-8", write_through=unbuffered, **kw)

    sys.stdin = sys.__stdin__ = stream(0, "r")
    sys.stdout = sys.__stdout__ = stream(1, "w", line_buffering=os.isatty(1))
    sys.stderr = sys.__stderr__ = stream(2, "w", errors="backslashreplace", line_buffering=True)
    if kind == "-m":
        sys.argv = ["-m", *args]
        sys.path[0] = os.getcwd()
    elif kind == "-c":
        sys.argv = ["-c", *args]
        sys.path[0] = ""
    else:
        sys.argv = [what, *args]
        sys.path[0] = os.path.dirname(os.path.abspath(what))
    for entry in reversed([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]):
        sys.path.insert(1, os.path.abspath(entry))  # where python puts them (the server starts without any)
    return kind, what


def _run(kind: str, what: str):
    import runpy

    if kind == "-m":
        runpy.run_module(what, run_name="__main__", alter_sys=True)
    elif kind == "-c":
        exec(compile(what, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    else:
        runpy.run_path(what, run_name="__main__")


def serve(path: str, cpu_log: str | None = None):
    """Accept jobs until stdin closes. Single-threaded, so each fork copies a process with one thread.
    ``cpu_log``: a file to append each finished run's CPU time to (tests/conftest.py's ``--cpu-log``)."""
    import selectors

    # what the runs import; not align's entry modules themselves (they run as __main__)
    import accelerate  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import align.cli  # noqa: F401
    import align.dpo  # noqa: F401
    import align.estimators  # noqa: F401
    import align.grid_report  # noqa: F401
    import align.sft  # noqa: F401
    import align.trainer  # noqa: F401

    try:  # waiting on runs needs pidfds (Linux 5.3); without them the tests start their runs cold
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        print("unavailable", flush=True)
        sys.exit(0)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, ("accept",))
    sel.register(sys.stdin, selectors.EVENT_READ, ("stdin",))
    runs: dict[int, tuple[socket.socket, int]] = {}  # pid -> (client connection, pidfd)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            what = key.data
            if what[0] == "accept":
                conn, _ = listener.accept()
                try:
                    job, fds = _read_job(conn)
                except (OSError, EOFError, ValueError):
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    sel.close()
                    listener.close()
                    for other, pidfd in runs.values():
                        other.close()
                        os.close(pidfd)
                    conn.close()
                    return _become_run(job, fds)
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                runs[pid] = (conn, pidfd)
                sel.register(pidfd, selectors.EVENT_READ, ("exit", pid))
                sel.register(conn, selectors.EVENT_READ, ("client", pid))
                try:
                    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                except OSError:
                    os.kill(pid, signal.SIGKILL)
            elif what[0] == "exit":
                pid = what[1]
                conn, pidfd = runs.pop(pid)
                _, status, usage = os.wait4(pid, 0)
                if cpu_log:  # the run's CPU seconds, with those of the children it waited for
                    with open(cpu_log, "a") as f:
                        f.write(json.dumps({"end": time.time(), "cpu": usage.ru_utime + usage.ru_stime}) + "\n")
                sel.unregister(pidfd)
                os.close(pidfd)
                if conn.fileno() >= 0:
                    sel.unregister(conn)
                    try:
                        conn.sendall(json.dumps({"status": status}).encode() + b"\n")
                    except OSError:
                        pass
                    conn.close()
            elif what[0] == "client":  # a client only ever writes by going away: kill its run
                conn = runs[what[1]][0]
                if not conn.recv(1):
                    sel.unregister(conn)
                    conn.close()
                    os.kill(what[1], signal.SIGKILL)
            elif not sys.stdin.readline():  # the test worker is gone
                for pid in runs:
                    os.kill(pid, signal.SIGKILL)
                sys.exit(0)


def _run_and_exit(kind: str, what: str):
    """Run the target, then end as the interpreter would: exit code from SystemExit (1 and a traceback for an
    exception, death by SIGINT for an uncaught KeyboardInterrupt), non-daemon threads joined, atexit handlers
    run, streams flushed. Module teardown is skipped (os._exit): in a forked child it would touch, and so copy,
    every page of the server's heap (~1 s) and has no effect outside the process."""
    import atexit
    import threading
    import traceback

    code, interrupted = 0, False
    try:
        _run(kind, what)
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted = True
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    finally:
        if interrupted:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code & 0xFF)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        started = serve(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
        if started is not None:  # a forked run
            _run_and_exit(*started)
    else:
        client(sys.argv[1:])
