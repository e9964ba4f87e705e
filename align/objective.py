"""What the training loop (``align.trainer.Trainer``) asks of an objective: the written contract.

An objective turns records into batches and batches into a loss. The loop owns everything else (data order,
accumulation, the optimizer, evaluation's schedule, checkpoints, logging). Three objectives implement it:
``align.dpo.DPOObjective``, ``align.sft.SFTObjective`` and ``align.online_dpo.OnlineDPOObjective``.

:class:`Objective` is the contract as a base class: the members every objective must define are listed in
:data:`REQUIRED` (a :class:`ObjectiveProtocol` check finds a missing one), and the optional ones have the
defaults written here, so the loop calls them without ``hasattr``. Adding an objective: subclass
:class:`Objective`, set the class attributes, implement the required methods, override an optional one only to
change its default (docs/development.md, "Adding an objective").

Class attributes:

- ``name`` (the progress bar's label and the log's), ``unit`` ("pairs", "sequences", "prompts": what one
  record is, in messages);
- ``needs_reference``: the loop builds a reference (a frozen copy, or the policy with its adapter off);
- ``caches_reference`` (True): the reference's terms may be cached or precomputed (``align.reference``);
- ``uses_step_norm`` (False): ``compute`` needs :meth:`Objective.batch_norm` over the whole optimizer step
  (the RPO term); otherwise each micro-batch's own;
- ``stat_keys``: per-example statistics ``compute`` returns (their means are logged);
- ``shown``: the evaluation metrics printed at each evaluation;
- ``per_example_keys`` (()): statistics written per held-out example to ``eval_examples.jsonl``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

REQUIRED = (
    "name",
    "unit",
    "needs_reference",
    "stat_keys",
    "shown",
    "describe",
    "describe_eval",
    "progress",
    "build_dataset",
    "collate",
    "batch_norm",
    "compute",
    "finish_eval",
)


@runtime_checkable
class ObjectiveProtocol(Protocol):
    """The members the loop reads, optional ones included (an :class:`Objective` subclass has them all)."""

    name: str
    unit: str
    needs_reference: bool
    caches_reference: bool
    uses_step_norm: bool
    stat_keys: tuple[str, ...]
    shown: tuple[str, ...]
    per_example_keys: tuple[str, ...]

    def describe(self) -> str: ...
    def describe_eval(self) -> str: ...
    def progress(self, metrics: dict) -> dict: ...
    def build_dataset(self, rows, source: str, tokenizer, spec, *, limit: int | None, indices=None): ...
    def collate(self, examples: list, spec) -> dict: ...
    def batch_norm(self, examples: list) -> float: ...
    def compute(self, trainer, batch: dict, epoch: int, norm: float) -> tuple[Any, dict, int]: ...
    def finish_eval(self, means: dict[str, float], count: int) -> dict[str, float]: ...
    def finish_train(self, metrics: dict, window) -> dict: ...
    def save_state(self, trainer, directory: Path) -> None: ...
    def load_state(self, trainer, checkpoint: Path) -> None: ...
    def cache_key(self) -> dict: ...
    def reference_terms(self, trainer, examples: list, epoch: int, batch_size: int) -> dict: ...


class Objective:
    """The contract with its defaults; subclasses set the class attributes and the required methods."""

    name: str
    unit: str
    needs_reference: bool
    caches_reference = True
    uses_step_norm = False
    stat_keys: tuple[str, ...] = ()
    shown: tuple[str, ...] = ()
    per_example_keys: tuple[str, ...] = ()

    # ------------------------------------------------------------ required
    def describe(self) -> str:
        """One line for the start-up log: the objective and its estimator."""
        raise NotImplementedError

    def describe_eval(self) -> str:
        """One line for the start-up log: how held-out data is scored."""
        raise NotImplementedError

    def progress(self, metrics: dict) -> dict:
        """The progress bar's postfix from a logged window's metrics."""
        raise NotImplementedError

    def build_dataset(self, rows, source: str, tokenizer, spec, *, limit: int | None, indices=None):
        """Records -> (encoded examples with ``.id``, a ``DataReport``); ``indices``: only those positions."""
        raise NotImplementedError

    def collate(self, examples: list, spec) -> dict:
        """Encoded examples -> a batch of host tensors (``ids``, ``tokens`` and the objective's own)."""
        raise NotImplementedError

    def batch_norm(self, examples: list) -> float:
        """The normaliser of a set of examples that ``compute`` receives as ``norm`` (0.0 when unused)."""
        raise NotImplementedError

    def compute(self, trainer, batch: dict, epoch: int, norm: float) -> tuple[Any, dict, int]:
        """(mean loss of the micro-batch, per-example stats [b] each, tokens through the policy); at
        ``align.data.EVAL_EPOCH`` the held-out statistics too."""
        raise NotImplementedError

    def finish_eval(self, means: dict[str, float], count: int) -> dict[str, float]:
        """Means over ``count`` held-out examples -> the metrics logged under ``eval/``."""
        raise NotImplementedError

    # ------------------------------------------------------------ optional, with defaults
    def finish_train(self, metrics: dict, window) -> dict:
        """The metrics of a logged training window, given the window as a whole (default: as they are)."""
        return metrics

    def save_state(self, trainer, directory: Path) -> None:
        """Anything of the objective's own a checkpoint must hold (default: nothing)."""

    def load_state(self, trainer, checkpoint: Path) -> None:
        """Read back what :meth:`save_state` wrote (default: nothing)."""

    def cache_key(self) -> dict:
        """What the reference terms depend on besides the example and epoch (needed with a cached reference)."""
        raise NotImplementedError(f"the {self.name} objective caches no reference terms")

    def reference_terms(self, trainer, examples: list, epoch: int, batch_size: int) -> dict:
        """{example id: the reference's terms} for a cached or precomputed reference."""
        raise NotImplementedError(f"the {self.name} objective caches no reference terms")
