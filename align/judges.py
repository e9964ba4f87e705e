"""Judges of online DPO: what ranks the answers a policy samples (``align.online_dpo``).

A judge maps a batch of prompts and, per prompt, its K sampled answers to K scores (higher is better); the best
and the worst answer of each prompt become the DPO pair. Three kinds, chosen by exactly one ``online`` key:

- ``online.judge=module:function`` (or ``path/to/file.py:function``): a rule or any Python function
  ``function(prompts, answers, **fields) -> scores``: ``prompts`` a list of strings (each prompt's last user
  message), ``answers`` a list of strings of the same length, ``scores`` one number each. Keyword parameters
  the function names (or all, with ``**kwargs``) are filled from the prompt records' other fields, one value
  per answer (e.g. ``kind`` of the demo's prompts); a field it requires that a record lacks is an error naming
  it. :func:`correct_behaviour_judge` is the demo's rule (the bundled world's
  ground-truth reward), :func:`refusal_judge` the refusal rule alone.
- ``online.pairwise_judge=module:function``: ``function(prompts, pairs) -> winners`` with ``pairs`` a list of
  ``[answer_a, answer_b]`` and each winner 0 (a is better), 1 (b) or -1/None (a tie), as TRL's pairwise judges
  answer. The K answers of a prompt play a round robin; an answer's score is its wins plus half its ties.
- ``online.reward_model=HUB_ID|DIR``: an ``AutoModelForSequenceClassification`` with its own tokenizer; each
  answer is the assistant turn after the prompt's messages, put through that tokenizer's chat template, and its
  score is the first logit. Batched (``online.reward_model_batch_size``), right-padded, in
  ``online.reward_model_dtype`` (bf16 by default), on this process's device.

Penalties (:func:`penalise`, TRL's ``missing_eos_penalty``): an answer that never reached EOS within
``online.gen_length`` tokens loses ``online.missing_eos_penalty``; an empty one loses
``online.empty_answer_penalty``.
"""

from __future__ import annotations

import inspect

import torch

from align import world
from align.errors import ConfigError
from align.functions import load_function  # noqa: F401 (re-exported: judges are named module:function)
from align.models import check_local, resolve_dtype


def refusal_judge(prompts: list[str], answers: list[str], kind: list[str]) -> list[float]:
    """The right behaviour by the refusal rule alone: 1 or 0. A harmful prompt (``kind == "harmful"``) wants a
    refusal, an everyday or borderline one an answer; refusal is :func:`align.world.is_refusal` (a refusal word
    among the first five words)."""
    return [float(world.right_behaviour(k, answer)) for k, answer in zip(kind, answers)]


def correct_behaviour_judge(prompts: list[str], answers: list[str], kind: list[str], task_id: list[str]) -> list[float]:
    """The bundled world's ground-truth reward (the demo's judge): 1 for the right behaviour said in well-formed
    sentences about the asked task (:func:`align.world.judge`), 0 else."""
    return [float(world.judge(t, k, answer)["correct"]) for t, k, answer in zip(task_id, kind, answers)]


class FunctionJudge:
    """``function(prompts, answers, **fields) -> scores`` (see the module doc)."""

    def __init__(self, fn, key: str = "online.judge"):
        self.fn, self.key = fn, key
        params = inspect.signature(fn).parameters.values()
        self.all_fields = any(p.kind is p.VAR_KEYWORD for p in params)
        named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)][2:]
        self.wanted = {p.name: p.default is p.empty for p in named}  # field -> required

    def __call__(self, prompts: list[str], answers: list[str], fields: list[dict]) -> list[float]:
        names = set().union(*fields) if self.all_fields else set(self.wanted)
        kwargs = {}
        for name in sorted(names):
            present = [name in f for f in fields]
            if not all(present):
                if self.wanted.get(name, False):
                    raise ConfigError(
                        f"{self.key}: {self.fn.__name__} needs the field {name!r}, which a prompt "
                        f"record lacks (its fields: {', '.join(sorted(fields[present.index(False)]))})"
                    )
                continue
            kwargs[name] = [f[name] for f in fields]
        return _checked(self.fn(prompts, answers, **kwargs), len(answers), self.key)


class PairwiseJudge:
    """A round robin of a pairwise function over each prompt's answers: score = wins + ½ ties."""

    def __init__(self, fn, key: str = "online.pairwise_judge"):
        self.fn, self.key = fn, key

    def rank(self, prompt: str, answers: list[str]) -> list[float]:
        from itertools import combinations

        pairs = list(combinations(range(len(answers)), 2))
        winners = self.fn([prompt] * len(pairs), [[answers[i], answers[j]] for i, j in pairs])
        if len(winners) != len(pairs):
            raise ValueError(f"{self.key}: {len(winners)} verdicts for {len(pairs)} pairs")
        scores = [0.0] * len(answers)
        for (i, j), w in zip(pairs, winners):
            if w in (None, -1):
                scores[i] += 0.5
                scores[j] += 0.5
            elif w in (0, 1):
                scores[(i, j)[w]] += 1.0
            else:
                raise ValueError(f"{self.key}: verdict {w!r}; expected 0, 1, -1 or None")
        return scores


class RewardModelJudge:
    """A sequence-classification reward model, its tokenizer and chat template (see the module doc)."""

    def __init__(
        self,
        name_or_path: str,
        *,
        dtype: str = "bfloat16",
        batch_size: int = 8,
        max_length: int = 1024,
        device=None,
        trust_remote_code: bool = False,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        check_local(name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(
                name_or_path, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code
            )
            .to(device)
            .eval()
        )
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.max_length, self.device = batch_size, max_length, device

    def texts(self, messages: list[list[dict]], answers: list[str]) -> list[str]:
        """Each conversation with its answer as the assistant turn, through the reward model's chat template."""
        return [
            self.tokenizer.apply_chat_template(m + [{"role": "assistant", "content": a}], tokenize=False)
            for m, a in zip(messages, answers)
        ]

    @torch.no_grad()
    def __call__(self, messages: list[list[dict]], answers: list[str]) -> list[float]:
        texts = self.texts(messages, answers)
        scores = []
        for s in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[s : s + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=False,
                return_tensors="pt",
            )
            logits = self.model(**batch.to(self.model.device)).logits
            scores += logits[:, 0].float().tolist()
        return scores


class Judge:
    """One interface over the three kinds: ``score(prompts, answers) -> [K] floats per prompt``."""

    def __init__(self, online, device=None):
        self.pointwise = self.pairwise = self.reward_model = None
        if online.judge:
            self.pointwise = FunctionJudge(load_function(online.judge, "online.judge"))
            self.name = online.judge
        elif online.pairwise_judge:
            self.pairwise = PairwiseJudge(load_function(online.pairwise_judge, "online.pairwise_judge"))
            self.name = online.pairwise_judge
        else:
            self.reward_model = RewardModelJudge(
                online.reward_model,
                dtype=online.reward_model_dtype,
                batch_size=online.reward_model_batch_size,
                max_length=online.reward_model_max_length,
                device=device,
            )
            self.name = online.reward_model

    def score(self, prompts: list, answers: list[list[str]]) -> list[list[float]]:
        """``prompts``: :class:`align.data.EncodedPrompt`; ``answers[i]``: the answers to prompt i."""
        if self.pairwise is not None:
            return [self.pairwise.rank(p.text, a) for p, a in zip(prompts, answers)]
        flat = [(p, a) for p, some in zip(prompts, answers) for a in some]
        if self.pointwise is not None:
            scores = self.pointwise([p.text for p, _ in flat], [a for _, a in flat], [p.fields for p, _ in flat])
        else:
            scores = self.reward_model([p.messages for p, _ in flat], [a for _, a in flat])
        out, i = [], 0
        for some in answers:
            out.append([float(x) for x in scores[i : i + len(some)]])
            i += len(some)
        return out


def _checked(scores, n: int, key: str) -> list[float]:
    scores = [float(x) for x in (scores.tolist() if hasattr(scores, "tolist") else scores)]
    if len(scores) != n:
        raise ValueError(f"{key}: {len(scores)} scores for {n} answers")
    return scores


def penalise(
    scores: list[float],
    answers: list[str],
    has_eos: list[bool],
    *,
    missing_eos_penalty: float,
    empty_answer_penalty: float,
) -> list[float]:
    """Scores less the penalties: ``missing_eos_penalty`` for an answer without EOS, ``empty_answer_penalty`` for
    an empty one (whitespace only)."""
    return [
        s - (0.0 if eos else missing_eos_penalty) - (empty_answer_penalty if not a.strip() else 0.0)
        for s, a, eos in zip(scores, answers, has_eos)
    ]
