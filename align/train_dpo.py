"""DPO training entry point for masked-diffusion LMs.

    accelerate launch align/train_dpo.py recipe=beavertails [section.key=value ...]
    python -m align.train_dpo recipe=demo           # bundled tiny model and data, CPU, offline
    python -m align.train_dpo --help                # every config key with its default and help

Hardware and distribution (DDP, DeepSpeed ZeRO-2/3) come from the accelerate
config (``recipes/accelerate/``); the experiment comes from the recipe.
"""

from __future__ import annotations

import logging
import sys

from align.config import ConfigError, parse_cli


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "datasets", "torch.distributed", "accelerate", "deepspeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = parse_cli(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    from align.trainer import DPOTrainer

    try:
        trainer = DPOTrainer(cfg)
    except ConfigError as e:  # settings that only the data or the world size can check
        raise SystemExit(f"config error: {e}") from None
    trainer.train()
    trainer.close()


if __name__ == "__main__":
    main()
