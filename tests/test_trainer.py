"""The trainer through its real entry points, on the tiny model and bundled data (CPU, offline).

Each run has a process of its own (accelerate keeps process-wide state, as a real launch does): forked from the
test process for one-process runs, started by torchrun / accelerate for ranks (tests/helpers.py).
"""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from align.data import epoch_order
from tests.helpers import (
    BASIC,
    DS_ENV,
    ENV,
    LAUNCHERS,
    QUIET,
    ROOT,
    TEST_MODEL,
    fresh_ports,
    losses,
    metrics,
    partitioning_zero3_config,
    run,
    run_command,
    train,
)


@pytest.mark.slow
def test_demo_learns_and_saves_everything(tmp_path):
    """The quick start's demo as shipped: the tiny chat model, behaviour judged before and after."""
    out = tmp_path / "demo"
    log = train(out, "train.report_to=tensorboard", "behaviour.prompts=data/demo_behaviour_prompts.jsonl", quiet=BASIC)
    evals = [m for m in metrics(out) if "eval/rewards/accuracies" in m]
    assert [m["step"] for m in evals] == [0, 60, 120]
    assert evals[0]["eval/rewards/accuracies"] == pytest.approx(0.5)  # untrained: chance
    assert evals[-1]["eval/rewards/accuracies"] >= 0.65, evals[-1]  # held-out accuracy clearly above chance
    judged = [m for m in evals if "eval/reward" in m]  # behaviour at the first and last evaluation
    assert [m["step"] for m in judged] == [0, 120]
    assert 0.25 <= judged[0]["eval/refusal_rate"] <= 0.75  # the SFT model refuses harmful prompts about half the time
    assert judged[0]["eval/borderline_refusal_rate"] >= 0.3  # and over-refuses borderline ones: room for DPO
    assert judged[-1]["eval/refusal_rate"] >= judged[0]["eval/refusal_rate"] + 0.2  # DPO: harmful refused more
    assert judged[0]["eval/kl"] == 0  # the policy starts as its reference (LoRA), with shared masks
    assert judged[-1]["eval/kl"] > 2 * judged[-1]["eval/kl/se"]  # and moves away from it
    for key in ("eval/over_refusal_rate", "eval/well_formed", "eval/correct/borderline", "eval/reward/se"):
        assert key in judged[-1], key
    assert "before:" in log and "after:" in log and "refusal_rate:" in log and "reward:" in log
    train_logs = [m for m in metrics(out) if "loss" in m]
    for key in [
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/policy_chosen",
        "logps/reference_chosen",
        "margin/sample_variance",
        "grad_norm",
        "learning_rate",
        "tokens_per_second",
    ]:
        assert key in train_logs[-1], key
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["model"]["name_or_path"] == "data/tiny_chat" and resolved["estimator"]["share_policy_reference"]
    assert (out / "final" / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "behaviour.jsonl").exists()
    (run,) = (out / "runs").iterdir()  # output_dir/runs/<date>_<host>/ holds the events (test_tensorboard_...)
    assert list(run.glob("events.out.tfevents*"))
    assert "320/320 records kept" in log
    from huggingface_hub import ModelCard  # final/README.md: a model card the Hub reads, from the run's own record

    card = ModelCard.load(out / "final" / "README.md")
    assert {"dpo", "masked-diffusion", "lora"} <= set(card.data.tags) and card.data.license == "apache-2.0"
    assert (
        "coupled `time_free`" in card.text
        and f"| rewards/accuracies | {evals[-1]['eval/rewards/accuracies']:.4g} |" in card.text
    )
    assert (
        "[training_config.yaml](training_config.yaml)" in card.text
        and (out / "final" / "training_config.yaml").exists()
    )


def test_tensorboard_events_go_to_one_folder_per_launch_under_runs(tmp_path):
    """HF's layout: output_dir/runs/<date>_<host>/ with the event files, no time-stamped subfolders; a resumed
    launch gets its own folder; train.logging_dir puts them where the user says."""
    import re

    out = tmp_path / "out"
    args = ["train.report_to=tensorboard", "train.max_steps=2", "train.eval_steps=0", "train.do_eval=false", TEST_MODEL]
    train(out, *args[1:], "train.report_to=tensorboard")
    (run,) = (out / "runs").iterdir()
    assert re.fullmatch(r"[A-Z][a-z]{2}\d{2}_\d{2}-\d{2}-\d{2}_.+", run.name), run.name
    assert [p.name for p in run.iterdir() if p.is_dir()] == [] and list(run.glob("events.out.tfevents*"))
    import time

    time.sleep(1.1)  # the folder name has one-second resolution
    train(
        out, *args, "train.max_steps=3", "train.resume_from_checkpoint=latest", "train.resume_changes=[train.max_steps]"
    )
    assert len(list((out / "runs").iterdir())) == 2
    own = tmp_path / "tb" / "mine"
    train(tmp_path / "out2", *args, f"train.logging_dir={own}")
    assert list(own.glob("events.out.tfevents*")) and not (tmp_path / "out2" / "runs").exists()


def test_accelerate_launch_script_form_and_a_push_without_network(tmp_path):
    """The script form under accelerate launch; with train.push_to_hub=true and no network (HF_HUB_OFFLINE=1) the
    run saves everything locally, then fails the upload with one line saying why (exit 1)."""
    out = tmp_path / "launch"
    proc = run_command(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            "1",
            "--cpu",
            "align/train_dpo.py",
            "recipe=demo",
            f"train.output_dir={out}",
            *QUIET,
            TEST_MODEL,
            "train.max_steps=2",
            "train.eval_steps=0",
            "train.push_to_hub=true",
            "train.hub_model_id=someone/tiny-dpo",
        ],
        cwd=ROOT,
        env=ENV,
        timeout=1200,
    )
    log = proc.stdout + proc.stderr
    assert "single process (cpu)" in log and (out / "final" / "adapter" / "adapter_model.safetensors").exists()
    failed = [line for line in proc.stderr.splitlines() if line.startswith("push to hub failed")]
    assert proc.returncode == 1 and len(failed) == 1 and "OfflineModeIsEnabled" in failed[0], log[-3000:]
    assert f"hf upload someone/tiny-dpo {out / 'final'}" in failed[0] and (out / "final" / "README.md").exists()


def test_beavertails_recipe_with_local_tiny_model_and_data(tmp_path):
    """recipe=beavertails as shipped, with the hub model and dataset overridden to local tiny ones."""
    out = tmp_path / "bt"
    log = run(
        [
            sys.executable,
            "-m",
            "align.train_dpo",
            "recipe=beavertails",
            f"train.output_dir={out}",
            *QUIET,
            "model.name_or_path=tiny:llada",
            "model.dtype=float32",
            "data.dataset=data/demo_safety_train.jsonl",
            "data.eval_dataset=data/demo_safety_test.jsonl",
            "data.eval_split=null",
            "data.max_train_examples=32",
            "train.max_steps=2",
            "train.per_device_train_batch_size=2",
            "train.gradient_accumulation_steps=2",
            "train.save_merged=true",
        ]
    )
    assert "2 steps of 4 pairs" in log
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["model_type"] == "llada" and config["architectures"] == ["LLaDAModelLM"]
    assert (out / "final" / "adapter" / "adapter_config.json").exists()
    # the merged weights (built on CPU layer by layer) are the base with the saved adapter merged, as peft merges
    from peft import PeftModel

    from align.models import load_model

    merged = load_model(str(out / "final")).eval()
    with_adapter = PeftModel.from_pretrained(
        load_model("tiny:llada"), str(out / "final" / "adapter")
    ).merge_and_unload()
    ids = torch.randint(3, 500, (2, 10))
    torch.testing.assert_close(merged(ids).logits, with_adapter.eval()(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "extra",
    [
        [
            "estimator.coupling=decoupled",
            "loss.loss_type=ipo",
            "estimator.estimator=time_integral",
            "model.dtype=bfloat16",
            "train.per_device_train_batch_size=4",
        ],  # bf16 runs ~8x slower than fp32 on CPU
        [
            "loss.loss_type=robust",
            "loss.label_smoothing=0.1",
            "loss.rpo_alpha=0.5",
            "estimator.estimator=any_order",
            "lora.enabled=false",
            "model.gradient_checkpointing=true",
            "estimator.stratified=false",
        ],
        ["loss.loss_type=hinge", "model.name_or_path=tiny:dream", "train.gradient_accumulation_steps=2"],
    ],
)
def test_ablation_settings_run(tmp_path, extra):
    out = tmp_path / "abl"
    steps = ["train.max_steps=3", "train.eval_steps=0", "train.logging_steps=1", "data.max_eval_examples=8"]
    train(out, TEST_MODEL, *steps, *extra)  # the mechanics tests' model unless extra names another
    assert all(torch.isfinite(torch.tensor(v)) for v in losses(out).values())


def test_bad_config_fails_at_start_naming_the_key(tmp_path):
    proc = run_command([sys.executable, "-m", "align.train_dpo", "recipe=demo", "train.learnig_rate=1"], env=ENV)
    assert proc.returncode != 0 and "did you mean 'train.learning_rate'" in proc.stderr


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_resume_continues_exactly(tmp_path, mode):
    common = [
        TEST_MODEL,
        "train.max_steps=8",
        "train.save_steps=4",
        "train.logging_steps=1",
        "train.eval_steps=0",
        "train.save_total_limit=null",
    ] + (["lora.enabled=false", "train.learning_rate=1e-3"] if mode == "full" else [])
    full = tmp_path / "uninterrupted"
    train(full, *common)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-4", resumed / "checkpoint-4")
    # a crash during a later save leaves these behind; resume must not pick them up
    shutil.copytree(full / "checkpoint-8", resumed / "checkpoint-8.tmp")
    shutil.copytree(full / "checkpoint-4", resumed / "checkpoint-6")
    (resumed / "checkpoint-6" / "trainer_state.json").unlink()
    log = train(resumed, *common, "train.resume_from_checkpoint=latest")
    assert "resumed from" in log and "checkpoint-4 at step 4" in log
    a, b = losses(full), losses(resumed)
    assert sorted(b) == [5, 6, 7, 8]
    for step in b:
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])


# ---------------------------------------------------------------- several processes

DIST_OVERRIDES = [
    TEST_MODEL,
    "train.max_steps=4",
    "train.logging_steps=1",
    "train.eval_steps=0",
    "train.save_steps=100",
]


def _single_run(tmp_path, extra) -> Path:
    """The one-process run that two-rank runs of ``extra`` are compared with: trained once per suite run and
    configuration, in this run's temporary root, which the pytest-xdist workers share (a file lock orders them)."""
    from filelock import FileLock

    run_root = tmp_path.parents[1] if os.environ.get("PYTEST_XDIST_WORKER") else tmp_path.parent
    out = run_root / ("single-" + "-".join(o.replace("=", "_") for o in extra) if extra else "single")
    with FileLock(f"{out}.lock"):
        if not (out / "final").exists():
            shutil.rmtree(out, ignore_errors=True)
            train(out, *DIST_OVERRIDES, "train.per_device_train_batch_size=8", *extra)
    return out


def _check_distributed(tmp_path, launcher, extra=(), env=None, multi_extra=()):
    """One process against two ranks on the same global batches; ``multi_extra`` only for the two ranks."""
    single = _single_run(tmp_path, list(extra))
    multi = tmp_path / "multi"
    run(
        [
            *launcher,
            "tests/dist_check.py",
            str(multi),
            *DIST_OVERRIDES,
            "train.per_device_train_batch_size=4",
            *QUIET,
            *extra,
            *multi_extra,
        ],
        env=env,
    )
    ranks = json.loads((multi / "dist_check.json").read_text())
    assert len(ranks) == 2
    for r in ranks:  # every rank saw a world of 2, consistently
        assert (r["seen"]["accelerate"], r["seen"]["torch"], r["seen"]["env"]) == (2, 2, 2)
    order = epoch_order(320, 0, 0)
    for step in range(3):  # each rank got its own half of the global micro-batch
        a, b = ranks[0]["split"][step], ranks[1]["split"][step]
        assert len(a) == len(b) == 4 and not set(a) & set(b)
        assert a + b == order[step * 8 : (step + 1) * 8]
    a, b = losses(single), losses(multi)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:  # same global batch, same masks: same loss
        assert b[step] == pytest.approx(a[step], abs=1e-5), (step, a[step], b[step])
    return ranks, single, multi


def _final_weights(out):
    from safetensors.torch import load_file

    path = out / "final" / "model.safetensors"
    return load_file(path) if path.exists() else load_file(out / "final" / "adapter" / "adapter_model.safetensors")


@pytest.mark.distributed
def test_torchrun_ddp_two_processes_match_one(tmp_path):
    """Two DDP ranks equal one process; the ranks also run the policy in checkpointed chunks of 3 sequences inside
    per-block checkpointing (model.forward_chunk: DDP sees one forward and one backward all the same)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    ranks, _, _ = _check_distributed(
        tmp_path, torchrun, multi_extra=["model.forward_chunk=3", "model.gradient_checkpointing=true"]
    )
    assert ranks[0]["seen"]["distributed_type"] == "MULTI_CPU"
    assert ranks[0]["param_sums"] == ranks[1]["param_sums"]  # replicas stayed in sync


def _resumes_exactly(tmp_path, done, launcher, overrides, env):
    """A copy of ``done``'s checkpoint-2, resumed under ``launcher`` with ``overrides``, gives ``done``'s losses for
    steps 3-4 (the checkpoint on disk, read back by every rank)."""
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(done / "checkpoint-2", resumed / "checkpoint-2")
    log = train(resumed, *overrides, "train.resume_from_checkpoint=latest", launcher=launcher, env=env)
    assert "at step 2" in log
    a, b = losses(done), losses(resumed)
    assert sorted(b) == [3, 4]
    for step in b:
        assert b[step] == pytest.approx(a[step], abs=1e-6)


@pytest.mark.distributed
@pytest.mark.parametrize(
    "config,extra",
    [
        ("zero2.yaml", []),
        ("zero3.yaml", ["lora.enabled=false", "train.learning_rate=1e-3"]),  # full fine-tuning, reference sharded too
    ],
)
def test_deepspeed_on_cpu_matches_one_process(tmp_path, config, extra):
    """The shipped ZeRO configs, 2 ranks against one process. Under ZeRO-2 (LoRA) the ranks also save checkpoint-2,
    which holds the adapter and its optimizer state only, and a resume from it continues exactly."""
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        f"recipes/accelerate/{config}",
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        "29533",
    ]
    saves = ["train.save_steps=2", "train.save_total_limit=null"] if config == "zero2.yaml" else []
    ranks, single, multi = _check_distributed(tmp_path, launch, extra, env=DS_ENV, multi_extra=saves)
    assert ranks[0]["seen"]["distributed_type"] == "DEEPSPEED"
    if config == "zero2.yaml":
        assert ranks[0]["param_sums"] == ranks[1]["param_sums"]
    a, b = _final_weights(single), _final_weights(multi)
    assert a.keys() == b.keys()
    for k in a:  # the saved (gathered) result equals the single-process one
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-4, msg=k)
    if config == "zero2.yaml":
        size = sum(f.stat().st_size for f in (multi / "checkpoint-2").rglob("*") if f.is_file())
        base = sum(p.numel() for p in load_file(ROOT / "data" / "tiny_test" / "model.safetensors").values()) * 4
        assert size < base  # the adapter, its optimizer state and the random states (~0.4 MB), never the fp32 base
        _resumes_exactly(
            tmp_path,
            multi,
            [*launch, "align/train_dpo.py"],
            [*DIST_OVERRIDES, "train.per_device_train_batch_size=4", *extra, *saves],
            env=DS_ENV,
        )


@pytest.mark.distributed
def test_uneven_evaluation_under_partitioned_zero3_finishes_and_matches_one_process(tmp_path):
    """5 eval pairs over 2 ranks with eval batch 2: rank 0 has 3 pairs (2 batches), rank 1 has 2 (1 batch).

    Under ZeRO-3 every forward gathers parameters collectively, so unequal forward counts hang; padded
    shards with zero-weight rows finish, and the metrics equal one process's.
    """
    common = [
        "train.max_steps=2",
        "train.logging_steps=1",
        "train.eval_steps=0",
        "data.max_eval_examples=5",
        "train.per_device_eval_batch_size=2",
        "lora.enabled=false",
        "train.learning_rate=1e-3",
    ]
    single = tmp_path / "single"
    train(single, *common, "train.per_device_train_batch_size=8")
    multi = tmp_path / "multi"
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(partitioning_zero3_config(tmp_path)),
        "--num_processes",
        "2",
        "--main_process_port",
        "29537",
        "align/train_dpo.py",
    ]
    run(
        [*launch, "recipe=demo", f"train.output_dir={multi}", *QUIET, *common, "train.per_device_train_batch_size=4"],
        env=DS_ENV,
        timeout=300,
    )
    a = [m for m in metrics(single) if "eval/loss" in m][-1]
    b = [m for m in metrics(multi) if "eval/loss" in m][-1]
    assert a["step"] == b["step"] == 2
    for key in ("eval/loss", "eval/logps/policy_chosen", "eval/rewards/margins"):
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-4), key


def test_full_fine_tuning_in_bf16_without_deepspeed_is_refused(tmp_path):
    proc = run_command(
        [
            sys.executable,
            "-m",
            "align.train_dpo",
            "recipe=demo",
            f"train.output_dir={tmp_path}",
            *QUIET,
            "lora.enabled=false",
            "model.dtype=bfloat16",
        ],
        env=ENV,
    )
    assert proc.returncode != 0 and "fp32 master weights" in proc.stderr and "Traceback" not in proc.stderr


def test_full_fine_tuning_moves_weights_at_a_small_learning_rate(tmp_path):
    """fp32 weights and Adam state: at lr 5e-7 (the beavertails default) two steps change almost every weight."""
    from safetensors.torch import load_file

    out = tmp_path / "full"
    train(
        out,
        "lora.enabled=false",
        "train.learning_rate=5e-7",
        "train.warmup_ratio=0",
        "train.max_steps=2",
        "train.do_eval=false",
        "train.eval_steps=0",
    )
    before = {k: v.float() for k, v in load_file(ROOT / "data" / "tiny_chat" / "model.safetensors").items()}
    after = load_file(out / "final" / "model.safetensors")
    changed = sum(int((after[k] != before[k]).sum()) for k in before)
    total = sum(v.numel() for v in before.values())
    assert changed / total > 0.9, changed / total


@pytest.mark.distributed
@pytest.mark.parametrize("config", ["zero2.yaml", "zero3_json.yaml"])
def test_deepspeed_trains_and_saves_a_bf16_checkpoint_in_bf16(tmp_path, config):
    """The shipped ZeRO configs (accelerate's, mixed_precision bf16; and the JSON one, bf16 "auto"), 2 CPU ranks, a
    bf16 checkpoint loaded from disk (the mechanics model data/tiny_test): trained and saved in bf16 (it used to be
    fp32: the trainer passed mixed_precision="no" and overrode the launcher). The shipped zero3.yaml is checked by
    the same assertions in tests/test_behaviour.py, whose ZeRO-3 run is the same launch (bf16, full fine-tuning)."""
    from safetensors import safe_open

    path = f"recipes/accelerate/{config}"
    out = tmp_path / "out"
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        path,
        "--num_processes",
        "2",
        "--main_process_port",
        "29539",
        "align/train_dpo.py",
    ]
    log = run(
        [
            *launch,
            "recipe=demo",
            f"train.output_dir={out}",
            *QUIET,
            TEST_MODEL,
            "model.dtype=bfloat16",
            "lora.enabled=false",
            "train.max_steps=2",
            "train.do_eval=false",
            "train.eval_steps=0",
            "train.per_device_train_batch_size=2",
            "train.learning_rate=1e-3",
        ],
        env=DS_ENV,
        timeout=400,
    )  # a small batch: bf16 is ~8x slower on CPU
    assert "weights bfloat16, mixed precision bf16 (DeepSpeed)" in log
    with safe_open(out / "final" / "model.safetensors", "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}, dtypes
    assert all(torch.isfinite(torch.tensor(v)) for v in losses(out).values())


@pytest.mark.distributed
def test_deepspeed_precision_that_disagrees_with_the_weights_fails_at_start(tmp_path):
    """The shipped ZeRO-2 config under accelerate launch; one rank is enough to be refused at start."""
    launch = [*LAUNCHERS["zero2"], "align/train_dpo.py"]
    launch[launch.index("--num_processes") + 1] = "1"
    proc = run_command(
        fresh_ports(
            [*launch, "recipe=demo", f"train.output_dir={tmp_path}", *QUIET, TEST_MODEL, "model.dtype=float32"]
        ),
        env=DS_ENV,
        timeout=300,
    )
    assert proc.returncode != 0 and "model.dtype=float32 but DeepSpeed would train in 'bf16'" in proc.stderr


@pytest.mark.distributed
@pytest.mark.parametrize("extra", [[], ["lora.enabled=false", "train.learning_rate=1e-3"]], ids=["lora", "full"])
def test_partitioned_zero3_saves_hold_the_trained_weights(tmp_path, extra):
    """ZeRO-3 with every parameter partitioned (threshold 0): the saved adapter / full weights equal one process's.
    The ranks run the policy and reference in chunks of 3 sequences (model.forward_chunk), the policy's recomputed
    in backward, which gathers the partitioned weights again there. Full fine-tuning also resumes from its
    checkpoint-2, every parameter and optimizer state partitioned, to the same losses for steps 3-4."""
    config = partitioning_zero3_config(tmp_path)
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--num_processes",
        "2",
        "--main_process_port",
        "29545",
    ]
    multi_extra = ["model.forward_chunk=3"] + (["train.save_steps=2", "train.save_total_limit=null"] if extra else [])
    _, single, multi = _check_distributed(tmp_path, launch, extra, env=DS_ENV, multi_extra=multi_extra)
    a, b = _final_weights(single), _final_weights(multi)
    assert a.keys() == b.keys() and all(b[k].numel() == a[k].numel() > 0 for k in a)  # nothing saved empty
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-4, msg=k)
    if extra:
        _resumes_exactly(
            tmp_path,
            multi,
            [*launch, "align/train_dpo.py"],
            [*DIST_OVERRIDES, "train.per_device_train_batch_size=4", *extra, *multi_extra],
            env=DS_ENV,
        )


@pytest.mark.distributed
def test_save_merged_under_zero3_is_refused_at_start(tmp_path):
    """Under accelerate launch with a ZeRO-3 config; one rank is enough to be refused at start."""
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(partitioning_zero3_config(tmp_path)),
        "--num_processes",
        "1",
        "--main_process_port",
        "29547",
        "align/train_dpo.py",
    ]
    proc = run_command(
        fresh_ports(
            [*launch, "recipe=demo", f"train.output_dir={tmp_path / 'o'}", *QUIET, TEST_MODEL, "train.save_merged=true"]
        ),
        env=DS_ENV,
        timeout=300,
    )
    assert proc.returncode != 0 and "save_merged=true is not supported under ZeRO-3" in proc.stderr


def test_verify_saved_fails_loudly_on_empty_or_missing_tensors(tmp_path):
    """What ZeRO-3 used to write for a merged model: (0,)-shaped tensors, reported as saved."""
    from safetensors.torch import save_file

    from align.export import verify_saved

    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    save_file({"a.weight": torch.zeros(4, 3)}, str(good / "model.safetensors"))
    save_file({"a.weight": torch.zeros(4, 3), "b.weight": torch.zeros(0)}, str(bad / "model.safetensors"))
    verify_saved(good, {"a.weight": (4, 3)})
    with pytest.raises(RuntimeError, match=r"empty: b.weight"):
        verify_saved(bad, {"a.weight": (4, 3), "b.weight": (0,)})
    with pytest.raises(RuntimeError, match=r"missing: c.weight.*wrong shape: a.weight"):
        verify_saved(good, {"a.weight": (3, 4), "c.weight": (2,)})


def test_a_new_run_into_a_used_output_dir_is_refused_unless_overwriting(tmp_path):
    out = tmp_path / "run"
    common = [TEST_MODEL, "train.max_steps=2", "train.eval_steps=0", "train.logging_steps=1"]
    common.append("train.overwrite_output_dir=false")
    train(out, *common)
    first = metrics(out)
    proc = run_command(
        [sys.executable, "-m", "align.train_dpo", "recipe=demo", f"train.output_dir={out}", *QUIET, *common], env=ENV
    )
    assert proc.returncode != 0 and "already holds a run" in proc.stderr and "Traceback" not in proc.stderr
    assert metrics(out) == first  # nothing appended
    (out / "notes.txt").write_text("mine")  # not the run's: overwrite refuses, removing nothing
    proc = run_command(
        [sys.executable, "-m", "align.train_dpo", "recipe=demo", f"train.output_dir={out}", *QUIET, *common[:-1]],
        env=ENV,
    )
    assert proc.returncode != 0 and "files that are not a run's (notes.txt)" in proc.stderr
    assert metrics(out) == first
    (out / "notes.txt").unlink()
    log = train(out, *common[:-1], "train.overwrite_output_dir=true", "train.learning_rate=1e-3")
    (removed,) = [line for line in log.splitlines() if line.startswith("overwrite: removed the earlier run's")]
    assert "config.yaml" in removed and "metrics.jsonl" in removed and "notes.txt" not in removed
    again = metrics(out)
    assert [m["step"] for m in again] == [m["step"] for m in first]  # one run's records, not two
    assert again != first
    foreign = tmp_path / "home"  # a directory with a folder named like a run's, but no run: nothing removed
    (foreign / "runs").mkdir(parents=True)
    proc = run_command(
        [sys.executable, "-m", "align.train_dpo", "recipe=demo", f"train.output_dir={foreign}", *QUIET, *common[:-1]],
        env=ENV,
    )
    assert proc.returncode != 0 and "no config.yaml (not an align run's directory)" in proc.stderr
    assert (foreign / "runs").is_dir()
