"""Build the bundled tiny chat model, ``data/tiny_chat/``, from scratch on a CPU (about 25 minutes on 2 cores).

1. the corpus: ``data/make_demo_data.py`` (templated dialogues; see its docstring);
2. a byte-level BPE tokenizer (every corpus word one token: vocab 1,399) with LLaDA's special tokens and chat template;
3. a random LLaDA-architecture model (d_model 256, 4 layers, 8 heads, MLP 768: 4.1M parameters);
4. masked-diffusion pretraining on the plain text (``recipes/tiny_chat_pretrain.yaml``): every token may be masked;
5. masked-diffusion SFT on the dialogues (``recipes/tiny_chat_sft.yaml``): the prompt stays visible;
6. the result in the published layout (bf16 safetensors, config, tokenizer), read by ``load_model`` like any
   checkpoint, with ``build_info.json`` (times and final losses).

Stages 4 and 5 are ordinary runs of ``python -m align.train_sft``: the build exercises the project's own SFT stage.

    python data/build_tiny_model.py                 # writes data/tiny_chat/ (work files under build/tiny_chat/)
    python data/build_tiny_model.py --quick         # a few steps of each stage: checks the pipeline, not a model
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
VOCAB = 1536  # BPE stops earlier once every word of the corpus is one token (1,399)
ARCH = dict(d_model=256, n_heads=8, n_kv_heads=8, n_layers=4, mlp_hidden_size=768, max_sequence_length=256,
            rope_theta=10000.0)


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
    config = LLaDAConfig(vocab_size=len(tok), embedding_size=len(tok), mask_token_id=tok.mask_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **ARCH)
    torch.manual_seed(seed)
    model = LLaDAModelLM(config).float()
    save_published(model, path, tokenizer=tok)
    n = sum(p.numel() for p in model.parameters())
    print(f"initial model: {n / 1e6:.2f}M parameters, vocab {len(tok)} -> {path}", flush=True)


def run_stage(recipe: str, model: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "align.train_sft", f"recipe={recipe}", f"model.name_or_path={model}",
           f"train.output_dir={out}", "train.report_to=none",
           "train.overwrite_output_dir=true", *extra]  # the build owns its work directory
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last_eval = [r for r in records if "eval/loss" in r][-1]
    last_train = [r for r in records if "loss" in r][-1]
    return {"seconds": round(time.time() - start), "steps": last_train["step"],
            "final_eval_loss": round(last_eval["eval/loss"], 4),
            "final_eval_masked_token_nll": round(last_eval["eval/masked_token_nll"], 4),
            "final_train_masked_token_nll": round(last_train["masked_token_nll"], 4)}


def publish(final: Path, info: dict) -> None:
    """Copy the SFT output as bf16 safetensors (half the size; the demo loads it as fp32)."""
    import torch
    from safetensors.torch import load_file, save_file

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for f in final.iterdir():
        if f.is_file() and f.name != "model.safetensors":
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

A {arch['n_layers']}-layer LLaDA-architecture masked-diffusion LM (d_model {arch['d_model']}, {arch['n_heads']} heads,
MLP {arch['mlp_hidden_size']}, vocabulary {info['vocab']}, sequences up to {arch['max_sequence_length']} tokens),
built from scratch on a CPU by `data/build_tiny_model.py` for align's offline demo and tests: masked-diffusion
pretraining on templated dialogues ({pre['steps']} steps, held-out masked-token NLL {pre['final_eval_masked_token_nll']})
then masked-diffusion SFT ({sft['steps']} steps, held-out masked-token NLL {sft['final_eval_masked_token_nll']}).
It answers everyday questions with short step lists and, like its training data, complies with or refuses harmful
ones about half the time each: the behaviour the demo's DPO changes. Not a model for any other use.
""")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few steps per stage (pipeline check); publishes nothing")
    ap.add_argument("--work", type=Path, default=WORK, help="folder for the stages' outputs")
    args = ap.parse_args()
    start = time.time()
    subprocess.run([sys.executable, str(ROOT / "data" / "make_demo_data.py")], check=True)
    work = args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    initial_model(work / "init")
    quick = (["train.max_steps=3", "train.eval_steps=0", "data.max_eval_examples=16", "behaviour.max_prompts=2",
              "train.progress_bar=false"] if args.quick else [])
    info = {"architecture": ARCH, "vocab": VOCAB}
    info["pretrain"] = run_stage("tiny_chat_pretrain", work / "init", work / "pretrain", quick)
    info["sft"] = run_stage("tiny_chat_sft", work / "pretrain" / "final", work / "sft", quick)
    info["total_seconds"] = round(time.time() - start)
    print(json.dumps(info, indent=2), flush=True)
    if not args.quick:
        publish(work / "sft" / "final", info)


if __name__ == "__main__":
    main()
