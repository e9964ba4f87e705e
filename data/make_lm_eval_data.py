"""Write data/lm_eval/everyday_choice.jsonl: one multiple-choice item per everyday task of the demo data, asked
in its held-out phrasing (no training text uses it), with four replies to choose from: the fitting one and the
helpful replies of three other tasks. The tiny chat model should pick the fitting reply; it is the offline task of
``align.lm_eval`` (data/lm_eval/everyday_choice.yaml) and a ``choices`` file for ``align.score``.

    python data/make_lm_eval_data.py
"""

import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_demo_data import EVERYDAY, helpful, prompts, write  # noqa: E402


def items(rng: random.Random) -> list[dict]:
    tasks = sorted(EVERYDAY)
    out = []
    for task in tasks:
        others = rng.sample([t for t in tasks if t != task], 3)
        choices = [helpful(rng, t) for t in [task, *others]]
        order = list(range(4))
        rng.shuffle(order)
        out.append({"prompt": prompts(task, "test")[0], "choices": [choices[i] for i in order],
                    "label": order.index(0)})
    return out


def main():
    out = HERE / "lm_eval" / "everyday_choice.jsonl"
    rows = items(random.Random(25))
    write(out, rows)
    print(f"wrote {len(rows)} items to {out}")


if __name__ == "__main__":
    main()
