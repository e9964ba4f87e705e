"""The benchmark scripts run (scaled down, on CPU) and measure what they say they measure."""

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from dpo_step import build, make_batch, naive_step, ours_step  # noqa: E402

from align.models import LLaDAConfig  # noqa: E402

SMALL = LLaDAConfig(
    d_model=64,
    n_heads=4,
    n_layers=2,
    mlp_hidden_size=128,
    vocab_size=512,
    embedding_size=512,
    mask_token_id=500,
    eos_token_id=499,
    pad_token_id=499,
)


@pytest.mark.slow
def test_gpu_step_runs_scaled_down_on_cpu(tmp_path):
    out = tmp_path / "gpu_step.json"
    proc = subprocess.run(
        # aot_eager: the compiled rows trace forward and backward as inductor's would, without generating kernels
        # (inductor on CPU is tested by tests/test_models.py and tests/test_training_loop.py)
        [
            sys.executable,
            "benchmarks/gpu_step.py",
            "--small",
            "--repeats",
            "1",
            "--compile-backend",
            "aot_eager",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["grid"]
    kinds = {r["step"] for r in rows}
    assert kinds == {
        "align",
        "align, reference precomputed",
        "align, forward_chunk=4",
        "align, peft's fp32 adapter compute",
        "align, no checkpointing",
        "naive",
    }
    assert all(r["step_s"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert "| align | 64 | 2 | 1 |" in proc.stdout
    results = json.loads(out.read_text())
    levers = {r["step"]: r for r in results["levers"]}  # the speed settings, the last ones compiled
    assert set(levers) == {
        "align, RMSNorm unfused (before)",
        "align, 1 of 2 blocks checkpointed",
        "align, compiled",
        "align, compiled, 1 of 2 blocks checkpointed",
        "align, compiled, no checkpointing",
        "align, reference precomputed, compiled, 1 of 2 blocks checkpointed",
        "align, compiled, forward_chunk=4",
    }, results.get("compile_error")
    compiled = {(r["n"], r["T"]) for r in results["levers"] if r["step"] == "align, compiled"}
    assert compiled == {(2, 64), (1, 64), (2, 32)}  # the largest n and L, then the others (dynamic shapes)
    assert all(r["step_s"] > 0 for r in levers.values()) and results["compile_s"] > 0


@pytest.mark.parametrize("lora", [True, False])
def test_the_two_steps_estimate_one_margin_but_only_ours_is_coupled(lora):
    """At the start of training the policy is the reference: align's coupled margin is exactly 0 (loss log 2);
    the naive step draws every term's masks on its own, so its margin is noise around 0. Both train."""
    model, reference = build(SMALL, device="cpu", lora_r=4 if lora else None, ckpt=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.0)  # lr 0: the model stays the reference for both steps
    batch = make_batch(2, 8, 12, SMALL, "cpu")
    kw = dict(n=3, estimator="time_free", mask_token_id=SMALL.mask_token_id, opt=opt)
    before = [p.detach().clone() for p in trainable]
    ours = ours_step(model, reference, batch, **kw)
    assert ours.item() == pytest.approx(math.log(2), abs=1e-6)
    naive = naive_step(model, reference, batch, **kw)
    assert abs(naive.item() - math.log(2)) > 1e-3
    assert all(torch.equal(a, b) for a, b in zip(before, (p.detach() for p in trainable)))


@pytest.mark.parametrize("lora", [True, False])
def test_the_precomputed_step_is_the_same_step_without_the_reference_forward(lora):
    """The benchmark's precomputed variant gives the loss and update of align's step (the reference read, not run)."""
    from dpo_step import precompute_reference, precomputed_step

    results = []
    for variant in ("ours", "precomputed"):
        model, reference = build(SMALL, device="cpu", lora_r=4 if lora else None, ckpt=False)
        with torch.no_grad():  # a policy away from its reference
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.02 * torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())))
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(trainable, lr=0.1)
        batch = make_batch(2, 8, 12, SMALL, "cpu")
        kw = dict(n=3, estimator="time_free", mask_token_id=SMALL.mask_token_id)
        calls = []
        if reference is not None:
            reference.register_forward_hook(lambda *a: calls.append(1))
        if variant == "ours":
            loss = ours_step(model, reference, batch, opt=opt, seed=5, **kw)
        else:
            cache = {5: precompute_reference(model, reference, batch, seed=5, **kw)}
            n_before = len(calls)
            loss = precomputed_step(model, reference, batch, opt=opt, seed=5, cache=cache, **kw)
            assert len(calls) == n_before  # the step never ran the reference
        results.append((loss, [p.detach().clone() for p in trainable]))
    (a, pa), (b, pb) = results
    assert b.item() == pytest.approx(a.item(), abs=1e-6) and abs(a.item() - math.log(2)) > 1e-4
    for x, y in zip(pa, pb):
        torch.testing.assert_close(y, x, atol=1e-6, rtol=1e-6)


def test_tensor_bytes_counts_the_peak_of_live_storages():
    """dpo_step's CPU memory figure: views and in-place results share a storage; a freed storage leaves the count."""
    from dpo_step import TensorBytes

    MiB = 2**20
    with TensorBytes() as counter:
        a = torch.empty(MiB, dtype=torch.uint8)
        b = torch.zeros(2 * MiB, dtype=torch.uint8)
        view = b[:10]
        b.add_(1)  # in place: the same storage
        del a
        c = torch.ones(MiB, dtype=torch.uint8)  # a's bytes were freed: live is 3 MiB again, not 4
        assert counter.live == 3 * MiB
        del b, view, c
    assert counter.peak == 3 * MiB and counter.live == 0


def test_copy_experiment_probes_what_it_says_and_its_synthetic_data_holds_no_task_of_the_world():
    """benchmarks/copy_experiment.py: synthetic objects are never objects of the world (so no held-out task leaks
    into training), swapped tasks are never tasks of the world and their held-out ones never train, drills and
    repeats copy what they show, and the copy probe, on the shipped model, fills the
    objects of memorised tasks (if the probe masked the wrong tokens, this would fail)."""
    import copy_experiment as ce

    from align import world

    real = {ce.object_of(t) for t in world.tasks()}  # the object: the task's text after its family's verb
    assert {"bread", "my own locked laptop", "a car without keys"} <= real and "" not in real
    rows = ce.synthetic_dialogues(300, seed=3)
    assert len(rows) == 300 and not any(r["object"] in real for r in rows)
    assert all(r["object"] in r["prompt"] and r["task"] in r["prompt"] for r in rows)
    assert ce.synthetic_dialogues(5, seed=3) == rows[:5]  # deterministic
    assert all(r["prompt"] == f"Say it back: {r['object']}." for r in ce.drills(20))
    for r in ce.repeats(20):
        first, second = r["text"].split(" Again: ")
        assert first == second
    train, held = ce.swaps()  # a family with another family's training object: never a task of the world
    texts = {t.text for t in world.tasks()}
    assert len(held) == ce.SWAPS_HELD_OUT * len(world.held_out_tasks()) and len(train) > 10 * len(held)
    assert not {t.text for t in train + held} & texts and not {t.text for t in train} & {t.text for t in held}
    seen = {ce.object_of(t) for t in world.training_tasks()}
    assert all(ce.object_of(t) in seen for t in held)  # a held-out swap's object is seen in training text
    assert not any(ce.object_of(t) in ce.FAMILIES[t.kind][t.family][-1] for t in train + held)  # another family's
    assert all(world.well_formed(r["task_id"], r["response"]) for r in ce.held_out_swap_rows())
    assert {r["task_id"] for r in ce.swap_dialogues(200)} <= {t.id for t in train}
    sparse, same = ce.swaps(per_object=3)  # each object trains with 3 other families; the same held-out swaps
    assert [t.id for t in same] == [t.id for t in held] and {t.id for t in sparse} < {t.id for t in train}
    assert max(Counter((t.kind, ce.object_of(t)) for t in sparse).values()) == 3
    assert all(any(ce.object_of(t) == ce.object_of(h) and t.kind == h.kind for t in sparse) for h in held)

    model, tok, spec = ce.load("data/tiny_chat", None)
    probe = ce.copy_probe(model, tok, spec, [json.loads(x) for x in Path(ROOT / "data/tiny_sft_test.jsonl").open()])
    for mode in ("all", "one", "each"):
        memorised = probe[f"heldout_phrasing/{mode}"]
        assert memorised["records"] >= 50 and memorised["exact"] >= 0.8, (mode, memorised)
    assert probe["heldout_task/all"]["records"] >= 80
