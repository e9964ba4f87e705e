"""What stops a run, and how: SIGTERM/SIGINT finish the step in progress on every rank and save a checkpoint
(:class:`StopSignals`, :class:`Preempted`, exit code 75); a non-finite step is never applied and, under
``train.on_nonfinite=stop``, ends the run after a checkpoint of the last good state (:class:`NonFiniteStep`).
The trainer decides both in one all-reduce per optimizer step (``Trainer._step_verdict``)."""

from __future__ import annotations

import os
from pathlib import Path


class NonFiniteStep(RuntimeError):
    """A step's loss or gradient norm was NaN/inf under ``train.on_nonfinite=stop`` (nothing was applied)."""


PREEMPTED_EXIT_CODE = 75  # sysexits' EX_TEMPFAIL: stopped by a signal after a checkpoint; run again to resume


class Preempted(Exception):
    """SIGTERM/SIGINT: the step in progress finished on every rank, a checkpoint was written."""

    def __init__(self, step: int, signal_name: str, out: Path):
        self.step = step
        super().__init__(f"stopped by {signal_name} after step {step}; checkpoint saved in {out / f'checkpoint-{step}'}. "
                         f"Continue with train.resume_from_checkpoint=latest (same train.output_dir)")


class StopSignals:
    """SIGTERM and SIGINT ask the loop to stop at the end of the optimizer step in progress (a second SIGINT
    interrupts at once). The handler only sets a flag: every rank reads it in the step's all-reduce, so all
    stop after the same step even when the signal reaches one rank only or reaches them at different times."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def install(self) -> "StopSignals":
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
        os.write(2, f"\n{name} received: finishing the current step, then saving a checkpoint and stopping "
                    f"(Ctrl-C again interrupts at once)\n".encode())

    def restore(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
