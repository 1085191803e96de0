"""The declaration of an analysis: :class:`Analysis`, what it needs (:class:`Needs`) and the
values of its options (:class:`Params`).

An analysis is one class::

    @register
    class Sparsity(Analysis):
        \"\"\"Fraction of exactly-zero activations per tap.\"\"\"

        name = "sparsity"
        summary = "fraction of zero activations per tap"
        needs = Needs(models="one", data="images")
        options = (Option("taps", "block", "tap roles or path:<module>"),)
        result = SparsityResult

        def run(self, ctx):              # ctx: seam.Context (models, images, runner, dist)
            ...
            return SparsityResult(...)

        def report(self, result, folder, style):
            ...                          # figures and tables drawn from the result alone

The seam (``seam.execute``) does the rest for every analysis: the command line and the Python
verb, the shared options, the ``torchrun`` process group, the checked and staged output folder,
the agreement of every rank on failure, the non-finite stop, results.json with provenance, the
figures and the one-line errors.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import spectrascope.seam.options as so
from spectrascope.errors import InternalError, OptionError
from spectrascope.seam.options import Option

__all__ = ["Needs", "Analysis", "Params", "Style"]


@dataclass(frozen=True)
class Needs:
    """What an analysis needs; it selects the shared options it takes.

    Args:
        models: ``"one"`` (``--model`` once), ``"many"`` (``--model`` repeated) or ``"none"``.
        data: ``"images"`` (``--images``/``--data``), ``"labelled"`` (``--data`` with labels, required)
            or ``None``.
        runner: the engine's runner options (``--device``, ``--amp``, ``--channels-last``, ``--compile``,
            ``--workers``); ``device`` alone when False.
        output: a result folder (``--output``/``--overwrite``, results.json, figures); False for analyses
            that print their answer.
        seed: ``--seed`` (random weights and random draws).
        gradients: the analysis back-propagates (documentation; the runner is used with ``grad=True``).
        batches: ``--batch-size`` without images (timing random batches); implied by ``data``.
    """

    models: str = "one"
    data: str | None = "images"
    runner: bool = True
    output: bool = True
    seed: bool = True
    gradients: bool = False
    batches: bool = False

    def __post_init__(self):
        if self.models not in ("one", "many", "none"):
            raise InternalError(f"Needs.models must be one, many or none, not {self.models!r}")
        if self.data not in ("images", "labelled", None):
            raise InternalError(f"Needs.data must be images, labelled or None, not {self.data!r}")


@dataclass(frozen=True)
class Style:
    """How figures are drawn: the formats written, options of the analysis's figures (``cmap``,
    ``freq_axis`` ...), the figure style (``--style``: paper, column, page, notebook) and the
    columns of wrapped grids (``--ncols``), as given to ``report`` and ``draw``.

    The seam draws every report inside ``report.style.use_style(style.preset, style.ncols)``, so
    every figure written through ``report.style.save_figure`` takes the style's width and text
    sizes; ``ncols`` is what ``report.style.wrap_columns`` returns for wrapped grids. None keeps
    the enclosing style (``paper`` outside any).
    """

    formats: tuple[str, ...] = ("png", "pdf")
    options: Mapping[str, Any] = None
    preset: str | None = None
    ncols: int | None = None

    @classmethod
    def of(cls, params: "Params", **more) -> "Style":
        """The style of a run's ``--style`` / ``--ncols`` (``more``: other fields); options left at their
        defaults keep the enclosing style (a recipe's), else ``paper``."""
        return cls(preset=params.get("style") if params.given("style") else None, ncols=params.get("ncols"), **more)

    def get(self, name: str, default=None):
        value = (self.options or {}).get(name)
        return default if value is None else value


class Params:
    """The checked values of every option of one run, by name (``params.img_size``)."""

    def __init__(self, values: Mapping[str, Any]):
        self._values = dict(values)

    def __getattr__(self, name: str):
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(f"no option {name!r} in this run") from None

    def get(self, name: str, default=None):
        return self._values.get(name, default)

    def given(self, name: str) -> bool:
        """Whether ``name`` was given (not its default)."""
        return name in self._values.get("_given", ())

    def as_dict(self) -> dict:
        return {k: v for k, v in self._values.items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"Params({self.as_dict()!r})"


class Analysis:
    """Base of every analysis (see the module doc). Subclasses set the class attributes and
    implement ``run``; ``report`` and ``draw`` write what a result folder holds beside results.json."""

    #: the command name (``spectrascope <name>``) and the Python name (``spectrascope.run("<name>")``)
    name: ClassVar[str] = ""
    #: one line for the command list
    summary: ClassVar[str] = ""
    needs: ClassVar[Needs] = Needs()
    #: its own options (names must not be shared option names)
    options: ClassVar[tuple[Option, ...]] = ()
    #: shared options with another default or help for this analysis: ``{"batch_size": {"default": 4}}``
    shared: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: shared options it does not take (``("workers",)``)
    without: ClassVar[tuple[str, ...]] = ()
    #: the ``Result`` dataclass its ``run`` returns
    result: ClassVar[type] = None
    #: what random weights mean for its results (the note printed when a model has no checkpoint)
    random_weights: ClassVar[str] = "the results describe an untrained network"
    #: the options of its figures that ``plot`` takes too (``cmap``, ``freq_axis`` ...)
    draw_options: ClassVar[tuple[str, ...]] = ()
    #: a model may be given twice (with other checkpoints or overrides)
    repeat_models: ClassVar[bool] = False

    # ------------------------------------------------------------------ declaration
    @classmethod
    def shared_options(cls) -> tuple[Option, ...]:
        """The shared options this analysis takes (``needs`` / ``shared`` / ``without`` applied)."""
        n = cls.needs
        groups: list[tuple[Option, ...]] = []
        if n.models != "none":
            groups.append(so.MODEL_MANY if n.models == "many" else so.MODEL_ONE)
        if n.data == "images":
            groups.append(so.IMAGES)
        elif n.data == "labelled":
            groups.append(so.LABELLED)
        elif n.batches:
            groups.append(so.BATCH)
        groups.append(so.RUNTIME if n.runner else so.RUNTIME[:1])
        if n.seed:
            groups.append(so.SEED)
        if n.output:
            groups.append(so.OUTPUT)
            groups.append(so.STYLE)
        out = []
        for o in (o for g in groups for o in g):
            if o.name in cls.without:
                continue
            change = cls.shared.get(o.name)
            out.append(o.but(**change) if change else o)
        return tuple(out)

    @classmethod
    def all_options(cls) -> tuple[Option, ...]:
        """Shared options first, then its own."""
        return cls.shared_options() + tuple(cls.options)

    @classmethod
    def check_declaration(cls) -> None:
        """An ``InternalError`` when the declaration is incomplete or clashes with the shared options."""
        where = f"{cls.__module__}.{cls.__qualname__}"
        if not cls.name or not isinstance(cls.name, str) or not cls.name.replace("-", "").isalnum():
            raise InternalError(f"{where}: an analysis needs a name (letters, digits, dashes)")
        if cls.result is None or not hasattr(cls.result, "from_json"):
            raise InternalError(f"{where}: `result` must be a Result dataclass")
        if not callable(getattr(cls, "run", None)) or cls.run is Analysis.run:
            raise InternalError(f"{where}: an analysis implements run(ctx)")
        names = [o.name for o in cls.options]
        clash = sorted(set(names) & so.SHARED_NAMES)
        if clash:
            raise InternalError(f"{where}: its options {clash} are shared options (adjust them through `shared`)")
        if len(set(names)) != len(names):
            raise InternalError(f"{where}: an option is declared twice")

    @classmethod
    def help_text(cls) -> str:
        """The command's help: the class docstring (its summary first)."""
        doc = inspect.getdoc(cls) or cls.summary
        return doc.split("\n\nArgs:")[0].split("\n\nExample")[0]

    # ------------------------------------------------------------------ values
    def params(self, values: Mapping[str, Any], *, given: set[str] | None = None) -> Params:
        """Check ``values`` (command-line strings or Python values) against every option.

        Unknown names are an ``OptionError``; missing ones take their defaults; ``given`` names
        those the caller set (default: those in ``values``)."""
        known = {o.name: o for o in self.all_options()}
        unknown = sorted(set(values) - set(known))
        if unknown:
            flag = "--" + unknown[0].replace("_", "-")
            raise OptionError(f"`{self.name}` has no option {flag} (its options: "
                              f"{', '.join(o.flag for o in known.values() if o.cli)})", option=flag)
        out: dict[str, Any] = {}
        for name, opt in known.items():
            value = opt.convert(values.get(name))
            if opt.required and (value is None or value == ()):
                raise OptionError("is required", option=opt.flag)
            out[name] = value
        out["_given"] = frozenset(given if given is not None else (k for k, v in values.items() if v is not None))
        p = Params(out)
        self.check(p)
        return p

    # ------------------------------------------------------------------ what subclasses implement
    def check(self, params: Params) -> None:
        """Checks across options, before any work (raise ``OptionError``)."""

    def run(self, ctx):
        """Compute the result on the engine (every rank calls it; see ``seam.Context``)."""
        raise NotImplementedError

    def report(self, result, folder: Path, style: Style) -> list[str]:
        """Write the tables, arrays and figures of ``result`` into ``folder`` (the rank that writes,
        after results.json). Returns the file names written. Default: ``draw``."""
        return self.draw(result, folder, style)

    def draw(self, result, folder: Path, style: Style) -> list[str]:
        """Draw the figures of ``result`` into ``folder`` from the result alone (``plot`` calls it)."""
        return []

    def committed(self, result, output: Path) -> None:
        """Called on the rank that writes once the result folder ``output`` is committed (e.g. to
        remove the partial state a resumable analysis kept beside it). Default: nothing."""

    def source(self, params: Params):
        """The images of ``--images`` / ``--data`` / ``--num-images`` (an ``io.sources.ImageSource``)."""
        from spectrascope.io.sources import ImageSource
        return ImageSource.resolve(params.get("images"), params.get("data"), params.get("num_images"))

    def tag(self, params: Params) -> str:
        """The model part of the default folder name: ``A-vs-B`` (``timm:`` dropped)."""
        models = params.get("model")
        names = list(models) if isinstance(models, tuple) else ([models] if models is not None else [])
        return "-vs-".join(str(m if isinstance(m, str) else type(m).__name__).replace("timm:", "")
                           for m in names) or self.name

    def describe(self, result, output: Path | None) -> list[str]:
        """The lines the command prints when it is done (default: one line naming the folder)."""
        return [f"{self.name} -> {output}"] if output is not None else []
