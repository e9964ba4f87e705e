"""The one model boundary: what every masked-diffusion LM in align exposes.

``forward(input_ids, attention_mask=None)`` returns ``.logits`` [b, T, V] in
the family's published layout. ``forward(..., score_mask=, targets=)`` returns
``.token_logprobs`` [b, T]: ``log p(targets[i])`` at the positions of
``score_mask`` (0 elsewhere), with the logit shift applied (Dream: the
hidden state at i−1 predicts token i). The LM head then runs only on the
hidden states it needs, in chunks that are recomputed in backward, so
``[b, T, V]`` logits are never materialized. At LLaDA's 126,464-entry
vocabulary, the full logits would dominate training memory.

``forward_chunk`` (sequences; 0 = all at once) runs the scoring path's
backbone over the batch that many rows at a time (an embedding that trains
runs once, on the whole batch). With grad, each chunk is a
non-reentrant checkpoint: its activations are dropped after the forward and
recomputed, one chunk at a time, in the same backward, so a step holds the
activations of one chunk instead of all 2·b·n noised sequences, for one more
backbone forward. The LM head still runs once on all scored rows. It lives
inside ``forward`` so that DDP, DeepSpeed and peft still see one call.

Everything goes through ``forward`` so DDP, DeepSpeed and peft hooks see it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from align.models.layers import OutputHead, padding_mask, rotary_tables


@dataclass
class DiffusionLMOutput(ModelOutput):
    logits: torch.Tensor | None = None  # [b, T, V]
    token_logprobs: torch.Tensor | None = None  # [b, T] float32


def _target_logprobs(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden.float())  # [k, V] fp32 from fp32 hidden states (layers.OutputHead), never rounded to bf16
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def chunked_target_logprobs(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """log softmax(head(hidden))[targets] for hidden [K, d], targets [K] -> [K], chunk rows at a time."""
    out = []
    for h, t in zip(hidden.split(chunk), targets.split(chunk)):
        if torch.is_grad_enabled() and h.requires_grad:
            out.append(checkpoint(_target_logprobs, head, h, t, use_reentrant=False))
        else:
            out.append(_target_logprobs(head, h, t))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def align_logits(logits: torch.Tensor, shifted: bool) -> torch.Tensor:
    """Family layout -> position i predicts token i. Shifted (Dream): the output at i-1 predicts i."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1) if shifted else logits


class MaskedDiffusionLM(PreTrainedModel):
    """Base of the native LLaDA and Dream models. Subclasses define ``backbone`` and the output embeddings."""

    logits_shift: bool = False  # True: hidden state i-1 predicts token i (Dream)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # logits elements per LM-head chunk when scoring (2**25 fp32 = 128 MiB; about 265 rows at LLaDA's vocab)
    head_chunk_elements: int = 2**25
    # noised sequences per scoring chunk, each recomputed in backward (0: the whole batch at once); set by the
    # trainer from model.forward_chunk
    forward_chunk: int = 0

    # family accessors: token embedding, the list of blocks, the final norm, RoPE (head_dim, theta)
    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def final_norm(self) -> nn.Module:
        raise NotImplementedError

    def rope(self) -> tuple[int, float]:
        raise NotImplementedError

    def backbone(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Final normalized hidden states [b, T, d]."""
        return self._body(self.get_input_embeddings()(input_ids), attention_mask)

    def _body(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The blocks and the final norm over token embeddings x [b, T, d]."""
        head_dim, theta = self.rope()
        cos, sin = rotary_tables(x.shape[1], head_dim, theta, x.device)
        key_mask = padding_mask(attention_mask)
        for block in self.blocks():
            x = block(x, cos, sin, key_mask)  # positional: gradient checkpointing re-runs forward(*args)
        return self.final_norm()(x)

    def output_head(self):
        """The callable that maps hidden states [.., d] to logits [.., V]."""
        return self.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        score_mask: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        **unused,
    ) -> DiffusionLMOutput:
        if score_mask is None:
            return DiffusionLMOutput(logits=self.output_head()(self.backbone(input_ids, attention_mask)))
        if targets is None:
            raise ValueError("score_mask needs targets")
        score_mask = score_mask.bool()
        if self.logits_shift and score_mask[:, 0].any():
            raise ValueError("position 0 cannot be scored by a shifted-logits model (nothing precedes it)")
        source = score_mask
        if self.logits_shift:
            source = torch.zeros_like(score_mask)
            source[:, :-1] = score_mask[:, 1:]
        rows, chunk = input_ids.shape[0], self.forward_chunk
        if chunk <= 0 or rows <= chunk:
            hidden = self._hidden_rows(input_ids, attention_mask, source)
        else:
            grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
            embed = self.get_input_embeddings()
            # a trained embedding runs once, outside the chunks: its (vocabulary-sized) weight gradient is then
            # made once per backward, not once per chunk and summed (and under ZeRO reduce-scattered per chunk);
            # a frozen one runs inside them, so the chunks keep token ids for their recompute, not embeddings
            inputs = embed(input_ids) if grad and any(p.requires_grad for p in embed.parameters()) else input_ids
            parts = []
            for s in range(0, rows, chunk):
                part = (
                    inputs[s : s + chunk],
                    None if attention_mask is None else attention_mask[s : s + chunk],
                    source[s : s + chunk],
                )
                # with grad only the chunk's inputs are kept: backward re-runs its backbone when it reaches it
                parts.append(
                    checkpoint(self._hidden_rows, *part, use_reentrant=False) if grad else self._hidden_rows(*part)
                )
            hidden = torch.cat(parts)  # the chunks' rows in the batch's row-major order
        # hidden[source] and targets[score_mask] enumerate positions in the same row-major order
        head_chunk = max(1, self.head_chunk_elements // self.config.vocab_size)
        head = self.output_head()
        if isinstance(head, OutputHead):  # one module call: one ZeRO-3 gather, one [chunk, V] buffer in backward
            logp = head(hidden, targets=targets[score_mask], chunk=head_chunk)  # [K]
        else:  # tied weights, or a head wrapped by peft: chunks recomputed by checkpointing
            logp = chunked_target_logprobs(head, hidden, targets[score_mask], head_chunk)
        out = torch.zeros(score_mask.shape, dtype=torch.float32, device=hidden.device)
        out[score_mask] = logp
        return DiffusionLMOutput(token_logprobs=out)

    def _hidden_rows(self, inputs, attention_mask, source) -> torch.Tensor:
        """The final hidden states at ``source`` [K, d], row-major, from token ids [b, T] or their embeddings."""
        x = inputs if inputs.is_floating_point() else self.get_input_embeddings()(inputs)
        return self._body(x, attention_mask)[source]

    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(self.config, "init_std", None) or getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif hasattr(module, "weight") and module.__class__.__name__ == "RMSNorm":
            nn.init.ones_(module.weight)


def unwrap(model, *, keep_peft: bool = False):
    """The model inside DDP / DeepSpeed wrappers (their ``.module``; a DeepSpeed engine forwards attribute lookups
    to its module, so the test is the wrapper's type, not an attribute) and inside peft: the native
    MaskedDiffusionLM (TypeError for any other model). ``keep_peft``: stop at the peft model (or the bare model
    when there is none), whatever its class."""
    from peft import PeftModel

    while True:
        if isinstance(model, PeftModel):
            if keep_peft:
                return model
            model = model.get_base_model()
        elif isinstance(model, MaskedDiffusionLM):
            return model
        elif isinstance(model, torch.nn.Module) and "module" in model._modules:  # DDP, DeepSpeed engine
            model = model.module
        elif keep_peft:
            return model
        else:
            raise TypeError(f"not a masked-diffusion LM: {type(model).__name__}")
