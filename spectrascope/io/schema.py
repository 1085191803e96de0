"""JSON that comes in from outside, checked where it enters: the results files that are drawn
again (``read_results``: amplitude and spectrum ``results.json``) and the small documents other
options read (``read_json_doc`` with the typed checks ``number``, ``integer``, ``text``).

A file is read as strict JSON (``NaN`` / ``Infinity`` tokens are refused: a non-finite number
is never a result), nested at most ``MAX_DEPTH`` deep and at most ``MAX_BYTES`` long; every
value the figures use is checked for its type, finiteness and range, and an error is one line
naming the file, the place in it (``models[0].taps[3].curve[2]``) and what is accepted.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from spectrascope.errors import DataError

__all__ = ["MAX_DEPTH", "MAX_BYTES", "KNOWN_SCHEMA_VERSIONS", "RESULT_KINDS", "InvalidValue", "read_json_doc",
           "read_results", "validate_results", "number", "integer", "text"]

#: deepest nesting accepted in an input JSON file (a results file is 7 deep)
MAX_DEPTH = 32
#: largest input JSON file (bytes)
MAX_BYTES = 512 * 2 ** 20
#: the results.json schema versions this version reads
KNOWN_SCHEMA_VERSIONS = (1, 2)
#: the result kinds ``read_results`` checks (the figures of ``plot``)
RESULT_KINDS = ("amplitude", "spectrum")


class InvalidValue(ValueError):
    """A value that does not fit the schema (``where``: its place in the document)."""

    def __init__(self, where: str, what: str):
        super().__init__(f"{where}: {what}" if where else what)


def _show(value) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def number(value, where: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """A finite real number (not a boolean) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidValue(where, f"{_show(value)} is not a number")
    if not math.isfinite(value):
        raise InvalidValue(where, f"{value} is not a finite number")
    if not lo <= value <= hi:
        raise InvalidValue(where, f"{value:g} is outside [{lo:g}, {hi:g}]")
    return float(value)


def integer(value, where: str, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (an integral float such as ``3.0`` too; not a boolean) in [lo, hi]."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(where, f"{_show(value)} is not an integer")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else (f"<= {hi}" if lo is None else f"in [{lo}, {hi}]")
        raise InvalidValue(where, f"{value} is not {bounds}")
    return value


def text(value, where: str, *, optional: bool = False) -> str | None:
    """A string (or None when ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidValue(where, f"{_show(value)} is not a string")
    return value


def _depth(doc) -> int:
    """The nesting depth of a parsed document (iterative: no recursion on hostile input)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, d)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def _refuse_constant(token: str):
    raise ValueError(f"the token {token} (a non-finite number is never a result)")


def read_json_doc(path, *, what: str = "JSON file", option: str | None = None):
    """The strict JSON document in ``path`` (see the module doc); a ``DataError`` naming the file
    otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found" if not path.exists() else f"{path} is not a file", option=option)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise DataError(f"{path} is larger than {MAX_BYTES >> 20} MiB: not a {what}", option=option)
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc})", option=option) from None
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a {what}: not UTF-8 text", option=option) from None
    except RecursionError:
        raise DataError(f"{path} is not a {what}: nested more than {MAX_DEPTH} deep", option=option) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not a {what}: {exc.msg} at line {exc.lineno} column {exc.colno}",
                        option=option) from None
    except ValueError as exc:
        raise DataError(f"{path} is not a {what}: {exc}", option=option) from None
    if _depth(doc) > MAX_DEPTH:
        raise DataError(f"{path} is not a {what}: nested more than {MAX_DEPTH} deep", option=option)
    return doc


def _list(value, where: str, *, min_len: int = 0) -> list:
    if not isinstance(value, list):
        raise InvalidValue(where, f"{_show(value)} is not a list")
    if len(value) < min_len:
        raise InvalidValue(where, f"has {len(value)} entr{'y' if len(value) == 1 else 'ies'}; at least {min_len} needed")
    return value


def _dict(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidValue(where, f"{_show(value)} is not an object")
    return value


def _need(d: dict, key: str, where: str):
    if key not in d:
        raise InvalidValue(where, f"the key {key!r} is missing")
    return d[key]


def _numbers(value, where: str, *, min_len: int) -> list[float]:
    return [number(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where, min_len=min_len))]


def _amplitude_tap(t: dict, w: str) -> None:
    curve = _numbers(_need(t, "curve", w), f"{w}.curve", min_len=2)
    for key in ("freq_index_pi", "freq_true_pi"):
        axis = _numbers(_need(t, key, w), f"{w}.{key}", min_len=2)
        if len(axis) != len(curve):
            raise InvalidValue(f"{w}.{key}", f"has {len(axis)} points but the curve has {len(curve)}")
    number(_need(t, "high_freq_delta", w), f"{w}.high_freq_delta")


def _spectrum_tap(t: dict, w: str) -> None:
    rows = _list(_need(t, "map", w), f"{w}.map", min_len=1)
    width = None
    for i, row in enumerate(rows):
        vals = _numbers(row, f"{w}.map[{i}]", min_len=1)
        if width is not None and len(vals) != width:
            raise InvalidValue(f"{w}.map[{i}]", f"has {len(vals)} values; the rows above have {width}")
        width = len(vals)


def _tap(t, w: str, kind: str) -> None:
    t = _dict(t, w)
    text(_need(t, "name", w), f"{w}.name")
    number(_need(t, "normalised_depth", w), f"{w}.normalised_depth", 0.0, 1.0)
    for key in ("role", "mixer"):
        text(t.get(key), f"{w}.{key}", optional=True)
    for key in ("stage", "index"):
        if t.get(key) is not None:
            integer(t[key], f"{w}.{key}", 0)
    (_amplitude_tap if kind == "amplitude" else _spectrum_tap)(t, w)


def _model(m, w: str, kind: str) -> None:
    m = _dict(m, w)
    text(_need(m, "model", w), f"{w}.model")
    text(m.get("label"), f"{w}.label", optional=True)
    if "random_weights" in m and not isinstance(m["random_weights"], bool):
        raise InvalidValue(f"{w}.random_weights", f"{_show(m['random_weights'])} is not true or false")
    for j, t in enumerate(_list(_need(m, "taps", w), f"{w}.taps", min_len=1)):
        _tap(t, f"{w}.taps[{j}]", kind)


def _method(doc: dict) -> None:
    method = _dict(doc.get("method", {}), "method")
    if method.get("freq_axis") is not None and method["freq_axis"] not in ("index", "true"):
        raise InvalidValue("method.freq_axis", f"{_show(method['freq_axis'])} is not index or true")
    if "relative" in method and not isinstance(method["relative"], bool):
        raise InvalidValue("method.relative", f"{_show(method['relative'])} is not true or false")
    if method.get("eps") is not None:
        number(method["eps"], "method.eps", 0.0)
    text(method.get("curve"), "method.curve", optional=True)
    images = _dict(doc.get("images", {}), "images")
    if images.get("count") is not None:
        integer(images["count"], "images.count", 0)
    text(doc.get("title"), "title", optional=True)


def validate_results(doc: Any, where: str = "results.json", *, option: str | None = None) -> dict:
    """``doc`` checked as an amplitude or spectrum results document (see the module doc); returns it.
    An unknown kind, an unknown ``schema_version``, an empty model or tap list, a missing key, a
    value of the wrong type or a non-finite number is a ``DataError`` naming ``where`` and the place."""
    if not isinstance(doc, dict) or doc.get("kind") not in RESULT_KINDS or "models" not in doc:
        kind = doc.get("kind") if isinstance(doc, dict) else None
        raise DataError(f"{where} holds no amplitude or spectrum results (kind={kind!r})", option=option)
    version = doc.get("schema_version")
    if version is not None and (isinstance(version, bool) or version not in KNOWN_SCHEMA_VERSIONS):
        known = ", ".join(map(str, KNOWN_SCHEMA_VERSIONS))
        raise DataError(f"{where}: schema_version {_show(version)} is not one this version of spectrascope reads "
                        f"({known}); draw it with the version that wrote it", option=option)
    try:
        for i, m in enumerate(_list(doc["models"], "models", min_len=1)):
            _model(m, f"models[{i}]", doc["kind"])
        _method(doc)
    except InvalidValue as exc:
        raise DataError(f"{where}: {exc}", option=option) from None
    return doc


def read_results(path, *, option: str | None = None) -> dict:
    """The checked amplitude or spectrum results document of ``path`` (a ``results.json`` or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.exists():
        raise DataError(f"no results file {path}", option=option)
    return validate_results(read_json_doc(path, what="results.json file", option=option), str(path), option=option)
