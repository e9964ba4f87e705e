"""What a trained output says about itself, and where it goes: the model card (``README.md`` in the Hub's format:
YAML front matter, then how the model was trained, what it scored and how to use it) that every ``final/`` and every
merged save gets, and the upload of ``final/`` to the Hub on request (``train.push_to_hub``).

The card is written from the run's own record: its resolved ``config.yaml`` (copied beside the weights as
``training_config.yaml`` and linked from the card) and ``metrics.jsonl`` (the last held-out evaluation, and the
behaviour rates before and after training when the run judged them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

# Licences of the published base checkpoints (from their model cards); a local base's own card is read instead.
KNOWN_LICENSES = {
    "GSAI-ML/LLaDA-8B-Instruct": "mit",
    "GSAI-ML/LLaDA-8B-Base": "mit",
    "GSAI-ML/LLaDA-1.5": "mit",
    "Dream-org/Dream-v0-Instruct-7B": "apache-2.0",
    "Dream-org/Dream-v0-Base-7B": "apache-2.0",
}
CONFIG_NAME = "training_config.yaml"


def base_license(base: str) -> str | None:
    """The base model's licence: its local card's front matter, else the published checkpoints' table."""
    card = Path(base) / "README.md"
    if card.is_file():
        from huggingface_hub import ModelCard

        try:
            return ModelCard.load(card).data.to_dict().get("license")
        except Exception:  # a README that is not a model card
            return None
    return KNOWN_LICENSES.get(base)


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not Path(name).exists() and not name.startswith((".", "/", "tiny:"))


def _evaluations(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if any(k.startswith("eval/") for k in r)]


def training_summary(cfg: dict, kind: str) -> list[str]:
    """How it was trained, in lines of Markdown, from the resolved config (a dict of config.yaml)."""
    model, lora, train, data = cfg["model"], cfg.get("lora", {}), cfg["train"], cfg["data"]
    lines = []
    if kind == "dpo":
        loss, est, ev = cfg["loss"], cfg["estimator"], cfg["eval"]
        lines += [
            f"- **Objective**: DPO ({loss['loss_type']} loss, β = {loss['beta']}"
            + (f", label smoothing {loss['label_smoothing']}" if loss.get("label_smoothing") else "")
            + (f", RPO NLL weight {loss['rpo_alpha']}" if loss.get("rpo_alpha") is not None else "")
            + ") on "
            "log-likelihoods estimated by Monte Carlo over random masks (the masked-diffusion bound)",
            f"- **Training estimator**: {_estimator(est)}",
            f"- **Evaluator** (held-out metrics below): {_estimator(ev)}, seed {ev['seed']}",
        ]
    elif kind == "online_dpo":
        loss, est, o = cfg["loss"], cfg["estimator"], cfg["online"]
        judge = o["judge"] or (
            f"pairwise {o['pairwise_judge']}" if o["pairwise_judge"] else f"reward model {o['reward_model']}"
        )
        lines += [
            f"- **Objective**: online DPO ({loss['loss_type']} loss, β = {loss['beta']}): each step the "
            f"policy samples {o['num_generations']} answers per prompt (LLaDA's sampler, {o['steps']} steps, "
            f"{o['gen_length']} tokens, temperature {o['temperature']}), `{judge}` ranks them, and the best "
            "and worst form the pair",
            f"- **Training estimator**: {_estimator(est)}",
        ]
    else:
        s = cfg["sft"]
        lines += [
            f"- **Objective**: supervised fine-tuning with the masked-diffusion loss ({s['estimator']}, "
            f"{s['n_samples']} mask draw(s) per sequence)"
        ]
    lines.append(
        "- **Parameters**: "
        + (
            f"LoRA r = {lora['r']}, α = {lora['alpha']}, dropout {lora['dropout']} (the adapter is in `adapter/`)"
            if lora.get("enabled")
            else "full fine-tuning"
        )
    )
    steps = train["max_steps"] if train["max_steps"] > 0 else f"{train['num_train_epochs']} epoch(s)"
    lines += [
        f"- **Optimisation**: {steps} steps of {train['per_device_train_batch_size']} per device × "
        f"{train['gradient_accumulation_steps']} accumulation, learning rate {train['learning_rate']} "
        f"({train['lr_scheduler_type']}, warm-up {train['warmup_ratio']}), weights {model['dtype']}",
        f"- **Data**: `{data['dataset']}` (format {data['format']}"
        + (f", eval `{data['eval_dataset']}`" if data.get("eval_dataset") else "")
        + ")",
        f"- **Seeds**: train.seed {train['seed']}" + (f", eval.seed {cfg['eval']['seed']}" if kind == "dpo" else ""),
        f"- **Full configuration**: [{CONFIG_NAME}]({CONFIG_NAME})",
    ]
    return lines


def _estimator(est: dict) -> str:
    shares = (est["share_policy_reference"], est["share_chosen_rejected"])
    if est.get("coupling"):
        shares = (est["coupling"] == "coupled",) * 2
    sharing = {
        (True, True): "coupled",
        (False, False): "decoupled",
        (True, False): "policy/reference-shared masks",
        (False, True): "chosen/rejected-shared masks",
    }[shares]
    return f"{sharing} `{est['estimator']}`, {est['n_samples']} draws per term" + (
        ", stratified" if est.get("stratified") else ""
    )


def results_table(evaluations: list[dict]) -> list[str]:
    """The last evaluation's metrics with their Monte Carlo standard errors (and the behaviour rates before/after,
    when the run judged them) as Markdown tables."""
    if not evaluations:
        return ["No held-out evaluation was run (train.do_eval=false)."]
    first, last = evaluations[0], evaluations[-1]
    lines = [
        f"Held-out evaluation at step {last['step']} ({int(last.get('eval/examples', 0))} examples; the "
        "standard error is the Monte Carlo error of the evaluator's mask draws):",
        "",
        "| metric | value | s.e. |",
        "|---|---|---|",
    ]
    for key, value in last.items():
        name = key[5:]
        if not key.startswith("eval/") or key == "eval/examples" or name.endswith(("/mc_se", "/se")):
            continue
        se = last.get(f"{key}/mc_se", last.get(f"{key}/se"))
        lines.append(f"| {name} | {value:.4g} | {'' if se is None else f'{se:.2g}'} |")
    judged = [
        k
        for k in (
            "eval/reward",
            "eval/well_formed",
            "eval/refusal_rate",
            "eval/borderline_refusal_rate",
            "eval/over_refusal_rate",
        )
        if k in last and k in first
    ]
    if judged and first["step"] != last["step"]:
        lines += [
            "",
            f"Behaviour on held-out prompts (answers sampled and judged: refusal by the opening words; "
            f"reward = the right behaviour in well-formed sentences, where the prompts carry task ids), step "
            f"{first['step']} → step {last['step']}:",
            "",
            "| rate | before | after |",
            "|---|---|---|",
        ]
        lines += [f"| {k[5:]} | {first[k]:.3f} | {last[k]:.3f} |" for k in judged]
    return lines


def card_text(*, base: str, cfg: dict, evaluations: list[dict], merged: bool = False, family: str | None = None) -> str:
    """The card's Markdown, front matter included, from a run's resolved config and its evaluations."""
    from huggingface_hub import ModelCardData

    kind = "sft" if "sft" in cfg else "online_dpo" if "online" in cfg else "dpo"
    datasets = [
        d for d in (cfg.get("data", {}).get("dataset"), cfg.get("data", {}).get("eval_dataset")) if d and _is_hub_id(d)
    ]
    data = ModelCardData(
        base_model=base if _is_hub_id(base) else None,
        library_name="transformers",
        tags=["align", kind, "masked-diffusion", "diffusion-language-model"]
        + (["lora"] if cfg.get("lora", {}).get("enabled") and not merged else []),
        datasets=datasets or None,
        license=base_license(base),
        pipeline_tag="text-generation",
    )
    family = {"llada": "LLaDA", "Dream": "Dream"}.get(family, family or "masked-diffusion")
    name = {"dpo": "DPO", "sft": "SFT", "online_dpo": "Online DPO"}[kind]
    how = {
        "dpo": "DPO on preference pairs",
        "sft": "supervised fine-tuning",
        "online_dpo": "online DPO on its own samples, ranked by a judge",
    }[kind]
    body = [
        f"# {name} of {base}",
        "",
        f"A masked-diffusion language model (the {family} family) trained with align (preference alignment for "
        f"masked-diffusion LMs) by {how}" + (", its LoRA adapter merged into the full weights." if merged else "."),
        "",
        "## Training",
        "",
        *training_summary(cfg, kind),
        "",
        "## Results",
        "",
        *results_table(evaluations),
        "",
        "## Use",
        "",
        "```bash",
        "# with align installed (from its repository: pip install -e .)",
        'python -m align.sampler --model THIS_DIRECTORY_OR_REPO --prompt "How do I bake bread?" --steps 48 '
        "--gen-length 48 --block-length 48",
        "python -m align.score model=THIS_DIRECTORY_OR_REPO data=records.jsonl   "
        "# log-likelihoods with standard errors",
        "python -m align.lm_eval --model_args model=THIS_DIRECTORY_OR_REPO --tasks TASK",
        "```",
        "",
        "In Python: `align.models.load_model(path)` loads it (a LoRA output is merged into its base on load). "
        "Log-likelihoods of masked-diffusion models are Monte Carlo estimates of a bound; "
        "`align.score` reports each with its standard error.",
        "",
    ]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)


def write_card(
    folder: Path,
    *,
    base: str,
    run: Path | None = None,
    merged: bool = False,
    family: str | None = None,
    config: dict | None = None,
) -> Path:
    """``folder/README.md`` for a trained output; ``run``: the training run whose metrics.jsonl describes it;
    ``config``: the configuration it was trained with (the effective one, resumes' allowed changes included:
    written as ``training_config.yaml``; without it, the run's ``config.yaml``); the run's ``resumes.jsonl``, if
    any, is copied beside it. ``family``: the model's ``model_type``. Checked by parsing it back as a
    ``ModelCard``."""
    from huggingface_hub import ModelCard

    folder = Path(folder)
    if config is None and run is not None and (Path(run) / "config.yaml").exists():
        config = yaml.safe_load((Path(run) / "config.yaml").read_text())
    if config is not None:
        (folder / CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False))
        if run is not None and (Path(run) / "resumes.jsonl").exists():
            shutil.copy2(Path(run) / "resumes.jsonl", folder / "resumes.jsonl")
        evaluations = _evaluations(Path(run)) if run is not None else []
        text = card_text(base=base, cfg=config, evaluations=evaluations, merged=merged, family=family)
    else:
        text = _plain_card(base, merged)
    ModelCard(text)  # raises on front matter the Hub would not read
    (folder / "README.md").write_text(text)
    return folder / "README.md"


def _plain_card(base: str, merged: bool) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        base_model=base if _is_hub_id(base) else None,
        library_name="transformers",
        tags=["align", "masked-diffusion", "diffusion-language-model"],
        license=base_license(base),
    )
    what = "LoRA adapter merged into its base" if merged else "saved"
    return (
        f"---\n{data.to_yaml()}\n---\n\n# {base}, {what} by align\n\nNo training record was found for this "
        f"model; see its base, `{base}`.\n"
    )


def push_output(out: Path, train, upload=None) -> int:
    """``train.push_to_hub``: upload ``out/final`` (with ``train.hub_strategy=all_checkpoints`` also each
    ``checkpoint-N``) to ``train.hub_model_id`` (default: the output directory's name, in the token's namespace).
    Returns the exit code: 1 with one line saying why when the upload fails; the local output is left as it is."""
    import sys

    repo = train.hub_model_id or Path(out).name
    extra = sorted(Path(out).glob("checkpoint-[0-9]*")) if train.hub_strategy == "all_checkpoints" else []
    try:
        url = push_to_hub(Path(out) / "final", repo, private=train.hub_private_repo, extra=extra, upload=upload)
    except Exception as e:  # offline, no or a wrong token, no permission, a network failure: all the same to the run
        reason = (str(e).strip().splitlines() or [""])[0]
        print(
            f"push to hub failed ({type(e).__name__}: {reason}); {Path(out) / 'final'} is saved locally: "
            f"upload it later with `hf upload {repo} {Path(out) / 'final'}`",
            file=sys.stderr,
        )
        return 1
    print(f"pushed {Path(out) / 'final'} to {url}")
    return 0


def push_to_hub(folder: Path, repo_id: str, *, private: bool = False, extra: list[Path] = (), upload=None) -> str:
    """Upload ``folder`` (and each of ``extra`` as a subfolder of the same name) to the model repo ``repo_id``,
    created if missing. ``upload(folder, repo_id, private, path_in_repo)``: the uploader (default:
    ``huggingface_hub``'s ``create_repo`` + ``upload_folder``; tests inject one). Returns the repo's URL."""
    upload = upload or _hub_upload
    url = upload(Path(folder), repo_id, private, "")
    for path in extra:
        upload(Path(path), repo_id, private, Path(path).name)
    return url


def _hub_upload(folder: Path, repo_id: str, private: bool, path_in_repo: str) -> str:
    from huggingface_hub import create_repo, upload_folder

    create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        path_in_repo=path_in_repo or None,
        commit_message=f"align: upload {folder.name}",
    )
    return str(getattr(info, "repo_url", None) or f"https://huggingface.co/{repo_id}")
