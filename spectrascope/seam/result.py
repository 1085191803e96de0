"""Typed results that round-trip through results.json.

Every analysis returns a dataclass deriving from :class:`Result`. Its fields are written to
results.json as they are (nested dataclasses, lists and dicts of plain values); fields marked
``field(metadata={"json": False})`` (arrays, tensors) stay out of the JSON and are written by the
analysis's report (``maps.npz`` and the like). ``load_result(path)`` reads a results.json back
into the dataclass of the analysis that wrote it, so ``plot`` and any later script draw from the
file alone.

The file is ``{"schema_version": N, "analysis": NAME, <fields>, "provenance": {...}}``;
``provenance`` records the command line, library versions, device, world size, models,
checkpoints and images (their sha256) and the wall time.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar

from spectrascope.errors import DataError, InternalError, NonFiniteError
from spectrascope.io.results import SCHEMA_VERSION, find_nonfinite

__all__ = ["Result", "load_result", "read_results", "find_nonfinite", "SCHEMA_VERSION"]


@dataclasses.dataclass(kw_only=True)
class Result:
    """Base of every result: ``notes`` and ``warnings`` the run reported, the ``provenance``
    block, the files written beside results.json, and the folder it was written to (``output``,
    not stored)."""

    #: the analysis that writes this result (set by ``seam.register``)
    analysis: ClassVar[str] = ""

    notes: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: the files of the result folder beside results.json (tables, arrays, figures)
    files: list[str] = dataclasses.field(default_factory=list)
    provenance: dict = dataclasses.field(default_factory=dict)
    output: Path | None = dataclasses.field(default=None, metadata={"json": False}, compare=False)

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict:
        """The results.json document (plain values; the non-JSON fields left out)."""
        doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "analysis": self.analysis}
        for f in dataclasses.fields(self):
            if f.metadata.get("json", True) and f.name != "provenance":
                doc[f.name] = _plain(getattr(self, f.name))
        doc["provenance"] = _plain(self.provenance)
        return doc

    @classmethod
    def validate(cls, doc: dict, where: str) -> None:
        """Check a results.json document that comes from outside before it is read (``where``: its
        file); a result whose figures need more than its declared field types overrides this and
        raises a ``DataError`` naming the place. The default checks nothing more."""

    @classmethod
    def from_json(cls, doc: dict) -> "Result":
        """The result of a results.json document (fields converted to their declared types)."""
        hints = typing.get_type_hints(cls)
        kwargs = {}
        missing = []
        for f in dataclasses.fields(cls):
            if not f.init or not f.metadata.get("json", True):
                continue
            if f.name in doc:
                kwargs[f.name] = _typed(doc[f.name], hints.get(f.name, Any), f.name)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                missing.append(f.name)
        if missing:
            raise DataError(f"results of `{cls.analysis}` without {', '.join(missing)}")
        return cls(**kwargs)

    def arrays(self) -> dict:
        """Arrays that stay out of results.json: ``{file name: {key: array}}`` (``maps.npz`` ...), written
        by the seam beside results.json; default none."""
        return {}

    def load_arrays(self, files: dict) -> None:
        """Take back the arrays of ``arrays()`` (``{file name: {key: array}}``; ``load_result``)."""

    def check_finite(self) -> None:
        """A ``NonFiniteError`` naming the first NaN/inf of the JSON document (nothing is written)."""
        where = find_nonfinite(self.to_json())
        if where is not None:
            raise NonFiniteError(f"the results hold a non-finite number (NaN/inf) at {where}; nothing was written")


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.metadata.get("json", True)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


def _typed(value, hint, where: str):
    """``value`` (plain JSON) as ``hint`` (nested dataclasses and lists of them are rebuilt)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _typed(value, inner[0], where) if len(inner) == 1 else value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise DataError(f"results field {where}: expected an object, got {type(value).__name__}")
        names = {f.name for f in dataclasses.fields(hint)}
        sub = typing.get_type_hints(hint)
        try:
            return hint(**{k: _typed(v, sub.get(k, Any), f"{where}.{k}") for k, v in value.items() if k in names})
        except TypeError as exc:
            raise DataError(f"results field {where}: {exc}") from None
    if origin in (list, tuple) and args:
        if not isinstance(value, list):
            raise DataError(f"results field {where}: expected a list, got {type(value).__name__}")
        items = [_typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        return {k: _typed(v, args[1], f"{where}.{k}") for k, v in value.items()}
    return value


def read_results(path) -> tuple[dict, Path]:
    """The strict-JSON document of a results.json (or of the folder holding one) and its path.

    Refuses (``DataError``, one line naming the file): a missing file, text that is not strict
    JSON (NaN / Infinity tokens included), text that is not UTF-8, a top level that is not an
    object, nesting deeper than ``io.schema.MAX_DEPTH``."""
    from spectrascope.io.schema import read_json_doc
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise DataError(f"no results file {path}", option="RESULTS")
    doc = read_json_doc(path, what="results.json file", option="RESULTS")
    if not isinstance(doc, dict):
        raise DataError(f"{path} is not a results.json file (its top level is not an object)", option="RESULTS")
    return doc, path


def analysis_of(doc: dict) -> str | None:
    """The analysis that wrote a results.json document (older files: their command or kind)."""
    name = doc.get("analysis")
    if isinstance(name, str) and name:
        return name
    prov = doc.get("provenance")
    command = prov.get("command") if isinstance(prov, dict) else doc.get("command")
    if isinstance(command, str) and command and not command.startswith("figure "):
        return command
    kind = doc.get("kind")
    return kind if isinstance(kind, str) else None


def load_result(path):
    """The typed result of a results.json written by any analysis (a file or its folder).

    Args:
        path: ``results.json`` or the folder holding it.

    Returns:
        The analysis's ``Result`` dataclass, with ``output`` set to the folder.

    Raises:
        DataError: the file is missing, not strict JSON, of an unknown analysis or schema version,
            or does not hold that analysis's fields.
    """
    from spectrascope.seam.registry import get
    doc, file = read_results(path)
    version = doc.get("schema_version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)
                                or not 1 <= version <= SCHEMA_VERSION):
        raise DataError(f"{file}: schema_version {version!r} is not one this version of spectrascope reads "
                        f"(1..{SCHEMA_VERSION}); draw it with the version that wrote it", option="RESULTS")
    name = analysis_of(doc)
    if name is None:
        raise DataError(f"{file} does not say which analysis wrote it", option="RESULTS")
    try:
        analysis = get(name)
    except Exception as exc:                       # an unknown analysis: a one-line DataError
        if isinstance(exc, InternalError):
            raise
        raise DataError(f"{file} was written by `{name}`, which is not an analysis here "
                        "(is its plug-in installed?)", option="RESULTS") from None
    analysis.result.validate(doc, str(file))
    try:
        result = analysis.result.from_json(doc)
    except DataError as exc:
        raise DataError(f"{file}: {exc}", option="RESULTS") from None
    result.output = file.parent
    arrays = {}
    for name in (f for f in result.files if isinstance(f, str) and f.endswith(".npz") and "/" not in f):
        path = file.parent / name
        if not path.is_file():
            continue
        import numpy as np
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays[name] = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"{path} cannot be read ({exc})", option="RESULTS") from None
    if arrays:
        result.load_arrays(arrays)
    return result
