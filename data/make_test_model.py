"""The tests' small model: ``data/tiny_test``, a random LLaDA (2 layers, width 80) with the tiny chat model's tokenizer.

    python data/make_test_model.py      # deterministic: the same bytes every time

The mechanics tests (resume, DeepSpeed partitioning, launchers, checkpoints, the run's record) need a model that is
loaded from disk as a real checkpoint is, with the bundled data's tokenizer, not a trained one: on the 2-core
machine a training step of the shipped 5.9M-parameter model takes ~1 s, this one's ~0.05 s. Tests of what training
*does* (the demo, behaviour, KL, learning) keep ``data/tiny_chat``. Same special tokens, chat template and
vocabulary as ``data/tiny_chat``, so every data file encodes exactly as it does for the shipped model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from align.export import save_published  # noqa: E402
from align.models import load_model  # noqa: E402
from align.models.llada import LLaDAConfig, LLaDAModelLM  # noqa: E402
from align.models.tokenizer import load_tokenizer  # noqa: E402

SOURCE = ROOT / "data" / "tiny_chat"
OUT = ROOT / "data" / "tiny_test"
SHAPE = {"d_model": 80, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4, "mlp_hidden_size": 128}


def main() -> None:
    config = json.loads((SOURCE / "config.json").read_text())
    config.update(SHAPE)
    for key in ("architectures", "transformers_version", "dtype", "torch_dtype"):
        config.pop(key, None)
    config.pop("model_type", None)
    torch.manual_seed(0)
    model = LLaDAModelLM(LLaDAConfig(**config)).to(torch.bfloat16)
    tokenizer = load_tokenizer(str(SOURCE))
    save_published(model, OUT, tokenizer=tokenizer, source=SOURCE)
    loaded = load_model(str(OUT), dtype="float32")
    n = sum(p.numel() for p in loaded.parameters())
    size = sum(p.stat().st_size for p in OUT.iterdir() if p.is_file())
    print(f"wrote {OUT}: {n:,} parameters, {size / 2**20:.2f} MiB on disk")


if __name__ == "__main__":
    main()
