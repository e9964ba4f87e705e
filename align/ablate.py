"""Ablations as one command: training grids scored by one evaluator, and the estimator-variance measurement.

Training grid (every cell is an ordinary training run, same entry point and config validation)::

    python -m align.ablate recipe=demo grid.coupling=coupled,decoupled grid.seeds=5 [key=value ...]

Axes are ``grid.<name>=v1,v2,...``: the shorthands ``coupling``, ``share_policy_reference``,
``share_chosen_rejected``, ``estimator``, ``n_samples``, ``seed`` (or ``seeds=K``: K seeds from
``train.seed``), ``loss_type``, ``beta``, ``learning_rate``, or any config key (``grid.loss.rpo_alpha=null,1.0``).
The arms of a grid are its cells without the seed; runs with the same seed share their initial adapter, data
order and held-out masks, so arms are compared seed by seed.

Every run is scored by the evaluator of its ``eval`` section (and judged by its ``behaviour`` section), never by
its training estimator; a grid whose cells would be scored or judged differently (an axis over ``eval.*``,
``behaviour.*`` or the held-out data) is refused before any run starts.

Options: ``grid.output_dir`` (default ``outputs/ablate/<recipe>``); ``grid.primary=<outcome>`` (the one
primary outcome, declared before the runs and kept in ``grid.json``; default ``reward`` where the behaviour
prompts carry task ids, else ``accuracy``); ``grid.equivalence=<margin>`` (the primary difference is called
equivalent when TOST puts its 90% interval inside ±margin); ``grid.target_accuracy`` (0.7) and
``grid.target_margin`` (nats; off) for learning speed; ``grid.select=best:<outcome>`` with a
``grid.learning_rate`` axis: each arm's learning rate is chosen on a validation split, never on the reported
held-out data: selection runs (``grid.select_seeds`` seeds, default 1, numbered from 1000 so that no reported
seed is used) are scored on ``grid.validation`` (pairs of training tasks, e.g. ``data/demo_safety_val.jsonl``)
or, without it, on a seeded carve-out ``grid.validation_fraction`` (0.1) of the training data, with behaviour
judged on ``grid.validation_prompts`` (or off); the reported seeds then run at each arm's chosen rate;
``grid.task=K`` (run only cell K, 0-based: one cell per slurm array task, see ``launch/ablate_array.sbatch``);
``grid.launcher`` (the command before the recipe, default ``python -m align.train_dpo`` with this python; e.g.
``"accelerate launch --config_file recipes/accelerate/ddp.yaml align/train_dpo.py"``);
``grid.report_only=true`` (collect the tables from the runs again and summarise).

Output: ``runs/<cell>/`` (each run's own output directory and ``train.log``), ``grid.json`` (every setting the
report reads), the tables ``runs.csv`` (every logged record), ``units.csv.gz`` (every held-out pair and
behaviour prompt of every evaluation, with its cluster) and ``runs.json``, and from those alone
``outcomes.csv``, ``summary.md`` (``align.grid_report``: the primary outcome first, with intervals over seeds,
clustered held-out units and the evaluator's error; Holm-adjusted secondary outcomes; censored learning speed)
and ``ablation.png`` (learning curves with interval bands). ``python -m align.ablate report=DIR`` regenerates
``summary.md`` from a grid directory's tables alone (byte-identical). Rerunning the command skips finished
cells, resumes interrupted ones from their last checkpoint and retries failed ones; failures are listed in
``summary.md`` with their error.

Variance (trains nothing; ``align.variance``)::

    python -m align.ablate variance model.name_or_path=POLICY [reference=REF] [variance.reps=16]
    python -m align.ablate variance run=RUN_DIR | grid=GRID_DIR     # along every checkpoint of a run or grid

Options: ``variance.reps`` (16 draws per pair), ``variance.n_samples`` (1,5,32; along a path: the run's n),
``variance.estimators`` (all three; along a path: the run's), ``variance.settings`` (all four; along a path:
coupled,decoupled), ``variance.max_pairs`` (32), ``variance.batch_pairs`` (8), ``variance.resamples`` (1000
bootstrap resamples), ``variance.seed`` (0), ``variance.runs`` (with grid=: a glob over run directory names),
``variance.output_dir``.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from align import grid_report, variance
from align.checkpoints import latest_verified
from align.cli import entry_point, overrides
from align.config import Config, ConfigError, load_config
from align.grid_names import AXES, cell_name, cells_of, short
from align.grid_report import PRIMARY_EXTRA, SELECTABLE, differing_keys, evaluator_of, read_jsonl_by_step

__all__ = ["AXES", "cell_name", "cells_of", "short", "parse_grid", "grid_main", "main"]
GRID_OPTIONS = (
    "seeds",
    "output_dir",
    "task",
    "target_accuracy",
    "target_margin",
    "select",
    "launcher",
    "report_only",
    "primary",
    "equivalence",
    "validation",
    "validation_prompts",
    "validation_fraction",
    "select_seeds",
)
SELECT_SEED_BASE = 1000  # selection runs use seeds 1000, 1001, ...: never a reported seed


# ------------------------------------------------------------------------------------------------ the grid
def parse_grid(argv: list[str]):
    """-> (recipe, base overrides, axes {config key: [values]}, options)."""
    recipe, base, axes, options = None, [], {}, {}
    for key, value in overrides(argv, prog="align.ablate", help_page=lambda: __doc__):
        arg = f"{key}={value}"
        if key == "recipe":
            recipe = value
        elif key.startswith("grid."):
            name = key.removeprefix("grid.")
            if name in GRID_OPTIONS:
                options[name] = value
            else:
                values = [v.strip() for v in value.split(",") if v.strip()]
                if not values:
                    raise ConfigError(f"{key} has no values")
                axes[AXES.get(name, name)] = values
        else:
            if key == "train.output_dir":
                raise ConfigError("train.output_dir is set per run by the grid; use grid.output_dir")
            base.append(arg)
    if recipe is None:
        raise ConfigError("recipe=NAME is required (e.g. recipe=demo)")
    if "seeds" in options:
        if "train.seed" in axes:
            raise ConfigError("give grid.seeds=K or grid.seed=a,b,..., not both")
        first = load_config(recipe, base).train.seed
        axes["train.seed"] = [str(first + i) for i in range(int(options["seeds"]))]
    if "select" in options:
        how, _, metric = options["select"].partition(":")
        if how != "best" or metric not in SELECTABLE:
            raise ConfigError(
                f"grid.select={options['select']!r}: expected best:<outcome>, outcome one of {', '.join(SELECTABLE)}"
            )
        if "train.learning_rate" not in axes:
            raise ConfigError("grid.select picks each arm's learning rate: give grid.learning_rate=a,b,...")
    for name in ("target_accuracy", "target_margin", "equivalence", "validation_fraction"):
        if name in options and options[name] != "null":
            try:
                float(options[name])
            except ValueError:
                raise ConfigError(f"grid.{name}: expected a number, got {options[name]!r}") from None
    if "primary" in options and options["primary"] not in SELECTABLE + PRIMARY_EXTRA:
        raise ConfigError(
            f"grid.primary={options['primary']!r}: expected one of {', '.join(SELECTABLE + PRIMARY_EXTRA)}"
        )
    if "select_seeds" in options:
        try:
            assert int(options["select_seeds"]) >= 1
        except (ValueError, AssertionError):
            raise ConfigError(f"grid.select_seeds: expected a count >= 1, got {options['select_seeds']!r}") from None
    for name in ("validation", "validation_prompts"):
        if name in options and not Path(options[name]).is_file():
            raise ConfigError(f"grid.{name}={options[name]!r}: no such file")
    return recipe, base, axes, options


def validate(recipe: str, base: list[str], cells: list[dict]) -> None:
    """Every cell's config, before any run starts: a bad key or value fails naming the cell, and so does a
    cell that would be scored (eval.*, held-out data) or judged (behaviour.*) differently from the first."""
    first = None
    for cell in cells:
        try:
            cfg = load_config(recipe, base + [f"{k}={v}" for k, v in cell.items()], Config)
        except ConfigError as e:
            raise ConfigError(f"grid cell {cell_name(cell)}: {e}") from None
        signature = evaluator_of(cfg.to_dict())
        if first is None:
            first = (cell, signature)
        elif signature != first[1]:
            keys = differing_keys(first[1], signature)
            raise ConfigError(
                f"grid cells {cell_name(first[0])} and {cell_name(cell)} would be evaluated differently "
                f"({', '.join(keys)}): an ablation's arms must be scored by one evaluator; set "
                f"eval.*, behaviour.* and the held-out data once, outside the grid axes"
            )


def status_of(run_dir: Path) -> dict:
    path = run_dir / "ablate_status.json"
    return json.loads(path.read_text()) if path.exists() else {"status": "pending"}


def launch_cell(cmd: list[str], log) -> int:
    """Run one cell's command line in a process of its own, output to the open file ``log``; its exit code."""
    return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode


def run_cell(recipe, base, cell, run_dir: Path, launcher: list[str], label: str) -> dict:
    """One training run in its own process; output and errors go to ``run_dir/train.log``."""
    resume = run_dir.is_dir() and latest_verified(run_dir)[0] is not None
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # a failed run with no checkpoint that verifies: begin again cleanly
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        *launcher,
        f"recipe={recipe}",
        *base,
        *(f"{k}={v}" for k, v in cell.items()),
        f"train.output_dir={run_dir}",
        "train.progress_bar=false",
        *(["train.resume_from_checkpoint=latest"] if resume else []),
    ]
    print(f"[ablate] {label}: {cell_name(cell)}{' (resuming)' if resume else ''}", flush=True)
    started = time.time()
    with open(run_dir / "train.log", "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        returncode = launch_cell(cmd, log)
    wall = time.time() - started
    status = {
        "status": "done" if returncode == 0 else "failed",
        "wall_s": wall + status_of(run_dir).get("wall_s", 0),
        "returncode": returncode,
        "cell": cell,
    }
    if returncode != 0:
        lines = [x for x in (run_dir / "train.log").read_text().splitlines() if x.strip()]
        status["error"] = lines[-1] if lines else f"exit code {returncode}"
        print(f"[ablate]   failed after {wall:.0f} s: {status['error']}", flush=True)
    else:
        evals = [m for m in read_jsonl_by_step(run_dir / "metrics.jsonl").values() if "eval/margin" in m]
        tail = ""
        if evals:
            last = evals[-1]
            tail = (
                f", held-out accuracy {last['eval/rewards/accuracies']:.3f}, margin {last['eval/margin']:.2f} ± "
                f"{last.get('eval/margin/mc_se', float('nan')):.2f} nats (common evaluator)"
            )
        print(f"[ablate]   done in {wall:.0f} s{tail}", flush=True)
    (run_dir / "ablate_status.json").write_text(json.dumps(status, indent=1) + "\n")
    return status


def default_primary(recipe: str, base: list[str]) -> str:
    """The primary outcome when ``grid.primary`` is not given: where the behaviour prompts carry task ids (the
    bundled world's ground truth), the reward at matched KL from the reference (``reward_at_kl``, the frontier)
    when the runs measure KL, else the reward itself; elsewhere the held-out reward accuracy."""
    cfg = load_config(recipe, base, Config)
    prompts = cfg.behaviour.prompts
    if prompts and Path(prompts).is_file():
        first = next((line for line in Path(prompts).read_text().splitlines() if line.strip()), "")
        try:
            if "task_id" in json.loads(first):
                return "reward_at_kl" if cfg.behaviour.kl_samples > 0 else "reward"
        except json.JSONDecodeError:
            pass
    return "accuracy"


def selection_overrides(options: dict) -> list[str]:
    """What a selection run is evaluated on instead of the reported held-out data: ``grid.validation`` (a file of
    pairs from training tasks) or, without it, a seeded carve-out of the training data
    (``data.eval_fraction=grid.validation_fraction``, default 0.1); behaviour on ``grid.validation_prompts``, or
    off."""
    if options.get("validation"):
        out = [f"data.eval_dataset={options['validation']}"]
    else:
        out = ["data.eval_dataset=null", f"data.eval_fraction={options.get('validation_fraction', '0.1')}"]
    out.append(
        f"behaviour.prompts={options['validation_prompts']}"
        if options.get("validation_prompts")
        else "behaviour.prompts=null"
    )
    return out


def run_cells(recipe, base, cells, root: Path, launcher, todo_index=None) -> None:
    todo = list(enumerate(cells)) if todo_index is None else [(todo_index, cells[todo_index])]
    for i, cell in todo:
        run_dir = root / "runs" / cell_name(cell)
        if status_of(run_dir)["status"] == "done":
            print(f"[ablate] run {i + 1}/{len(cells)}: {cell_name(cell)} already done", flush=True)
            continue
        run_cell(recipe, base, cell, run_dir, launcher, f"run {i + 1}/{len(cells)}")


def select_learning_rates(recipe, base, axes, options, root: Path, launcher, run: bool) -> dict:
    """Run (or read) the selection grid under ``root/select``: every arm x learning rate x selection seed, scored
    on the validation split; per arm, the learning rate with the best mean outcome. Returns the selection record
    (also ``root/select/selection.json``)."""
    metric = options["select"].split(":", 1)[1]
    seeds = [str(SELECT_SEED_BASE + i) for i in range(int(options.get("select_seeds", 1)))]
    sel_axes = {k: v for k, v in axes.items() if k != "train.seed"}
    sel_axes["train.seed"] = seeds
    sel_root = root / "select"
    sel_root.mkdir(parents=True, exist_ok=True)
    sel_base = [*base, *selection_overrides(options)]
    cells = cells_of(sel_axes)
    validate(recipe, sel_base, cells)
    (sel_root / "grid.json").write_text(
        json.dumps(
            {"recipe": recipe, "overrides": sel_base, "axes": sel_axes, "options": {}, "primary": metric}, indent=1
        )
        + "\n"
    )
    if run:
        print(f"[ablate] selection: {len(cells)} runs on the validation split -> {sel_root}", flush=True)
        run_cells(recipe, sel_base, cells, sel_root, launcher)
    grid_report.collect(sel_root, cells, cell_name=cell_name, status_of=status_of)
    g = grid_report.Grid(grid_report.load_tables(sel_root))
    higher = grid_report.HIGHER_IS_BETTER[metric]
    arm_axes = [k for k in sel_axes if k not in ("train.seed", "train.learning_rate")]
    lrs = axes["train.learning_rate"]
    arms, chosen = [], {}
    for values in cells_of({k: sel_axes[k] for k in arm_axes}):
        scores = {}
        for lr in lrs:
            runs = [
                r
                for r in g.done
                if r["cell"].get("train.learning_rate") == lr and all(r["cell"][k] == v for k, v in values.items())
            ]
            vals = [r["outcomes"].get(metric) for r in runs if r["outcomes"].get(metric) is not None]
            scores[lr] = sum(vals) / len(vals) if vals else None
        ranked = [lr for lr in lrs if scores[lr] is not None]
        if not ranked:
            continue
        best = (max if higher else min)(ranked, key=lambda lr: scores[lr])
        key = tuple(values[k] for k in arm_axes)
        chosen[key] = best
        arms.append(
            {
                "label": ", ".join(f"{short(k)}={values[k]}" for k in arm_axes) or "base",
                "values": values,
                "scores": scores,
                "chosen": best,
            }
        )
    record = {
        "outcome": metric,
        "outcome_label": g.by_key[metric].label if metric in g.by_key else metric,
        "validation": options.get("validation")
        or f"{options.get('validation_fraction', '0.1')} of the training data, carved by data.eval_split_seed",
        "validation_prompts": options.get("validation_prompts"),
        "seeds": seeds,
        "learning_rates": lrs,
        "arms": arms,
    }
    (sel_root / "selection.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def reported_cells(axes: dict, selection: dict | None) -> list[dict]:
    """The grid's cells; with a selection, each arm at its chosen learning rate only."""
    cells = cells_of(axes)
    if not selection:
        return cells
    picks = [(a["values"], a["chosen"]) for a in selection["arms"]]
    return [
        c
        for c in cells
        if any(all(c[k] == v for k, v in values.items()) and c["train.learning_rate"] == lr for values, lr in picks)
    ]


def grid_main(argv: list[str]) -> None:
    if len(argv) == 1 and argv[0].startswith("report="):
        root = Path(argv[0].split("=", 1)[1])
        for name in ("grid.json", "runs.json", "runs.csv"):
            if not (root / name).is_file():
                raise ConfigError(f"report={root}: no {name} there (a grid directory written by align.ablate)")
        print(f"[ablate] wrote {grid_report.summarize(root)}", flush=True)
        return
    recipe, base, axes, options = parse_grid(argv)
    validate(recipe, base, cells_of(axes))
    root = Path(options.get("output_dir") or f"outputs/ablate/{Path(recipe).stem}")
    root.mkdir(parents=True, exist_ok=True)
    default_launcher = [sys.executable, "-m", "align.train_dpo"]
    launcher = shlex.split(options["launcher"]) if options.get("launcher") else default_launcher
    run = options.get("report_only", "false").lower() not in ("1", "true", "yes")
    recorded = {k: v for k, v in options.items() if k not in ("output_dir", "task", "launcher", "report_only")}
    recorded.setdefault("target_accuracy", "0.7")
    primary = options.get("primary") or default_primary(recipe, base)
    grid = {"recipe": recipe, "overrides": base, "axes": axes, "options": recorded, "primary": primary}
    previous = json.loads((root / "grid.json").read_text()) if (root / "grid.json").exists() else None
    if previous and previous.get("primary") and previous["primary"] != primary and run:
        raise ConfigError(
            f"{root}: the grid's primary outcome was declared as {previous['primary']!r} before its "
            f"runs; a new primary needs a new grid.output_dir"
        )
    selection = None
    if options.get("select"):
        selection = select_learning_rates(recipe, base, axes, options, root, launcher, run)
        grid["selection"] = selection
    (root / "grid.json").write_text(json.dumps(grid, indent=1) + "\n")
    cells = reported_cells(axes, selection)
    if run:
        print(
            f"[ablate] {len(cells)} runs ({' x '.join(f'{short(k)}: {len(v)}' for k, v in axes.items())}"
            f"{', at the selected learning rates' if selection else ''}) -> {root}",
            flush=True,
        )
        index = None
        if "task" in options:
            index = int(options["task"])
            if not 0 <= index < len(cells):
                raise ConfigError(f"grid.task={index} but the grid has {len(cells)} cells (0..{len(cells) - 1})")
        run_cells(recipe, base, cells, root, launcher, index)
    grid_report.collect(root, cells, cell_name=cell_name, status_of=status_of)
    summary = grid_report.summarize(root)
    print(
        f"[ablate] wrote {root / 'runs.csv'}, {root / 'units.csv.gz'}, {root / 'outcomes.csv'}, {summary}, "
        f"{root / 'ablation.png'}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    with entry_point():
        if argv and argv[0] == "variance":
            variance.main(argv[1:])
        else:
            grid_main(argv)


if __name__ == "__main__":
    main()
