"""Options, declared once: what every analysis shares and how an analysis declares its own.

An :class:`Option` is one named value with its default, type, help and parser. The name is the
same at every layer: ``--img-size`` on the command line is ``img_size`` in the Python API, in
``Params`` and in results.json. The command line (``spectrascope.cli``) turns declarations into
click options; the Python API (``spectrascope.run``) checks keyword arguments with the same
parsers, so both accept and refuse the same values with the same one-line errors.

The shared options are grouped by what an analysis needs (see ``Needs``):

* ``MODEL_ONE`` / ``MODEL_MANY``: ``--model`` (once, or repeated to compare models),
  ``--checkpoint``, ``--pretrained``, ``--weights-dir``, ``--img-size``, ``--model-kwargs``;
* ``IMAGES`` / ``LABELLED``: ``--images``, ``--data``, ``--num-images``, ``--batch-size``;
* ``RUNTIME``: ``--device``, ``--amp``, ``--channels-last``, ``--compile``, ``--tf32``, ``--workers``;
* ``SEED``: ``--seed``;
* ``OUTPUT``: ``--output``, ``--overwrite``;
* ``STYLE``: ``--style``, ``--ncols`` (how the figures are drawn; ``plot`` and ``figure`` take them too).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

from spectrascope.errors import OptionError
from spectrascope.io.datasets import parse_scalar

__all__ = ["Option", "MAX_SIDE", "parse_img_size", "parse_model_kwargs", "parse_positive", "parse_non_negative",
           "choice", "MODEL_ONE", "MODEL_MANY", "BATCH", "IMAGES", "LABELLED", "RUNTIME", "SEED", "OUTPUT", "STYLE",
           "STYLE_CHOICES", "AMP_CHOICES", "SHARED_NAMES"]

#: largest accepted side of an input (px): beyond it no zoo model fits in memory
MAX_SIDE = 8192


@dataclass(frozen=True)
class Option:
    """One option of an analysis.

    Args:
        name: the Python name (``img_size``); the command-line flag is ``--img-size``.
        default: the value when the option is not given.
        help: one line for ``--help`` and the documentation.
        type: ``str``, ``int``, ``float``, ``bool`` (a flag), or a tuple of accepted strings.
        multiple: the option may be repeated; its value is a tuple.
        required: the command line refuses to run without it.
        metavar: what ``--help`` shows for the value.
        parse: ``parse(value) -> value``: checks and converts a given value (a string from the command
            line or a Python value from the API); raises ``OptionError`` naming the flag.
        aliases: other spellings that keep working on the command line (``-b``, ``--torchcompile``).
        negatable: a flag with a ``--no-`` form.
        cli: False for options of the Python API only (callbacks, labels, built modules).
        show_default: show the default in ``--help``.
    """

    name: str
    default: Any = None
    help: str = ""
    type: Any = str
    multiple: bool = False
    required: bool = False
    metavar: str | None = None
    parse: Callable[[Any], Any] | None = None
    aliases: tuple[str, ...] = ()
    negatable: bool = False
    cli: bool = True
    show_default: bool = True

    @property
    def flag(self) -> str:
        """The command-line spelling: ``--`` + the name with dashes."""
        return "--" + self.name.replace("_", "-")

    @property
    def choices(self) -> tuple[str, ...] | None:
        return self.type if isinstance(self.type, tuple) else None

    def but(self, **changes) -> "Option":
        """This option with other settings (an analysis's own default or help)."""
        return replace(self, **changes)

    def convert(self, value):
        """The checked value of ``value`` (``None`` and empty repeats give the default)."""
        if value is None or (self.multiple and value == ()):
            if self.parse is not None and self.default is not None:
                return self.parse(self.default)              # a default in the option's own spelling
            return self.default
        if self.multiple and isinstance(value, Mapping):       # --model-kwargs as a dict (Python API)
            return self.parse(value) if self.parse is not None else dict(value)
        if self.multiple:
            items = (value,) if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) else value
            value = tuple(self._one(v) for v in items)
        else:
            value = self._one(value)
        return self.parse(value) if self.parse is not None else value

    def _one(self, value):
        if self.choices is not None:
            if str(value) not in self.choices:
                raise OptionError(f"{value!r} is not accepted; use {', '.join(self.choices)}", option=self.flag)
            return str(value)
        if self.type is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                return value.lower() in ("true", "1", "yes", "on")
            if not isinstance(value, (bool, int)):
                raise OptionError(f"{value!r} is not true or false", option=self.flag)
            return bool(value)
        if self.type in (int, float):
            if isinstance(value, bool):
                raise OptionError(f"{value!r} is not a number", option=self.flag)
            try:
                number = self.type(value) if not isinstance(value, str) else self.type(value.strip())
            except (TypeError, ValueError):
                kind = "an integer" if self.type is int else "a number"
                raise OptionError(f"{value!r} is not {kind}", option=self.flag) from None
            if self.type is int and isinstance(value, float) and value != int(value):
                raise OptionError(f"{value!r} is not an integer", option=self.flag)
            return number
        return value


# ---------------------------------------------------------------------------- parsers

def parse_img_size(value, option: str = "--img-size"):
    """``'224'`` / ``224`` -> 224; ``'96x128'`` / ``(96, 128)`` -> (96, 128); sides in [1, MAX_SIDE].

    Args:
        value: S or HxW as text, an integer, or a pair of integers.
        option: the flag named in errors.

    Returns:
        An integer (square) or a pair (H, W), or None for None.
    """
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        text = "x".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.strip().lower().replace(",", "x")
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


def _json_value(key: str, text: str, option: str):
    try:
        return json.loads(text)
    except ValueError as exc:
        raise OptionError(f"{key}={text}: not valid JSON ({exc.args[0] if exc.args else exc})",
                          option=option) from None


def parse_model_kwargs(items, option: str = "--model-kwargs") -> dict:
    """Constructor overrides: ``("dims=32,64,96,128", "token_mixers=sepconv,df")`` -> a dict.

    Comma-separated values become lists; numbers, true/false and none are converted; a value
    starting with ``{`` or ``[`` is JSON. A mapping is taken as it is.

    Args:
        items: KEY=VALUE strings (one or several per item, space-separated), or a mapping.
        option: the flag named in errors.

    Returns:
        The overrides, by constructor argument name.
    """
    if isinstance(items, dict):
        return dict(items)
    if isinstance(items, str):
        items = (items,)
    out = {}
    for item in items or ():
        for part in [item] if "=" in item and item.count("=") == 1 else item.split():
            if "=" not in part:
                raise OptionError(f"{part!r} is not KEY=VALUE (e.g. dims=32,64,96,128)", option=option)
            if not part.split("=", 1)[0].strip():
                raise OptionError(f"{part!r} has no key (KEY=VALUE)", option=option)
            key, value = part.split("=", 1)
            if value.strip()[:1] in ("{", "["):
                vals = _json_value(key, value, option)
            else:
                vals = [parse_scalar(v, booleans=True) for v in value.split(",")] if "," in value \
                    else parse_scalar(value, booleans=True)
            out[key.strip()] = vals
    return out


def parse_positive(flag: str, what: str = "an integer >= 1") -> Callable[[Any], Any]:
    """A parser refusing values below 1 (``None`` passes)."""
    def check(value):
        if value is not None and value < 1:
            raise OptionError(f"{value!r} is not {what}", option=flag)
        return value
    return check


def parse_non_negative(flag: str, what: str = "an integer >= 0") -> Callable[[Any], Any]:
    """A parser refusing negative values (``None`` passes)."""
    def check(value):
        if value is not None and value < 0:
            raise OptionError(f"{value!r} is not {what}", option=flag)
        return value
    return check


def choice(*values: str) -> tuple[str, ...]:
    """The accepted strings of an option (its ``type``)."""
    return tuple(values)


# ---------------------------------------------------------------------------- the shared options

AMP_CHOICES = choice("off", "bf16", "fp16")

_MODEL_HELP = "registry name, alias or timm:<name>"
_CHECKPOINT = Option("checkpoint", None, "official .pth, timm .pth.tar, spectrascope checkpoint or .safetensors",
                     metavar="PATH")
_PRETRAINED = (
    Option("pretrained", False, "official weights for every model without --checkpoint (weights folder, cache, "
                                "$SPECTRASCOPE_WEIGHTS_MIRROR, official URL)", type=bool),
    Option("weights_dir", None, "folder of official weight files under their official names (default: "
                                "$SPECTRASCOPE_WEIGHTS); with --pretrained", metavar="DIR"),
    Option("img_size", None, "input size S or HxW (default: each model's)", metavar="S|HxW",
           parse=parse_img_size),
    Option("model_kwargs", (), "constructor overrides with the official argument names (every model), e.g. "
                               "dims=32,64,96,128", multiple=True, metavar="KEY=VALUE", parse=parse_model_kwargs),
)

#: one model: ``--model NAME [--checkpoint PATH]``
MODEL_ONE = (Option("model", None, _MODEL_HELP, required=True, metavar="NAME"), _CHECKPOINT, *_PRETRAINED)
#: several models compared on the same inputs: ``--model A --model B [--checkpoint ...]``
MODEL_MANY = (
    Option("model", (), _MODEL_HELP + "; repeat to compare models", multiple=True, required=True, metavar="NAME"),
    Option("checkpoint", (), "one per --model in order ('-' keeps random weights), or MODEL=PATH", multiple=True,
           metavar="[MODEL=]PATH"),
    *_PRETRAINED,
)

#: images per forward pass
BATCH = (Option("batch_size", 16, "images per forward pass", type=int, metavar="N",
                parse=parse_positive("--batch-size", "a batch size (an integer >= 1)")),)
#: the images an analysis looks at
IMAGES = (
    Option("images", None, "folder of images (default: the bundled sample photos)", metavar="DIR"),
    Option("data", None, "samples | imagefolder:PATH | synthetic[:k=v,...] | cifar10:PATH | cifar100:PATH",
           metavar="SPEC"),
    Option("num_images", None, "use the first N images", type=int, metavar="N",
           parse=parse_positive("--num-images", "a number of images (an integer >= 1)")),
    *BATCH,
)
#: labelled data (accuracy, errors under perturbations)
LABELLED = (
    Option("data", None, "imagefolder:PATH | cifar10:PATH | cifar100:PATH | synthetic[:k=v,...]", required=True,
           metavar="SPEC"),
    *IMAGES[2:],
)

#: how the engine's runner runs the forwards
RUNTIME = (
    Option("device", "auto", "auto, cpu, cuda, cuda:N or mps"),
    Option("amp", "off", "autocast the forwards (the FFTs of the zoo's mixers stay float32)", type=AMP_CHOICES),
    Option("channels_last", False, "channels-last activations and 4-D conv weights", type=bool, negatable=True),
    Option("compile", False, "torch.compile the model", type=bool, aliases=("--torchcompile",)),
    Option("tf32", "off", "TF32 matmuls and convolutions on CUDA GPUs (no effect on CPUs; the FFTs stay float32)",
           type=choice("on", "off")),
    Option("workers", 0, "DataLoader workers decoding images", type=int, metavar="N",
           parse=parse_non_negative("--workers", "a number of workers (an integer >= 0)")),
)

#: random initialisation and random draws
SEED = (Option("seed", None, "seed of random weights and random draws (default: a fresh seed, the same on every "
                             "process)", type=int, show_default=False),)

#: the result folder
OUTPUT = (
    Option("output", None, "result folder [runs/<command>/<models>-<time>]", metavar="DIR"),
    Option("overwrite", False, "replace a folder of spectrascope outputs of the same command", type=bool),
)

#: the figure styles (``report.style.FIGURE_STYLES``)
STYLE_CHOICES = choice("paper", "column", "page", "notebook")
#: how the figures are drawn
STYLE = (
    Option("style", "paper", "figure style: paper (own size, at most 6.9 in wide), column (3.3 in wide), page "
                             "(6.9 in wide), notebook (larger text); text >= 7 pt in column and page",
           type=STYLE_CHOICES),
    Option("ncols", None, "columns of wrapped figure grids (CAM and context grids, filter grids) [each figure's own]",
           type=int, metavar="N", parse=parse_positive("--ncols", "a number of columns (an integer >= 1)"),
           show_default=False),
)

#: every shared option name (an analysis's own options may not reuse them)
SHARED_NAMES = frozenset(o.name for group in (MODEL_MANY, IMAGES, RUNTIME, SEED, OUTPUT, STYLE) for o in group)
