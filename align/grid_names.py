"""Names of an ablation grid: the axis shorthands, a cell's directory name, the cells of a set of axes.

Shared by ``align.ablate`` (which runs grids), ``align.grid_report`` (their tables and summary) and
``align.variance`` (the estimator's variance along a grid's runs).
"""

from __future__ import annotations

import itertools
import re

AXES = {
    "coupling": "estimator.coupling",
    "share_policy_reference": "estimator.share_policy_reference",
    "share_chosen_rejected": "estimator.share_chosen_rejected",
    "estimator": "estimator.estimator",
    "n_samples": "estimator.n_samples",
    "seed": "train.seed",
    "loss_type": "loss.loss_type",
    "beta": "loss.beta",
    "learning_rate": "train.learning_rate",
}


def short(key: str) -> str:
    """``estimator.coupling`` -> ``coupling``; any other key -> its last part."""
    inverse = {v: k for k, v in AXES.items()}
    return inverse.get(key, key.split(".")[-1])


def cell_name(cell: dict) -> str:
    """A cell's run directory name: ``coupling-coupled_seed-0``."""
    return "_".join(f"{short(k)}-{re.sub(r'[^A-Za-z0-9.+-]', '', str(v))}" for k, v in cell.items()) or "base"


def cells_of(axes: dict) -> list[dict]:
    """Every combination of the axes' values, the last axis fastest."""
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
