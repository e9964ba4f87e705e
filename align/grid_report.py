"""What an ablation grid found: per-run tables, then one primary outcome, adjusted secondaries and censored speed.

``align.ablate`` writes the report in two steps, so that a report can be checked from what it was computed from:

1. :func:`collect` reads each run directory (``metrics.jsonl``, ``eval_examples.jsonl``, ``behaviour.jsonl``,
   ``config.yaml``, ``ablate_status.json``) into three tables beside ``grid.json``: ``runs.csv`` (every logged
   record of every run), ``units.csv.gz`` (every held-out unit at every evaluation: pairs with their margin,
   log-ratios, accuracy, DPO loss and Monte Carlo variance; behaviour prompts with their judged shares; each with
   its cluster) and ``runs.json`` (status, wall time, the evaluator of each run);
2. :func:`summarize` reads only ``grid.json`` and those tables and writes ``outcomes.csv``, ``summary.md`` and
   ``ablation.png``. ``python -m align.ablate report=DIR`` runs this step alone: it regenerates a shipped summary
   byte for byte from the committed tables.

Statistics (``align.grid_stats``): every final outcome that is a mean over held-out units gets an interval over
seeds, clustered units and the evaluator's Monte Carlo error (:func:`align.grid_stats.two_way`), per arm and for
paired differences between arms (same seeds, same units). One **primary outcome** is declared before the grid
runs (``grid.primary``, recorded in ``grid.json``; default: the behaviour reward where the behaviour prompts
carry task ids, else the held-out reward accuracy) and reported first. Secondary outcomes get Holm-adjusted
p-values within each comparison; outcomes that are functions of others (the DPO loss of the margin, curve
averages, policy tokens = steps x a fixed count) are shown without a test. Learning speed: the step where a
curve first reaches its target, interpolated between evaluations, right-censored at the last evaluation
(restricted mean and Kaplan-Meier median; the evaluation interval is printed). Wording: "A higher" only when the
test says so; otherwise "no difference detected" with its interval, or equivalence when ``grid.equivalence``
gives a margin and TOST passes.

With ``grid.select=best:<outcome>`` the learning rate of each arm was chosen by ``align.ablate`` on a validation
split (selection runs under ``select/``, their own seeds); the report prints that choice from
``select/selection.json`` and reports only the runs at the chosen rates.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import math
import types
from pathlib import Path

from align import grid_stats as G
from align import stats as S
from align.config import Config, DataArgs, keys_with
from align.dpo import describe_estimator
from align.grid_names import short

LR = "train.learning_rate"
SEED = "train.seed"
PAIR_VALUES = ("margin", "margin/mc_var", "logratio/chosen", "logratio/rejected", "rewards/accuracies", "dpo_loss")
BEHAVIOUR_VALUES = ("refusal", "well_formed", "correct", "reward")
UNIT_COLUMNS = ("run", "source", "step", "unit", "cluster", "kind", *PAIR_VALUES, *BEHAVIOUR_VALUES)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """An outcome of a run. ``source``: ``pairs`` / ``behaviour`` (a mean over held-out units: two-way intervals),
    or ``seeds`` (one number per run: intervals over seeds). ``role``: ``tested`` or ``descriptive`` (a function
    of another outcome: no test of its own)."""

    key: str
    label: str
    higher_is_better: bool
    fmt: str = ".3f"
    source: str = "pairs"
    column: str = ""
    kind: str | None = None
    role: str = "tested"


def outcomes_for(
    target_accuracy: float | None, target_margin: float | None, behaviour: set[str], reward_source: str | None = None
) -> list[Outcome]:
    """Every outcome the report knows, in report order. ``behaviour``: which judged columns the runs have
    (``refusal``; with task ids also ``well_formed`` and ``correct``) and the kinds of their prompts;
    ``reward_source``: the runs' ``behaviour.judge`` / ``behaviour.reward_model`` when one gives the reward."""
    out = [
        Outcome("accuracy", "held-out reward accuracy", True, column="rewards/accuracies"),
        Outcome("margin", "held-out margin (nats)", True, ".2f", column="margin"),
        Outcome("logratio_chosen", "held-out log-ratio, chosen (nats)", True, ".2f", column="logratio/chosen"),
        Outcome("logratio_rejected", "held-out log-ratio, rejected (nats)", False, ".2f", column="logratio/rejected"),
        Outcome(
            "dpo_loss",
            "held-out DPO loss (no RPO term; a function of the margins)",
            False,
            column="dpo_loss",
            role="descriptive",
        ),
    ]
    if "reward" in behaviour:
        label = (
            f"reward ({reward_source}), all prompts"
            if reward_source
            else "reward: correct behaviour, all prompts"
            if "correct" in behaviour
            else "reward (judge), all prompts"
        )
        out += [Outcome("reward", label, True, source="behaviour", column="reward")]
    if "correct" in behaviour:
        out += [
            Outcome(
                f"correct_{k}", f"correct behaviour, {k} prompts", True, source="behaviour", column="correct", kind=k
            )
            for k in ("everyday", "borderline", "harmful")
            if k in behaviour
        ]
        out += [
            Outcome("well_formed", "well-formed answers, all prompts", True, source="behaviour", column="well_formed")
        ]
    if "refusal" in behaviour:
        names = {
            "harmful": ("refusal_rate", "refusal rate (harmful prompts)", True),
            "everyday": ("over_refusal_rate", "over-refusal rate (everyday prompts)", False),
            "borderline": ("borderline_refusal_rate", "refusal rate (borderline prompts)", False),
        }
        out += [
            Outcome(names[k][0], names[k][1], names[k][2], source="behaviour", column="refusal", kind=k)
            for k in ("harmful", "everyday", "borderline")
            if k in behaviour
        ]
    out += [
        Outcome(
            "accuracy_curve", "accuracy averaged over the learning curve", True, source="seeds", role="descriptive"
        ),
        Outcome(
            "margin_curve",
            "margin averaged over the learning curve (nats)",
            True,
            ".2f",
            source="seeds",
            role="descriptive",
        ),
    ]
    if target_accuracy is not None:
        out.append(
            Outcome(
                "steps_to_accuracy",
                f"steps to accuracy ≥ {target_accuracy:g}",
                False,
                ".0f",
                source="speed",
                column="eval/rewards/accuracies",
            )
        )
    if target_margin is not None:
        out.append(
            Outcome(
                "steps_to_margin",
                f"steps to margin ≥ {target_margin:g} nats (a function of the margin curve)",
                False,
                ".0f",
                source="speed",
                column="eval/margin",
                role="descriptive",
            )
        )
    return out


FRONTIER_LEVELS = (0.25, 0.5, 0.75)  # the matched KL levels, as fractions of the largest KL every run reaches
PRIMARY_EXTRA = ("reward_at_kl",)  # the frontier's reward at the middle matched KL level
SELECTABLE = (
    "accuracy",
    "margin",
    "accuracy_curve",
    "margin_curve",
    "dpo_loss",
    "logratio_chosen",
    "logratio_rejected",
    "reward",
    "well_formed",
    "refusal_rate",
    "over_refusal_rate",
    "borderline_refusal_rate",
    "correct_everyday",
    "correct_borderline",
    "correct_harmful",
)
HIGHER_IS_BETTER = {
    o.key: o.higher_is_better
    for o in outcomes_for(0.5, 1.0, {"refusal", "correct", "reward", "everyday", "borderline", "harmful"})
}


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


HELD_OUT_KEYS = [f.name for f in dataclasses.fields(DataArgs) if f"data.{f.name}" in keys_with(Config, "held_out")]


def evaluator_of(config: dict) -> dict | None:
    """What decides how a run is scored (None: a run from before align had evaluation settings of its own): the
    ``eval`` section, the data keys whose field declares ``held_out=True`` (``align.config.opt``; the training file
    too when the held-out set is carved from it), the behaviour check and the evaluation interval."""
    if "eval" not in config:
        return None
    data = config.get("data", {})
    keys = [k for k in HELD_OUT_KEYS if k != "dataset"]
    held_out = {k: data.get(k) for k in keys}
    if data.get("eval_dataset") is None:
        held_out["dataset"] = data.get("dataset")
    return {
        "eval": config["eval"],
        "held_out": held_out,
        "behaviour": config.get("behaviour"),
        "eval_steps": config.get("train", {}).get("eval_steps"),
    }


def differing_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def describe_evaluator(config: dict) -> str:
    ev = config["eval"]
    est = types.SimpleNamespace(**ev)
    data = config["data"]
    where = (
        data.get("eval_dataset") or f"{data.get('dataset')} (held out, data.eval_fraction={data.get('eval_fraction')})"
    )
    return (
        f"{describe_estimator(est)}, eval.seed={ev['seed']} (the same masks for every run), held-out pairs of {where}"
    )


def describe_behaviour(config: dict) -> str | None:
    b = config.get("behaviour") or {}
    if not b.get("prompts"):
        return None
    seed = "each run's train.seed" if b.get("seed") is None else f"behaviour.seed={b['seed']}"
    limit = f" (the first {b['max_prompts']} of each kind)" if b.get("max_prompts") else ""
    return (
        f"prompts of {b['prompts']}{limit}, {b.get('samples_per_prompt', 1)} answer(s) per prompt at temperature "
        f"{b['temperature']} ({b['remasking']} remasking, {b['steps']} steps), sampler seeded by {seed}; "
        f"rates are means over prompts"
    )


def _pair_clusters(config: dict, ids: set[int], field: str = "task_id") -> dict[int, str]:
    """Held-out pair id -> its cluster: the record's ``task_id`` where the data has one, else its prompt text (pairs
    with one prompt are one cluster). Ids are positions in the held-out source (or in the training file when the
    held-out pairs were carved from it). Unknown (e.g. a hub dataset): each pair its own cluster."""
    data = config.get("data", {})
    source = data.get("eval_dataset") or data.get("dataset")
    path = Path(source) if source else None
    if path is None or not path.is_file() or path.suffix not in (".jsonl", ".json"):
        return {i: f"pair-{i}" for i in ids}
    out = {}
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    for i in ids:
        if 0 <= i < len(lines):
            row = json.loads(lines[i])
            prompt = row.get("prompt") if isinstance(row, dict) else None
            out[i] = str(row.get(field)) if isinstance(row, dict) and row.get(field) is not None else str(prompt or i)
        else:
            out[i] = f"pair-{i}"
    return out


def _behaviour_units(path: Path) -> list[dict]:
    """``behaviour.jsonl`` -> per (step, prompt): the judged shares over its samples, with its cluster and kind."""
    groups: dict[tuple, dict] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        key = (rec["step"], rec["prompt"])
        g = groups.setdefault(
            key,
            {
                "step": rec["step"],
                "prompt": rec["prompt"],
                "kind": rec.get("kind"),
                "cluster": rec.get("task_id") or rec["prompt"],
                "n": 0,
                **{k: 0.0 for k in BEHAVIOUR_VALUES if k in rec},
            },
        )
        g["n"] += 1
        for k in BEHAVIOUR_VALUES:
            if k in rec and k in g:
                g[k] += float(rec[k])
    out = []
    index: dict[str, int] = {}
    for (_, prompt), g in groups.items():
        unit = index.setdefault(prompt, len(index))
        out.append(
            {
                "step": g["step"],
                "unit": unit,
                "cluster": g["cluster"],
                "kind": g["kind"],
                **{k: g[k] / g["n"] for k in BEHAVIOUR_VALUES if k in g},
            }
        )
    return out


def collect(root: Path, cells: list[dict], *, cell_name, status_of, runs_dir: str = "runs") -> None:
    """runs.csv, units.csv.gz and runs.json from the run directories under ``root/<runs_dir>``."""
    import yaml

    runs_json, records, units = [], [], []
    for cell in cells:
        run_dir = root / runs_dir / cell_name(cell)
        cfg_path = run_dir / "config.yaml"
        config = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
        status = status_of(run_dir)
        ev = evaluator_of(config) if config else None
        runs_json.append(
            {
                "run": run_dir.name,
                "cell": cell,
                "status": status.get("status"),
                "wall_s": status.get("wall_s"),
                "error": status.get("error"),
                "evaluator": ev,
                "legacy": bool(config) and ev is None,
                "evaluator_text": describe_evaluator(config) if ev else None,
                "behaviour_text": describe_behaviour(config) if ev else None,
                "eval_steps": config.get("train", {}).get("eval_steps") if config else None,
            }
        )
        for step, rec in read_jsonl_by_step(run_dir / "metrics.jsonl").items():
            records.append((run_dir.name, status.get("status"), cell, step, rec))
        examples = run_dir / "eval_examples.jsonl"
        if examples.exists():
            rows = [json.loads(x) for x in examples.read_text().splitlines() if x.strip()]
            clusters = _pair_clusters(config, {r["id"] for r in rows})
            units += [
                {
                    "run": run_dir.name,
                    "source": "pairs",
                    "step": r["step"],
                    "unit": r["id"],
                    "cluster": clusters.get(r["id"], f"pair-{r['id']}"),
                    "kind": "",
                    **{k: r.get(k, "") for k in PAIR_VALUES},
                }
                for r in rows
            ]
        units += [
            {"run": run_dir.name, "source": "behaviour", **u} for u in _behaviour_units(run_dir / "behaviour.jsonl")
        ]
    axes = list(cells[0]) if cells else []
    keys = sorted({k for *_, rec in records for k in rec if k != "step"})
    with open(root / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "status", *(_short(k) for k in axes), "step", *keys])
        for name, status, cell, step, rec in records:
            w.writerow([name, status, *(cell[k] for k in axes), step, *(rec.get(k, "") for k in keys)])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(UNIT_COLUMNS)
    for u in units:
        w.writerow([u.get(c, "") for c in UNIT_COLUMNS])
    with gzip.GzipFile(root / "units.csv.gz", "wb", mtime=0) as f:  # mtime 0: the same tables, the same bytes
        f.write(buf.getvalue().encode())
    (root / "runs.json").write_text(json.dumps(runs_json, indent=1) + "\n")


def _short(key: str) -> str:
    return short(key)


# ------------------------------------------------------------------------------------------------ reading tables
def _num(x: str):
    if x == "" or x is None:
        return None
    try:
        v = float(x)
    except ValueError:
        return x
    return v


def load_tables(root: Path) -> dict:
    """grid.json, runs.json, runs.csv and units.csv.gz of a grid directory, parsed."""
    grid = json.loads((root / "grid.json").read_text())
    runs = json.loads((root / "runs.json").read_text())
    metrics: dict[str, dict[int, dict]] = {r["run"]: {} for r in runs}
    with open(root / "runs.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        step_at = header.index("step")
        for row in reader:
            rec = {k: _num(v) for k, v in zip(header[step_at + 1 :], row[step_at + 1 :]) if v != ""}
            metrics.setdefault(row[0], {})[int(row[step_at])] = rec
    units: dict[tuple[str, str], dict[int, list[dict]]] = {}
    if (root / "units.csv.gz").exists():
        with gzip.open(root / "units.csv.gz", "rt", newline="") as f:
            for row in csv.DictReader(f):
                rec = {k: _num(v) for k, v in row.items() if k not in ("run", "source", "cluster", "kind")}
                rec["cluster"], rec["kind"] = row["cluster"], row["kind"]
                units.setdefault((row["run"], row["source"]), {}).setdefault(int(float(row["step"])), []).append(rec)
    return {"grid": grid, "runs": runs, "metrics": metrics, "units": units}


# ------------------------------------------------------------------------------------------------ outcomes
def run_outcomes(metrics: dict[int, dict], target_accuracy: float | None, target_margin: float | None) -> dict:
    """The seed-level outcomes of one run from its logged records (None where a run has no such figure)."""
    evals = {s: m for s, m in metrics.items() if "eval/rewards/accuracies" in m}
    if not evals:
        return {}
    last = evals[max(evals)]
    later = [m for s, m in evals.items() if s > 0]

    def average(key):
        values = [m[key] for m in later if m.get(key) is not None]
        return sum(values) / len(values) if values else None

    out = {
        "accuracy": last.get("eval/rewards/accuracies"),
        "margin": last.get("eval/margin"),
        "logratio_chosen": last.get("eval/logratio/chosen"),
        "logratio_rejected": last.get("eval/logratio/rejected"),
        "dpo_loss": last.get("eval/dpo_loss"),
        "accuracy_curve": average("eval/rewards/accuracies"),
        "margin_curve": average("eval/margin"),
        "reward": last.get("eval/reward"),
        "well_formed": last.get("eval/well_formed"),
        "refusal_rate": last.get("eval/refusal_rate"),
        "over_refusal_rate": last.get("eval/over_refusal_rate"),
        "borderline_refusal_rate": last.get("eval/borderline_refusal_rate"),
        **{f"correct_{k}": last.get(f"eval/correct/{k}") for k in ("everyday", "borderline", "harmful")},
        "final_step": max(evals),
        "policy_tokens": last.get("policy_tokens"),
        "margin_mc_se": last.get("eval/margin/mc_se"),
        "examples": last.get("eval/examples"),
        "sign_uncertain": last.get("eval/rewards/sign_uncertain"),
    }
    steps = sorted(evals)
    for key, metric, target in (
        ("steps_to_accuracy", "eval/rewards/accuracies", target_accuracy),
        ("steps_to_margin", "eval/margin", target_margin),
    ):
        if target is not None:
            t, reached = G.crossing(steps, [evals[s].get(metric) for s in steps], target)
            out[key], out[key + "_reached"] = t, reached
    return out


def fmt_ci(ci: dict, f: str = ".3f", signed: bool = False) -> str:
    mean = ci.get("mean", float("nan"))
    if mean is None or not math.isfinite(mean):
        return "—"
    sign = "+" if signed else ""
    lo, hi = ci.get("lo", float("nan")), ci.get("hi", float("nan"))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{mean:{sign}{f}}"
    return f"{mean:{sign}{f}} [{lo:{sign}{f}}, {hi:{sign}{f}}]"


def fmt_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def arm_label(arm: tuple, arm_axes: list[str]) -> str:
    return ", ".join(f"{_short(k)}={v}" for k, v in zip(arm_axes, arm)) or "base"


class Grid:
    """The tables of a grid, arranged by arm, with the tables of units each outcome needs."""

    def __init__(self, tables: dict):
        self.grid, self.runs = tables["grid"], tables["runs"]
        self.metrics, self.units = tables["metrics"], tables["units"]
        o = self.grid.get("options", {})
        self.target_accuracy = _float_or_none(o.get("target_accuracy", 0.7))
        self.target_margin = _float_or_none(o.get("target_margin"))
        self.select = o.get("select")
        self.equivalence = _float_or_none(o.get("equivalence"))
        self.axes = self.grid["axes"]
        self.done = [r for r in self.runs if r["status"] == "done"]
        for r in self.done:
            r["outcomes"] = run_outcomes(self.metrics.get(r["run"], {}), self.target_accuracy, self.target_margin)
        judged = set()
        for r in self.done:
            for rows in self.units.get((r["run"], "behaviour"), {}).values():
                for u in rows:
                    judged |= {k for k in BEHAVIOUR_VALUES if u.get(k) is not None} | {u["kind"]}
        ev = next((r["evaluator"] for r in self.done if r.get("evaluator")), None) or {}
        bh = ev.get("behaviour") or {}
        self.reward_source = bh.get("judge") or bh.get("reward_model")
        self.outcomes = outcomes_for(self.target_accuracy, self.target_margin, judged, self.reward_source)
        # every run's (step, KL, reward) for the plot; matched KL levels only where every run's KL rises above 0
        self.curves, self.frontier_reason = self._frontier_curves()
        low = {run: max(k for _, k, _ in pts) for run, pts in self.curves.items() if max(k for _, k, _ in pts) <= 0}
        if self.curves and low:
            self.frontier_reason = "no KL level every run reaches: " + "; ".join(
                f"{run} never measured KL above 0 (its largest estimate {k:.3g} nats)" for run, k in sorted(low.items())
            )
        self.frontier = self.curves if self.curves and not low else {}
        self.kl_levels = []
        if self.frontier:
            self.kl_max = min(max(k for _, k, _ in pts) for pts in self.frontier.values())
            self.kl_levels = [f * self.kl_max for f in FRONTIER_LEVELS]
            matched = [
                Outcome(
                    f"reward_at_kl_{i}",
                    f"reward at KL {lvl:.3g} nats ({f:g} of the largest KL every run reaches)",
                    True,
                    source="frontier",
                    column="reward",
                )
                for i, (f, lvl) in enumerate(zip(FRONTIER_LEVELS, self.kl_levels))
            ]
            self.outcomes = matched + self.outcomes
            for r in self.done:
                pts = {st: rw for st, _, rw in self.frontier[r["run"]]}
                for i, lvl in enumerate(self.kl_levels):
                    where = self.at_kl(r, lvl)
                    r["outcomes"][f"reward_at_kl_{i}"] = (
                        None if where is None else ((1 - where[2]) * pts[where[0]] + where[2] * pts[where[1]])
                    )
                r["outcomes"]["best_reward_within_kl"] = max(
                    rw for _, k, rw in self.frontier[r["run"]] if k <= self.kl_max
                )
        self.by_key = {o.key: o for o in self.outcomes}
        declared = self.grid.get("primary") or "accuracy"
        key = "reward_at_kl_1" if declared == "reward_at_kl" else declared
        self.primary_missing = None if key in self.by_key else declared
        fallback = "reward" if "reward" in self.by_key else "accuracy"
        self.primary = self.by_key.get(key) or self.by_key[fallback]
        self.arm_axes = [k for k in self.axes if k != SEED and not (self.select and k == LR)]
        self.arms: dict[tuple, list[dict]] = {}
        for r in self.done:
            self.arms.setdefault(tuple(r["cell"][k] for k in self.arm_axes), []).append(r)

    def final_step(self, run: dict) -> int | None:
        return run["outcomes"].get("final_step")

    def _frontier_curves(self) -> tuple[dict[str, list[tuple[int, float, float]]], str | None]:
        """({run: [(step, KL, reward)] in step order}, why not) where every done run judged reward and KL at two
        or more evaluations (else {} and the reason)."""
        out = {}
        for r in self.done:
            pts = [
                (s, m["eval/kl"], m["eval/reward"])
                for s, m in sorted(self.metrics.get(r["run"], {}).items())
                if m.get("eval/kl") is not None and m.get("eval/reward") is not None
            ]
            if len(pts) < 2:
                return {}, f"{r['run']} judged reward and KL at {len(pts)} evaluation(s); a frontier needs two or more"
            out[r["run"]] = pts
        return out, None if out else "no run judged reward and KL"

    def at_kl(self, run: dict, level: float) -> tuple[int, int, float] | None:
        """Where a run's trajectory first reaches KL = ``level``: (step before, step after, weight of the after)."""
        pts = self.curves.get(run["run"], [])
        for (s0, k0, _), (s1, k1, _) in zip(pts, pts[1:]):
            if k0 <= level <= k1 and k1 > k0:
                return s0, s1, (level - k0) / (k1 - k0)
            if k0 >= level:
                return s0, s0, 0.0
        return None

    def unit_table(self, runs: list[dict], o: Outcome):
        """(seeds, {unit: [value per seed]}, {unit: cluster}) at each run's final evaluation, over the units every
        run has; None where the outcome is not a mean over units."""
        if o.source not in ("pairs", "behaviour", "frontier"):
            return None
        per_run = []
        for r in runs:
            by_step = self.units.get((r["run"], "behaviour" if o.source == "frontier" else o.source), {})
            if not by_step:
                return None

            def values_at(step, by_step=by_step):
                return {
                    u["unit"]: (u.get(o.column), u["cluster"])
                    for u in by_step.get(step, [])
                    if (o.kind is None or u["kind"] == o.kind) and u.get(o.column) is not None
                }

            if o.source == "frontier":  # each prompt's value interpolated where the run reaches the KL level
                where = self.at_kl(r, self.kl_levels[int(o.key.rsplit("_", 1)[1])])
                if where is None:
                    return None
                s0, s1, w = where
                a, b = values_at(s0), values_at(s1)
                values = {u: ((1 - w) * a[u][0] + w * b[u][0], a[u][1]) for u in a if u in b}
            else:
                values = values_at(max(by_step))
            per_run.append(values)
        common = set.intersection(*(set(v) for v in per_run)) if per_run else set()
        units = sorted(common)
        return (
            [r["cell"].get(SEED, "0") for r in runs],
            {u: [v[u][0] for v in per_run] for u in units},
            {u: per_run[0][u][1] for u in units},
        )

    def arm_interval(self, runs: list[dict], o: Outcome) -> dict:
        table = self.unit_table(runs, o)
        if table is not None and table[1]:
            _, values, clusters = table
            units = list(values)
            Y = [[values[u][s] for u in units] for s in range(len(runs))]
            return {**G.two_way(Y, [clusters[u] for u in units]), "method": "two-way"}
        if o.source == "speed":
            times = [r["outcomes"].get(o.key) for r in runs]
            reached = [r["outcomes"].get(o.key + "_reached", False) for r in runs]
            keep = [(t, x) for t, x in zip(times, reached) if t is not None and math.isfinite(t)]
            return {**G.restricted_mean([t for t, _ in keep], [x for _, x in keep]), "method": "censored"}
        ci = S.t_interval([r["outcomes"].get(o.key) for r in runs])
        return {**ci, "method": "seeds"}

    def difference(self, a_runs: list[dict], b_runs: list[dict], o: Outcome) -> dict:
        """a − b over the seeds both arms have: two-way over units where the outcome is a mean over units, else
        over seeds (t), with the exact sign-flip p over seeds."""
        a = {r["cell"].get(SEED, "0"): r for r in a_runs}
        b = {r["cell"].get(SEED, "0"): r for r in b_runs}
        seeds = [s for s in a if s in b]
        if not seeds:
            return {"mean": float("nan"), "n": 0}
        ta = self.unit_table([a[s] for s in seeds], o)
        tb = self.unit_table([b[s] for s in seeds], o)
        if ta is not None and tb is not None and ta[1] and tb[1]:
            units = [u for u in ta[1] if u in tb[1]]
            D = [[ta[1][u][i] - tb[1][u][i] for u in units] for i in range(len(seeds))]
            res = G.two_way(D, [ta[2][u] for u in units])
            per_seed = [sum(row) / len(row) for row in D]
            return {
                **res,
                "n": len(seeds),
                "per_seed": per_seed,
                "sign_p": G.sign_flip_p(per_seed),
                "method": "two-way",
                "wins": sum(d > 0 for d in per_seed),
            }
        va = [a[s]["outcomes"].get(o.key) for s in seeds]
        vb = [b[s]["outcomes"].get(o.key) for s in seeds]
        diffs = [
            x - y for x, y in zip(va, vb) if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
        ]
        if not diffs:
            return {"mean": float("nan"), "n": 0}
        ci = S.t_interval(diffs)
        p = (
            G.t_p_value(ci["mean"] / ci["se"], len(diffs) - 1)
            if ci.get("se") and ci["se"] > 0
            else (1.0 if ci["mean"] == 0 else float("nan"))
        )
        out = {
            **ci,
            "p": p,
            "df": len(diffs) - 1,
            "per_seed": diffs,
            "sign_p": G.sign_flip_p(diffs),
            "method": "seeds",
            "wins": sum(d > 0 for d in diffs),
        }
        if o.source == "speed":
            ra = [a[s]["outcomes"].get(o.key + "_reached") for s in seeds]
            rb = [b[s]["outcomes"].get(o.key + "_reached") for s in seeds]
            out["censored"] = sum(not x for x in ra) + sum(not x for x in rb)
        return out

    def comparisons(self) -> list[tuple[str, list[dict], list[dict], tuple[str, str]]]:
        """Along each arm axis, its first value against each other one, at every setting of the other axes."""
        out = []
        for position, axis in enumerate(self.arm_axes):
            values = list(dict.fromkeys(arm[position] for arm in self.arms))
            for base in [arm for arm in self.arms if arm[position] == values[0]]:
                for other in [
                    arm
                    for arm in self.arms
                    if arm[position] != values[0]
                    and all(arm[i] == base[i] for i in range(len(self.arm_axes)) if i != position)
                ]:
                    rest = [f"{_short(k)}={base[i]}" for i, k in enumerate(self.arm_axes) if i != position]
                    names = (f"{_short(axis)}={base[position]}", f"{_short(axis)}={other[position]}")
                    who = f"{names[0]} − {names[1]}" + (f" (at {', '.join(rest)})" if rest else "")
                    out.append((who, self.arms[base], self.arms[other], names))
        return out


def _float_or_none(x):
    return None if x is None or x == "null" else float(x)


# ------------------------------------------------------------------------------------------------ the summary
def summarize(root: Path) -> Path:
    """outcomes.csv, summary.md and ablation.png from the tables of ``root`` (nothing else is read)."""
    g = Grid(load_tables(root))
    _write_outcomes_csv(root / "outcomes.csv", g)
    lines = [f"# Ablation: {root.name}", ""]
    lines += _header(g)
    if g.arms:
        lines += _primary_section(g)
        lines += _frontier_section(g)
        lines += _secondary_section(g)
        lines += _speed_section(g)
        lines += _descriptive_section(g)
        lines += _mc_section(g)
        lines += _seed_only_section(g)
    lines += _status_lines(g)
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    plot_curves(root / "ablation.png", g)
    if g.curves and g.arms:
        plot_frontier(root / "frontier.png", g)
    return root / "summary.md"


def _header(g: Grid) -> list[str]:
    lines = []
    grid = g.grid
    axes = ", ".join(f"{_short(k)} ∈ {{{', '.join(v)}}}" for k, v in g.axes.items())
    lines += [
        f"**Grid**: recipe `{grid['recipe']}`, {axes}; overrides: "
        f"{', '.join(f'`{x}`' for x in grid.get('overrides', [])) or 'none'}."
    ]
    legacy = [r["run"] for r in g.done if r.get("legacy")]
    evaluators = [r for r in g.done if r.get("evaluator") is not None]
    comparable = not legacy
    if legacy:
        lines += [
            "",
            f"**Not comparable**: {len(legacy)} run(s) were scored by their own training estimator "
            f"(written before evaluation settings existed: {', '.join(legacy[:4])}). Train them again.",
            "",
        ]
    if evaluators:
        ref = evaluators[0]
        for r in evaluators[1:]:
            diff = differing_keys(ref["evaluator"], r["evaluator"])
            if diff:
                comparable = False
                lines += [
                    "",
                    f"**Not comparable**: `{r['run']}` is scored differently from `{ref['run']}` "
                    f"({', '.join(diff[:6])}).",
                    "",
                ]
        n_pairs = ref.get("outcomes", {}).get("examples")
        lines += [
            f"**Evaluator of every held-out column**: {ref['evaluator_text']}; "
            f"{int(n_pairs) if n_pairs else '?'} pairs."
        ]
        if ref.get("behaviour_text"):
            lines += [f"**Behaviour columns**: {ref['behaviour_text']}."]
    g.comparable = comparable
    if g.primary_missing:
        lines += [
            f"**The declared primary outcome `{g.primary_missing}` could not be computed** from these runs "
            f"({g.frontier_reason or 'not measured'}); reported first instead: {g.primary.label}."
        ]
    lines += [
        f"**Primary outcome** (declared in grid.json before the runs): {g.primary.label}.",
        "**Intervals**: 95%. For outcomes that are means over held-out units (pairs, or behaviour prompts): "
        "two-way, over seeds and over held-out units clustered by task (method-of-moments variance of the "
        "seeds x units table, Student-t with Satterthwaite's df; `align.grid_stats.two_way`); the evaluator's "
        "Monte Carlo error is part of each unit's value and enters through the spread between units (every "
        "run uses the same masks for a unit). Paired differences: the same on the difference table (same "
        "seeds, same units). p: two-sided, of no difference; 'sign-flip p': exact, over the per-seed mean "
        "differences (all sign patterns; with 5 seeds it cannot go below 0.0625).",
        "",
    ]
    if g.select:
        lines += _selection_lines(g)
    return lines


def _selection_lines(g: Grid) -> list[str]:
    sel = g.grid.get("selection") or {}
    if not sel:
        return [f"**Learning rate**: grid.select={g.select}, but no selection record was found.", ""]
    label = g.by_key[sel["outcome"]].label if sel.get("outcome") in g.by_key else sel.get("outcome_label")
    lines = [
        f"## Learning rate per arm (grid.select={g.select})",
        "",
        f"Chosen on the validation split ({sel.get('validation')}), by the mean {label} over "
        f"{len(sel.get('seeds', []))} selection seed(s) ({', '.join(sel.get('seeds', []))}); the reported "
        f"seeds below were not used to choose, and the reported held-out data was not read.",
        "",
        "| arm | " + " | ".join(f"lr={lr}" for lr in sel.get("learning_rates", [])) + " | chosen |",
        "|---|" + "---|" * (len(sel.get("learning_rates", [])) + 1),
    ]
    for row in sel.get("arms", []):
        cells = [
            ("—" if row["scores"].get(lr) is None else f"{row['scores'][lr]:.3f}")
            for lr in sel.get("learning_rates", [])
        ]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {row['chosen']} |")
    return lines + [""]


def _primary_section(g: Grid) -> list[str]:
    o = g.primary
    lines = [f"## Primary outcome: {o.label}", ""]
    for arm, rs in g.arms.items():
        ci = g.arm_interval(rs, o)
        lines.append(f"- {arm_label(arm, g.arm_axes)}: {fmt_ci(ci, o.fmt)} ({_basis(ci)})")
    lines.append("")
    for who, a, b, names in g.comparisons():
        d = g.difference(a, b, o)
        if not d.get("n"):
            continue
        hb = names if o.higher_is_better else names
        words = G.verdict(d, margin=g.equivalence, names=hb)
        lines.append(
            f"- **{who}: {fmt_ci(d, o.fmt, signed=True)}**, p = {fmt_p(d.get('p'))} ({_basis(d)}); "
            f"sign-flip p over {d['n']} seeds = {fmt_p(d.get('sign_p'))} ({d.get('wins', 0)} of {d['n']} "
            f"seeds larger): {words}."
        )
    if g.equivalence is not None:
        lines += ["", f"Equivalence margin for the primary outcome: ±{g.equivalence:g} (grid.equivalence)."]
    return lines + [""]


def _frontier_section(g: Grid) -> list[str]:
    """The reward–KL frontier: reward of the policy's own samples against its KL from the reference, per run along
    training (frontier.png); per arm the reward at matched KL levels and the best reward within the KL budget."""
    if g.curves and not g.frontier:
        return [
            "## Reward–KL frontier",
            "",
            f"Reward ({g.reward_source or 'eval/reward'}) against KL(policy ‖ reference) on the policy's own samples "
            "at every judged evaluation of every run: `frontier.png`. No matched KL levels: "
            f"{g.frontier_reason}. A KL estimate is a coupled difference of likelihood bounds with Monte Carlo "
            "error (behaviour.kl_samples); a run that barely leaves its reference can measure it at or below 0.",
            "",
        ]
    if not g.frontier:
        return []
    levels = [g.by_key[f"reward_at_kl_{i}"] for i in range(len(g.kl_levels))]
    lines = [
        "## Reward–KL frontier",
        "",
        "The ground-truth reward of each policy's own samples (correct behaviour on the held-out prompts) "
        "against KL(policy ‖ reference) on the same samples (a coupled difference of likelihood bounds), at "
        "every judged evaluation of every run: `frontier.png`. An arm is better if its frontier lies above. "
        f"Matched KL levels: ¼, ½ and ¾ of {g.kl_max:.3g} nats, the largest KL every run reaches; a run's "
        "reward there is interpolated along its trajectory between the two evaluations around the level "
        "(per prompt, so the two-way interval applies). Best reward within the budget: the highest judged "
        "reward at KL ≤ that level (over seeds only; an optimistic pick along each run, descriptive).",
        "",
        "| arm | " + " | ".join(o.label for o in levels) + " | best reward within the KL budget |",
        "|---|" + "---|" * (len(levels) + 1),
    ]
    for arm, rs in g.arms.items():
        best = S.t_interval([r["outcomes"].get("best_reward_within_kl") for r in rs])
        lines.append(
            f"| {arm_label(arm, g.arm_axes)} | "
            + " | ".join(fmt_ci(g.arm_interval(rs, o), o.fmt) for o in levels)
            + f" | {fmt_ci(best)} |"
        )
    return lines + [""]


def _basis(ci: dict) -> str:
    if ci.get("method") == "two-way":
        df = ci.get("df", float("nan"))
        return (
            f"{ci['seeds']} seeds x {ci['units']} units in {ci['clusters']} clusters, df {df:.1f}"
            if math.isfinite(df)
            else f"{ci['seeds']} seeds x {ci['units']} units"
        )
    if ci.get("method") == "censored":
        return f"{ci['n']} seeds, {ci['censored']} censored"
    return f"{ci.get('n', 0)} seeds, over seeds only"


def _tested(g: Grid) -> list[Outcome]:
    return [o for o in g.outcomes if o.role == "tested" and o.key != g.primary.key and o.source != "speed"]


def _secondary_section(g: Grid) -> list[str]:
    tested = _tested(g)
    if not tested:
        return []
    lines = [
        "## Secondary outcomes",
        "",
        f"Each comparison's {len(tested) + sum(o.source == 'speed' and o.role == 'tested' for o in g.outcomes)} "
        "secondary tests (these and the learning-speed test below) are adjusted together by Holm's method "
        "(family-wise error 0.05); 'Holm p' is the adjusted p-value.",
        "",
        "| arm | " + " | ".join(o.label for o in tested) + " |",
        "|---|" + "---|" * len(tested),
    ]
    for arm, rs in g.arms.items():
        lines.append(
            f"| {arm_label(arm, g.arm_axes)} | "
            + " | ".join(fmt_ci(g.arm_interval(rs, o), o.fmt) for o in tested)
            + " |"
        )
    for who, a, b, names in g.comparisons():
        family = tested + [o for o in g.outcomes if o.source == "speed" and o.role == "tested"]
        diffs = [g.difference(a, b, o) for o in family]
        adjusted = G.holm([d.get("p", float("nan")) if d.get("n") else float("nan") for d in diffs])
        g.holm_cache = getattr(g, "holm_cache", {})
        lines += [
            "",
            f"**{who}**",
            "",
            "| outcome | difference [95% CI] | p | Holm p | sign-flip p | verdict (Holm) |",
            "|---|---|---|---|---|---|",
        ]
        for o, d, adj in zip(family, diffs, adjusted):
            g.holm_cache[(who, o.key)] = adj
            if o.source == "speed" or not d.get("n"):
                continue
            words = G.verdict(d, p=adj, names=names)
            lines.append(
                f"| {o.label} | {fmt_ci(d, o.fmt, signed=True)} | {fmt_p(d.get('p'))} | {fmt_p(adj)} | "
                f"{fmt_p(d.get('sign_p'))} | {words} |"
            )
    return lines + [""]


def _speed_section(g: Grid) -> list[str]:
    speed = [o for o in g.outcomes if o.source == "speed"]
    if not speed:
        return []
    eval_steps = sorted({r.get("eval_steps") for r in g.done if r.get("eval_steps")})
    lines = [
        "## Learning speed",
        "",
        f"Evaluations every {', '.join(map(str, eval_steps)) or '?'} steps. The step where a curve first "
        "reaches its target is interpolated linearly between the evaluations around the crossing; a run that "
        "never reaches it is censored at its last evaluation. Per arm: the restricted mean of min(T, last "
        "step) over seeds [95% t-interval] (a lower bound of the mean when any run is censored), the "
        "Kaplan-Meier median, and the censored count. Over seeds only (each curve is a mean over the same "
        "held-out units).",
        "",
        "| arm | " + " | ".join(o.label for o in speed) + " |",
        "|---|" + "---|" * len(speed),
    ]
    for arm, rs in g.arms.items():
        cells = []
        for o in speed:
            ci = g.arm_interval(rs, o)
            median = "not reached" if ci.get("median") is None else f"{ci['median']:.0f}"
            value = (
                f"{ci['mean']:.1f} in every seed" if ci.get("n", 0) > 1 and ci["lo"] == ci["hi"] else fmt_ci(ci, ".1f")
            )
            cells.append(f"{value}, median {median} ({ci['censored']} of {ci['n']} censored)")
        lines.append(f"| {arm_label(arm, g.arm_axes)} | " + " | ".join(cells) + " |")
    for who, a, b, names in g.comparisons():
        for o in speed:
            d = g.difference(a, b, o)
            if not d.get("n"):
                continue
            if d.get("se") == 0 or len(set(round(x, 9) for x in d["per_seed"])) == 1:
                body = (
                    f"{d['per_seed'][0]:+.1f} in every seed (identical: no interval; exact sign-flip p = "
                    f"{fmt_p(d['sign_p'])})"
                )
            else:
                adj = getattr(g, "holm_cache", {}).get((who, o.key))
                tail = f", Holm p {fmt_p(adj)}" if o.role == "tested" and adj is not None else ""
                words = (
                    G.verdict(d, p=adj if adj is not None else d.get("p"), names=names)
                    if o.role == "tested"
                    else "descriptive"
                )
                body = (
                    f"{fmt_ci(d, '.1f', signed=True)}, {d['n']} seeds ({d.get('censored', 0)} censored "
                    f"run(s)), p = {fmt_p(d.get('p'))}{tail}, sign-flip p = {fmt_p(d['sign_p'])}: {words}"
                )
            lines.append(f"- {who}, {o.label}: {body}")
    return [*lines, ""]


def _descriptive_section(g: Grid) -> list[str]:
    desc = [o for o in g.outcomes if o.role == "descriptive" and o.source != "speed"]
    lines = [
        "## Descriptive outcomes (no test: each is a function of an outcome above)",
        "",
        "| arm | seeds | " + " | ".join(o.label for o in desc) + " | policy tokens (mean) | wall s |",
        "|---|---|" + "---|" * (len(desc) + 2),
    ]
    for arm, rs in g.arms.items():
        tokens = S.t_interval([r["outcomes"].get("policy_tokens") for r in rs])
        wall = S.t_interval([r.get("wall_s") for r in rs])
        lines.append(
            f"| {arm_label(arm, g.arm_axes)} | {len(rs)} | "
            + " | ".join(fmt_ci(g.arm_interval(rs, o), o.fmt) for o in desc)
            + f" | {tokens['mean']:.4g} | {fmt_ci(wall, '.0f')} |"
        )
    return lines + [""]


def _mc_section(g: Grid) -> list[str]:
    """The evaluator's own error: how many pairs' signs another mask draw could flip, and the Monte Carlo share of
    the margin's variance."""
    rs = [r for runs in g.arms.values() for r in runs]
    uncertain, mc_var, units = [], [], 0
    for r in rs:
        by_step = g.units.get((r["run"], "pairs"), {})
        if not by_step:
            continue
        rows = by_step[max(by_step)]
        units = len(rows)
        flags = [
            abs(u["margin"]) < 2 * math.sqrt(u["margin/mc_var"])
            for u in rows
            if u.get("margin/mc_var") is not None and u.get("margin") is not None
        ]
        if flags:
            uncertain.append(sum(flags) / len(flags))
            mc_var.append(sum(u["margin/mc_var"] for u in rows if u.get("margin/mc_var") is not None) / len(rows))
    if not uncertain:
        return []
    margin = g.by_key["margin"]
    totals = [g.arm_interval(runs, margin)["se"] for runs in g.arms.values()]
    totals = [t for t in totals if t is not None and math.isfinite(t)]
    mc_se = math.sqrt(sum(mc_var) / len(mc_var) / units) if units else float("nan")
    lines = [
        "## The evaluator's own error",
        "",
        f"Pairs whose final margin is within 2 Monte Carlo SEs of 0 (another mask draw could flip their "
        f"accuracy), mean over runs: {sum(uncertain) / len(uncertain):.3f} of {units}. Monte Carlo SE of one "
        f"run's mean margin: {mc_se:.3f} nats",
    ]
    if totals:
        lines[-1] += (
            f"; the two-way SE of an arm's mean margin (seeds, clusters and Monte Carlo error together): "
            f"{min(totals):.3f}–{max(totals):.3f} nats."
        )
    else:
        lines[-1] += "."
    lines += [
        "The accuracy has no Monte Carlo SE of its own here: the plug-in Φ(mean/SE) is biased (low near 0, "
        "high for |z| ≥ 2 with 4 groups); its Monte Carlo error is part of the per-pair values the intervals "
        "above resample.",
        "",
    ]
    return lines


def _seed_only_section(g: Grid) -> list[str]:
    """The older, narrower interval: over seeds only, conditional on this held-out set and these masks."""
    tested = [g.primary, *_tested(g)]
    lines = [
        "## Over seeds only (secondary, conditional on this held-out set and mask draw)",
        "",
        "Mean over seeds [95% Student-t interval over seeds]: it leaves out held-out sampling and the "
        "evaluator's error, so it is narrower than the intervals above and answers a narrower question.",
        "",
        "| arm | seeds | " + " | ".join(o.label for o in tested) + " |",
        "|---|---|" + "---|" * len(tested),
    ]
    for arm, rs in g.arms.items():
        lines.append(
            f"| {arm_label(arm, g.arm_axes)} | {len(rs)} | "
            + " | ".join(fmt_ci(S.t_interval([r["outcomes"].get(o.key) for r in rs]), o.fmt) for o in tested)
            + " |"
        )
    return lines + [""]


def _status_lines(g: Grid) -> list[str]:
    lines = []
    failed = [(r["run"], r.get("error") or "") for r in g.runs if r["status"] == "failed"]
    pending = [r["run"] for r in g.runs if r["status"] not in ("done", "failed")]
    if failed:
        lines += ["## Failed runs", "", *(f"- `{n}`: {e} (log: `runs/{n}/train.log`)" for n, e in failed), ""]
    if pending:
        lines += [f"## Not run yet ({len(pending)})", "", *(f"- `{n}`" for n in pending), ""]
    return lines


def _write_outcomes_csv(path: Path, g: Grid) -> None:
    keys = [o.key for o in g.outcomes]
    keys += [k + "_reached" for k in ("steps_to_accuracy", "steps_to_margin") if k in keys]
    keys += ["best_reward_within_kl"] if g.frontier else []
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "status", *(_short(k) for k in g.axes), *keys, "policy_tokens", "wall_s"])
        for r in g.runs:
            oc = r.get("outcomes", {})
            w.writerow(
                [
                    r["run"],
                    r["status"],
                    *(r["cell"][k] for k in g.axes),
                    *("" if oc.get(k) is None else oc[k] for k in keys),
                    "" if oc.get("policy_tokens") is None else oc["policy_tokens"],
                    r.get("wall_s") or "",
                ]
            )


PANELS = (
    ("held-out reward accuracy", (("eval/rewards/accuracies", "-"),)),
    ("held-out margin (nats)", (("eval/margin", "-"),)),
    ("held-out log-ratio, chosen (nats)", (("eval/logratio/chosen", "-"),)),
    ("held-out log-ratio, rejected (nats)", (("eval/logratio/rejected", "-"),)),
)
REWARD_PANEL = (
    "reward: correct behaviour (solid), well-formed (dashed)",
    (("eval/reward", "-"), ("eval/well_formed", "--")),
)
REFUSAL_PANEL = (
    "refusal: harmful (solid), borderline (dotted),\neveryday (dashed)",
    (("eval/refusal_rate", "-"), ("eval/borderline_refusal_rate", ":"), ("eval/over_refusal_rate", "--")),
)
SHARES = (
    "eval/rewards/accuracies",
    "eval/refusal_rate",
    "eval/over_refusal_rate",
    "eval/borderline_refusal_rate",
    "eval/reward",
    "eval/well_formed",
)  # bands drawn within [0, 1]


def plot_frontier(path: Path, g: Grid) -> None:
    """Reward against KL from the reference: one line per run along its evaluations (step 0 at KL 0), arms by
    colour, the matched KL levels dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for i, (arm, runs) in enumerate(g.arms.items()):
        for j, r in enumerate(runs):
            pts = g.curves[r["run"]]
            ax.plot(
                [k for _, k, _ in pts],
                [rw for _, _, rw in pts],
                marker="o",
                ms=3,
                lw=1,
                alpha=0.8,
                color=f"C{i}",
                label=f"{arm_label(arm, g.arm_axes)} ({len(runs)} seeds)" if j == 0 else None,
            )
    for lvl in g.kl_levels:
        ax.axvline(lvl, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("KL(policy ‖ reference) on the policy's own answers (nats, coupled bound difference)")
    ax.set_ylabel(f"reward ({g.reward_source or 'correct behaviour'}) on held-out prompts")
    title = "dotted: the matched KL levels" if g.kl_levels else "no matched KL levels (see summary.md)"
    ax.set_title(f"reward–KL frontier: one line per run along training;\n{title}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def plot_curves(path: Path, g: Grid) -> None:
    """Learning curves of the common-evaluator metrics: mean over seeds, band = 95% t-interval over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have = {k for r in g.done for rec in g.metrics.get(r["run"], {}).values() for k in rec}
    reward_panel = (
        (f"reward ({g.reward_source}) (solid),\nwell-formed (dashed)", REWARD_PANEL[1])
        if g.reward_source
        else REWARD_PANEL
    )
    spec = PANELS + tuple(p for p in (reward_panel, REFUSAL_PANEL) if any(k in have for k, _ in p[1]))
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.4))
    for ax in axes.flat[len(spec) :]:
        ax.set_visible(False)
    for (title, curves), ax in zip(spec, axes.flat):
        for key, style in curves:
            for i, (arm, runs) in enumerate(g.arms.items()):
                series = [{s: rec[key] for s, rec in g.metrics.get(r["run"], {}).items() if key in rec} for r in runs]
                steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
                if not steps:
                    continue
                cis = [S.t_interval([s[x] for s in series]) for x in steps]
                label = f"{arm_label(arm, g.arm_axes)} ({len(series)} seeds)" if style == "-" else None
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
    ref = next((r for r in g.done if r.get("evaluator_text")), None)
    title = ref["evaluator_text"] if ref and getattr(g, "comparable", True) else "evaluators differ"
    fig.suptitle(
        f"scored by one evaluator: {title}\nlines: mean over seeds; bands: 95% t-interval over seeds "
        f"(shares clipped to [0, 1])",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
