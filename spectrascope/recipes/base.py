"""Paper-figure recipes: discovery and running (``spectrascope figure``).

A recipe is one small module in ``spectrascope/recipes/`` that composes analyses (through
``spectrascope.run``) and library calls. Adding a figure needs nothing else than such a module::

    # spectrascope/recipes/mypaper_fig3.py
    from spectrascope.recipes import FigureSpec

    FIGURE = FigureSpec(name="mypaper-fig3", title="...", paper="Author et al. 2024, Fig. 3",
                        models=("dfformer_s18", "timm:vit_tiny_patch16_224"))

    def run(ctx):                    # ctx: FigureContext
        ...                          # library calls; write files into ctx.output
        return {"note": "..."}       # optional summary, stored in figure.json

A module may also hold several recipes as ``FIGURES``, a list of ``(FigureSpec, runner)`` pairs
whose runner has ``run(ctx)`` (``recipes/paper_tables.py``: the papers' tables and charts).

The framework resolves the output folder (``<output>/<name>/``, written through
``staged_output`` so a failed run leaves nothing behind), the checkpoints given as
``--checkpoint MODEL=PATH``, the image source, the device, and which of ``FIGURE.models``
are available (timm installed, zoo model registered); it writes ``figure.json`` with
the provenance block next to the recipe's own files.
"""
from __future__ import annotations

import difflib
import importlib
import logging
import pkgutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Mapping, Sequence
from spectrascope.errors import FigureError

log = logging.getLogger("spectrascope.recipes")

__all__ = ["FigureSpec", "FigureContext", "FigureError", "list_figures", "get_figure", "run_figure",
           "model_available", "RECIPE_OPTIONS", "RECIPE_CHOICES", "FOCALNET_VARIANTS", "recipe_models"]

#: the options a recipe may accept (``FigureSpec.options``) and what they mean
RECIPE_OPTIONS = {
    "models": "models to draw instead of the recipe's own (registry names or timm:<name>)",
    "focalnet": "FocalNet-T variant: lrf (large receptive field, the SPANet paper's 82.3 % row) or srf",
    "freq_axis": "x axis of the amplitude curves: index (Park & Kim's reference) or true (2k/H)",
    "cmap": "matplotlib colour map of the maps (default: the recipe's)",
    "estimator": "mini-batch HSIC estimator: unbiased (the paper's) or biased",
    "engine": "CKA engine: spectrascope, or torch-cka (torch-cka 0.21's float32 computation, the paper's tool)",
    "throughput": "also measure throughput of every counted row on --device at --batch-size",
    "add": "add a measured model to the chart: NAME=results.json with top1 and model (or params and flops)",
}
#: the accepted values of the recipe options that are choices
RECIPE_CHOICES = {"estimator": ("unbiased", "biased"), "engine": ("spectrascope", "torch-cka")}
#: FocalNet-T variants and their timm names
FOCALNET_VARIANTS = {"lrf": "timm:focalnet_tiny_lrf", "srf": "timm:focalnet_tiny_srf"}


@dataclass(frozen=True)
class FigureSpec:
    """What ``spectrascope figure list`` shows and what the framework checks before a run."""

    name: str
    title: str
    paper: str
    models: tuple[str, ...] = ()
    summary: str = ""
    #: default number of images (None: every bundled sample photo / every image given)
    num_images: int | None = None
    #: True when the figure is meaningful only with trained weights (shown in the listing)
    needs_weights: bool = True
    #: default --batch-size of the recipe (None: 16)
    batch_size: int | None = None
    #: the recipe options it accepts (``RECIPE_OPTIONS`` names: models, focalnet, freq_axis, cmap, ...)
    options: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class FigureContext:
    """Everything a recipe's ``run(ctx)`` needs; ``output`` is the (staging) folder to write into."""

    spec: FigureSpec
    output: Path
    checkpoints: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    images: str | None = None
    data: str | None = None
    num_images: int | None = None
    batch_size: int = 16
    img_size: object = None
    progress: bool = False
    models: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: the recipe options given on the command line (``FigureSpec.options`` names them)
    options: dict = field(default_factory=dict)
    #: warnings the recipe recorded (``warn``): stored in figure.json and re-printed by the command
    warnings: list[str] = field(default_factory=list)
    #: the figure style (``--style``) and the columns of wrapped grids (``--ncols``)
    style: str = "paper"
    ncols: int | None = None

    def checkpoint(self, model: str) -> str | None:
        return self.checkpoints.get(model)

    def option(self, name: str, default=None):
        """A recipe option's value (``--cmap`` -> ``option("cmap")``), ``default`` when not given."""
        value = self.options.get(name)
        return default if value is None or value == () else value

    def warn(self, *messages: str) -> None:
        """Record warnings (each once) to re-print after the run."""
        for m in messages:
            if m and m not in self.warnings:
                self.warnings.append(m)

    def analysis_kwargs(self) -> dict:
        """Options of ``spectrascope.run`` for the recipe's models: images, device, sizes, checkpoints."""
        return {"model": tuple(self.models), "images": self.images, "data": self.data,
                "num_images": self.num_images, "batch_size": self.batch_size, "img_size": self.img_size,
                "device": self.device, "progress": self.progress,
                "checkpoint": tuple(f"{m}={p}" for m, p in self.checkpoints.items() if p and m in self.models)}

    def save(self, result, *, title: str | None = None, **draw) -> None:
        """Write ``result`` (results.json, tables, figures) into the recipe's folder; ``title`` heads its
        figures and the provenance names the recipe."""
        from spectrascope.seam import Style, get, write_result
        if title is not None:
            result.title = title
        result.provenance = dict(result.provenance, command=f"figure {self.spec.name}")
        write_result(get(result.analysis), result, self.output, Style(options=draw, preset=self.style,
                                                                      ncols=self.ncols))


def _package():
    return importlib.import_module("spectrascope.recipes")


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _discover() -> dict[str, tuple[FigureSpec, ModuleType]]:
    pkg = _package()
    found: dict[str, tuple[FigureSpec, ModuleType]] = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        try:
            mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        except Exception as exc:   # one broken recipe must not hide the others
            log.warning("figure recipe %s cannot be imported: %s", info.name, exc)
            continue
        for spec, runner in [(getattr(mod, "FIGURE", None), mod)] + list(getattr(mod, "FIGURES", ())):
            if spec is None or not callable(getattr(runner, "run", None)):
                continue
            if not isinstance(spec, FigureSpec):
                spec = FigureSpec(**dict(spec))
            found.setdefault(_norm(spec.name), (spec, runner))
    return found


def list_figures() -> list[FigureSpec]:
    """Every recipe in ``spectrascope.recipes`` (sorted by name)."""
    return [spec for spec, _ in sorted(_discover().values(), key=lambda sm: sm[0].name)]


def get_figure(name: str) -> tuple[FigureSpec, ModuleType]:
    found = _discover()
    key = _norm(name)
    if key not in found:
        close = difflib.get_close_matches(key, list(found), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}" if close else ""
        raise FigureError(f"unknown figure {name!r}{hint} (see `spectrascope figure list`)")
    return found[key]


def model_available(name: str) -> tuple[bool, str]:
    """(available, reason) for a registry name or ``timm:<name>``."""
    if name.startswith("timm:"):
        from spectrascope.compat import timm_available
        if not timm_available():
            return False, "needs timm (pip install 'spectrascope[timm]')"
        return True, ""
    from spectrascope.zoo.registry import UnknownModelError, resolve_name
    try:
        resolve_name(name)
    except UnknownModelError:
        return False, "not in this version's model zoo"
    return True, ""


def _parse_checkpoints(items: Sequence[str] | Mapping[str, str] | None, models: Sequence[str]) -> dict[str, str]:
    if not items:
        return {}
    if isinstance(items, Mapping):
        pairs = dict(items)
    else:
        pairs = {}
        for item in items:
            model, sep, path = str(item).partition("=")
            if not sep:
                if len(models) == 1:
                    model, path = models[0], item
                else:
                    raise FigureError(f"--checkpoint {item!r}: give MODEL=PATH (models of this figure: "
                                      f"{', '.join(models)})")
            pairs[model.strip()] = path.strip()
    unknown = [m for m in pairs if m not in models]
    if unknown:
        raise FigureError(f"--checkpoint for {', '.join(unknown)}: not a model of this figure "
                          f"({', '.join(models)})")
    for m, p in pairs.items():
        if not Path(p).is_file():
            raise FigureError(f"checkpoint for {m} not found: {p}")
    return pairs


def recipe_models(spec: FigureSpec, options: Mapping | None = None) -> tuple[str, ...]:
    """The models a run of ``spec`` draws: ``--model`` replaces the recipe's list, ``--focalnet``
    picks the FocalNet-T variant."""
    options = dict(options or {})
    models = tuple(options.get("models") or ()) or spec.models
    variant = options.get("focalnet")
    if variant:
        if variant not in FOCALNET_VARIANTS:
            raise FigureError(f"--focalnet {variant!r}: use {' or '.join(FOCALNET_VARIANTS)}")
        models = tuple(FOCALNET_VARIANTS[variant] if m in FOCALNET_VARIANTS.values() else m for m in models)
    return tuple(dict.fromkeys(models))


def _check_options(spec: FigureSpec, options: Mapping) -> dict:
    given = {k: v for k, v in dict(options or {}).items() if v is not None and v != ()}
    bad = [k for k in given if k not in spec.options]
    if bad:
        accepted = ", ".join("--" + o.replace("_", "-") for o in spec.options) or "none"
        raise FigureError(f"figure {spec.name} takes no option {', '.join('--' + b.replace('_', '-') for b in bad)}"
                          f" (its options: {accepted})")
    from spectrascope.report.style import check_cmap
    check_cmap(given.get("cmap"))
    return given


def _available(spec: FigureSpec, models, skip_unavailable: bool) -> tuple[list, list]:
    avail, skipped = [], []
    for m in models:
        ok, why = model_available(m)
        (avail if ok else skipped).append(m if ok else (m, why))
    if skipped and not skip_unavailable:
        raise FigureError(f"figure {spec.name}: " + "; ".join(f"{m} {why}" for m, why in skipped)
                          + " (--skip-unavailable draws the others)")
    if models and not avail:
        raise FigureError(f"figure {spec.name}: none of its models is available")
    return avail, skipped


def _recorded(caught, recipe: ModuleType) -> list[str]:
    """The warnings raised by spectrascope code (library, models) or the recipe during a run, once each."""
    here = str(Path(getattr(recipe, "__file__", "") or ".").parent)
    keep = []
    for w in caught:
        where = str(getattr(w, "filename", ""))
        if where.startswith(here) or any(part in where for part in ("spectrascope", "/recipes/", "/analyses/", "/models/")):
            keep.append(str(w.message))
    return list(dict.fromkeys(keep))


def pretrained_checkpoints(models: Sequence[str], given, weights_dir=None) -> tuple[tuple[str, ...], list[str]]:
    """``--pretrained`` for a recipe: every model without a ``--checkpoint`` gets its official weights.

    Returns:
        (``MODEL=PATH`` checkpoints, the models left with random weights: timm models and zoo models
        without released weights).
    """
    from spectrascope.zoo import registry, weights
    pairs = _parse_checkpoints(given, models) if given else {}
    left = []
    for m in models:
        if pairs.get(m):
            continue
        card = None if m.startswith("timm:") else registry.get_card(m)
        if card is None or not card.weight_file:
            left.append(m)
            continue
        pairs[m] = str(weights.resolve(card, weights_dir=weights_dir))
    return tuple(f"{m}={p}" for m, p in pairs.items()), left


#: the options of a recipe run that describe its inputs (``run_figure(inputs=...)``)
INPUTS = ("device", "images", "data", "num_images", "batch_size", "img_size")


def run_figure(name: str, *, output="runs/figures", overwrite: bool = False, checkpoints=None,
               inputs: Mapping | None = None, skip_unavailable: bool = False, progress: bool = False,
               options: Mapping | None = None, style: str | None = None, ncols: int | None = None,
               **more) -> tuple[Path, dict]:
    """Run the recipe ``name`` into ``<output>/<name>/``; returns (folder, figure.json content).

    Args:
        name: the recipe (``spectrascope figure list``).
        output: the parent folder.
        overwrite: replace an earlier run of the recipe there.
        checkpoints: ``MODEL=PATH`` items or a mapping.
        inputs: ``device``, ``images``, ``data``, ``num_images``, ``batch_size``, ``img_size`` (keywords of the
            same names are taken too).
        skip_unavailable: draw the available models when some are missing.
        progress: progress bars.
        options: the recipe options (``FigureSpec.options``); figure.json records them and every warning
            the run recorded (``warnings``), which the command re-prints.
        style: the figure style (paper, column, page, notebook; default paper).
        ncols: columns of wrapped figure grids (default: each figure's own).
    """
    import warnings as _warnings

    from spectrascope.io.results import staged_output, write_json
    inp = {k: None for k in INPUTS}
    inp["device"] = "auto"
    inp.update({k: v for k, v in dict(inputs or {}).items() if v is not None})
    unknown = [k for k in more if k not in INPUTS]
    if unknown:
        raise TypeError(f"run_figure() got unexpected keyword arguments {unknown}")
    inp.update({k: v for k, v in more.items() if v is not None})
    from spectrascope.report.style import use_style
    from spectrascope.seam import options as so
    declared = {o.name: o for o in so.STYLE}
    style, ncols = declared["style"].convert(style), declared["ncols"].convert(ncols)
    spec, mod = get_figure(name)
    opts = _check_options(spec, options or {})
    models = recipe_models(spec, opts)
    cks = _parse_checkpoints(checkpoints, models)
    avail, skipped = _available(spec, models, skip_unavailable)
    final = Path(output) / spec.name
    t0 = time.perf_counter()
    with staged_output(final, overwrite=overwrite, command=f"figure {spec.name}") as stage:
        ctx = FigureContext(spec=spec, output=Path(stage), checkpoints=cks, device=inp["device"],
                            images=inp["images"], data=inp["data"],
                            num_images=inp["num_images"] if inp["num_images"] is not None else spec.num_images,
                            batch_size=inp["batch_size"] or spec.batch_size or 16, img_size=inp["img_size"],
                            progress=progress, models=avail, skipped=skipped, options=opts, style=style,
                            ncols=ncols)
        with _warnings.catch_warnings(record=True) as caught, use_style(style, ncols):
            _warnings.simplefilter("always")
            summary = mod.run(ctx) or {}
        ctx.warn(*_recorded(caught, mod))
        doc = _figure_doc(ctx, spec, avail, skipped, cks, opts, summary, Path(stage), time.perf_counter() - t0)
        write_json(Path(stage) / "figure.json", doc)
    return final, doc


def _figure_doc(ctx, spec, avail, skipped, cks, opts, summary, stage: Path, wall: float) -> dict:
    from spectrascope.io.results import provenance
    return {
        "figure": spec.as_dict(),
        "models": avail,
        "skipped_models": [{"model": m, "reason": why} for m, why in skipped],
        "checkpoints": cks,
        "random_weights": [m for m in avail if m not in cks],
        "options": opts,
        "style": {"style": ctx.style or "paper", "ncols": ctx.ncols},
        "warnings": list(ctx.warnings),
        "summary": summary,
        "files": sorted(p.name for p in stage.iterdir()),
        "provenance": provenance(command=f"figure {spec.name}", model=", ".join(avail),
                                 random_weights=any(m not in cks for m in avail), wall_time_s=wall),
    }
