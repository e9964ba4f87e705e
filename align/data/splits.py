"""Which records a run trains on and which it holds out: a separate held-out dataset, the hub's eval split, or a
seeded fraction of a local file (``data.eval_fraction``; the ids are written to ``eval_ids.json``). Held-out
records are never training records."""

from __future__ import annotations

from pathlib import Path

from align.config import ConfigError
from align.data.order import holdout_split
from align.data.sources import is_local, load_records


def load_splits(d, *, do_eval: bool, build, unit: str, out: Path, say=print):
    """(train examples, held-out examples, where(id) of the training records or None, the held-out ids record).

    ``d``: the ``data`` config section; ``build(rows, source, limit=, indices=)`` encodes records (the objective's
    dataset builder, which prints its report); ``unit``: what an example is called (pairs, sequences)."""
    if d.eval_split is not None and is_local(d.eval_dataset or d.dataset):
        raise ConfigError(
            f"data.eval_split={d.eval_split!r} names a split of a hub dataset, but the held-out data "
            f"would come from the local file {d.eval_dataset or d.dataset}; set data.eval_split=null "
            f"(a local file is held out by data.eval_fraction, or give data.eval_dataset=FILE)"
        )
    rows, source = load_records(d.dataset, d.train_split, d.config_name)
    train_where = getattr(rows, "where", None)  # record id -> "path:LINE" for messages
    train_idx, eval_data = None, []
    if do_eval:
        if d.eval_dataset is not None or not is_local(d.dataset):  # a separate dataset, or the hub's eval split
            eval_rows, eval_source = load_records(d.eval_dataset or d.dataset, d.eval_split or "test", d.config_name)
            eval_data = build(eval_rows, eval_source, limit=d.max_eval_examples)
        else:
            if d.eval_fraction == 0:
                raise ConfigError(
                    f"{d.dataset} is a local file and no held-out data is named: give "
                    f"data.eval_dataset=FILE, or data.eval_fraction>0 to hold out part of it, or "
                    f"train.do_eval=false"
                )
            train_idx, held = holdout_split(len(rows), d.eval_fraction, d.eval_split_seed)
            say(
                f"holding out {len(held)} of {len(rows)} records of {source} for evaluation "
                f"(data.eval_fraction={d.eval_fraction}, data.eval_split_seed={d.eval_split_seed}); "
                f"their ids are in {out / 'eval_ids.json'}"
            )
            eval_data = build(rows, f"{source} (held out)", limit=d.max_eval_examples, indices=held)
    train_data = build(rows, source, limit=d.max_train_examples, indices=train_idx)
    if do_eval and not eval_data:
        held = (
            f"data.eval_fraction={d.eval_fraction} of the {len(rows)} records of {source} held out {len(held)}"
            if train_idx is not None
            else f"{d.eval_dataset or d.dataset} gave none"
        )
        raise ConfigError(
            f"no held-out {unit} to evaluate on ({held}; data.max_eval_examples="
            f"{d.max_eval_examples}; the data report above counts the skipped ones): raise "
            f"data.eval_fraction, give data.eval_dataset=FILE, or set train.do_eval=false"
        )
    eval_ids = {
        "source": d.eval_dataset or d.dataset,
        "held_out_of_training_file": train_idx is not None,
        "ids": [e.id for e in eval_data],
    }
    return train_data, eval_data, train_where, eval_ids
