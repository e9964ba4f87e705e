"""Loop correctness: epochs, held-out data, dropout, per-token IPO/RPO, throughput, bookkeeping.

Each trainer is built in a child forked from the test process (accelerate keeps process-wide state):
``in_child(fn)`` runs one of the functions below, which builds the demo recipe's trainer with the test's
overrides (``demo_trainer``) and returns what the test checks.
"""

import itertools
import json
import shutil
import sys
import time

import pytest

from tests.helpers import (
    BASIC,
    DS_ENV,
    ENV,
    QUIET,
    TEST_MODEL,
    demo_trainer,
    in_child,
    losses,
    metrics,
    partitioning_zero3_config,
    run_command,
    train,
)

# ---------------------------------------------------------------- 1. epochs that move on

EPOCHS = [
    TEST_MODEL,
    "train.num_train_epochs=3",
    "data.max_train_examples=48",
    "train.per_device_train_batch_size=4",
    "train.gradient_accumulation_steps=2",
    "train.save_steps=2",
    "train.logging_steps=1",
    "train.save_total_limit=null",
    "train.do_eval=false",
    "train.eval_steps=0",
]
TORCHRUN = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--nproc_per_node",
    "2",
    "--master_port",
    "29541",
    "align/train_dpo.py",
]


@pytest.mark.distributed
def test_resume_inside_and_after_the_first_epoch_matches_an_uninterrupted_run(tmp_path):
    """2 ranks x 4 pairs x accumulation 2 = 16 pairs a step; 48 pairs = 3 steps an epoch; 3 epochs = 9 steps.

    Resuming at step 2 (inside epoch 0) and at step 4 (inside epoch 1, past a boundary) must give the
    uninterrupted run's losses through step 9. Before the fix, training replayed epoch 0 and diverged.
    The copied metrics.jsonl holds the whole uninterrupted run: resume keeps only records up to the checkpoint.
    """
    full = tmp_path / "full"
    train(full, *EPOCHS, launcher=TORCHRUN)
    a = losses(full)
    assert sorted(a) == list(range(1, 10))
    epochs = {m["step"]: m["epoch"] for m in metrics(full) if "epoch" in m}
    assert epochs[3] == pytest.approx(1.0) and epochs[9] == pytest.approx(3.0)
    for step in (2, 4):
        resumed = tmp_path / f"from{step}"
        resumed.mkdir()
        shutil.copytree(full / f"checkpoint-{step}", resumed / f"checkpoint-{step}")
        shutil.copy(full / "metrics.jsonl", resumed / "metrics.jsonl")
        log = train(resumed, *EPOCHS, "train.resume_from_checkpoint=latest", launcher=TORCHRUN)
        assert f"at step {step}" in log
        steps = [m["step"] for m in metrics(resumed) if "loss" in m]
        assert steps == list(range(1, 10))  # each step logged once: nothing after the checkpoint kept twice
        b = losses(resumed)
        for s in range(step + 1, 10):
            assert b[s] == pytest.approx(a[s], abs=1e-6), (step, s, a[s], b[s])


def test_three_epochs_see_every_pair_once_each_in_new_orders(tmp_path):
    def seen_by_epoch():
        tr = demo_trainer(tmp_path / "p", "data.max_train_examples=40")
        seen = {}
        for epoch, _micro, batch in tr.micro_batches(0):
            if epoch == 3:
                break
            seen.setdefault(epoch, []).extend(e.id for e in batch)
        return seen

    seen = in_child(seen_by_epoch)
    assert sorted(seen) == [0, 1, 2]
    for ids in seen.values():
        assert sorted(ids) == list(range(40))  # 40 pairs, batches of 8: every pair exactly once
    assert seen[0] != seen[1] != seen[2]


# ---------------------------------------------------------------- 2. held-out data that is held out


def _split(out, *overrides):
    tr = demo_trainer(out, "data.eval_dataset=null", "data.max_eval_examples=null", *overrides)
    tr.begin()  # what a start writes (eval_ids.json among it), after every check
    return {"train": [e.id for e in tr.train_data], "eval": [e.id for e in tr.eval_data]}


def test_local_file_without_eval_dataset_holds_out_a_seeded_disjoint_split(tmp_path):
    out = tmp_path / "p"
    ids = in_child(_split, out)
    assert len(ids["eval"]) == 16 and len(ids["train"]) == 304  # 5% of 320
    assert not set(ids["train"]) & set(ids["eval"]) and sorted(ids["train"] + ids["eval"]) == list(range(320))
    written = json.loads((out / "eval_ids.json").read_text())
    assert written["ids"] == ids["eval"] and written["held_out_of_training_file"]
    again = in_child(_split, tmp_path / "q", "train.seed=5")
    assert again["eval"] == ids["eval"]  # the split does not move with the training seed


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.eval_dataset=null", "data.eval_fraction=0"], "data.eval_dataset"),
        (["data.eval_split=test"], "data.eval_split='test' names a split of a hub dataset"),
    ],
)
def test_local_file_evaluation_that_cannot_be_held_out_fails_at_start(tmp_path, overrides, message):
    proc = run_command(
        [sys.executable, "-m", "align.train_dpo", "recipe=demo", f"train.output_dir={tmp_path}", *QUIET, *overrides],
        env=ENV,
    )
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


# ---------------------------------------------------------------- 3. dropout off in the DPO passes


def _train_and_eval_margins(out, *overrides):
    """The margins of one batch with the model in train() and in eval() mode, after moving the adapter."""
    import torch

    from align.data import collate

    tr = demo_trainer(out, *overrides)
    torch.manual_seed(0)
    for name, p in tr.model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # a moved adapter: policy != reference
    batch = collate(tr.train_data[:4], tr.spec.pad_token_id)
    with torch.no_grad():
        tr.model.train()
        _, train_stats, _ = tr.compute(batch, 0)
        tr.model.eval()
        _, eval_stats, _ = tr.compute(batch, 0)
    return train_stats["rewards/margins"].tolist(), eval_stats["rewards/margins"].tolist()


def test_dropout_is_off_in_the_training_pass(tmp_path):
    train_margins, eval_margins = in_child(_train_and_eval_margins, tmp_path / "a", "lora.dropout=0.5")
    assert train_margins == pytest.approx(eval_margins, abs=1e-6)
    assert any(abs(m) > 1e-3 for m in eval_margins)  # the adapter really moved the policy
    # the same with dropout left on differs: the test can fail
    train_margins, eval_margins = in_child(
        _train_and_eval_margins, tmp_path / "b", "lora.dropout=0.5", "train.disable_dropout=false"
    )
    assert train_margins != pytest.approx(eval_margins, abs=1e-6)


# ---------------------------------------------------------------- 4. RPO over the global batch


def test_rpo_normaliser_is_the_whole_optimizer_steps_tokens(tmp_path):
    """P/N for a step = pairs / chosen-response tokens over every micro-batch of every rank in that step."""

    def norm_and_expected():
        from align.data import rank_micro_batches

        tr = demo_trainer(tmp_path / "p", "train.gradient_accumulation_steps=2")
        got = tr._step_norm(2)  # the step made of micro-batches 2 and 3
        batches = itertools.islice(rank_micro_batches(len(tr.train_data), seed=0, world=1, rank=0, per_device=8), 4)
        ids = [i for _, micro, mine in batches if micro >= 2 for i in mine]
        return got, len(ids) / sum(len(tr.train_data[i].chosen_ids) for i in ids)

    got, expected = in_child(norm_and_expected)
    assert got == pytest.approx(expected) and 0 < got < 1


# ---------------------------------------------------------------- 5. throughput


def test_tokens_per_second_leaves_out_evaluation_and_saving(tmp_path):
    """Evaluation made to take 0.5 s: four of them in the logging window must not enter the rate."""

    def timed_run():
        tr = demo_trainer(tmp_path / "p", "train.max_steps=4", "train.logging_steps=4", "train.eval_steps=1")
        tokens = []
        compute = tr.compute

        def counting(*a, **k):
            loss, stats, n = compute(*a, **k)
            tokens.append(n)
            return loss, stats, n

        def slow_eval():
            time.sleep(0.5)
            return {}

        tr.compute, tr.evaluate = counting, slow_eval
        start = time.perf_counter()
        tr.train()
        wall = time.perf_counter() - start
        rate = [m for m in metrics(tr.out) if "tokens_per_second" in m][-1]["tokens_per_second"]
        return sum(tokens), rate, wall

    total, rate, wall = in_child(timed_run)
    assert wall > 2.0
    assert total / rate < wall - 1.9  # the training time alone: the 2 s of evaluation are not in it


# ---------------------------------------------------------------- 6. bookkeeping


def test_skipped_optimizer_steps_leave_the_schedule_alone(tmp_path):
    def skipping_run():
        tr = demo_trainer(tmp_path / "p", "train.max_steps=3", "train.logging_steps=1", "train.do_eval=false")
        type(tr.accelerator).optimizer_step_was_skipped = property(lambda self: True)  # as an fp16 overflow reports
        tr.train()
        logged = [m for m in metrics(tr.out) if "loss" in m]
        return (
            tr.scheduler.last_epoch,
            [m["optimizer_steps_skipped"] for m in logged],
            [m["learning_rate"] for m in logged],
        )

    last_epoch, skipped, lrs = in_child(skipping_run)
    assert last_epoch == 0 and skipped == [1, 1, 1] and lrs == [0.0, 0.0, 0.0]  # still at warm-up's start


def test_fractional_epochs_and_warmup_rounded_up(tmp_path):
    """320 pairs, 8 a micro-batch: 40 micro-batches an epoch; accumulation 3 makes a step 3/40 of an epoch.

    max_steps 19 with warmup_ratio 0.05: 0.95 rounds up to 1 warm-up step (HF rounds up too).
    """

    def two_steps():
        tr = demo_trainer(
            tmp_path / "p",
            "train.max_steps=19",
            "train.gradient_accumulation_steps=3",
            "train.logging_steps=1",
            "train.do_eval=false",
            "train.warmup_ratio=0.05",
        )
        warmup = tr.warmup_steps
        tr.total_steps = 2  # the schedule is built for 19 steps; two are enough to read the epoch counter
        tr.train()
        return warmup, [m["epoch"] for m in metrics(tr.out) if "loss" in m][:2]

    warmup, epochs = in_child(two_steps)
    assert warmup == 1 and epochs == pytest.approx([3 / 40, 6 / 40])


# ---------------------------------------------------------------- train.precompute_ref_log_probs

PRE = [
    TEST_MODEL,
    "data.max_train_examples=24",
    "train.per_device_train_batch_size=8",
    "train.max_steps=7",
    "train.logging_steps=1",
    "train.eval_steps=3",
    "data.max_eval_examples=16",
    "train.save_steps=4",
    "train.save_total_limit=null",
    "train.learning_rate=1e-3",
    "train.warmup_ratio=0",
]


def _close(a: dict, b: dict, keys, tol=1e-5):
    for step in a:
        for k in keys:
            assert b[step][k] == pytest.approx(a[step][k], rel=1e-6, abs=tol), (step, k, a[step][k], b[step][k])


@pytest.mark.parametrize("extra", [[], ["lora.enabled=false", "train.learning_rate=1e-4"]], ids=["lora", "full"])
def test_precomputed_reference_gives_the_on_the_fly_losses_and_survives_resume(tmp_path, extra):
    """24 pairs in batches of 8: 3 steps an epoch; 7 steps cross two epoch boundaries. The reference terms come
    from no-grad batches of 16 computed before each epoch (and once for evaluation): the same losses, rewards and
    eval metrics as the reference computed in the step, to float tolerance (only the batch composition differs)."""
    fly, pre = tmp_path / "fly", tmp_path / "pre"
    train(fly, *PRE, *extra)
    log = train(pre, *PRE, *extra, "train.precompute_ref_log_probs=true")
    for what in ("evaluation: 16 examples", "epoch 0: 24 examples", "epoch 1: 24 examples", "epoch 2: 24 examples"):
        assert f"reference log-probs for {what}" in log
    a = {m["step"]: m for m in metrics(fly) if "loss" in m}
    b = {m["step"]: m for m in metrics(pre) if "loss" in m}
    assert sorted(a) == sorted(b) == list(range(1, 8))
    _close(a, b, ["loss", "rewards/margins", "rewards/chosen", "logps/reference_chosen", "logps/policy_rejected"])
    ea = {m["step"]: m for m in metrics(fly) if "eval/loss" in m}
    eb = {m["step"]: m for m in metrics(pre) if "eval/loss" in m}
    _close(ea, eb, ["eval/loss", "eval/rewards/margins"])
    assert sorted(p.name for p in (pre / "ref_logps").iterdir()) == [
        "epoch-1.rank0of1.pt",
        "epoch0.rank0of1.pt",
        "epoch1.rank0of1.pt",
        "epoch2.rank0of1.pt",
    ]
    # resume from step 4 (inside epoch 1): the saved terms are read back, not recomputed
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(pre / "checkpoint-4", resumed / "checkpoint-4")
    shutil.copytree(pre / "ref_logps", resumed / "ref_logps")
    log = train(resumed, *PRE, *extra, "train.precompute_ref_log_probs=true", "train.resume_from_checkpoint=latest")
    assert "at step 4" in log and "reference log-probs for epoch 1" not in log
    c = {m["step"]: m for m in metrics(resumed) if "loss" in m}
    assert sorted(c) == [5, 6, 7]
    for step in c:
        assert c[step]["loss"] == pytest.approx(b[step]["loss"], abs=1e-6)


@pytest.mark.parametrize(
    "entry,overrides,message",
    [
        (
            "align.train_sft",
            ["recipe=tiny_chat_sft", "model.name_or_path=data/tiny_chat"],
            "the sft objective has no reference",
        ),
        (
            "align.train_dpo",
            ["recipe=demo", "train.disable_dropout=false"],
            "train.disable_dropout=false leaves dropout on",
        ),
    ],
)
def test_precomputed_reference_is_refused_where_it_cannot_hold(tmp_path, entry, overrides, message):
    proc = run_command(
        [
            sys.executable,
            "-m",
            entry,
            *overrides,
            "train.precompute_ref_log_probs=true",
            f"train.output_dir={tmp_path}",
            *BASIC,
        ],
        env=ENV,
    )
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.distributed
def test_precomputed_reference_under_partitioned_zero3_matches_one_process_on_the_fly(tmp_path):
    """Full fine-tuning on 2 CPU ranks, ZeRO-3 partitioning even the tiny weights (so every reference forward is
    collective), 5 held-out pairs (ranks evaluate 3 and 2, padded): each rank precomputes its own examples;
    the losses equal one process computing the reference in the step. 2 steps an epoch: a resume from
    checkpoint-1 (partitioned weights and optimizer state, read back from disk by both ranks) crosses into the
    second epoch, precomputing its reference terms again, to the uninterrupted losses."""

    common = [
        TEST_MODEL,
        "data.max_train_examples=16",
        "train.max_steps=4",
        "train.logging_steps=1",
        "train.eval_steps=2",
        "data.max_eval_examples=5",
        "train.per_device_eval_batch_size=2",
        "lora.enabled=false",
        "train.learning_rate=1e-4",
        "train.warmup_ratio=0",
        "train.save_steps=100",
    ]
    single = tmp_path / "single"
    train(single, *common, "train.per_device_train_batch_size=8")
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(partitioning_zero3_config(tmp_path)),
        "--num_processes",
        "2",
        "--main_process_port",
        "29545",
        "align/train_dpo.py",
    ]
    multi = tmp_path / "multi"
    ranks = [
        "train.per_device_train_batch_size=4",
        "train.precompute_ref_log_probs=true",
        "train.save_steps=1",
        "train.save_total_limit=null",
    ]
    log = train(multi, *common, *ranks, launcher=launch, env=DS_ENV)
    assert "DeepSpeed ZeRO-3, 2 ranks" in log and "reference log-probs for epoch 1: 8 examples on rank 0" in log
    a = {m["step"]: m for m in metrics(single) if "loss" in m}
    b = {m["step"]: m for m in metrics(multi) if "loss" in m}
    for step in range(1, 5):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], abs=1e-5), step
    for step in (0, 2, 4):
        ea = [m for m in metrics(single) if m["step"] == step and "eval/loss" in m][0]
        eb = [m for m in metrics(multi) if m["step"] == step and "eval/loss" in m][0]
        assert eb["eval/loss"] == pytest.approx(ea["eval/loss"], abs=1e-5), step
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(multi / "checkpoint-1", resumed / "checkpoint-1")
    log = train(resumed, *common, *ranks, "train.resume_from_checkpoint=latest", launcher=launch, env=DS_ENV)
    assert "at step 1" in log and "reference log-probs for epoch 1: 8 examples on rank 0" in log
    c = {m["step"]: m for m in metrics(resumed) if "loss" in m}
    assert sorted(c) == [2, 3, 4]
    for step in c:
        assert c[step]["loss"] == pytest.approx(b[step]["loss"], abs=1e-6), step


# ---------------------------------------------------------------- model.forward_chunk / head_chunk_mib


def test_scoring_memory_settings_reach_the_policy_and_the_reference(tmp_path):
    """Full fine-tuning has a second model as reference: both get the chunk sizes (equality with chunking off is
    tested on two ranks in test_trainer and per model in test_models)."""

    def chunk_settings():
        from align.models import unwrap

        tr = demo_trainer(tmp_path, "lora.enabled=false", "model.forward_chunk=5", "model.head_chunk_mib=2")
        m, r = unwrap(tr.model), unwrap(tr.reference)
        return [m.forward_chunk, m.head_chunk_elements, r.forward_chunk, r.head_chunk_elements]

    result = in_child(chunk_settings)
    assert result == [5, 2**19, 5, 2**19]


# ---------------------------------------------------------------- model.compile / model.checkpoint_blocks


@pytest.mark.slow
def test_compiled_partly_checkpointed_training_matches_the_plain_loop(tmp_path):
    """The speed settings change no number: 3 steps with every block compiled (model.compile) and only the first
    2 of the demo model's blocks recomputed in backward (model.checkpoint_blocks=2) log the losses of the
    plain loop to fp32 round-off. A child checks the settings reached the blocks (compiled in place,
    checkpointing on for the first two). Compiled with aot_eager (model.compile_backend): the same dynamo and
    AOT-autograd graphs, recompute included, without inductor generating C++ kernels on CPU (~115 CPU-s on a
    cold cache); inductor's numbers, with checkpointing and LoRA dropout, are tested in tests/test_models.py."""
    steps = [
        "train.max_steps=3",
        "train.logging_steps=1",
        "train.do_eval=false",
        "train.eval_steps=0",
        "train.save_steps=100",
    ]
    train(tmp_path / "plain", *steps)
    fast = [
        "model.compile=true",
        "model.compile_backend=aot_eager",
        "model.gradient_checkpointing=true",
        "model.checkpoint_blocks=2",
    ]
    train(tmp_path / "fast", *steps, *fast)
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "fast")
    assert sorted(a) == [1, 2, 3] and a.keys() == b.keys()
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-5), step

    def block_settings():
        from align.models import unwrap

        blocks = unwrap(demo_trainer(tmp_path / "probe", *fast).model).blocks()
        return [[b.gradient_checkpointing for b in blocks], [b._compiled_call_impl is not None for b in blocks]]

    result = in_child(block_settings)
    n = len(result[0])
    assert n >= 3 and result == [[True, True] + [False] * (n - 2), [True] * n]
