"""A LoRA DPO step of LLaDA-8B on one GPU: peak memory, step time, tokens/s and MFU; the naive step for contrast.

The published LLaDA-8B configuration (align's ``LLaDAConfig()`` defaults) with random bf16 weights built on
the GPU (no hub needed: speed and memory do not depend on the values), LoRA r=16 on the default targets
(attention and MLP projections of every block), gradient checkpointing, SDPA attention, AdamW on the
adapter. The step is the trainer's (``dpo_step.ours_step``: coupled time-free draws, masked-only scoring);
the naive step (``dpo_step.naive_step``) is what public implementations run.

MFU = model FLOPs of the step / (median step time x the GPU's dense bf16 peak, 989 TFLOP/s for H100/H200
SXM). Model FLOPs, per noised sequence of T tokens of which K are scored, with N = the block parameters
(LoRA's own are ignored, < 1%), d the hidden size, l the layers, V the vocabulary:
    policy forward   2·N·T + 4·l·T²·d (attention scores and values) + 2·d·V·K (LM head on scored rows)
    policy backward  the same again (activation gradients only: frozen weights take no weight gradients)
    reference forward, no grad: the same as the policy forward
Recomputation by gradient checkpointing is not counted (that is what makes it MFU, not hardware FLOPs).
The naive step's MFU uses the same numerator, so it shows the time it loses, not the FLOPs it wastes.
"align, reference precomputed" (``train.precompute_ref_log_probs``) is the step with the reference terms
computed beforehand (not timed): its numerator is the policy's forward and backward only (2/3 of the above).
K is the expected count for time-free draws, L/H_L per response of L tokens.
"align, forward_chunk=4" (``model.forward_chunk``) runs the policy's noised sequences 4 at a time, each chunk's
backbone recomputed in backward: activation memory of 4 sequences whatever n is, for one more policy forward
(not counted in MFU, like checkpointing's recomputation); it is also run at n = 32 (``--big-n``).

Then the speed settings (``levers``; ``--no-levers`` skips them): the RMSNorm of before (five kernels) against the
fused one, ``model.checkpoint_blocks`` (only the first K of the blocks recompute in backward; ``--lever-blocks``),
and ``model.compile`` (each block ``torch.compile``d in place; every row after it runs compiled, the first step's
compilation is reported apart): with each K, without checkpointing, with the reference precomputed, at the other
n and L, and chunked at ``--big-n``.

    python benchmarks/gpu_step.py --out results.json     # on a GPU: about 3-5 minutes on one H100
    python benchmarks/gpu_step.py --levers-only --lever-blocks 8,16 --out x.json   # the compiled rows only
    python benchmarks/gpu_step.py --small --compile-backend aot_eager   # CPU-sized, what the test runs
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_step import (
    build,
    enable_checkpointing,
    make_batch,
    measure,
    naive_step,
    ours_step,  # noqa: E402
    precompute_reference,
    precomputed_step,
)

from align.masking import harmonic  # noqa: E402
from align.models import LLaDAConfig  # noqa: E402

PEAK_BF16 = 989.4e12  # H100/H200 SXM dense bf16, FLOP/s
GiB = 2**30


def step_flops(config: LLaDAConfig, *, pairs: int, n: int, prompt: int, response: int) -> float:
    d, f, layers, V = config.d_model, config.mlp_hidden_size, config.n_layers, config.vocab_size
    kv = config.effective_n_kv_heads * (d // config.n_heads)
    N = layers * (2 * d * d + 2 * d * kv + 3 * d * f)
    T = prompt + response
    K = response / harmonic(response)
    forward = 2 * N * T + 4 * layers * T * T * d + 2 * d * V * K  # one sequence
    sequences = 2 * pairs * n  # chosen and rejected, n noised copies each
    return sequences * forward * 3  # policy forward + backward, reference forward


def oom_safe(fn, model):
    try:
        return fn()
    except torch.OutOfMemoryError:
        return None
    finally:
        model.zero_grad(set_to_none=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="a CPU-sized LLaDA (the test); the GPU run uses the 8B config")
    ap.add_argument("--n-samples", default="1,4,8")
    ap.add_argument("--lengths", default="512,1024", help="prompt+response tokens (half each)")
    ap.add_argument("--pairs", type=int, default=1, help="pairs per micro-batch in the grid")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--budget-gib",
        type=float,
        default=78.0,
        help="memory cap for the largest-micro-batch search (an 80 GB H100 gives about 78 GiB)",
    )
    ap.add_argument(
        "--no-tests", action="store_true", help="skip the CUDA tests (tests/test_cuda.py) run first on a GPU"
    )
    ap.add_argument("--max-pairs", type=int, default=16)
    ap.add_argument("--big-n", type=int, default=32, help="n of the forward_chunk row that shows memory flat in n")
    ap.add_argument("--skip", default="", help="comma-separated variant names of the grid to leave out")
    ap.add_argument("--no-search", action="store_true", help="skip the largest-micro-batch search")
    ap.add_argument(
        "--no-levers",
        action="store_true",
        help="skip the speed settings at the largest n and L (RMSNorm unfused as before, model.compile, "
        "model.checkpoint_blocks)",
    )
    ap.add_argument(
        "--lever-blocks",
        default="",
        help="comma-separated K of model.checkpoint_blocks for the compiled rows (default: half the blocks)",
    )
    ap.add_argument("--levers-only", action="store_true", help="only the compiled rows (no grid, no search)")
    ap.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of the compiled rows (the CPU test uses aot_eager: the same traced graphs, no "
        "kernel generation, which costs minutes of CPU)",
    )
    ap.add_argument("--out", help="write every figure as JSON here (rewritten after every row)")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="instead of the grid: where the time of one step at n=8, L=1024 goes (forward-only timings, "
        "bf16 against fp32 adapters, torch.profiler's top kernels)",
    )
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if args.small:
        config = LLaDAConfig(
            d_model=128,
            n_heads=4,
            n_layers=2,
            mlp_hidden_size=384,
            vocab_size=4096,
            embedding_size=4096,
            mask_token_id=4000,
            eos_token_id=3999,
            pad_token_id=3999,
        )
        lengths, ns = [32, 64], [1, 2]
        dtype = torch.bfloat16  # the 8B run's dtype, so the test runs its code path
    else:
        config = LLaDAConfig()  # the published LLaDA-8B values
        lengths, ns = [int(x) for x in args.lengths.split(",")], [int(x) for x in args.n_samples.split(",")]
        dtype = torch.bfloat16
    name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    if cuda and not args.no_tests:  # the CUDA-only checks, where a GPU is at hand
        root = Path(__file__).resolve().parents[1]
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
            cwd=root,
            capture_output=True,
            text=True,
        )
        print(
            "# tests/test_cuda.py: "
            + (proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:])
        )
        if proc.returncode != 0:
            print(proc.stdout[-6000:], proc.stderr[-2000:], flush=True)
    t0 = time.perf_counter()
    model, _ = build(config, device=device, dtype=dtype, lora_r=16, ckpt=True)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    weights = torch.cuda.memory_allocated() if cuda else 0
    print(
        f"# {name}, torch {torch.__version__}; LLaDA d={config.d_model} l={config.n_layers} V={config.vocab_size:,}: "
        f"{params / 1e9:.2f}B parameters ({dtype}), LoRA r=16 {trainable / 1e6:.1f}M trainable; gradient "
        f"checkpointing, SDPA; built in {time.perf_counter() - t0:.0f} s; weights {weights / GiB:.1f} GiB",
        flush=True,
    )
    results = {
        "device": name,
        "torch": torch.__version__,
        "params": params,
        "trainable": trainable,
        "config": {"d_model": config.d_model, "n_layers": config.n_layers, "vocab": config.vocab_size},
        "peak_flops": PEAK_BF16,
        "grid": [],
        "search": [],
        "max_pairs": None,
    }

    def run(step, pairs, n, T, repeats):
        batch = make_batch(pairs, T // 2, T - T // 2, config, device)
        seeds = iter(range(10**6))
        extra, share = {}, 1.0
        if getattr(
            step, "precomputed", step is precomputed_step
        ):  # train.precompute_ref_log_probs: reference terms ahead, the step is policy-only
            extra = {
                "cache": {
                    s: precompute_reference(
                        model, None, batch, n=n, estimator="time_free", mask_token_id=config.mask_token_id, seed=s
                    )
                    for s in range(2 + repeats)
                }
            }
            share = 2 / 3  # its FLOPs: policy forward + backward, no reference forward
        res = measure(
            lambda: step(
                model,
                None,
                batch,
                n=n,
                estimator="time_free",
                mask_token_id=config.mask_token_id,
                opt=opt,
                seed=next(seeds),
                **extra,
            ),
            device=device,
            repeats=repeats,
        )
        flops = share * step_flops(config, pairs=pairs, n=n, prompt=T // 2, response=T - T // 2)
        tokens = 2 * pairs * n * T  # noised policy tokens per step
        return {
            "pairs": pairs,
            "n": n,
            "T": T,
            "step_s": res["step_s"],
            "times": res["times"],
            "peak_gib": (res["peak_total_bytes"] or res["peak_bytes"]) / GiB,
            "tokens_per_s": tokens / res["step_s"],
            "tflops": flops / res["step_s"] / 1e12,
            "mfu": flops / res["step_s"] / PEAK_BF16,
        }

    print(
        "\n| step | L | n | pairs | step s | tokens/s | peak GiB | TFLOP/s | MFU |"
        "\n|---|---|---|---|---|---|---|---|---|"
    )

    def save():
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")

    def show(kind, r):
        save()
        if r is None:
            print(f"| {kind} | | | | out of memory | | | | |", flush=True)
            return
        print(
            f"| {kind} | {r['T']} | {r['n']} | {r['pairs']} | {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | "
            f"{r['peak_gib']:.1f} | {r['tflops']:.0f} | {r['mfu']:.1%} |",
            flush=True,
        )

    if args.profile:
        return profile(model, opt, config, device, args, run, show)

    def peft_fp32(*a, **k):
        return ours_step(*a, **k, adapter_fp32_compute=True)

    def no_checkpointing(*a, **k):
        base = model.get_base_model()
        base.gradient_checkpointing_disable()
        try:
            return ours_step(*a, **k)
        finally:
            enable_checkpointing(base)

    def chunked(*a, **k):
        base = model.get_base_model()
        base.forward_chunk = 4
        try:
            return ours_step(*a, **k)
        finally:
            base.forward_chunk = 0

    variants = {
        "align": ours_step,
        "align, reference precomputed": precomputed_step,
        "align, forward_chunk=4": chunked,
        "align, peft's fp32 adapter compute": peft_fp32,
        "align, no checkpointing": no_checkpointing,
        "naive": naive_step,
    }
    skip = {v.strip() for v in args.skip.split(",") if v.strip()}
    if skip - set(variants):
        raise SystemExit(f"--skip: unknown variant(s) {sorted(skip - set(variants))}; known: {sorted(variants)}")
    for T in [] if args.levers_only else lengths:
        for n in ns:
            for kind, step in variants.items():
                if kind in skip:
                    continue
                if kind != "align" and n not in (ns[0], ns[-1]):
                    continue  # the contrasts at the smallest and largest n are enough
                r = oom_safe(lambda: run(step, args.pairs, n, T, args.repeats), model)
                results["grid"].append({"step": kind, **(r or {"T": T, "n": n, "oom": True})})
                show(kind, r)
    big = 4 if args.small else args.big_n  # a Monte Carlo budget the whole-batch step would need far more memory for
    if not args.levers_only:
        r = oom_safe(lambda: run(chunked, args.pairs, big, lengths[-1], 1), model)
        results["grid"].append({"step": "align, forward_chunk=4", **(r or {"T": lengths[-1], "n": big, "oom": True})})
        show("align, forward_chunk=4", r)
    if not args.no_levers:
        levers(model, config, args, run, show, results, ns, lengths)
    if (
        cuda and not args.small and not args.no_search and not args.levers_only
    ):  # the largest micro-batch under the memory budget, n = 8, L = 1024
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.budget_gib * GiB / total))
        best = None
        pairs = 1
        while pairs <= args.max_pairs:
            r = oom_safe(lambda: run(ours_step, pairs, 8, 1024, 1), model)
            if r is None:
                break
            best = r
            results["search"].append(r)
            show(f"align, {args.budget_gib:.0f} GiB cap", r)
            pairs *= 2
        if best is not None and pairs <= args.max_pairs:  # refine between best and the failing size
            lo, hi = best["pairs"], pairs
            while hi - lo > 1:
                mid = (lo + hi) // 2
                r = oom_safe(lambda: run(ours_step, mid, 8, 1024, 1), model)
                if r is None:
                    hi = mid
                else:
                    lo, best = mid, r
                    results["search"].append(r)
                    show(f"align, {args.budget_gib:.0f} GiB cap", r)
        results["max_pairs"] = best and {"budget_gib": args.budget_gib, **best}
        print(
            f"\nlargest micro-batch at n=8, L=1024 under {args.budget_gib:.0f} GiB: "
            f"{best['pairs'] if best else 0} pair(s)",
            flush=True,
        )
    save()
    return results


def levers(model, config, args, run, show, results, ns, lengths):
    """The speed settings, at the largest n and L unless a row says otherwise: the RMSNorm of before (five
    kernels), ``model.checkpoint_blocks`` (only the first K blocks recompute), then ``model.compile`` (each
    block compiled in place: every row after it is compiled) with each K of ``--lever-blocks``, no
    checkpointing, the reference precomputed, the other n and L (the sequence length turns dynamic on the
    first change), and ``forward_chunk=4`` at ``--big-n``."""
    from align.models import checkpoint_blocks, compile_blocks
    from align.models.layers import RMSNorm

    base = model.get_base_model()
    n, T, layers = ns[-1], lengths[-1], config.n_layers
    ks = [int(k) for k in args.lever_blocks.split(",")] if args.lever_blocks else [layers // 2]

    def unfused_norm(*a, **k):
        fused = RMSNorm.forward

        def forward(self, x):
            y = x.float()
            return self.weight * (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

        RMSNorm.forward = forward
        try:
            return ours_step(*a, **k)
        finally:
            RMSNorm.forward = fused

    def setting(step=ours_step, count=None, chunk=0):
        def go(*a, **k):
            if count is not None:
                checkpoint_blocks(base, count)
            base.forward_chunk = chunk
            try:
                return step(*a, **k)
            finally:
                enable_checkpointing(base)  # all blocks again
                base.forward_chunk = 0

        go.precomputed = step is precomputed_step
        return go

    def row(kind, step, n=n, T=T, repeats=args.repeats):
        t0 = time.perf_counter()
        r = oom_safe(lambda: run(step, args.pairs, n, T, repeats), model)
        results["levers"].append(
            {"step": kind, "wall_s": time.perf_counter() - t0, **(r or {"T": T, "n": n, "oom": True})}
        )
        show(kind, r)

    results["levers"] = []
    if not args.levers_only:
        row("align, RMSNorm unfused (before)", unfused_norm)
        row(f"align, {ks[0]} of {layers} blocks checkpointed", setting(count=ks[0]))
    compile_blocks(base, backend=args.compile_backend)
    results["compile_backend"] = args.compile_backend
    t0 = time.perf_counter()
    try:  # the first step compiles; its time is reported apart
        run(ours_step, args.pairs, n, T, 1)
    except Exception as e:  # noqa: BLE001  (a compile failure is a figure too)
        print(f"model.compile failed: {type(e).__name__}: {e}", flush=True)
        results["compile_error"] = f"{type(e).__name__}: {e}"
        return
    results["compile_s"] = time.perf_counter() - t0
    print(f"# model.compile: first step with compilation {results['compile_s']:.0f} s", flush=True)
    row("align, compiled", ours_step)
    for k in ks:
        row(f"align, compiled, {k} of {layers} blocks checkpointed", setting(count=k))
    row("align, compiled, no checkpointing", setting(count=0))
    row(
        f"align, reference precomputed, compiled, {ks[0]} of {layers} blocks checkpointed",
        setting(precomputed_step, count=ks[0]),
    )
    for other in ns[:-1]:
        row("align, compiled", ours_step, n=other)
    for other in lengths[:-1]:
        row("align, compiled", ours_step, T=other)
    big = 4 if args.small else args.big_n
    row("align, compiled, forward_chunk=4", setting(chunk=4), n=big, repeats=1)


def profile(model, opt, config, device, args, run, show):
    """Where the time of one step goes: forward-only rates and torch.profiler's top operators."""
    from dpo_step import reference_scorer
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from align import estimators as E
    from align.models import adapter_in_base_dtype, token_scorer

    n, T = (2, 64) if args.small else (8, 1024)
    batch = make_batch(1, T // 2, T - T // 2, config, device)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    dtype = model.get_base_model().dtype

    def forward(adapter: str):
        score = reference_scorer(model, None) if adapter == "off" else token_scorer(model)
        with torch.no_grad(), adapter_in_base_dtype(model, dtype if adapter == "base dtype" else None):
            E.dpo_terms(
                score,
                score,
                batch["chosen"],
                batch["rejected"],
                batch["response_mask"],
                n_samples=n,
                mask_token_id=config.mask_token_id,
                generator=torch.Generator().manual_seed(0),
            )

    for adapter in ("off", "peft fp32", "base dtype"):  # each call is two forwards (policy and reference scorers)
        forward(adapter)
        sync()
        t = time.perf_counter()
        for _ in range(2):
            forward(adapter)
        sync()
        s = (time.perf_counter() - t) / 4
        flops = step_flops(config, pairs=1, n=n, prompt=T // 2, response=T - T // 2) / 3
        print(
            f"forward only, adapter {adapter}: {s:.3f} s per forward of {2 * n * T} tokens, "
            f"{flops / s / 1e12:.0f} TFLOP/s ({flops / s / PEAK_BF16:.1%} of peak)",
            flush=True,
        )
    with torch_profile(
        activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    ) as prof:
        ours_step(model, None, batch, n=n, estimator="time_free", mask_token_id=config.mask_token_id, opt=opt)
        sync()
    key = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60), flush=True)


if __name__ == "__main__":
    main()
