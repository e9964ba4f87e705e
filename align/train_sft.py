"""Masked-diffusion SFT entry point (LLaDA's SFT objective; docs/method.md §6).

    accelerate launch align/train_sft.py recipe=NAME [section.key=value ...]
    python -m align.train_sft recipe=tiny_chat_sft  # the SFT stage of the bundled tiny chat model
    python -m align.train_sft --help                # every config key with its default and help

Same config system, launchers, LoRA/full fine-tuning, checkpoints, resume and
metrics as ``align.train_dpo``; a LoRA run's reference is not needed.
"""

from __future__ import annotations

from align.config import SFTConfig
from align.sft import SFTObjective
from align.train import train_main


def main(argv: list[str] | None = None) -> None:
    train_main(SFTConfig, SFTObjective, "train_sft.py", argv)


if __name__ == "__main__":
    main()
