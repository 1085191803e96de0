"""Stopping a training run cleanly: SIGTERM/SIGINT set a flag that the loop checks after each
update (all ranks agree on it), so the run writes a checkpoint and ends with
``TrainingInterrupted`` (exit status 128 + signal)."""
from __future__ import annotations

import signal
import threading
from pathlib import Path

from spectrascope.errors import TrainingInterrupted

__all__ = ["StopFlag", "interrupt"]


class StopFlag:
    """SIGTERM/SIGINT set ``signum`` (checked at the next update); a second SIGINT aborts."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def interrupt(signum: int, out: Path, epoch: int, step: int):
    """Raise the ``TrainingInterrupted`` of a run stopped at ``(epoch, step)``."""
    raise TrainingInterrupted(
        f"stopped by {signal.Signals(signum).name} at epoch {epoch + (1 if step else 0)} update {step}; "
        f"checkpoint {out / 'last.pth'} (continue with --resume {out / 'last.pth'})", signum)
