"""Per-GPU memory of DPO on LLaDA-8B, derived from the published config (no GPU needed).

Counts parameters exactly from the architecture (and checks them against
the published checkpoint size when ../shared/assets is present), then sizes
weights, gradients, optimizer state, checkpointed activations and the
masked-only logits for two setups on 8 GPUs:

- LoRA (r=16 on all attention + MLP projections), DDP or ZeRO-2, bf16 base weights;
- full fine-tuning under ZeRO-3 (bf16 weights, fp32 Adam master/moments), reference a sharded bf16 copy.

Run: ``python benchmarks/memory_estimate.py [--pairs 2 --n-samples 4 --prompt 256 --response 256]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

GiB = 2**30


def count(cfg: dict) -> dict:
    d, f, L, V = cfg["d_model"], cfg["mlp_hidden_size"], cfg["n_layers"], cfg["embedding_size"] or cfg["vocab_size"]
    kv = (cfg.get("n_kv_heads") or cfg["n_heads"]) * (d // cfg["n_heads"])
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * f + 2 * d  # q, k, v, attn_out, ff_proj/up_proj/ff_out, 2 norms
    total = L * per_layer + V * d * (1 if cfg.get("weight_tying") else 2) + d
    return {"total": total, "per_layer": per_layer, "d": d, "f": f, "L": L, "V": V, "kv": kv}


def lora_params(c: dict, r: int) -> int:
    d, f, kv = c["d"], c["f"], c["kv"]
    shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, f), (d, f), (f, d)]
    return c["L"] * sum(r * (i + o) for i, o in shapes)


def activations(c: dict, tokens: int) -> tuple[float, float]:
    """(checkpointed layer inputs for all layers, peak of one layer's recompute), bf16 bytes."""
    d, f = c["d"], c["f"]
    saved = c["L"] * tokens * d * 2
    # one layer recomputed in backward: normed input, q, k, v, attention out, residual, 2 norms (≈ 8·d) and the
    # MLP's gate, up, activation and product (4·f), with their gradients alive at once (×2)
    recompute = 2 * tokens * (8 * d + 4 * f) * 2
    return saved, recompute


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2, help="pairs per GPU per micro-step")
    ap.add_argument("--n-samples", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--lora-r", type=int, default=16)
    args = ap.parse_args()
    from align.models import LLaDAConfig

    cfg = LLaDAConfig().to_dict()  # align's defaults are the published LLaDA-8B values
    c = count(cfg)
    shared = Path(__file__).resolve().parents[2] / "shared" / "assets" / "llada-8b-instruct"
    if shared.is_dir():
        size = json.loads((shared / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
        published = json.loads((shared / "config.json").read_text())
        assert count(published)["total"] * 2 == size, "parameter count does not match the published checkpoint"
        print(f"parameter count {c['total']:,} matches the published checkpoint ({size:,} bytes bf16)")
    P, G = c["total"], args.gpus
    seqs = 2 * args.pairs * args.n_samples  # chosen + rejected, n noised copies each
    T = args.prompt + args.response
    tokens = seqs * T
    saved, recompute = activations(c, tokens)
    H = sum(1 / k for k in range(1, args.response + 1))
    rows = seqs * args.response / H
    head = 2**25 * 4 * 2 + rows * c["d"] * 2
    full_logits = tokens * c["V"] * 4 * 3  # fp32 logits, log-softmax, gradient
    lora = lora_params(c, args.lora_r)
    print(f"\nLLaDA-8B: {P / 1e9:.3f}B parameters; micro-batch per GPU: {args.pairs} pairs x {args.n_samples} samples "
          f"x 2 responses = {seqs} sequences of {T} tokens ({tokens:,} tokens); time-free scores "
          f"~{rows:.0f} masked positions (E[m] = L/H_L = {args.response / H:.1f} per sequence)\n")
    rows_lora = [
        ("base weights (bf16, replicated)", P * 2),
        (f"LoRA r={args.lora_r} params+grads+Adam (fp32, {lora / 1e6:.1f}M)", lora * 16),
        ("checkpointed layer inputs (bf16)", saved), ("one layer recomputed in backward", recompute),
        ("masked-only logits (chunked head)", head),
    ]
    rows_full = [
        ("policy weights (bf16, /8)", P * 2 / G), ("reference copy (bf16, /8)", P * 2 / G),
        ("gradients (bf16, /8)", P * 2 / G), ("Adam master + moments (fp32, /8)", P * 12 / G),
        ("ZeRO-3 gathered-parameter buffers (~2 layers in flight)", 2 * c["per_layer"] * 2 * 2),
        ("checkpointed layer inputs (bf16)", saved / args.pairs), ("one layer recomputed in backward", recompute / args.pairs),
        ("masked-only logits (chunked head)", 2**25 * 8 + rows / args.pairs * c["d"] * 2),
    ]
    for title, rows_ in [(f"LoRA, DDP / ZeRO-2, {G} GPUs, {args.pairs} pairs/GPU", rows_lora),
                         (f"Full fine-tuning, ZeRO-3, {G} GPUs, {max(args.pairs // 2, 1)} pair(s)/GPU", rows_full)]:
        print(f"| {title} | GiB per GPU |\n|---|---|")
        for name, b in rows_:
            print(f"| {name} | {b / GiB:.2f} |")
        print(f"| **total** | **{sum(b for _, b in rows_) / GiB:.1f}** |\n")
    print(f"Full [tokens, 126464] logits for the same LoRA micro-batch would add {full_logits / GiB:.1f} GiB "
          f"(fp32 logits, log-softmax and gradient).")


if __name__ == "__main__":
    main()
