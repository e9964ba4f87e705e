"""What a run logs: the metric window of the loop (:class:`MetricWindow`), means over all ranks
(:func:`reduce_means`), ``metrics.jsonl`` (:func:`log_metrics`) and the trackers, TensorBoard or wandb
(:func:`start_trackers`). The metric names are the objective's (``align.dpo``, ``align.sft``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


class MetricWindow:
    """What the loop accumulates between two logs: per-example stat sums and their count, policy tokens, seconds
    inside training steps (evaluation and saving are not counted), applied steps' gradient norms, and the steps
    skipped by the fp16 loss scaler or for a non-finite value."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count, self.tokens, self.seconds = 0, 0, 0.0
        self.grad_norms: list[float] = []
        self.skipped, self.nonfinite = 0, 0

    def add(self, stats: dict[str, torch.Tensor], examples: int, tokens: int, seconds: float) -> None:
        """One micro-batch: ``stats`` per example [b] each."""
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0) + v.sum()
        self.count += examples
        self.tokens += tokens
        self.seconds += seconds


def reduce_means(acc, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
    """Mean over all examples on all ranks of per-example stats: the sums and the count are all-reduced."""
    keys = sorted(sums)
    vec = torch.stack([sums[k] for k in keys] + [torch.tensor(float(count), device=sums[keys[0]].device)])
    vec = acc.reduce(vec, reduction="sum")
    return {k: (vec[i] / vec[-1]).item() for i, k in enumerate(keys)}


def log_metrics(acc, out: Path, metrics: dict, step: int) -> None:
    """To the trackers (every rank calls it) and, on the main process, a line of ``out/metrics.jsonl``."""
    acc.log(metrics, step=step)
    if acc.is_main_process:
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")


def write_eval_examples(acc, out: Path, step: int, examples: list, world: int) -> None:
    """Per held-out example metrics of an evaluation, (id, values) from every rank, in ``eval_examples.jsonl``."""
    from accelerate.utils import gather_object

    everything = gather_object(examples) if world > 1 else examples
    if acc.is_main_process:
        with open(out / "eval_examples.jsonl", "a") as f:
            for example_id, values in sorted(everything, key=lambda x: x[0]):
                f.write(json.dumps({"step": step, "id": example_id, **values}) + "\n")


def start_trackers(acc, cfg, logging_dir: Path, out: Path) -> None:
    """TensorBoard (events in ``logging_dir``, the resolved config as text) or wandb etc. (the config as scalars)."""
    t = cfg.train
    if t.report_to == "tensorboard":
        # no hyperparameters through accelerate: its add_hparams writes two more time-stamped folders; the
        # resolved config goes in as text (and is output_dir/config.yaml)
        acc.init_trackers(logging_dir.name)
        if acc.is_main_process:
            import yaml

            text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
            acc.get_tracker("tensorboard", unwrap=True).add_text("config", f"```yaml\n{text}```")
    elif t.report_to != "none":
        from transformers.utils import flatten_dict

        scalars = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten_dict(cfg.to_dict()).items()
        }
        acc.init_trackers(
            t.run_name or out.name,
            config=scalars,
            init_kwargs={t.report_to: {"name": t.run_name}} if t.run_name else {},
        )
