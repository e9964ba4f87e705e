"""DPO training entry point for masked-diffusion LMs.

    accelerate launch align/train_dpo.py recipe=beavertails [section.key=value ...]
    python -m align.train_dpo recipe=demo           # bundled tiny chat model and data, CPU, offline
    python -m align.train_dpo --help                # every config key with its default and help

Hardware and distribution (DDP, DeepSpeed ZeRO-2/3) come from the accelerate
config (``recipes/accelerate/``); the experiment comes from the recipe.
"""

from __future__ import annotations

from align.config import Config
from align.dpo import DPOObjective
from align.train import train_main


def main(argv: list[str] | None = None) -> None:
    train_main(Config, DPOObjective, "train_dpo.py", argv)


if __name__ == "__main__":
    main()
