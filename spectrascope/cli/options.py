"""Shared options of the command line and how their values are parsed and validated; the
wrapper that turns user errors into one line."""
from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading

import click

from spectrascope.errors import Interrupted, OptionError, SpectrascopeError, TrainingError, UserError

#: builtin exceptions still accepted as the user's input (legacy; being replaced by UserError)
LEGACY_USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


class OneLineError(click.ClickException):
    """A user error shown as ``Error: <one line>`` with the error's exit status."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        from spectrascope.engine import dist
        if dist.current().main:                  # under torchrun one rank speaks for all
            super().show(file)


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


def user_errors(fn):
    """Run a command: user errors become one line (exit 2), signals end it cleanly (128 + signal);
    anything else is a bug and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with interruptible():
                return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except Interrupted as exc:
            from spectrascope.engine import dist
            if dist.current().main:
                click.echo(str(exc), err=True)
            sys.exit(exc.exit_code)
        except (UserError, TrainingError) as exc:
            raise OneLineError(_first_line(exc), getattr(exc, "exit_code", 2)) from None
        except LEGACY_USER_ERRORS as exc:
            if isinstance(exc, SpectrascopeError):
                raise
            raise OneLineError(_first_line(exc), 1) from None

    return wrapper


#: largest accepted side of an input (px): beyond it no zoo model fits in memory
MAX_SIDE = 8192


def parse_img_size(value, option: str = "--img-size"):
    """'224' -> 224, '96x128' -> (96, 128); sides are integers in [1, MAX_SIDE]."""
    if value is None:
        return None
    text = str(value).strip().lower().replace(",", "x")
    try:
        parts = [int(v) for v in text.split("x")]
    except ValueError:
        raise OptionError(f"{value!r} is not S or HxW (e.g. 224 or 192x256)", option=option) from None
    if len(parts) not in (1, 2):
        raise OptionError(f"{value!r} is not S or HxW (e.g. 224 or 192x256)", option=option)
    bad = [v for v in parts if not 1 <= v <= MAX_SIDE]
    if bad:
        raise OptionError(f"{value!r}: every side must be between 1 and {MAX_SIDE} pixels", option=option)
    return parts[0] if len(parts) == 1 else tuple(parts)


def _scalar(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _given(param: str) -> bool:
    """Whether the user set a click parameter (rather than its default)."""
    from click.core import ParameterSource
    return click.get_current_context().get_parameter_source(param) not in (ParameterSource.DEFAULT, None)


def parse_model_kwargs(items) -> dict:
    """``("dims=32,64,96,128", "drop_path_rate=0.1", "token_mixers=sepconv,df")`` -> overrides dict.
    Comma-separated values become lists; numbers, true/false and none are converted."""
    out = {}
    for item in items or ():
        for part in [item] if "=" in item and item.count("=") == 1 else item.split():
            if "=" not in part:
                raise OptionError(f"{part!r} is not KEY=VALUE (e.g. dims=32,64,96,128)", option="--model-kwargs")
            if not part.split("=", 1)[0].strip():
                raise OptionError(f"{part!r} has no key (KEY=VALUE)", option="--model-kwargs")
            key, value = part.split("=", 1)
            vals = [_scalar(v) for v in value.split(",")] if "," in value else _scalar(value)
            out[key.strip()] = vals
    return out


def runtime_options(fn):
    """--img-size/--device/--model-kwargs: how every analysed model is built and where it runs."""
    fn = click.option("--model-kwargs", "model_kwargs", multiple=True, metavar="KEY=VALUE",
                      help="constructor overrides with the official argument names (every model), "
                           "e.g. dims=32,64,96,128")(fn)
    fn = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")(fn)
    fn = click.option("--img-size", default=None, help="input size S or HxW (default: each model's)")(fn)
    return fn


def model_options(fn):
    """--model/--checkpoint/--img-size/--device/--model-kwargs, shared by the analysis commands."""
    fn = runtime_options(fn)
    fn = click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                      help="official .pth, timm .pth.tar, spectrascope checkpoint or .safetensors")(fn)
    fn = click.option("--model", "model_name", required=True, help="registry name, alias or timm:<name>")(fn)
    return fn


def image_options(fn):
    """--images/--data/--num-images/--batch-size, shared by the analysis commands."""
    fn = click.option("--batch-size", default=16, show_default=True, type=int)(fn)
    fn = click.option("--num-images", default=None, type=int, help="use the first N images")(fn)
    fn = click.option("--data", default=None,
                      help="samples | imagefolder:PATH | synthetic[:k=v,...] | cifar10:PATH | cifar100:PATH")(fn)
    fn = click.option("--images", type=click.Path(file_okay=False), default=None,
                      help="folder of images (default: the bundled sample photos)")(fn)
    return fn


def _output_dir(output, command: str, tag: str, overwrite: bool):
    from pathlib import Path

    from spectrascope.io.results import check_output, default_output_dir
    out = Path(output) if output else default_output_dir(command, tag)
    check_output(out, command=command, overwrite=overwrite)
    return out
