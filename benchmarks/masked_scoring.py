"""Masked-only scoring vs full logits at LLaDA's vocabulary (126,464), small hidden size.

For a DPO-sized batch it times forward+backward and measures peak memory of
(a) full logits [b, T, V] -> log_softmax -> gather, and (b) align's scoring
path (LM head only at the scored positions, chunked, recomputed in backward).
Each variant runs in a fresh subprocess; peak memory is the rise in peak RSS
over the loaded model on CPU, or torch.cuda.max_memory_allocated on GPU.

Run: ``python benchmarks/masked_scoring.py [--batch 8 --seq 512 --frac 0.25 --hidden 256]``
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch


def build(hidden: int, vocab: int, device):
    from align.models import LLaDAConfig, LLaDAModelLM

    config = LLaDAConfig(
        d_model=hidden,
        n_heads=4,
        n_layers=2,
        mlp_hidden_size=2 * hidden,
        vocab_size=vocab,
        embedding_size=vocab,
        mask_token_id=vocab - 1,
        eos_token_id=vocab - 2,
        pad_token_id=vocab - 2,
    )
    torch.manual_seed(0)
    return LLaDAModelLM(config).to(device)


def run_variant(variant: str, args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build(args.hidden, args.vocab, device)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab - 2, (args.batch, args.seq), generator=g).to(device)
    score = (torch.rand(args.batch, args.seq, generator=g) < args.frac).to(device)

    def step():
        if variant == "full":
            logits = model(ids).logits
            logp = logits.float().log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
            loss = torch.where(score, logp, 0.0).sum()
        else:
            loss = model(ids, score_mask=score, targets=ids).token_logprobs.sum()
        loss.backward()
        model.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"variant": variant, "peak_bytes": peak, "median_s": sorted(times)[len(times) // 2], "device": str(device)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--frac", type=float, default=0.25, help="fraction of positions scored (masked)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=126464)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variant", choices=["full", "masked"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    passthrough = [a for a in sys.argv[1:]]
    results = {}
    for variant in ("full", "masked"):
        out = subprocess.run(
            [sys.executable, __file__, *passthrough, "--variant", variant], capture_output=True, text=True, check=True
        )
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    full, masked = results["full"], results["masked"]
    print(
        f"machine: {platform.machine()}, device {full['device']}, torch {torch.__version__}; batch {args.batch} x "
        f"seq {args.seq}, {args.frac:.0%} scored, hidden {args.hidden}, vocab {args.vocab}"
    )
    print(f"| path | peak memory (MiB) | forward+backward (s, median of {args.repeats}) |")
    print("|---|---|---|")
    for r in (full, masked):
        print(f"| {r['variant']} | {r['peak_bytes'] / 2**20:.0f} | {r['median_s']:.3f} |")
    print(
        f"| ratio full/masked | {full['peak_bytes'] / max(masked['peak_bytes'], 1):.1f}× | "
        f"{full['median_s'] / masked['median_s']:.1f}× |"
    )


if __name__ == "__main__":
    main()
