"""Variance of the DPO-margin estimate: 4 sharing settings × 3 estimators × n_samples.

Prints one table. For each setting it draws the n-sample margin estimate R
times per pair (independent draws, stratified within each estimate), and
reports, averaged over pairs:

    var     Var[mean of n samples]  — the noise that reaches the DPO loss
    n·var   per-sample-equivalent variance (equals the per-sample variance for i.i.d. draws;
            lower when stratification helps)
    ratio   var(decoupled) / var(this setting), same estimator and n

on (a) the enumerable toy (vocab 3, context 2, response 4; reference = policy
with N(0, 0.3²) log-joint noise) and (b) a pair of tiny random bidirectional
transformers (vocab 64, context 8, response 24; reference = policy with
N(0, 0.02²) weight noise).

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

SETTINGS = {  # name: (share_policy_reference, share_chosen_rejected)
    "coupled": (True, True),
    "share_pol_ref": (True, False),
    "share_cho_rej": (False, True),
    "decoupled": (False, False),
}
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


@torch.no_grad()
def margin_variance(case, estimator, share, n, reps, seed=0):
    policy, reference, chosen, rejected, resp, mask_id = case
    rep = lambda x: x.repeat_interleave(reps, 0)  # noqa: E731
    m = E.dpo_margin(policy, reference, rep(chosen), rep(rejected), rep(resp), n_samples=n, estimator=estimator,
                     share_policy_reference=share[0], share_chosen_rejected=share[1], mask_token_id=mask_id,
                     generator=torch.Generator().manual_seed(seed))
    means = m.mean(1).reshape(chosen.shape[0], reps)  # [pairs, reps]
    return means.var(1).mean().item()


def table(name, case, reps):
    print(f"\n### ({name})\n")
    print("| estimator | n | " + " | ".join(f"{s} var (n·var)" for s in SETTINGS) + " | decoupled/coupled |")
    print("|---|---|" + "---|" * (len(SETTINGS) + 1))
    for est in ESTIMATORS:
        for n in N_SAMPLES:
            v = {s: margin_variance(case, est, share, n, reps) for s, share in SETTINGS.items()}
            cells = " | ".join(f"{v[s]:.4g} ({n * v[s]:.4g})" for s in SETTINGS)
            print(f"| {est} | {n} | {cells} | {v['decoupled'] / v['coupled']:.1f}× |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200, help="independent n-sample estimates per pair")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"reps={args.reps}")
    table("a: toy, vocab 3, L=4", toy_case(), args.reps)
    table("b: tiny transformers, vocab 64, L=24", transformer_case(), args.reps)
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
