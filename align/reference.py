"""The reference model of full fine-tuning (a frozen copy, under DeepSpeed its own engine: :func:`prepare_reference`)
and the reference's log-probabilities computed ahead of the step (``train.precompute_ref_log_probs``) and of the
held-out draws (once per launch): :class:`ReferenceCache`. With LoRA the reference is the policy with its
adapter disabled (``Trainer.scorers``). Exercised by ``tests/test_training_loop.py``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch


def prepare_reference(acc, reference: torch.nn.Module):
    """The frozen reference on the run's device; under DeepSpeed wrapped in an inference engine of the run's ZeRO
    stage when that is 3 (its parameters partitioned like the policy's), else stage 0 (a frozen copy needs no
    optimizer partitioning), in the run's precision."""
    if acc.distributed_type.name != "DEEPSPEED":
        return reference.to(acc.device)
    import deepspeed

    ds = acc.state.deepspeed_plugin.deepspeed_config
    config = {
        "train_micro_batch_size_per_gpu": ds.get("train_micro_batch_size_per_gpu", 1),
        "zero_optimization": {"stage": ds["zero_optimization"]["stage"]},
        "bf16": ds.get("bf16", {"enabled": False}),
        "fp16": ds.get("fp16", {"enabled": False}),
    }
    if config["zero_optimization"]["stage"] != 3:
        config["zero_optimization"]["stage"] = 0  # only ZeRO-3 shards parameters; a frozen copy needs no more
    engine, *_ = deepspeed.initialize(model=reference, config=config)
    engine.eval()
    return engine


class ReferenceCache:
    """``train.precompute_ref_log_probs``: the reference's (chosen, rejected) terms of each example, per epoch.

    Mask draws are a pure function of (seed, example id, epoch), so the reference terms of an epoch can be
    computed before it, in no-grad batches of ``per_device_eval_batch_size``, and the training step then runs
    the policy alone. Each rank computes the examples it will meet (DDP, ZeRO-2/3: no cache is shared between
    ranks) and keeps them in memory and in ``output_dir/ref_logps/epoch<E>.rank<R>of<W>.pt`` with the settings
    they depend on, so a resumed run reads them back instead of recomputing. Under ZeRO-3 the reference forward
    is collective: every rank runs as many batches as the rank with the most to do (padding with a repeat).
    Without ``persist`` (no precomputation asked for) it holds the held-out terms alone, in memory: the eval
    draws are the same at every evaluation, so the reference runs over the held-out pairs once per launch.
    """

    def __init__(self, directory: Path, key: dict, rank: int, world: int, persist: bool = True):
        self.dir, self.rank, self.world, self.persist = directory, rank, world, persist
        self.key = json.dumps(key, sort_keys=True, default=str)
        self.terms: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}

    def path(self, epoch: int) -> Path:
        return self.dir / f"epoch{epoch}.rank{self.rank}of{self.world}.pt"

    def ensure(self, trainer, epoch: int, examples: list, batch_size: int, drop_older: bool = False) -> None:
        acc = trainer.accelerator
        if drop_older:  # the training epochs before this one are done (the eval epoch, -1, stays)
            for e in [e for e in self.terms if 0 <= e < epoch]:
                del self.terms[e]
        have = self.terms.setdefault(epoch, {})
        if not have and self.persist and self.path(epoch).exists():
            saved = torch.load(self.path(epoch), weights_only=True)
            if saved["key"] == self.key:
                have.update(
                    {int(i): (c, r) for i, c, r in zip(saved["ids"].tolist(), saved["chosen"], saved["rejected"])}
                )
        need = list({e.id: e for e in examples if e.id not in have}.values())
        counts = (
            acc.gather(torch.tensor([len(need)], device=acc.device)) if self.world > 1 else torch.tensor([len(need)])
        )
        most = int(counts.max())
        if most == 0:
            return
        started = time.perf_counter()
        padded = need + [examples[0]] * (most - len(need))  # equal batch counts on every rank (ZeRO-3 gathers)
        computed = trainer.objective.reference_terms(trainer, padded, epoch, batch_size)
        have.update({i: computed[i] for i in (e.id for e in need)})
        what = "evaluation" if epoch < 0 else f"epoch {epoch}"
        if not self.persist:  # held-out terms only, kept in memory
            acc.print(
                f"reference log-probs for {what}: {len(need)} examples on rank {self.rank} in "
                f"{time.perf_counter() - started:.1f} s (computed once, kept for every evaluation)"
            )
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        ids = sorted(have)
        torch.save(
            {
                "key": self.key,
                "ids": torch.tensor(ids),
                "chosen": torch.stack([have[i][0] for i in ids]),
                "rejected": torch.stack([have[i][1] for i in ids]),
            },
            self.path(epoch),
        )
        acc.print(
            f"reference log-probs for {what}: {len(need)} examples on rank {self.rank} in "
            f"{time.perf_counter() - started:.1f} s (train.precompute_ref_log_probs; {self.dir})"
        )

    def get(self, epoch: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([b, n], [b, n]) for the examples ``ids`` (on the host)."""
        have = self.terms.get(epoch, {})
        try:
            rows = [have[i] for i in ids.tolist()]
        except KeyError as e:
            raise RuntimeError(f"no precomputed reference terms for example {e.args[0]} at epoch {epoch}") from None
        return torch.stack([c for c, _ in rows]), torch.stack([r for _, r in rows])
