"""Where the suite's CPU goes: ``python tests/cpu_report.py FILE [N]`` after a run with ALIGN_TESTS_CPU_LOG=FILE.

Per test: the worker's own CPU and that of the processes it waited for (tests/conftest.py): its forked runs,
launchers and their ranks. Prints the N most expensive tests and the total.
"""

import json
import sys
from pathlib import Path


def main(path: str, n: int = 40):
    tests = [json.loads(line) for line in Path(path).read_text().splitlines()]
    cpu = {t["test"]: t["cpu"] for t in tests}
    for test, seconds in sorted(cpu.items(), key=lambda kv: -kv[1])[:n]:
        print(f"{seconds:8.1f}  {test}")
    print(f"{sum(cpu.values()):8.1f}  total over {len(cpu)} tests")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40)
