"""Worker for the multi-process tests: run under torchrun / accelerate launch with 2 processes.

    torchrun --nproc_per_node 2 tests/dist_check.py OUT_DIR [recipe=demo|demo_online] [key=value ...]

Trains the demo recipe (or online DPO's demo_online) with the overrides, then rank 0 writes OUT_DIR/dist_check.json
with the world size each rank saw, the example ids each rank drew for the first
micro-batches, and per-rank checksums of the trainable parameters (replicated
under DDP and ZeRO-2; partitions under ZeRO-3).

Planted faults (for the reliability tests), keyed by the optimizer step in progress so a resumed run sees
them at the same step: DIST_CHECK_NAN_RANK/_STEP add NaN to that rank's loss (its gradients stay finite);
DIST_CHECK_SIGNAL_RANK/_STEP make that rank send itself SIGTERM during that step. A stopped run records
the step it stopped after (``preempted_at``) and exits with the trainer's preemption code.
"""

import itertools
import json
import os
import signal
import sys

import torch.distributed as dist

from align.config import load_config
from align.dpo import dpo_trainer
from align.guards import PREEMPTED_EXIT_CODE, Preempted
from align.train import close_and_exit

STEP_SUMS = {}  # optimizer step -> sum of the trainable parameters when it started (with planted faults)


def plant_faults(trainer):
    env = {
        k: int(os.environ[k])
        for k in ("DIST_CHECK_NAN_RANK", "DIST_CHECK_NAN_STEP", "DIST_CHECK_SIGNAL_RANK", "DIST_CHECK_SIGNAL_STEP")
        if k in os.environ
    }
    if not env:
        return
    compute = trainer.objective.compute

    def planted(tr, batch, epoch, norm):
        step = tr.global_step + 1
        STEP_SUMS.setdefault(
            step, float(sum(p.detach().double().sum() for p in tr.model.parameters() if p.requires_grad))
        )
        if tr.rank == env.get("DIST_CHECK_SIGNAL_RANK") and step == env.get("DIST_CHECK_SIGNAL_STEP"):
            os.kill(os.getpid(), signal.SIGTERM)
        loss, stats, n = compute(tr, batch, epoch, norm)
        if tr.rank == env.get("DIST_CHECK_NAN_RANK") and step == env.get("DIST_CHECK_NAN_STEP"):
            loss = loss + float("nan")
        return loss, stats, n

    trainer.objective.compute = planted


def main():
    out, overrides = sys.argv[1], sys.argv[2:]
    recipe = next((o.split("=", 1)[1] for o in overrides if o.startswith("recipe=")), "demo")
    overrides = [o for o in overrides if not o.startswith("recipe=")] + [f"train.output_dir={out}"]
    if recipe == "demo_online":
        from align.online_dpo import OnlineDPOConfig, online_dpo_trainer

        trainer = online_dpo_trainer(load_config(recipe, overrides, OnlineDPOConfig))
    else:
        trainer = dpo_trainer(load_config(recipe, overrides))
    world = dist.get_world_size()
    seen = {
        "accelerate": trainer.world,
        "torch": world,
        "env": int(os.environ["WORLD_SIZE"]),
        "distributed_type": trainer.accelerator.distributed_type.name,
    }
    split = [[e.id for e in batch] for _, _, batch in itertools.islice(trainer.micro_batches(0), 3)]
    plant_faults(trainer)
    preempted_at = None
    try:
        trainer.train()
    except Preempted:
        preempted_at = trainer.global_step
    model = trainer.accelerator.unwrap_model(trainer.model)
    sums = [float(p.detach().double().sum()) for p in model.parameters() if p.requires_grad]
    gathered = [None] * world
    dist.all_gather_object(
        gathered,
        {"seen": seen, "split": split, "param_sums": sums, "preempted_at": preempted_at, "step_sums": STEP_SUMS},
    )
    if dist.get_rank() == 0:
        with open(os.path.join(out, "dist_check.json"), "w") as f:
            json.dump(gathered, f)
    close_and_exit(trainer, PREEMPTED_EXIT_CODE if preempted_at is not None else 0)


if __name__ == "__main__":
    main()
