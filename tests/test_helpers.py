"""The tests' runner (tests/helpers.py) behaves as ``python`` does for what the tests read: exit codes, tracebacks,
death by signal, argv, sys.path, directory and environment; a run's process-wide state stays in its child."""

import json
import os
import sys

import pytest

from tests.helpers import ENV, ChildFailed, in_child, run_command


def py(*args, env=ENV, cwd=None, tmp):
    script = tmp / "snippet.py"
    script.write_text(args[0])
    return run_command([sys.executable, str(script), *args[1:]], env=env, cwd=cwd or tmp, timeout=120)


def test_exit_codes_and_errors_are_those_of_python(tmp_path):
    assert py("import sys; sys.exit(3)", tmp=tmp_path).returncode == 3
    proc = py("raise SystemExit('no good')", tmp=tmp_path)
    assert proc.returncode == 1 and proc.stderr == "no good\n"
    proc = py("print('out'); raise ValueError('broken')", tmp=tmp_path)
    assert proc.returncode == 1 and proc.stderr.rstrip().endswith("ValueError: broken") and proc.stdout == "out\n"
    assert py("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", tmp=tmp_path).returncode == -15
    proc = py("raise KeyboardInterrupt", tmp=tmp_path)
    assert proc.returncode == -2 and "KeyboardInterrupt" in proc.stderr


def test_argv_path_directory_and_environment_are_the_run_s(tmp_path):
    code = (
        "import json, logging, os, sys\n"
        "logging.getLogger('align.x').warning('to stderr')\n"
        "print(json.dumps([sys.argv, sys.path[0], os.getcwd(), os.environ.get('MINE'), 'torch' in sys.modules]))\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    proc = py(code, "a", "b=c", env=dict(ENV, MINE="1"), cwd=work, tmp=tmp_path)
    argv, path, cwd, mine, warm = json.loads(proc.stdout)
    assert argv == [str(tmp_path / "snippet.py"), "a", "b=c"] and path == str(tmp_path)
    assert cwd == str(work) and mine == "1" and warm  # forked after the imports: torch is already there
    assert "to stderr" in proc.stderr
    assert os.getcwd() != str(work) and "MINE" not in os.environ  # the test process is untouched
    proc = run_command([sys.executable, "-m", "json.tool", "--help"], cwd=tmp_path)
    assert proc.returncode == 0 and "json.tool" in proc.stdout
    proc = run_command([sys.executable, "-c", "import sys; print(sys.argv); sys.exit(4)", "x"], cwd=tmp_path)
    assert proc.returncode == 4 and proc.stdout == "['-c', 'x']\n"


def _build_accelerator(mixed_precision):
    from accelerate import Accelerator

    return str(Accelerator(cpu=True, mixed_precision=mixed_precision).mixed_precision)


def test_in_child_returns_the_value_and_keeps_process_state_out_of_the_test():
    # two accelerators with different settings in one process would clash; each child starts afresh
    assert in_child(_build_accelerator, "no") == "no"
    assert in_child(_build_accelerator, "bf16") == "bf16"
    from accelerate.state import AcceleratorState

    assert not AcceleratorState._shared_state  # nothing built in the test process


def _fails():
    raise ValueError("inside the child")


def test_a_raise_in_the_child_fails_the_test_with_its_traceback():
    with pytest.raises(ChildFailed, match="ValueError: inside the child"):
        in_child(_fails)


def _nested_run():
    return run_command([sys.executable, "-c", "print('inner')"], timeout=60).stdout


def test_a_child_can_fork_runs_of_its_own():
    """An ablation forks its cells from its own forked child: nothing the first fork set up may block the second."""
    assert in_child(_nested_run, timeout=120) == "inner\n"
