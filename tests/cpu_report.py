"""Where the suite's CPU goes: ``python tests/cpu_report.py FILE [N]`` after a run with ALIGN_TESTS_CPU_LOG=FILE.

Per test: the worker's own CPU and that of the processes it waited for (tests/conftest.py), plus the warm runs
(tests/warm.py) that ended on the same worker while the test ran (setup included, so a fixture's runs count for
the first test that needed it). Prints the N most expensive tests and the total.
"""

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(path: str, n: int = 40):
    tests = [json.loads(line) for line in Path(path).read_text().splitlines()]
    cpu = {t["test"]: t["cpu"] for t in tests}
    by_worker = defaultdict(list)
    for t in tests:
        by_worker[t["worker"]].append(t)
    unplaced = 0.0
    for runs in Path(path).parent.glob(Path(path).name + ".*.runs"):
        worker = runs.name[len(Path(path).name) + 1 : -len(".runs")]
        for line in runs.read_text().splitlines():
            run = json.loads(line)
            owner = [t for t in by_worker[worker] if t["start"] <= run["end"] <= t["end"] + 1]
            if owner:
                cpu[owner[0]["test"]] += run["cpu"]
            else:
                unplaced += run["cpu"]
    total = sum(cpu.values())
    for test, seconds in sorted(cpu.items(), key=lambda kv: -kv[1])[:n]:
        print(f"{seconds:8.1f}  {test}")
    print(f"{total:8.1f}  total over {len(cpu)} tests (+{unplaced:.1f} s of runs outside any test)")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40)
