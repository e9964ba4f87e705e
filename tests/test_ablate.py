"""align.ablate: a 2-arm x 3-seed training grid at toy size scored by one evaluator, its report's statistics, resume
and failure handling, and the variance modes (one model, along a run's checkpoints)."""

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from align import ablate, grid_report, variance
from align.toy import ToyJoint
from tests.launch import run_python

ROOT = Path(__file__).resolve().parents[1]
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PATH": "/usr/bin:/bin",
       "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"]}  # conftest shares the cores out among test workers
SMALL = ["train.max_steps=2", "train.eval_steps=1", "train.logging_steps=1", "train.save_steps=2",
         "behaviour.prompts=null", "data.max_eval_examples=8", "train.report_to=none", "eval.n_samples=4"]


def ablate_cli(*args, check=True):
    proc = run_python([sys.executable, "-m", "align.ablate", *args], env=ENV, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """2 arms x 3 seeds, 2 steps each, every checkpoint kept (for the variance path)."""
    out = tmp_path_factory.mktemp("grid")
    args = ["recipe=demo", "grid.coupling=coupled,decoupled", "grid.seeds=3", f"grid.output_dir={out}", *SMALL,
            "train.save_steps=1", "train.save_total_limit=null"]
    return out, args, ablate_cli(*args).stdout


@pytest.mark.slow
def test_grid_summary_is_scored_by_one_named_evaluator_with_intervals_and_paired_differences(grid):
    out, _, log = grid
    assert "run 1/6: coupling-coupled_seed-0" in log and "run 6/6: coupling-decoupled_seed-2" in log
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert {r["coupling"] for r in rows} == {"coupled", "decoupled"} and {r["seed"] for r in rows} == {"0", "1", "2"}
    assert {r["step"] for r in rows} == {"0", "1", "2"} and all(r["status"] == "done" for r in rows)
    summary = (out / "summary.md").read_text()
    assert "**Evaluator of every held-out column**: coupled time_free x4 (stratified, 4 groups), eval.seed=0" in summary
    assert "Not comparable" not in summary
    arm = next(line for line in summary.splitlines() if line.startswith("| coupling=decoupled | 3 |"))
    assert arm.count("[") >= 5  # mean [95% interval] over 3 seeds in every held-out column
    assert "## Paired differences along coupling (coupling=coupled − each other value)" in summary
    assert "coupling=coupled − coupling=decoupled, held-out margin (nats):" in summary and ", 3 seeds (" in summary
    assert "over 8 held-out pairs (mean over 3 seeds)" in summary
    assert "Monte Carlo standard error of the final accuracy" in summary
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


@pytest.mark.slow
def test_rerunning_a_finished_grid_does_no_work(grid):
    out, args, _ = grid
    before = {p: p.stat().st_mtime for p in out.glob("runs/*/metrics.jsonl")}
    log = ablate_cli(*args).stdout
    assert log.count("already done") == 6
    assert {p: p.stat().st_mtime for p in out.glob("runs/*/metrics.jsonl")} == before


@pytest.mark.slow
def test_variance_mode_on_a_trained_lora_output(grid, tmp_path):
    """policy = the coupled run's final adapter; the reference defaults to its recorded base (data/tiny_chat)."""
    out, _, _ = grid
    log = ablate_cli("variance", f"model.name_or_path={out}/runs/coupling-coupled_seed-0/final", "variance.reps=3",
                     "variance.max_pairs=4", "variance.n_samples=1,2", "variance.estimators=time_free",
                     f"variance.output_dir={tmp_path}").stdout
    assert "reference `data/tiny_chat`" in log
    cells = json.loads((tmp_path / "variance.json").read_text())["cells"]
    assert len(cells) == 4 * 2 and all(c["var"] >= 0 and c["se"] >= 0 for c in cells)
    assert (tmp_path / "variance.png").exists() and "decoupled/coupled" in (tmp_path / "variance.md").read_text()


@pytest.mark.slow
def test_variance_along_the_checkpoints_of_a_run(grid, tmp_path):
    """Step 0 (the reference itself) and checkpoint-1, -2 of one run, with the run's own estimator and n, on its
    held-out pairs: coupled variance exactly 0 while policy = reference, decoupled far above it throughout."""
    out, _, _ = grid
    run = out / "runs" / "coupling-coupled_seed-0"
    log = ablate_cli("variance", f"run={run}", "variance.reps=3", "variance.max_pairs=4",
                     f"variance.output_dir={tmp_path}").stdout
    data = json.loads((tmp_path / "variance_path.json").read_text())
    assert data["estimators"] == ["time_free"] and data["n_samples"] == [2]  # the demo's training estimator
    steps = data["arms"][""]
    assert list(steps) == ["0", "1", "2"]
    assert steps["0"]["time_free/coupled/2"]["var"] == 0
    assert all(s["time_free/decoupled/2"]["var"] > 100 for s in steps.values())
    assert "decoupled/coupled" in (tmp_path / "variance_path.md").read_text() and "4 held-out pairs" in log
    assert (tmp_path / "variance_path.png").stat().st_size > 10_000


def test_a_grid_whose_arms_would_be_evaluated_differently_is_refused(tmp_path):
    for axis in ("grid.eval.n_samples=4,8", "grid.behaviour.samples_per_prompt=1,2", "grid.data.eval_dataset="
                 "data/demo_safety_test.jsonl,data/demo_safety_train.jsonl"):
        proc = ablate_cli("recipe=demo", axis, f"grid.output_dir={tmp_path / 'g'}", check=False)
        assert proc.returncode != 0 and "would be evaluated differently" in proc.stderr, proc.stderr
        assert not (tmp_path / "g" / "runs").exists()


def _fake_run(root, cell, outcomes_by_step: dict, config: dict, margins: dict | None = None):
    """A finished run directory as the trainer leaves it, with chosen held-out metrics."""
    run = root / "runs" / ablate.cell_name(cell)
    run.mkdir(parents=True)
    import yaml

    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "ablate_status.json").write_text(json.dumps({"status": "done", "wall_s": 1.0, "cell": cell}))
    with open(run / "metrics.jsonl", "w") as f:
        for step, (acc, margin) in outcomes_by_step.items():
            f.write(json.dumps({"step": step, "eval/rewards/accuracies": acc, "eval/margin": margin,
                                "eval/dpo_loss": 0.5, "eval/examples": 4, "policy_tokens": 100 * step}) + "\n")
    if margins:
        with open(run / "eval_examples.jsonl", "w") as f:
            for i, m in margins.items():
                f.write(json.dumps({"step": max(outcomes_by_step), "id": i, "margin": m}) + "\n")


def test_report_pairs_by_seed_and_recovers_a_known_difference(tmp_path):
    """Arm b is arm a plus exactly 1 nat of margin, under a seed effect of ±5 nats: paired by seed the difference is
    1 with a zero-width interval; the same model under two arm labels gives 0, an interval covering 0."""
    from align.config import Config

    config = Config().to_dict()
    axes = {"estimator.coupling": ["a", "b", "c"], "train.seed": ["0", "1", "2"]}
    seed_effect = {"0": -5.0, "1": 0.0, "2": 5.0}
    for arm, shift in (("a", 0.0), ("b", -1.0), ("c", 0.0)):
        for seed, effect in seed_effect.items():
            _fake_run(tmp_path, {"estimator.coupling": arm, "train.seed": seed},
                      {0: (0.5, 0.0), 10: (0.6, 4 + effect + shift), 20: (0.9, 8 + effect + shift)}, config,
                      margins={i: 8 + effect + shift + i for i in range(4)})
    grid_report.report(tmp_path, axes, ablate.cells_of(axes), cell_name=ablate.cell_name, short=ablate.short,
                       status_of=ablate.status_of, target_accuracy=0.8, target_margin=6)
    summary = (tmp_path / "summary.md").read_text()
    assert "coupling=a − coupling=b, held-out margin (nats): +1.00 [+1.00, +1.00], 3 seeds (3 of 3 larger)" in summary
    assert "coupling=a − coupling=c, held-out margin (nats): +0.00 [+0.00, +0.00], 3 seeds (0 of 3 larger); the " \
           "interval covers 0" in summary
    assert "over 4 held-out pairs (mean over 3 seeds): +1.00 [+1.00, +1.00] (4 of 4 pairs larger)" in summary
    a_row = next(line for line in summary.splitlines() if line.startswith("| coupling=a | 3 |"))
    assert "8.00 [-4.42, 20.42]" in a_row  # mean 8, sd 5 over seeds: unpaired, the seed effect dominates
    speed = next(line for line in summary.splitlines() if line.startswith("| coupling=a |") and "(3/3)" in line)
    assert "20 [20, 20] (3/3)" in speed  # accuracy reaches 0.8 at step 20 in every seed
    assert "15 [-49, 79] (2/3)" in speed  # margin ≥ 6: step 10 (seed effect +5), step 20 (0), never (−5)


def test_select_picks_each_arms_learning_rate_by_its_mean_outcome(tmp_path):
    from align.config import Config

    config = Config().to_dict()
    axes = {"estimator.coupling": ["a", "b"], "train.learning_rate": ["1e-4", "1e-3"], "train.seed": ["0", "1"]}
    best = {"a": "1e-3", "b": "1e-4"}
    for cell in ablate.cells_of(axes):
        margin = 5.0 if cell["train.learning_rate"] == best[cell["estimator.coupling"]] else 2.0
        _fake_run(tmp_path, cell, {0: (0.5, 0.0), 10: (0.9, margin + int(cell["train.seed"]))}, config)
    grid_report.report(tmp_path, axes, ablate.cells_of(axes), cell_name=ablate.cell_name, short=ablate.short,
                       status_of=ablate.status_of, select="best:margin")
    summary = (tmp_path / "summary.md").read_text()
    assert "| coupling=a | 2.50 | 5.50 | 1e-3 |" in summary and "| coupling=b | 5.50 | 2.50 | 1e-4 |" in summary
    assert "coupling=a − coupling=b, held-out margin (nats): +0.00" in summary  # both at their best: 5 + seed
    with pytest.raises(ablate.ConfigError, match="grid.learning_rate"):
        ablate.parse_grid(["recipe=demo", "grid.coupling=coupled,decoupled", "grid.select=best:margin"])


def test_a_bad_axis_fails_before_any_run(tmp_path):
    proc = ablate_cli("recipe=demo", "grid.train.learnig_rate=1e-4,2e-4", f"grid.output_dir={tmp_path / 'g'}",
                      check=False)
    assert proc.returncode != 0 and "did you mean 'train.learning_rate'" in proc.stderr
    assert not (tmp_path / "g" / "runs").exists()


@pytest.mark.slow
def test_a_failing_run_is_listed_with_its_error(tmp_path):
    out = tmp_path / "g"
    proc = ablate_cli("recipe=demo", "grid.data.dataset=data/no_such_file.jsonl", f"grid.output_dir={out}", *SMALL)
    assert "failed" in proc.stdout
    summary = (out / "summary.md").read_text()
    assert "## Failed runs" in summary and "no_such_file.jsonl" in summary


def test_one_cell_per_task(tmp_path):
    recipe, base, axes, options = ablate.parse_grid(["recipe=demo", "grid.coupling=coupled,decoupled", "grid.seeds=3",
                                                     "grid.task=4"])
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
    values = variance.measure_variance(E.scorer_from_logits(policy.logits_fn), E.scorer_from_logits(reference.logits_fn),
                                       [batch], mask_token_id=policy.mask_token_id, estimators=["time_free"],
                                       n_samples=[1, 4], reps=64)
    table = variance.bootstrap(values, resamples=400)
    for n in (1, 4):
        var, se = table["var"]["time_free", "coupled", n]
        per_pair = values["time_free", "coupled", n]
        assert 0 < se < var and se == pytest.approx(per_pair.std().item() / len(per_pair) ** 0.5, rel=0.35)
        ratio, ratio_se = table["ratio_decoupled_coupled"]["time_free", n]
        assert ratio > 3 and ratio_se > 0
    assert table["var"]["time_free", "coupled", 4][0] < table["var"]["time_free", "coupled", 1][0]


@pytest.mark.slow
def test_trained_outputs_load_and_sample(grid):
    """What a run leaves (final/ with its adapter, checkpoint-N) loads as a model and samples from the CLI."""
    out, _, _ = grid
    run = out / "runs" / "coupling-coupled_seed-0"
    for model in (run / "final", run / "checkpoint-2"):
        proc = run_python([sys.executable, "-m", "align.sampler", "--model", str(model), "--prompt", "Hello",
                           "--gen-length", "8", "--block-length", "8", "--steps", "8"], env=ENV, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    # --merge: the LoRA output as one plain model directory, the same network
    merged = out / "merged"
    proc = run_python([sys.executable, "-m", "align.sampler", "--model", str(run / "final"), "--merge", str(merged)],
                      env=ENV, timeout=300)
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


@pytest.mark.slow
def test_training_starts_from_a_lora_output(grid, tmp_path):
    """model.name_or_path = a LoRA run's final/ (or checkpoint-N): its base with the adapter merged, tokenizer
    from the output or its base; the new adapter records that start as its base, so its final/ loads too."""
    out, _, _ = grid
    start = out / "runs" / "coupling-coupled_seed-0" / "checkpoint-2"
    run = tmp_path / "next"
    proc = run_python([sys.executable, "-m", "align.train_dpo", "recipe=demo", f"model.name_or_path={start}",
                       f"train.output_dir={run}", *SMALL], env=ENV, timeout=600)
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
