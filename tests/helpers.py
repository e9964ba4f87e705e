"""What the tests share: the settings of a quick run, and running an entry point or a snippet in a child forked from
the test process.

A training run changes process-wide state (accelerate's singletons, signal handlers, the output directory's lock,
torch's seeds and settings), so each run gets a process of its own, as a real launch does, but not a new
interpreter: :func:`run_command` forks the test process (torch, transformers and align already imported) and the
child calls the entry point's ``main(argv)`` (other modules and scripts run as ``__main__`` with ``runpy``, as
``python -m`` / ``python script.py`` would), with the command's argv, environment and directory;
:func:`in_child` runs a test's own function the same way and returns its value. Subprocesses remain where a real
process boundary is what is tested: torchrun's and DeepSpeed's ranks (the launcher starts them), signals and
SIGKILL fault injection (``tests/fault_run.py``), and the shell launch scripts.
"""

from __future__ import annotations

import faulthandler
import io
import json
import logging
import multiprocessing
import os
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASIC = ["train.progress_bar=false", "train.report_to=none", "behaviour.prompts=null"]
# DPO runs that do not test evaluation score 8 held-out pairs with 4 draws (the recipe's 64 pairs with 16 draws cost
# ~20 s a run on 2 cores, with 4 draws ~5 s); a test of evaluation names its own eval settings after these
QUIET = BASIC + ["eval.n_samples=4", "data.max_eval_examples=8"]
# the mechanics tests' model: a random 2-layer LLaDA with the tiny chat model's tokenizer, loaded from disk like any
# checkpoint (data/make_test_model.py); a step costs ~1/20 of the shipped model's. What training does is tested on
# data/tiny_chat.
TEST_MODEL = "model.name_or_path=data/tiny_test"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
DS_ENV = dict(ENV, DS_ACCELERATOR="cpu")

PORT_FLAGS = ("--master_port", "--main_process_port")
_FORK = multiprocessing.get_context("fork")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_ports(args: list) -> list:
    """``args`` with each launcher port replaced by a free one: tests run in parallel (pytest-xdist), and two
    launches on one port would fail or, worse, join each other's process group."""
    return [str(free_port()) if i and args[i - 1] in PORT_FLAGS else a for i, a in enumerate(args)]


# two-rank launchers of the behaviour and online-DPO tests (their ports are replaced by free ones at launch)
LAUNCHERS = {
    "ddp": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29573"],
    "zero2": [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "recipes/accelerate/zero2.yaml",
        "--num_processes",
        "2",
        "--main_process_port",
        "29575",
    ],
    "zero3": [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "recipes/accelerate/zero3.yaml",
        "--num_processes",
        "2",
        "--main_process_port",
        "29577",
    ],
}


def partitioning_zero3_config(tmp_path) -> Path:
    """An accelerate config for ZeRO-3 that really partitions tiny parameters (persistence threshold 0), fp32."""
    ds = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "bf16": {"enabled": False},
    }
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    acc = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "DEEPSPEED",
        "num_machines": 1,
        "num_processes": 2,
        "machine_rank": 0,
        "deepspeed_config": {"deepspeed_config_file": str(tmp_path / "ds.json"), "zero3_init_flag": True},
    }
    (tmp_path / "zero3_partitioned.yaml").write_text(yaml.safe_dump(acc))
    return tmp_path / "zero3_partitioned.yaml"


class ChildFailed(AssertionError):
    """A function run by :func:`in_child` raised; the message is the child's traceback."""


def _become_child(env: dict | None, cwd) -> None:
    """In the forked child: the command's environment and directory, default signal handling, and fresh accelerate
    state (a test in the parent may have built an accelerator)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    if env is not None:
        os.environ.clear()
        os.environ.update({k: str(v) for k, v in env.items()})
    os.chdir(cwd)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))  # as a new process would start
    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)  # accelerate's own reset between tests (AccelerateTestCase)
        GradientState._reset_state()


def _redirect_output(out_path: str, err_path: str) -> None:
    """Send fds 1 and 2, ``sys.stdout``/``sys.stderr`` and every logging stream handler to two files, or one
    appended to (pytest's capture objects, which handlers made in the parent may hold, would swallow the output)."""
    old = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}
    if out_path == err_path:
        f = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(f, 1)
        os.dup2(f, 2)
        os.close(f)
    else:
        for fd, path in ((1, out_path), (2, err_path)):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(f, fd)
            os.close(f)
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(open(1, "wb", closefd=False), encoding="utf-8", line_buffering=True)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        open(2, "wb", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
    loggers = [logging.getLogger(), *(x for x in logging.Logger.manager.loggerDict.values() if hasattr(x, "handlers"))]
    for logger in loggers:
        for h in list(logger.handlers):
            if type(h).__module__.startswith("_pytest"):  # pytest's log capture: a real process has none
                logger.removeHandler(h)
            elif type(h) is logging.StreamHandler and id(h.stream) in old:
                h.setStream(sys.stderr)


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)  # sys.exit("message"), as the interpreter prints it
    return 1


def _run_target(kind, target, argv, out_path, err_path, env, cwd, setup) -> None:
    """The child's body for :func:`run_command`: ``python -m target argv``, ``-c target argv`` or ``target argv``."""
    _become_child(env, cwd)
    _redirect_output(out_path, err_path)
    # on a timeout the parent sends SIGUSR1 first: every thread's stack goes to stderr (a signal, not
    # dump_traceback_later's watchdog thread, whose lock a nested fork would inherit held)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    code = 0
    if setup is not None:
        setup()
    try:
        if kind == "-m" and target.startswith("align."):  # align's entry points: main(argv), imported by the parent
            sys.argv = [target, *argv]
            sys.modules[target].main(argv)
        elif kind == "-m":
            sys.argv = [target, *argv]
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        elif kind == "-c":
            sys.argv = ["-c", *argv]
            sys.path.insert(0, "")
            exec(compile(target, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        else:
            sys.argv = [target, *argv]
            sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
            runpy.run_path(target, run_name="__main__")
    except SystemExit as e:
        code = _exit_code(e)
    except KeyboardInterrupt:  # python dies by SIGINT when KeyboardInterrupt is not caught
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def _python_target(args: list[str]) -> tuple[str, str, list[str]] | None:
    """(``-m``, ``-c`` or ``script``, what, argv) for ``python -m M ...``, ``python -c CODE ...`` and ``python
    path.py ...``; None for anything else."""
    if len(args) < 2 or args[0] != sys.executable:
        return None
    if args[1] in ("-m", "-c") and len(args) > 2:
        return args[1], args[2], args[3:]
    if args[1].endswith(".py"):
        return "script", args[1], args[2:]
    return None


def _fork_target(args, target, out_path, err_path, env, cwd, timeout, setup) -> int:
    kind, what, argv = target
    if kind == "-m" and what.startswith("align."):
        __import__(what)  # its imports are paid once per test worker, not once per run
    child_args = (kind, what, argv, out_path, err_path, env, os.fspath(cwd), setup)
    proc = _FORK.Process(target=_run_target, args=child_args)
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGUSR1)  # the child's stacks into its stderr (faulthandler), then kill it
        proc.join(2)
        proc.kill()
        proc.join()
        raise subprocess.TimeoutExpired(args, timeout, stderr=Path(err_path).read_text(errors="replace")[-5000:])
    return proc.exitcode  # -N: killed by signal N, as subprocess says


def run_command(
    args: list, *, env: dict | None = None, cwd=ROOT, timeout: float = 1200, setup=None
) -> subprocess.CompletedProcess:
    """``subprocess.run(args, capture_output=True, text=True)`` for a command line. ``python -m M``, ``python -c``
    and ``python script.py`` run in a child forked from the test process (align's entry points through their
    ``main(argv)``, anything else as ``__main__`` as python would run it; ``setup()`` first, in the child); any
    other command is a subprocess. ``timeout`` guards against hangs."""
    args = [str(a) for a in args]
    env = ENV if env is None else env
    target = _python_target(args)
    if target is None:
        return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="align-run-") as tmp:
        out_path, err_path = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        code = _fork_target(args, target, out_path, err_path, env, cwd, timeout, setup)
        read = lambda p: Path(p).read_text(encoding="utf-8", errors="backslashreplace")  # noqa: E731
        return subprocess.CompletedProcess(args, code, read(out_path), read(err_path))


def _launch_cell_forked(cmd: list[str], log) -> int:
    """``align.ablate.launch_cell`` for the tests: a cell's ``python -m align.train_dpo ...`` forked from the
    ablation's process, output appended to its train.log; any other launcher as the product runs it."""
    target = _python_target([str(a) for a in cmd])
    if target is None:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    log.flush()
    return _fork_target(cmd, target, log.name, log.name, None, os.getcwd(), 1200, None)


def cells_forked() -> None:
    """A ``setup`` for :func:`run_command` of ``align.ablate``: its cells are forked, not started cold."""
    from align import ablate

    ablate.launch_cell = _launch_cell_forked


def _call_and_send(conn, fn, args, env, cwd) -> None:
    _become_child(env, cwd)
    try:
        conn.send(("ok", fn(*args)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def in_child(fn, *args, env: dict | None = None, cwd=ROOT, timeout: float = 1200):
    """``fn(*args)`` in a child forked from the test process (its own accelerate state, seeds and signal handlers);
    returns the value (sent back pickled). A raise in the child fails the test with the child's traceback."""
    env = ENV if env is None else env
    receive, send = _FORK.Pipe(duplex=False)
    proc = _FORK.Process(target=_call_and_send, args=(send, fn, args, env, os.fspath(cwd)))
    proc.start()
    send.close()
    if not receive.poll(timeout):
        proc.kill()
        proc.join()
        raise subprocess.TimeoutExpired(getattr(fn, "__name__", "function"), timeout)
    try:
        status, value = receive.recv()
    except EOFError:
        proc.join()
        raise ChildFailed(f"the child running {fn.__name__} died (exit code {proc.exitcode})") from None
    proc.join()
    if status == "error":
        raise ChildFailed(value)
    return value


def demo_trainer(out, *overrides, quiet=QUIET):
    """The demo recipe's DPO trainer (output ``out``, ``quiet`` and ``overrides``), built in this process: a test
    builds it inside :func:`in_child`."""
    from align.config import load_config
    from align.dpo import dpo_trainer

    return dpo_trainer(load_config("demo", [f"train.output_dir={out}", *quiet, *overrides]))


def run(args, cwd=ROOT, timeout=1200, env=None) -> str:
    """:func:`run_command` that must succeed; returns stdout + stderr."""
    proc = run_command(fresh_ports(args), cwd=cwd, env=env or ENV, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout + proc.stderr


def train(out, *overrides, launcher=None, env=None, quiet=QUIET) -> str:
    """A DPO run of the demo recipe into ``out`` (by default in a forked child; ``launcher``: torchrun and the like)."""
    launcher = launcher or [sys.executable, "-m", "align.train_dpo"]
    return run([*launcher, "recipe=demo", f"train.output_dir={out}", *quiet, *overrides], env=env)


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def losses(out) -> dict:
    return {m["step"]: m["loss"] for m in metrics(out) if "loss" in m}
