"""The one error hierarchy of spectrascope.

Every error the toolkit raises on purpose derives from :class:`SpectrascopeError`. Two
kinds matter to callers:

* :class:`UserError` -- the input was wrong (an option value, a model name, a checkpoint
  that does not fit, an image that cannot be decoded, an output folder that would lose
  data, non-finite weights). The command line prints such an error as one line and exits
  with status 2; nothing is written. ``UserError`` is also a ``ValueError`` so that code
  written against plain Python conventions keeps working.
* everything else -- a bug. The command line never hides a bug behind a one-liner: an
  :class:`InternalError`, or any builtin ``ValueError`` / ``KeyError`` raised by our own
  code, ends with its traceback.

:class:`Interrupted` is neither: SIGTERM/SIGINT ended the run cleanly (exit code
``128 + signal``), with nothing half-written.
"""
from __future__ import annotations

__all__ = [
    "SpectrascopeError", "UserError", "InternalError", "OptionError", "UnknownModelError", "CheckpointError",
    "DataError", "TapError", "CamError", "OutputError", "OutputExistsError", "FigureError", "NonFiniteError",
    "TrainingError", "NonFiniteLossError", "Interrupted", "TrainingInterrupted", "PeerFailure",
    "quiet_startup_interrupts",
]


class SpectrascopeError(Exception):
    """Base of every error spectrascope raises on purpose."""


class UserError(SpectrascopeError, ValueError):
    """Bad input: reported as one line (naming the option and what is accepted), exit status 2.

    ``option`` names the command-line option the value came from (``"--img-size"``); the
    message is then shown as ``--img-size: <message>``."""

    exit_code = 2

    def __init__(self, message: str = "", *, option: str | None = None):
        super().__init__(message)
        self.option = option

    def __str__(self) -> str:
        msg = super().__str__()
        if self.option and not msg.startswith(self.option):
            return f"{self.option}: {msg}"
        return msg


class InternalError(SpectrascopeError, RuntimeError):
    """A bug in spectrascope (an invariant that does not hold); never shown as a one-liner."""


class OptionError(UserError):
    """An option value that is not accepted (wrong type, out of range, unknown key)."""


class UnknownModelError(UserError):
    """A model name that is neither registered nor an alias."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read safely or does not fit the model."""


class DataError(UserError):
    """Bad image or data input (missing folder, no images, undecodable file, bad data spec)."""


class TapError(UserError):
    """A tap selection that does not fit the model."""


class CamError(UserError):
    """A CAM request that does not fit the model or the inputs."""


class OutputError(UserError):
    """An output path that cannot be written without losing data (or cannot be written at all)."""


class OutputExistsError(OutputError, FileExistsError):
    """The output folder exists and is not empty (``--overwrite`` not given)."""


class FigureError(UserError):
    """A figure recipe that does not exist or cannot run with the given inputs."""


class NonFiniteError(UserError):
    """A non-finite value (NaN/inf) appeared in a model output or a tap: the run stopped, nothing was written."""


class TrainingError(SpectrascopeError, RuntimeError):
    """A training run that cannot go on (reported as one line)."""

    exit_code = 1


class NonFiniteLossError(TrainingError):
    """The training loss became non-finite; the update was not applied."""


class Interrupted(SpectrascopeError):
    """SIGTERM/SIGINT ended the run cleanly; ``exit_code`` is ``128 + signal number``."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + int(signum)


class TrainingInterrupted(Interrupted, TrainingError):
    """SIGTERM/SIGINT during training: a checkpoint was written first."""


class PeerFailure(SpectrascopeError):
    """Another process of the ``torchrun`` group failed: this one stops with the same line and exit
    status (``engine.dist.Dist.agree``), before any collective could wait for the failed one.

    ``kind`` says how the command line shows it: ``"user"`` (one ``Error:`` line), ``"signal"``
    (the signal's line) or ``"bug"`` (one line pointing at the traceback of the failed process)."""

    def __init__(self, message: str, exit_code: int = 2, kind: str = "user", rank: int | None = None):
        super().__init__(message)
        self.exit_code = int(exit_code)
        self.kind = kind
        self.rank = rank
def quiet_startup_interrupts() -> None:
    """On the command line (``spectrascope ...``, ``python -m spectrascope.cli``, torchrun), Ctrl-C
    while the toolkit is still starting (importing torch takes seconds) ends the process at once
    with status 130 and no traceback; each command then handles SIGINT itself (a clean stop). A
    library import (a notebook, a script) is left alone."""
    import os
    import signal
    import sys
    import threading
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 != "-m" and os.path.basename(argv0) not in ("spectrascope", "spectrascope.exe"):
        return
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, lambda _signum, _frame: os._exit(130))
