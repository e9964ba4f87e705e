"""LLaDA sampler on tiny models: shapes, termination, determinism, schedule."""

import pytest
import torch

from align.models import load_model, spec_for
from align.sampler import generate, transfer_schedule


def test_transfer_schedule_is_even_and_complete():
    assert transfer_schedule(10, 4) == [3, 3, 2, 2]
    assert sum(transfer_schedule(32, 7)) == 32


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_shapes_and_every_mask_is_filled(family, remasking):
    model = load_model(f"tiny:{family}").eval()
    prompt = torch.randint(3, 500, (2, 5))
    out = generate(
        model,
        prompt,
        steps=8,
        gen_length=16,
        block_length=8,
        remasking=remasking,
        stop_at_eos=False,
        generator=torch.Generator().manual_seed(0),
        temperature=1.0,
    )
    assert out.shape == (2, 21)
    assert torch.equal(out[:, :5], prompt)
    assert not (out == spec_for(model).mask_token_id).any()


def test_temperature_zero_is_deterministic_and_seeded_sampling_reproducible():
    model = load_model("tiny:llada").eval()
    prompt = torch.randint(3, 500, (2, 5))
    kw = dict(steps=8, gen_length=16, block_length=8)
    assert torch.equal(generate(model, prompt, **kw), generate(model, prompt, **kw))
    a = generate(model, prompt, temperature=1.0, generator=torch.Generator().manual_seed(1), **kw)
    b = generate(model, prompt, temperature=1.0, generator=torch.Generator().manual_seed(1), **kw)
    c = generate(model, prompt, temperature=1.0, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_one_token_per_step_commits_in_confidence_order():
    """With steps == gen_length, exactly one position is committed per step."""
    model = load_model("tiny:llada").eval()
    spec = spec_for(model)
    prompt = torch.randint(3, 500, (1, 4))
    seen = []
    original = model.forward

    def spy(input_ids, *a, **k):
        seen.append(int((input_ids == spec.mask_token_id).sum()))
        return original(input_ids, *a, **k)

    model.forward = spy
    generate(model, prompt, steps=8, gen_length=8, block_length=8, stop_at_eos=False)
    assert seen == [8, 7, 6, 5, 4, 3, 2, 1]


def test_stops_after_a_block_ending_in_eos():
    model = load_model("tiny:llada").eval()
    spec = spec_for(model)
    calls = []
    original = model.forward

    def eos_everywhere(*a, **k):  # EOS becomes the argmax at every position
        calls.append(1)
        out = original(*a, **k)
        out.logits[..., spec.eos_token_id] += 100.0
        return out

    model.forward = eos_everywhere
    out = generate(model, torch.randint(3, 500, (1, 4)), steps=8, gen_length=16, block_length=4)
    assert len(calls) == 2  # first block only (8 steps / 4 blocks), then EOS fill
    assert (out[:, 4:] == spec.eos_token_id).all()

    with pytest.raises(ValueError, match="multiple of block_length"):
        generate(model, torch.ones(1, 3, dtype=torch.long), gen_length=10, block_length=4)
