"""Where a model comes from (a local directory, a hub id, or ``tiny:<family>``), and errors that say so.

A missing local path or a hub download that fails ends in one line naming the model and what to do, not
in transformers' generic messages ("Repo id must be in the form ...", "We couldn't connect to ...").
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from align.errors import ModelNotFound  # noqa: F401  (raised here; its home is align.errors)


def looks_local(name: str) -> bool:
    """A path rather than a hub id (hub ids are ``name`` or ``namespace/name``)."""
    return (
        name.startswith(("/", "./", "../", "~"))
        or name.count("/") > 1
        or os.sep != "/"
        and os.sep in name
        or Path(name).suffix in (".json", ".safetensors", ".bin", ".pt")
    )


def check_local(name: str, what: str = "model") -> None:
    """Fail with one clear line when ``name`` is meant as a local path and nothing is there."""
    if name.startswith("tiny:") or Path(name).exists():
        return
    if looks_local(name):
        raise ModelNotFound(
            f"{what} {name}: no such directory (give a directory holding config.json and the "
            f"weights, a training output, or a hub id such as GSAI-ML/LLaDA-8B-Instruct)"
        )


@contextlib.contextmanager
def hub_errors(name: str, what: str = "model"):
    """Turn a failed hub load of ``name`` into :class:`ModelNotFound` naming it and a way to use a local copy."""
    try:
        yield
    except ModelNotFound:
        raise
    except OSError as e:
        if Path(name).exists():
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        reason = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise ModelNotFound(
            f"could not load the {what} {name!r} from the Hugging Face hub"
            f"{' (HF_HUB_OFFLINE is set and it is not in the local cache)' if offline else ''}: {reason}. "
            f"On a machine without hub access, download it where there is one "
            f"(`hf download {name} --local-dir DIR`), copy DIR here and pass its path instead of the id"
        ) from e
