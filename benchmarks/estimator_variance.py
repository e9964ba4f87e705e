"""Variance of the DPO-margin estimate on toy and random models: 4 sharing settings x 3 estimators x n_samples.

The same measurement as ``python -m align.ablate variance`` (one code path: ``align.variance.measure_variance``,
``bootstrap``, ``variance_markdown``), on models that need no checkpoint: (a) the enumerable toy (vocab 3,
context 2, response 4; reference = policy with N(0, 0.3²) log-joint noise) and (b) a pair of tiny *random*
bidirectional transformers (vocab 64, context 8, response 24; reference = policy with N(0, 0.02²) weight
noise). Random models ignore context, so these tables test the machinery; the trained-model figures come
from ``align.ablate variance`` on the shipped tiny chat model (benchmarks/RESULTS.md).

For each cell: the n-sample margin estimate is drawn R times per pair (independent draws, stratified within
each estimate); var = Var[mean of n samples] averaged over pairs, ± bootstrap SE over pairs.

Run: ``python benchmarks/estimator_variance.py [--reps 200]``
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from align import estimators as E
from align.masking import ESTIMATORS
from align.toy import TinyDenoiser, ToyJoint
from align.variance import SETTINGS, bootstrap, measure_variance, variance_markdown

N_SAMPLES = (1, 5, 32)


def toy_case():
    policy = ToyJoint.random(V=3, T=6, seed=0)
    reference = policy.perturbed(0.3, seed=5)
    ids = policy.sample(8, seed=21)
    chosen, rejected = ids[:4].clone(), ids[4:].clone()
    rejected[:, :2] = chosen[:, :2]
    resp = torch.zeros_like(chosen, dtype=torch.bool)
    resp[:, 2:] = True
    return policy.logits_fn, reference.logits_fn, chosen, rejected, resp, policy.mask_token_id


def transformer_case():
    policy = TinyDenoiser(vocab=64, max_len=32, d=64, layers=2, seed=0)
    reference = policy.perturbed(0.02, seed=1)
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, 64, (4, 8), generator=g)
    chosen = torch.cat([prompt, torch.randint(0, 64, (4, 24), generator=g)], 1)
    rejected = torch.cat([prompt, torch.randint(0, 64, (4, 24), generator=g)], 1)
    resp = torch.zeros_like(chosen, dtype=torch.bool)
    resp[:, 8:] = True
    return policy, reference, chosen, rejected, resp, policy.mask_token_id


def table(name, case, reps):
    policy, reference, chosen, rejected, resp, mask_id = case
    batch = {"chosen_ids": chosen, "rejected_ids": rejected, "response_mask": resp}
    values = measure_variance(
        E.scorer_from_logits(policy),
        E.scorer_from_logits(reference),
        [batch],
        mask_token_id=mask_id,
        estimators=ESTIMATORS,
        n_samples=N_SAMPLES,
        reps=reps,
    )
    print(f"\n### ({name})\n")
    print(variance_markdown(bootstrap(values), ESTIMATORS, N_SAMPLES, SETTINGS), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200, help="independent n-sample estimates per pair")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; reps={args.reps}"
    )
    table("a: toy, vocab 3, L=4", toy_case(), args.reps)
    table("b: tiny transformers, vocab 64, L=24", transformer_case(), args.reps)
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
