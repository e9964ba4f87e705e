"""What an ablation grid found: outcomes per run, intervals over seeds, paired differences between arms.

``align.ablate`` calls :func:`report` after (or without, ``grid.report_only=true``) running the grid. It reads
each run's ``metrics.jsonl``, ``eval_examples.jsonl`` and ``config.yaml`` and writes ``runs.csv`` (every logged
record), ``outcomes.csv`` (one row per run), ``summary.md`` and ``ablation.png``.

Every held-out column is scored by the runs' common evaluator (``cfg.eval``; the summary names it, and the
report refuses to compare runs whose evaluators differ). Outcomes of a run:

- final: reward accuracy, margin and log-ratios in nats, DPO loss without the RPO term, refusal rates;
- learning speed: accuracy and margin averaged over the evaluations after step 0 (the area under the
  learning curve over its length), steps and policy tokens until accuracy (and margin) first reach a target.

Per arm: the mean over seeds with its 95% Student-t interval. Between arms: each arm against the first, paired
by seed (same seed = same initial adapter, data order and, through the common evaluator, the same eval masks),
with the interval of the mean difference; and for the margin, paired by held-out pair (each pair's final margin
averaged over the seeds both arms have). ``grid.select=best:<outcome>`` picks each arm's learning rate from a
``train.learning_rate`` axis by the mean outcome over seeds, and reports the picks.

    python -m align.ablate recipe=demo grid.coupling=coupled,decoupled grid.seeds=3 grid.report_only=true
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import types
from pathlib import Path

from align import stats as S

LR = "train.learning_rate"
SEED = "train.seed"


@dataclasses.dataclass(frozen=True)
class Outcome:
    key: str
    label: str
    higher_is_better: bool
    fmt: str = ".3f"


def outcomes_for(target_accuracy: float, target_margin: float | None, behaviour: bool) -> list[Outcome]:
    out = [Outcome("accuracy", "held-out reward accuracy", True),
           Outcome("margin", "held-out margin (nats)", True, ".2f"),
           Outcome("logratio_chosen", "held-out log-ratio, chosen (nats)", True, ".2f"),
           Outcome("logratio_rejected", "held-out log-ratio, rejected (nats)", False, ".2f"),
           Outcome("dpo_loss", "held-out DPO loss (no RPO term)", False),
           Outcome("accuracy_curve", "accuracy averaged over the learning curve", True),
           Outcome("margin_curve", "margin averaged over the learning curve (nats)", True, ".2f"),
           Outcome("steps_to_accuracy", f"steps to accuracy ≥ {target_accuracy:g}", False, ".0f"),
           Outcome("tokens_to_accuracy", f"policy tokens to accuracy ≥ {target_accuracy:g}", False, ".3g")]
    if target_margin is not None:
        out += [Outcome("steps_to_margin", f"steps to margin ≥ {target_margin:g} nats", False, ".0f"),
                Outcome("tokens_to_margin", f"policy tokens to margin ≥ {target_margin:g} nats", False, ".3g")]
    if behaviour:
        out += [Outcome("refusal_rate", "refusal rate (harmful prompts)", True),
                Outcome("over_refusal_rate", "over-refusal rate (everyday prompts)", False)]
    return out


# ------------------------------------------------------------------------------------------------ reading runs
def read_jsonl_by_step(path: Path) -> dict[int, dict]:
    """A step-keyed jsonl (``metrics.jsonl``) merged by step."""
    by_step: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                by_step.setdefault(rec["step"], {}).update(rec)
    return dict(sorted(by_step.items()))


def read_examples(path: Path) -> dict[int, dict[int, dict]]:
    """``eval_examples.jsonl`` -> {step: {example id: values}}."""
    out: dict[int, dict[int, dict]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                out.setdefault(rec.pop("step"), {})[rec.pop("id")] = rec
    return out


def run_outcomes(metrics: dict[int, dict], target_accuracy: float, target_margin: float | None) -> dict:
    """The outcomes of one run from its logged records (None where a run has no such figure)."""
    evals = {s: m for s, m in metrics.items() if "eval/rewards/accuracies" in m}
    if not evals:
        return {}
    last = evals[max(evals)]
    later = [m for s, m in evals.items() if s > 0]

    def first_step(key, target):
        hit = [s for s, m in evals.items() if m.get(key) is not None and m[key] >= target]
        return hit[0] if hit else None

    def average(key):
        values = [m[key] for m in later if m.get(key) is not None]
        return sum(values) / len(values) if values else None

    steps_acc = first_step("eval/rewards/accuracies", target_accuracy)
    out = {"accuracy": last.get("eval/rewards/accuracies"), "margin": last.get("eval/margin"),
           "logratio_chosen": last.get("eval/logratio/chosen"), "logratio_rejected": last.get("eval/logratio/rejected"),
           "dpo_loss": last.get("eval/dpo_loss"), "accuracy_curve": average("eval/rewards/accuracies"),
           "margin_curve": average("eval/margin"), "steps_to_accuracy": steps_acc,
           "tokens_to_accuracy": evals[steps_acc].get("policy_tokens") if steps_acc is not None else None,
           "refusal_rate": last.get("eval/refusal_rate"), "over_refusal_rate": last.get("eval/over_refusal_rate"),
           "final_step": max(evals), "policy_tokens": last.get("policy_tokens"),
           "accuracy_mc_se": last.get("eval/rewards/accuracies/mc_se"),
           "margin_mc_se": last.get("eval/margin/mc_se"), "examples": last.get("eval/examples")}
    if target_margin is not None:
        steps_margin = first_step("eval/margin", target_margin)
        out["steps_to_margin"] = steps_margin
        out["tokens_to_margin"] = evals[steps_margin].get("policy_tokens") if steps_margin is not None else None
    return out


def evaluator_of(config: dict) -> dict | None:
    """What decides how a run is scored (None: a run from before align had evaluation settings of its own)."""
    if "eval" not in config:
        return None
    data = config.get("data", {})
    keys = ("eval_dataset", "eval_split", "eval_fraction", "eval_split_seed", "max_eval_examples", "format",
            "preference", "max_prompt_length", "max_response_length", "over_long_prompt", "on_bad_record")
    held_out = {k: data.get(k) for k in keys}
    if data.get("eval_dataset") is None:
        held_out["dataset"] = data.get("dataset")
    return {"eval": config["eval"], "held_out": held_out, "behaviour": config.get("behaviour"),
            "eval_steps": config.get("train", {}).get("eval_steps")}


def differing_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def describe_evaluator(config: dict) -> str:
    from align.dpo import describe_estimator

    ev = config["eval"]
    est = types.SimpleNamespace(**ev)
    data = config["data"]
    where = data.get("eval_dataset") or f"{data.get('dataset')} (held out, data.eval_fraction={data.get('eval_fraction')})"
    return f"{describe_estimator(est)}, eval.seed={ev['seed']} (the same masks for every run), held-out pairs of {where}"


def describe_behaviour(config: dict) -> str | None:
    b = config.get("behaviour") or {}
    if not b.get("prompts"):
        return None
    seed = "each run's train.seed" if b.get("seed") is None else f"behaviour.seed={b['seed']}"
    return (f"prompts of {b['prompts']}, {b.get('samples_per_prompt', 1)} answer(s) per prompt at temperature "
            f"{b['temperature']} ({b['remasking']} remasking, {b['steps']} steps), sampler seeded by {seed}; "
            f"rates are means over prompts")


# ------------------------------------------------------------------------------------------------ the report
def fmt_ci(ci: dict, f: str = ".3f", signed: bool = False) -> str:
    if ci["n"] == 0 or not math.isfinite(ci["mean"]):
        return "—"
    sign = "+" if signed else ""
    if ci["n"] == 1 or not math.isfinite(ci["lo"]):
        return f"{ci['mean']:{sign}{f}}"
    return f"{ci['mean']:{sign}{f}} [{ci['lo']:{sign}{f}}, {ci['hi']:{sign}{f}}]"


def arm_label(arm: tuple, arm_axes: list[str], short) -> str:
    return ", ".join(f"{short(k)}={v}" for k, v in zip(arm_axes, arm)) or "base"


def select_learning_rates(arms: dict, outcome: Outcome) -> tuple[dict, list[str]]:
    """Per arm (other axes), the learning rate whose runs have the best mean ``outcome`` over seeds."""
    chosen, lines = {}, []
    for arm, by_lr in arms.items():
        scores = {}
        for lr, runs in by_lr.items():
            values = [r["outcomes"].get(outcome.key) for r in runs]
            values = [v for v in values if v is not None]
            scores[lr] = sum(values) / len(values) if values else None
        ranked = [lr for lr in scores if scores[lr] is not None]
        if not ranked:
            continue
        best = (max if outcome.higher_is_better else min)(ranked, key=lambda lr: scores[lr])
        chosen[arm] = best
        lines.append((arm, best, scores))
    return chosen, lines


def report(root: Path, axes: dict, cells: list[dict], *, cell_name, short, status_of, target_accuracy: float = 0.7,
           target_margin: float | None = None, select: str | None = None) -> Path:
    """runs.csv, outcomes.csv, summary.md and ablation.png from whatever runs exist under ``root/runs``."""
    runs = _read_runs(root, cells, cell_name, status_of, target_accuracy, target_margin)
    _write_runs_csv(root / "runs.csv", runs, axes, short)
    done = [r for r in runs if r["status"]["status"] == "done"]
    behaviour = any(r["outcomes"].get("refusal_rate") is not None for r in done)
    outcomes = outcomes_for(target_accuracy, target_margin, behaviour)
    _write_outcomes_csv(root / "outcomes.csv", runs, axes, short, outcomes)

    lines = [f"# Ablation: {root}", ""]
    evaluator, comparable = _evaluator_lines(done)
    lines += evaluator
    arm_axes = [k for k in axes if k not in (SEED, LR)] if select else [k for k in axes if k != SEED]
    arms, selection = _arms(done, axes, arm_axes, short, outcomes, select)
    lines += selection
    if arms:
        lines += _final_table(arms, arm_axes, short, outcomes, behaviour)
        lines += _speed_table(arms, arm_axes, short, outcomes)
        lines += ["", *_differences(arms, arm_axes, short, outcomes, behaviour)]
        lines += ["", *_mc_error_lines(arms)]
        if not comparable:
            lines += ["", "(The tables above mix evaluators: see the warning at the top.)"]
    lines += _status_lines(runs)
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    title = describe_evaluator(done[0]["config"]) if done and comparable else "evaluators differ"
    plot_curves(root / "ablation.png", arms, arm_axes, short, behaviour, title)
    return root / "summary.md"


def _read_runs(root: Path, cells, cell_name, status_of, target_accuracy, target_margin) -> list[dict]:
    """Each cell's run: its status, config, logged metrics, outcomes and per-example evaluations."""
    import yaml

    runs = []
    for cell in cells:
        run_dir = root / "runs" / cell_name(cell)
        cfg_path = run_dir / "config.yaml"
        config = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
        metrics = read_jsonl_by_step(run_dir / "metrics.jsonl")
        runs.append({"cell": cell, "dir": run_dir, "status": status_of(run_dir), "metrics": metrics, "config": config,
                     "outcomes": run_outcomes(metrics, target_accuracy, target_margin),
                     "examples": read_examples(run_dir / "eval_examples.jsonl")})
    return runs


def _evaluator_lines(done: list[dict]) -> tuple[list[str], bool]:
    """(the summary's opening: the one evaluator of every run, or why the runs are not comparable; comparable)."""
    lines = []
    evaluators = [(r, evaluator_of(r["config"])) for r in done]
    legacy = [r["dir"].name for r, ev in evaluators if ev is None]
    comparable = not legacy
    if legacy:
        lines += [f"**Not comparable**: {len(legacy)} run(s) were scored by their own training estimator (written "
                  f"before evaluation settings existed: {', '.join(legacy[:4])}). Train them again.", ""]
    elif evaluators:
        ref_run, ref = evaluators[0]
        for r, ev in evaluators[1:]:
            diff = differing_keys(ref, ev)
            if diff:
                comparable = False
                lines += [f"**Not comparable**: `{r['dir'].name}` is scored differently from `{ref_run['dir'].name}` "
                          f"({', '.join(diff[:6])}).", ""]
        lines += [f"**Evaluator of every held-out column**: {describe_evaluator(ref_run['config'])}; "
                  f"{ref_run['outcomes'].get('examples', '?')} pairs."]
        b = describe_behaviour(ref_run["config"])
        if b:
            lines += [f"**Behaviour columns**: {b}."]
        lines += ["**Intervals**: mean over seeds [95% Student-t interval]. Paired differences compare runs with the "
                  "same seed (same initial adapter, data order and eval masks).", ""]
    return lines, comparable


def _arms(done: list[dict], axes: dict, arm_axes: list[str], short, outcomes: list[Outcome], select: str | None):
    """({arm: its runs}, the lines of the learning-rate selection): with ``grid.select``, each arm's runs at the
    learning rate with the best mean outcome over seeds."""
    grouped: dict[tuple, dict] = {}
    for r in done:
        grouped.setdefault(tuple(r["cell"][k] for k in arm_axes), {}).setdefault(
            r["cell"].get(LR) if select else None, []).append(r)
    if not select:
        return {arm: by_lr[None] for arm, by_lr in grouped.items()}, []
    name = select.split(":", 1)[1]
    by_key = {o.key: o for o in outcomes}
    chosen, picks = select_learning_rates(grouped, by_key[name])
    lines = [f"## Learning rate per arm (grid.select={select})", "",
             f"Each arm takes the learning rate with the best mean {by_key[name].label} over seeds (chosen on "
             f"the same held-out pairs the tables below report, for every arm alike).", "",
             "| arm | " + " | ".join(f"lr={lr}" for lr in axes.get(LR, [])) + " | chosen |",
             "|---|" + "---|" * (len(axes.get(LR, [])) + 1)]
    for arm, best, scores in picks:
        cells = [f"{scores.get(lr):{by_key[name].fmt}}" if scores.get(lr) is not None else "—"
                 for lr in axes.get(LR, [])]
        lines.append(f"| {arm_label(arm, arm_axes, short)} | " + " | ".join(cells) + f" | {best} |")
    lines.append("")
    return {arm: by_lr[chosen[arm]] for arm, by_lr in grouped.items() if arm in chosen}, lines


def _final_table(arms: dict, arm_axes, short, outcomes: list[Outcome], behaviour: bool) -> list[str]:
    final_keys = ["accuracy", "margin", "logratio_chosen", "logratio_rejected", "dpo_loss"]
    final_keys += ["refusal_rate", "over_refusal_rate"] if behaviour else []
    by_key = {o.key: o for o in outcomes}
    steps = sorted({r["outcomes"].get("final_step") for rs in arms.values() for r in rs} - {None})
    lines = [f"## Final evaluation (step {', '.join(map(str, steps))})", "",
             "| arm | seeds | " + " | ".join(by_key[k].label for k in final_keys) + " | policy tokens (mean) | wall s |",
             "|---|---|" + "---|" * (len(final_keys) + 2)]
    for arm, rs in arms.items():
        row = [fmt_ci(S.t_interval([r["outcomes"].get(k) for r in rs]), by_key[k].fmt) for k in final_keys]
        tokens = S.t_interval([r["outcomes"].get("policy_tokens") for r in rs])
        wall = S.t_interval([r["status"].get("wall_s") for r in rs])
        lines.append(f"| {arm_label(arm, arm_axes, short)} | {len(rs)} | " + " | ".join(row) +
                     f" | {tokens['mean']:.4g} | {fmt_ci(wall, '.0f')} |")
    return lines


def _speed_table(arms: dict, arm_axes, short, outcomes: list[Outcome]) -> list[str]:
    by_key = {o.key: o for o in outcomes}
    speed_keys = [o.key for o in outcomes if o.key in ("accuracy_curve", "margin_curve", "steps_to_accuracy",
                                                       "tokens_to_accuracy", "steps_to_margin", "tokens_to_margin")]
    lines = ["", "## Learning speed", "",
             "Curve averages are over the evaluations after step 0; steps and tokens to a target are over the "
             "seeds that reached it (reached/seeds).", "",
             "| arm | " + " | ".join(by_key[k].label for k in speed_keys) + " |",
             "|---|" + "---|" * len(speed_keys)]
    for arm, rs in arms.items():
        row = []
        for k in speed_keys:
            ci = S.t_interval([r["outcomes"].get(k) for r in rs])
            cell = fmt_ci(ci, by_key[k].fmt)
            if k.startswith(("steps_to", "tokens_to")):
                cell += f" ({ci['n']}/{len(rs)})"
            row.append(cell)
        lines.append(f"| {arm_label(arm, arm_axes, short)} | " + " | ".join(row) + " |")
    return lines


def _status_lines(runs: list[dict]) -> list[str]:
    """Failed runs with their error, and cells not run yet."""
    lines = []
    failed = [(r["dir"].name, r["status"].get("error", "")) for r in runs if r["status"]["status"] == "failed"]
    pending = [r["dir"].name for r in runs if r["status"]["status"] == "pending"]
    if failed:
        lines += ["", "## Failed runs", "", *(f"- `{n}`: {e} (log: `runs/{n}/train.log`)" for n, e in failed)]
    if pending:
        lines += ["", f"## Not run yet ({len(pending)})", "", *(f"- `{n}`" for n in pending)]
    return lines


def _differences(arms: dict, arm_axes, short, outcomes: list[Outcome], behaviour: bool) -> list[str]:
    """Along each axis, its first value against each other one, at every setting of the other axes: paired over
    seeds (every outcome) and over held-out pairs (the margin)."""
    lines = []
    for position, axis in enumerate(arm_axes):
        values = list(dict.fromkeys(arm[position] for arm in arms))
        if len(values) < 2:
            continue
        lines += [f"## Paired differences along {short(axis)} ({short(axis)}={values[0]} − each other value)", "",
                  "Over seeds: the mean of per-seed differences [95% t-interval] (seeds, in how many the first is "
                  "larger). Over held-out pairs: each pair's final margin averaged over those seeds, differenced, "
                  "then the mean over pairs.", ""]
        for base in [arm for arm in arms if arm[position] == values[0]]:
            for other in [arm for arm in arms if arm[position] != values[0]
                          and all(arm[i] == base[i] for i in range(len(arm_axes)) if i != position)]:
                rest = [f"{short(k)}={base[i]}" for i, k in enumerate(arm_axes) if i != position]
                who = f"{short(axis)}={base[position]} − {short(axis)}={other[position]}" + (
                    f" (at {', '.join(rest)})" if rest else "")
                lines += [*_compare(arms[base], arms[other], who, outcomes), ""]
    return lines


def _compare(a_runs: list, b_runs: list, who: str, outcomes: list[Outcome]) -> list[str]:
    lines = []
    a = {r["cell"].get(SEED, "0"): r for r in a_runs}
    b = {r["cell"].get(SEED, "0"): r for r in b_runs}
    for o in outcomes:
        d = S.paired_difference({s: r["outcomes"].get(o.key) for s, r in a.items()},
                                {s: r["outcomes"].get(o.key) for s, r in b.items()})
        if d["n"] == 0:
            continue
        verdict = ""
        if d["n"] > 1 and math.isfinite(d["lo"]):
            verdict = "; the interval excludes 0" if d["lo"] > 0 or d["hi"] < 0 else "; the interval covers 0"
        lines.append(f"- {who}, {o.label}: {fmt_ci(d, o.fmt, signed=True)}, {d['n']} seeds "
                     f"({d['wins']} of {d['n']} larger){verdict}")
    seeds = sorted(set(a) & set(b), key=str)
    per_pair = {}
    for which, runs in (("a", a), ("b", b)):
        values: dict[int, list[float]] = {}
        for s in seeds:
            ex = runs[s]["examples"]
            if ex:
                for i, v in ex[max(ex)].items():
                    values.setdefault(i, []).append(v["margin"])
        per_pair[which] = {i: sum(v) / len(v) for i, v in values.items() if len(v) == len(seeds)}
    if per_pair["a"] and per_pair["b"]:
        d = S.paired_difference(per_pair["a"], per_pair["b"])
        lines.append(f"- {who}, held-out margin (nats) over {d['n']} held-out pairs (mean over {len(seeds)} "
                     f"seeds): {fmt_ci(d, '.2f', signed=True)} ({d['wins']} of {d['n']} pairs larger)")
    return lines


def _mc_error_lines(arms: dict) -> list[str]:
    """How much of the final accuracy's uncertainty is the evaluator's own (Monte Carlo) error."""
    rs = [r for runs in arms.values() for r in runs]
    mc = [r["outcomes"].get("accuracy_mc_se") for r in rs if r["outcomes"].get("accuracy_mc_se") is not None]
    if not mc:
        return []
    acc = [r["outcomes"]["accuracy"] for r in rs if r["outcomes"].get("accuracy") is not None]
    n = rs[0]["outcomes"].get("examples") or 0
    binom = [S.binomial_se(p, n) for p in acc]
    margin_mc = [r["outcomes"].get("margin_mc_se") for r in rs if r["outcomes"].get("margin_mc_se") is not None]
    return ["## The evaluator's own error", "",
            f"Monte Carlo standard error of the final accuracy, mean over runs: {sum(mc) / len(mc):.4f} (binomial "
            f"standard error of an accuracy over the {n} held-out pairs: {sum(binom) / len(binom):.4f}); of the final "
            f"margin: {sum(margin_mc) / max(len(margin_mc), 1):.3f} nats."]


def _write_runs_csv(path: Path, runs: list[dict], axes: dict, short) -> None:
    keys = sorted({k for r in runs for rec in r["metrics"].values() for k in rec if k != "step"})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "status", *(short(k) for k in axes), "step", *keys])
        for r in runs:
            for step, rec in r["metrics"].items():
                w.writerow([r["dir"].name, r["status"]["status"], *(r["cell"][k] for k in axes), step,
                            *(rec.get(k, "") for k in keys)])


def _write_outcomes_csv(path: Path, runs: list[dict], axes: dict, short, outcomes: list[Outcome]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "status", *(short(k) for k in axes), *(o.key for o in outcomes), "wall_s"])
        for r in runs:
            w.writerow([r["dir"].name, r["status"]["status"], *(r["cell"][k] for k in axes),
                        *("" if r["outcomes"].get(o.key) is None else r["outcomes"][o.key] for o in outcomes),
                        r["status"].get("wall_s", "")])


PANELS = (("held-out reward accuracy", (("eval/rewards/accuracies", "-"),)),
          ("held-out margin (nats)", (("eval/margin", "-"),)),
          ("held-out DPO loss (no RPO term)", (("eval/dpo_loss", "-"),)),
          ("held-out log-ratio, chosen (nats)", (("eval/logratio/chosen", "-"),)),
          ("held-out log-ratio, rejected (nats)", (("eval/logratio/rejected", "-"),)))
BEHAVIOUR_PANEL = ("refusal rate: harmful (solid), everyday (dashed)",
                   (("eval/refusal_rate", "-"), ("eval/over_refusal_rate", "--")))
SHARES = ("eval/rewards/accuracies", "eval/refusal_rate", "eval/over_refusal_rate")  # bands drawn within [0, 1]


def plot_curves(path: Path, arms: dict, arm_axes, short, behaviour: bool, evaluator: str) -> None:
    """Learning curves of the common-evaluator metrics: mean over seeds, band = 95% t-interval over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = PANELS + ((BEHAVIOUR_PANEL,) if behaviour else ())
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.4))
    for ax in axes.flat[len(spec):]:
        ax.set_visible(False)
    for (title, curves), ax in zip(spec, axes.flat):
        for key, style in curves:
            for i, (arm, runs) in enumerate(arms.items()):
                series = [{s: rec[key] for s, rec in r["metrics"].items() if key in rec} for r in runs]
                steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
                if not steps:
                    continue
                cis = [S.t_interval([s[x] for s in series]) for x in steps]
                label = f"{arm_label(arm, arm_axes, short)} ({len(series)} seeds)" if style == "-" else None
                ax.plot(steps, [c["mean"] for c in cis], ls=style, marker="o", ms=3, color=f"C{i}", label=label)
                if len(series) > 1:
                    lo, hi = [c["lo"] for c in cis], [c["hi"] for c in cis]
                    if key in SHARES:
                        lo, hi = [max(x, 0.0) for x in lo], [min(x, 1.0) for x in hi]
                    ax.fill_between(steps, lo, hi, color=f"C{i}", alpha=0.15, lw=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"scored by one evaluator: {evaluator}\nlines: mean over seeds; bands: 95% t-interval over seeds "
                 f"(shares clipped to [0, 1])", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
