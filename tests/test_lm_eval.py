"""align.lm_eval: lm-evaluation-harness requests through align's estimators and sampler. Unbiased against enumerated
truth on a toy model; on the shipped tiny chat model the offline task data/lm_eval/everyday_choice runs end to end,
its log-likelihoods equal ``align.score``'s for the same records and seed, rolling windows add up, and
``generate_until`` equals ``align.sampler``."""

import contextlib
import io
import json
import math
import sys
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("lm_eval")  # the [lm_eval] extra (part of [dev]: CI has it)

from lm_eval.api.instance import Instance  # noqa: E402

from align import estimators as E  # noqa: E402
from align.lm_eval import AlignLM, cut_at  # noqa: E402
from align.toy import ToyJoint  # noqa: E402
from tests.helpers import ROOT  # noqa: E402

TASKS = ROOT / "data" / "lm_eval"


def project_tasks():
    """lm-eval's task manager over the project's task only: by default it also indexes lm-eval's ~14,000 built-in
    task YAMLs, about 20 s of CPU each time."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS), include_defaults=False)


def request(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


class Digits:
    """The toy's tokenizer: each character a token id."""

    bos_token_id = None

    def __call__(self, text, add_special_tokens=False):
        return SimpleNamespace(input_ids=[int(c) for c in text])


def test_loglikelihood_is_unbiased_against_the_enumerated_truth():
    """Requests of every context length (the empty one too) on a toy joint whose conditionals are exact: each
    estimate is within 4 of its standard errors of the true log p(continuation | context) (one token: exact)."""
    toy = ToyJoint.random(V=3, T=6, seed=0)
    spec = SimpleNamespace(mask_token_id=toy.mask_token_id, eos_token_id=0, pad_token_id=0)
    lm = AlignLM.from_parts(
        None,
        Digits(),
        spec,
        E.scorer_from_logits(toy.logits_fn),
        n_samples=2048,
        round_samples=512,
        greedy=False,
        max_length=6,
        progress_bar=False,
    )
    texts = ["".join(map(str, row)) for row in toy.sample(5, seed=3).tolist()]
    pairs = [(t[:c], t[c:]) for c, t in zip([0, 1, 2, 3, 5], texts)]
    out = lm.loglikelihood([request("loglikelihood", *p) for p in pairs])
    for (ctx, cont), (logp, greedy), row in zip(pairs, out, lm.scores):
        ids = torch.tensor([[int(c) for c in ctx + cont]])
        resp = torch.zeros_like(ids, dtype=torch.bool)
        resp[:, len(ctx) :] = True
        truth = toy.log_prob(ids, resp).item()
        assert row["n_samples"] == 2048 and row["logp"] == logp and greedy is False
        assert abs(logp - truth) < 4 * row["se"] + 1e-9 and row["se"] < 0.1, (ctx, cont, logp, row["se"], truth)
    again = lm.loglikelihood([request("loglikelihood", *p) for p in reversed(pairs)])  # seeded by content, not order
    assert [x for x, _ in again] == [x for x, _ in reversed(out)]


@pytest.fixture(scope="module")
def tiny():
    return AlignLM(model=str(ROOT / "data" / "tiny_chat"), n_samples=8, progress_bar=False)


def test_everyday_choice_runs_end_to_end_and_agrees_with_align_score(tiny, tmp_path):
    """lm-eval's multiple-choice task on the tiny chat model (chat template on): better than chance by far, and every
    log-likelihood of the first items equals ``align.score`` on the same (question, reply) records with
    ``response_eos=false seed_by=content`` (the same masks), as the same numbers with the same standard errors."""
    import lm_eval

    from align import score

    results = lm_eval.simple_evaluate(
        model=tiny,
        tasks=["everyday_choice"],
        apply_chat_template=True,
        task_manager=project_tasks(),
        bootstrap_iters=0,
        limit=40,
    )
    acc = results["results"]["everyday_choice"]["acc,none"]
    assert acc >= 0.45, acc  # 40 of the 150 items, chance 0.25
    items = [json.loads(line) for line in (TASKS / "everyday_choice.jsonl").read_text().splitlines()][:2]
    records = [{"prompt": it["prompt"], "response": c} for it in items for c in it["choices"]]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with contextlib.redirect_stdout(io.StringIO()):
        score.main(
            [
                f"model={ROOT / 'data' / 'tiny_chat'}",
                f"data={tmp_path / 'records.jsonl'}",
                "n_samples=8",
                "response_eos=false",
                "seed_by=content",
                "progress_bar=false",
                f"output_dir={tmp_path / 'score'}",
            ]
        )
    scored = [json.loads(line) for line in (tmp_path / "score" / "scores.jsonl").read_text().splitlines()]
    by_request = {tuple(r["arguments"]): r for r in tiny.scores}
    for rec, row in zip(records, scored):
        context = tiny.apply_chat_template([{"role": "user", "content": rec["prompt"]}])
        mine = by_request[(context, rec["response"])]
        assert mine["n_samples"] == row["n_samples"] == 8 and mine["tokens"] == row["tokens_response"]
        assert mine["logp"] == pytest.approx(row["logp_response"], abs=1e-4)
        assert mine["se"] == pytest.approx(row["se_response"], abs=1e-4)


@pytest.mark.distributed
def test_two_ranks_split_the_requests_and_give_the_one_process_numbers(tiny, tmp_path):
    """torchrun, 2 CPU ranks: lm-eval hands each rank its share of the documents; every log-likelihood equals the
    one-process number (draws seeded by content), and the gathered accuracy equals one process's."""
    import lm_eval

    from tests.helpers import ENV, free_port, run_command

    proc = run_command(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "align.lm_eval",
            "--model_args",
            f"model={ROOT / 'data' / 'tiny_chat'},n_samples=8,scores_file={tmp_path / 's.jsonl'}",
            "--tasks",
            "everyday_choice",
            "--include_path",
            str(TASKS),
            "--apply_chat_template",
            "--batch_size",
            "8",
            "--limit",
            "6",
            "--output_path",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        env=ENV,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [[json.loads(line) for line in (tmp_path / f"s.rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 12  # 3 documents x 4 choices each
    (result,) = (tmp_path / "out").rglob("results_*.json")
    multi_acc = json.loads(result.read_text())["results"]["everyday_choice"]["acc,none"]
    single = lm_eval.simple_evaluate(
        model=tiny,
        tasks=["everyday_choice"],
        apply_chat_template=True,
        limit=6,
        task_manager=project_tasks(),
        bootstrap_iters=0,
    )
    assert single["results"]["everyday_choice"]["acc,none"] == multi_acc
    one = {tuple(r["arguments"]): r for r in tiny.scores}
    for row in ranks[0] + ranks[1]:
        mine = one[tuple(row["arguments"])]
        assert row["logp"] == pytest.approx(mine["logp"], abs=1e-4) and row["se"] == pytest.approx(mine["se"], abs=1e-4)


def test_rolling_windows_cover_every_token_once_and_add_up(tiny):
    text = " ".join(
        json.loads(line)["response"] for line in (ROOT / "data" / "tiny_sft_test.jsonl").read_text().splitlines()[:3]
    )
    tokens = tiny.tokenizer(text, add_special_tokens=False).input_ids
    old = tiny.max_length
    tiny.max_length = 24
    try:
        (total,) = tiny.loglikelihood_rolling([request("loglikelihood_rolling", text)])
        row = tiny.scores[-1]
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows = [
            make_disjoint_window(w)
            for w in get_rolling_token_windows(
                token_list=tokens, prefix_token=tiny.prefix_token, max_seq_len=23, context_len=1
            )
        ]
        assert sum(len(p) for _, p in windows) == len(tokens) and len(windows) == row["windows"] > 2
        assert max(len(c) + len(p) for c, p in windows) == 24  # max_length
        logp, se, n = tiny.estimate(windows)
    finally:
        tiny.max_length = old
    assert total == pytest.approx(sum(logp)) and row["se"] == pytest.approx(math.sqrt(sum(s * s for s in se)))
    assert row["n_samples"] == 8 * len(windows) and total < 0


@pytest.mark.parametrize(
    "temperature",
    [0.0, 0.7],
)
def test_generate_until_is_the_sampler_cut_at_the_stop_sequences(tiny, temperature):
    from align import sampler

    settings = dict(steps=8, gen_length=16, block_length=8, temperature=temperature, seed=3)
    lm = AlignLM.from_parts(tiny.model, tiny.tokenizer, tiny.spec, tiny.scorer, progress_bar=False, **settings)
    question = "How do I bake bread?"
    context = lm.apply_chat_template([{"role": "user", "content": question}])
    (text,) = lm.generate_until([request("generate_until", context, {"until": []})])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        sampler.main(
            [
                "--model",
                str(ROOT / "data" / "tiny_chat"),
                "--prompt",
                question,
                *[f"{k}={v}" for k, v in settings.items()],
            ]
        )
    assert text == printed.getvalue().rstrip("\n") and len(text.split()) > 2
    stop = text.split()[2]
    (cut,) = lm.generate_until([request("generate_until", context, {"until": [stop], "max_gen_toks": 99})])
    assert cut == text.split(stop)[0] == cut_at(text, ["", stop])


def test_bad_model_args_fail_naming_the_key(tiny):
    from align.config import ConfigError

    with pytest.raises(ConfigError, match="n_sample"):
        AlignLM.from_parts(tiny.model, tiny.tokenizer, tiny.spec, tiny.scorer, n_sample=4)
    with pytest.raises(ConfigError, match="n_samples must be >= 1"):
        AlignLM.from_parts(tiny.model, tiny.tokenizer, tiny.spec, tiny.scorer, n_samples=0)
