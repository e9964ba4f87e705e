"""The variance of the DPO-margin estimate on trained models: one checkpoint, or along a training path.

One model (trains nothing)::

    python -m align.ablate variance model.name_or_path=POLICY [reference=REF] [data.dataset=FILE] [variance.reps=16]

For every sharing setting x estimator x n_samples (``variance.n_samples``, default 1,5,32): the variance of
the n-sample margin estimate across ``reps`` independent draws per pair, averaged over pairs, with bootstrap
standard errors (pairs resampled) on each variance and 95% percentile intervals on each ratio. POLICY / REF: anything
``align.models.load_model`` reads, including LoRA output directories and training checkpoints; REF defaults
to the policy's base model when POLICY is a LoRA output. Output: ``variance.md``, ``variance.json``,
``variance.png`` under ``variance.output_dir``.

Along the training path::

    python -m align.ablate variance run=outputs/demo            # every checkpoint of one run
    python -m align.ablate variance grid=outputs/ablate/demo    # every run of a grid, pooled per arm

Step 0 (the starting model, which is the reference) and every ``checkpoint-N`` of the run (keep them with
``train.save_total_limit=null``), scored on the run's held-out pairs with the run's own training estimator and
n (``variance.estimators`` / ``variance.n_samples`` override) under ``variance.settings`` (default
coupled,decoupled; ``all`` for the four); ``variance.runs=GLOB`` measures only the grid's runs whose directory
name matches (e.g. ``*rpo_alpha-null*``). Per step: each setting's variance and the decoupled/coupled ratio,
with bootstrap SEs over held-out pairs (for a grid arm a pair keeps all its runs together in a resample) and
ratios with 95% percentile intervals. Output: ``variance_path.md``,
``variance_path.json``, ``variance_path.png`` under ``variance.output_dir`` (default ``<run or grid>/variance``).
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import time
from pathlib import Path

import torch

from align import estimators as E
from align.checkpoints import complete_checkpoints
from align.cli import overrides as key_values
from align.config import Config, ConfigError, load_config, load_resolved
from align.data import collate, is_local, load_records
from align.dpo import DPOObjective
from align.grid_names import cell_name, cells_of, short
from align.masking import ESTIMATORS
from align.models import adapter_base, load_model, spec_for, token_scorer, tokenizer_source
from align.models.tokenizer import load_tokenizer

SETTINGS = {  # name: (share_policy_reference, share_chosen_rejected)
    "coupled": (True, True),
    "share_pol_ref": (True, False),
    "share_cho_rej": (False, True),
    "decoupled": (False, False),
}
OPTIONS = {
    "reps": "16",
    "n_samples": None,
    "max_pairs": "32",
    "batch_pairs": "8",
    "output_dir": None,
    "estimators": None,
    "resamples": "1000",
    "seed": "0",
    "settings": None,
    "runs": None,
}


def pair_variances(
    policy,
    reference,
    batch: dict,
    *,
    estimator: str,
    share: tuple[bool, bool],
    n: int,
    reps: int,
    mask_token_id: int,
    seed: int = 0,
) -> torch.Tensor:
    """[pairs]: per pair, the variance over ``reps`` independent draws of the n-sample mean margin.

    ``policy``/``reference``: token scorers (``estimators.TokenScorer``; ``scorer_from_logits`` adapts a
    logits function)."""
    rep = lambda x: None if x is None else x.repeat_interleave(reps, 0)  # noqa: E731
    with torch.no_grad():
        terms = E.dpo_terms(
            policy,
            reference,
            rep(batch["chosen_ids"]),
            rep(batch["rejected_ids"]),
            rep(batch["response_mask"]),
            n_samples=n,
            estimator=estimator,
            share_policy_reference=share[0],
            share_chosen_rejected=share[1],
            mask_token_id=mask_token_id,
            attention_mask=rep(batch.get("attention_mask")),
            generator=torch.Generator().manual_seed(seed),
        )
    means = terms.margin.mean(-1).reshape(-1, reps)  # [pairs, reps]
    return means.double().var(-1)


def measure_variance(
    policy,
    reference,
    batches: list[dict],
    *,
    mask_token_id: int,
    estimators,
    n_samples,
    reps: int,
    settings=SETTINGS,
    progress=None,
    seed: int = 0,
) -> dict:
    """{(estimator, setting, n): per-pair variances [pairs]} over all ``batches`` (token scorers)."""
    out = {}
    total = len(estimators) * len(settings) * len(n_samples)
    for i, (est, (name, share), n) in enumerate(itertools.product(estimators, settings.items(), n_samples)):
        v = [
            pair_variances(
                policy,
                reference,
                b,
                estimator=est,
                share=share,
                n=n,
                reps=reps,
                mask_token_id=mask_token_id,
                seed=seed + 1000 * i + j,
            )
            for j, b in enumerate(batches)
        ]
        out[est, name, n] = torch.cat(v)
        if progress:
            progress(f"{i + 1}/{total}: {est} {name} n={n}: var {out[est, name, n].mean():.4g}")
    return out


def bootstrap(values: dict, *, resamples: int = 1000, seed: int = 0, clusters: list | None = None) -> dict:
    """Mean variance per cell with its bootstrap SE; decoupled/coupled and time_integral/time_free ratios with
    95% percentile intervals.

    Held-out pairs are the resampled unit, as clusters: ``clusters[u]`` names the pair of unit u (for a grid arm
    the units are (run, pair), and a pair's runs stay together in a resample: they share the pair and its
    draws, so resampling them apart would shrink the SE). Every statistic is recomputed on the same resampled
    pairs. A ratio's interval is the percentile interval of the resampled ratios (the same on the log scale,
    where a ratio's sampling distribution is closer to symmetric), reported as [lo, hi] rather than ± SE."""
    any_v = next(iter(values.values()))
    labels = list(range(len(any_v))) if clusters is None else list(clusters)
    index: dict = {}
    inv = torch.tensor([index.setdefault(c, len(index)) for c in labels])
    C = len(index)
    sizes = torch.bincount(inv, minlength=C).double()
    draw = torch.randint(0, C, (resamples, C), generator=torch.Generator().manual_seed(seed))
    counts = torch.zeros(resamples, C, dtype=torch.float64).scatter_add_(
        1, draw, torch.ones(resamples, C, dtype=torch.float64)
    )
    boot = {}
    for k, v in values.items():
        sums = torch.zeros(C, dtype=torch.float64).index_add_(0, inv, v.double())
        boot[k] = (counts @ sums) / (counts @ sizes)  # [resamples]

    def ratio(num, den, point):
        r = (boot[num] / boot[den]).log()
        r = r[torch.isfinite(r)]
        lo, hi = (
            torch.quantile(r, torch.tensor([0.025, 0.975], dtype=r.dtype)).exp().tolist()
            if len(r)
            else (float("nan"), float("nan"))
        )
        return (point, lo, hi)

    table = {"var": {}, "ratio_decoupled_coupled": {}, "ratio_time_integral_time_free": {}}
    for (est, setting, n), v in values.items():
        table["var"][est, setting, n] = (v.mean().item(), boot[est, setting, n].std().item())
        if setting == "coupled" and (est, "decoupled", n) in values and v.mean().item() > 0:
            table["ratio_decoupled_coupled"][est, n] = ratio(
                (est, "decoupled", n), (est, "coupled", n), values[est, "decoupled", n].mean().item() / v.mean().item()
            )
        if est == "time_free" and ("time_integral", setting, n) in values and v.mean().item() > 0:
            table["ratio_time_integral_time_free"][setting, n] = ratio(
                ("time_integral", setting, n),
                (est, setting, n),
                values["time_integral", setting, n].mean().item() / v.mean().item(),
            )
    return table


def fmt_ratio(r) -> str:
    return f"{r[0]:.3g}× [{r[1]:.3g}, {r[2]:.3g}]"


def variance_markdown(table: dict, estimators, n_samples, settings=SETTINGS) -> str:
    def f(x):
        return f"{x[0]:.4g} ± {x[1]:.2g}"

    lines = [
        "| estimator | n | " + " | ".join(f"{s} var" for s in settings) + " | decoupled/coupled |",
        "|---|---|" + "---|" * (len(settings) + 1),
    ]
    for est in estimators:
        for n in n_samples:
            cells = " | ".join(f(table["var"][est, s, n]) for s in settings)
            ratio = table["ratio_decoupled_coupled"].get((est, n))
            lines.append(f"| {est} | {n} | {cells} | {fmt_ratio(ratio) if ratio else '—'} |")
    if table["ratio_time_integral_time_free"]:
        lines += [
            "",
            "| time_integral / time_free | " + " | ".join(f"n={n}" for n in n_samples) + " |",
            "|---|" + "---|" * len(n_samples),
        ]
        for s in settings:
            lines.append(
                f"| {s} | "
                + " | ".join(fmt_ratio(table["ratio_time_integral_time_free"][s, n]) for n in n_samples)
                + " |"
            )
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


# ------------------------------------------------------------------------------------------- shared set-up
def parse(argv: list[str]) -> tuple[str | None, list[str], dict, dict]:
    """-> (recipe, config overrides, variance options, paths {reference, run, grid})."""
    recipe, overrides, opts, paths = None, [], dict(OPTIONS), {}

    for key, value in key_values(argv, prog="align.ablate variance", help_page=lambda: __doc__):
        arg = f"{key}={value}"
        if key == "recipe":
            recipe = value
        elif key in ("reference", "run", "grid"):
            paths[key] = value
        elif key.startswith("variance."):
            name = key.removeprefix("variance.")
            if name not in opts:
                raise ConfigError(f"unknown variance option {key!r}; known: {', '.join('variance.' + k for k in opts)}")
            opts[name] = value
        else:
            overrides.append(arg)
    if "run" in paths and "grid" in paths:
        raise ConfigError("give run=DIR or grid=DIR, not both")
    return recipe, overrides, opts, paths


def _list(value: str | None, default, cast=str) -> list:
    return [cast(x.strip()) for x in value.split(",") if x.strip()] if value else list(default)


def _settings(value: str | None, default=("coupled", "decoupled")) -> dict:
    names = list(SETTINGS) if value == "all" else _list(value, default)
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        raise ConfigError(f"variance.settings: unknown {unknown}; choose from {', '.join(SETTINGS)} or all")
    return {s: SETTINGS[s] for s in names}


def _estimators(value: str | None, default) -> list[str]:
    estimators = _list(value, default)
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise ConfigError(f"variance.estimators: unknown {unknown}; choose from {', '.join(ESTIMATORS)}")
    return estimators


def held_out_batches(cfg, tokenizer, spec, *, max_pairs: int, batch_pairs: int, run_dir: Path | None = None):
    """(batches, description) of a run's held-out pairs: ``data.eval_dataset``, or the records of the training
    file the run held out (its ``eval_ids.json``), or the whole dataset when neither is known."""

    d = cfg.data
    source = d.eval_dataset or d.dataset
    indices = None
    ids_file = run_dir / "eval_ids.json" if run_dir is not None else None
    if d.eval_dataset is None and ids_file is not None and ids_file.exists():
        held = json.loads(ids_file.read_text())
        if held.get("held_out_of_training_file"):
            indices = held["ids"]
    rows, name = load_records(source, None if is_local(source) else (d.eval_split or "test"), d.config_name)
    data, report = DPOObjective(cfg).build_dataset(rows, name, tokenizer, spec, limit=max_pairs, indices=indices)
    print(report.summary(), flush=True)
    batches = [collate(data[i : i + batch_pairs], spec.pad_token_id) for i in range(0, len(data), batch_pairs)]
    where = f"{len(data)} {'held-out ' if indices is not None or d.eval_dataset else ''}pairs of `{source}`"
    return batches, where


# ------------------------------------------------------------------------------------------- one model
def model_main(argv: list[str]) -> None:

    recipe, overrides, opts, paths = parse(argv)
    cfg = load_config(recipe or "demo", overrides)
    estimators = _estimators(opts["estimators"], ("time_free", "any_order", "time_integral"))
    n_samples = _list(opts["n_samples"], (1, 5, 32), int)
    settings = _settings(opts["settings"], tuple(SETTINGS))
    reps, max_pairs, batch_pairs = int(opts["reps"]), int(opts["max_pairs"]), int(opts["batch_pairs"])
    out = Path(opts["output_dir"] or Path(cfg.train.output_dir) / "variance")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(opts["seed"]))

    policy = load_model(cfg.model.name_or_path, dtype=cfg.model.dtype).eval()
    reference_path = paths.get("reference") or adapter_base(cfg.model.name_or_path)
    if reference_path is None:
        raise ConfigError("reference=PATH is required (the policy is not a LoRA output whose base could serve)")
    reference = load_model(reference_path, dtype=cfg.model.dtype).eval()
    spec = spec_for(policy)
    tokenizer = load_tokenizer(cfg.model.tokenizer or tokenizer_source(cfg.model.name_or_path))
    batches, where = held_out_batches(cfg, tokenizer, spec, max_pairs=max_pairs, batch_pairs=batch_pairs)
    print(
        f"[variance] policy {cfg.model.name_or_path}, reference {reference_path}; {where}; "
        f"{reps} independent estimates per pair and cell",
        flush=True,
    )
    started = time.time()
    values = measure_variance(
        token_scorer(policy),
        token_scorer(reference),
        batches,
        mask_token_id=spec.mask_token_id,
        estimators=estimators,
        n_samples=n_samples,
        reps=reps,
        settings=settings,
        progress=lambda msg: print(f"[variance] {msg}", flush=True),
    )
    table = bootstrap(values, resamples=int(opts["resamples"]))
    md = variance_markdown(table, estimators, n_samples, settings)
    header = (
        f"policy `{cfg.model.name_or_path}`, reference `{reference_path}`, {where}, "
        f"{reps} draws per pair; mean over pairs ± bootstrap SE ({opts['resamples']} resamples of pairs), ratios "
        f"with 95% percentile intervals; "
        f"{time.time() - started:.0f} s"
    )
    (out / "variance.md").write_text(header + "\n\n" + md + "\n")
    (out / "variance.json").write_text(
        json.dumps(
            {
                "policy": cfg.model.name_or_path,
                "reference": reference_path,
                "pairs": sum(len(b["ids"]) for b in batches),
                "reps": reps,
                "cells": [
                    {
                        "estimator": e,
                        "setting": s,
                        "n": n,
                        "var": table["var"][e, s, n][0],
                        "se": table["var"][e, s, n][1],
                    }
                    for e, s, n in table["var"]
                ],
                "per_pair": {f"{e}/{s}/{n}": v.tolist() for (e, s, n), v in values.items()},
            },
            indent=1,
        )
        + "\n"
    )
    plot_variance(out / "variance.png", table, estimators, n_samples, settings)
    print(header + "\n\n" + md, flush=True)
    print(f"[variance] wrote {out / 'variance.md'}, {out / 'variance.json'}, {out / 'variance.png'}", flush=True)


# ------------------------------------------------------------------------------------------- the training path
def run_steps(run_dir: Path) -> list[tuple[int, str | None]]:
    """(step, model path) along a run: step 0 is the starting model (None: the reference itself), then every
    complete ``checkpoint-N``."""
    return [(0, None)] + [(int(p.name.split("-")[1]), str(p)) for p in complete_checkpoints(run_dir)]


def measure_run(
    run_dir: Path, opts: dict, *, estimators=None, n_samples=None, settings=None, progress=print
) -> tuple[dict, str, Config]:
    """({step: {(estimator, setting, n): per-pair variances [pairs]}} along one run's checkpoints, where the
    held-out pairs came from, the run's config)."""

    cfg = load_resolved(run_dir / "config.yaml")
    estimators = estimators or [cfg.estimator.estimator]
    n_samples = n_samples or [cfg.estimator.n_samples]
    settings = settings or _settings(None)
    reference = load_model(cfg.model.name_or_path, dtype=cfg.model.dtype).eval()
    spec = spec_for(reference)
    tokenizer = load_tokenizer(cfg.model.tokenizer or tokenizer_source(cfg.model.name_or_path))
    batches, where = held_out_batches(
        cfg, tokenizer, spec, max_pairs=int(opts["max_pairs"]), batch_pairs=int(opts["batch_pairs"]), run_dir=run_dir
    )
    out = {}
    for step, path in run_steps(run_dir):
        policy = reference if path is None else load_model(path, dtype=cfg.model.dtype).eval()
        started = time.time()
        out[step] = measure_variance(
            token_scorer(policy),
            token_scorer(reference),
            batches,
            mask_token_id=spec.mask_token_id,
            estimators=estimators,
            n_samples=n_samples,
            reps=int(opts["reps"]),
            settings=settings,
            seed=int(opts["seed"]),
        )
        cells = ", ".join(f"{s} {v.mean():.4g}" for (_, s, _), v in out[step].items())
        progress(f"[variance] {run_dir.name} step {step}: {cells} ({time.time() - started:.0f} s)")
    return out, where, cfg


def path_table(by_step: dict, resamples: int, clusters: dict | None = None) -> dict:
    """{step: bootstrap table} (``bootstrap``; ``clusters[step]``: the pair of each unit), steps in order."""
    return {
        step: bootstrap(values, resamples=resamples, clusters=(clusters or {}).get(step))
        for step, values in sorted(by_step.items())
    }


def path_markdown(tables: dict[str, dict], estimators, n_samples, settings) -> str:
    """One table per (arm, estimator, n): each setting's variance and the decoupled/coupled ratio per step."""
    lines = []
    for label, per_step in tables.items():
        for est in estimators:
            for n in n_samples:
                lines += [
                    f"**{label}**, {est}, n = {n}" if label else f"**{est}, n = {n}**",
                    "",
                    "| step | " + " | ".join(f"{s} var" for s in settings) + " | decoupled/coupled |",
                    "|---|" + "---|" * (len(settings) + 1),
                ]
                for step, table in per_step.items():
                    cells = " | ".join(
                        f"{table['var'][est, s, n][0]:.4g} ± {table['var'][est, s, n][1]:.2g}" for s in settings
                    )
                    ratio = table["ratio_decoupled_coupled"].get((est, n))
                    shown = (
                        "— (coupled var 0: policy = reference)"
                        if table["var"][est, "coupled", n][0] == 0
                        else (fmt_ratio(ratio) if ratio else "—")
                    )
                    lines.append(f"| {step} | {cells} | {shown} |")
                lines.append("")
    return "\n".join(lines)


def plot_path(path: Path, tables: dict[str, dict], est: str, n: int, settings, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.9))
    styles = {"coupled": "-", "decoupled": "--", "share_pol_ref": ":", "share_cho_rej": "-."}
    for i, (label, per_step) in enumerate(tables.items()):
        for s in settings:
            pts = [(step, *t["var"][est, s, n]) for step, t in per_step.items() if t["var"][est, s, n][0] > 0]
            if pts:
                steps, v, se = zip(*pts)
                left.errorbar(
                    steps,
                    v,
                    yerr=se,
                    color=f"C{i}",
                    ls=styles.get(s, "-"),
                    marker="o",
                    ms=3,
                    capsize=2,
                    label=f"{label + ': ' if label else ''}{s}",
                )
        pts = [
            (step, *t["ratio_decoupled_coupled"][est, n])
            for step, t in per_step.items()
            if (est, n) in t["ratio_decoupled_coupled"] and t["var"][est, "coupled", n][0] > 0
        ]
        if pts:
            steps, r, lo, hi = zip(*pts)
            yerr = [[x - a for x, a in zip(r, lo)], [b - x for x, b in zip(r, hi)]]
            right.errorbar(steps, r, yerr=yerr, color=f"C{i}", marker="o", ms=3, capsize=2, label=label or "run")
    left.set_yscale("log")
    left.set_title(f"Var[margin estimate], {est}, n = {n}", fontsize=10)
    right.set_yscale("log")
    right.set_title("decoupled / coupled (95% percentile interval)", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("optimizer step (checkpoint)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(
        title + "\nvariances ± bootstrap SE over held-out pairs (a pair's runs resampled together); step 0 coupled is "
        "exactly 0 (policy = reference) and "
        "is not drawn",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _path_groups(paths: dict, opts: dict) -> tuple[Path, dict[str, list[Path]]]:
    """(root, {arm label: its run directories}): one run (``run=``) or a grid's runs by arm (``grid=``)."""
    if "run" in paths:
        root = Path(paths["run"])
        return root, {"": [root]}
    root = Path(paths["grid"])
    axes = json.loads((root / "grid.json").read_text())["axes"]

    groups: dict[str, list[Path]] = {}
    for cell in cells_of(axes):
        arm = ", ".join(f"{short(k)}={v}" for k, v in cell.items() if k != "train.seed") or "base"
        run = root / "runs" / cell_name(cell)
        if (run / "config.yaml").exists() and (opts["runs"] is None or fnmatch.fnmatch(run.name, opts["runs"])):
            groups.setdefault(arm, []).append(run)
    return root, groups


def path_main(argv: list[str]) -> None:
    _, overrides, opts, paths = parse(argv)
    if overrides:
        raise ConfigError(f"run=/grid= measure the runs as they were trained; drop {', '.join(overrides)}")
    root, groups = _path_groups(paths, opts)
    if not any(groups.values()):
        raise ConfigError(f"{root}: no run with a config.yaml to measure")
    first = load_resolved(next(iter(groups.values()))[0] / "config.yaml")
    estimators = _estimators(opts["estimators"], [first.estimator.estimator])
    n_samples = _list(opts["n_samples"], [first.estimator.n_samples], int)
    settings = _settings(opts["settings"])
    if "coupled" not in settings or "decoupled" not in settings:
        raise ConfigError("variance.settings must include coupled and decoupled along a training path (their ratio)")
    out = Path(opts["output_dir"] or root / "variance")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tables, raw, where = {}, {}, ""
    for label, runs in groups.items():
        pooled: dict[int, dict] = {}
        for run in runs:
            by_step, where, _ = measure_run(
                run,
                opts,
                estimators=estimators,
                n_samples=n_samples,
                settings=settings,
                progress=lambda msg: print(msg, flush=True),
            )
            raw[run.name] = {
                str(step): {f"{e}/{s}/{n}": v.tolist() for (e, s, n), v in values.items()}
                for step, values in by_step.items()
            }
            for step, values in by_step.items():
                for key, v in values.items():
                    pooled.setdefault(step, {}).setdefault(key, []).append(v)
        common = [s for s, vals in pooled.items() if all(len(v) == len(runs) for v in vals.values())]
        clusters = {s: [i for v in next(iter(pooled[s].values())) for i in range(len(v))] for s in common}
        pooled = {s: {k: torch.cat(v) for k, v in pooled[s].items()} for s in common}
        tables[label] = path_table(pooled, int(opts["resamples"]), clusters)
    md = path_markdown(tables, estimators, n_samples, settings)
    runs_count = sum(len(r) for r in groups.values())
    header = (
        f"The margin estimate's variance along training: {runs_count} run(s) under `{root}`, {where}, "
        f"{opts['reps']} independent draws per pair; mean over pairs"
        f"{' (and runs of an arm)' if len(groups) > 1 or runs_count > 1 else ''} "
        f"± bootstrap SE ({opts['resamples']} resamples of held-out pairs, each pair with all its runs); ratios with "
        f"95% percentile intervals; {time.time() - started:.0f} s"
    )
    (out / "variance_path.md").write_text(header + "\n\n" + md)
    (out / "variance_path.json").write_text(
        json.dumps(
            {
                "root": str(root),
                "reps": int(opts["reps"]),
                "estimators": estimators,
                "n_samples": n_samples,
                "settings": list(settings),
                "arms": {
                    label: {
                        str(step): {
                            f"{e}/{s}/{n}": {"var": t["var"][e, s, n][0], "se": t["var"][e, s, n][1]}
                            for (e, s, n) in t["var"]
                        }
                        for step, t in per_step.items()
                    }
                    for label, per_step in tables.items()
                },
                "per_pair": raw,
            },
            indent=1,
        )
        + "\n"
    )
    plot_path(
        out / "variance_path.png",
        tables,
        estimators[0],
        n_samples[0],
        settings,
        f"margin-estimate variance along training ({root})",
    )
    print(header + "\n\n" + md, flush=True)
    print(
        f"[variance] wrote {out / 'variance_path.md'}, {out / 'variance_path.json'}, {out / 'variance_path.png'}",
        flush=True,
    )


def main(argv: list[str]) -> None:
    """``python -m align.ablate variance ...``: along a training path with run=/grid=, else one model."""
    if any(a.lstrip("-").startswith(("run=", "grid=")) for a in argv):
        path_main(argv)
    else:
        model_main(argv)
