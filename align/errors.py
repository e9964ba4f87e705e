"""The errors align reports to its user as one line (``align.cli.entry_point``: exit 1, no traceback), in one module
that imports nothing of align's, so that any module can raise them without importing the module that owns the
concept.

- :class:`ConfigError`: a key, value or combination of settings that cannot run (``align.config``);
- :class:`CheckpointError`: a checkpoint that cannot be resumed from; the message names the file;
- :class:`BadRecord`: a data record that cannot be used; the message says why (and is the skip-count key);
- :class:`ModelNotFound`: a model or tokenizer that is neither a local directory nor loadable from the hub.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A key, value or combination of settings that cannot run; the message names the key."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the file."""


class BadRecord(ValueError):
    """A record that cannot be used; the message says why (and is the skip-count key)."""


class ModelNotFound(FileNotFoundError):
    """A model or tokenizer that is neither a local directory nor loadable from the hub."""
