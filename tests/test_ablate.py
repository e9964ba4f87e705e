"""align.ablate: a 2-run training grid at toy size, its resume and failure handling, and the variance mode."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from align import ablate
from align.toy import ToyJoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PATH": "/usr/bin:/bin"}
SMALL = ["train.max_steps=2", "train.eval_steps=1", "train.logging_steps=1", "train.save_steps=2",
         "behaviour.prompts=null", "data.max_eval_examples=8", "train.report_to=none"]


def ablate_cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "align.ablate", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    args = ["recipe=demo", "grid.coupling=coupled,decoupled", f"grid.output_dir={out}", *SMALL]
    return out, args, ablate_cli(*args).stdout


@pytest.mark.slow
def test_grid_writes_runs_summary_and_plot(grid):
    out, _, log = grid
    assert "run 1/2: coupling-coupled" in log and "run 2/2: coupling-decoupled" in log
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert {r["coupling"] for r in rows} == {"coupled", "decoupled"}
    assert {r["step"] for r in rows} == {"0", "1", "2"} and all(r["status"] == "done" for r in rows)
    summary = (out / "summary.md").read_text()
    assert "| coupled |" in summary and "| decoupled |" in summary and "1/1" in summary
    assert (out / "ablation.png").stat().st_size > 10_000
    # the decoupled arm's margin noise is what the estimator ablation is about
    last = {r["coupling"]: float(r["eval/margin/sample_variance"]) for r in rows if r["step"] == "2"}
    assert last["decoupled"] > 10 * last["coupled"]


@pytest.mark.slow
def test_rerunning_a_finished_grid_does_no_work(grid):
    out, args, _ = grid
    before = {p: p.stat().st_mtime for p in out.glob("runs/*/metrics.jsonl")}
    log = ablate_cli(*args).stdout
    assert log.count("already done") == 2
    assert {p: p.stat().st_mtime for p in out.glob("runs/*/metrics.jsonl")} == before


@pytest.mark.slow
def test_variance_mode_on_a_trained_lora_output(grid, tmp_path):
    """policy = the coupled run's final adapter; the reference defaults to its recorded base (data/tiny_chat)."""
    out, _, _ = grid
    log = ablate_cli("variance", f"model.name_or_path={out}/runs/coupling-coupled/final", "variance.reps=3",
                     "variance.max_pairs=4", "variance.n_samples=1,2", "variance.estimators=time_free",
                     f"variance.output_dir={tmp_path}").stdout
    assert "reference `data/tiny_chat`" in log
    cells = json.loads((tmp_path / "variance.json").read_text())["cells"]
    assert len(cells) == 4 * 2 and all(c["var"] >= 0 and c["se"] >= 0 for c in cells)
    assert (tmp_path / "variance.png").exists() and "decoupled/coupled" in (tmp_path / "variance.md").read_text()


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
    assert "## Failed runs" in summary and "no_such_file.jsonl" in summary and "0/1" in summary


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
    values = ablate.measure_variance(E.scorer_from_logits(policy.logits_fn), E.scorer_from_logits(reference.logits_fn),
                                     [batch], mask_token_id=policy.mask_token_id, estimators=["time_free"],
                                     n_samples=[1, 4], reps=64)
    table = ablate.bootstrap(values, resamples=400)
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
    run = out / "runs" / "coupling-coupled"
    for model in (run / "final", run / "checkpoint-2"):
        proc = subprocess.run([sys.executable, "-m", "align.sampler", "--model", str(model), "--prompt", "Hello",
                               "--gen-length", "8", "--block-length", "8", "--steps", "8"], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    # --merge: the LoRA output as one plain model directory, the same network
    merged = out / "merged"
    proc = subprocess.run([sys.executable, "-m", "align.sampler", "--model", str(run / "final"), "--merge", str(merged)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
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
    start = out / "runs" / "coupling-coupled" / "checkpoint-2"
    run = tmp_path / "next"
    proc = subprocess.run([sys.executable, "-m", "align.train_dpo", "recipe=demo", f"model.name_or_path={start}",
                           f"train.output_dir={run}", *SMALL], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from align.models import adapter_base, load_model

    assert adapter_base(run / "final") == str(start)
    assert load_model(str(run / "final")) is not None
