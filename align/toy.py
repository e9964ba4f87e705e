"""Enumerable toy models for exact estimator tests and the variance benchmark (docs/method.md §4).

:class:`ToyJoint` is an explicit joint distribution over all ``V**T`` token
sequences. Its :meth:`~ToyJoint.logits_fn` is the *oracle* masked-diffusion
model: at a masked position it returns the exact conditional marginal given
the visible tokens, computed by enumeration. For such a model the
masked-diffusion bound equals ``log p(y | x)`` exactly, so every estimator's
mean must match :meth:`~ToyJoint.log_prob` (arXiv 2510.24088, Cor. 4.3).

:class:`TinyDenoiser` is a small random bidirectional transformer with the
same ``logits_fn`` interface, for checks against a model that is not an
oracle (its bound is computed with ``estimators.enumerate_bound``).
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn


class ToyJoint:
    """A joint distribution over sequences of length ``T`` with vocabulary ``range(V)``.

    The mask token is ``V`` (outside the vocabulary); logits have ``V + 1``
    columns with the mask column at −inf. Rows longer than ``T`` are read as
    right padding: positions ≥ T are ignored (uniform logits there).
    """

    def __init__(self, log_joint: torch.Tensor, V: int, T: int):
        self.V, self.T = V, T
        self.mask_token_id = V
        self.log_joint = log_joint.double().log_softmax(0)  # [V**T]
        self.seqs = torch.tensor(list(itertools.product(range(V), repeat=T)), dtype=torch.long)  # [S, T]
        self.onehot = nn.functional.one_hot(self.seqs, V).double()  # [S, T, V]

    @classmethod
    def random(cls, V: int, T: int, seed: int, temperature: float = 1.5) -> ToyJoint:
        g = torch.Generator().manual_seed(seed)
        return cls(torch.randn(V**T, generator=g, dtype=torch.float64) * temperature, V, T)

    def perturbed(self, scale: float, seed: int) -> ToyJoint:
        """A nearby distribution: log-joint plus N(0, scale²) noise (a 'reference' for this 'policy')."""
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(self.log_joint.shape, generator=g, dtype=torch.float64) * scale
        return ToyJoint(self.log_joint + noise, self.V, self.T)

    def log_prob(self, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(response | context)`` for each row: [b] float64."""
        out = torch.empty(input_ids.shape[0], dtype=torch.float64)
        for i in range(input_ids.shape[0]):
            ids, resp = input_ids[i, : self.T].cpu(), response_mask[i, : self.T].cpu().bool()
            match_all = (self.seqs == ids).all(-1)
            match_ctx = ((self.seqs == ids) | resp).all(-1)
            out[i] = torch.logsumexp(self.log_joint[match_all], 0) - torch.logsumexp(self.log_joint[match_ctx], 0)
        return out

    def sample(self, n: int, seed: int) -> torch.Tensor:
        """n sequences drawn from the joint: [n, T]."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.multinomial(self.log_joint.exp(), n, replacement=True, generator=g)
        return self.seqs[idx]

    @torch.no_grad()
    def logits_fn(self, noised: torch.Tensor, attention_mask: torch.Tensor | None = None, chunk: int = 2048):
        """Oracle logits [N, T_in, V+1]: log p(token at i | visible tokens), by enumeration.

        Monte Carlo batches repeat a few noised rows many times (a short response has 2^L mask patterns), so each
        distinct row is enumerated once and the result shared by its copies."""
        N, T_in = noised.shape
        out = torch.zeros(N, T_in, self.V + 1, dtype=torch.float64)
        out[..., self.V] = float("-inf")
        x, inverse = torch.unique(noised[:, : self.T].cpu(), dim=0, return_inverse=True)
        joint = self.log_joint.exp()
        logp = torch.empty(len(x), self.T, self.V, dtype=torch.float64)
        for s in range(0, len(x), chunk):
            rows = x[s : s + chunk]  # [n, T]
            visible = rows != self.mask_token_id
            consistent = ((self.seqs[None] == rows[:, None]) | ~visible[:, None]).all(-1)  # [n, S]
            w = consistent.double() * joint  # [n, S]
            marg = torch.einsum("ns,stv->ntv", w, self.onehot)  # [n, T, V]
            logp[s : s + chunk] = (marg / marg.sum(-1, keepdim=True)).log()
        out[:, : self.T, : self.V] = logp[inverse]
        return out.to(noised.device)


class TinyDenoiser(nn.Module):
    """A random bidirectional transformer over ``vocab + 1`` tokens (the last id is the mask).

    Honours ``attention_mask`` as a key padding mask; positions are absolute.
    """

    def __init__(self, vocab: int, max_len: int = 32, d: int = 32, layers: int = 2, heads: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.mask_token_id = vocab
        self.embed = nn.Embedding(vocab + 1, d)
        self.pos = nn.Embedding(max_len, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab + 1)
        self.double().eval()

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        pad = None if attention_mask is None else ~attention_mask.bool()
        return self.head(self.encoder(h, src_key_padding_mask=pad))

    def perturbed(self, scale: float, seed: int) -> TinyDenoiser:
        """A copy with every weight plus N(0, scale²) noise."""
        other = copy.deepcopy(self)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in other.parameters():
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
        return other
