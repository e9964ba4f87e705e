"""The body of the training entry points (``align.train_dpo``, ``align.train_sft``, ``align.train_online_dpo``):
the command line into a validated config (:func:`training_config`), the trainer set up and run, and the exit
(:func:`train_main`: 75 after a preemption's checkpoint, 1 after a non-finite stop's). The argument layer it uses
is ``align.cli``; the loop is ``align.trainer``.
"""

from __future__ import annotations

import sys

from align.cli import entry_point, exit_process, help_text, overrides, quiet_libraries
from align.config import load_config
from align.guards import PREEMPTED_EXIT_CODE, NonFiniteStep, Preempted
from align.model_card import push_output
from align.trainer import Trainer


def training_config(argv: list[str], cls, prog: str):
    """``recipe=NAME|PATH`` and ``section.key=value`` overrides into a validated ``cls`` (``align.config``)."""
    pairs = overrides(
        argv, prog=prog, help_page=lambda: help_text(cls, f"{prog} recipe=NAME|PATH [section.key=value ...]")
    )
    recipe = next((raw for key, raw in pairs if key == "recipe"), None)
    return load_config(recipe, [f"{key}={raw}" for key, raw in pairs if key != "recipe"], cls)


def train_main(config_cls, objective_cls, prog: str, argv: list[str] | None = None) -> None:
    """The body of the training entry points (``align.train_dpo``, ``align.train_sft``): parse, set up, train, exit
    (75 after a preemption's checkpoint, 1 after a non-finite stop's)."""
    quiet_libraries()
    argv = sys.argv[1:] if argv is None else argv
    with entry_point():
        cfg = training_config(argv, config_cls, prog)
        trainer = Trainer(cfg, objective_cls(cfg))
    try:
        trainer.train()
    except Preempted as e:  # SIGTERM/SIGINT: checkpoint written on every rank
        trainer.accelerator.print(f"preempted: {e}")
        close_and_exit(trainer, PREEMPTED_EXIT_CODE)
    except NonFiniteStep as e:  # checkpoint of the last good state written
        trainer.accelerator.print(f"non-finite step: {e}", file=sys.stderr)
        close_and_exit(trainer, 1)
    trainer.close()
    code = 0
    if cfg.train.push_to_hub and trainer.accelerator.is_main_process:  # after the process group is gone: no rank waits
        code = push_output(trainer.out, cfg.train)
    exit_process(code, distributed=trainer.world > 1)


def close_and_exit(trainer, code: int = 0) -> None:
    """End a run's process with ``code`` (0 after a finished run), the process group torn down first."""
    trainer.close()
    exit_process(code, distributed=trainer.world > 1)
