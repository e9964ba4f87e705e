"""align models in EleutherAI's lm-evaluation-harness (``pip install -e ".[lm_eval]"``, lm-eval 0.4.x).

    python -m align.lm_eval --model_args model=outputs/demo/final,n_samples=32 --tasks TASK [lm-eval options ...]
    python -m align.lm_eval --model_args model=data/tiny_chat --tasks everyday_choice --include_path data/lm_eval \\
        --apply_chat_template

``python -m align.lm_eval`` is lm-eval's own command line with ``--model align`` registered and preset; every
other lm-eval option (``--limit``, ``--output_path``, ``--log_samples``, ``--num_fewshot`` ...) passes through.
In Python, ``lm_eval.simple_evaluate(model=AlignLM(model=...), tasks=[...])`` or ``model="align"`` after
``import align.lm_eval``.

What each request type does (docs/evaluation.md):

- ``loglikelihood`` (context, continuation): the continuation is scored as the response of a prompt/response
  record by ``align.score``'s estimator (same encoding, same rounds): ``n_samples`` mask draws, seeded per request
  by (``seed``, a hash of its tokens), so a rerun, a different batch size or order, and another model all see the
  same masks. The continuation is a bare continuation (no EOS) unless ``response_eos=true``. ``is_greedy`` comes
  from one forward with the whole continuation masked (LLaDA's check; ``greedy=false`` skips it).
- ``loglikelihood_rolling``: the text cut into lm-eval's rolling windows of ``max_length`` tokens after a BOS,
  each window scored given the tokens before it; the sum of the windows' estimates (their errors add in quadrature).
- ``generate_until``: ``align.sampler.generate`` with this model's ``steps``/``gen_length``/``block_length``/
  ``temperature``/``remasking``, one request at a time with a generator seeded by ``seed`` (so the output equals
  ``python -m align.sampler ... chat_template=false`` on the same context), cut at EOS and at the request's
  ``until`` strings.

The Monte Carlo standard error of every log-likelihood is kept in ``AlignLM.scores`` (and written to
``scores_file`` when given, one JSON line per request).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from align.cli import help_text
from align.config import SamplerSettings, build, opt, sampler_default
from align.data import content_key, pad_rows
from align.models import load_model, logits_fn, spec_for, token_scorer, tokenizer_source
from align.models.tokenizer import load_tokenizer
from align.sampler import decode, generate
from align.score import ScoreConfig, ScoringSettings, mean_se, run_rounds

log = logging.getLogger(__name__)
INSTANCES: list | None = None  # under the command line: the AlignLM objects it made


@dataclass
class LMEvalOptions(ScoringSettings, SamplerSettings):
    """lm-eval's model args for ``--model align``: the model, its log-likelihood estimator (``loglikelihood``: a
    request is seeded by ``seed`` with a hash of its tokens) and the sampler of ``generate_until`` (greedy by
    default, seeded by ``seed``; lm-eval's max_gen_toks is not used)."""

    gen_length: int = sampler_default("gen_length", 32)
    steps: int = sampler_default("steps", 32)
    temperature: float = sampler_default("temperature", 0.0)
    remasking: str = sampler_default("remasking", "low_confidence")
    model: str = opt("data/tiny_chat", "hub id, directory, tiny:llada, or a training output (final/, checkpoint-N)")
    tokenizer: str | None = opt(None, "defaults to the model's, or its base model's")
    dtype: str = opt("float32", "model weights", ("float32", "bfloat16", "float16"))
    device: str | None = opt(None, "cuda, cuda:1, cpu (default: this process's accelerator)")
    trust_remote_code: bool = opt(False, "allow checkpoint code for model types align has no native class for")
    max_length: int | None = opt(
        None, "tokens per sequence (default: the model's maximum); contexts are cut from the left to fit"
    )
    response_eos: bool = opt(False, "score a continuation EOS-terminated, as align trains responses")
    greedy: bool = opt(True, "compute is_greedy (one extra forward per request)")
    scores_file: str | None = opt(
        None,
        "write each log-likelihood with its standard error here (jsonl; with several "
        "processes, one file per rank: NAME.rankR.jsonl)",
    )
    progress_bar: bool = opt(True, "show the requests' progress")


def parse_options(kwargs: dict) -> LMEvalOptions:
    """Model args (strings from the command line, or typed values) as typed options; unknown keys fail naming them."""
    kwargs = dict(kwargs)
    kwargs.pop("max_batch_size", None)  # lm-eval's automatic batch size search: not used
    if str(kwargs.get("batch_size")).startswith("auto"):
        log.warning("batch_size=auto is not supported: using %s", LMEvalOptions.batch_size)
        kwargs.pop("batch_size")
    options = build(LMEvalOptions, kwargs)
    options.check_scoring()
    options.check_sampler()
    return options


def _max_length(model) -> int:
    config = getattr(model, "config", None)
    for key in ("max_sequence_length", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 4096


@register_model("align")
class AlignLM(LM):
    """An align model (LLaDA, Dream, a LoRA output, a checkpoint) as an lm-eval ``LM``."""

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """The model args over lm-eval's own ``--batch_size``/``--device`` (lm-eval passes them beside the model
        args; a key in both would otherwise be an error)."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **arg_dict})

    @classmethod
    def from_parts(cls, model, tokenizer, spec, scorer, device="cpu", **options) -> AlignLM:
        """An ``AlignLM`` over given parts (see :meth:`attach`) instead of a loaded model, in one process."""
        lm = cls.__new__(cls)
        LM.__init__(lm)
        lm.options = parse_options(options)
        lm.attach(model, tokenizer, spec, scorer, device)
        return lm

    def __init__(self, **kwargs):
        super().__init__()
        self.options = options = parse_options(kwargs)
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        self._rank, self._world_size = state.process_index, state.num_processes
        device = torch.device(options.device) if options.device else state.device
        try:
            model = load_model(options.model, dtype=options.dtype, trust_remote_code=options.trust_remote_code)
            tokenizer = load_tokenizer(
                options.tokenizer or tokenizer_source(options.model), trust_remote_code=options.trust_remote_code
            )
        except ValueError as e:  # a failed hub load, an unusable directory
            raise FileNotFoundError(str(e)) from None
        model = model.to(device).eval()
        self.attach(model, tokenizer, spec_for(model), token_scorer(model), device)

    def attach(self, model, tokenizer, spec, scorer, device) -> None:
        """Use ``model`` (logits for ``is_greedy`` and generation), ``scorer`` (an ``estimators.TokenScorer``: the
        log-likelihoods), ``tokenizer`` and ``spec`` (mask, EOS and pad ids). The tests attach toy models here."""
        o = self.options
        self.model, self.tokenizer, self.spec, self.scorer, self._device = model, tokenizer, spec, scorer, device
        self.max_length = o.max_length or _max_length(model)
        bos = getattr(tokenizer, "bos_token_id", None)
        self.prefix_token = spec.eos_token_id if bos is None else bos  # what a rolling text is conditioned on
        self.scores: list[dict] = []  # every log-likelihood with its standard error, in request order
        if INSTANCES is not None:  # the command line's, for its summary after lm-eval's table
            INSTANCES.append(self)
        self.score_config = ScoreConfig(data="lm-eval", progress_bar=o.progress_bar, **o.scoring_settings())

    # ------------------------------------------------------------------ lm-eval's interface
    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.name_or_path).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [self.encode_pair(*r.args) for r in requests]
        logp, se, n = self.estimate(pairs)
        greedy = self.is_greedy(pairs) if self.options.greedy else [False] * len(pairs)
        for r, p, lp, s, k, g in zip(requests, pairs, logp, se, n, greedy):
            self._record("loglikelihood", r.args, p, lp, s, k, g, task=r.task_name, doc_id=r.doc_id)
        out = [(lp, g) for lp, g in zip(logp, greedy)]
        self._flush()
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for r in requests:
            (text,) = r.args
            tokens = self.tokenizer(text, add_special_tokens=False).input_ids
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token, max_seq_len=self.max_length - 1, context_len=1
                )
            ]
            # (lm-eval's windows are for a causal model, whose input omits the last predicted token: context plus
            # prediction is max_seq_len + 1 tokens, all of which a masked-diffusion model takes in)
            logp, se, n = self.estimate(windows)
            total = sum(logp)
            self._record(
                "loglikelihood_rolling",
                r.args,
                None,
                total,
                math.sqrt(sum(s * s for s in se)),
                sum(n),
                None,
                windows=len(windows),
                tokens=len(tokens),
                task=r.task_name,
                doc_id=r.doc_id,
            )
            out.append(total)
        self._flush()
        return out

    def generate_until(self, requests) -> list[str]:
        o = self.options
        ignored = set()
        out = []
        for r in requests:
            context, gen_kwargs = r.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            ignored |= set(gen_kwargs)
            ids = self.tokenizer(context, add_special_tokens=False).input_ids
            ids = ids[-(self.max_length - o.gen_length) :] if self.max_length > o.gen_length else ids
            seqs = generate(
                self.model,
                torch.tensor([ids], device=self._device),
                **o.sampler_kwargs(),
                generator=torch.Generator().manual_seed(o.seed),
            )
            text = self.decode(seqs, len(ids))
            out.append(cut_at(text, until))
        if ignored:
            log.warning(
                "generate_until: %s taken from the model args (steps, gen_length, block_length, temperature, "
                "remasking), not from the task's generation kwargs %s",
                type(self).__name__,
                sorted(ignored),
            )
        return out

    # ------------------------------------------------------------------ pieces
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids), tokenized apart as ``align.score`` tokenizes a prompt and its response,
        with the context's trailing spaces moved to the continuation (lm-eval's convention) and the context cut
        from the left to fit ``max_length``. An empty context is allowed; an empty continuation is not."""
        spaces = len(context) - len(context.rstrip(" "))
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        ctx = self.tokenizer(context, add_special_tokens=False).input_ids if context else []
        cont = self.tokenizer(continuation, add_special_tokens=False).input_ids
        if self.options.response_eos:
            cont = cont + [self.spec.eos_token_id]
        if not cont:
            raise ValueError(f"loglikelihood request with an empty continuation (context {context[-60:]!r})")
        if len(cont) > self.max_length:
            raise ValueError(f"continuation of {len(cont)} tokens does not fit max_length={self.max_length}")
        return ctx[len(ctx) + len(cont) - self.max_length :] if len(ctx) + len(cont) > self.max_length else ctx, cont

    def estimate(self, pairs: list[tuple[list[int], list[int]]]) -> tuple[list[float], list[float], list[int]]:
        """log p(continuation | context) of each pair with its standard error and draws: ``align.score``'s rounds,
        each distinct pair once, seeded by the hash of its tokens."""

        unique = list(dict.fromkeys((tuple(c), tuple(x)) for c, x in pairs))
        records = [
            {"index": i, "key": content_key(list(c), [list(x)]), "prompt_ids": list(c), "responses": [list(x)]}
            for i, (c, x) in enumerate(unique)
        ]
        records.sort(key=lambda r: -(len(r["prompt_ids"]) + len(r["responses"][0])))  # similar lengths batch together
        from tqdm.auto import tqdm

        bar = tqdm(total=len(records), desc="log-likelihoods", disable=not self.score_config.progress_bar or self.rank)
        scored = run_rounds(
            records,
            [self.scorer],
            cfg=self.score_config,
            mask_token_id=self.spec.mask_token_id,
            pad_token_id=self.spec.pad_token_id,
            device=self._device,
            progress=bar,
        )
        bar.close()
        result = {}
        for rec, res in zip(records, scored):
            rounds = res["rounds"] if self.score_config.stratified else None
            mean, se = mean_se(res["samples"][0, 0], rounds)
            result[unique[rec["index"]]] = (mean.item(), se.item(), res["samples"].shape[-1])
        values = [result[(tuple(c), tuple(x))] for c, x in pairs]
        return [v[0] for v in values], [v[1] for v in values], [v[2] for v in values]

    @torch.no_grad()
    def is_greedy(self, pairs: list[tuple[list[int], list[int]]]) -> list[bool]:
        """Whether the whole continuation is the argmax with every continuation position masked (LLaDA's check)."""

        fn = logits_fn(self.model)
        out = []
        for s in range(0, len(pairs), self.options.batch_size):
            chunk = pairs[s : s + self.options.batch_size]
            ids, attention, response = pad_rows(chunk, self.spec.pad_token_id)
            noised = torch.where(response, self.spec.mask_token_id, ids).to(self._device)
            predicted = fn(noised, attention.to(self._device)).argmax(-1).cpu()
            out += [bool((predicted[i][response[i]] == ids[i][response[i]]).all()) for i in range(len(chunk))]
        return out

    def decode(self, sequences: torch.Tensor, prompt_length: int) -> str:
        return decode(self.tokenizer, sequences, prompt_length, self.spec.eos_token_id)[0]

    def _record(self, kind, args, pair, logp, se, n, greedy, **extra):
        row = {"request_type": kind, "arguments": list(args), "logp": logp, "se": se, "n_samples": n}
        if pair is not None:
            row["tokens"] = len(pair[1])
        if greedy is not None:
            row["is_greedy"] = greedy
        row.update(extra)
        self.scores.append(row)

    def _flush(self) -> None:
        if self.options.scores_file and self.scores:
            path = Path(self.options.scores_file)
            if self._world_size > 1:  # each rank scores its share of the requests: one file each
                path = path.with_name(f"{path.stem}.rank{self._rank}{path.suffix}")
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as f:
                for row in self.scores:
                    f.write(json.dumps(row) + "\n")

    # ------------------------------------------------------------------ several processes (lm-eval's evaluator)
    def all_gather(self, tensor):
        if self._world_size == 1:
            return tensor
        tensor = tensor.reshape(1) if tensor.dim() == 0 else tensor  # one value per rank, concatenated
        parts = [torch.zeros_like(tensor) for _ in range(self._world_size)]
        torch.distributed.all_gather(parts, tensor)
        return torch.cat(parts)

    def gather_object(self, obj, dst=0):
        if self._world_size == 1:
            return [obj]
        out = [None] * self._world_size if self._rank == dst else None
        torch.distributed.gather_object(obj, out, dst=dst)
        return out

    def barrier(self):
        if self._world_size > 1:
            torch.distributed.barrier()


def close_decisions(scores: list[dict], z: float = 2.0) -> tuple[int, int]:
    """(documents with several log-likelihood requests, those whose two best continuations are within ``z``
    combined Monte Carlo standard errors): the multiple-choice decisions the mask draws could still change."""
    from collections import defaultdict

    docs = defaultdict(list)
    for row in scores:
        if row["request_type"] == "loglikelihood" and row.get("doc_id") is not None:
            docs[(row.get("task"), row["doc_id"], row["arguments"][0])].append(row)
    several = [sorted(rows, key=lambda r: -r["logp"]) for rows in docs.values() if len(rows) > 1]
    close = sum(a["logp"] - b["logp"] < z * math.hypot(a["se"], b["se"]) for a, b, *_ in several)
    return len(several), close


def summary(scores: list[dict]) -> str:
    """One paragraph on the Monte Carlo error of an evaluation's log-likelihoods."""
    if not scores:
        return "align: no log-likelihood requests"
    mean_se = sum(r["se"] for r in scores if not math.isnan(r["se"])) / len(scores)
    line = (
        f"align: {len(scores)} log-likelihoods, mean Monte Carlo standard error {mean_se:.3g} nats "
        f"({scores[0]['n_samples']} draws each)"
    )
    docs, close = close_decisions(scores)
    if docs:
        line += (
            f"; {close}/{docs} multiple-choice decisions have their two best choices within 2 standard errors "
            f"(the draws could change them: raise n_samples or set stratified=true)"
        )
    return line


def cut_at(text: str, until: list[str]) -> str:
    """``text`` up to the first occurrence of any stop sequence."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with ``--model align`` preset (``--model_args`` are :class:`LMEvalOptions`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv in (["-h"], ["--help"]) or "--help-align" in argv:
        print(
            help_text(
                LMEvalOptions, "python -m align.lm_eval --model_args key=value,... --tasks TASKS [lm-eval options]"
            )
        )
        print("\nlm-eval's own options: python -m lm_eval run --help")
        return
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    if "--model" not in given:
        argv = ["--model", "align", *argv]
    if "--device" not in given:  # lm-eval's own default is cuda:0, also on a machine without one
        argv += ["--device", "cuda" if torch.cuda.is_available() else "cpu"]
    from lm_eval.__main__ import cli_evaluate

    global INSTANCES
    INSTANCES = []
    sys.argv = ["lm-eval", "run", *argv]
    cli_evaluate()
    for lm in INSTANCES:
        if lm.scores and lm.rank == 0:
            share = f" (rank 0's share of {lm.world_size} ranks)" if lm.world_size > 1 else ""
            print(summary(lm.scores).replace("align:", f"align{share}:", 1))


if __name__ == "__main__":
    main()
