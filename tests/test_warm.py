"""The tests' warm runs (tests/warm.py via tests/launch.py) behave as ``python`` does: exit codes, tracebacks,
death by signal, argv, sys.path, directory, environment; torchrun's workers start warm through PYTHON_EXEC."""

import json
import sys

import pytest

from tests.launch import python_command, run_python, server_for
from tests.test_trainer import ENV, ROOT, free_port


@pytest.fixture(autouse=True)
def warm_server():
    if server_for(ENV) is None:  # ALIGN_TESTS_COLD=1, or no pidfds (Linux < 5.3)
        pytest.skip("runs start cold here")


def py(*args, env=ENV, cwd=ROOT):
    return run_python([sys.executable, *args], env=env, cwd=cwd, timeout=120)


def test_a_warm_run_is_started_through_the_server():
    args, env = python_command([sys.executable, "-c", "pass"], ENV)
    assert args[1].endswith("tests/warm.py") and env["ALIGN_WARM_SOCKET"] and env["PYTHON_EXEC"]
    # the imports are done before the run's first line
    proc = py("-c", "import sys; print('torch' in sys.modules, 'peft' in sys.modules)")
    assert proc.stdout == "True True\n"


def test_exit_codes_and_errors_are_those_of_python():
    assert py("-c", "import sys; sys.exit(3)").returncode == 3
    assert py("-c", "raise SystemExit('no good')").returncode == 1
    proc = py("-c", "raise ValueError('broken')")
    assert proc.returncode == 1 and proc.stderr.rstrip().endswith("ValueError: broken")
    assert py("-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)").returncode == -15
    proc = py("-c", "raise KeyboardInterrupt")  # python dies by SIGINT when KeyboardInterrupt is not caught
    assert proc.returncode == -2 and "KeyboardInterrupt" in proc.stderr


def test_argv_path_directory_and_environment_are_the_run_s(tmp_path):
    script = tmp_path / "show.py"
    script.write_text(
        "import json, os, sys\n"
        "print(json.dumps([sys.argv, sys.path[:2], os.getcwd(), os.environ.get('MINE')]))\n"
        "import atexit; atexit.register(lambda: print('bye'))\n"
    )
    env = dict(ENV, MINE="1", PYTHONPATH=str(tmp_path / "lib"))
    proc = py("-u", str(script), "a", "b=c", env=env, cwd=tmp_path)
    argv, path, cwd, mine = json.loads(proc.stdout.splitlines()[0])
    assert argv == [str(script), "a", "b=c"] and path == [str(tmp_path), str(tmp_path / "lib")]
    assert cwd == str(tmp_path) and mine == "1" and proc.stdout.splitlines()[1] == "bye"  # atexit handlers run
    proc = py("-m", "json.tool", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "json.tool" in proc.stdout


@pytest.mark.distributed
def test_torchrun_workers_start_warm_with_their_own_rank(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(
        "import os, sys\nimport torch.distributed as dist\ndist.init_process_group('gloo')\n"
        "os.write(1, f\"{os.environ['RANK']} {dist.get_world_size()} {'peft' in sys.modules}\\n\".encode())\n"
    )
    proc = py("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()), str(script))
    assert proc.returncode == 0, proc.stderr[-2000:]
    # peft is loaded only in a warm process: a cold worker would have imported torch.distributed alone
    assert sorted(proc.stdout.splitlines()) == ["0 2 True", "1 2 True"], proc.stdout
