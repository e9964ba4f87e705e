"""Model layer: published key mapping, loading, saving, LoRA, scoring, checkpointing."""

import json
from pathlib import Path

import pytest
import torch

from align import estimators as E
from align.export import save_published
from align.models import (
    DreamConfig,
    DreamModel,
    LLaDAConfig,
    LLaDAModelLM,
    add_lora,
    align_logits,
    checkpoint_blocks,
    compile_blocks,
    load_model,
    logits_fn,
    set_scoring_memory,
    spec_for,
    token_scorer,
    unwrap,
)

# Facts of the published checkpoints (config, weight names, size), written by tests/fixtures/make_published_facts.py
PUBLISHED = json.loads((Path(__file__).resolve().parent / "fixtures" / "published_facts.json").read_text())


def _published(name):
    facts = PUBLISHED[name]
    names = {p.format(i=i) for p in facts["weight_patterns"] for i in range(facts["n_layers"])}
    assert len(names) == facts["n_weights"]
    return facts["config"], {"weight_map": dict.fromkeys(names), "metadata": {"total_size": facts["total_size"]}}


@pytest.mark.parametrize(
    "name,config_cls,model_cls,n_names",
    [
        ("llada-8b-instruct", LLaDAConfig, LLaDAModelLM, 291),
        ("dream-v0-instruct-7b", DreamConfig, DreamModel, 339),
    ],
)
def test_published_weight_names_and_size_map_exactly(name, config_cls, model_cls, n_names):
    config_dict, index = _published(name)
    config = config_cls(**{k: v for k, v in config_dict.items() if k not in ("model_type", "auto_map")})
    with torch.device("meta"):
        model = model_cls(config)
    ours = model.state_dict()
    published = set(index["weight_map"])
    assert len(published) == n_names
    assert set(ours) == published, (sorted(set(ours) - published)[:5], sorted(published - set(ours))[:5])
    bf16_bytes = sum(t.numel() for t in ours.values()) * 2  # the checkpoints are bfloat16
    assert bf16_bytes == index["metadata"]["total_size"]


def test_llada_checkpoint_directory_loads_natively_without_remote_code(tmp_path):
    """A directory with the published config.json (model_type llada, auto_map to remote code) and
    weights under published names loads into the native class. Shrunk so it fits in a test."""
    config_dict, _ = _published("llada-8b-instruct")
    small = dict(
        config_dict,
        d_model=64,
        n_heads=4,
        n_kv_heads=4,
        n_layers=2,
        mlp_hidden_size=96,
        vocab_size=300,
        embedding_size=300,
        mask_token_id=299,
        eos_token_id=298,
        pad_token_id=298,
    )
    reference = LLaDAModelLM(LLaDAConfig(**{k: v for k, v in small.items() if k not in ("model_type", "auto_map")}))
    reference.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(small))  # exactly the published fields
    model = load_model(str(tmp_path), dtype="float32")
    assert isinstance(model, LLaDAModelLM) and model.config.auto_map == config_dict["auto_map"]
    ids = torch.randint(0, 300, (2, 7))
    torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    assert spec_for(model).mask_token_id == 299


def test_unknown_model_type_needs_trust_remote_code(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mystery_mdm"}))
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_save_load_round_trip_in_published_layout(tmp_path, family):
    model = load_model(f"tiny:{family}")
    save_published(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == {"llada": "llada", "dream": "Dream"}[family]
    assert config["architectures"] == {"llada": ["LLaDAModelLM"], "dream": ["DreamModel"]}[family]
    if family == "llada":
        assert {"d_model", "n_layers", "n_heads", "mlp_hidden_size", "mask_token_id"} <= set(config)
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "model.safetensors")) == set(model.state_dict())
    reloaded = load_model(str(tmp_path), dtype="float32")
    ids = torch.randint(0, 500, (2, 9))
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)


def test_lora_merged_save_round_trip(tmp_path):
    model = add_lora(load_model("tiny:llada"), r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    ids = torch.randint(0, 500, (2, 9))
    expected = model(ids).logits
    save_published(model, tmp_path, merged=True, adapter=True)
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    torch.testing.assert_close(load_model(str(tmp_path), dtype="float32")(ids).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_lora_trains_adapter_only_and_disabled_adapter_is_base(family):
    base_logits_model = load_model(f"tiny:{family}")
    ids = torch.randint(0, 500, (2, 9))
    base_logits = base_logits_model(ids).logits.detach()
    model = add_lora(base_logits_model, r=4, alpha=8, dropout=0.0)
    lora_names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert lora_names and all("lora_" in n for n in lora_names)
    if family == "llada":  # the LM head shares the name ff_out but must not be adapted
        assert not any("transformer.ff_out" in n for n in lora_names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        model(ids).logits.logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(lora_names)
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    with model.disable_adapter():
        torch.testing.assert_close(model(ids).logits, base_logits)
    assert not torch.allclose(model(ids).logits, base_logits)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_bidirectional_last_token_changes_first_position(family):
    model = load_model(f"tiny:{family}")
    ids = torch.randint(3, 500, (1, 8))
    other = ids.clone()
    other[0, -1] = (ids[0, -1] + 7) % 500
    assert not torch.allclose(model(ids).logits[0, 0], model(other).logits[0, 0])


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_padding_mask_invariance(family):
    model = load_model(f"tiny:{family}")
    ids = torch.randint(3, 500, (1, 8))
    padded = torch.cat([ids, torch.randint(3, 500, (1, 5))], 1)
    attn = torch.cat([torch.ones(1, 8), torch.zeros(1, 5)], 1).long()
    torch.testing.assert_close(
        model(padded, attention_mask=attn).logits[:, :8], model(ids).logits, atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_position_scoring_equals_full_logits(family, dtype):
    model = load_model(f"tiny:{family}", dtype=dtype)
    model.head_chunk_elements = 5 * model.config.vocab_size  # several chunks of 5 rows
    ids = torch.randint(3, 500, (3, 12))
    score = torch.rand(3, 12) < 0.4
    score[:, 0] = False
    hidden = model.backbone(ids, None).double()  # the final hidden states, in the model's dtype, then exact
    logits = align_logits(hidden @ model.get_output_embeddings().weight.double().T, model.logits_shift)
    exact = logits.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
    got = model(ids, score_mask=score, targets=ids).token_logprobs
    # the head runs in fp32 on those hidden states, bf16 weights or not: fp32 round-off only
    torch.testing.assert_close(got, torch.where(score, exact, 0.0).float(), atol=2e-5, rtol=1e-5)


def _held_bytes(fn) -> int:
    """Bytes of activations autograd keeps from ``fn()`` until backward (parameters excluded)."""
    held = {}

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(held.values())


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("setup", ["plain", "lora+checkpointing"])
def test_forward_chunk_gives_the_same_log_probs_and_gradients_and_holds_one_chunk(family, setup):
    """model.forward_chunk: the backbone over 3 of the 8 noised sequences at a time, each chunk recomputed in
    backward (nested inside per-block checkpointing too). Same token log-probs and gradients to fp32 round-off;
    what autograd holds between forward and backward drops to about nothing (only the chunks' inputs and
    scored rows), and the backbone runs once more per chunk in backward."""
    torch.manual_seed(0)
    results = []
    for chunk in (0, 3):
        model = load_model(f"tiny:{family}")
        if setup != "plain":
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            model = add_lora(model, r=4, alpha=8, dropout=0.0)
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(p, std=0.05)  # a live adapter: its gradients flow through the chunks
        set_scoring_memory(model, forward_chunk=chunk, head_chunk_mib=0.01)  # and a head chunk of a few rows
        calls, embeds = [], []
        unwrap(model).final_norm().register_forward_hook(lambda *a: calls.append(1))  # once per backbone run
        model.get_input_embeddings().register_forward_hook(lambda *a: embeds.append(1))
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(3, 500, (8, 16), generator=g)
        score = torch.rand(8, 16, generator=g) < 0.5
        score[:, 0] = False
        logp, held = _held_bytes(lambda: token_scorer(model)(ids, None, ids, score))
        forward_calls = len(calls)
        (logp * torch.linspace(-1, 1, 16)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
        results.append((logp.detach(), grads, held, forward_calls, len(calls)))
        # a trained embedding (plain) runs once on the whole batch, outside the chunks; a frozen one (LoRA) inside
        # each chunk and its recompute, so the chunks keep token ids
        assert len(embeds) == (1 if setup == "plain" or not chunk else 6), len(embeds)
    (whole, g_whole, held_whole, f0, c0), (chunked, g_chunked, held_chunked, f1, c1) = results
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-5)
    assert g_whole.keys() == g_chunked.keys() and len(g_whole) > 0
    for name in g_whole:
        torch.testing.assert_close(g_chunked[name], g_whole[name], atol=1e-6, rtol=1e-5, msg=name)
    assert f0 == 1 and f1 == 3  # 8 rows in chunks of 3, 3, 2
    # backward re-ran each chunk's backbone once; per-block checkpointing re-runs blocks, not the final norm
    assert c0 == f0 and c1 - f1 == 3
    assert held_chunked < held_whole / 4, (held_chunked, held_whole)


def _lora_step(family: str, prepare, *, rows: int = 4, count: bool = True) -> tuple[torch.Tensor, dict, list]:
    """Token log-probs, adapter gradients and, per block, how often it ran in backward (``count``: hooks whose
    side effect would stop dynamo from compiling the block), for one scoring call of a LoRA model with per-block
    checkpointing; ``prepare(model)`` applies the setting under test."""
    torch.manual_seed(0)
    model = load_model(f"tiny:{family}")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = add_lora(model, r=4, alpha=8, dropout=0.0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # a live adapter
    prepare(model)
    blocks = model.get_base_model().blocks()
    # counted on a submodule: a hook on the compiled block itself is compiled away with it
    runs, in_backward = [0] * len(blocks), []
    for i, block in enumerate(blocks if count else []):
        norm = next(m for m in block.modules() if type(m).__name__ == "RMSNorm")
        norm.register_forward_hook(lambda *a, i=i: runs.__setitem__(i, runs[i] + 1))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 500, (rows, 16), generator=g)
    score = torch.rand(rows, 16, generator=g) < 0.5
    score[:, 0] = False
    logp = token_scorer(model)(ids, None, ids, score)
    after_forward = list(runs)
    (logp * torch.linspace(-1, 1, 16)).sum().backward()
    in_backward = [b - a for a, b in zip(after_forward, runs)]
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logp.detach(), grads, in_backward


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_checkpoint_blocks_recomputes_only_the_first_blocks(family):
    """model.checkpoint_blocks=1 of the tiny models' 2 blocks: block 0 re-runs in backward, block 1 keeps its
    activations; log-probs and gradients equal those of checkpointing every block."""
    logp, grads, rerun = _lora_step(family, lambda m: None)
    assert rerun == [1, 1]  # every block recomputed (the norm hook counts each block's forward)
    part_logp, part_grads, part_rerun = _lora_step(family, lambda m: checkpoint_blocks(m, 1))
    assert part_rerun == [1, 0]
    _, _, none_rerun = _lora_step(family, lambda m: checkpoint_blocks(m, 0))
    assert none_rerun == [0, 0]
    torch.testing.assert_close(part_logp, logp, atol=1e-6, rtol=1e-5)
    assert grads.keys() == part_grads.keys() and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(part_grads[name], grads[name], atol=1e-6, rtol=1e-5, msg=name)
    with pytest.raises(ValueError, match="between 0 and the model's 2 blocks"):
        _lora_step(family, lambda m: checkpoint_blocks(m, 3))


@pytest.mark.slow
def test_compiled_blocks_give_the_same_log_probs_and_gradients():
    """model.compile: each block compiled in place (inductor), LoRA and per-block checkpointing traced into it.
    Same token log-probs and adapter gradients as eager to fp32 round-off, for both families; the blocks really
    run compiled (dynamo captured their graphs) and parameter names are unchanged."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    for family in ("llada", "dream"):
        torch._dynamo.reset()
        counters.clear()
        logp, grads, _ = _lora_step(family, lambda m: None, count=False)
        names = []
        compiled_logp, compiled_grads, _ = _lora_step(
            family, lambda m: (compile_blocks(m), names.extend(n for n, _ in m.named_parameters())), count=False
        )
        assert dict(counters["graph_break"]) == {}, family  # a break would leave parts of the block eager
        assert counters["stats"]["unique_graphs"] >= 1, family
        assert "_orig_mod" not in "".join(names)  # compiled in place: the state dict keeps its names
        torch.testing.assert_close(compiled_logp, logp, atol=1e-5, rtol=1e-5)
        assert grads.keys() == compiled_grads.keys() and len(grads) > 0
        for name in grads:
            torch.testing.assert_close(compiled_grads[name], grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_bf16_scoring_is_not_rounded_to_bf16_logits(family):
    """Real 8B logits reach [16, 32), where bf16 steps are 0.125. The production scorer must not round there
    (it did: ``head(hidden).float()``, errors up to ~0.06 nats per token at these logits); the public estimator
    API works from the model's bf16 logits, so its error is bounded by their rounding and no more (log-softmax
    in fp32, weights in fp32: it used to run log-softmax in bf16, off by up to 22 nats on a sum of -3,108)."""
    torch.manual_seed(0)
    model = load_model(f"tiny:{family}", dtype="bfloat16").eval()
    ids = torch.randint(3, 500, (2, 16))
    with torch.no_grad():  # scale the head so logits reach about 30, like a trained 8B model's
        w = model.get_output_embeddings().weight
        w.mul_(30 / logits_fn(model)(ids).float().abs().max())
    score = torch.rand(2, 16) < 0.5
    score[:, 0] = False
    with torch.no_grad():
        hidden = model.backbone(ids, None).double()
        z = align_logits(
            hidden @ model.get_output_embeddings().weight.double().T, model.logits_shift
        )  # exact, [b, T, V]
        assert z.abs().max() > 16
        exact = torch.where(score, z.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1), 0.0)
        got = model(ids, score_mask=score, targets=ids).token_logprobs.double()
        assert (got - exact).abs().max() < 1e-4  # fp32 round-off of logits up to 32: ~4e-6 per logit
        rounded = torch.where(score, z.bfloat16().double().log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1), 0.0)
        assert (rounded - exact).abs().max() > 1e-3  # what rounding to bf16 would have cost: the test can fail
        # public API: logits in bf16 (the published forward), everything after in fp32. Bound: each logit is off
        # by at most half a bf16 step, |z|·2^-9, so a log-softmax entry by at most 2·max|z|·2^-9
        scorer = E.scorer_from_logits(logits_fn(model))
        public = scorer(ids, None, ids, score).double()
        bf16_logits = logits_fn(model)(ids).double()
        bound = 2 * bf16_logits.abs().amax(-1) * 2**-9 + 1e-4  # + fp32 round-off, and the body's bf16 matmul order
        assert ((public - exact).abs() <= torch.where(score, bound, 0.0)).all()
        torch.testing.assert_close(
            public,
            torch.where(score, bf16_logits.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1), 0.0),
            atol=2e-5,
            rtol=1e-5,
        )  # fp32 log-softmax of the bf16 logits, nothing rounded after


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_gradient_checkpointing_gives_the_same_gradients(family):
    def grads(checkpointing):
        model = load_model(f"tiny:{family}")
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        first_block = next(m for m in model.modules() if m.__class__.__name__ in ("LLaDABlock", "DreamDecoderLayer"))
        calls = []
        # transformers checkpoints a layer's forward (hooks on the layer itself stay outside): count an inner module
        inner = getattr(first_block, "attn_norm", None) or first_block.input_layernorm
        inner.register_forward_hook(lambda *a: calls.append(1))
        score = torch.zeros(2, 10, dtype=torch.bool)
        score[:, 4:] = True
        ids = torch.randint(3, 500, (2, 10), generator=torch.Generator().manual_seed(1))
        model(ids, score_mask=score, targets=ids).token_logprobs.sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}, len(calls)

    (a, calls_plain), (b, calls_ckpt) = grads(False), grads(True)
    assert calls_plain == 1 and calls_ckpt == 2  # checkpointing really recomputed the block in backward
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("share", [(True, True), (False, False), (True, False)])
def test_production_path_matches_public_estimator(family, share):
    """dpo_terms through masked-only scoring == dpo_margin through full logits, same generator state."""
    policy = add_lora(load_model(f"tiny:{family}"), r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    spec = spec_for(policy)

    def reference_logits(noised, attn):
        with policy.disable_adapter():
            return logits_fn(policy)(noised, attn)

    def reference_scorer(*args):
        with policy.disable_adapter():
            return token_scorer(policy)(*args)

    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(3, 500, (2, 4), generator=g)
    chosen = torch.cat([prompt, torch.randint(3, 500, (2, 6), generator=g)], 1)
    rejected = torch.cat([prompt, torch.randint(3, 500, (2, 6), generator=g)], 1)
    resp = torch.zeros(2, 10, dtype=torch.bool)
    resp[:, 4:] = True
    kw = dict(
        n_samples=4, share_policy_reference=share[0], share_chosen_rejected=share[1], mask_token_id=spec.mask_token_id
    )
    public = E.dpo_margin(
        logits_fn(policy), reference_logits, chosen, rejected, resp, generator=torch.Generator().manual_seed(0), **kw
    )
    terms = E.dpo_terms(
        token_scorer(policy), reference_scorer, chosen, rejected, resp, generator=torch.Generator().manual_seed(0), **kw
    )
    torch.testing.assert_close(terms.margin, public, atol=1e-4, rtol=1e-4)
    assert terms.policy_chosen.requires_grad and not terms.reference_chosen.requires_grad


# ---------------------------------------------------------------- published semantics, recomputed independently


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope_complex(x, theta):
    """RoPE of the published code (pairs i and i + d/2 rotate together), written with complex numbers."""
    b, h, T, d = x.shape
    freqs = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = torch.outer(torch.arange(T, dtype=torch.float64), freqs)  # [T, d/2]
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2 :].double()) * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([z.real, z.imag], -1).to(x.dtype)


def _attend(q, k, v):
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], 1)
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v  # no causal mask


def _heads(x, n):
    b, T, _ = x.shape
    return x.view(b, T, n, -1).transpose(1, 2)


def llada_published_logits(sd, cfg, ids):
    """LLaDA's forward as its published modeling code defines it, from the state dict."""
    x = sd["model.transformer.wte.weight"][ids]
    for i in range(cfg.n_layers):
        p = lambda n, i=i: sd[f"model.transformer.blocks.{i}.{n}.weight"]  # noqa: E731
        h = _rms(x, p("attn_norm"), cfg.rms_norm_eps)
        q, k, v = (_heads(h @ p(n).T, cfg.n_heads) for n in ("q_proj", "k_proj", "v_proj"))
        att = _attend(_rope_complex(q, cfg.rope_theta), _rope_complex(k, cfg.rope_theta), v)
        x = x + att.transpose(1, 2).reshape(x.shape) @ p("attn_out").T
        h = _rms(x, p("ff_norm"), cfg.rms_norm_eps)
        x = (
            x + (torch.nn.functional.silu(h @ p("ff_proj").T) * (h @ p("up_proj").T)) @ p("ff_out").T
        )  # ff_proj is gated
    return _rms(x, sd["model.transformer.ln_f.weight"], cfg.rms_norm_eps) @ sd["model.transformer.ff_out.weight"].T


def dream_published_logits(sd, cfg, ids):
    """Dream (Qwen2 blocks, biases on q/k/v, GQA, bidirectional), unshifted logits."""
    x = sd["model.embed_tokens.weight"][ids]
    for i in range(cfg.num_hidden_layers):
        p = lambda n, i=i: sd[f"model.layers.{i}.{n}"]  # noqa: E731
        h = _rms(x, p("input_layernorm.weight"), cfg.rms_norm_eps)
        q = _heads(h @ p("self_attn.q_proj.weight").T + p("self_attn.q_proj.bias"), cfg.num_attention_heads)
        k = _heads(h @ p("self_attn.k_proj.weight").T + p("self_attn.k_proj.bias"), cfg.num_key_value_heads)
        v = _heads(h @ p("self_attn.v_proj.weight").T + p("self_attn.v_proj.bias"), cfg.num_key_value_heads)
        att = _attend(_rope_complex(q, cfg.rope_theta), _rope_complex(k, cfg.rope_theta), v)
        x = x + att.transpose(1, 2).reshape(x.shape) @ p("self_attn.o_proj.weight").T
        h = _rms(x, p("post_attention_layernorm.weight"), cfg.rms_norm_eps)
        gate, up = h @ p("mlp.gate_proj.weight").T, h @ p("mlp.up_proj.weight").T
        x = x + (torch.nn.functional.silu(gate) * up) @ p("mlp.down_proj.weight").T
    return _rms(x, sd["model.norm.weight"], cfg.rms_norm_eps) @ sd["lm_head.weight"].T


@pytest.mark.parametrize("family,reference", [("llada", llada_published_logits), ("dream", dream_published_logits)])
def test_logits_match_the_published_semantics(family, reference):
    model = load_model(f"tiny:{family}")
    with torch.no_grad():  # non-trivial norm weights and biases, so a mix-up would show
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.normal_(1.0 if "norm" in n else 0.0, 0.3)
    ids = torch.randint(3, 500, (2, 11))
    expected = reference(model.state_dict(), model.config, ids)
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-4, rtol=1e-4)
    if family == "dream":  # aligned logits: position i is predicted by the output at i-1
        torch.testing.assert_close(logits_fn(model)(ids)[:, 1:], expected[:, :-1], atol=1e-4, rtol=1e-4)


def test_lora_forward_backward_in_bf16():
    model = add_lora(load_model("tiny:llada", dtype="bfloat16"), r=4, alpha=8, dropout=0.0)
    ids = torch.randint(3, 500, (2, 9))
    score = torch.ones(2, 9, dtype=torch.bool)
    out = model(ids, score_mask=score, targets=ids).token_logprobs
    out.sum().backward()
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_adapter_in_base_dtype_keeps_fp32_masters_and_matches_peft():
    """LoRA over a bf16 base: inside ``adapter_in_base_dtype`` the adapter runs in bf16 (no fp32 activation
    copies), through gradient checkpointing; the adapter weights stay fp32 and receive fp32 gradients, and
    log-probs and gradients agree with peft's fp32 path to bf16 precision."""
    from align.models import adapter_in_base_dtype

    torch.manual_seed(0)
    model = add_lora(load_model("tiny:llada", dtype="bfloat16"), r=4, alpha=8, dropout=0.0)
    model.get_base_model().activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.train()
    ids = torch.randint(3, 500, (2, 12))
    score = torch.rand(2, 12) < 0.5
    seen = []
    lora_a = next(m for n, m in model.named_modules() if n.endswith("q_proj.lora_A.default"))
    lora_a.register_forward_hook(lambda mod, args, out: seen.append((args[0].dtype, out.dtype)))

    def run(dtype):
        model.zero_grad()
        with adapter_in_base_dtype(model, dtype):
            out = model(ids, score_mask=score, targets=ids).token_logprobs
            out.sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    fast, g_fast = run(torch.bfloat16)
    assert seen[0] == (torch.bfloat16, torch.bfloat16)  # no fp32 copy of the activations
    seen.clear()
    ref, g_ref = run(None)
    assert seen[0] == (torch.float32, torch.float32)  # peft's default path, for contrast
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    torch.testing.assert_close(fast, ref, atol=0.05, rtol=0.02)
    for n in g_ref:
        assert g_fast[n].dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(g_fast[n].flatten(), g_ref[n].flatten(), dim=0)
        assert cos > 0.98, n


def test_fused_head_log_probs_have_exact_gradients():
    """The LM head's scoring function (forward keeps only the log-normalisers, backward rebuilds each chunk's
    logits once) passes gradcheck in float64 for hidden states, weight and bias, over several chunks."""
    from align.models.layers import _TargetLogprobs

    torch.manual_seed(0)
    h = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(11, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 11, (7,))
    assert torch.autograd.gradcheck(lambda h, w, b: _TargetLogprobs.apply(h, w, b, t, 3), (h, w, b))
    expected = torch.log_softmax(h @ w.T + b, -1).gather(-1, t[:, None]).squeeze(-1)
    torch.testing.assert_close(_TargetLogprobs.apply(h, w, b, t, 3), expected)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_scoring_calls_the_head_once_per_forward(family):
    """Under ZeRO-3 each call of the head module all-gathers its weight (1 GiB at 8B): scoring calls it once per
    forward however many chunks, and not again in backward (the old path called it per chunk, twice)."""
    model = load_model(f"tiny:{family}")
    model.head_chunk_elements = 3 * model.config.vocab_size  # chunks of 3 rows
    calls = []
    model.get_output_embeddings().register_forward_pre_hook(lambda *a: calls.append(1))
    ids = torch.randint(3, 500, (2, 12))
    score = torch.zeros(2, 12, dtype=torch.bool)
    score[:, 2:] = True  # 20 rows: 7 chunks
    model(ids, score_mask=score, targets=ids).token_logprobs.sum().backward()
    assert len(calls) == 1


@pytest.mark.parametrize(
    "entry,model,message",
    [
        (
            ["-m", "align.train_dpo", "recipe=demo", "train.output_dir=OUT"],
            "model.name_or_path=./no/such/model",
            "./no/such/model: no such directory",
        ),
        (
            ["-m", "align.train_dpo", "recipe=demo", "train.output_dir=OUT"],
            "model.name_or_path=someone/not-cached-here",
            "'someone/not-cached-here' from the Hugging Face hub (HF_HUB_OFFLINE is set",
        ),
        (["-m", "align.sampler"], "--model=/no/such/dir", "/no/such/dir: no such directory"),
        (["-m", "align.sampler"], "--model=someone/not-cached-here", "hf download someone/not-cached-here --local-dir"),
    ],
)
def test_a_model_that_is_not_there_fails_in_one_line_naming_it(tmp_path, entry, model, message):
    import sys

    from tests.helpers import ENV as env  # HF_HUB_OFFLINE=1
    from tests.helpers import run_command

    args = [a.replace("OUT", str(tmp_path / "out")) for a in entry]
    proc = run_command([sys.executable, *args, model], env=env, timeout=120)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_compiled_checkpointed_blocks_backpropagate_through_the_forward_dropout_masks():
    """LoRA dropout inside a compiled, checkpointed block: backward must use the masks the forward drew, not
    new ones from a recompute. Under one seed the compiled model with checkpointing gives the same log-probs and
    gradients as the compiled model without it (a recompute that drew new masks would change the gradients)."""

    def run(checkpointed: bool, seed: int = 5):
        torch.manual_seed(0)
        model = load_model("tiny:llada")
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model = add_lora(model, r=4, alpha=8, dropout=0.5)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)
        compile_blocks(model)
        checkpoint_blocks(model, None if checkpointed else 0)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(3, 500, (4, 16), generator=g)
        score = torch.rand(4, 16, generator=g) < 0.5
        torch.manual_seed(seed)
        logp = token_scorer(model.train())(ids, None, ids, score)
        (logp * torch.linspace(-1, 1, 16)).sum().backward()
        return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    logp, grads = run(True)
    plain_logp, plain_grads = run(False)
    torch.testing.assert_close(logp, plain_logp, atol=1e-6, rtol=1e-5)
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], atol=1e-6, rtol=1e-5, msg=name)
    other, _ = run(True, seed=6)
    assert (other - logp).abs().max() > 1e-3  # the dropout is live: another seed draws other masks
