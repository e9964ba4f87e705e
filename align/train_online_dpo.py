"""Online DPO entry point: DPO on the policy's own samples, ranked by a judge (``align.online_dpo``).

accelerate launch align/train_online_dpo.py recipe=demo_online [section.key=value ...]
python -m align.train_online_dpo recipe=demo_online     # bundled tiny chat model and prompts, CPU, offline
python -m align.train_online_dpo --help                 # every config key with its default and help
"""

from __future__ import annotations

from align.online_dpo import OnlineDPOConfig, OnlineDPOObjective
from align.train import train_main


def main(argv: list[str] | None = None) -> None:
    train_main(OnlineDPOConfig, OnlineDPOObjective, "train_online_dpo.py", argv)


if __name__ == "__main__":
    main()
