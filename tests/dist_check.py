"""Worker for the multi-process tests: run under torchrun / accelerate launch with 2 processes.

    torchrun --nproc_per_node 2 tests/dist_check.py OUT_DIR [key=value ...]

Trains the demo recipe with the overrides, then rank 0 writes OUT_DIR/dist_check.json
with the world size each rank saw, the example ids each rank drew for the first
micro-batches, and per-rank checksums of the trainable parameters (replicated
under DDP and ZeRO-2; partitions under ZeRO-3).
"""

import itertools
import json
import os
import sys

import torch.distributed as dist

from align.config import load_config
from align.dpo import DPOTrainer
from align.trainer import close_and_exit


def main():
    out, overrides = sys.argv[1], sys.argv[2:]
    trainer = DPOTrainer(load_config("demo", [*overrides, f"train.output_dir={out}"]))
    world = dist.get_world_size()
    seen = {"accelerate": trainer.world, "torch": world, "env": int(os.environ["WORLD_SIZE"]),
            "distributed_type": trainer.accelerator.distributed_type.name}
    split = [[e.id for e in batch] for _, _, batch in itertools.islice(trainer.micro_batches(0), 3)]
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    sums = [float(p.detach().double().sum()) for p in model.parameters() if p.requires_grad]
    gathered = [None] * world
    dist.all_gather_object(gathered, {"seen": seen, "split": split, "param_sums": sums})
    if dist.get_rank() == 0:
        with open(os.path.join(out, "dist_check.json"), "w") as f:
            json.dump(gathered, f)
    close_and_exit(trainer)


if __name__ == "__main__":
    main()
