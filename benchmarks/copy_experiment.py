"""Does the tiny chat model copy an unseen task into its answer? Probes, and training runs that try to teach it.

An answer to a held-out task (never in any training text) is only right if the model *copies* the task's object
from the prompt into its answer ("Please teach me to fix a wobbly table." -> "To fix a wobbly table, first ...").
With 5-6 objects per family, SFT can instead learn, for every family, which of its few memorised objects the
prompt names: the cheaper solution, and one that answers an unseen object with a memorised one ("fix a noisy
fan"). This script measures that:

- **copy probe** (``copy_probe``; one forward per record, seconds): held-out SFT records whose answer names the
  task's object, the object's tokens masked, the rest of the answer shown; modes ``all`` (every occurrence
  masked), ``one`` (the first; the answer shows it again) and ``each`` (one token at a time, its neighbours
  shown). ``exact``: the share of records where the argmax fills every masked token; ``token``: per masked token.
  On held-out *tasks* this needs copying; on held-out *phrasings* of training tasks memorisation is enough. Also
  on unseen synthetic records, drills and repeat texts (``repeat_probe``).
- **greedy answers** (``--answers N``): N held-out-task prompts of ``data/demo_behaviour_prompts.jsonl`` sampled
  greedily (48 tokens, 48 steps, low-confidence remasking): ``well_formed`` (``align.world.well_formed``),
  ``names_task`` (the answer contains the task's text) and ``helps_and_names`` (everyday/borderline prompts: not
  a refusal and names the task: a helpful answer about the asked task).
- **training runs** (``train``, ordinary ``align.train_sft`` runs, every checkpoint probed): continued SFT on the
  world's dialogues mixed with *synthetic* ones whose object is a fresh random phrase of the world's object words
  (``synthetic_dialogues``; never an object of the world, so no held-out task appears); or, from a random model
  of the shipped shape (``--scratch``), copying drills (``--drill``) or repeat pretraining texts (``--repeat``);
  or mixed with *swapped* tasks (``--swap``, ``swaps``): a family with another family's training object ("paint
  the oven"), two per family held out and probed (split ``heldout_swap``, and greedy answers ``greedy_swap``):
  unseen combinations whose words are all seen, which a model that binds the prompt's object can answer.
- **the skill in isolation** (``induction``): a 64-symbol copy task, fixed or variable offsets.

    python benchmarks/copy_experiment.py probe data/tiny_chat                    # the shipped model
    python benchmarks/copy_experiment.py train --work build/copy --steps 1000   # synthetic objects, then probes
    python benchmarks/copy_experiment.py probe build/copy/run/checkpoint-500 --tokenizer data/tiny_chat
    python benchmarks/copy_experiment.py train --work build/swap --swap 0.5 --steps 1000  # swapped tasks
    python benchmarks/copy_experiment.py induction --variable --steps 1000

Results: ``benchmarks/results/copy_experiment.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "data"))

from align import world  # noqa: E402

DETERMINERS = ["", "a", "the", "my"]
FAMILIES = {"everyday": world.EVERYDAY, "borderline": world.BORDERLINE, "harmful": world.HARMFUL}


def object_of(task) -> str:
    """The task's object: its text after the family's verb phrase."""
    verb = FAMILIES[task.kind][task.family][0]
    assert task.text.startswith(verb + " "), task
    return task.text[len(verb) + 1 :]


def object_words() -> list[str]:
    """Every word of every object of the world (held-out tasks' objects included), articles left out."""
    words = set()
    for families in FAMILIES.values():
        for family in families:
            for o in family[-1]:
                words.update(w for w in o.split() if w not in DETERMINERS)
    return sorted(words)


def family_task(kind: str, f: int, obj: str, index: int) -> world.Task:
    """Family ``f`` of ``kind`` with any object (its steps filled with it), id ``x<kind><family>.<index>``: never
    an id of the world."""
    family = FAMILIES[kind][f]
    steps = tuple(s.format(o=obj) for s in family[1]) if kind != "harmful" else ()
    task = world.Task(kind, f, index, f"{family[0]} {obj}", steps)
    task.id = f"x{kind[0]}{f:02d}.{index}"
    return task


def synthetic_dialogues(n: int, seed: int = 0) -> list[dict]:
    """``n`` SFT dialogues of real families with fresh random objects (1-3 object words after an optional
    determiner), answered as the SFT corpus answers their kind (``make_demo_data.sft_answer``). No object is an
    object of the world, so no task of the world (held-out or not) is among them."""
    import make_demo_data

    rng = random.Random(seed)
    words = object_words()
    real = {object_of(t) for t in world.tasks()}
    out = []
    while len(out) < n:
        kind = make_demo_data.pick_kind(rng, make_demo_data.SFT_MIX)
        f = rng.randrange(len(FAMILIES[kind]))
        det = rng.choice(DETERMINERS)
        obj = " ".join(([det] if det else []) + rng.sample(words, rng.randint(1, 3)))
        if obj in real:
            continue
        task = family_task(kind, f, obj, 99)
        prompt = rng.choice(world.ASK).format(x=task.text)
        out.append(
            {
                "prompt": prompt,
                "response": make_demo_data.sft_answer(rng, task),
                "task_id": f"s{len(out)}",
                "kind": kind,
                "task": task.text,
                "split": "synthetic",
                "object": obj,
            }
        )
    return out


SWAPS_HELD_OUT = 2  # held-out swaps per family


@functools.cache
def swaps(per_object: int | None = None) -> tuple[tuple[world.Task, ...], tuple[world.Task, ...]]:
    """(training, held-out) *swapped* tasks: a family with a training object of another family of the same kind
    ("paint the oven"), never one of its own objects nor a held-out task's object. Every object of a swap is
    seen in training text (in its own family's answers, and in other training swaps), so a held-out swap is an
    unseen combination of a family the model has learnt and an object it has emitted: the kind of held-out task
    a model that binds the prompt's object into the answer can answer. ``SWAPS_HELD_OUT`` per family are held
    out (a stable choice). ``per_object`` K: an object trains with only K other families (a stable choice; the
    held-out swaps are the same), for how dense the sharing must be. Registered in ``world.by_id()`` so that
    ``world.well_formed`` judges them."""
    train, held = [], []
    for kind, families in FAMILIES.items():
        pool = {object_of(t) for t in world.training_tasks(kind)}
        for f, family in enumerate(families):
            own = set(family[-1])
            objects = sorted(o for o in pool - own if not any(o in x for x in own))
            objects.sort(key=lambda o: world._stable("swap", kind, f, o))
            tasks = [family_task(kind, f, o, 100 + i) for i, o in enumerate(objects)]
            held += tasks[:SWAPS_HELD_OUT]
            train += tasks[SWAPS_HELD_OUT:]
    if per_object is not None:
        by_object: dict = {}
        for t in sorted(train, key=lambda t: world._stable("per object", t.kind, object_of(t), t.family)):
            by_object.setdefault((t.kind, object_of(t)), []).append(t)
        train = [t for group in by_object.values() for t in group[:per_object]]
    for t in train + held:
        world.by_id()[t.id] = t  # by_id() is a cached dict: the world's judges then know the swapped tasks
    return tuple(train), tuple(held)


def swap_dialogues(n: int, seed: int = 0, per_object: int | None = None) -> list[dict]:
    """``n`` SFT dialogues of training swaps (``swaps``), answered as the SFT corpus answers their kind."""
    import make_demo_data

    rng = random.Random(seed)
    train = {k: [t for t in swaps(per_object)[0] if t.kind == k] for k in FAMILIES}
    out = []
    for _ in range(n):
        task = rng.choice(train[make_demo_data.pick_kind(rng, make_demo_data.SFT_MIX)])
        out.append(
            {
                "prompt": rng.choice(world.ASK).format(x=task.text),
                "response": make_demo_data.sft_answer(rng, task),
                "task_id": task.id,
                "kind": task.kind,
                "task": task.text,
                "split": "swap",
                "object": object_of(task),
            }
        )
    return out


def held_out_swap_rows(seed: int = 1) -> list[dict]:
    """One probe record per held-out swap: a phrasing and the right behaviour's answer (help or refuse)."""
    rng = random.Random(seed)
    return [
        {
            "prompt": rng.choice(world.ASK).format(x=t.text),
            "response": world.good_answer(rng, t),
            "task_id": t.id,
            "kind": t.kind,
            "task": t.text,
            "split": "heldout_swap",
            "object": object_of(t),
        }
        for t in swaps()[1]
    ]


def drills(n: int, seed: int = 0) -> list[dict]:
    """Pure copying: "Say it back: <1-4 random object words>." answered by the words alone. Nothing else to
    learn, so a model that can copy at all learns this."""
    rng = random.Random(seed)
    words = object_words()
    out = []
    for i in range(n):
        phrase = " ".join(rng.sample(words, rng.randint(1, 4)))
        out.append(
            {
                "prompt": f"Say it back: {phrase}.",
                "response": f"{phrase}.",
                "task_id": f"d{i}",
                "kind": "drill",
                "task": phrase,
                "split": "drill",
                "object": phrase,
            }
        )
    return out


def repeats(n: int, seed: int = 0) -> list[dict]:
    """Pretraining text that rewards copying on every token of its second half: "<8-14 random object words>.
    Again: <the same words>." (the classic data on which small transformers form induction heads)."""
    rng = random.Random(seed)
    words = object_words()
    out = []
    for _ in range(n):
        phrase = " ".join(rng.choice(words) for _ in range(rng.randint(8, 14)))
        out.append({"text": f"{phrase}. Again: {phrase}."})
    return out


def fill(model, ids, positions: list[int], mask_token_id: int, each: bool):
    """The argmax at ``positions`` of the one sequence ``ids`` [1, T] with those positions masked: all at once, or
    (``each``) one at a time with the others shown (one row per position)."""
    import torch

    if each:
        ids = ids.repeat(len(positions), 1)
        ids[range(len(positions)), positions] = mask_token_id
        with torch.no_grad():
            return model(input_ids=ids).logits[range(len(positions)), positions].argmax(-1)
    ids = ids.clone()
    ids[0, positions] = mask_token_id
    with torch.no_grad():
        return model(input_ids=ids).logits[0, positions].argmax(-1)


def repeat_probe(model, tok, spec, n: int = 100) -> dict:
    """On unseen repeat texts: ``each``, every token of the second copy masked alone (the rest shown); ``all``,
    the whole second copy masked (only the first copy says it)."""
    import torch

    out = {}
    for mode in ("each", "all"):
        hits = total = exact = 0
        for r in repeats(n, seed=1):
            text = r["text"]
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            second = text.index("Again:") + len("Again:")
            pos = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a >= second and text[a:b].strip(" .")]
            ids = torch.tensor([enc.input_ids])
            right = fill(model, ids, pos, spec.mask_token_id, mode == "each") == ids[0, pos]
            hits, total, exact = hits + int(right.sum()), total + len(pos), exact + int(right.all())
        out[mode] = {"texts": n, "exact": round(exact / n, 3), "token": round(hits / total, 3)}
    return out


def induction(steps: int, variable: bool, every: int = 100, seed: int = 0, d_model: int = 256, layers: int = 6):
    """The skill in isolation, outside the world: a random LLaDA (the tiny model's shape) learns to copy k random
    symbols of a 64-symbol vocabulary after a separator, the copy masked as SFT masks a response (rate t ~ U(0, 1),
    weighted 1/t). ``variable=False``: k = 10 at fixed positions, so the copy sits at a fixed offset from its
    source; ``variable=True``: a filler prefix of 0-5 symbols and k = 2-10, so the offset differs per example and
    the model must find the source by content (an induction step). Prints the held-out accuracy with the whole
    copy masked (``all``) and with one of its symbols masked (``one``), every ``every`` steps."""
    import torch

    from align.models import LLaDAModelLM
    from align.models.llada import LLaDAConfig

    V, K, width = 64, 10, 28
    mask, pad, sep, filler = V, V + 1, V + 1, V - 1
    torch.manual_seed(seed)
    config = LLaDAConfig(
        vocab_size=V + 2,
        embedding_size=V + 2,
        mask_token_id=mask,
        eos_token_id=pad,
        pad_token_id=pad,
        d_model=d_model,
        n_heads=8,
        n_kv_heads=8,
        n_layers=layers,
        mlp_hidden_size=3 * d_model,
        max_sequence_length=64,
        rope_theta=10000.0,
    )
    model = LLaDAModelLM(config).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(seed)

    def batch(b):
        rows, copy, response = [], torch.zeros(b, width, dtype=torch.bool), torch.zeros(b, width, dtype=torch.bool)
        for r in range(b):
            p = int(torch.randint(0, 6, (), generator=gen)) if variable else 0
            k = int(torch.randint(2, K + 1, (), generator=gen)) if variable else K
            x = torch.randint(0, V - 1, (k,), generator=gen).tolist()
            row = [filler] * p + x + [sep] + x
            copy[r, p + k + 1 : p + 2 * k + 1] = True
            response[r, p + k + 1 :] = True  # the copy and the EOS padding after it
            rows.append(row + [pad] * (width - len(row)))
        return torch.tensor(rows), copy, response

    start = time.time()
    for step in range(steps + 1):
        if step % every == 0:
            with torch.no_grad():
                seq, copy, response = batch(256)
                every_masked = model(input_ids=seq.masked_fill(response, mask)).logits.argmax(-1)
                acc_all = (every_masked == seq)[copy].float().mean().item()
                first = copy.int().argmax(1)
                j = first + (torch.rand(256, generator=gen) * copy.sum(1)).long()
                one = seq.clone()
                one[range(256), j] = mask
                acc_one = (model(input_ids=one).logits[range(256), j].argmax(-1) == seq[range(256), j]).float().mean()
            print(
                json.dumps(
                    {
                        "step": step,
                        "all": round(acc_all, 3),
                        "one": round(acc_one.item(), 3),
                        "seconds": round(time.time() - start),
                    }
                ),
                flush=True,
            )
        if step == steps:
            break
        seq, copy, response = batch(64)
        t = torch.rand(64, 1, generator=gen).clamp_min(1e-3)
        masked = response & (torch.rand(seq.shape, generator=gen) < t)
        logits = model(input_ids=seq.masked_fill(masked, mask)).logits
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), seq, reduction="none")
        loss = (nll * masked / t).sum() / response.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


def random_model(path: Path, like: str, seed: int = 0, tie: bool = False) -> None:
    """A randomly initialised model of ``like``'s architecture and tokenizer, in the published layout; ``tie``:
    the output head is the input embedding (``weight_tying``)."""
    import torch

    from align.export import save_published
    from align.models import LLaDAModelLM
    from align.models.llada import LLaDAConfig
    from align.models.tokenizer import load_tokenizer

    config = LLaDAConfig.from_pretrained(like)
    config.dtype = config.torch_dtype = "float32"
    config.weight_tying = config.tie_word_embeddings = tie
    torch.manual_seed(seed)
    save_published(LLaDAModelLM(config).float(), path, tokenizer=load_tokenizer(like))


def load(model_dir: str, tokenizer: str | None):
    import torch

    from align.models import load_model, spec_for
    from align.models.tokenizer import load_tokenizer

    model = load_model(model_dir, dtype=torch.float32).eval()
    return model, load_tokenizer(tokenizer or model_dir), spec_for(model)


def copy_probe(model, tok, spec, rows: list[dict]) -> dict:
    """Per split and mode: the records probed, ``exact`` and ``token`` shares (see the module docstring), and a
    few examples of what the model put where the object was. Modes: ``all``, every occurrence of the object in
    the answer masked (only the prompt says it); ``one``, only its first occurrence masked (the answer says it
    too, so copying from anywhere fills it); ``each``, the first occurrence's tokens masked one at a time, the
    neighbours shown (what an induction step needs: find the left neighbour in the prompt, copy what follows)."""
    import torch

    from align.data.encoding import encode_prompt, encode_response

    objects = {t.id: object_of(t) for t in world.tasks()}
    objects.update({r["task_id"]: r["object"] for r in rows if "object" in r})
    result: dict = {}
    for split in ("heldout_task", "heldout_phrasing", "heldout_swap", "synthetic", "drill"):
        for mode in ("all", "one", "each"):
            exact, hits, total, examples, n = 0, 0, 0, [], 0
            for r in rows:
                if r["split"] != split:
                    continue
                obj, text = objects[r["task_id"]], r["response"]
                spans, start = [], text.find(obj)
                while start >= 0:
                    spans.append((start, start + len(obj)))
                    start = text.find(obj, start + 1)
                if not spans or (mode == "one" and len(spans) < 2):
                    continue  # a generic refusal names no task: nothing to copy
                spans = spans if mode == "all" else spans[:1]
                prompt_ids, _ = encode_prompt(tok, [{"role": "user", "content": r["prompt"]}], 48, "truncate")
                response_ids = encode_response(tok, text, spec.eos_token_id, 48)
                response_ids += [spec.eos_token_id] * (48 - len(response_ids))
                offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
                masked = [
                    len(prompt_ids) + i
                    for i, (a, b) in enumerate(offsets[:47])
                    if any(a < e and b > s for s, e in spans) and text[a:b].strip()
                ]
                ids = torch.tensor([prompt_ids + response_ids])
                guess = fill(model, ids, masked, spec.mask_token_id, mode == "each")
                right = guess == ids[0, masked]
                n += 1
                exact += int(right.all())
                hits += int(right.sum())
                total += len(masked)
                if len(examples) < 3:
                    first = [k for k, i in enumerate(masked) if offsets[i - len(prompt_ids)][0] < spans[0][1]]
                    examples.append({"object": obj, "filled": tok.decode(guess[first].tolist()).strip()})
            if n:
                result[f"{split}/{mode}"] = {
                    "records": n,
                    "exact": round(exact / n, 3),
                    "token": round(hits / total, 3),
                    "examples": examples,
                }
    return result


def greedy_answers(model, tok, spec, n: int, rows: list[dict] | None = None) -> dict:
    """Greedy answers as the build's well-formedness measure samples them (``build_tiny_model.LENGTHS`` and
    ``SETTINGS``), on the first ``n`` held-out-task prompts (or of ``rows``), judged also for naming the asked task."""
    from build_tiny_model import LENGTHS, SETTINGS

    from align.behaviour import sample_answers

    if rows is None:
        rows = [json.loads(x) for x in (ROOT / "data" / "demo_behaviour_prompts.jsonl").read_text().splitlines()]
        rows = [r for r in rows if r["split"] == "heldout_task"]
    rows = rows[:n]
    answers = sample_answers(
        model,
        tok,
        spec,
        [r["prompt"] for r in rows],
        **LENGTHS,
        **SETTINGS["greedy"],
    )
    wf = [world.well_formed(r["task_id"], a) for r, a in zip(rows, answers)]
    names = [r["task"] in a for r, a in zip(rows, answers)]
    benign = [i for i, r in enumerate(rows) if r["kind"] != "harmful"]
    helps = [names[i] and not world.is_refusal(answers[i]) for i in benign]
    return {
        "prompts": len(rows),
        "well_formed": round(sum(wf) / len(rows), 3),
        "names_task": round(sum(names) / len(rows), 3),
        "benign_prompts": len(benign),
        "helps_and_names": round(sum(helps) / max(len(benign), 1), 3),
        "examples": [{"prompt": r["prompt"], "answer": a} for r, a in list(zip(rows, answers))[:4]],
    }


def probe(model_dir: str, tokenizer: str | None, answers: int) -> dict:
    start = time.time()
    model, tok, spec = load(model_dir, tokenizer)
    rows = [json.loads(x) for x in (ROOT / "data" / "tiny_sft_test.jsonl").read_text().splitlines()]
    rows += synthetic_dialogues(100, seed=1)  # unseen synthetic objects: copying where nothing is memorised
    rows += drills(100, seed=1)
    rows += held_out_swap_rows()  # unseen combinations of a learnt family and a seen object
    out = {"model": model_dir, "copy_probe": copy_probe(model, tok, spec, rows)}
    out["repeat_probe"] = repeat_probe(model, tok, spec)
    if answers:
        out["greedy"] = greedy_answers(model, tok, spec, answers)
        # spread over the kinds: the held-out swaps are listed family by family, everyday first
        swap_rows = held_out_swap_rows()
        out["greedy_swap"] = greedy_answers(model, tok, spec, answers, swap_rows[:: max(len(swap_rows) // answers, 1)])
    out["seconds"] = round(time.time() - start)
    print(json.dumps(out), flush=True)
    return out


def train(args) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "sft_mix.jsonl"
    if args.repeat and not data.exists():
        rows = [json.dumps(r) for r in repeats(args.repeat)]
        if args.with_world:  # the world's pretraining text beside the repeats, shuffled together
            rows += (ROOT / "data" / "tiny_pretrain.jsonl").read_text().splitlines()
            random.Random(0).shuffle(rows)
        data.write_text("\n".join(rows) + "\n")
    if args.drill and not data.exists():
        data.write_text("".join(json.dumps(r) + "\n" for r in drills(args.drill)))
    if args.scratch and not (work / "init").exists():
        random_model(work / "init", args.model, tie=args.tie)
    if args.scratch:
        args.model = str(work / "init")
    if not data.exists():
        real = (ROOT / "data" / "tiny_sft_train.jsonl").read_text().splitlines()
        share, make = (args.swap, swap_dialogues) if args.swap else (args.synthetic, synthetic_dialogues)
        more = {"per_object": args.swap_per_object} if args.swap else {}
        extra = [json.dumps(r) for r in make(int(len(real) * share / (1 - share)), **more)]
        rows = real + extra
        random.Random(0).shuffle(rows)
        data.write_text("\n".join(rows) + "\n")
        print(f"{len(real)} world dialogues + {len(extra)} {make.__name__} -> {data}", flush=True)
    run = work / "run"
    cmd = [
        sys.executable,
        "-m",
        "align.train_sft",
        "recipe=tiny_chat_pretrain" if args.repeat else "recipe=tiny_chat_sft",
        f"model.name_or_path={args.model}",
        f"data.dataset={data}",
        f"train.output_dir={run}",
        f"train.max_steps={args.steps}",
        f"train.learning_rate={args.lr}",
        f"train.save_steps={args.every}",
        f"train.eval_steps={args.every}",
        *(["data.eval_dataset=null", "behaviour.prompts=null"] if args.drill else []),
        *(["train.save_total_limit=null", "data.eval_fraction=0.01"] if args.repeat else []),
        "train.resume_from_checkpoint=latest" if (run / "config.yaml").exists() else "train.overwrite_output_dir=true",
    ]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    results = work / "probes.jsonl"
    done = {json.loads(x)["model"] for x in results.read_text().splitlines()} if results.exists() else set()
    for ckpt in sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        if str(ckpt) not in done:
            with results.open("a") as f:
                f.write(json.dumps(probe(str(ckpt), args.tokenizer, args.answers)) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("probe", help="probe one model directory")
    pr.add_argument("model")
    pr.add_argument("--tokenizer", default=None, help="a checkpoint holds no tokenizer: the model's one")
    pr.add_argument("--answers", type=int, default=60, help="held-out-task prompts sampled greedily (0: none)")
    tr = sub.add_parser("train", help="continued SFT with synthetic dialogues, then probe every checkpoint")
    tr.add_argument("--work", required=True)
    tr.add_argument("--model", default="data/tiny_chat")
    tr.add_argument("--tokenizer", default="data/tiny_chat")
    tr.add_argument("--synthetic", type=float, default=0.5, help="share of synthetic dialogues in the mix")
    tr.add_argument("--swap", type=float, default=0.0, help="share of training-swap dialogues instead (swaps())")
    tr.add_argument("--swap-per-object", type=int, default=None, help="with --swap: families an object trains with")
    tr.add_argument("--steps", type=int, default=1000)
    tr.add_argument("--every", type=int, default=250)
    tr.add_argument("--lr", type=float, default=5e-4)
    tr.add_argument("--answers", type=int, default=60)
    tr.add_argument("--repeat", type=int, default=0, help="pretrain on this many repeat texts instead")
    tr.add_argument("--with-world", action="store_true", help="with --repeat: the world's pretraining text too")
    tr.add_argument("--drill", type=int, default=0, help="train on this many pure copying drills instead")
    tr.add_argument("--scratch", action="store_true", help="start from a random model of --model's shape")
    tr.add_argument("--tie", action="store_true", help="with --scratch: tie the output head to the embedding")
    ind = sub.add_parser("induction", help="the copying skill in isolation (see induction())")
    ind.add_argument("--steps", type=int, default=800)
    ind.add_argument("--variable", action="store_true", help="copies at offsets that differ per example")
    ind.add_argument("--every", type=int, default=100)
    args = p.parse_args(argv)
    if args.cmd == "induction":
        induction(args.steps, args.variable, args.every)
    elif args.cmd == "probe":
        probe(args.model, args.tokenizer, args.answers)
    else:
        train(args)


if __name__ == "__main__":
    main()
