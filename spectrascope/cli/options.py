"""Shared options of the command line and how their values are parsed and validated; the
wrapper that turns user errors into one line."""
from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading

import click

from spectrascope.errors import Interrupted, OptionError, TrainingError, UserError
from spectrascope.io.specs import parse_scalar

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
        except (UserError, TrainingError) as exc:
            raise OneLineError(_first_line(exc), getattr(exc, "exit_code", 2),
                               fresh_line=not err.at_line_start) from None


def user_errors(fn):
    """Run a command through ``guarded``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return guarded(fn, *args, **kwargs)

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


def _json_value(key: str, text: str):
    """``mixer_kwargs={"num_filters": 2}`` / ``dims=[8,16]``: a JSON object or list."""
    import json
    try:
        return json.loads(text)
    except ValueError as exc:
        raise OptionError(f"{key}={text}: not valid JSON ({exc.args[0] if exc.args else exc})",
                          option="--model-kwargs") from None


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
            if value.strip()[:1] in ("{", "["):
                vals = _json_value(key, value)
            else:
                vals = [parse_scalar(v, booleans=True) for v in value.split(",")] if "," in value \
                    else parse_scalar(value, booleans=True)
            out[key.strip()] = vals
    return out


#: (model option, checkpoint option) keyword pairs of the commands that take checkpoints
_CHECKPOINT_KWARGS = (("model_name", "checkpoint"), ("model_a", "checkpoint_a"), ("model_b", "checkpoint_b"),
                      ("model_names", "checkpoints"), ("models", "checkpoints"))


def _pretrained_path(model: str, weights_dir, *, skip_missing: bool = False) -> str | None:
    from spectrascope.zoo import registry, weights
    if model.startswith("timm:"):
        if skip_missing:
            return None
        raise OptionError(f"{model}: --pretrained resolves zoo models' official weights; for timm models "
                          "pass a file with --checkpoint", option="--pretrained")
    card = registry.get_card(model)
    if not card.weight_file and skip_missing:
        return None
    return str(weights.resolve(card, weights_dir=weights_dir))


def fill_pretrained(kwargs: dict, weights_dir=None, models=None, *, skip_missing: bool = False) -> list[str]:
    """Give every model of a command's ``kwargs`` that has no ``--checkpoint`` its official weights
    (``spectrascope.zoo.weights.resolve``); ``models`` names them where no model option does
    (figure recipes). Returns the models left with random weights (``skip_missing``: no release)."""
    left: list[str] = []
    done: set[str] = set()
    for model_key, ck_key in _CHECKPOINT_KWARGS:
        if ck_key in done or ck_key not in kwargs or (model_key not in kwargs and models is None):
            continue
        done.add(ck_key)
        names = models if model_key not in kwargs else kwargs[model_key]
        if isinstance(names, str):
            if kwargs[ck_key] is None:
                kwargs[ck_key] = _pretrained_path(names, weights_dir)
            continue
        names = list(dict.fromkeys(names))
        given = [str(c) for c in kwargs[ck_key] or ()]
        if given and all("=" in c for c in given):
            pairs = dict(c.split("=", 1) for c in given)
        elif given and len(given) == len(names):
            pairs = dict(zip(names, given))
        elif given:
            return left       # the command reports the mismatch
        else:
            pairs = {}
        for m in names:
            if pairs.get(m) in (None, "", "-"):
                path = _pretrained_path(m, weights_dir, skip_missing=skip_missing)
                if path is None:
                    left.append(m)
                    pairs.pop(m, None)
                else:
                    pairs[m] = path
        kwargs[ck_key] = tuple(f"{m}={p}" for m, p in pairs.items())
    return left


def pretrained_options(fn):
    """--pretrained/--weights-dir: every model without a --checkpoint gets its card's official
    weights (weights folder, cache, SPECTRASCOPE_WEIGHTS_MIRROR, official URL)."""

    @functools.wraps(fn)
    def wrapper(*args, pretrained=False, weights_dir=None, **kwargs):
        if pretrained:
            guarded(fill_pretrained, kwargs, weights_dir)        # a download: Ctrl-C ends it cleanly (130)
        elif weights_dir:
            raise OneLineError("--weights-dir: give --pretrained too (the folder is where official weights are "
                               "looked up)")
        return fn(*args, **kwargs)

    wrapper = click.option("--weights-dir", type=click.Path(file_okay=False), default=None,
                           help="folder of official weight files under their official names "
                                "(default: $SPECTRASCOPE_WEIGHTS)")(wrapper)
    wrapper = click.option("--pretrained", is_flag=True,
                           help="official weights for every model without --checkpoint (weights folder, "
                                "cache, $SPECTRASCOPE_WEIGHTS_MIRROR, official URL)")(wrapper)
    return wrapper


def runtime_options(fn):
    """--img-size/--device/--model-kwargs (and --pretrained/--weights-dir): how every analysed model
    is built and where it runs."""
    fn = pretrained_options(fn)
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
