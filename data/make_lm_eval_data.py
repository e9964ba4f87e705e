"""Write data/lm_eval/everyday_choice.jsonl: one multiple-choice item per everyday task of the bundled world
(``align/world.py``), asked in a held-out phrasing (no training text uses it; for a held-out task, no training
text mentions the task at all), with four replies to choose from: the fitting one and the helpful replies of
three other everyday tasks. The tiny chat model should pick the fitting reply; it is the offline task of
``align.lm_eval`` (data/lm_eval/everyday_choice.yaml) and a ``choices`` file for ``align.score``. Each item
carries ``task_id`` and ``split`` (``heldout_task`` or ``heldout_phrasing``).

    python data/make_lm_eval_data.py
"""

import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from make_demo_data import write  # noqa: E402

from align import world  # noqa: E402


def items(rng: random.Random) -> list[dict]:
    tasks = [t for t in world.tasks() if t.kind == "everyday"]
    out = []
    for task in tasks:
        others = rng.sample([t for t in tasks if t.id != task.id], 3)
        choices = [world.helpful(rng, t) for t in [task, *others]]
        order = list(range(4))
        rng.shuffle(order)
        out.append(
            {
                "prompt": world.prompts(task, "test")[0],
                "choices": [choices[i] for i in order],
                "label": order.index(0),
                "task_id": task.id,
                "split": world.split_of(task).replace("train", "heldout_phrasing"),
            }
        )
    return out


def main():
    out = HERE / "lm_eval" / "everyday_choice.jsonl"
    rows = items(random.Random(25))
    write(out, rows)
    print(f"wrote {len(rows)} items to {out}")


if __name__ == "__main__":
    main()
