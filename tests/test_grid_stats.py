"""align.grid_stats and the grid report's statistics: two-way intervals that cover on simulated grids with known
seed, cluster and Monte Carlo components; multiplicity; censored learning speed; the report regenerated from its
tables; the variance path's cluster bootstrap."""

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from align import ablate, grid_report
from align import grid_stats as G
from align.variance import bootstrap

GRIDS = 400
TOLERANCE = 3 * math.sqrt(0.95 * 0.05 / GRIDS)  # 3 binomial SEs of a coverage over 400 grids


def simulate(rng, seeds=5, clusters=40, per=4, sd_seed=0.0, sd_cluster=0.0, sd_unit=0.0, sd_mc=0.0, sd_resid=0.0):
    """A seeds x units table: seed effects, cluster effects shared by a cluster's units, unit effects, an
    evaluator error per unit shared by every seed (the same masks for every run), and seed x unit noise."""
    J = clusters * per
    labels = np.repeat(np.arange(clusters), per)
    table = (
        rng.normal(0, sd_seed, seeds)[:, None]
        + rng.normal(0, sd_cluster, clusters)[labels][None, :]
        + rng.normal(0, sd_unit, J)[None, :]
        + rng.normal(0, sd_mc, J)[None, :]
        + rng.normal(0, sd_resid, (seeds, J))
    )
    return table, labels


REGIMES = {
    "seeds": dict(sd_seed=1.0, sd_cluster=0.1, sd_unit=0.1, sd_mc=0.1, sd_resid=0.2),
    "clusters": dict(sd_seed=0.05, sd_cluster=1.0, sd_unit=0.5, sd_mc=0.2, sd_resid=0.3),
    "monte carlo": dict(sd_seed=0.05, sd_cluster=0.1, sd_unit=0.1, sd_mc=1.0, sd_resid=0.3),
    "mixed, few clusters": dict(clusters=8, per=8, sd_seed=0.3, sd_cluster=0.5, sd_unit=0.5, sd_mc=0.5, sd_resid=0.5),
}


@pytest.mark.parametrize("regime", REGIMES)
def test_two_way_interval_covers_the_true_mean_95_percent_of_the_time(regime):
    """400 simulated grids per regime (true mean 0): the two-way 95% interval covers it within 3 binomial SEs
    of 95%, whichever source of error dominates: seeds, clusters of held-out units, or the evaluator's error."""
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(GRIDS):
        table, labels = simulate(rng, **REGIMES[regime])
        r = G.two_way(table, labels)
        covered += r["lo"] <= 0 <= r["hi"]
    assert abs(covered / GRIDS - 0.95) < TOLERANCE, covered / GRIDS


def test_an_interval_over_seeds_alone_does_not_cover_when_clusters_or_masks_dominate():
    """Why the two-way interval: the old interval over seeds (conditional on one held-out set and one mask draw)
    covers far less than 95% when the held-out units or the evaluator's error dominate."""
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(GRIDS):
        table, _ = simulate(rng, **REGIMES["monte carlo"])
        per_seed = table.mean(1)
        ci = G.restricted_mean(list(per_seed), [True] * len(per_seed))
        covered += ci["lo"] <= 0 <= ci["hi"]
    assert covered / GRIDS < 0.8


def test_the_same_model_under_two_arm_labels_gives_differences_that_cover_zero():
    """Two arms drawn from one distribution (same seeds' initial adapters, same units and masks, independent
    training noise): the paired two-way interval of the difference covers 0 in ~95% of 400 grids."""
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(GRIDS):
        labels = np.repeat(np.arange(30), 4)
        shared = rng.normal(0, 1.0, 120)[None, :] + rng.normal(0, 0.5, 5)[:, None]  # units, masks, seeds in common
        a = shared + rng.normal(0, 0.3, 5)[:, None] + rng.normal(0, 0.4, (5, 120))
        b = shared + rng.normal(0, 0.3, 5)[:, None] + rng.normal(0, 0.4, (5, 120))
        r = G.two_way(a - b, labels)
        covered += r["lo"] <= 0 <= r["hi"]
    assert abs(covered / GRIDS - 0.95) < TOLERANCE, covered / GRIDS


def test_two_way_by_hand_and_edge_cases():
    # no variation at all: a zero SE, and the verdict says so instead of calling it significant
    flat = G.two_way(np.ones((3, 4)), [0, 0, 1, 1])
    assert flat["se"] == 0 and "identical" in G.verdict(flat)
    # without clusters and with a balanced table the variance is (MS_seed + MS_unit − MS_resid) / (S J)
    rng = np.random.default_rng(3)
    Y = rng.normal(size=(4, 6)) + 2 * rng.normal(size=(4, 1)) + 2 * rng.normal(size=(1, 6))
    S_, J = Y.shape
    m, row, col = Y.mean(), Y.mean(1), Y.mean(0)
    ms_seed = J * ((row - m) ** 2).sum() / (S_ - 1)
    ms_unit = S_ * ((col - m) ** 2).sum() / (J - 1)
    ms_res = ((Y - row[:, None] - col[None, :] + m) ** 2).sum() / ((S_ - 1) * (J - 1))
    assert G.two_way(Y)["se"] ** 2 == pytest.approx((ms_seed + ms_unit - ms_res) / (S_ * J))
    # one seed: over clusters only
    one = G.two_way(Y[:1], [0, 0, 1, 1, 2, 2])
    assert math.isnan(one["v_seed"]) and math.isfinite(one["se"])


def test_sign_flip_holm_and_tost():
    assert G.sign_flip_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)  # every seed the same direction: 2/2^5
    assert G.sign_flip_p([1, -1]) == 1.0
    assert G.holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    r = {"mean": 0.01, "se": 0.01, "df": 50.0, "p": 0.3}
    assert G.tost(r, 0.05) and not G.tost(r, 0.02)
    assert G.verdict(r, margin=0.05).startswith("equivalent") and G.verdict(r) == "no difference detected"
    assert G.verdict({"mean": 1.0, "se": 0.1, "p": 0.001}, names=("a", "b")) == "a higher"


def test_crossings_are_interpolated_and_censored():
    assert G.crossing([0, 20, 40], [0.5, 0.6, 0.9], 0.8) == (pytest.approx(20 + 20 * 2 / 3), True)
    assert G.crossing([0, 20, 40], [0.5, 0.6, 0.7], 0.8) == (40, False)  # never: censored at the last step
    assert G.crossing([0, 20], [0.9, 1.0], 0.8) == (0, True)
    r = G.restricted_mean([10, 30, 40, 40], [True, True, False, False])
    assert r["mean"] == 30 and r["censored"] == 2 and r["median"] == 30  # Kaplan-Meier: S = 3/4, then 1/2 at 30
    r = G.restricted_mean([10, 40, 40, 40], [True, False, False, False])
    assert r["median"] is None  # S never reaches 1/2: not reached
    r = G.restricted_mean([10, 20, 30, 40], [True, True, True, False])
    assert r["median"] == 20


def test_a_duplicated_run_does_not_shrink_the_variance_path_se():
    """Pairs are resampled as clusters with all their runs: the same run twice gives the same SE as once (resampled
    as independent units it would shrink by √2), and ratios come with percentile intervals."""
    g = torch.Generator().manual_seed(0)
    values = {
        ("time_free", "coupled", 2): torch.rand(32, generator=g) + 0.5,
        ("time_free", "decoupled", 2): torch.rand(32, generator=g) * 10 + 5,
    }
    once = bootstrap(values)
    twice = {k: torch.cat([v, v]) for k, v in values.items()}
    clustered = bootstrap(twice, clusters=list(range(32)) * 2)
    naive = bootstrap(twice)
    for key in values:
        assert clustered["var"][key][1] == pytest.approx(once["var"][key][1])
        assert naive["var"][key][1] < 0.8 * once["var"][key][1]
    point, lo, hi = clustered["ratio_decoupled_coupled"]["time_free", 2]
    assert lo < point < hi


# ------------------------------------------------------------------------------------------ the report on fake runs
def fake_run(root, cell, curve: dict, pair_margins: dict, behaviour: list | None = None, config=None, runs_dir="runs"):
    """A finished run directory as the trainer leaves it: metrics, per-pair evaluations at the last step,
    behaviour answers (``behaviour``: (prompt, kind, task_id, correct) per prompt) and its config."""
    import yaml

    from align.config import Config

    run = root / runs_dir / ablate.cell_name(cell)
    run.mkdir(parents=True)
    config = config or Config().to_dict()
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "ablate_status.json").write_text(json.dumps({"status": "done", "wall_s": 1.0, "cell": cell}))
    last = max(curve)
    with open(run / "metrics.jsonl", "w") as f:
        for step, (acc, margin) in curve.items():
            f.write(
                json.dumps(
                    {
                        "step": step,
                        "eval/rewards/accuracies": acc,
                        "eval/margin": margin,
                        "eval/dpo_loss": 0.5,
                        "eval/examples": len(pair_margins),
                        "policy_tokens": 100 * step,
                    }
                )
                + "\n"
            )
    with open(run / "eval_examples.jsonl", "w") as f:
        for i, m in pair_margins.items():
            f.write(
                json.dumps(
                    {
                        "step": last,
                        "id": i,
                        "margin": m,
                        "margin/mc_var": 0.01,
                        "rewards/accuracies": float(m > 0),
                        "logratio/chosen": m / 2,
                        "logratio/rejected": -m / 2,
                        "dpo_loss": 0.5,
                    }
                )
                + "\n"
            )
    if behaviour:
        with open(run / "behaviour.jsonl", "w") as f:
            for prompt, kind, task, correct in behaviour:
                f.write(
                    json.dumps(
                        {
                            "step": last,
                            "prompt": prompt,
                            "kind": kind,
                            "task_id": task,
                            "sample": 0,
                            "answer": "x",
                            "refusal": kind == "harmful",
                            "well_formed": True,
                            "correct": correct,
                            "reward": float(correct),
                        }
                    )
                    + "\n"
                )


def write_grid(root, axes, primary="accuracy", **options):
    (root / "grid.json").write_text(
        json.dumps(
            {
                "recipe": "demo",
                "overrides": [],
                "axes": axes,
                "options": {"target_accuracy": "0.8", **options},
                "primary": primary,
            }
        )
    )


def test_the_report_states_one_primary_outcome_first_adjusts_the_rest_and_regenerates_byte_identically(tmp_path):
    """Arm b is arm a minus 1 nat of margin on every pair; arm c is arm a under another label. Primary: the
    reward of the behaviour prompts, correct with probability 0.9 (a, c) or 0.5 (b)."""
    axes = {"estimator.coupling": ["a", "b", "c"], "train.seed": ["0", "1", "2", "3", "4"]}
    rng = random.Random(0)
    unit = {i: rng.gauss(0, 2) for i in range(24)}
    prompts = [(f"p{i}", ("everyday", "borderline", "harmful")[i % 3], f"t{i // 2}") for i in range(60)]
    for seed in axes["train.seed"]:
        effect = rng.gauss(0, 1)
        for arm, shift in (("a", 0.0), ("b", -1.0), ("c", 0.0)):
            noise = {i: rng.gauss(0, 0.3) for i in unit}
            margins = {i: 5 + effect + unit[i] + shift + noise[i] for i in unit}
            judged = [(p, k, t, rng.random() < (0.5 if arm == "b" else 0.9)) for p, k, t in prompts]
            fake_run(
                tmp_path,
                {"estimator.coupling": arm, "train.seed": seed},
                {0: (0.5, 0.0), 10: (0.7 + 0.01 * int(seed), 3 + effect), 20: (0.9, 5 + effect + shift)},
                margins,
                judged,
            )
    write_grid(tmp_path, axes, primary="reward")
    cells = ablate.cells_of(axes)
    grid_report.collect(tmp_path, cells, cell_name=ablate.cell_name, status_of=ablate.status_of)
    grid_report.summarize(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    first_section = summary.split("## ")[1]
    assert first_section.startswith("Primary outcome: reward: correct behaviour, all prompts")
    b_line = next(x for x in first_section.splitlines() if x.startswith("- **coupling=a − coupling=b"))
    assert "coupling=a higher" in b_line and "5 seeds x 60 units in 30 clusters" in b_line
    c_line = next(x for x in first_section.splitlines() if x.startswith("- **coupling=a − coupling=c"))
    assert "no difference detected" in c_line
    assert "adjusted together by Holm's method" in summary
    margin_row = next(x for x in summary.splitlines() if x.startswith("| held-out margin (nats) | +"))
    assert margin_row.endswith("| coupling=a higher |")  # 1 nat on every pair, whatever the seed
    assert "Evaluations every" in summary and "censored" in summary
    assert "DPO loss (no RPO term; a function of the margins)" in summary.split("## Descriptive outcomes")[1]
    assert str(tmp_path) not in summary  # the header names the grid, not the absolute directory it ran in
    before = (tmp_path / "summary.md").read_bytes()
    (tmp_path / "summary.md").unlink()
    import shutil

    shutil.rmtree(tmp_path / "runs")  # the tables alone regenerate it
    ablate.main([f"report={tmp_path}"])
    assert (tmp_path / "summary.md").read_bytes() == before


def test_learning_speed_rows_interpolate_censor_and_never_call_a_zero_width_interval_significant(tmp_path):
    from align.config import Config

    config = Config().to_dict()
    config["train"]["eval_steps"] = 20
    axes = {"estimator.coupling": ["a", "b"], "train.seed": ["0", "1", "2"]}
    for seed in axes["train.seed"]:
        fake_run(
            tmp_path,
            {"estimator.coupling": "a", "train.seed": seed},
            {0: (0.5, 0.0), 20: (0.7, 1.0), 40: (0.9, 2.0)},
            {0: 1.0, 1: 2.0},
            config=config,
        )
        fake_run(
            tmp_path,
            {"estimator.coupling": "b", "train.seed": seed},
            {0: (0.5, 0.0), 20: (0.6, 1.0), 40: (0.7, 2.0)},
            {0: 1.0, 1: 2.0},
            config=config,
        )  # never 0.8
    write_grid(tmp_path, axes)
    grid_report.collect(tmp_path, ablate.cells_of(axes), cell_name=ablate.cell_name, status_of=ablate.status_of)
    grid_report.summarize(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    speed = summary.split("## Learning speed")[1]
    assert "Evaluations every 20 steps" in speed
    assert "| coupling=a | 30.0 in every seed, median 30 (0 of 3 censored) |" in speed  # 0.7 at 20, 0.9 at 40
    assert "| coupling=b | 40.0 in every seed, median not reached (3 of 3 censored) |" in speed
    assert "-10.0 in every seed (identical: no interval; exact sign-flip p = 0.250)" in speed


def test_selection_runs_never_read_the_reported_held_out_data():
    over = ablate.selection_overrides(
        {"validation": "data/demo_safety_val.jsonl", "validation_prompts": "data/demo_behaviour_val_prompts.jsonl"}
    )
    assert "data.eval_dataset=data/demo_safety_val.jsonl" in over
    assert "behaviour.prompts=data/demo_behaviour_val_prompts.jsonl" in over
    carved = ablate.selection_overrides({})
    assert (
        "data.eval_dataset=null" in carved and "data.eval_fraction=0.1" in carved and "behaviour.prompts=null" in carved
    )
    assert all("test" not in x for x in over + carved)
    assert ablate.SELECT_SEED_BASE >= 1000  # selection seeds are never reported seeds


def frontier_run(root, cell, rng, slope: float, prompts: int = 40):
    """A run judged at steps 0, 10, 20, 30: KL grows 0, 1, 2, 3 nats (± noise); each prompt's correct share
    rises with KL at ``slope`` per nat from 0.3 (plus noise)."""
    import yaml

    from align.config import Config

    run = root / "runs" / ablate.cell_name(cell)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(Config().to_dict()))
    (run / "ablate_status.json").write_text(json.dumps({"status": "done", "wall_s": 1.0, "cell": cell}))
    with open(run / "metrics.jsonl", "w") as f, open(run / "behaviour.jsonl", "w") as b:
        for step in (0, 10, 20, 30):
            kl = 0.0 if step == 0 else step / 10 + rng.gauss(0, 0.1)
            correct = [min(1.0, max(0.0, 0.3 + slope * kl + rng.gauss(0, 0.2))) for _ in range(prompts)]
            for i, c in enumerate(correct):
                b.write(
                    json.dumps(
                        {
                            "step": step,
                            "prompt": f"p{i}",
                            "kind": "everyday",
                            "task_id": f"t{i // 2}",
                            "sample": 0,
                            "answer": "x",
                            "refusal": False,
                            "well_formed": True,
                            "correct": c > 0.5,
                            "reward": c,
                        }
                    )
                    + "\n"
                )
            f.write(
                json.dumps(
                    {
                        "step": step,
                        "eval/rewards/accuracies": 0.5,
                        "eval/margin": step / 10,
                        "eval/examples": 2,
                        "eval/kl": kl,
                        "eval/reward": sum(correct) / prompts,
                    }
                )
                + "\n"
            )


def test_the_frontier_reports_reward_at_matched_kl_first_and_an_arm_against_itself_covers_zero(tmp_path):
    rng = random.Random(5)
    axes = {"estimator.coupling": ["a", "b", "c"], "train.seed": ["0", "1", "2", "3", "4"]}
    for seed in axes["train.seed"]:
        for arm, slope in (("a", 0.15), ("b", 0.05), ("c", 0.15)):  # c: arm a under another label
            frontier_run(tmp_path, {"estimator.coupling": arm, "train.seed": seed}, rng, slope)
    write_grid(tmp_path, axes, primary="reward_at_kl")
    grid_report.collect(tmp_path, ablate.cells_of(axes), cell_name=ablate.cell_name, status_of=ablate.status_of)
    grid_report.summarize(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    primary = summary.split("## Primary outcome: ")[1].split("\n## ")[0]
    assert primary.startswith("reward at KL ") and "(0.5 of the largest KL every run reaches)" in primary
    assert "coupling=a higher" in next(x for x in primary.splitlines() if "coupling=a − coupling=b" in x)
    assert "no difference detected" in next(x for x in primary.splitlines() if "coupling=a − coupling=c" in x)
    assert "## Reward–KL frontier" in summary and (tmp_path / "frontier.png").stat().st_size > 10_000
    # a frontier line can be checked by hand: the outcome csv holds each run's interpolated reward
    import csv

    rows = list(csv.DictReader(open(tmp_path / "outcomes.csv")))
    assert all(0 <= float(r["reward_at_kl_1"]) <= 1 for r in rows) and "best_reward_within_kl" in rows[0]


def test_a_run_that_never_measures_kl_above_zero_is_named_and_the_frontier_still_plotted(tmp_path):
    """Matched KL levels need a level every run reaches: a run whose KL estimates stay at or below 0 (it barely
    left its reference) makes the declared primary uncomputable; the summary names that run and says what it
    reports instead, and frontier.png still shows every run."""
    rng = random.Random(7)
    axes = {"estimator.coupling": ["a", "b"], "train.seed": ["0", "1", "2"]}
    for seed in axes["train.seed"]:
        for arm in ("a", "b"):
            frontier_run(tmp_path, {"estimator.coupling": arm, "train.seed": seed}, rng, 0.1)
    flat = tmp_path / "runs" / ablate.cell_name({"estimator.coupling": "b", "train.seed": "2"}) / "metrics.jsonl"
    records = [json.loads(line) for line in flat.read_text().splitlines()]
    for r in records:
        r["eval/kl"] = -0.1 if r["step"] else 0.0
    flat.write_text("".join(json.dumps(r) + "\n" for r in records))
    write_grid(tmp_path, axes, primary="reward_at_kl")
    grid_report.collect(tmp_path, ablate.cells_of(axes), cell_name=ablate.cell_name, status_of=ablate.status_of)
    grid_report.summarize(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "**The declared primary outcome `reward_at_kl` could not be computed**" in summary
    assert f"{flat.parent.name} never measured KL above 0" in summary
    assert summary.split("## Primary outcome: ")[1].startswith("reward")
    assert "No matched KL levels" in summary and (tmp_path / "frontier.png").stat().st_size > 10_000


def test_every_selectable_outcome_has_a_direction():
    """grid.select=best:<outcome> needs to know whether higher is better for every outcome it offers."""
    assert [k for k in grid_report.SELECTABLE if k not in grid_report.HIGHER_IS_BETTER] == []


def test_the_shipped_demo_ablation_regenerates_byte_for_byte_from_its_tables(tmp_path):
    """benchmarks/results/ablation_demo holds the tables the demo grid wrote (grid.json, runs.csv, units.csv.gz,
    runs.json): its summary.md is recomputed from them alone, byte for byte."""
    import shutil

    shipped = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "ablation_demo"
    out = tmp_path / shipped.name  # the summary's title is the directory's name
    out.mkdir()
    for name in ("grid.json", "runs.csv", "units.csv.gz", "runs.json"):
        shutil.copy(shipped / name, out / name)
    grid_report.summarize(out)
    assert (out / "summary.md").read_bytes() == (shipped / "summary.md").read_bytes()
