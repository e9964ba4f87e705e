"""``module:function`` and ``path/to/file.py:function`` specs, resolved to the function (judges, behaviour judges):
a light module, so that a config check can resolve a spec without loading the models."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from align.errors import ConfigError


def load_function(spec: str, key: str):
    """``module:function`` or ``path/file.py:function`` -> the function; an error names ``key``."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise ConfigError(f"{key}={spec!r}: expected module:function or path/to/file.py:function")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise ConfigError(f"{key}={spec!r}: no file {where}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ImportError as e:
        raise ConfigError(f"{key}={spec!r}: cannot import {where} ({e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"{key}={spec!r}: {where} has no function {name!r}")
    return fn
