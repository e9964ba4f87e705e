"""Ablations as one command: training grids, and the estimator-variance measurement on any checkpoint.

Training grid (every cell is an ordinary training run, same entry point and config validation)::

    python -m align.ablate recipe=demo grid.coupling=coupled,decoupled grid.n_samples=1,4 grid.seeds=3 [key=value ...]

Axes are ``grid.<name>=v1,v2,...``: the shorthands ``coupling``, ``share_policy_reference``,
``share_chosen_rejected``, ``estimator``, ``n_samples``, ``seed`` (or ``seeds=K``: K seeds from
``train.seed``), ``loss_type``, ``beta``, or any config key (``grid.train.learning_rate=1e-4,2e-4``). Options:
``grid.output_dir`` (default ``outputs/ablate/<recipe>``), ``grid.target_accuracy`` (0.7, for "steps to
target"), ``grid.task=K`` (run only cell K, 0-based: one cell per slurm array task, see
``launch/ablate_array.sbatch``), ``grid.launcher`` (the command before the recipe, default
``python -m align.train_dpo``; e.g. ``"accelerate launch --config_file recipes/accelerate/ddp.yaml
align/train_dpo.py"``), ``grid.report_only=true``. Every cell is validated before any run starts. Output:
``runs/<cell>/`` (each run's own output directory and ``train.log``), ``runs.csv``, ``summary.md``,
``ablation.png``. Rerunning the command skips finished cells, resumes interrupted ones from their last
checkpoint and retries failed ones; failures are listed in ``summary.md`` with their error.

Variance (trains nothing)::

    python -m align.ablate variance model.name_or_path=POLICY [reference=REF] [data.dataset=FILE] [variance.reps=16]

For every sharing setting x estimator x n_samples (``variance.n_samples``, default 1,5,32): the variance of
the n-sample margin estimate across ``reps`` independent draws per pair, averaged over pairs, with bootstrap
standard errors (pairs resampled) on each variance and each ratio. POLICY / REF: anything
``align.models.load_model`` reads, including LoRA output directories and training checkpoints; REF defaults
to the policy's base model when POLICY is a LoRA output. Output: ``variance.md``, ``variance.json``,
``variance.png`` under ``variance.output_dir``.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from align.config import Config, ConfigError, load_config

AXES = {
    "coupling": "estimator.coupling", "share_policy_reference": "estimator.share_policy_reference",
    "share_chosen_rejected": "estimator.share_chosen_rejected", "estimator": "estimator.estimator",
    "n_samples": "estimator.n_samples", "seed": "train.seed", "loss_type": "loss.loss_type", "beta": "loss.beta",
}
GRID_OPTIONS = ("seeds", "output_dir", "task", "target_accuracy", "launcher", "report_only")
SETTINGS = {  # name: (share_policy_reference, share_chosen_rejected)
    "coupled": (True, True), "share_pol_ref": (True, False), "share_cho_rej": (False, True), "decoupled": (False, False),
}
PLOTTED = (("eval/rewards/accuracies", "held-out reward accuracy", False), ("eval/loss", "held-out loss", False),
           ("eval/margin/sample_variance", "margin sample variance (held out)", True))


# ------------------------------------------------------------------------------------------------ the grid
def parse_grid(argv: list[str]):
    """-> (recipe, base overrides, axes {config key: [values]}, options)."""
    recipe, base, axes, options = None, [], {}, {}
    for arg in argv:
        arg = arg.lstrip("-") if arg.startswith("--") else arg
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r} is not key=value")
        key, value = arg.split("=", 1)
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
    return recipe, base, axes, options


def short(key: str) -> str:
    inverse = {v: k for k, v in AXES.items()}
    return inverse.get(key, key.split(".")[-1])


def cell_name(cell: dict) -> str:
    return "_".join(f"{short(k)}-{re.sub(r'[^A-Za-z0-9.+-]', '', str(v))}" for k, v in cell.items()) or "base"


def cells_of(axes: dict) -> list[dict]:
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def validate(recipe: str, base: list[str], cells: list[dict]) -> None:
    """Every cell's config, before any run starts: a bad key or value fails naming the cell."""
    for cell in cells:
        try:
            load_config(recipe, base + [f"{k}={v}" for k, v in cell.items()], Config)
        except ConfigError as e:
            raise ConfigError(f"grid cell {cell_name(cell)}: {e}") from None


def status_of(run_dir: Path) -> dict:
    path = run_dir / "ablate_status.json"
    return json.loads(path.read_text()) if path.exists() else {"status": "pending"}


def run_cell(recipe, base, cell, run_dir: Path, launcher: list[str], label: str) -> dict:
    """One training run in its own process; output and errors go to ``run_dir/train.log``."""
    resume = any(run_dir.glob("checkpoint-*"))
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # a failed start with nothing to resume from: begin again cleanly
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
        final = last_eval(read_metrics(run_dir))
        acc = final.get("eval/rewards/accuracies")
        print(f"[ablate]   done in {wall:.0f} s" + (f", held-out reward accuracy {acc:.3f}" if acc is not None else ""),
              flush=True)
    (run_dir / "ablate_status.json").write_text(json.dumps(status, indent=1) + "\n")
    return status


def read_metrics(run_dir: Path) -> dict[int, dict]:
    """metrics.jsonl merged by step."""
    by_step: dict[int, dict] = {}
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                by_step.setdefault(rec["step"], {}).update(rec)
    return dict(sorted(by_step.items()))


def last_eval(metrics: dict[int, dict]) -> dict:
    evals = [m for m in metrics.values() if "eval/loss" in m]
    return evals[-1] if evals else {}


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.fmean(values):.4g} ± {statistics.stdev(values):.2g}"


def report(root: Path, axes: dict, cells: list[dict], target: float) -> None:
    """runs.csv, summary.md and ablation.png from whatever runs exist."""
    runs = []
    for cell in cells:
        run_dir = root / "runs" / cell_name(cell)
        runs.append((cell, run_dir, status_of(run_dir), read_metrics(run_dir)))
    keys = sorted({k for *_, m in runs for rec in m.values() for k in rec if k != "step"})
    with open(root / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "status", *(short(k) for k in axes), "step", *keys])
        for cell, run_dir, st, metrics in runs:
            for step, rec in metrics.items():
                w.writerow([run_dir.name, st["status"], *(cell[k] for k in axes), step, *(rec.get(k, "") for k in keys)])
    arm_axes = [k for k in axes if k != "train.seed"]
    arms: dict[tuple, list] = {}
    for run in runs:
        arms.setdefault(tuple(run[0][k] for k in arm_axes), []).append(run)
    has_behaviour = any("eval/refusal_rate" in rec for *_, m in runs for rec in m.values())
    cols = ["held-out reward acc", "held-out loss", *(["refusal rate", "over-refusal rate"] if has_behaviour else []),
            "margin sample var", f"steps to acc ≥ {target:g}", "wall s", "seeds done"]
    lines = [f"# Ablation: {root}", "", f"{len(cells)} runs; mean ± std over seeds of each arm's last evaluation.", "",
             "| " + " | ".join([*(short(k) for k in arm_axes), *cols]) + " |", "|" + "---|" * (len(arm_axes) + len(cols))]
    for arm, members in arms.items():
        done = [(c, d, s, m) for c, d, s, m in members if s["status"] == "done"]
        finals = [last_eval(m) for *_, m in done]
        reached = []
        for *_, m in done:
            hit = [step for step, rec in m.items() if rec.get("eval/rewards/accuracies", -1) >= target]
            reached.append(hit[0] if hit else None)
        hits = [r for r in reached if r is not None]
        steps = f"{mean_std(hits)} ({len(hits)}/{len(done)})" if done else "—"
        row = [mean_std([f.get("eval/rewards/accuracies") for f in finals]), mean_std([f.get("eval/loss") for f in finals])]
        if has_behaviour:
            row += [mean_std([f.get("eval/refusal_rate") for f in finals]),
                    mean_std([f.get("eval/over_refusal_rate") for f in finals])]
        row += [mean_std([f.get("eval/margin/sample_variance") for f in finals]), steps,
                mean_std([s.get("wall_s") for _, _, s, _ in done]), f"{len(done)}/{len(members)}"]
        lines.append("| " + " | ".join([*map(str, arm), *row]) + " |")
    failed = [(d.name, s.get("error", "")) for _, d, s, _ in runs if s["status"] == "failed"]
    pending = [d.name for _, d, s, _ in runs if s["status"] == "pending"]
    if failed:
        lines += ["", "## Failed runs", "", *(f"- `{name}`: {err} (log: `runs/{name}/train.log`)" for name, err in failed)]
    if pending:
        lines += ["", f"## Not run yet ({len(pending)})", "", *(f"- `{name}`" for name in pending)]
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    plot_grid(root / "ablation.png", arms, arm_axes)


def plot_grid(path: Path, arms: dict, arm_axes: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, len(PLOTTED), figsize=(5.2 * len(PLOTTED), 3.8))
    for (key, title, logy), ax in zip(PLOTTED, panels):
        for i, (arm, members) in enumerate(arms.items()):
            series = [{s: rec[key] for s, rec in m.items() if key in rec} for _, _, st, m in members if st["status"] == "done"]
            steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
            if not steps:
                continue
            values = torch.tensor([[s[x] for x in steps] for s in series], dtype=torch.float64)
            if logy:  # a log axis cannot show 0 (a coupled margin's variance at step 0, before the models differ)
                values = values.where(values > 0, torch.tensor(float("nan"), dtype=torch.float64))
            mean = values.mean(0)
            label = ", ".join(f"{short(k)}={v}" for k, v in zip(arm_axes, arm)) or "base"
            ax.plot(steps, mean, marker="o", ms=3, color=f"C{i}", label=f"{label} ({len(series)} seeds)")
            if len(series) > 1:
                ax.fill_between(steps, values.min(0).values, values.max(0).values, color=f"C{i}", alpha=0.2, lw=0)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    panels[0].legend(fontsize=7)
    fig.suptitle("lines: mean over seeds; bands: min–max over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def grid_main(argv: list[str]) -> None:
    recipe, base, axes, options = parse_grid(argv)
    cells = cells_of(axes)
    validate(recipe, base, cells)
    root = Path(options.get("output_dir") or f"outputs/ablate/{Path(recipe).stem}")
    root.mkdir(parents=True, exist_ok=True)
    launcher = shlex.split(options["launcher"]) if options.get("launcher") else [sys.executable, "-m", "align.train_dpo"]
    target = float(options.get("target_accuracy", 0.7))
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
    report(root, axes, cells, target)
    print(f"[ablate] wrote {root / 'runs.csv'}, {root / 'summary.md'}, {root / 'ablation.png'}", flush=True)


# -------------------------------------------------------------------------------------------- the variance
def pair_variances(policy, reference, batch: dict, *, estimator: str, share: tuple[bool, bool], n: int, reps: int,
                   mask_token_id: int, seed: int = 0) -> torch.Tensor:
    """[pairs]: per pair, the variance over ``reps`` independent draws of the n-sample mean margin.

    ``policy``/``reference``: token scorers (``estimators.TokenScorer``; ``scorer_from_logits`` adapts a
    logits function)."""
    from align import estimators as E

    rep = lambda x: None if x is None else x.repeat_interleave(reps, 0)  # noqa: E731
    with torch.no_grad():
        terms = E.dpo_terms(policy, reference, rep(batch["chosen_ids"]), rep(batch["rejected_ids"]), rep(batch["response_mask"]),
                     n_samples=n, estimator=estimator, share_policy_reference=share[0], share_chosen_rejected=share[1],
                     mask_token_id=mask_token_id, attention_mask=rep(batch.get("attention_mask")),
                     generator=torch.Generator().manual_seed(seed))
    means = terms.margin.mean(-1).reshape(-1, reps)  # [pairs, reps]
    return means.double().var(-1)


def measure_variance(policy, reference, batches: list[dict], *, mask_token_id: int, estimators, n_samples, reps: int,
                     settings=SETTINGS, progress=None) -> dict:
    """{(estimator, setting, n): per-pair variances [pairs]} over all ``batches`` (token scorers)."""
    out = {}
    total = len(estimators) * len(settings) * len(n_samples)
    for i, (est, (name, share), n) in enumerate(itertools.product(estimators, settings.items(), n_samples)):
        v = [pair_variances(policy, reference, b, estimator=est, share=share, n=n, reps=reps,
                            mask_token_id=mask_token_id, seed=1000 * i + j) for j, b in enumerate(batches)]
        out[est, name, n] = torch.cat(v)
        if progress:
            progress(f"{i + 1}/{total}: {est} {name} n={n}: var {out[est, name, n].mean():.4g}")
    return out


def bootstrap(values: dict, *, resamples: int = 1000, seed: int = 0) -> dict:
    """Mean variance and its SE per cell; decoupled/coupled and time_integral/time_free ratios with SEs.

    Pairs are the resampled unit: every statistic is recomputed on the same resampled pairs."""
    any_v = next(iter(values.values()))
    idx = torch.randint(0, len(any_v), (resamples, len(any_v)), generator=torch.Generator().manual_seed(seed))
    boot = {k: v[idx].mean(-1) for k, v in values.items()}  # [resamples]
    table = {"var": {}, "ratio_decoupled_coupled": {}, "ratio_time_integral_time_free": {}}
    for (est, setting, n), v in values.items():
        table["var"][est, setting, n] = (v.mean().item(), boot[est, setting, n].std().item())
        if setting == "coupled" and (est, "decoupled", n) in values:
            r = boot[est, "decoupled", n] / boot[est, "coupled", n]
            table["ratio_decoupled_coupled"][est, n] = (values[est, "decoupled", n].mean().item() / v.mean().item(),
                                                        r.std().item())
        if est == "time_free" and ("time_integral", setting, n) in values:
            r = boot["time_integral", setting, n] / boot[est, setting, n]
            table["ratio_time_integral_time_free"][setting, n] = (
                values["time_integral", setting, n].mean().item() / v.mean().item(), r.std().item())
    return table


def variance_markdown(table: dict, estimators, n_samples, settings=SETTINGS) -> str:
    def f(x):
        return f"{x[0]:.4g} ± {x[1]:.2g}"

    lines = ["| estimator | n | " + " | ".join(f"{s} var" for s in settings) + " | decoupled/coupled |",
             "|---|---|" + "---|" * (len(settings) + 1)]
    for est in estimators:
        for n in n_samples:
            cells = " | ".join(f(table["var"][est, s, n]) for s in settings)
            ratio = table["ratio_decoupled_coupled"].get((est, n))
            lines.append(f"| {est} | {n} | {cells} | {f(ratio) + '×' if ratio else '—'} |")
    if table["ratio_time_integral_time_free"]:
        lines += ["", "| time_integral / time_free | " + " | ".join(f"n={n}" for n in n_samples) + " |",
                  "|---|" + "---|" * len(n_samples)]
        for s in settings:
            lines.append(f"| {s} | " + " | ".join(f(table["ratio_time_integral_time_free"][s, n]) + "×"
                                                  for n in n_samples) + " |")
    return "\n".join(lines)


def plot_variance(path: Path, table: dict, estimators, n_samples, settings=SETTINGS, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, len(estimators), figsize=(4.6 * len(estimators), 3.8), squeeze=False)
    for est, ax in zip(estimators, panels[0]):
        for i, s in enumerate(settings):
            mean = [table["var"][est, s, n][0] for n in n_samples]
            se = [table["var"][est, s, n][1] for n in n_samples]
            ax.errorbar(n_samples, mean, yerr=se, marker="o", ms=4, capsize=3, color=f"C{i}", label=s)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(n_samples), [str(n) for n in n_samples])
        ax.set_xlabel("n_samples")
        ax.set_title(est)
        ax.grid(alpha=0.3, which="both")
    panels[0][0].set_ylabel("Var[margin estimate]")
    panels[0][0].legend(fontsize=8)
    fig.suptitle(title or "variance of the n-sample DPO-margin estimate (± bootstrap SE over pairs)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def variance_main(argv: list[str]) -> None:
    from align.data import collate, is_local, load_records
    from align.dpo import DPOObjective
    from align.masking import ESTIMATORS
    from align.models import load_model, spec_for, token_scorer, tokenizer_source
    from align.models.tokenizer import load_tokenizer

    recipe, overrides, opts = None, [], {"reps": "16", "n_samples": "1,5,32", "max_pairs": "32", "batch_pairs": "8",
                                         "output_dir": None, "estimators": ",".join(ESTIMATORS), "resamples": "1000",
                                         "seed": "0"}
    reference_path = None
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "recipe":
            recipe = value
        elif key == "reference":
            reference_path = value
        elif key.startswith("variance."):
            name = key.removeprefix("variance.")
            if name not in opts:
                raise ConfigError(f"unknown variance option {key!r}; known: {', '.join('variance.' + k for k in opts)}")
            opts[name] = value
        else:
            overrides.append(arg)
    cfg = load_config(recipe or "demo", overrides)
    estimators = [e.strip() for e in opts["estimators"].split(",")]
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise ConfigError(f"variance.estimators: unknown {unknown}; choose from {', '.join(ESTIMATORS)}")
    n_samples = [int(x) for x in opts["n_samples"].split(",")]
    reps, max_pairs, batch_pairs = int(opts["reps"]), int(opts["max_pairs"]), int(opts["batch_pairs"])
    out = Path(opts["output_dir"] or Path(cfg.train.output_dir) / "variance")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(opts["seed"]))

    from align.models import adapter_base

    policy = load_model(cfg.model.name_or_path, dtype=cfg.model.dtype).eval()
    reference_path = reference_path or adapter_base(cfg.model.name_or_path)
    if reference_path is None:
        raise ConfigError("reference=PATH is required (the policy is not a LoRA output whose base could serve)")
    reference = load_model(reference_path, dtype=cfg.model.dtype).eval()
    spec = spec_for(policy)
    tokenizer = load_tokenizer(cfg.model.tokenizer or tokenizer_source(cfg.model.name_or_path))
    source = cfg.data.eval_dataset or cfg.data.dataset
    rows, name = load_records(source, None if is_local(source) else (cfg.data.eval_split or "test"))
    data, data_report = DPOObjective(cfg).build_dataset(rows, name, tokenizer, spec, limit=max_pairs)
    print(data_report.summary(), flush=True)
    batches = [collate(data[i : i + batch_pairs], spec.pad_token_id) for i in range(0, len(data), batch_pairs)]
    print(f"[variance] policy {cfg.model.name_or_path}, reference {reference_path}; {len(data)} pairs from {source}; "
          f"{reps} independent estimates per pair and cell", flush=True)
    started = time.time()
    values = measure_variance(token_scorer(policy), token_scorer(reference), batches, mask_token_id=spec.mask_token_id,
                              estimators=estimators, n_samples=n_samples, reps=reps,
                              progress=lambda msg: print(f"[variance] {msg}", flush=True))
    table = bootstrap(values, resamples=int(opts["resamples"]))
    md = variance_markdown(table, estimators, n_samples)
    header = (f"policy `{cfg.model.name_or_path}`, reference `{reference_path}`, {len(data)} pairs from `{source}`, "
              f"{reps} draws per pair; mean over pairs ± bootstrap SE ({opts['resamples']} resamples of pairs); "
              f"{time.time() - started:.0f} s")
    (out / "variance.md").write_text(header + "\n\n" + md + "\n")
    (out / "variance.json").write_text(json.dumps({
        "policy": cfg.model.name_or_path, "reference": reference_path, "pairs": len(data), "reps": reps,
        "cells": [{"estimator": e, "setting": s, "n": n, "var": table["var"][e, s, n][0], "se": table["var"][e, s, n][1]}
                  for e, s, n in table["var"]],
        "per_pair": {f"{e}/{s}/{n}": v.tolist() for (e, s, n), v in values.items()}}, indent=1) + "\n")
    plot_variance(out / "variance.png", table, estimators, n_samples)
    print(header + "\n\n" + md, flush=True)
    print(f"[variance] wrote {out / 'variance.md'}, {out / 'variance.json'}, {out / 'variance.png'}", flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if argv and argv[0] == "variance":
            variance_main(argv[1:])
        else:
            grid_main(argv)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None


if __name__ == "__main__":
    main()
