"""What every command shares: the wrapper that turns user errors into one line (and signals into a
clean exit), which process speaks under ``torchrun``, and the click form of the shared options
(declared once in ``seam.options``)."""
from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading

import click

from spectrascope.errors import Interrupted, PeerFailure, TrainingError, UserError
from spectrascope.seam.options import Option


class OneLineError(click.ClickException):
    """A user error shown as ``Error: <one line>`` with the error's exit status; on a line of its
    own even when a progress bar left the cursor mid-line (``fresh_line``)."""

    def __init__(self, message: str, exit_code: int = 2, fresh_line: bool = False):
        super().__init__(message)
        self.exit_code = exit_code
        self.fresh_line = fresh_line

    def show(self, file=None) -> None:
        if speaks():                             # under torchrun one rank speaks for all
            if self.fresh_line:
                click.echo("", err=True)
            super().show(file)


class _LineTracker:
    """``sys.stderr`` while a command runs: passes everything through and remembers whether the
    last text written ended its line (a progress bar ends with a carriage return)."""

    def __init__(self, stream):
        self._stream = stream
        self.at_line_start = True

    def write(self, text):
        if text:
            self.at_line_start = text.endswith("\n" if isinstance(text, str) else b"\n")
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _tracked_stderr():
    tracker = _LineTracker(sys.stderr)
    old, sys.stderr = sys.stderr, tracker
    try:
        yield tracker
    finally:
        if sys.stderr is tracker:
            sys.stderr = old


def speaks() -> bool:
    """Whether this process reports for the run: rank 0 of the group, or of the launcher's
    environment once the group is left (errors are shown after the session ended)."""
    import os

    from spectrascope.engine import dist
    return dist.current().main and os.environ.get("RANK", "0") == "0"


def _first_line(exc: BaseException) -> str:
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return str(msg).strip().splitlines()[0] if str(msg).strip() else type(exc).__name__


@contextlib.contextmanager
def interruptible():
    """SIGTERM and SIGINT raise ``Interrupted`` (so staged outputs are removed and the run ends
    with status 128 + signal, like training)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise Interrupted(f"stopped by {signal.Signals(signum).name}; nothing was written", signum)
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def guarded(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` as a command runs it: user errors become one line (exit 2; a write
    the machine refused, exit 1), SIGTERM/SIGINT end it cleanly (128 + signal), each on a line of
    its own after a progress bar; anything else is a bug and keeps its traceback."""
    with _tracked_stderr() as err:
        try:
            with interruptible():
                return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except Interrupted as exc:
            if speaks():
                click.echo(("" if err.at_line_start else "\n") + str(exc), err=True)
            sys.exit(exc.exit_code)
        except PeerFailure as exc:                    # another process failed: the same line, the same status
            if exc.kind == "signal":
                if speaks():
                    click.echo(str(exc), err=True)
                sys.exit(exc.exit_code)
            raise OneLineError(_first_line(exc), exc.exit_code) from None
        except (UserError, TrainingError) as exc:
            raise OneLineError(_first_line(exc), getattr(exc, "exit_code", 2),
                               fresh_line=not err.at_line_start) from None


def user_errors(fn):
    """Run a command through ``guarded``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return guarded(fn, *args, **kwargs)

    return wrapper


def click_option(o: Option, *, default_none: bool = False) -> click.Option:
    """The click form of a declared option (``default_none``: no default, for ``plot``)."""
    decls = [f"{o.flag}/--no-{o.flag[2:]}" if o.negatable else o.flag, *o.aliases, o.name]
    kw: dict = {"help": o.help, "multiple": o.multiple, "show_default": o.show_default and not default_none,
                "default": None if default_none else o.default, "required": o.required and not default_none}
    if o.metavar:
        kw["metavar"] = o.metavar
    if o.type is bool and not o.negatable:
        kw["is_flag"] = True
        kw["default"] = None if default_none else bool(o.default)
    elif o.choices is not None:
        kw["type"] = click.Choice(list(o.choices))
    elif o.type in (int, float):
        kw["type"] = o.type
    if o.multiple and kw["default"] is None:
        kw["default"] = ()
    return click.Option(decls, **kw)


def shared_option(name: str, **changes) -> click.Option:
    """The click option of a shared option (``--amp``, ``--output`` ...), from its one declaration in
    ``seam.options``; ``changes`` adjust it for a command (another default or help)."""
    from spectrascope.seam import options as so
    for group in (so.MODEL_ONE, so.IMAGES, so.RUNTIME, so.SEED, so.OUTPUT, so.STYLE):
        for o in group:
            if o.name == name:
                return click_option(o.but(**changes) if changes else o)
    raise KeyError(name)


def with_options(*opts: click.Option):
    """A decorator adding click ``Option`` objects to a command (in the given order)."""
    def deco(fn):
        fn.__click_params__ = list(getattr(fn, "__click_params__", [])) + list(reversed(opts))
        return fn
    return deco


def given(param: str) -> bool:
    """Whether the user set a click parameter (rather than its default)."""
    from click.core import ParameterSource
    return click.get_current_context().get_parameter_source(param) not in (ParameterSource.DEFAULT, None)
