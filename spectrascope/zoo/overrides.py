"""Constructor overrides (``--model-kwargs``) checked against a zoo model's real constructor.

A registry builder ``builder(num_classes, img_size, **overrides)`` wraps one model class
with the defaults of its variant. ``accepted(card)`` reads that class's constructor
signature (plus the builder's own arguments and aliases) and the variant's defaults;
``check_overrides(card, overrides)`` refuses, with one line naming ``--model-kwargs``:

* a name the constructor does not take (the accepted names are listed),
* ``num_classes`` / ``img_size`` / ``input_size`` (they have their own options),
* a value whose type does not fit the default's: integers where the default is an integer
  (a float is accepted for ratios, rates and scales), numbers for floats, ``true``/``false``
  for flags, names (strings) for layers and mixers given by name, and per-stage lists whose
  elements follow the same rule (a single value is accepted where a list is the default, a
  list where a single value is, for the constructor to broadcast or refuse).

Values the constructor itself refuses (``depths`` and ``dims`` of different lengths, an
unknown mixer name) are reported by ``builder_error`` with the overrides that were given.
"""
from __future__ import annotations

import inspect
import numbers
import re
from typing import Callable, Mapping

import torch.nn as nn

from spectrascope.errors import OptionError, UserError

__all__ = ["OverrideError", "accepted", "check_overrides", "builder_error"]

OPTION = "--model-kwargs"

#: overrides that have their own option
_OWN_OPTION = {"num_classes": "the head size comes from the checkpoint or the data set",
               "img_size": "use --img-size", "input_size": "use --img-size"}

#: integer defaults that also take a float
_FLOAT_OK = re.compile(r"ratio|rate|drop|scale|init|eps|threshold|momentum|lambda|radius|value")


class OverrideError(OptionError, TypeError):
    """A ``--model-kwargs`` name the constructor does not take, or a value of the wrong type."""


def _model_class(builder: Callable):
    """The nn.Module subclass a registry builder constructs, with the builder's variant defaults."""
    try:
        cv = inspect.getclosurevars(builder)
    except (TypeError, ValueError):
        return None, {}, {}
    scope = {**cv.globals, **cv.nonlocals}
    classes = [v for v in scope.values() if isinstance(v, type) and issubclass(v, nn.Module)]
    defaults = cv.nonlocals.get("defaults")
    aliases = cv.globals.get("_ALIASES")
    return (classes[0] if len(classes) == 1 else None), dict(defaults or {}), dict(aliases or {})


def accepted(card) -> dict:
    """``{name: default}`` of every override ``card``'s builder takes (variant defaults first);
    empty when the constructor cannot be read (then nothing is checked)."""
    cls, defaults, aliases = _model_class(card.builder)
    if cls is None:
        return {}
    out = {}
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in _OWN_OPTION:
            continue
        out[p.name] = defaults.get(p.name, None if p.default is p.empty else p.default)
    for p in inspect.signature(card.builder).parameters.values():
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in _OWN_OPTION:
            out.setdefault(p.name, None if p.default is p.empty else p.default)
    for alias, target in aliases.items():
        if target in out or target == "num_classes":      # n_classes: the builder checks it against the head
            out.setdefault(alias, out.get(target))
    return out


def _kind(default):
    """What a default says about accepted values: 'bool', 'int', 'number', 'name', 'mapping', a
    ('list', element kind) pair, or None (anything)."""
    if default is None:
        return None
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, numbers.Integral):
        return "int"
    if isinstance(default, numbers.Real):
        return "number"
    if isinstance(default, str) or callable(default):
        return "name"
    if isinstance(default, Mapping):
        return "mapping"
    if isinstance(default, (list, tuple)):
        kinds = {_kind(v) for v in default} - {None}
        if kinds == {"int", "number"}:
            kinds = {"number"}
        return ("list", kinds.pop() if len(kinds) == 1 else None)
    return None


_WORDS = {"bool": "true or false", "int": "an integer", "number": "a number", "name": "a name",
          "mapping": "a mapping (JSON object)"}


def _fits(value, kind) -> bool:
    if kind is None or value is None:
        return True
    if kind == "bool":
        return isinstance(value, bool)
    if kind in ("int", "number"):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        return kind == "number" or isinstance(value, numbers.Integral)
    if kind == "name":
        return isinstance(value, str) or callable(value)
    if kind == "mapping":
        return isinstance(value, (Mapping, str))
    return False


def _fits_default(name: str, value, kind) -> bool:
    if kind == "int" and _FLOAT_OK.search(name):
        kind = "number"
    if isinstance(kind, tuple):
        elem = "number" if kind[1] == "int" and _FLOAT_OK.search(name) else kind[1]
        items = value if isinstance(value, (list, tuple)) else [value]
        return all(_fits(v, elem) for v in items)
    if isinstance(value, (list, tuple)) and kind != "mapping":    # per-stage values of a broadcast default
        return all(_fits(v, kind) for v in value)
    return _fits(value, kind)


def _expected(name: str, default) -> str:
    kind = _kind(default)
    if kind == "int" and _FLOAT_OK.search(name):
        kind = "number"
    if isinstance(kind, tuple):
        word = _WORDS.get(kind[1], "a value")
        shown = ",".join("none" if v is None else str(v) for v in default)
        return f"{word} or a comma-separated list of them (default {shown})"
    shown = getattr(default, "__name__", None) or repr(default)
    return f"{_WORDS.get(kind, 'a value')} (default {shown})"


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def check_overrides(card, overrides: Mapping, option: str = OPTION) -> None:
    """Raise ``OverrideError`` for an override ``card``'s constructor does not take or whose value
    does not fit the default's type (see the module doc)."""
    if not overrides:
        return
    table = accepted(card)
    for name in overrides:
        if name in _OWN_OPTION:
            raise OverrideError(f"{card.name}: {name} is not an override ({_OWN_OPTION[name]})", option=option)
    if not table:
        return
    unknown = [k for k in overrides if k not in table]
    if unknown:
        raise OverrideError(f"{card.name} takes no argument {', '.join(map(repr, unknown))}; {card.name} accepts: "
                            f"{', '.join(sorted(table))}", option=option)
    for name, value in overrides.items():
        if not _fits_default(name, value, _kind(table[name])):
            raise OverrideError(f"{name}={_show(value)}: {card.name} expects {_expected(name, table[name])}",
                                option=option)


def builder_error(card, exc: Exception, overrides: Mapping, option: str = OPTION, img_size=None) -> Exception:
    """The error to raise when ``card``'s builder refused the given overrides or input size: user
    errors pass through; builtin ValueError/TypeError/KeyError become an ``OptionError`` naming the
    overrides (or ``--img-size`` when only a size was given); with neither the builder's error is a
    bug and is returned as it is."""
    if isinstance(exc, UserError) or not (overrides or img_size):
        return exc
    if not overrides:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return OptionError(f"{card.name} cannot be built for {img_size[0]}x{img_size[1]}: {msg}", option="--img-size")
    given = " ".join(f"{k}={_show(v)}" for k, v in overrides.items())
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    cls = OverrideError if isinstance(exc, TypeError) else OptionError
    return cls(f"{card.name} with {given}: {msg}", option=option)
