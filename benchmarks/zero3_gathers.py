"""All-gathers per forward+backward of the scoring path under ZeRO-3, with every parameter partitioned.

ZeRO-3 gathers a module's parameters each time the module is called (and again for its backward). The LM
head is the largest module (1 GiB at LLaDA-8B); scoring masked positions in chunks used to call it once per
chunk, in forward and again in backward's recomputation. align now calls it once per forward
(``layers.OutputHead``). This counts the collective gathers of both ways on 2 CPU ranks:

    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 benchmarks/zero3_gathers.py --mode one
    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 benchmarks/zero3_gathers.py --mode chunk

"one" is the production path; "chunk" routes the same head through the chunk-by-chunk fallback, which is
what every head did before. Each mode runs in its own process (a fresh engine) for 3 steps; the counts are
those of the third (DeepSpeed traces the module order in its first steps and prefetches after).
"""

from __future__ import annotations

import argparse
import functools
import os

import torch
import torch.distributed as dist

COUNTS = {"n": 0}


def count_gathers() -> None:
    """Wrap every torch.distributed gather collective with a counter (DeepSpeed's comm layer calls these)."""
    for name in ("all_gather", "all_gather_into_tensor", "_all_gather_base", "all_gather_coalesced"):
        fn = getattr(dist, name, None)
        if fn is None:
            continue

        @functools.wraps(fn)
        def wrapped(*args, _fn=fn, **kwargs):
            COUNTS["n"] += 1
            return _fn(*args, **kwargs)

        setattr(dist, name, wrapped)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=8, help="LM-head chunks the scored rows are cut into")
    ap.add_argument("--mode", choices=("one", "chunk"), default="one")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument(
        "--reuse",
        type=int,
        default=0,
        help="stage3_max_reuse_distance and max_live_parameters (DeepSpeed's default 1e9 keeps a module "
        "gathered while it is reused soon; 0 releases it after every call)",
    )
    args = ap.parse_args()
    count_gathers()
    import deepspeed

    from align.models import load_model, unwrap

    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,
            "stage3_prefetch_bucket_size": 0,
            "stage3_max_reuse_distance": args.reuse,
            "stage3_max_live_parameters": args.reuse,
        },
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
    }
    torch.manual_seed(0)
    model = load_model("tiny:llada")
    engine, *_ = deepspeed.initialize(model=model, config=config, model_parameters=model.parameters())
    base = unwrap(engine.module)
    ids = torch.randint(3, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    score = torch.zeros(2, 16, dtype=torch.bool)
    score[:, 4:] = True  # 24 scored rows
    base.head_chunk_elements = -(-24 // args.chunks) * base.config.vocab_size
    if args.mode == "chunk":
        head = base.get_output_embeddings()
        base.output_head = lambda: lambda h: head(h)  # not an OutputHead: the chunk-by-chunk fallback
    for _ in range(args.steps):
        COUNTS["n"] = 0
        loss = engine(ids, score_mask=score, targets=ids).token_logprobs.sum()
        forward = COUNTS["n"]
        engine.backward(loss)
        backward = COUNTS["n"] - forward
        engine.step()
    if rank == 0:
        blocks = len(base.blocks())
        print(
            f"ZeRO-3, 2 ranks, every parameter partitioned; tiny LLaDA ({blocks} blocks), 24 scored rows in "
            f"{args.chunks} chunks, reuse distance {args.reuse:g}; step {args.steps}: head called "
            f"{'once' if args.mode == 'one' else 'per chunk'}: "
            f"all-gather calls forward {forward}, backward {backward}, total {forward + backward}"
        )
    dist.barrier()


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    main()
