"""The command-line layer of every entry point: ``align.train_dpo``, ``align.train_sft``, ``align.score``,
``align.ablate`` and ``align.sampler``.

- :func:`overrides`: ``key=value`` arguments (also ``--key=value`` and ``--key value``; ``-`` in a key is ``_``)
  as (key, raw value) pairs;
- :func:`parse_options`: those pairs into a typed, documented options dataclass (``align.config.opt`` fields),
  an unknown key or a wrong type failing with one line that names it and suggests the closest key;
- :func:`help_text`: the ``--help`` page of such a dataclass, sectioned or flat;
- :func:`entry_point`: one error-to-exit wrapper (a config, data or checkpoint error, a missing file: one line
  and exit 1; ``ALIGN_DEBUG=1`` shows the traceback);
- :func:`exit_process`: one way out of a multi-process run.

The training entry points' body (parse, set up, train, exit) is ``align.train``.

A recipe plus overrides for training is ``align.config.load_config``; ``python -m align.train_dpo --help``
shows every key.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from contextlib import contextmanager

import yaml

from align.checkpoints import CheckpointError
from align.config import ConfigError, build, set_dotted
from align.data import BadRecord
from align.models import ModelNotFound


def overrides(argv: list[str], *, prog: str, help_page) -> list[tuple[str, str]]:
    """(key, raw value) of each argument; ``-h``/``--help`` prints ``help_page()`` and exits 0."""
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in ("-h", "--help"):
            print(help_page())  # to stdout, exit 0: --help is not an error
            raise SystemExit(0)
        flag = arg.startswith("--")
        arg = arg[2:] if flag else arg
        if "=" not in arg:
            if flag and i < len(argv) and not argv[i].startswith("--"):  # --key value
                arg, i = f"{arg}={argv[i]}", i + 1
            else:
                raise ConfigError(f"argument {argv[i - 1]!r} is not key=value (see {prog} --help)")
        key, raw = arg.split("=", 1)
        pairs.append((key.strip().replace("-", "_"), raw))
    return pairs


def value_of(raw: str):
    """A command-line value as YAML reads it (``null`` None, ``[a,b]`` a list, numbers, booleans); empty is None.
    Text that YAML reads as a mapping or cannot read (a prompt such as ``Q: why?``) stays the text given."""
    if not raw.strip():
        return None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return raw if isinstance(value, dict) else value


def parse_options(pairs: list[tuple[str, str]], cls, tree: dict | None = None):
    """``cls`` built from ``tree`` (e.g. a recipe) with the ``pairs`` set over it (dotted keys into sections)."""
    tree = {} if tree is None else tree
    for key, raw in pairs:
        set_dotted(tree, key, value_of(raw))
    return build(cls, tree)


def help_text(cls, usage: str) -> str:
    """Every key of ``cls`` with its default, choices and help; sections (dataclass fields) as ``section.key``."""
    lines = [f"usage: {usage}", ""]

    def describe(f, name: str) -> str:
        choices = f.metadata.get("choices")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        extra = f" {{{', '.join(map(str, choices))}}}" if choices else ""
        return f"  {name} = {default!r}{extra}\n      {f.metadata['help']}"

    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(section := f.default_factory()):
            lines.append(f"{f.name}:")
            lines += [describe(inner, f"{f.name}.{inner.name}") for inner in dataclasses.fields(section)]
        else:
            lines.append(describe(f, f.name))
    return "\n".join(lines)


@contextmanager
def entry_point():
    """Turn the errors a user can fix into one line and exit 1 (``ALIGN_DEBUG=1``: the traceback)."""

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        yield
    except (ConfigError, BadRecord, CheckpointError, ModelNotFound, FileNotFoundError) as e:
        if os.environ.get("ALIGN_DEBUG"):
            raise
        kind = (
            "config error"
            if isinstance(e, ConfigError)
            else "data error"
            if isinstance(e, BadRecord)
            else "checkpoint error"
            if isinstance(e, CheckpointError)
            else "error"
        )
        raise SystemExit(f"{kind}: {e} (ALIGN_DEBUG=1 shows the traceback)") from None


def quiet_libraries() -> None:
    """Log to stderr with times; keep the libraries' INFO chatter out."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "datasets", "torch.distributed", "accelerate", "deepspeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def exit_process(code: int, *, distributed: bool) -> None:
    """Exit with ``code``. With several processes, leave without running C++ static destructors: under gloo
    (plain DDP and DeepSpeed on CPU) a rank occasionally aborts there ("terminate called without an active
    exception") after a run that wrote everything, and the launcher then reports the run as failed."""
    if distributed:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        sys.exit(code)
