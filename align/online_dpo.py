"""Online DPO for masked-diffusion LMs: DPO on the policy's own samples, ranked by a judge.

    python -m align.train_online_dpo recipe=demo_online
    accelerate launch align/train_online_dpo.py recipe=demo_online [section.key=value ...]

Each micro-step, for every prompt of the micro-batch:

1. the policy (in eval mode, without grad) samples ``online.num_generations`` K ≥ 2 answers with LLaDA's sampler
   (``align.sampler``: ``online.steps``, ``gen_length``, ``block_length``, ``temperature``, ``remasking``), from
   a generator seeded by (train.seed, prompt id, step): a resumed run samples exactly what the uninterrupted one
   did, and a prompt's answers do not depend on the world size or on the other prompts of its batch (each
   prompt's K answers are one sampler call). With several ranks the early EOS stop is taken by all ranks
   together, so every rank runs the same forwards (ZeRO-3 gathers weights collectively in each). With
   ``online.round_steps`` K > 1 the sampling policy is the policy at the start of the step's round (after step
   r·K), its trainable weights kept aside and swapped in for sampling (``RoundPolicy``; saved in a checkpoint
   written inside a round, so a resume samples with them);
2. a judge scores the answers (``align.judges``: a function, a pairwise function or a reward model), less the
   missing-EOS and empty-answer penalties;
3. the best and the worst answer (first of equals) are the pair; a prompt whose answers all score the same, or
   whose best and worst are the same tokens, is a tie: its pair gets weight 0 and is counted (``tie_rate``);
4. the coupled DPO step of ``align.dpo`` on the pairs (the estimator, loss and reference of the ``estimator``
   and ``loss`` sections; the reference is the adapter disabled or the frozen copy). The micro-batch's loss is
   the sum of the kept pairs' losses over the number of prompts, so a pair weighs the same in every batch.

An answer is its tokens up to and including the first EOS (all ``gen_length`` tokens when it has none); the two
answers of a pair are EOS-extended to a common length, as offline pairs are.

Logged every step: the DPO metrics of the kept pairs (``rewards/*``, ``logps/*``, ``margin/sample_variance``),
``judge/chosen_score``, ``judge/rejected_score``, ``judge/score_gap``, ``judge/mean_score`` (all answers),
``tie_rate``, ``answer_length`` (tokens, EOS included), ``answers_missing_eos`` and ``generation_time_share``
(sampling and judging over the step's time). Every sample is written to ``output_dir/online_samples.jsonl``.

At evaluation each held-out prompt gets one answer from the policy and one from the reference, sampled with the
same seed (``online.eval_seed``, prompt id), both judged: ``eval/judge/score``, ``eval/judge/reference_score``,
``eval/win_rate`` (policy over reference, ties ½) and ``eval/answer_length``, with standard errors over prompts
(``/se``; for the win rate the binomial one when there are no ties).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from align.checkpoints import CheckpointError
from align.config import (
    ConfigError,
    DataSourceArgs,
    EstimatorArgs,
    LossArgs,
    SamplerSettings,
    TrainingConfig,
    opt,
    sampler_default,
)
from align.config_checks import validate_estimators, validate_loss
from align.data import EVAL_EPOCH, PROMPT_FORMATS, Encoded, build_prompt_dataset, collate, common_length
from align.data.order import _seed
from align.dpo import DPOObjective
from align.functions import load_function
from align.judges import Judge, penalise
from align.models import unwrap
from align.sampler import generate
from align.trainer import Trainer

ROUND_FILE = "online_round.safetensors"  # in a checkpoint written inside a round: the round's sampling weights
SAMPLE_SALT, EVAL_SALT = 0x5A3D, 0xE7A1  # keep training and evaluation samples apart from each other and from masks
PAIR_KEYS = DPOObjective.stat_keys[1:]  # means over kept pairs (the loss is over all prompts)


@dataclass
class PromptDataArgs(DataSourceArgs):
    """Prompts (online DPO): any records with a ``prompt`` field or a ``messages`` conversation."""

    dataset: str = opt(
        "data/demo_online_prompts.jsonl", "hub id, local .jsonl/.json/.parquet/.csv file, or save_to_disk directory"
    )
    format: str = opt(
        "auto",
        "prompt: a 'prompt' field (string or messages); messages: a conversation, a last "
        "assistant turn dropped; auto: prompt when the record has one, else messages",
        PROMPT_FORMATS,
    )


@dataclass
class OnlineArgs(SamplerSettings):
    """What online DPO samples with (the sampler's settings: temperature > 0, so that K answers differ) and judges
    by."""

    gen_length: int = sampler_default("gen_length", 64)
    block_length: int = sampler_default("block_length", 32)
    steps: int = sampler_default("steps", 64)
    judge: str | None = opt(
        None,
        "module:function or path/file.py:function scoring answers: "
        "function(prompts, answers, **record fields) -> scores (align.judges)",
    )
    pairwise_judge: str | None = opt(
        None,
        "module:function judging pairs: function(prompts, [[a, b], ...]) -> 0, 1 or "
        "-1 (tie) each; K answers play a round robin (wins + ½ ties)",
    )
    reward_model: str | None = opt(
        None,
        "hub id or directory of an AutoModelForSequenceClassification (its own "
        "tokenizer and chat template); score: the first logit",
    )
    reward_model_dtype: str = opt("bfloat16", "reward model weights dtype", ("bfloat16", "float32", "float16"))
    reward_model_batch_size: int = opt(8, "answers per reward-model forward", trajectory=False)
    reward_model_max_length: int = opt(1024, "reward-model input tokens kept (truncation keeps the start)")
    num_generations: int = opt(4, "answers sampled per prompt per step (K >= 2): the best and worst are the pair")
    missing_eos_penalty: float = opt(0.0, "subtracted from the score of an answer with no EOS in gen_length tokens")
    empty_answer_penalty: float = opt(0.0, "subtracted from the score of an empty answer")
    eval_seed: int = opt(
        0, "seeds the held-out answers of policy and reference (with the prompt id), the same at every evaluation"
    )
    round_steps: int = opt(
        1,
        "answers are sampled by the policy as it was at the start of their round of "
        "round_steps optimizer steps: 1 samples with each step's own policy (online); K > 1 "
        "holds the sampling policy for K steps (semi-online, iterative DPO's rounds)",
    )


@dataclass
class OnlineDPOConfig(TrainingConfig):
    """Online DPO (``align.train_online_dpo``)."""

    data: PromptDataArgs = field(default_factory=PromptDataArgs)
    online: OnlineArgs = field(default_factory=OnlineArgs)
    estimator: EstimatorArgs = field(default_factory=EstimatorArgs)
    loss: LossArgs = field(default_factory=LossArgs)

    def validate(self) -> None:
        """Checks beyond types (``align.config.load_config`` calls it), each naming the key."""
        validate_estimators(self, (("estimator", 1),))
        validate_loss(self)
        o = self.online
        judges = [k for k in ("judge", "pairwise_judge", "reward_model") if getattr(o, k)]
        if len(judges) != 1:
            raise ConfigError(
                f"online: set exactly one of online.judge, online.pairwise_judge, online.reward_model "
                f"(got {', '.join(judges) or 'none'})"
            )
        for key in ("judge", "pairwise_judge"):  # a typo fails here, before config.yaml is written
            if getattr(o, key):
                load_function(getattr(o, key), f"online.{key}")
        if o.num_generations < 2:
            raise ConfigError(
                f"online.num_generations must be >= 2 (a pair is the best and the worst of them), got "
                f"{o.num_generations}"
            )
        o.check_sampler("online.")
        if not (math.isfinite(o.temperature) and o.temperature > 0):
            raise ConfigError(
                f"online.temperature must be > 0 (greedy sampling gives K equal answers), got {o.temperature}"
            )
        for key in ("reward_model_batch_size", "reward_model_max_length", "round_steps"):
            if getattr(o, key) < 1:
                raise ConfigError(f"online.{key} must be >= 1, got {getattr(o, key)}")
        for key in ("missing_eos_penalty", "empty_answer_penalty"):
            if not math.isfinite(getattr(o, key)):
                raise ConfigError(f"online.{key} must be finite, got {getattr(o, key)}")
        if self.train.precompute_ref_log_probs:
            raise ConfigError(
                "train.precompute_ref_log_probs=true: online DPO's pairs are sampled in the step, so "
                "their reference log-probs cannot be computed ahead; set it to false"
            )
        if self.loss.rpo_alpha is not None:
            raise ConfigError(
                "loss.rpo_alpha: the RPO term (NLL of the chosen answers) is not offered for online "
                "DPO, whose chosen answers are the policy's own samples; set it to null"
            )


@dataclass
class Answer:
    ids: list[int]  # up to and including the first EOS (all generated tokens when there is none)
    text: str
    has_eos: bool


def _gathered(p, modify: bool = False):
    """A ZeRO-3 parameter gathered whole on every rank (written back from rank 0 when ``modify``); others as they
    are. Collective: every rank calls it for the same parameters."""
    if not hasattr(p, "ds_id"):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([p], modifier_rank=0 if modify else None)


class RoundPolicy:
    """The sampling policy of ``online.round_steps`` K > 1: the trainable weights as they were after step r·K (the
    start of the round), kept on their device (one more copy of the trainable weights: the adapter under LoRA) and
    swapped in for sampling, then out. Every rank holds the whole weights and swaps them together (under ZeRO-3
    one parameter gathered at a time, written back through DeepSpeed)."""

    def __init__(self, k: int):
        self.k, self.step, self.weights = k, None, None

    @staticmethod
    def _params(trainer) -> list:
        return [(n, p) for n, p in unwrap(trainer.model, keep_peft=True).named_parameters() if p.requires_grad]

    def begin(self, trainer) -> None:
        """Before a training step samples: at a round's first step, its weights are the current ones."""
        start = trainer.global_step - trainer.global_step % self.k
        if self.step == start:
            return
        if trainer.global_step != start:  # load_state gives a resume inside a round its weights
            raise RuntimeError(
                f"online.round_steps={self.k}: step {trainer.global_step + 1} samples with the "
                f"weights after step {start}, which this process does not hold"
            )
        with torch.no_grad():
            self.weights = {}
            for n, p in self._params(trainer):
                with _gathered(p):
                    self.weights[n] = p.detach().clone()
        self.step = start

    @contextmanager
    def active(self, trainer):
        """The round's weights in the model (nothing to do at the round's first step)."""
        if trainer.global_step == self.step:
            yield
            return
        current = self._swap(trainer, self.weights)
        try:
            yield
        finally:
            self._swap(trainer, current)

    def _swap(self, trainer, weights: dict) -> dict:
        old = {}
        with torch.no_grad():
            for n, p in self._params(trainer):
                with _gathered(p, modify=True):
                    old[n] = p.detach().clone()
                    p.data.copy_(weights[n])
        return old

    def save(self, trainer, directory: Path) -> None:
        """Into a checkpoint written inside a round (at a round's end the next round starts from the saved model)."""
        if trainer.global_step % self.k and trainer.accelerator.is_main_process:
            from safetensors.torch import save_file

            save_file({n: t.detach().cpu().contiguous() for n, t in self.weights.items()}, str(directory / ROUND_FILE))

    def load(self, trainer, checkpoint: Path) -> None:
        if trainer.global_step % self.k == 0:
            return
        from safetensors.torch import load_file

        path = Path(checkpoint) / ROUND_FILE
        if not path.exists():
            raise CheckpointError(
                f"{checkpoint} stands inside a round of online.round_steps={self.k} but has no "
                f"{ROUND_FILE} (the round's sampling weights)"
            )
        saved = load_file(str(path), device=str(trainer.accelerator.device))
        names = [n for n, _ in self._params(trainer)]
        if sorted(saved) != sorted(names):
            raise CheckpointError(
                f"{path} holds weights {sorted(set(saved) ^ set(names))[:3]}... that do not match "
                f"this model's trainable weights"
            )
        self.weights, self.step = saved, trainer.global_step - trainer.global_step % self.k


class OnlineDPOObjective(DPOObjective):
    """The online DPO objective over the loop of ``align.trainer`` (see the module doc)."""

    name, unit, needs_reference, uses_step_norm = "online_dpo", "prompts", True, False
    caches_reference = False  # the pairs are new every step: no reference cache, no precomputed terms
    stat_keys = DPOObjective.stat_keys + (
        "judge/chosen_score",
        "judge/rejected_score",
        "judge/score_gap",
        "judge/mean_score",
        "tie_rate",
        "answer_length",
        "answers_missing_eos",
    )
    shown = ("eval/judge/score", "eval/judge/reference_score", "eval/win_rate", "eval/win_rate/se")
    per_example_keys = ()

    def __init__(self, cfg):
        super().__init__(cfg)
        self.judge = None  # built at first use, on the trainer's device
        self.reference_answers: dict[int, tuple[Answer, float]] = {}  # held-out: the frozen reference's, kept
        self.rounds = RoundPolicy(cfg.online.round_steps) if cfg.online.round_steps > 1 else None

    def save_state(self, trainer, directory: Path) -> None:
        """What a checkpoint holds beyond the trainer's state (every rank calls it)."""
        if self.rounds is not None:
            self.rounds.save(trainer, directory)

    def load_state(self, trainer, checkpoint: Path) -> None:
        if self.rounds is not None:
            self.rounds.load(trainer, checkpoint)

    def describe(self) -> str:
        o = self.cfg.online
        held = f", sampling policy held for rounds of {o.round_steps} steps" if o.round_steps > 1 else ""
        return (
            f"online DPO: {o.num_generations} answers per prompt{held} (sampler: {o.steps} steps, gen_length "
            f"{o.gen_length}, block {o.block_length}, temperature {o.temperature}, {o.remasking} remasking), "
            f"judged by {self._judge_name()}; training estimator "
            + super().describe().removeprefix("training estimator ")
        )

    def describe_eval(self) -> str:
        return (
            f"one answer per held-out prompt from the policy and from the reference (seeded by "
            f"online.eval_seed={self.cfg.online.eval_seed} and the prompt id), judged by {self._judge_name()}"
        )

    def _judge_name(self) -> str:
        o = self.cfg.online
        return o.judge or (f"pairwise {o.pairwise_judge}" if o.pairwise_judge else f"reward model {o.reward_model}")

    def progress(self, metrics: dict) -> dict:
        return {
            "loss": f"{metrics['loss']:.4f}",
            "gap": f"{metrics['judge/score_gap']:.2f}",
            "ties": f"{metrics['tie_rate']:.2f}",
        }

    def build_dataset(self, rows, source, tokenizer, spec, *, limit, indices=None):
        d = self.cfg.data
        return build_prompt_dataset(
            rows,
            source,
            tokenizer,
            fmt=d.format,
            max_prompt_length=d.max_prompt_length,
            over_long_prompt=d.over_long_prompt,
            on_bad_record=d.on_bad_record,
            limit=limit,
            indices=indices,
        )

    def collate(self, examples, spec) -> dict:
        return {"ids": torch.tensor([e.id for e in examples]), "prompts": list(examples)}

    def batch_norm(self, examples) -> float:
        return 0.0

    # ------------------------------------------------------------ sampling and judging
    def _judge(self, trainer):
        if self.judge is None:
            self.judge = Judge(self.cfg.online, device=trainer.accelerator.device)
        return self.judge

    @torch.no_grad()
    def sample(self, trainer, prompt, n: int, seed: int, reference: bool = False) -> list[Answer]:
        """``n`` answers to ``prompt`` from the policy (or the reference), one sampler call seeded by ``seed``."""

        o, acc = self.cfg.online, trainer.accelerator
        model, context = trainer.model, nullcontext()
        if reference:
            if trainer.reference is not None:
                model = trainer.reference
            else:
                context = unwrap(trainer.model, keep_peft=True).disable_adapter()

        def all_done(done: bool) -> bool:  # every rank's rows done: the early stop is taken together
            return acc.reduce(torch.tensor([float(not done)], device=acc.device), reduction="sum").item() == 0

        was_training = trainer.model.training
        trainer.model.eval()
        ids = torch.tensor([prompt.prompt_ids] * n, device=acc.device)
        try:
            with context:
                out = generate(
                    model,
                    ids,
                    **o.sampler_kwargs(),
                    generator=torch.Generator().manual_seed(seed),
                    all_done=all_done if trainer.world > 1 else None,
                )
        finally:  # a preemption inside sampling must not leave the policy in eval mode
            trainer.model.train(was_training)
        eos = trainer.spec.eos_token_id
        answers = []
        for row in out[:, ids.shape[1] :].tolist():
            has_eos = eos in row
            row = row[: row.index(eos) + 1] if has_eos else row
            text = trainer.tokenizer.decode(row[:-1] if has_eos else row, skip_special_tokens=True).strip()
            answers.append(Answer(row, text, has_eos))
        return answers

    def score(self, trainer, prompts: list, answers: list[list[Answer]]) -> list[list[float]]:
        """The judge's scores less the penalties, per prompt."""
        o = self.cfg.online
        raw = self._judge(trainer).score(prompts, [[a.text for a in some] for some in answers])
        return [
            penalise(
                s,
                [a.text for a in some],
                [a.has_eos for a in some],
                missing_eos_penalty=o.missing_eos_penalty,
                empty_answer_penalty=o.empty_answer_penalty,
            )
            for s, some in zip(raw, answers)
        ]

    # ------------------------------------------------------------ one micro-batch
    def compute(self, trainer, batch: dict, epoch: int, norm: float):
        prompts = batch["prompts"]
        if epoch == EVAL_EPOCH:
            return self.compute_eval(trainer, prompts)
        step = trainer.global_step + 1  # the optimizer step this micro-batch belongs to
        started = time.perf_counter()
        if self.rounds is not None:
            self.rounds.begin(trainer)
        with self.rounds.active(trainer) if self.rounds is not None else nullcontext():
            answers = [
                self.sample(
                    trainer, p, self.cfg.online.num_generations, _seed(self.cfg.train.seed, p.id, SAMPLE_SALT, step)
                )
                for p in prompts
            ]
        scores = self.score(trainer, prompts, answers)
        examples, kept, picks = pairs(prompts, answers, scores, trainer.spec.eos_token_id)
        generation = time.perf_counter() - started
        dpo_batch = trainer.to_device(collate(examples, trainer.spec.pad_token_id))
        losses, stats, tokens = self.pair_losses(trainer, dpo_batch, epoch, 0.0)
        device = losses.device
        weight = torch.tensor(kept, dtype=torch.float32, device=device)
        loss = (losses * weight).sum() / len(prompts)
        stats = {k: v * weight for k, v in stats.items()}  # finish_train divides the pair stats by the kept share
        stats["loss"] = losses.detach() * weight
        per_prompt = {
            "judge/chosen_score": [s[c] for s, (c, _) in zip(scores, picks)],
            "judge/rejected_score": [s[r] for s, (_, r) in zip(scores, picks)],
            "judge/score_gap": [s[c] - s[r] for s, (c, r) in zip(scores, picks)],
            "judge/mean_score": [sum(s) / len(s) for s in scores],
            "tie_rate": [1.0 - k for k in kept],
            "answer_length": [sum(len(a.ids) for a in some) / len(some) for some in answers],
            "answers_missing_eos": [sum(not a.has_eos for a in some) / len(some) for some in answers],
            "generation_seconds": [generation / len(prompts)] * len(prompts),
        }
        stats.update({k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in per_prompt.items()})
        self.write_samples(trainer, step, prompts, answers, scores, picks, kept)
        return loss, stats, tokens

    def write_samples(self, trainer, step, prompts, answers, scores, picks, kept) -> None:
        """This micro-step's samples of every rank, appended to ``online_samples.jsonl`` by the main process."""
        from accelerate.utils import gather_object

        policy = self.rounds.step if self.rounds is not None else step - 1
        rows = [
            {
                "step": step,
                "policy_step": policy,
                "id": p.id,
                "prompt": p.text,
                "answers": [a.text for a in some],
                "scores": s,
                "chosen": c,
                "rejected": r,
                "tie": not k,
            }
            for p, some, s, (c, r), k in zip(prompts, answers, scores, picks, kept)
        ]
        if trainer.world > 1:
            rows = gather_object(rows)
        if trainer.accelerator.is_main_process:
            with open(trainer.out / "online_samples.jsonl", "a") as f:
                for row in sorted(rows, key=lambda r: r["id"]):
                    f.write(json.dumps(row) + "\n")

    def finish_train(self, metrics: dict, window) -> dict:
        """The window's pair means over kept pairs only, and the generation time share."""
        kept = 1.0 - metrics["tie_rate"]
        for key in PAIR_KEYS:
            if key in metrics:
                metrics[key] = metrics[key] / kept if kept > 0 else float("nan")
        metrics["generation_time_share"] = metrics.pop("generation_seconds") * window.count / max(window.seconds, 1e-9)
        return metrics

    # ------------------------------------------------------------ evaluation
    def compute_eval(self, trainer, prompts: list):
        """Per held-out prompt: policy and reference answers on one seed, judged (see the module doc)."""
        seeds = [_seed(self.cfg.online.eval_seed, p.id, EVAL_SALT) for p in prompts]
        policy = [self.sample(trainer, p, 1, s)[0] for p, s in zip(prompts, seeds)]
        # the reference is frozen and the seed fixed: its answers are the same at every evaluation, sampled once.
        # With several ranks a batch is sampled when any rank lacks one of its answers, so all run the same forwards
        need = any(p.id not in self.reference_answers for p in prompts)
        if trainer.world > 1:
            acc = trainer.accelerator
            need = acc.reduce(torch.tensor([float(need)], device=acc.device), reduction="sum").item() > 0
        if need:
            answers = [self.sample(trainer, p, 1, s, reference=True)[0] for p, s in zip(prompts, seeds)]
            for p, a, score in zip(prompts, answers, self.score(trainer, prompts, [[a] for a in answers])):
                self.reference_answers[p.id] = (a, score[0])
        policy_scores = [s[0] for s in self.score(trainer, prompts, [[a] for a in policy])]
        reference_scores = [self.reference_answers[p.id][1] for p in prompts]
        win = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(policy_scores, reference_scores)]
        values = {
            "judge/score": policy_scores,
            "judge/reference_score": reference_scores,
            "win_rate": win,
            "answer_length": [float(len(a.ids)) for a in policy],
        }
        device = trainer.accelerator.device
        stats = {}
        for key, v in values.items():
            stats[key] = torch.tensor(v, dtype=torch.float32, device=device)
            stats[f"{key}/sq"] = stats[key] ** 2
        return torch.zeros((), device=device), stats, 0

    def finish_eval(self, means: dict[str, float], count: int) -> dict[str, float]:
        """Means over held-out prompts; ``<key>/sq`` (mean of squares) becomes ``<key>/se`` over prompts."""
        out = {k: v for k, v in means.items() if not k.endswith("/sq")}
        for key in list(out):
            if f"{key}/sq" in means:
                var = max(means[f"{key}/sq"] - out[key] ** 2, 0.0) * count / max(count - 1, 1)
                out[f"{key}/se"] = math.sqrt(var / count)
        return out


def pairs(prompts: list, answers: list[list[Answer]], scores: list[list[float]], eos_token_id: int):
    """(DPO examples, kept flags, (chosen, rejected) indices) of each prompt: the best and the worst answer (first
    of equals). A tie (all scores equal, or best and worst the same tokens) keeps a placeholder pair (answers 0
    and 1) of weight 0, so every rank still runs the same forwards."""
    examples, kept, picks = [], [], []
    for p, some, s in zip(prompts, answers, scores):
        c, r = max(range(len(s)), key=s.__getitem__), min(range(len(s)), key=s.__getitem__)
        tie = s[c] == s[r] or some[c].ids == some[r].ids
        if tie:
            c, r = 0, 1
        chosen, rejected = common_length([some[c].ids, some[r].ids], eos_token_id)
        examples.append(Encoded(p.id, p.prompt_ids, chosen, rejected))
        kept.append(0.0 if tie else 1.0)
        picks.append((c, r))
    return examples, kept, picks


def online_dpo_trainer(cfg):
    """The training loop with the online DPO objective."""
    return Trainer(cfg, OnlineDPOObjective(cfg))
