"""Write data/score_ood_shuffled.jsonl: the held-out dialogues of data/tiny_sft_test.jsonl with the words of each
answer shuffled (same vocabulary, broken sentences). Scored against the originals it is the out-of-distribution
set of the README's scoring example: the tiny chat model should find the shuffled answers far less likely.

    python data/make_score_data.py
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main():
    rng = random.Random(0)
    out = []
    for line in (HERE / "tiny_sft_test.jsonl").read_text().splitlines():
        record = json.loads(line)
        words = record["response"].split()
        rng.shuffle(words)
        out.append({"prompt": record["prompt"], "response": " ".join(words)})
    tmp = HERE / "score_ood_shuffled.jsonl.tmp"  # then renamed: a reader never sees a partial file
    tmp.write_text("".join(json.dumps(r) + "\n" for r in out))
    tmp.replace(HERE / "score_ood_shuffled.jsonl")
    print(f"wrote {len(out)} records to {HERE / 'score_ood_shuffled.jsonl'}")


if __name__ == "__main__":
    main()
