"""One DPO optimizer step: align's step against the naive step public implementations take, in one run.

The naive step is written as public LLaDA-DPO code does it: for each Monte Carlo sample, chosen and rejected
in separate forwards, each a full model forward that materializes ``[B, T, V]`` logits, then cross-entropy
over the masked positions; every term draws its own masks (decoupled); the reference is a separate full copy
(full fine-tuning) or the policy with its adapter disabled (LoRA); one backward through all the samples'
graphs at the end. align's step is the trainer's: ``estimators.dpo_terms`` runs the policy once over all
2·B·n noised sequences with the LM head only at masked positions (chunked, recomputed in backward), coupled
masks, and the reference once without grad. Same network (align's LLaDA class), same data, same n, same
estimator, same optimizer (AdamW on the trainable parameters).

Each variant runs in its own process. Time is the median of ``--repeats`` steps after one warm-up step. Peak
memory is what a step allocates above what was held before it (model, optimizer state, a precomputed
reference): ``torch.cuda.max_memory_allocated`` on a GPU; on CPU the peak of live tensor bytes over one
more, untimed step, counted op by op (the process's RSS also holds what the C allocator keeps after frees,
and moved by tens of MiB between identical runs).

    python benchmarks/dpo_step.py                 # LoRA and full fine-tuning, with and without checkpointing
    python benchmarks/dpo_step.py --variant ours --lora --ckpt    # one variant; prints one JSON line

A third variant, ``precomputed``, is align's step with the reference terms computed beforehand
(``train.precompute_ref_log_probs``): the step runs the policy only; the no-grad precompute of the same
draws is timed separately (done before each epoch in larger batches). A fourth, ``lean``, is align's step
with the memory settings ``model.forward_chunk`` (``--lean-chunk`` noised sequences per backbone chunk,
recomputed in backward) and ``model.head_chunk_mib`` (``--lean-head-mib``): activation memory of one chunk
instead of all 2·B·n sequences, for one more policy forward.

``gpu_step.py`` reuses the step functions here at LLaDA-8B size.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
import weakref

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from align import estimators as E
from align.masking import draw_masks, noise
from align.models import LLaDAConfig, LLaDAModelLM, adapter_in_base_dtype, add_lora, set_scoring_memory, token_scorer
from align.optim import adamw

BETA = 0.1


def build(
    config: LLaDAConfig, *, device, dtype=torch.float32, lora_r: int | None = 16, ckpt: bool = True, seed: int = 0
):
    """(policy, reference): the reference is None for LoRA (the adapter disabled), a frozen copy otherwise."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LLaDAModelLM(config)  # random weights, built in place on the device
    finally:
        torch.set_default_dtype(previous)
    model.config._attn_implementation = "sdpa"
    reference = None
    if lora_r is None:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    if ckpt:
        enable_checkpointing(model)
    if lora_r is not None:
        model = add_lora(model, r=lora_r, alpha=2 * lora_r, dropout=0.0)  # fp32 adapter weights (peft's default)
    model.train()
    return model, reference


def enable_checkpointing(model) -> None:
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def make_batch(pairs: int, prompt: int, response: int, config: LLaDAConfig, device, seed: int = 0) -> dict:
    """Random pairs sharing a prompt: chosen/rejected [B, T] and the response mask."""
    g = torch.Generator().manual_seed(seed)
    high = min(config.mask_token_id, config.vocab_size) - 1  # never the mask token
    p = torch.randint(0, high, (pairs, prompt), generator=g)
    chosen = torch.cat([p, torch.randint(0, high, (pairs, response), generator=g)], 1)
    rejected = torch.cat([p, torch.randint(0, high, (pairs, response), generator=g)], 1)
    resp = torch.zeros(pairs, prompt + response, dtype=torch.bool)
    resp[:, prompt:] = True
    return {"chosen": chosen.to(device), "rejected": rejected.to(device), "response_mask": resp.to(device)}


def reference_scorer(model, reference):
    if reference is not None:
        return token_scorer(reference)
    policy = token_scorer(model)

    def score(*args):
        with model.disable_adapter():
            return policy(*args)

    return score


def base_dtype(model, reference) -> torch.dtype | None:
    """The trainer's adapter compute dtype: the base's for LoRA over bf16/fp16 (align.trainer), else None."""
    if reference is not None or not hasattr(model, "get_base_model"):
        return None
    dtype = model.get_base_model().dtype
    return dtype if dtype != torch.float32 else None


def ours_step(
    model,
    reference,
    batch: dict,
    *,
    n: int,
    estimator: str,
    mask_token_id: int,
    opt,
    seed: int = 0,
    adapter_fp32_compute: bool = False,
):
    """The trainer's step (align.dpo): coupled draws, one policy and one reference call, masked-only scoring;
    LoRA over a bf16 base computes the adapter in bf16 (``adapter_fp32_compute``: peft's fp32 path instead)."""
    with adapter_in_base_dtype(model, None if adapter_fp32_compute else base_dtype(model, reference)):
        terms = E.dpo_terms(
            token_scorer(model),
            reference_scorer(model, reference),
            batch["chosen"],
            batch["rejected"],
            batch["response_mask"],
            n_samples=n,
            estimator=estimator,
            mask_token_id=mask_token_id,
            generator=torch.Generator().manual_seed(seed),
        )
        loss = -F.logsigmoid(BETA * terms.margin.mean(-1)).mean()
        loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def _naive_estimate(model, ids, resp, *, estimator: str, mask_token_id: int, generator) -> torch.Tensor:
    """One sample of log p(response) for each row, from full logits: [B]."""
    draw = draw_masks(resp, 1, estimator, generator)  # its own mask: decoupled
    masked = draw.masked[:, 0]  # [B, T]
    logits = model(noise(ids, masked, mask_token_id)).logits  # [B, T, V], every position
    nll = F.cross_entropy(logits[masked].float(), ids[masked], reduction="none")  # masked positions
    logp = torch.zeros(masked.shape, dtype=nll.dtype, device=nll.device).masked_scatter(masked, -nll)
    return draw.weight[:, 0].to(logp.dtype) * logp.sum(-1)


def naive_step(model, reference, batch: dict, *, n: int, estimator: str, mask_token_id: int, opt, seed: int = 0):
    """The public implementations' step: per sample, per response, per model a full-logits forward."""
    g = torch.Generator().manual_seed(seed)
    ref_model = reference if reference is not None else model
    margins = []
    for _ in range(n):
        terms = {}
        for name in ("chosen", "rejected"):
            ids = batch[name]
            terms["policy", name] = _naive_estimate(
                model, ids, batch["response_mask"], estimator=estimator, mask_token_id=mask_token_id, generator=g
            )
            with torch.no_grad():
                if reference is None:
                    with model.disable_adapter():
                        terms["reference", name] = _naive_estimate(
                            ref_model,
                            ids,
                            batch["response_mask"],
                            estimator=estimator,
                            mask_token_id=mask_token_id,
                            generator=g,
                        )
                else:
                    terms["reference", name] = _naive_estimate(
                        ref_model,
                        ids,
                        batch["response_mask"],
                        estimator=estimator,
                        mask_token_id=mask_token_id,
                        generator=g,
                    )
        margins.append(
            (terms["policy", "chosen"] - terms["reference", "chosen"])
            - (terms["policy", "rejected"] - terms["reference", "rejected"])
        )
    loss = -F.logsigmoid(BETA * torch.stack(margins, -1).mean(-1)).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def precompute_reference(model, reference, batch: dict, *, n: int, estimator: str, mask_token_id: int, seed: int):
    """The reference terms of ``ours_step``'s draws for ``seed``, without grad: what
    ``train.precompute_ref_log_probs`` computes before the epoch."""
    with adapter_in_base_dtype(model, base_dtype(model, reference)):
        return E.dpo_reference_terms(
            reference_scorer(model, reference),
            batch["chosen"],
            batch["rejected"],
            batch["response_mask"],
            n_samples=n,
            estimator=estimator,
            mask_token_id=mask_token_id,
            generator=torch.Generator().manual_seed(seed),
        )


def precomputed_step(
    model, reference, batch: dict, *, n: int, estimator: str, mask_token_id: int, opt, seed: int = 0, cache: dict
):
    """``ours_step`` with the reference terms read from ``cache`` (train.precompute_ref_log_probs): policy only."""
    with adapter_in_base_dtype(model, base_dtype(model, reference)):
        terms = E.dpo_terms(
            token_scorer(model),
            None,
            batch["chosen"],
            batch["rejected"],
            batch["response_mask"],
            n_samples=n,
            estimator=estimator,
            mask_token_id=mask_token_id,
            generator=torch.Generator().manual_seed(seed),
            reference_terms=cache[seed],
        )
        loss = -F.logsigmoid(BETA * terms.margin.mean(-1)).mean()
        loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


STEPS = {"ours": ours_step, "naive": naive_step, "precomputed": precomputed_step, "lean": ours_step}


class TensorBytes(TorchDispatchMode):
    """Peak bytes of the CPU tensor storages created while active and still alive (CUDA's ``max_memory_allocated``
    for the CPU, where the process's RSS also counts what the C allocator keeps after a free)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._sizes: dict[int, int] = {}

    def _freed(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = id(storage)
                # a new storage: not an input's (views, in-place and out= results alias one), not counted yet
                if key not in self._sizes and key not in inputs:
                    self._sizes[key] = storage.nbytes()
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._freed, key)
        return out


def measure(step, *, device, repeats: int, warmup: int = 1) -> dict:
    """Median step time of ``repeats`` steps after ``warmup`` steps, and the step's peak memory: what it
    allocates above what was held before it (model, optimizer state made in the warm-up, a precomputed
    reference). On CUDA ``max_memory_allocated`` over ``memory_allocated``; on CPU the peak of live tensor
    bytes over one more step, counted op by op (:class:`TensorBytes`; not timed)."""
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    if cuda:
        peak_total = torch.cuda.max_memory_allocated()
        peak = peak_total - base
    else:
        peak_total = None
        with TensorBytes() as counter:
            step()
        peak = counter.peak
    return {"step_s": statistics.median(times), "times": times, "peak_bytes": peak, "peak_total_bytes": peak_total}


def cpu_config(args) -> LLaDAConfig:
    V = args.vocab
    return LLaDAConfig(
        d_model=args.hidden,
        n_heads=4,
        n_layers=args.layers,
        mlp_hidden_size=3 * args.hidden,
        vocab_size=V,
        embedding_size=V,
        mask_token_id=V - 128,
        eos_token_id=V - 383,
        pad_token_id=V - 383,
    )


def run_variant(args) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(args.threads) if args.threads else None
    config = cpu_config(args)
    model, reference = build(config, device=device, lora_r=args.lora_r if args.lora else None, ckpt=args.ckpt)
    if args.variant == "lean":  # model.forward_chunk / model.head_chunk_mib, on the policy and a reference copy
        for m in (model, reference) if reference is not None else (model,):
            set_scoring_memory(m, forward_chunk=args.lean_chunk, head_chunk_mib=args.lean_head_mib)
    opt = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-5)  # the trainer's optimizer
    batch = make_batch(args.pairs, args.prompt, args.response, config, device)
    step = STEPS[args.variant]
    extra, pre = {}, {}
    if args.variant == "precomputed":  # the reference terms of every step's draws, computed (and timed) first
        cuda = device == "cuda"
        cache, times = {}, []
        for seed in range(2 + args.repeats):  # warm-up, timed steps, the memory step
            t = time.perf_counter()
            cache[seed] = precompute_reference(
                model,
                reference,
                batch,
                n=args.n_samples,
                estimator=args.estimator,
                mask_token_id=config.mask_token_id,
                seed=seed,
            )
            torch.cuda.synchronize() if cuda else None
            times.append(time.perf_counter() - t)
        extra = {"cache": cache}
        pre = {"precompute_s": statistics.median(times[1:])}
    seeds = iter(range(10**6))
    result = measure(
        lambda: step(
            model,
            reference,
            batch,
            n=args.n_samples,
            estimator=args.estimator,
            mask_token_id=config.mask_token_id,
            opt=opt,
            seed=next(seeds),
            **extra,
        ),
        device=device,
        repeats=args.repeats,
    )
    return {"variant": args.variant, "lora": args.lora, "ckpt": args.ckpt, **result, **pre}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=sorted(STEPS), help="run one variant in this process and print JSON")
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--ckpt", action="store_true", help="gradient checkpointing")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=126464, help="LLaDA's vocabulary size")
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--response", type=int, default=96)
    ap.add_argument("--n-samples", type=int, default=4)
    ap.add_argument("--estimator", default="time_free")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--lean-chunk", type=int, default=2, help="lean variant: model.forward_chunk (sequences)")
    ap.add_argument("--lean-head-mib", type=float, default=32, help="lean variant: model.head_chunk_mib")
    args = ap.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    shared = [
        f"--{k.replace('_', '-')}={getattr(args, k)}"
        for k in (
            "lora_r",
            "hidden",
            "layers",
            "vocab",
            "pairs",
            "prompt",
            "response",
            "n_samples",
            "estimator",
            "repeats",
            "threads",
            "lean_chunk",
            "lean_head_mib",
        )
    ]
    print(
        f"# {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; LLaDA hidden "
        f"{args.hidden}, {args.layers} layers, vocab {args.vocab:,}; {args.pairs} pair(s) of {args.prompt}+"
        f"{args.response} tokens, n={args.n_samples} ({args.estimator}); median of {args.repeats} steps\n"
    )
    names = {
        "naive": "naive",
        "ours": "align",
        "precomputed": "align, reference precomputed",
        "lean": f"align, forward_chunk={args.lean_chunk}, head_chunk_mib={args.lean_head_mib:g}",
    }
    print(
        "| fine-tuning | checkpointing | step | step s | peak MiB | speed-up over naive | memory ratio naive/this |\n"
        "|---|---|---|---|---|---|---|"
    )
    rows = []
    for lora in (True, False):
        for ckpt in (False, True):
            res = {}
            for variant in names:
                cmd = (
                    [sys.executable, __file__, f"--variant={variant}", *shared]
                    + (["--lora"] if lora else [])
                    + (["--ckpt"] if ckpt else [])
                )
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                r = res[variant] = json.loads(out.strip().splitlines()[-1])
                naive = res["naive"]
                pre = f" (+ {r['precompute_s']:.2f} precompute)" if "precompute_s" in r else ""
                print(
                    f"| {'LoRA r=' + str(args.lora_r) if lora else 'full'} | {'on' if ckpt else 'off'} | "
                    f"{names[variant]} | {r['step_s']:.2f}{pre} | {r['peak_bytes'] / 2**20:.0f} | "
                    f"{naive['step_s'] / r['step_s']:.1f}x | {naive['peak_bytes'] / max(r['peak_bytes'], 1):.1f}x |",
                    flush=True,
                )
            rows.append(res)
    return rows


if __name__ == "__main__":
    main()
