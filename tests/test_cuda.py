"""CUDA-only checks (skipped without a GPU): device hygiene of the sampler and estimators, one bf16 DPO step.

On a GPU machine: ``pytest -q tests/test_cuda.py``.
"""

import pytest
import torch

from align import estimators as E
from align.models import load_model, logits_fn, spec_for, token_scorer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CHAT = "data/tiny_chat"


def test_sampler_runs_on_the_device_and_is_seeded():
    from align.sampler import generate

    model = load_model(CHAT, dtype="bfloat16").cuda().eval()
    ids = torch.tensor([[1, 2, 3, 4]], device="cuda")
    out = [generate(model, ids, steps=16, gen_length=16, block_length=16, temperature=1.0, remasking="random",
                    generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    assert out[0].device.type == "cuda" and torch.equal(out[0], out[1])


def test_enumerate_bound_on_the_device():
    model = load_model(CHAT, dtype="float32").cuda().eval()
    spec = spec_for(model)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]], device="cuda")
    resp = torch.tensor([[False, False, True, True, True, True]], device="cuda")
    bound = E.enumerate_bound(logits_fn(model), ids, resp, mask_token_id=spec.mask_token_id)
    assert bound.device.type == "cuda" and torch.isfinite(bound).all()


def test_one_bf16_dpo_step_moves_the_adapter():
    from align.models import add_lora

    model = add_lora(load_model(CHAT, dtype="bfloat16"), r=4, alpha=8, dropout=0.0).cuda()
    spec = spec_for(model)
    chosen = torch.tensor([[1, 2, 3, 4, 5, 6, 7]], device="cuda")
    rejected = torch.tensor([[1, 2, 3, 9, 8, 7, 6]], device="cuda")
    resp = torch.tensor([[False, False, False, True, True, True, True]], device="cuda")
    policy = token_scorer(model)

    def reference(*args):
        with model.disable_adapter(), torch.no_grad():
            return policy(*args)

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    terms = E.dpo_terms(policy, reference, chosen, rejected, resp, n_samples=2, mask_token_id=spec.mask_token_id,
                        generator=torch.Generator().manual_seed(0))
    loss = -torch.nn.functional.logsigmoid(0.1 * terms.margin.mean(-1)).mean()
    loss.backward()
    opt.step()
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(after, before))
