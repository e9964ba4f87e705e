"""Content identity of what a run trains on: the data as encoded and the base model's weights.

A checkpoint records both (``trainer_state.json``: ``fingerprints``) and a resume compares them
(``align.resume.check_resume``), so a data file edited or grown in place, or base weights replaced under the same
path, is refused naming what changed, and a moved copy of the same content is not.

- Data: sha256 over the encoded examples (token ids and every other field, in order): what the run reads, after
  tokenization, filtering and truncation; a changed tokenizer shows here too.
- Model: a hub id with the commit it resolved to when transformers recorded one (``config._commit_hash``); a
  local directory by the sha256 of its files (weights hashed whole up to :data:`WHOLE_BYTES` in all, above that
  each weight file by its size and header, which lists every tensor's name, shape, dtype and offsets); the
  bundled ``tiny:*`` models by name (built from a fixed seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from array import array
from pathlib import Path

WHOLE_BYTES = 1 << 30  # local weights up to 1 GiB are hashed whole; larger ones by their headers and sizes
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _update(digest, value) -> None:
    """Feed one example's fields: lists of token ids as raw int64 bytes (fast), anything else as sorted JSON."""
    if dataclasses.is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        for key in sorted(value):
            digest.update(f"{key}=".encode())
            _update(digest, value[key])
        return
    if isinstance(value, list) and value and all(type(v) is int for v in value):
        digest.update(b"i" + array("q", value).tobytes())
        return
    digest.update(json.dumps(value, sort_keys=True, default=str).encode())


def data_fingerprint(examples) -> str | None:
    """sha256 (hex, 16 digits) of the encoded examples in order; None for no data."""
    if not examples:
        return None
    digest = hashlib.sha256()
    for example in examples:
        _update(digest, example)
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def _files(path: Path) -> list[Path]:
    """The files that make up a model directory: its own, and its ``adapter/`` (a LoRA training output)."""
    found = [p for p in sorted(path.iterdir()) if p.is_file()]
    if (path / "adapter").is_dir():
        found += [p for p in sorted((path / "adapter").iterdir()) if p.is_file()]
    return [p for p in found if p.suffix in WEIGHT_SUFFIXES or p.name.endswith("config.json")]


def _header(path: Path) -> bytes:
    if path.suffix != ".safetensors":
        return b""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return f.read(min(n, 100 << 20))


def model_fingerprint(name_or_path: str, config=None) -> str:
    """What the base model is, as content (see the module doc)."""
    if name_or_path.startswith("tiny:"):
        return name_or_path
    path = Path(name_or_path)
    if not path.is_dir():
        commit = getattr(config, "_commit_hash", None)
        return f"{name_or_path}@{commit}" if commit else name_or_path
    files = _files(path)
    whole = sum(p.stat().st_size for p in files) <= WHOLE_BYTES
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.relative_to(path)}:{p.stat().st_size}\n".encode())
        if whole or p.suffix not in WEIGHT_SUFFIXES:
            with open(p, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
        else:
            digest.update(_header(p))
    return ("sha256:" if whole else "sha256-headers:") + digest.hexdigest()[:16]
