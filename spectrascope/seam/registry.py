"""The registry of analyses: the built-in ones and those of installed plug-ins.

``@register`` adds an :class:`~spectrascope.seam.analysis.Analysis` subclass under its name.
The built-in analyses are the modules of ``spectrascope.analyses`` (the top-level
``analyses/`` folder); a third-party package adds its own through the entry-point group
``spectrascope.analyses``::

    # the plug-in's pyproject.toml
    [project.entry-points."spectrascope.analyses"]
    sparsity = "spectrascope_sparsity"        # a module whose import registers the analysis

An entry point may name a module (its import registers the analysis) or an ``Analysis``
subclass (registered when loaded). A plug-in that fails to load is reported once as a warning
and left out; it never breaks the other commands.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
import warnings

from spectrascope.errors import InternalError, OptionError

__all__ = ["register", "get", "names", "analyses", "ENTRY_POINT_GROUP", "PluginWarning"]

log = logging.getLogger("spectrascope.seam")

#: the entry-point group through which installed packages add analyses
ENTRY_POINT_GROUP = "spectrascope.analyses"
#: the package of the built-in analyses
BUILTIN_PACKAGE = "spectrascope.analyses"

_REGISTRY: dict[str, type] = {}
_LOADED = False


class PluginWarning(UserWarning):
    """An installed analysis plug-in could not be loaded (it is left out)."""


def register(cls):
    """Class decorator: add an analysis to the registry under ``cls.name``.

    Args:
        cls: an ``Analysis`` subclass with a complete declaration.

    Returns:
        ``cls`` (so the decorator leaves the class as it is).

    Raises:
        InternalError: the declaration is incomplete, or another class has the name already.
    """
    cls.check_declaration()
    other = _REGISTRY.get(cls.name)
    if other is not None and other is not cls and \
            (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
        raise InternalError(f"two analyses are called {cls.name!r}: {other.__module__}.{other.__qualname__} and "
                            f"{cls.__module__}.{cls.__qualname__}")
    cls.result.analysis = cls.name
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtins() -> None:
    pkg = importlib.import_module(BUILTIN_PACKAGE)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{BUILTIN_PACKAGE}.{info.name}")


def _load_plugins() -> None:
    from importlib.metadata import entry_points
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if isinstance(obj, type):
                register(obj)
        except Exception as exc:                  # a broken plug-in must not break the other commands
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warnings.warn(f"analysis plug-in {ep.name!r} ({ep.value}) could not be loaded and is left out: {msg}",
                          PluginWarning, stacklevel=2)


def load() -> None:
    """Import the built-in analyses and the installed plug-ins (once)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    _load_builtins()
    _load_plugins()


def names() -> list[str]:
    """Every registered analysis name, sorted."""
    load()
    return sorted(_REGISTRY)


def analyses() -> list:
    """An instance of every registered analysis, by name."""
    return [get(n) for n in names()]


def get(name: str):
    """The analysis called ``name`` (an instance).

    Raises:
        OptionError: no analysis has that name (the message lists the known ones).
    """
    load()
    cls = _REGISTRY.get(name)
    if cls is None:
        import difflib
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(_REGISTRY))}"
        raise OptionError(f"no analysis {name!r}{hint}", option="ANALYSIS")
    return cls()
