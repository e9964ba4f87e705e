"""What stops a run, and how: SIGTERM/SIGINT finish the step in progress on every rank and save a checkpoint
(:class:`StopSignals`, :class:`Preempted`, exit code 75); a non-finite step is never applied and, under
``train.on_nonfinite=stop``, ends the run after a checkpoint of the last good state (:class:`NonFiniteStep`).
Both are decided in one all-reduce per optimizer step (:func:`step_verdict`), so every rank acts alike.
Exercised by ``tests/test_reliability.py`` (NaN on one rank, a signal to one rank, under DDP and ZeRO-2)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger("align.guards")


class NonFiniteStep(RuntimeError):
    """A step's loss or gradient norm was NaN/inf under ``train.on_nonfinite=stop`` (nothing was applied)."""


PREEMPTED_EXIT_CODE = 75  # sysexits' EX_TEMPFAIL: stopped by a signal after a checkpoint; run again to resume


class Preempted(Exception):
    """SIGTERM/SIGINT: the step in progress finished on every rank, a checkpoint was written."""

    def __init__(self, step: int, signal_name: str, out: Path):
        self.step = step
        super().__init__(
            f"stopped by {signal_name} after step {step}; checkpoint saved in {out / f'checkpoint-{step}'}. "
            f"Continue with train.resume_from_checkpoint=latest (same train.output_dir)"
        )


class StopSignals:
    """SIGTERM and SIGINT ask the loop to stop at the end of the optimizer step in progress (a second SIGINT
    interrupts at once). The handler only sets a flag: every rank reads it in the step's all-reduce, so all
    stop after the same step even when the signal reaches one rank only or reaches them at different times."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def install(self) -> StopSignals:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        import signal

        name = signal.Signals(signum).name
        if self.received is not None and name == "SIGINT":
            raise KeyboardInterrupt
        self.received = name
        # no logging here: the handler can run while the logging lock is held
        os.write(
            2,
            f"\n{name} received: finishing the current step or evaluation, then saving a checkpoint and stopping "
            f"(Ctrl-C again interrupts at once)\n".encode(),
        )

    def restore(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def stop_agreed(acc, signal_name: str | None) -> str | None:
    """Whether any rank received SIGTERM/SIGINT (one all-reduce, so every rank decides alike): its name or None.
    Asked after an evaluation, where a stop requested during it is honoured before the next step."""
    flag = torch.tensor([float(signal_name is not None)], dtype=torch.float64, device=acc.device)
    if acc.num_processes > 1:
        flag = acc.reduce(flag, reduction="sum")
    return (signal_name or "a signal on another rank") if flag.item() > 0 else None


def step_verdict(acc, window: list, grad_norm, signal_name: str | None, tokens: int = 0) -> dict:
    """Whether the optimizer step just accumulated may be applied, and whether to stop after it: decided alike on
    every rank from one all-reduce of (non-finite loss, non-finite gradient norm, signal received); the same
    all-reduce sums the step's policy tokens (``tokens`` on this rank) into ``verdict["tokens"]``.

    ``window``: this rank's (example ids, loss) of the step's micro-batches. Non-finite means NaN or inf in any
    micro-batch loss of the step on any rank, or in the (global) gradient norm; under fp16 an inf gradient norm is
    the loss scaler's business (it skips the step and lowers its scale), so there only the loss counts. Under
    DeepSpeed the engine steps inside ``backward``: its own overflow check (on for bf16 here, always on for fp32
    and ZeRO-3) skips a non-finite gradient norm.
    """
    device = acc.device
    loss_bad = torch.stack([~torch.isfinite(loss) for _, loss in window]).any().float().to(device)
    grad_bad = torch.zeros((), device=device)
    if grad_norm is not None and str(acc.mixed_precision) != "fp16":
        grad_bad = (~torch.isfinite(torch.as_tensor(grad_norm, dtype=torch.float32, device=device))).float()
    flags = torch.stack([loss_bad, grad_bad, torch.tensor(float(signal_name is not None), device=device)]).double()
    flags = torch.cat([flags, torch.tensor([float(tokens)], dtype=torch.float64, device=device)])
    loss_ranks, grad_ranks, signal_ranks, step_tokens = acc.reduce(flags, reduction="sum").tolist()
    nonfinite = loss_ranks > 0 or grad_ranks > 0
    verdict = {
        "apply": not nonfinite,
        "nonfinite": nonfinite,
        "tokens": int(step_tokens),
        "stop": (signal_name or "a signal on another rank") if signal_ranks > 0 else None,
    }
    if nonfinite:
        what = []
        if loss_ranks:
            what.append(f"the loss was not finite on {int(loss_ranks)} of {acc.num_processes} rank(s)")
        if grad_ranks:
            what.append(f"the gradient norm was {float(grad_norm)}")
        verdict["what"] = " and ".join(what)
        if acc.distributed_type.name == "DEEPSPEED" and not acc.optimizer_step_was_skipped:
            log.warning("DeepSpeed applied the step although %s (its gradient norm was finite)", verdict["what"])
        # the offending micro-batches (every micro-batch of the step when no loss was non-finite)
        from accelerate.utils import gather_object

        mine = [i for ids, loss in window if not bool(torch.isfinite(loss)) or not loss_ranks for i in ids]
        verdict["ids"] = sorted(set(gather_object(mine)))
    return verdict


def nonfinite_stop(verdict: dict, step: int, out: Path, where=None, resumed_from: Path | None = None) -> NonFiniteStep:
    """The error of ``train.on_nonfinite=stop`` after step ``step`` (the last good state, saved), naming the
    offending examples (``where(id)``: their file and line, when known). ``resumed_from``: the checkpoint this
    launch resumed from, when the step is the first after it: that checkpoint is named as the first suspect."""
    ids = verdict["ids"]
    located = ""
    if where is not None:
        located = " (" + ", ".join(where(i) for i in ids[:8]) + (" ..." if len(ids) > 8 else "") + ")"
    if resumed_from is not None:
        return NonFiniteStep(
            f"step {step + 1}, the first step after resuming from {resumed_from}: {verdict['what']}; the update was "
            f"not applied on any rank. The first suspect is that checkpoint (damaged in a way its checks cannot "
            f"see, or saved from a state already going bad): resume from an earlier checkpoint named explicitly. "
            f"Examples of the micro-batch(es): ids {ids[:32]}{' ...' if len(ids) > 32 else ''}{located}"
        )
    return NonFiniteStep(
        f"step {step + 1}: {verdict['what']}; the update was not applied on any rank. Examples of the "
        f"offending micro-batch(es): ids {ids[:32]}{' ...' if len(ids) > 32 else ''}{located}. The last good state "
        f"is saved as {out / f'checkpoint-{step}'}. Lower train.learning_rate or look at these "
        f"records, then resume with train.resume_from_checkpoint=latest; or set train.on_nonfinite=skip to skip "
        f"such steps (counted as nonfinite_steps)"
    )
