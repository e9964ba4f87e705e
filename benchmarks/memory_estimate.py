"""Per-GPU memory of DPO on LLaDA-8B: derived from the published config, calibrated by one GPU measurement.

Derived (exact arithmetic from the architecture): parameter count (checked against the published checkpoint
size recorded in tests/fixtures/published_facts.json), weights, gradients, optimizer state, the checkpointed layer
inputs,
the LM head's fp32 copy and chunk buffer while scoring, and ZeRO-3's gathered parameters (a block or two in
flight, plus the embedding and the 1 GiB LM head, each gathered in full while used).

Measured: the working set of a block recomputed in backward, per token. It is taken from the 8B LoRA run in
``results/gpu_step_h200.json`` (peak memory against micro-batch size at n=8, L=1024: the slope per noised
token, less the derived checkpointed inputs). A derivation would miss what the frameworks keep: RMSNorm's
fp32 input copies, attention and MLP intermediates and their gradients alive together, and (with peft's
default fp32 adapter compute, which the trainer avoids) fp32 copies of every adapted activation.

Two setups on 8 GPUs:
- LoRA (r=16 on all attention + MLP projections), DDP or ZeRO-2, bf16 base weights;
- full fine-tuning under ZeRO-3 (bf16 weights, fp32 Adam master/moments), reference a sharded bf16 copy.

``--forward-chunk S`` (``model.forward_chunk``): the backbone runs S noised sequences at a time, each chunk
recomputed in backward, so the checkpointed inputs and the block working set are those of S sequences, not
of all 2·pairs·n (plus the scored rows' hidden states of all, kept between the chunks and the head).

Run: ``python benchmarks/memory_estimate.py [--pairs 2 --n-samples 4 --prompt 256 --response 256]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

GiB, MiB = 2**30, 2**20
HERE = Path(__file__).resolve().parent
MEASURED = HERE / "results" / "gpu_step_h200.json"
CHUNK_ELEMENTS = 2**25  # align.models.base.MaskedDiffusionLM.head_chunk_elements: fp32 logits per chunk


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


def saved_inputs_per_token(c: dict) -> int:
    """Checkpointed layer inputs: one bf16 hidden state per layer per token."""
    return c["L"] * c["d"] * 2


def block_working_set_per_token(c: dict) -> tuple[float, str]:
    """Bytes per token of a block recomputed in backward, measured where results/gpu_step_h200.json exists."""
    if MEASURED.exists():
        data = json.loads(MEASURED.read_text())
        rows = [
            r
            for r in data.get("search", []) + data["grid"] + [data.get("max_pairs") or {}]
            if r.get("step", "align") == "align" and r.get("n") == 8 and r.get("T") == 1024 and "peak_gib" in r
        ]
        by_pairs = {r["pairs"]: r["peak_gib"] for r in rows}
        if len(by_pairs) >= 2:
            lo, hi = min(by_pairs), max(by_pairs)
            per_token = (by_pairs[hi] - by_pairs[lo]) * GiB / ((hi - lo) * 2 * 8 * 1024)
            return per_token - saved_inputs_per_token(c), (
                f"measured on {data['device']}: {per_token / MiB:.3f} MiB "
                f"per noised token ({lo} to {hi} pairs at n=8, L=1024)"
            )
    # no measurement at hand: normed input, q, k, v, attention out, residual (~8·d) and the MLP's gate, up,
    # activation and product (4·f), with their gradients (x2), bf16
    return 2 * (8 * c["d"] + 4 * c["f"]) * 2, "derived (no measurement found)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2, help="pairs per GPU per micro-step")
    ap.add_argument("--n-samples", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--forward-chunk", type=int, default=0, help="model.forward_chunk (0: all sequences at once)")
    args = ap.parse_args()
    from align.models import LLaDAConfig

    cfg = LLaDAConfig().to_dict()  # align's defaults are the published LLaDA-8B values
    c = count(cfg)
    facts = json.loads(
        (Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "published_facts.json").read_text()
    )["llada-8b-instruct"]
    size = facts["total_size"]
    assert count(facts["config"])["total"] * 2 == size, "parameter count does not match the published checkpoint"
    print(f"parameter count {c['total']:,} matches the published checkpoint ({size:,} bytes bf16)")
    P, G, V, d = c["total"], args.gpus, c["V"], c["d"]
    seqs = 2 * args.pairs * args.n_samples  # chosen + rejected, n noised copies each
    T = args.prompt + args.response
    tokens = seqs * T
    work, source = block_working_set_per_token(c)
    H = sum(1 / k for k in range(1, args.response + 1))
    rows = seqs * args.response / H
    chunk = CHUNK_ELEMENTS * 4  # the one [chunk, V] fp32 buffer of the scoring head
    head_fp32 = V * d * 4  # the LM head upcast to fp32 while scoring (fp32 log-probs from bf16 weights)
    full_logits = tokens * V * 4 * 3  # fp32 logits, log-softmax, gradient
    lora = lora_params(c, args.lora_r)
    chunked = 0 < args.forward_chunk < seqs
    active = args.forward_chunk * T if chunked else tokens  # tokens whose activations are alive at once
    kept_rows = rows * d * 2 if chunked else 0  # the scored rows' bf16 hidden states of every chunk
    print(
        f"\nLLaDA-8B: {P / 1e9:.3f}B parameters; micro-batch per GPU: {args.pairs} pairs x {args.n_samples} samples "
        f"x 2 responses = {seqs} sequences of {T} tokens ({tokens:,} tokens); time-free scores "
        f"~{rows:.0f} masked positions (E[m] = L/H_L = {args.response / H:.1f} per sequence)"
    )
    print(f"block working set in backward: {work / MiB:.3f} MiB per token, {source}")
    if chunked:
        print(
            f"model.forward_chunk={args.forward_chunk}: activations of {args.forward_chunk} of the {seqs} sequences "
            f"at a time ({active:,} tokens)"
        )
    print()
    # (name, bytes, source, phase): phase None is held throughout; the transient phases do not overlap (the
    # head scores after the last block's forward and before the first block's backward), so the peak is the
    # held memory plus the largest phase
    rows_lora = [
        ("base weights (bf16, replicated)", P * 2, "derived", None),
        (f"LoRA r={args.lora_r} params+grads+Adam (fp32, {lora / 1e6:.1f}M)", lora * 16, "derived", None),
        ("checkpointed layer inputs (bf16)", active * saved_inputs_per_token(c) + kept_rows, "derived", None),
        ("one block recomputed in backward", active * work, "measured per token", "block"),
        ("LM head fp32 copy + one chunk of logits while scoring", head_fp32 + chunk + rows * d * 4, "derived", "head"),
    ]
    per_pair_tokens = min(args.forward_chunk, 2 * args.n_samples) * T if chunked else tokens / args.pairs
    rows_full = [
        ("policy weights (bf16, /8)", P * 2 / G, "derived", None),
        ("reference copy (bf16, /8)", P * 2 / G, "derived", None),
        ("gradients (bf16, /8)", P * 2 / G, "derived", None),
        ("Adam master + moments (fp32, /8)", P * 12 / G, "derived", None),
        (
            "checkpointed layer inputs (bf16)",
            per_pair_tokens * saved_inputs_per_token(c) + kept_rows / args.pairs,
            "derived",
            None,
        ),
        ("one block recomputed in backward", per_pair_tokens * work, "measured per token", "block"),
        ("ZeRO-3 gathered blocks (~2 in flight, bf16)", 2 * c["per_layer"] * 2, "derived", "block"),
        ("ZeRO-3 LM head gathered in full (bf16)", V * d * 2, "derived", "head"),
        ("LM head fp32 copy + fp32 weight gradient, one chunk of logits", 2 * head_fp32 + chunk, "derived", "head"),
    ]

    def peak(rows_):
        held = sum(b for _, b, _, phase in rows_ if phase is None)
        phases = {phase for *_, phase in rows_ if phase}
        return held + max(sum(b for _, b, _, p in rows_ if p == phase) for phase in phases)

    for title, rows_ in [
        (f"LoRA, DDP / ZeRO-2, {G} GPUs, {args.pairs} pairs/GPU", rows_lora),
        (f"Full fine-tuning, ZeRO-3, {G} GPUs, 1 pair/GPU", rows_full),
    ]:
        print(f"| {title} | GiB per GPU | source | when |\n|---|---|---|---|")
        for name, b, how, phase in rows_:
            when = {None: "held", "block": "backward of a block", "head": "LM-head scoring"}[phase]
            print(f"| {name} | {b / GiB:.2f} | {how} | {when} |")
        print(f"| **peak** (held + the larger transient) | **{peak(rows_) / GiB:.1f}** | | |\n")
    print(
        f"Full [tokens, 126464] logits for the same LoRA micro-batch would add {full_logits / GiB:.1f} GiB "
        f"(fp32 logits, log-softmax and gradient)."
    )
    if MEASURED.exists():  # the estimate against the one measured configuration (1 GPU, LoRA, n=8, L=1024)
        data = json.loads(MEASURED.read_text())
        m = next(r for r in data["grid"] if r.get("step") == "align" and r.get("n") == 8 and r.get("T") == 1024)
        t1 = 2 * m["pairs"] * 8 * 1024
        rows1 = 2 * 8 * 512 / sum(1 / k for k in range(1, 513))
        est = P * 2 + lora * 16 + t1 * saved_inputs_per_token(c) + max(t1 * work, head_fp32 + chunk + rows1 * d * 4)
        print(
            f"\nCheck: LoRA on one GPU, {m['pairs']} pair, n=8, L=1024 ({t1:,} tokens): estimated {est / GiB:.1f} GiB, "
            f"measured {m['peak_gib']:.1f} GiB on {data['device']} (max_memory_allocated)."
        )


if __name__ == "__main__":
    main()
