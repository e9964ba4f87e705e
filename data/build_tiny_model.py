"""Build the bundled tiny chat model, ``data/tiny_chat/``, from scratch on a CPU (about an hour on 2 cores).

1. the corpus: ``data/make_demo_data.py`` (the world of ``align/world.py``; see its docstring);
2. a byte-level BPE tokenizer (every corpus word one token) with LLaDA's special tokens and chat template;
3. a random LLaDA-architecture model (d_model 256, 6 layers, 8 heads, MLP 768);
4. masked-diffusion pretraining on the plain text (``recipes/tiny_chat_pretrain.yaml``): every token may be masked;
5. masked-diffusion SFT on the dialogues (``recipes/tiny_chat_sft.yaml``): the prompt stays visible;
6. the result in the published layout (bf16 safetensors, config, tokenizer), read by ``load_model`` like any
   checkpoint, with ``build_info.json``: times, final losses, and the well-formedness of sampled answers
   (:func:`measure`: greedy and at the demo's sampling setting, on held-out prompts of held-out tasks).

Stages 4 and 5 are ordinary runs of ``python -m align.train_sft``: the build exercises the project's own SFT stage.
The build is resumable: run the same command again after an interruption and it skips the finished stages and
continues the interrupted one from its last checkpoint (``train.resume_from_checkpoint=latest``).

    python data/build_tiny_model.py                 # writes data/tiny_chat/ (work files under build/tiny_chat/)
    python data/build_tiny_model.py --fresh         # throws the work files away first
    python data/build_tiny_model.py --quick         # a few steps of each stage: checks the pipeline, not a model
    python data/build_tiny_model.py --measure DIR   # only the well-formedness measure of a model directory
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "tiny_chat"
WORK = ROOT / "build" / "tiny_chat"
VOCAB = 1536  # BPE stops earlier once every word of the corpus is one token
ARCH = dict(
    d_model=256, n_heads=8, n_kv_heads=8, n_layers=6, mlp_hidden_size=768, max_sequence_length=256, rope_theta=10000.0
)


def corpus_texts() -> list[str]:
    texts = [json.loads(line)["text"] for line in (ROOT / "data" / "tiny_pretrain.jsonl").read_text().splitlines()]
    for name in ("tiny_sft_train.jsonl",):
        for line in (ROOT / "data" / name).read_text().splitlines():
            row = json.loads(line)
            texts += [row["prompt"], row["response"]]
    return texts


def initial_model(path: Path, seed: int = 0) -> None:
    """Tokenizer + random LLaDA in the published layout: the starting point of pretraining."""
    import torch

    from align.export import save_published
    from align.models import LLaDAModelLM
    from align.models.llada import LLaDAConfig
    from align.models.tiny import tiny_tokenizer, train_bpe

    tok = tiny_tokenizer(train_bpe(corpus_texts(), VOCAB))
    config = LLaDAConfig(
        vocab_size=len(tok),
        embedding_size=len(tok),
        mask_token_id=tok.mask_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **ARCH,
    )
    torch.manual_seed(seed)
    model = LLaDAModelLM(config).float()
    save_published(model, path, tokenizer=tok)
    n = sum(p.numel() for p in model.parameters())
    print(f"initial model: {n / 1e6:.2f}M parameters, vocab {len(tok)} -> {path}", flush=True)


def run_stage(recipe: str, model: Path, out: Path, extra: list[str]) -> dict:
    """One ``align.train_sft`` run. A finished stage (``stage.json`` beside its ``final/``) is skipped; an
    interrupted one continues from its newest checkpoint; anything else in ``out`` is the build's own and is
    replaced."""
    record = out / "stage.json"
    if record.exists():
        print(f"{out.name}: finished earlier, skipped", flush=True)
        return json.loads(record.read_text())
    resume = out.is_dir() and any(p.name.startswith("checkpoint-") for p in out.iterdir())
    cmd = [
        sys.executable,
        "-m",
        "align.train_sft",
        f"recipe={recipe}",
        f"model.name_or_path={model}",
        f"train.output_dir={out}",
        "train.report_to=none",
        *(["train.resume_from_checkpoint=latest"] if resume else ["train.overwrite_output_dir=true"]),
        *extra,
    ]
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/loss" in r]
    last_train = [r for r in records if "loss" in r][-1]
    info = {
        "seconds": round(time.time() - start),  # of this invocation (a resumed stage: since the resume)
        "steps": last_train["step"],
        "final_eval_loss": round(evals[-1]["eval/loss"], 4),
        "final_eval_masked_token_nll": round(evals[-1]["eval/masked_token_nll"], 4),
        "final_train_masked_token_nll": round(last_train["masked_token_nll"], 4),
        "eval_curve": [[r["step"], round(r["eval/masked_token_nll"], 4)] for r in evals],
    }
    record.write_text(json.dumps(info, indent=2) + "\n")
    return info


MEASURE_PROMPTS = 300  # of the 513 held-out prompts (interleaved: ~140 of held-out tasks): 2 settings in ~5 min
# the two sampling settings the well-formedness measure reports: greedy (LLaDA's default decoding) and the demo's
SETTINGS = {
    "greedy": dict(temperature=0.0, remasking="low_confidence"),
    "demo": dict(temperature=1.0, remasking="random"),
}
# and the answers it samples: 48 tokens in 48 steps, one block
LENGTHS = dict(gen_length=48, block_length=48, steps=48)


def measure(model_dir: Path, *, limit: int | None = None, seed: int = 0, tokenizer: Path | None = None) -> dict:
    """Well-formedness (``align.world.well_formed``) and the judged behaviour of answers sampled from ``model_dir``
    to held-out prompts: those of held-out tasks (never in training text) and held-out phrasings of training
    tasks, 48 tokens in 48 steps, greedy and at the demo's setting. Shares with their binomial SEs, per split
    and per kind."""
    import math

    import torch

    from align import world
    from align.behaviour import sample_answers
    from align.models import load_model, spec_for
    from align.models.tokenizer import load_tokenizer

    model = load_model(str(model_dir), dtype=torch.float32).eval()
    tok = load_tokenizer(str(tokenizer or model_dir))  # a training checkpoint holds no tokenizer: give one
    spec = spec_for(model)
    rows = [json.loads(line) for line in (ROOT / "data" / "demo_behaviour_prompts.jsonl").read_text().splitlines()]
    rows = rows[:limit] if limit else rows
    out = {"prompts": len(rows), "gen_length": LENGTHS["gen_length"], "steps": LENGTHS["steps"]}

    def share(flags):
        p = sum(flags) / len(flags)
        return {"rate": round(p, 4), "se": round(math.sqrt(p * (1 - p) / len(flags)), 4), "n": len(flags)}

    for name, setting in SETTINGS.items():
        start = time.time()
        answers = sample_answers(
            model,
            tok,
            spec,
            [r["prompt"] for r in rows],
            **LENGTHS,
            seed=seed,
            **setting,
        )
        judged = [world.judge(r["task_id"], r["kind"], a) for r, a in zip(rows, answers)]
        res = {}
        for split in ("heldout_task", "heldout_phrasing"):
            idx = [i for i, r in enumerate(rows) if r["split"] == split]
            if not idx:
                continue
            res[split] = {
                "well_formed": share([judged[i]["well_formed"] for i in idx]),
                "repeats_a_word": share([world.repeats_a_word(answers[i]) for i in idx]),
                "correct": share([judged[i]["correct"] for i in idx]),
            }
            for kind in world.KINDS:
                kidx = [i for i in idx if rows[i]["kind"] == kind]
                if kidx:
                    res[split][kind] = {
                        "well_formed": share([judged[i]["well_formed"] for i in kidx]),
                        "refusal": share([judged[i]["refusal"] for i in kidx]),
                        "correct": share([judged[i]["correct"] for i in kidx]),
                    }
        res["examples"] = [
            {"prompt": rows[i]["prompt"], "answer": answers[i], **judged[i]} for i in range(min(6, len(rows)))
        ]
        res["seconds"] = round(time.time() - start)
        out[name] = {**setting, **res}
        print(
            f"{name}: well-formed {res.get('heldout_task', {}).get('well_formed')} (held-out tasks), "
            f"{res.get('heldout_phrasing', {}).get('well_formed')} (held-out phrasings)",
            flush=True,
        )
    return out


def curve(sft_dir: Path, every: int = 3, limit: int = 120) -> list[dict]:
    """Well-formedness along SFT: every ``every``-th checkpoint, on the first ``limit`` held-out prompts (both
    splits), greedy and at the demo's setting. The steps half of the size/steps curve."""
    ckpts = sorted((p for p in sft_dir.glob("checkpoint-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    out = []
    for ckpt in ckpts[every - 1 :: every]:
        m = measure(ckpt, limit=limit, tokenizer=OUT)
        out.append(
            {
                "step": int(ckpt.name.split("-")[1]),
                "prompts": m["prompts"],
                **{
                    f"{name}/{split}": m[name][split]["well_formed"]["rate"]
                    for name in SETTINGS
                    for split in ("heldout_task", "heldout_phrasing")
                    if split in m[name]
                },
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return out


def measure_published(info: dict, work: Path) -> None:
    """Well-formedness of the published (bf16) model, as the demo loads it, and along SFT; into build_info.json
    and the card."""
    start = time.time()
    info["well_formedness"] = measure(OUT, limit=MEASURE_PROMPTS)
    (OUT / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")  # kept if the curve is interrupted
    info["curve"] = curve(work / "sft")
    info["measure_seconds"] = round(time.time() - start)
    (OUT / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    write_card(info)


def publish(final: Path, info: dict) -> None:
    """Copy the SFT output as bf16 safetensors (half the size; the demo loads it as fp32)."""
    import torch
    from safetensors.torch import load_file, save_file

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for f in final.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "training_config.yaml", "README.md"):  # the
            # SFT run's own record names the build's work paths; the card below describes the published model
            shutil.copy2(f, OUT / f.name)
    weights = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(final / "model.safetensors").items()}
    save_file(weights, OUT / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((OUT / "config.json").read_text())
    config["torch_dtype"] = config["dtype"] = "bfloat16"
    (OUT / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (OUT / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    write_card(info)
    size = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"published {OUT} ({size / 1e6:.1f} MB)", flush=True)


def write_card(info: dict) -> None:
    """``data/tiny_chat/README.md``: the model card (its licence is the project's; trained models name it as base)."""
    arch, sft, pre = info["architecture"], info["sft"], info["pretrain"]
    wf = info.get("well_formedness")
    measured = ""
    if wf:

        def rate(setting, split):
            r = wf[setting][split]["well_formed"]
            return f"{r['rate']:.2f} ± {r['se']:.2f}"

        measured = (
            f"\nWell-formed answers on held-out prompts (every sentence one the world says for the asked task, "
            f"no word repeated back to back; `align.world.well_formed`), 48 tokens in 48 steps: "
            f"{rate('greedy', 'heldout_task')} greedy and {rate('demo', 'heldout_task')} at the demo's "
            f"setting (temperature 1, random remasking) on the {wf['greedy']['heldout_task']['well_formed']['n']} "
            f"prompts of held-out tasks; {rate('greedy', 'heldout_phrasing')} and "
            f"{rate('demo', 'heldout_phrasing')} on held-out phrasings of training tasks.\n"
        )
    (OUT / "README.md").write_text(f"""---
license: apache-2.0
library_name: transformers
pipeline_tag: text-generation
tags:
- align
- llada
- masked-diffusion
- tiny
---

# align's tiny chat model

A {arch["n_layers"]}-layer LLaDA-architecture masked-diffusion LM (d_model {arch["d_model"]}, {arch["n_heads"]} heads,
MLP {arch["mlp_hidden_size"]}, vocabulary {info["vocab"]}, sequences up to {arch["max_sequence_length"]} tokens),
built from scratch on a CPU by `data/build_tiny_model.py` for align's offline demo and tests: masked-diffusion
pretraining on the dialogues of a generated world (`align/world.py`: 330 everyday, borderline and harmful tasks)
as plain text ({pre["steps"]} steps, held-out masked-token NLL {pre["final_eval_masked_token_nll"]}), then
masked-diffusion SFT on them ({sft["steps"]} steps, held-out masked-token NLL {sft["final_eval_masked_token_nll"]}).
It helps with everyday requests, refuses or complies with harmful ones about half the time each, and refuses
borderline ones (benign requests that look harmful) more often than it helps, like its SFT data: the behaviour
the demo's DPO changes. Not a model for any other use.
{measured}""")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few steps per stage (pipeline check); publishes nothing")
    ap.add_argument(
        "--fresh", action="store_true", help="remove the work folder first (else an earlier build is continued)"
    )
    ap.add_argument("--work", type=Path, default=WORK, help="folder for the stages' outputs")
    ap.add_argument("--measure", type=Path, help="only measure this model directory's answers; print JSON")
    ap.add_argument("--limit", type=int, help="with --measure: the first N held-out prompts")
    ap.add_argument(
        "--remeasure",
        action="store_true",
        help="only the measurements of a finished build: the published model and the SFT checkpoints of --work",
    )
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, limit=args.limit), indent=1))
        return
    if args.remeasure:
        measure_published(json.loads((OUT / "build_info.json").read_text()), args.work.resolve())
        return
    subprocess.run([sys.executable, str(ROOT / "data" / "make_demo_data.py")], check=True)
    work = args.work.resolve()
    if args.quick:
        work = work / "quick"
    if work.exists() and (args.fresh or args.quick):
        shutil.rmtree(work)
    if not (work / "init" / "model.safetensors").exists():
        initial_model(work / "init")
    quick = (
        [
            "train.max_steps=3",
            "train.eval_steps=0",
            "data.max_eval_examples=16",
            "behaviour.max_prompts=2",
            "train.progress_bar=false",
        ]
        if args.quick
        else []
    )
    info = {"architecture": ARCH, "vocab": VOCAB}
    info["pretrain"] = run_stage("tiny_chat_pretrain", work / "init", work / "pretrain", quick)
    info["sft"] = run_stage("tiny_chat_sft", work / "pretrain" / "final", work / "sft", quick)
    info["total_seconds"] = info["pretrain"]["seconds"] + info["sft"]["seconds"]
    print(json.dumps(info, indent=2), flush=True)
    if not args.quick:
        publish(work / "sft" / "final", info)
        measure_published(info, work)
    else:
        print(json.dumps(measure(work / "sft" / "final", limit=6)["greedy"]["heldout_task"], indent=1))


if __name__ == "__main__":
    main()
