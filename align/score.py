"""Per-record log-likelihoods of a masked-diffusion LM, with Monte Carlo standard errors (docs/method.md §2).

    python -m align.score model=data/tiny_chat data=data/tiny_sft_test.jsonl
    python -m align.score model=outputs/demo/final reference=data/tiny_chat data=data/demo_safety_test.jsonl \\
        format=pku_saferlhf
    python -m align.score model=data/tiny_chat ood=data/tiny_sft_test.jsonl,data/score_ood_shuffled.jsonl
    python -m align.score --help

What a record holds decides what is scored (``format=auto`` picks from the first record's fields):

- ``response``: ``prompt`` (string or messages; may be absent) and ``response``, or ``text`` alone (all of it
  scored): the estimate of ``log p(response | prompt)``, its standard error, the per-token NLL, the samples spent;
- ``pairs`` (and ``pku_saferlhf``, ``hh_rlhf``, TRL's forms, as in training): ``log p`` of chosen and rejected,
  both EOS-extended to their common length, with shared masks;
- ``choices``: ``prompt`` and ``choices`` (list) with ``label``: each choice EOS-extended to the question's
  longest and scored with the same masks; the prediction is the most likely choice, and the accuracy is
  reported.

Draws come from a generator per record seeded by (``seed``, record index), so a rerun reproduces every
number; ``target_se`` keeps drawing rounds of ``round_samples`` for a record until its standard error is
below the target (or ``max_samples`` are spent). ``reference=MODEL`` scores the reference on the same masks
(the coupled estimator) and reports ``log p_model − log p_reference`` per record with its own standard error
(for pairs: the DPO implicit reward margin, β times the difference of the two log-ratios). ``ood=A,B`` scores
two files and reports how well the per-token NLL separates B from A (AUROC) with a histogram.

The standard error of a record is the sample standard deviation of its per-draw estimates over √n (iid
draws); with ``stratified=true`` each round is one stratified batch, and the error comes from the spread
of round means (needs at least 2 rounds). Several processes (``torchrun`` / ``accelerate launch``): each
rank scores every world-th record; results are gathered in record order on rank 0.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from align import estimators as E
from align.cli import entry_point, exit_process, help_text, overrides, parse_options
from align.config import ConfigError, opt
from align.data import build_scoring_dataset, collate_responses, example_generators, load_records
from align.masking import ESTIMATORS, draw_masks
from align.models import load_model, spec_for, token_scorer, tokenizer_source
from align.models.tokenizer import load_tokenizer


@dataclass
class ScoringSettings:
    """How a log-likelihood is estimated for scoring (``align.score``, lm-eval's ``loglikelihood``): the estimator,
    its draws (a fixed number, or adaptive rounds to a target standard error), batching and seed; one check."""

    estimator: str = opt("time_free", "the mask-draw estimator (docs/method.md §2)", ESTIMATORS)
    n_samples: int = opt(32, "draws per record (without target_se)")
    target_se: float | None = opt(None, "draw rounds until a record's standard error is below this (nats)")
    round_samples: int = opt(8, "draws per record per forward (and per adaptive round)")
    max_samples: int = opt(1024, "cap on a record's draws under target_se")
    stratified: bool = opt(False, "stratified draws within a round (standard errors then from round means)")
    batch_size: int = opt(8, "records per forward (each with round_samples noised copies)")
    seed: int = opt(0, "seeds every record's draws (with the record's index or content, see seed_by)")

    def check_scoring(self) -> None:
        """ConfigError naming the key when the draws cannot be made as asked."""
        for key in ("n_samples", "round_samples", "max_samples", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.target_se is not None and self.target_se <= 0:
            raise ConfigError(f"target_se must be > 0, got {self.target_se}")
        budget = self.max_samples if self.target_se is not None else self.n_samples
        if self.stratified and budget < 2 * self.round_samples:
            raise ConfigError(
                f"stratified=true takes its standard errors from round means: needs at least 2 rounds of "
                f"round_samples={self.round_samples} (n_samples or max_samples >= {2 * self.round_samples})"
            )

    def scoring_settings(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ScoringSettings)}


@dataclass
class ScoreConfig(ScoringSettings):
    model: str = opt("data/tiny_chat", "hub id, directory, tiny:llada, or a training output (final/, checkpoint-N)")
    data: str | None = opt(None, "jsonl/json/parquet/csv file, save_to_disk directory or hub id to score")
    split: str = opt("test", "split of a hub dataset")
    format: str = opt(
        "auto",
        "what a record holds (auto: from the first record's fields)",
        ("auto", "response", "pairs", "pku_saferlhf", "hh_rlhf", "ultrafeedback", "choices"),
    )
    preference: str = opt("safer", "pku_saferlhf: which response is chosen", ("safer", "better"))
    reference: str | None = opt(
        None, "a second model scored on the same masks: per-record log-ratios (pairs: the DPO implicit reward margin)"
    )
    ood: str | None = opt(None, "IN_FILE,OUT_FILE: score both and report the AUROC of per-token NLL with a histogram")
    output_dir: str = opt("outputs/score", "scores.jsonl, scores.csv, summary.json, summary.md (and ood.png)")
    beta: float = opt(0.1, "pairs with a reference: the DPO β of the reported reward margin")
    dtype: str = opt("float32", "model weights", ("float32", "bfloat16", "float16"))
    chat_template: bool = opt(True, "put the prompt through the tokenizer's chat template (false: raw text)")
    max_prompt_length: int = opt(1024, "prompt tokens kept (truncation keeps the end)")
    max_response_length: int = opt(
        1024, "response tokens kept, EOS included (responses are scored EOS-terminated, as trained)"
    )
    over_long_prompt: str = opt("truncate", "prompts longer than max_prompt_length", ("truncate", "skip", "error"))
    on_bad_record: str = opt(
        "error", "malformed/empty/identical records: fail naming the record, or count and skip", ("error", "skip")
    )
    response_eos: bool = opt(
        True,
        "response records: score the response EOS-terminated, as trained (false: the bare "
        "continuation, as lm-eval's log-likelihood requests)",
    )
    seed_by: str = opt(
        "index",
        "what seeds a record's draws with seed: its position in the file, or a hash of its "
        "tokens (the same masks wherever the record is scored: any file, order or lm-eval run)",
        ("index", "content"),
    )
    limit: int | None = opt(None, "score only the first N usable records")
    progress_bar: bool = opt(True, "show a progress bar")
    trust_remote_code: bool = opt(False, "allow checkpoint code for model types align has no native class for")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


USAGE = "python -m align.score model=MODEL data=FILE [key=value ...]"


def parse(argv: list[str]) -> ScoreConfig:
    """Typed, documented keys (``align.cli``); ``--help`` lists them."""
    cfg = parse_options(
        overrides(argv, prog="align.score", help_page=lambda: help_text(ScoreConfig, USAGE)), ScoreConfig
    )
    cfg.check_scoring()
    for key in ("max_prompt_length", "max_response_length"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if (cfg.data is None) == (cfg.ood is None):
        raise ConfigError("give data=FILE (records to score) or ood=IN_FILE,OUT_FILE (two files to tell apart)")
    if cfg.ood is not None and len(cfg.ood.split(",")) != 2:
        raise ConfigError(f"ood: expected IN_FILE,OUT_FILE, got {cfg.ood!r}")
    return cfg


# ---------------------------------------------------------------------------------------------- the estimate
@dataclass
class Running:
    """A record's per-draw estimates so far (one row per scored sequence: a response, or each choice)."""

    values: list  # of [k, n_round] float64 tensors, one per round

    def samples(self) -> torch.Tensor:  # [k, n]
        return torch.cat(self.values, -1)

    def n(self) -> int:
        return sum(v.shape[-1] for v in self.values)


def mean_se(x: torch.Tensor, rounds: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, standard error) over the last axis: iid draws, or (``rounds``: sizes) the spread of round means."""
    x = x.double()
    if rounds is None:
        n = x.shape[-1]
        se = x.std(-1, correction=1) / math.sqrt(n) if n > 1 else torch.full(x.shape[:-1], float("nan"))
        return x.mean(-1), se
    means = torch.stack([c.mean(-1) for c in x.split(rounds, -1)], -1)  # equal-size rounds
    r = means.shape[-1]
    se = means.std(-1, correction=1) / math.sqrt(r) if r > 1 else torch.full(x.shape[:-1], float("nan"))
    return means.mean(-1), se


def score_batch(
    scorers: list,
    ids: torch.Tensor,
    response_mask: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    groups: list[int],
    generators: list[torch.Generator],
    n: int,
    estimator: str,
    stratified: bool,
    mask_token_id: int,
) -> list[torch.Tensor]:
    """One round for a batch: per model, ``[rows, n]`` estimates of log p(response) (float64, on the host).

    ``groups[g]`` rows in a row (a record's chosen/rejected or choices, at one common length) share the draws
    of ``generators[g]``: the same masks for every row of a group and for every model (coupled).
    """
    resp = response_mask.cpu() & attention_mask.cpu().bool()
    first = [sum(groups[:g]) for g in range(len(groups))]
    draw = draw_masks(resp[first], n, estimator, generators, stratified)  # one draw per group
    index = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor(groups))
    shared = E.MaskDraw(draw.masked[index], draw.weight[index])
    shared = E.move_draws({"d": shared}, ids.device)["d"]
    with torch.no_grad():
        return [
            E.estimate_from_draw(s, ids, shared, mask_token_id=mask_token_id, attention_mask=attention_mask)
            .double()
            .cpu()
            for s in scorers
        ]


def run_rounds(
    records: list[dict],
    scorers: list,
    *,
    cfg: ScoreConfig,
    mask_token_id: int,
    pad_token_id: int,
    device,
    progress=None,
) -> list[dict]:
    """Score ``records`` (each ``{"index", "prompt_ids", "responses": [ids, ...]}``, optionally ``"key"``: what seeds
    its draws with ``cfg.seed``, else its index) with every scorer, in rounds.

    Returns per record: ``samples`` [models, k, n] float64 and the round sizes. Without ``target_se`` every
    record gets ``n_samples`` draws; with it, rounds continue for the records whose largest standard error
    (over their scored sequences and, with a reference, their log-ratios) is above the target.
    """
    state = {r["index"]: [Running([]) for _ in scorers] for r in records}
    generators = {
        r["index"]: example_generators(cfg.seed, torch.tensor([r.get("key", r["index"])]), 0)[0] for r in records
    }
    budget = cfg.max_samples if cfg.target_se is not None else cfg.n_samples
    active = list(records)
    while active:
        for s in range(0, len(active), cfg.batch_size):
            chunk = active[s : s + cfg.batch_size]
            n = min(cfg.round_samples, budget - state[chunk[0]["index"]][0].n())
            ids, resp, attn, groups = collate_responses(chunk, pad_token_id)
            results = score_batch(
                scorers,
                ids.to(device),
                resp.to(device),
                attn.to(device),
                groups=groups,
                generators=[generators[r["index"]] for r in chunk],
                n=n,
                estimator=cfg.estimator,
                stratified=cfg.stratified,
                mask_token_id=mask_token_id,
            )
            for m, values in enumerate(results):
                for g, part in enumerate(values.split(groups)):
                    state[chunk[g]["index"]][m].values.append(part)
        done = []
        for r in active:
            runs = state[r["index"]]
            spent = runs[0].n()
            if spent >= budget or (cfg.target_se is not None and _worst_se(runs, cfg) <= cfg.target_se):
                done.append(r["index"])
        if progress is not None:
            progress.update(len(done))
        active = [r for r in active if r["index"] not in done]
    return [
        {
            "index": r["index"],
            "samples": torch.stack([run.samples() for run in state[r["index"]]]),
            "rounds": [v.shape[-1] for v in state[r["index"]][0].values],
        }
        for r in records
    ]


def _worst_se(runs: list[Running], cfg: ScoreConfig) -> float:
    rounds = [v.shape[-1] for v in runs[0].values] if cfg.stratified else None
    ses = [mean_se(run.samples(), rounds)[1] for run in runs]
    if len(runs) == 2:  # the log-ratio is what a reference comparison reports
        ses.append(mean_se(runs[0].samples() - runs[1].samples(), rounds)[1])
    worst = torch.stack([s.max() for s in ses]).max().item()
    return float("inf") if math.isnan(worst) else worst


# ---------------------------------------------------------------------------------------------- reports
def record_rows(
    mode: str, records: list[dict], scored: list[dict], cfg: ScoreConfig, has_reference: bool
) -> list[dict]:
    out = []
    for rec, res in zip(records, scored):
        rounds = res["rounds"] if cfg.stratified else None
        x = res["samples"]  # [models, k, n]
        mean, se = mean_se(x, rounds)  # [models, k]
        L = [len(r) for r in rec["responses"]]
        row = {"index": rec["index"], "n_samples": x.shape[-1]}
        names = {"response": ["response"], "pairs": ["chosen", "rejected"]}.get(mode) or [
            f"choice{j}" for j in range(len(L))
        ]
        for j, name in enumerate(names):
            row[f"logp_{name}"] = mean[0, j].item()
            row[f"se_{name}"] = se[0, j].item()
            row[f"nll_per_token_{name}"] = -mean[0, j].item() / L[j]
            row[f"tokens_{name}"] = L[j]
            if has_reference:
                ratio_mean, ratio_se = mean_se(x[0, j] - x[1, j], rounds)
                row[f"logp_reference_{name}"] = mean[1, j].item()
                row[f"logratio_{name}"] = ratio_mean.item()
                row[f"se_logratio_{name}"] = ratio_se.item()
        if mode == "pairs":
            diff = x[:, 0] - x[:, 1]  # [models, n]: log p(chosen) − log p(rejected), per draw
            d_mean, d_se = mean_se(diff, rounds)
            row["logp_margin"], row["se_logp_margin"] = d_mean[0].item(), d_se[0].item()
            if has_reference:
                margin = diff[0] - diff[1]  # Δ per draw: coupled in every term
                m_mean, m_se = mean_se(margin, rounds)
                row["margin"], row["se_margin"] = m_mean.item(), m_se.item()
                row["reward_margin"] = cfg.beta * m_mean.item()
        if mode == "choices":
            row["label"] = rec["label"]
            row["prediction"] = int(mean[0].argmax())
            row["correct"] = row["prediction"] == rec["label"]
        out.append(row)
    return out


def summarize(mode: str, rows: list[dict], has_reference: bool) -> dict:
    def avg(key):
        vals = [r[key] for r in rows if key in r and not math.isnan(r[key])]
        return sum(vals) / len(vals) if vals else float("nan")

    s = {"records": len(rows), "mode": mode, "mean_samples": avg("n_samples")}
    names = {"response": ["response"], "pairs": ["chosen", "rejected"]}.get(mode, [])
    for name in names:
        s[f"mean_logp_{name}"] = avg(f"logp_{name}")
        s[f"mean_se_{name}"] = avg(f"se_{name}")
        s[f"mean_nll_per_token_{name}"] = avg(f"nll_per_token_{name}")
        if has_reference:
            s[f"mean_logratio_{name}"] = avg(f"logratio_{name}")
            s[f"mean_se_logratio_{name}"] = avg(f"se_logratio_{name}")
    if mode == "pairs":
        s["model_prefers_chosen"] = sum(r["logp_margin"] > 0 for r in rows) / len(rows)
        if has_reference:
            s["mean_margin"] = avg("margin")
            s["mean_se_margin"] = avg("se_margin")
            s["mean_reward_margin"] = avg("reward_margin")
            s["reward_accuracy"] = sum(r["margin"] > 0 for r in rows) / len(rows)
    if mode == "choices":
        s["accuracy"] = sum(r["correct"] for r in rows) / len(rows)
    return s


def auroc(negatives: list[float], positives: list[float]) -> float:
    """P(a positive scores above a negative) + ½ P(tie): the area under the ROC curve (Mann-Whitney)."""
    wins = sum((p > q) + 0.5 * (p == q) for p in positives for q in negatives)
    return wins / (len(positives) * len(negatives))


def plot_ood(path: Path, a: list[float], b: list[float], names: tuple[str, str], value: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    lo, hi = min(a + b), max(a + b)
    bins = torch.linspace(lo, hi + 1e-9, 31).tolist()
    ax.hist(a, bins=bins, alpha=0.6, label=f"{names[0]} (in, {len(a)})")
    ax.hist(b, bins=bins, alpha=0.6, label=f"{names[1]} (out, {len(b)})")
    ax.set_xlabel("per-token NLL (nats), masked-diffusion bound")
    ax.set_ylabel("records")
    ax.set_title(f"OOD check: AUROC {value:.3f}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def _load(name: str, cfg: ScoreConfig, device):
    model = load_model(name, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code).to(device).eval()
    return model, token_scorer(model)


def score_file(path: str, cfg: ScoreConfig, models: list, tokenizer, spec, device, state) -> tuple[str, list[dict]]:
    """(mode, one row of results per record) for the records of ``path``, encoded as training encodes them
    (``align.data.encoding``, with the bad-record policy of ``on_bad_record`` / ``over_long_prompt``)."""
    rows, source = load_records(path, cfg.split)
    mode, records, report = build_scoring_dataset(
        rows,
        source,
        tokenizer,
        fmt=cfg.format,
        preference=cfg.preference,
        eos_token_id=spec.eos_token_id,
        max_prompt_length=cfg.max_prompt_length,
        max_response_length=cfg.max_response_length,
        over_long_prompt=cfg.over_long_prompt,
        on_bad_record=cfg.on_bad_record,
        chat_template=cfg.chat_template,
        limit=cfg.limit,
        response_eos=cfg.response_eos,
        seed_by=cfg.seed_by,
    )
    if state.is_main_process:
        print(report.summary())
    if not records:
        raise ConfigError(f"{source}: no record to score ({report.summary()})")
    mine = records[state.process_index :: state.num_processes]
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(mine), desc=f"scoring {Path(path).name}", disable=not (cfg.progress_bar and state.is_main_process)
    )
    scored = run_rounds(
        mine,
        [s for _, s in models],
        cfg=cfg,
        mask_token_id=spec.mask_token_id,
        pad_token_id=spec.pad_token_id,
        device=device,
        progress=bar,
    )
    bar.close()
    rows_out = record_rows(mode, mine, scored, cfg, has_reference=len(models) == 2)
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        rows_out = gather_object(rows_out)
    rows_out.sort(key=lambda r: r["index"])
    return mode, rows_out


def write_rows(out: Path, name: str, rows: list[dict]) -> None:
    import csv

    with open(out / f"{name}.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    state = _score(sys.argv[1:] if argv is None else argv)
    if state is not None and state.num_processes > 1:
        state.wait_for_everyone()
        torch.distributed.destroy_process_group()
        exit_process(0, distributed=True)  # without C++ static destructors, where gloo occasionally aborts


def _score(argv: list[str]):
    """Score as configured; returns the process state (for the multi-process exit)."""
    with entry_point():
        cfg = parse(argv)
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        device = state.device
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != state.num_processes:
            raise RuntimeError(
                f"launcher started {launched} processes but accelerate sees {state.num_processes}; "
                f"every rank would score everything"
            )

        tokenizer = load_tokenizer(tokenizer_source(cfg.model), trust_remote_code=cfg.trust_remote_code)
        models = [_load(cfg.model, cfg, device)]
        if cfg.reference:
            models.append(_load(cfg.reference, cfg, device))
        spec = spec_for(models[0][0])
        out = Path(cfg.output_dir)
        if cfg.ood:
            files = cfg.ood.split(",")
            results = [score_file(f, cfg, models, tokenizer, spec, device, state) for f in files]
        else:
            results = [score_file(cfg.data, cfg, models, tokenizer, spec, device, state)]
    if not state.is_main_process:
        return state
    out.mkdir(parents=True, exist_ok=True)
    has_ref = len(models) == 2
    summary = {"config": cfg.to_dict()}
    if cfg.ood:
        nll = []
        for (mode, rows), path, name in zip(results, files, ("in", "out")):
            write_rows(out, f"scores_{name}", rows)
            key = "nll_per_token_response" if mode == "response" else "nll_per_token_chosen"
            nll.append([r[key] for r in rows])
            summary[f"{name}: {path}"] = summarize(mode, rows, has_ref)
        value = auroc(nll[0], nll[1])
        summary["auroc"] = value
        plot_ood(out / "ood.png", nll[0], nll[1], (Path(files[0]).name, Path(files[1]).name), value)
        lines = [
            f"OOD check, {cfg.model}: per-token NLL of {files[1]} (out) against {files[0]} (in)",
            f"AUROC {value:.3f}; mean per-token NLL in {sum(nll[0]) / len(nll[0]):.3f}, out "
            f"{sum(nll[1]) / len(nll[1]):.3f} nats ({len(nll[0])} and {len(nll[1])} records)",
        ]
    else:
        mode, rows = results[0]
        write_rows(out, "scores", rows)
        summary.update(summarize(mode, rows, has_ref))
        lines = [
            f"{cfg.model} on {cfg.data}: {len(rows)} records ({mode}), {cfg.estimator}, "
            f"mean {summary['mean_samples']:.1f} samples per record"
        ]
        lines += [
            f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}"
            for k, v in summary.items()
            if k not in ("config", "records", "mode", "mean_samples")
        ]
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "summary.md").write_text("\n\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written to {out}")
    return state


if __name__ == "__main__":
    main()
