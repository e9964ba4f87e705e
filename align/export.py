"""What leaves a run: the final save (:func:`save_final`), the published layout any model is saved in
(:func:`save_published`, read by the published LLaDA/Dream code), the trainable and merged state dicts gathered
for saving (ZeRO-3 included; the one LoRA merge of align), the read-back check of every save
(:func:`verify_saved`), and the export of a LoRA output or checkpoint as one plain model (:func:`merge`)::

    python -m align.export --model outputs/demo/final --out outputs/demo/merged

Exercised by ``tests/test_trainer.py`` (DeepSpeed saves), ``tests/test_models.py`` and ``tests/test_ablate.py``."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from align.checkpoints import recorded_config, write_manifest
from align.cli import entry_point, help_text, overrides, parse_options
from align.config import opt
from align.model_card import CONFIG_NAME, write_card
from align.models import adapter_base, load_model, tokenizer_source, unwrap
from align.models.tokenizer import load_tokenizer

# the published remote-code files, copied next to a save so that LLaDA's / Dream's own
# AutoModel.from_pretrained(..., trust_remote_code=True) reads it
REMOTE_CODE_FILES = (
    "configuration_llada.py",
    "modeling_llada.py",
    "configuration_dream.py",
    "modeling_dream.py",
    "generation_utils.py",
    "tokenization_dream.py",
)


def trainable_state_dict(model, keep: bool) -> dict[str, torch.Tensor]:
    """The trainable parameters on CPU (``keep``: this rank keeps them). Under ZeRO-3 they are gathered
    collectively, so every rank must call this; nothing else of the model is gathered or copied."""
    import contextlib

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    gather = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for _, p in named):  # ZeRO-3 partitioned parameters
        import deepspeed

        gather = deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None)
    with gather:
        return {n: p.detach().to("cpu", copy=True) for n, p in named} if keep else {}


def merged_state_dict(peft_model) -> dict[str, torch.Tensor]:
    """Base weights with every LoRA delta merged, on CPU, in the base model's parameter names; one adapted
    layer's delta on the device at a time (no copy of the model)."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    merged = {}
    for name, p in base.named_parameters():
        if "lora_" not in name:
            merged[name.replace(".base_layer.", ".")] = p.detach().to("cpu", copy=True)
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            key = f"{name}.weight"
            delta = sum(module.get_delta_weight(a).detach().float().cpu() for a in module.active_adapters)
            merged[key] = (merged[key].float() + delta).to(merged[key].dtype)
    return merged


def published_shapes(tensors: dict, config) -> dict[str, tuple]:
    """Names and shapes a save of ``tensors`` must hold (a tied output embedding is stored once)."""
    shapes = {k: tuple(getattr(v, "shape", v)) for k, v in tensors.items()}
    if getattr(config, "tie_word_embeddings", False):
        for key in ("lm_head.weight", "model.transformer.ff_out.weight"):
            shapes.pop(key, None)
    return shapes


def verify_saved(directory: Path, expected: dict[str, tuple]) -> None:
    """Read back the safetensors in ``directory``: every expected tensor there with its shape, none empty."""
    from safetensors import safe_open

    found = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                found[k] = tuple(st.get_slice(k).get_shape())
    missing = sorted(expected.keys() - found.keys())
    wrong = sorted(k for k in expected.keys() & found.keys() if found[k] != expected[k])
    empty = sorted(k for k, shape in found.items() if 0 in shape)
    if missing or wrong or empty:
        raise RuntimeError(
            f"the weights written to {directory} do not match the model: "
            + "; ".join(
                f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
                for what, keys in (("missing", missing), ("wrong shape", wrong), ("empty", empty))
                if keys
            )
        )


def save_published(
    model,
    out_dir: str | Path,
    *,
    tokenizer=None,
    merged: bool = True,
    adapter: bool = True,
    source: str | Path | None = None,
    state_dict: dict | None = None,
) -> Path:
    """Save in the published layout.

    With a peft model: the adapter goes to ``out_dir/adapter`` (if ``adapter``) and the merged full weights
    (:func:`merged_state_dict`) to ``out_dir`` (if ``merged``). Without one, the full weights go to ``out_dir``.
    The config keeps ``model_type`` and published field names; the published remote-code files are copied from
    ``source`` when it is a local directory holding them, so LLaDA's own ``AutoModel.from_pretrained(...,
    trust_remote_code=True)`` reads the output. ``state_dict``: full weights gathered by the caller (DeepSpeed
    ZeRO-3), for a model without an adapter.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_peft = hasattr(model, "merge_and_unload")
    if is_peft and adapter:
        model.save_pretrained(out / "adapter")
    if merged or not is_peft:
        full, weights = (model.get_base_model(), merged_state_dict(model)) if is_peft else (model, state_dict)
        full.save_pretrained(out, safe_serialization=True, state_dict=weights)
        _restore_published_config(out, unwrap(model).config)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if source is not None and Path(source).is_dir():
        for name in REMOTE_CODE_FILES:
            if (Path(source) / name).exists():
                shutil.copy2(Path(source) / name, out / name)
    return out


def _restore_published_config(out: Path, config) -> None:
    """Keep the published ``architectures``/``auto_map`` (for LLaDA's own loaders)."""
    path = out / "config.json"
    data = json.loads(path.read_text())
    published_arch = {"llada": ["LLaDAModelLM"], "Dream": ["DreamModel"]}
    data["architectures"] = published_arch.get(data.get("model_type"), data.get("architectures"))
    if getattr(config, "auto_map", None):
        data["auto_map"] = config.auto_map
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_final(acc, model, out: Path, *, cfg, tokenizer) -> None:
    """``out`` (a run's ``final/``): the adapter (LoRA) and/or full weights in the published layout, each checked
    after writing. Every rank calls it.

    LoRA: only the trainable parameters are gathered (under ZeRO-3 collectively, to rank 0's CPU); the base is
    never copied to save an adapter. ``train.save_merged`` (DDP / ZeRO-2) merges on rank 0's CPU one layer at a
    time, without a second copy of the model on the GPU. Full fine-tuning: the full state dict (gathered from
    ZeRO-3 shards on rank 0).
    """
    final, out = out, out.with_name(out.name + ".tmp")  # written aside, renamed when whole (as checkpoints are)
    if acc.is_main_process and out.exists():
        shutil.rmtree(out)  # an earlier save cut short
    acc.wait_for_everyone()
    source = cfg.model.name_or_path
    if cfg.lora.enabled:
        peft_model = unwrap(model, keep_peft=True)
        adapter = trainable_state_dict(peft_model, acc.is_main_process)
        if acc.is_main_process:
            from peft import get_peft_model_state_dict

            for config in peft_model.peft_config.values():  # load_model(final/) finds the base through this
                config.base_model_name_or_path = source
            peft_model.save_pretrained(out / "adapter", state_dict=adapter)
            expected = get_peft_model_state_dict(peft_model, state_dict=adapter)
            verify_saved(out / "adapter", {k: tuple(v.shape) for k, v in expected.items()})
            if cfg.train.save_merged:
                merged = merged_state_dict(peft_model)
                save_published(peft_model.get_base_model(), out, tokenizer=tokenizer, state_dict=merged, source=source)
                verify_saved(out, published_shapes(merged, peft_model.get_base_model().config))
    else:
        state_dict = acc.get_state_dict(model)  # gathers ZeRO-3 shards on rank 0
        if acc.is_main_process:
            bare = unwrap(model, keep_peft=True)  # the model inside DDP / the DeepSpeed engine
            save_published(bare, out, tokenizer=tokenizer, source=source, state_dict=state_dict)
            shapes = {n: tuple(getattr(p, "ds_shape", p.shape)) for n, p in bare.named_parameters()}
            verify_saved(out, published_shapes(shapes, bare.config))
    if acc.is_main_process:
        tokenizer.save_pretrained(out)
        # README.md: how it was trained, what it scored
        # the effective config (a resume's allowed changes included), never the hand-editable config.yaml
        write_card(out, base=source, run=out.parent, family=unwrap(model).config.model_type, config=cfg.to_dict())
        write_manifest(out)  # every file with its size and sha256: a finished run is one whose final/ verifies
        if final.exists():
            shutil.rmtree(final)  # an unverified final/ of a save cut short, being redone
        out.rename(final)
        acc.print(f"saved {final}")
    acc.wait_for_everyone()


# ------------------------------------------------------------------------------------------------ export


def merge(model_path: str, out: str | Path, *, tokenizer: str | None = None) -> Path:
    """``model_path`` (a LoRA training output ``final/`` or ``final/adapter``, a ``checkpoint-N``, or any model)
    written to ``out`` as one plain model in the published layout (safetensors, stored dtype, its tokenizer), with a
    model card made from the configuration it was trained with as recorded by the save (never the run's
    hand-editable config.yaml)."""
    try:
        model = load_model(model_path).eval()  # a LoRA output loads as its base with the adapter merged
        tok = load_tokenizer(tokenizer or tokenizer_source(model_path))
    except ValueError as e:  # a failed hub load, an unusable directory
        raise FileNotFoundError(str(e)) from None
    out = save_published(model, out, tokenizer=tok, source=tokenizer_source(model_path))
    path = Path(model_path)
    # the run of a final/, final/adapter or checkpoint-N: the nearest folder above with a config.yaml
    run = next((p for p in path.resolve().parents[:2] if (p / "config.yaml").exists()), None)
    saved = next((p / CONFIG_NAME for p in (path, path.parent) if (p / CONFIG_NAME).exists()), None)
    config = recorded_config(path) or (yaml.safe_load(saved.read_text()) if saved else None)
    write_card(
        out,
        base=adapter_base(model_path) or model_path,
        run=run,
        merged=True,
        family=unwrap(model).config.model_type,
        config=config,
    )
    return out


@dataclass
class ExportOptions:
    model: str = opt("", "a LoRA training output (final/ or final/adapter), a checkpoint-N, or a model directory")
    out: str = opt("", "the directory to write the plain model to")
    tokenizer: str | None = opt(None, "defaults to the model's, or its base model's")


def main(argv: list[str] | None = None) -> None:
    """``python -m align.export --model M --out DIR`` (or ``model=M out=DIR``)."""
    argv = sys.argv[1:] if argv is None else argv
    usage = "python -m align.export --model MODEL --out DIR"
    with entry_point():
        args = parse_options(
            overrides(argv, prog="align.export", help_page=lambda: help_text(ExportOptions, usage)), ExportOptions
        )
        if not args.model or not args.out:
            raise ValueError(f"give --model and --out ({usage})")
        out = merge(args.model, args.out, tokenizer=args.tokenizer)
    print(f"merged model written to {out}")


if __name__ == "__main__":
    main()
