"""The items of everyday_choice.yaml, read from the JSONL beside this file (no hub access)."""

import json
from pathlib import Path


def load(**kwargs):
    from datasets import Dataset, DatasetDict

    path = Path(__file__).with_name("everyday_choice.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return DatasetDict({"test": Dataset.from_list(rows)})
