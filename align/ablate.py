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

Options: ``grid.output_dir`` (default ``outputs/ablate/<recipe>``); ``grid.target_accuracy`` (0.7) and
``grid.target_margin`` (nats; off) for "steps to target"; ``grid.select=best:<outcome>`` (per arm, the
learning rate of a ``grid.learning_rate`` axis with the best mean outcome over seeds: accuracy, margin,
accuracy_curve, margin_curve, dpo_loss, ...); ``grid.task=K`` (run only cell K, 0-based: one cell per slurm
array task, see ``launch/ablate_array.sbatch``); ``grid.launcher`` (the command before the recipe, default
``python -m align.train_dpo``, with ``$PYTHON_EXEC`` as the python when set, as torchrun does; e.g.
``"accelerate launch --config_file recipes/accelerate/ddp.yaml align/train_dpo.py"``); ``grid.report_only=true``.
Output: ``runs/<cell>/`` (each run's own output directory and ``train.log``), ``runs.csv`` (every logged
record), ``outcomes.csv`` (one row per run), ``summary.md`` (per arm: means with 95% t-intervals over seeds;
paired differences between arms over seeds and over held-out pairs; ``align.grid_report``) and ``ablation.png``
(learning curves with interval bands). Rerunning the command skips finished cells, resumes interrupted ones
from their last checkpoint and retries failed ones; failures are listed in ``summary.md`` with their error.

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

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from align.cli import entry_point, overrides
from align.config import Config, ConfigError, load_config
from align.grid_report import evaluator_of, report

AXES = {
    "coupling": "estimator.coupling", "share_policy_reference": "estimator.share_policy_reference",
    "share_chosen_rejected": "estimator.share_chosen_rejected", "estimator": "estimator.estimator",
    "n_samples": "estimator.n_samples", "seed": "train.seed", "loss_type": "loss.loss_type", "beta": "loss.beta",
    "learning_rate": "train.learning_rate",
}
GRID_OPTIONS = ("seeds", "output_dir", "task", "target_accuracy", "target_margin", "select", "launcher", "report_only")
SELECTABLE = ("accuracy", "margin", "accuracy_curve", "margin_curve", "dpo_loss", "logratio_chosen",
              "logratio_rejected", "refusal_rate", "over_refusal_rate")


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
            raise ConfigError(f"grid.select={options['select']!r}: expected best:<outcome>, outcome one of "
                              f"{', '.join(SELECTABLE)}")
        if "train.learning_rate" not in axes:
            raise ConfigError("grid.select picks each arm's learning rate: give grid.learning_rate=a,b,...")
    for name in ("target_accuracy", "target_margin"):
        if name in options:
            try:
                float(options[name])
            except ValueError:
                raise ConfigError(f"grid.{name}: expected a number, got {options[name]!r}") from None
    return recipe, base, axes, options


def short(key: str) -> str:
    inverse = {v: k for k, v in AXES.items()}
    return inverse.get(key, key.split(".")[-1])


def cell_name(cell: dict) -> str:
    return "_".join(f"{short(k)}-{re.sub(r'[^A-Za-z0-9.+-]', '', str(v))}" for k, v in cell.items()) or "base"


def cells_of(axes: dict) -> list[dict]:
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def validate(recipe: str, base: list[str], cells: list[dict]) -> None:
    """Every cell's config, before any run starts: a bad key or value fails naming the cell, and so does a
    cell that would be scored (eval.*, held-out data) or judged (behaviour.*) differently from the first."""
    first = None
    for cell in cells:
        try:
            cfg = load_config(recipe, base + [f"{k}={v}" for k, v in cell.items()], Config)
        except ConfigError as e:
            raise ConfigError(f"grid cell {cell_name(cell)}: {e}") from None
        from align.grid_report import differing_keys

        signature = evaluator_of(cfg.to_dict())
        if first is None:
            first = (cell, signature)
        elif signature != first[1]:
            keys = differing_keys(first[1], signature)
            raise ConfigError(f"grid cells {cell_name(first[0])} and {cell_name(cell)} would be evaluated differently "
                              f"({', '.join(keys)}): an ablation's arms must be scored by one evaluator; set "
                              f"eval.*, behaviour.* and the held-out data once, outside the grid axes")


def status_of(run_dir: Path) -> dict:
    path = run_dir / "ablate_status.json"
    return json.loads(path.read_text()) if path.exists() else {"status": "pending"}


def run_cell(recipe, base, cell, run_dir: Path, launcher: list[str], label: str) -> dict:
    """One training run in its own process; output and errors go to ``run_dir/train.log``."""
    from align.checkpoints import latest_verified

    resume = run_dir.is_dir() and latest_verified(run_dir)[0] is not None
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # a failed run with no checkpoint that verifies: begin again cleanly
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [*launcher, f"recipe={recipe}", *base, *(f"{k}={v}" for k, v in cell.items()), f"train.output_dir={run_dir}",
           "train.progress_bar=false", *(["train.resume_from_checkpoint=latest"] if resume else [])]
    print(f"[ablate] {label}: {cell_name(cell)}{' (resuming)' if resume else ''}", flush=True)
    started = time.time()
    with open(run_dir / "train.log", "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - started
    status = {"status": "done" if proc.returncode == 0 else "failed", "wall_s": wall + status_of(run_dir).get("wall_s", 0),
              "returncode": proc.returncode, "cell": cell}
    if proc.returncode != 0:
        lines = [x for x in (run_dir / "train.log").read_text().splitlines() if x.strip()]
        status["error"] = lines[-1] if lines else f"exit code {proc.returncode}"
        print(f"[ablate]   failed after {wall:.0f} s: {status['error']}", flush=True)
    else:
        from align.grid_report import read_jsonl_by_step

        evals = [m for m in read_jsonl_by_step(run_dir / "metrics.jsonl").values() if "eval/margin" in m]
        tail = ""
        if evals:
            last = evals[-1]
            tail = (f", held-out accuracy {last['eval/rewards/accuracies']:.3f}, margin {last['eval/margin']:.2f} ± "
                    f"{last.get('eval/margin/mc_se', float('nan')):.2f} nats (common evaluator)")
        print(f"[ablate]   done in {wall:.0f} s{tail}", flush=True)
    (run_dir / "ablate_status.json").write_text(json.dumps(status, indent=1) + "\n")
    return status


def grid_main(argv: list[str]) -> None:
    recipe, base, axes, options = parse_grid(argv)
    cells = cells_of(axes)
    validate(recipe, base, cells)
    root = Path(options.get("output_dir") or f"outputs/ablate/{Path(recipe).stem}")
    root.mkdir(parents=True, exist_ok=True)
    python = os.environ.get("PYTHON_EXEC") or sys.executable  # torchrun's override of the workers' python
    launcher = shlex.split(options["launcher"]) if options.get("launcher") else [python, "-m", "align.train_dpo"]
    (root / "grid.json").write_text(json.dumps({"recipe": recipe, "overrides": base, "axes": axes}, indent=1) + "\n")
    todo = list(enumerate(cells))
    if "task" in options:
        k = int(options["task"])
        if not 0 <= k < len(cells):
            raise ConfigError(f"grid.task={k} but the grid has {len(cells)} cells (0..{len(cells) - 1})")
        todo = [todo[k]]
    if options.get("report_only", "false").lower() not in ("1", "true", "yes"):
        print(f"[ablate] {len(cells)} runs ({' x '.join(f'{short(k)}: {len(v)}' for k, v in axes.items())}) -> {root}",
              flush=True)
        for i, cell in todo:
            run_dir = root / "runs" / cell_name(cell)
            if status_of(run_dir)["status"] == "done":
                print(f"[ablate] run {i + 1}/{len(cells)}: {cell_name(cell)} already done", flush=True)
                continue
            run_cell(recipe, base, cell, run_dir, launcher, f"run {i + 1}/{len(cells)}")
    target_margin = options.get("target_margin")
    summary = report(root, axes, cells, cell_name=cell_name, short=short, status_of=status_of,
                     target_accuracy=float(options.get("target_accuracy", 0.7)),
                     target_margin=float(target_margin) if target_margin is not None else None,
                     select=options.get("select"))
    print(f"[ablate] wrote {root / 'runs.csv'}, {root / 'outcomes.csv'}, {summary}, {root / 'ablation.png'}", flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    with entry_point():
        if argv and argv[0] == "variance":
            from align import variance

            variance.main(argv[1:])
        else:
            grid_main(argv)


if __name__ == "__main__":
    main()
