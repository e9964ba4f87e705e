"""align.ablate: a 2-arm x 3-seed training grid at toy size scored by one evaluator, its report's statistics, resume
and failure handling, and the variance modes (one model, along a run's checkpoints)."""

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from align import ablate, variance
from align.toy import ToyJoint
from tests.helpers import cells_forked, run_command

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PATH": "/usr/bin:/bin",
    "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"],
}  # conftest shares the cores out among test workers
SMALL = [
    "train.max_steps=2",
    "train.eval_steps=1",
    "train.logging_steps=1",
    "train.save_steps=2",
    "behaviour.prompts=null",
    "data.max_eval_examples=8",
    "train.report_to=none",
    "eval.n_samples=4",
]


def ablate_cli(*args, check=True, forked_cells=True):
    """``python -m align.ablate ARGS``; its cells forked from it (tests/helpers.py), or, with
    ``forked_cells=False``, each started as ``align.ablate`` starts it (a new python)."""
    setup = cells_forked if forked_cells else None
    proc = run_command([sys.executable, "-m", "align.ablate", *args], env=ENV, timeout=600, setup=setup)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """2 arms x 2 learning rates chosen on the validation split (1 selection seed), then 3 reported seeds at each
    arm's chosen rate; 2 steps each, every checkpoint kept (for the variance path)."""
    out = tmp_path_factory.mktemp("grid")
    args = [
        "recipe=demo",
        "grid.coupling=coupled,decoupled",
        "grid.learning_rate=2e-4,1e-3",
        "grid.select=best:margin",
        "grid.validation=data/demo_safety_val.jsonl",
        "grid.seeds=3",
        f"grid.output_dir={out}",
        "model.name_or_path=data/tiny_test",  # the mechanics tests' small model (tests/test_trainer.TEST_MODEL)
        *SMALL,
        "train.save_steps=1",
        "train.save_total_limit=null",
    ]
    return out, args, ablate_cli(*args).stdout


def run_of(out, arm: str, seed: str) -> Path:
    """The reported run of an arm and seed (its directory name holds the learning rate the selection chose)."""
    (run,) = [
        p
        for p in (out / "runs").iterdir()
        if p.name.startswith(f"coupling-{arm}_") and p.name.endswith(f"_seed-{seed}")
    ]
    return run


@pytest.mark.slow
def test_grid_summary_is_scored_by_one_named_evaluator_with_a_primary_outcome_and_paired_differences(grid):
    out, _, log = grid
    assert "selection: 4 runs on the validation split" in log and "run 6/6: coupling-decoupled_learning_rate-" in log
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert {r["coupling"] for r in rows} == {"coupled", "decoupled"} and {r["seed"] for r in rows} == {"0", "1", "2"}
    assert {r["step"] for r in rows} == {"0", "1", "2"} and all(r["status"] == "done" for r in rows)
    summary = (out / "summary.md").read_text()
    assert "**Evaluator of every held-out column**: coupled time_free x4 (stratified, 4 groups), eval.seed=0" in summary
    assert "Not comparable" not in summary and f"# Ablation: {out.name}\n" in summary
    assert summary.split("\n## ")[2].startswith("Primary outcome: held-out reward accuracy")  # after the selection
    primary = summary.split("## Primary outcome")[1].split("\n## ")[0]
    assert "- coupling=decoupled: " in primary and "3 seeds x 8 units" in primary
    assert "**coupling=coupled − coupling=decoupled: " in primary and "sign-flip p over 3 seeds" in primary
    assert "adjusted together by Holm's method" in summary and "Pairs whose final margin is within 2" in summary
    outcomes = list(csv.DictReader(open(out / "outcomes.csv")))
    assert len(outcomes) == 6 and all(r["margin"] and r["accuracy_curve"] for r in outcomes)
    assert (out / "ablation.png").stat().st_size > 10_000
    # one evaluator: at step 0 (both arms start from the same model) each seed's held-out metrics are identical
    evals = {(r["coupling"], r["seed"]): r for r in rows if r["step"] == "0"}
    for seed in ("0", "1", "2"):
        a, b = evals["coupled", seed], evals["decoupled", seed]
        assert all(a[k] == b[k] for k in a if k.startswith("eval/"))
    # while the training estimator's own noise is what differs between the arms
    train = {r["coupling"]: float(r["margin/sample_variance"]) for r in rows if r["step"] == "2" and r["seed"] == "0"}
    assert train["decoupled"] > 10 * train["coupled"]
    # the report regenerates from its tables alone
    before = (out / "summary.md").read_bytes()
    ablate_cli(f"report={out}")
    assert (out / "summary.md").read_bytes() == before


@pytest.mark.slow
def test_learning_rates_are_chosen_on_the_validation_split_never_on_the_reported_held_out_data(grid):
    import yaml

    out, _, _ = grid
    selection = json.loads((out / "select" / "selection.json").read_text())
    assert selection["seeds"] == ["1000"] and selection["learning_rates"] == ["2e-4", "1e-3"]
    assert [a["label"] for a in selection["arms"]] == ["coupling=coupled", "coupling=decoupled"]
    for run in (out / "select" / "runs").iterdir():
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["data"]["eval_dataset"] == "data/demo_safety_val.jsonl" and config["train"]["seed"] == 1000
        assert config["behaviour"]["prompts"] is None
        assert "demo_safety_test" not in (run / "train.log").read_text()
    for arm in selection["arms"]:
        chosen = run_of(out, arm["values"]["estimator.coupling"], "0")
        assert chosen.name == f"coupling-{arm['values']['estimator.coupling']}_learning_rate-{arm['chosen']}_seed-0"
        assert (
            yaml.safe_load((chosen / "config.yaml").read_text())["data"]["eval_dataset"]
            == "data/demo_safety_test.jsonl"
        )
    summary = (out / "summary.md").read_text()
    assert "## Learning rate per arm (grid.select=best:margin)" in summary
    assert "the reported seeds below were not used to choose, and the reported held-out data was not read" in summary


@pytest.mark.slow
def test_rerunning_a_finished_grid_does_no_work(grid):
    out, args, _ = grid
    before = {p: p.stat().st_mtime for p in out.glob("**/runs/*/metrics.jsonl")}
    log = ablate_cli(*args).stdout
    assert log.count("already done") == 10  # 4 selection runs and 6 reported runs
    assert {p: p.stat().st_mtime for p in out.glob("**/runs/*/metrics.jsonl")} == before


@pytest.mark.slow
def test_variance_mode_on_a_trained_lora_output(grid, tmp_path):
    """policy = the coupled run's final adapter; the reference defaults to its recorded base (data/tiny_test)."""
    out, _, _ = grid
    log = ablate_cli(
        "variance",
        f"model.name_or_path={run_of(out, 'coupled', '0')}/final",
        "variance.reps=3",
        "variance.max_pairs=4",
        "variance.n_samples=1,2",
        "variance.estimators=time_free",
        f"variance.output_dir={tmp_path}",
    ).stdout
    assert "reference `data/tiny_test`" in log
    cells = json.loads((tmp_path / "variance.json").read_text())["cells"]
    assert len(cells) == 4 * 2 and all(c["var"] >= 0 and c["se"] >= 0 for c in cells)
    assert (tmp_path / "variance.png").exists() and "decoupled/coupled" in (tmp_path / "variance.md").read_text()


@pytest.mark.slow
def test_variance_along_the_checkpoints_of_a_run(grid, tmp_path):
    """Step 0 (the reference itself) and checkpoint-1, -2 of one run, with the run's own estimator and n, on its
    held-out pairs: coupled variance exactly 0 while policy = reference, decoupled far above it throughout."""
    out, _, _ = grid
    run = run_of(out, "coupled", "0")
    log = ablate_cli(
        "variance", f"run={run}", "variance.reps=3", "variance.max_pairs=4", f"variance.output_dir={tmp_path}"
    ).stdout
    data = json.loads((tmp_path / "variance_path.json").read_text())
    assert data["estimators"] == ["time_free"] and data["n_samples"] == [2]  # the demo's training estimator
    steps = data["arms"][""]
    assert list(steps) == ["0", "1", "2"]
    assert steps["0"]["time_free/coupled/2"]["var"] == 0
    assert all(s["time_free/decoupled/2"]["var"] > 100 for s in steps.values())
    assert "decoupled/coupled" in (tmp_path / "variance_path.md").read_text() and "4 held-out pairs" in log
    assert (tmp_path / "variance_path.png").stat().st_size > 10_000


def test_a_grid_whose_arms_would_be_evaluated_differently_is_refused(tmp_path):
    for axis in (
        "grid.eval.n_samples=4,8",
        "grid.behaviour.samples_per_prompt=1,2",
        "grid.data.eval_dataset=data/demo_safety_test.jsonl,data/demo_safety_train.jsonl",
    ):
        proc = ablate_cli("recipe=demo", axis, f"grid.output_dir={tmp_path / 'g'}", check=False)
        assert proc.returncode != 0 and "would be evaluated differently" in proc.stderr, proc.stderr
        assert not (tmp_path / "g" / "runs").exists()


def test_select_needs_a_learning_rate_axis_and_a_known_outcome():
    with pytest.raises(ablate.ConfigError, match="grid.learning_rate"):
        ablate.parse_grid(["recipe=demo", "grid.coupling=coupled,decoupled", "grid.select=best:margin"])
    with pytest.raises(ablate.ConfigError, match="grid.primary='margn'"):
        ablate.parse_grid(["recipe=demo", "grid.coupling=coupled,decoupled", "grid.primary=margn"])


def test_a_bad_axis_fails_before_any_run(tmp_path):
    proc = ablate_cli(
        "recipe=demo", "grid.train.learnig_rate=1e-4,2e-4", f"grid.output_dir={tmp_path / 'g'}", check=False
    )
    assert proc.returncode != 0 and "did you mean 'train.learning_rate'" in proc.stderr
    assert not (tmp_path / "g" / "runs").exists()


@pytest.mark.slow
def test_a_failing_run_is_listed_with_its_error(tmp_path):
    out = tmp_path / "g"
    proc = ablate_cli(
        "recipe=demo",
        "grid.data.dataset=data/no_such_file.jsonl",
        f"grid.output_dir={out}",
        *SMALL,
        forked_cells=False,  # the cell as the product starts it: a python process of its own
    )
    assert "failed" in proc.stdout
    summary = (out / "summary.md").read_text()
    assert "## Failed runs" in summary and "no_such_file.jsonl" in summary


def test_one_cell_per_task(tmp_path):
    recipe, base, axes, options = ablate.parse_grid(
        ["recipe=demo", "grid.coupling=coupled,decoupled", "grid.seeds=3", "grid.task=4"]
    )
    cells = ablate.cells_of(axes)
    assert len(cells) == 6 and options["task"] == "4"
    assert cells[4] == {"estimator.coupling": "decoupled", "train.seed": "1"}
    assert ablate.cell_name(cells[4]) == "coupling-decoupled_seed-1"


def test_variance_bootstrap_on_the_toy():
    """Coupled beats decoupled on the toy, and the bootstrap SEs are of the size pair-to-pair spread implies."""
    from align import estimators as E

    policy = ToyJoint.random(V=3, T=6, seed=0)
    reference = policy.perturbed(0.3, seed=5)
    ids = policy.sample(16, seed=21)
    chosen, rejected = ids[:8].clone(), ids[8:].clone()
    rejected[:, :2] = chosen[:, :2]
    resp = torch.zeros_like(chosen, dtype=torch.bool)
    resp[:, 2:] = True
    batch = {"chosen_ids": chosen, "rejected_ids": rejected, "response_mask": resp}
    values = variance.measure_variance(
        E.scorer_from_logits(policy.logits_fn),
        E.scorer_from_logits(reference.logits_fn),
        [batch],
        mask_token_id=policy.mask_token_id,
        estimators=["time_free"],
        n_samples=[1, 4],
        reps=64,
    )
    table = variance.bootstrap(values, resamples=400)
    for n in (1, 4):
        var, se = table["var"]["time_free", "coupled", n]
        per_pair = values["time_free", "coupled", n]
        assert 0 < se < var and se == pytest.approx(per_pair.std().item() / len(per_pair) ** 0.5, rel=0.35)
        ratio, lo, hi = table["ratio_decoupled_coupled"]["time_free", n]
        assert 3 < ratio and lo < ratio < hi
    assert table["var"]["time_free", "coupled", 4][0] < table["var"]["time_free", "coupled", 1][0]


@pytest.mark.slow
def test_trained_outputs_load_and_sample(grid):
    """What a run leaves (final/ with its adapter, checkpoint-N) loads as a model and samples from the CLI."""
    out, _, _ = grid
    run = run_of(out, "coupled", "0")
    for model in (run / "final", run / "checkpoint-2"):
        proc = run_command(
            [
                sys.executable,
                "-m",
                "align.sampler",
                "--model",
                str(model),
                "--prompt",
                "Hello",
                "--gen-length",
                "8",
                "--block-length",
                "8",
                "--steps",
                "8",
            ],
            env=ENV,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    # --merge: the LoRA output as one plain model directory, the same network
    merged = out / "merged"
    proc = run_command(
        [sys.executable, "-m", "align.sampler", "--model", str(run / "final"), "--merge", str(merged)],
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0 and f"merged model written to {merged}" in proc.stdout, proc.stderr[-2000:]
    from align.models import adapter_dir, load_model, logits_fn

    assert adapter_dir(merged) is None and (merged / "model.safetensors").exists()
    assert (merged / "tokenizer_config.json").exists()
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a = logits_fn(load_model(str(run / "final")).eval())(ids, mask)
        b = logits_fn(load_model(str(merged)).eval())(ids, mask)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    # the export's own entry point writes the same model
    exported = out / "exported"
    proc = run_command(
        [sys.executable, "-m", "align.export", "--model", str(run / "final"), "--out", str(exported)],
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0 and f"merged model written to {exported}" in proc.stdout, proc.stderr[-2000:]
    assert (exported / "model.safetensors").read_bytes() == (merged / "model.safetensors").read_bytes()
    assert (exported / "training_config.yaml").exists()  # the card's record, from the save


@pytest.mark.slow
def test_training_starts_from_a_lora_output(grid, tmp_path):
    """model.name_or_path = a LoRA run's final/ (or checkpoint-N): its base with the adapter merged, tokenizer
    from the output or its base; the new adapter records that start as its base, so its final/ loads too."""
    out, _, _ = grid
    start = run_of(out, "coupled", "0") / "checkpoint-2"
    run = tmp_path / "next"
    proc = run_command(
        [
            sys.executable,
            "-m",
            "align.train_dpo",
            "recipe=demo",
            f"model.name_or_path={start}",
            f"train.output_dir={run}",
            *SMALL,
        ],
        env=ENV,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from align.models import adapter_base, load_model

    assert adapter_base(run / "final") == str(start)
    assert load_model(str(run / "final")) is not None


def test_help_names_every_grid_and_variance_option(capsys):
    from align import variance
    from align.ablate import GRID_OPTIONS, main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    missing = [f"grid.{k}" for k in GRID_OPTIONS if f"grid.{k}" not in text]
    missing += [f"variance.{k}" for k in variance.OPTIONS if f"variance.{k}" not in text]
    assert not missing, missing
