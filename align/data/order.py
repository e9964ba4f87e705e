"""The order of training and the seeds of mask draws: every epoch a new seeded permutation cut into per-rank
micro-batches (:func:`rank_micro_batches`), per-example generators seeded by (seed, example id, epoch)
(:func:`example_generators`), and the seeded held-out split of a local file (:func:`holdout_split`). All are
pure functions of their arguments, so every rank and every resume agree without communication."""

from __future__ import annotations

import functools

import torch


def _seed(*words: int) -> int:
    """A 63-bit seed mixed from integers by numpy's SeedSequence (no collisions between (a, b) pairs in practice)."""
    import numpy as np

    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


EVAL_EPOCH = -1  # held-out draws are keyed to a fixed epoch: the same masks at every evaluation


def example_generators(seed: int, ids: torch.Tensor, epoch: int) -> list[torch.Generator]:
    """One generator per example, seeded by (seed, example id, epoch): the example's mask draws in that epoch."""
    return [torch.Generator().manual_seed(_seed(seed, int(i), epoch + 1)) for i in ids.tolist()]


@functools.lru_cache(maxsize=8)
def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of the ``n`` training examples in ``epoch``: a new seeded permutation every epoch (cached: read
    only)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(_seed(seed, epoch, 0xE90C))).tolist()


def rank_micro_batches(n: int, *, seed: int, world: int, rank: int, per_device: int, start_micro: int = 0):
    """Yield (epoch, micro-step, this rank's example positions) from global micro-step ``start_micro`` on, forever.

    Each epoch is a new permutation cut into global micro-batches of ``world × per_device``
    examples (the last ``n mod (world × per_device)`` of the permutation are left out: a
    different random few each epoch); rank r takes slice r of each. Micro-step k of the
    run is always the same examples, whatever happened before it, so resume is exact.
    """
    micro_global = world * per_device
    per_epoch = n // micro_global
    if per_epoch == 0:
        raise ValueError(f"{n} examples fill no global micro-batch of {micro_global}")
    micro, order, order_epoch = start_micro, None, None
    while True:
        epoch, pos = divmod(micro, per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(n, seed, epoch), epoch
        window = order[pos * micro_global : (pos + 1) * micro_global]
        yield epoch, micro, window[rank * per_device : (rank + 1) * per_device]
        micro += 1


def epoch_rest(n: int, *, seed: int, world: int, rank: int, per_device: int, start_micro: int) -> list[int]:
    """The positions rank ``rank`` meets from global micro-step ``start_micro`` to the end of that epoch."""
    out, first_epoch = [], None
    for epoch, _, mine in rank_micro_batches(
        n, seed=seed, world=world, rank=rank, per_device=per_device, start_micro=start_micro
    ):
        if first_epoch is not None and epoch != first_epoch:
            return out
        first_epoch = epoch
        out += mine


def step_positions(n: int, *, seed: int, world: int, per_device: int, accumulation: int, first_micro: int) -> list[int]:
    """Every rank's positions over the ``accumulation`` micro-steps from ``first_micro``: one optimizer step. The
    order is a pure function of the seed, so each rank lists the whole step alone (no communication)."""
    out = []
    for rank in range(world):
        batches = rank_micro_batches(
            n, seed=seed, world=world, rank=rank, per_device=per_device, start_micro=first_micro
        )
        for _ in range(accumulation):
            out += next(batches)[2]
    return out


def holdout_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) record positions: a seeded random ``fraction`` of ``range(n)`` held out, both sorted.

    Depends only on (n, fraction, seed), so every rank and every resume of a run
    holds out the same records; at least one record is held out when fraction > 0.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"eval fraction must be in (0, 1), got {fraction}")
    k = min(max(1, round(fraction * n)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(seed, 0x5EED)))
    held = sorted(perm[:k].tolist())
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], held
