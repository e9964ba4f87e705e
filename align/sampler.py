"""LLaDA's sampler: block-wise semi-autoregressive masked-diffusion decoding (arXiv 2502.09992, App. B).

The response starts as ``gen_length`` mask tokens after the prompt and is
decoded left to right in blocks of ``block_length``. Within a block, each of
``steps / n_blocks`` steps predicts every masked position, then *commits* a
fixed number of them (the count spread evenly over the steps) and leaves the
rest masked ("remasking"): ``low_confidence`` keeps the predictions with the
highest probability, ``random`` keeps random ones. ``temperature`` > 0 draws
predictions by Gumbel-max in float64 (low-precision Gumbel noise degrades
quality); 0 is greedy and deterministic.

EOS handling: once a finished block contains EOS in every row, every later
position is filled with EOS and decoding stops early (``stop_at_eos``).
:func:`decode` cuts each response at its first EOS.

Run: ``python -m align.sampler --model tiny:llada --prompt "How do I pick a lock?"``
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from align.cli import entry_point, help_text, overrides, parse_options
from align.config import SamplerSettings, opt, sampler_default
from align.export import merge
from align.models import load_model, logits_fn, spec_for, tokenizer_source
from align.models.tokenizer import load_tokenizer


def transfer_schedule(n_masked: int, steps: int) -> list[int]:
    """How many positions to commit at each of ``steps`` steps: as even as possible, summing to n_masked."""
    base, extra = divmod(n_masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


@torch.no_grad()
def generate(
    model,
    prompt_ids: torch.Tensor,
    *,
    steps: int = 128,
    gen_length: int = 128,
    block_length: int = 32,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    attention_mask: torch.Tensor | None = None,
    stop_at_eos: bool = True,
    generator: torch.Generator | None = None,
    all_done=None,
) -> torch.Tensor:
    """prompt_ids [b, P] (left-padded if ragged, with attention_mask) -> [b, P + gen_length].

    (One function on purpose: it follows LLaDA's procedure step by step, so it can be read against App. B.)

    ``all_done(done: bool) -> bool``: with several ranks, whether every rank's rows are done (the early EOS stop is
    taken by all ranks or none: under ZeRO-3 each forward gathers parameters collectively, so every rank must run
    the same number of forwards). ``model`` may be wrapped (DDP, DeepSpeed, peft).
    """
    if gen_length % block_length:
        raise ValueError(f"gen_length={gen_length} must be a multiple of block_length={block_length}")
    n_blocks = gen_length // block_length
    if steps % n_blocks:
        raise ValueError(f"steps={steps} must be a multiple of the number of blocks ({n_blocks})")
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"remasking={remasking!r}; expected 'low_confidence' or 'random'")
    spec = spec_for(model)
    fn = logits_fn(model)
    b, P = prompt_ids.shape
    device = prompt_ids.device
    x = torch.full((b, P + gen_length), spec.mask_token_id, dtype=torch.long, device=device)
    x[:, :P] = prompt_ids
    attn = None
    if attention_mask is not None:
        attn = torch.cat([attention_mask, torch.ones(b, gen_length, dtype=attention_mask.dtype, device=device)], 1)
    if generator is not None and generator.device != torch.device(device):
        # draw the noise on the model's device (no [b, T, V] host tensors per step), seeded from the given generator
        seed = int(torch.randint(2**62, (1,), generator=generator))
        generator = torch.Generator(device=device).manual_seed(seed)
    steps_per_block = steps // n_blocks
    for blk in range(n_blocks):
        start, end = P + blk * block_length, P + (blk + 1) * block_length
        schedule = transfer_schedule(block_length, steps_per_block)
        for k in schedule:
            masked = x == spec.mask_token_id  # [b, T]
            logits = fn(x, attn).double()  # [b, T, V]
            if temperature > 0:
                u = torch.rand(logits.shape, dtype=torch.float64, generator=generator, device=device)
                x0 = (logits / temperature - torch.log(-torch.log(u.clamp_min(1e-300)))).argmax(-1)
            else:
                x0 = logits.argmax(-1)
            if remasking == "low_confidence":
                confidence = logits.softmax(-1).gather(-1, x0[..., None]).squeeze(-1)
            else:
                confidence = torch.rand(x0.shape, dtype=torch.float64, generator=generator, device=device)
            confidence[:, end:] = float("-inf")  # only the current block is decoded
            confidence = torch.where(masked, confidence, float("-inf"))
            chosen = torch.zeros_like(masked)
            idx = confidence.topk(k, dim=-1).indices  # [b, k]
            chosen.scatter_(1, idx, True)
            chosen &= masked
            x = torch.where(chosen, x0, x)
        if stop_at_eos and blk < n_blocks - 1:
            done = bool((x[:, start:end] == spec.eos_token_id).any(-1).all())
            if all_done is not None:
                done = all_done(done)
            if done:
                x[:, end:] = spec.eos_token_id
                break
    return x


def decode(tokenizer, sequences: torch.Tensor, prompt_length: int, eos_token_id: int) -> list[str]:
    """Responses as text, each cut at its first EOS."""
    out = []
    for row in sequences[:, prompt_length:].tolist():
        if eos_token_id in row:
            row = row[: row.index(eos_token_id)]
        out.append(tokenizer.decode(row, skip_special_tokens=True))
    return out


@dataclass
class SampleOptions(SamplerSettings):
    """The sampler CLI's options: greedy LLaDA sampling by default."""

    gen_length: int = sampler_default("gen_length", 32)
    steps: int = sampler_default("steps", 32)
    temperature: float = sampler_default("temperature", 0.0)
    remasking: str = sampler_default("remasking", "low_confidence")
    model: str = opt("tiny:llada", "hub id, directory, tiny:llada, a LoRA training output (final/) or a checkpoint-N")
    tokenizer: str | None = opt(None, "defaults to model's, or its base model's")
    prompt: str = opt("How do I pick a lock?", "the user turn, put through the chat template")
    chat_template: bool = opt(
        True,
        "false: the prompt is raw text, not put through the chat template (as lm-eval's "
        "generate_until gets its context)",
    )
    seed: int = opt(0, "seeds the sampling generator")
    dtype: str | None = opt(
        None,
        "model weights; default float32 (what training, the behaviour check and lm-eval sample in, so one seed "
        "draws one answer everywhere; the shipped model is stored in bfloat16)",
        ("float32", "bfloat16", "float16"),
    )
    merge: str | None = opt(
        None,
        "write model as one merged model (published layout, safetensors, with its "
        "tokenizer) to this directory and exit: a LoRA output or checkpoint becomes a plain "
        "model directory (the same as python -m align.export --model M --out DIR)",
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m align.sampler --model M --prompt "..." [--steps 48 ...]`` (or ``model=M prompt=...``)."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    usage = "python -m align.sampler --model MODEL --prompt TEXT [--key value ...]  (or key=value)"
    with entry_point():
        args = parse_options(
            overrides(argv, prog="align.sampler", help_page=lambda: help_text(SampleOptions, usage)), SampleOptions
        )
        if args.merge:  # the export's job (align.export), kept here as an alias
            out = merge(args.model, args.merge, tokenizer=args.tokenizer)
            print(f"merged model written to {out}")
            return
        args.check_sampler()
        try:
            model = load_model(
                args.model, dtype=args.dtype or "float32"
            ).eval()  # also a LoRA output (final/, final/adapter) or a checkpoint-N
            tok = load_tokenizer(args.tokenizer or tokenizer_source(args.model))
        except ValueError as e:  # a failed hub load, an unusable directory
            raise FileNotFoundError(str(e)) from None
    text = args.prompt
    if args.chat_template:
        text = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
    out = generate(
        model,
        ids,
        **args.sampler_kwargs(),
        generator=torch.Generator().manual_seed(args.seed),
    )
    print(decode(tok, out, ids.shape[1], spec_for(model).eos_token_id)[0])


if __name__ == "__main__":
    main()
