"""The README and the topic pages under docs/ cannot drift: every fenced Python block runs as written, and every
shell command is either run here (shortened where noted) or marked as needing what CI lacks ("# needs ...": GPUs,
the hub, SLURM). A new command that is neither fails ``test_every_shell_command_is_run_or_marked``.
"""

import os
import re
import shlex
import sys

import pytest

from tests.helpers import ENV, ROOT, cells_forked, run_command

README = (ROOT / "README.md").read_text()
PAGES = [README] + [p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))]


def blocks(lang: str) -> list[str]:
    return [b for page in PAGES for b in re.findall(rf"^```{lang}\n(.*?)^```", page, flags=re.S | re.M)]


def shell_commands() -> list[tuple[str, bool]]:
    """(command, marked) for every line of every bash block; a block that opens with a "# needs" comment is
    marked as a whole, a line by a trailing "# needs" comment."""
    found = []
    for block in blocks("bash"):
        block = re.sub(r"\\\n\s*", "", block)  # a command continued over lines with a backslash is one line
        lines = [line for line in block.splitlines() if line.strip()]
        whole = bool(lines) and lines[0].lstrip().startswith("# needs")
        for line in lines:
            if line.lstrip().startswith("#"):
                continue
            command, _, comment = line.partition("  #")
            found.append((command.strip(), whole or comment.strip().startswith("needs")))
    return found


SHORT = [
    "train.max_steps=2",
    "train.eval_steps=0",
    "train.do_eval=false",
    "behaviour.prompts=null",
    "train.report_to=none",
    "train.progress_bar=false",
]
# README command -> (the command run here, with placeholders filled and shortening overrides; None: as written).
# {tmp}: the test's own directory; {demo}: the output of one short demo run shared by the module (read only)
DEMO = "python -m align.train_dpo recipe=demo train.output_dir={out} train.save_steps=1 " + " ".join(SHORT)
# docs/ablation.md's grid, shortened: learning rates chosen on the validation split by one selection seed, then one
# reported seed; 2 steps with every checkpoint kept, 4 held-out pairs, small behaviour, on the mechanics tests' small
# model (what the grid machinery does, not what training does, is checked here)
GRID = (
    "python -m align.ablate recipe=demo model.name_or_path=data/tiny_test grid.seed=0 grid.coupling=coupled,decoupled "
    "grid.learning_rate=1e-4,2e-4 "
    "grid.select=best:reward grid.validation=data/demo_safety_val.jsonl "
    "grid.validation_prompts=data/demo_behaviour_val_prompts.jsonl grid.select_seeds=1 grid.output_dir={out} "
    "train.max_steps=2 train.eval_steps=1 train.save_steps=1 train.save_total_limit=null data.max_eval_examples=4 "
    "eval.n_samples=4 behaviour.samples_per_prompt=2 behaviour.max_prompts=2 behaviour.gen_length=8 "
    "behaviour.block_length=8 behaviour.steps=8 behaviour.eval_steps=1 train.report_to=none"
)
RUN = {
    "make demo": "make -n demo",  # the install is CI's; the recipe it trains is run in full by test_trainer's demo test
    "make test": "make -n test",  # what .ci/run runs
    "python -m align.train_sft recipe=tiny_chat_sft model.name_or_path=DIR": (
        "python -m align.train_sft recipe=tiny_chat_sft model.name_or_path=data/tiny_chat train.output_dir={tmp}/sft "
        + " ".join(SHORT)
    ),
    "accelerate launch align/train_sft.py recipe=NAME key=value ...": (
        "accelerate launch --num_processes 1 --cpu align/train_sft.py recipe=tiny_chat_sft "
        "model.name_or_path=data/tiny_chat train.output_dir={tmp}/sft_launch " + " ".join(SHORT)
    ),
    "python -m align.train_sft --help": None,
    "python -m align.train_online_dpo --help": None,
    # docs/online_dpo.md's demo, shortened: 2 steps of 4 prompts, 2 short answers each, both evaluations on 4
    # held-out prompts with the behaviour check; the model card names the objective
    "python -m align.train_online_dpo recipe=demo_online": [
        "python -m align.train_online_dpo recipe=demo_online train.output_dir={tmp}/online train.max_steps=2 "
        "train.eval_steps=2 train.per_device_train_batch_size=4 online.num_generations=2 online.gen_length=16 "
        "online.block_length=16 online.steps=16 data.max_eval_examples=4 behaviour.max_prompts=2 "
        "behaviour.gen_length=16 behaviour.block_length=16 behaviour.steps=16 train.report_to=none "
        "train.progress_bar=false",
        "python -c \"import json; m = [json.loads(l) for l in open('{tmp}/online/metrics.jsonl')]; "
        "assert [r['step'] for r in m if 'eval/win_rate' in r] == [0, 2] and 'eval/refusal_rate' in m[-1], m; "
        "assert 'Online DPO' in open('{tmp}/online/final/README.md').read()\"",
    ],
    "python -m align.train_dpo --help": None,
    "python -m align.ablate recipe=demo grid.coupling=coupled,decoupled grid.seeds=2": (
        "python -m align.ablate recipe=demo grid.coupling=coupled,decoupled grid.seeds=2 grid.output_dir={tmp}/grid "
        "model.name_or_path=data/tiny_test train.max_steps=1 train.eval_steps=1 data.max_eval_examples=4 "
        "eval.n_samples=4 behaviour.prompts=null train.report_to=none"
    ),
    "python -m align.ablate variance model.name_or_path=outputs/demo/final": (
        "python -m align.ablate variance model.name_or_path={demo}/final variance.reps=2 variance.n_samples=1,2 "
        "variance.max_pairs=4 variance.resamples=20 variance.output_dir={tmp}/variance"
    ),
    (
        'python -m align.sampler --model data/tiny_chat --prompt "How do I bake bread?" --steps 48 --gen-length 48 '
        "--block-length 48"
    ): None,
    # the trained demo's output: the README's command on the short demo run's final/
    (
        'python -m align.sampler --model outputs/demo/final --prompt "How do I pick a lock?" --steps 48 '
        "--gen-length 48 --block-length 48"
    ): (
        'python -m align.sampler --model {demo}/final --prompt "How do I pick a lock?" --steps 48 '
        "--gen-length 48 --block-length 48"
    ),
    "python -m align.export --model outputs/demo/final --out outputs/demo/merged": [
        "python -m align.export --model {demo}/final --out {tmp}/merged",
        "python -c \"from align.models import load_model; load_model('{tmp}/merged')\"",
        "python -c \"from huggingface_hub import ModelCard; c = ModelCard.load('{tmp}/merged/README.md'); "
        "assert {{'dpo', 'masked-diffusion'}} <= set(c.data.tags) and 'merged' in c.text, c.text\"",
    ],
    # docs/evaluation.md: the offline lm-eval task on the tiny chat model, on 4 of its items
    (
        "python -m align.lm_eval --model_args model=data/tiny_chat,n_samples=32 --tasks everyday_choice "
        "--include_path data/lm_eval --apply_chat_template --batch_size 8 --output_path outputs/lm_eval"
    ): (
        "python -m align.lm_eval --model_args model=data/tiny_chat,n_samples=8 --tasks everyday_choice "
        "--include_path data/lm_eval --apply_chat_template --batch_size 8 --output_path {tmp}/lm_eval --limit 4"
    ),
    "python -m align.score model=data/tiny_chat ood=data/tiny_sft_test.jsonl,data/score_ood_shuffled.jsonl": (
        "python -m align.score model=data/tiny_chat ood=data/tiny_sft_test.jsonl,data/score_ood_shuffled.jsonl "
        "limit=16 n_samples=8 progress_bar=false output_dir={tmp}/ood"
    ),
    (
        "python -m align.score model=outputs/demo/final reference=data/tiny_chat data=data/demo_safety_test.jsonl "
        "format=pku_saferlhf"
    ): (
        "python -m align.score model={demo}/final reference=data/tiny_chat data=data/demo_safety_test.jsonl "
        "format=pku_saferlhf limit=8 n_samples=8 progress_bar=false output_dir={tmp}/score"
    ),
    # docs/ablation.md: the grid is the shared shortened one ({grid}: run once per module, its summary checked)
    (
        "python -m align.ablate recipe=demo grid.seeds=5 grid.coupling=coupled,decoupled "
        "grid.learning_rate=1e-4,2e-4,4e-4 grid.select=best:reward grid.validation=data/demo_safety_val.jsonl "
        "grid.validation_prompts=data/demo_behaviour_val_prompts.jsonl grid.select_seeds=2"
    ): "{grid}",
    # docs/ablation.md: the shipped demo ablation (about 50 minutes): the shared shortened grid stands for it
    (
        "python -m align.ablate recipe=demo grid.coupling=coupled,decoupled grid.learning_rate=1e-3,2e-3,4e-3 "
        "grid.select=best:reward grid.validation=data/demo_safety_val.jsonl "
        "grid.validation_prompts=data/demo_behaviour_val_prompts.jsonl grid.select_seeds=1 grid.seeds=5 "
        "loss.rpo_alpha=null behaviour.judge=align.judges:refusal_judge train.max_steps=40 train.eval_steps=20 "
        "behaviour.eval_steps=20 behaviour.max_prompts=10 behaviour.kl_samples=8 data.max_eval_examples=32 "
        "train.save_steps=20 train.save_total_limit=null grid.output_dir=outputs/ablate/ablation_demo"
    ): "{grid}",
    "python -m align.ablate variance run=outputs/demo": (
        "python -m align.ablate variance run={demo} variance.reps=2 variance.max_pairs=4 variance.resamples=20 "
        "variance.output_dir={tmp}/path"
    ),
    "python -m align.ablate variance grid=outputs/ablate/demo": (
        "python -m align.ablate variance grid={grid} variance.reps=2 variance.max_pairs=4 variance.resamples=20 "
        "variance.output_dir={tmp}/grid_path"
    ),
}


def test_every_shell_command_is_run_or_marked():
    commands = shell_commands()
    assert len(commands) > 10
    unaccounted = [c for c, marked in commands if not marked and c not in RUN]
    assert not unaccounted, (
        f"README commands neither run by tests/test_readme.py nor marked '# needs ...': {unaccounted}"
    )
    stale = set(RUN) - {c for c, _ in commands}
    assert not stale, f"tests/test_readme.py runs commands the README no longer has: {stale}"


def _run(command: str):
    args = shlex.split(command)
    if args[0] == "python":
        args[0] = sys.executable
    elif args[0] == "accelerate":
        args[:2] = [sys.executable, "-m", "accelerate.commands.launch"]  # accelerate launch ARGS
    # an ablation's cells are forked from the test process like every other run here
    setup = cells_forked if args[1:3] == ["-m", "align.ablate"] else None
    proc = run_command(args, env=ENV, timeout=900, setup=setup)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return args, proc


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs") / "demo"
    _run(DEMO.format(out=out))
    return out


@pytest.fixture(scope="module")
def grid_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs") / "grid"
    _run(GRID.format(out=out))
    return out


@pytest.mark.parametrize("command", list(RUN), ids=lambda c: c[:50])
def test_readme_shell_command_runs(command, tmp_path, request):
    todo = RUN[command] or command
    if todo == "{grid}":  # the shared shortened grid: 4 runs, scored by one evaluator, summarised
        summary = (request.getfixturevalue("grid_output") / "summary.md").read_text()
        assert "coupling=coupled − coupling=decoupled" in summary and "time_free x4" in summary, summary[:2000]
        assert "## Primary outcome: reward" in summary  # at matched KL, or the reward itself when KL never rose
        assert "## Learning rate per arm (grid.select=best:reward)" in summary
        return
    for actual in [todo] if isinstance(todo, str) else todo:
        demo = request.getfixturevalue("demo_output") if "{demo}" in actual else None
        grid = request.getfixturevalue("grid_output") if "{grid}" in actual else None
        args, proc = _run(actual.format(tmp=tmp_path, demo=demo, grid=grid))
    if args[0] == "make":
        target = args[-1]
        assert (
            "-m align.train_dpo recipe=demo" if target == "demo" else "-m pytest -q -n 2 --dist worksteal tests"
        ) in proc.stdout


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_readme_python_block_runs_as_written(index, tmp_path):
    """Each block in a fresh interpreter, from a directory where the README's relative paths (data/...) exist."""
    (tmp_path / "data").symlink_to(ROOT / "data")
    code = blocks("python")[index]
    env = dict(ENV, PYTHONPATH=str(ROOT) + os.pathsep + ENV.get("PYTHONPATH", ""))
    proc = run_command([sys.executable, "-c", code], cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, f"README python block {index}:\n{code}\n{proc.stderr[-3000:]}"
