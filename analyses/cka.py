"""``cka``: mini-batch linear CKA between the layers of two models (Kornblith et al. 2019;
Nguyen et al. 2021's mini-batch estimator), as a report folder.

For taps X (n x p) of model A and Y (n x q) of model B on the same images, per batch of n
images with centred Gram matrices K = X X^T, L = Y Y^T:

    CKA = sum_b HSIC(K_b, L_b) / sqrt(sum_b HSIC(K_b, K_b) * sum_b HSIC(L_b, L_b))

with the unbiased HSIC estimator (default; n >= 4 per batch) or the biased one. Rows are the
taps of A, columns those of B, in execution order (DFFormer Fig. 7).

Example:
    ``spectrascope cka --model gfformer_s18 --model dfformer_s18 --taps fig7``

The rest of this module: tap selection, the comparison loop and its result.

Taps come from the one tap grammar (``spectrascope.probe.grammar``: presets such as ``fig7``,
roles, names, blocks, patterns, ``path:MODULE``); module paths without a declared tap are
taken as they are (``raw``: CKA flattens every feature per example, so the layout does
not matter and no dry forward is needed). Captures are ``Probe`` callbacks feeding the
``CKAReducer`` (``spectrascope.engine.reducers.cka``), which reduces each tap to its Gram
matrix the moment its hook fires. Forwards go through the engine's ``Runner`` (device,
autocast, inference mode, NaN/inf check: a non-finite tap stops the run with one
``NonFiniteError`` line). Both models see the same images in the same order; a model
compared with itself runs one forward per batch with one probe (distinct captures, unit
diagonal). Rows and columns follow the order in which the hooks fired (execution order).

Engines (``ops.cka``): ``spectrascope`` (default; centred features, float64 sums) and
``torch-cka`` (torch-cka 0.21's float32 computation, for the numbers of papers made with it).

Under ``torchrun`` every rank takes every world-th batch and the reducer all-reduces its
sums, so every rank gets the matrix of a one-process run.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn as nn

from spectrascope.engine.device import model_device
from spectrascope.engine.reducers.cka import CKAReducer
from spectrascope.engine.runner import Batch, RunConfig, Runner, progress_bar
from spectrascope.errors import DataError, OptionError, TapError
from spectrascope.io.results import SCHEMA_VERSION
from spectrascope.ops.cka import ENGINES, ESTIMATORS, MinibatchCKA, TorchCKACompat, make_engine
from spectrascope.probe import LAYOUTS, Probe, TapList, TapSpec, model_taps
from spectrascope.probe.grammar import PRESETS as _GRAMMAR_PRESETS
from spectrascope.probe.grammar import TapRequest
from spectrascope.report import cka as rc
from spectrascope.seam import Analysis, Context, Needs, Option, Result, register
from spectrascope.seam.options import choice, parse_model_kwargs
from spectrascope.zoo.build import ModelSpec

__all__ = ["CKA", "PRESETS", "ENGINES", "ESTIMATORS", "GRAM_DTYPES", "FIG7_PAIRS", "resolve_taps", "TorchCKACompat",
           "MinibatchCKA", "make_engine", "CKAResult", "PairDataset", "compare_models", "compare_dataset",
           "ModelSpec", "skip_warning", "write_report"]

#: tap presets of ``--taps``: name -> roles (from the one tap grammar)
PRESETS: dict[str, tuple[str, ...]] = {k: v[0] for k, v in _GRAMMAR_PRESETS.items()}

#: DFFormer Fig. 7 panels: (panel, model A (rows), model B (columns))
FIG7_PAIRS = (("a", "gfformer_s18", "dfformer_s18"),
              ("b", "caformer_s18", "cdfformer_s18"),
              ("c", "convformer_s18", "dfformer_s18"))

_LAYOUT_NAMES = {lay.upper() for lay in LAYOUTS}


# ---------------------------------------------------------------------------- taps
def _tokens(spec) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else list(spec or ["fig7"])
    return [t.strip() for t in items if str(t).strip()]


def _raw_paths(model: nn.Module, tokens: list[str]) -> list[str]:
    """``path:MODULE`` tokens without a layout and without a declared tap become ``path:MODULE:raw``."""
    if not any(t.startswith("path:") for t in tokens):
        return tokens
    try:
        declared = {t.path for t in model_taps(model) if t.hook == "forward"}
    except TapError:
        declared = set()
    out = []
    for tok in tokens:
        parts = tok.split(":")
        if tok.startswith("path:") and len(parts) >= 2 and parts[1] not in declared and \
                not any(p.upper().split("+")[0] in _LAYOUT_NAMES or p.lower() == "pre" for p in parts[2:]):
            tok = tok + ":raw"
        out.append(tok)
    return out


def resolve_taps(model: nn.Module, spec: str | Sequence[str] | None = "fig7", *, option: str = "--taps",
                 notes: list | None = None) -> TapList:
    """Taps of ``model`` from a comma-separated spec of presets (``fig7``), tap roles
    (``residual``), tap names (``s3.b1.mixer``), blocks, patterns and module paths
    (``path:stages.2.0``): the union, declared taps in the model's execution order, then
    the paths. ``notes`` collects the grammar's remarks (a preset's fallback)."""
    tokens = _tokens(spec)
    if not tokens:
        raise TapError(f"empty {option}")
    return TapRequest.parse(_raw_paths(model, tokens), option=option).resolve(model, notes=notes)


# ---------------------------------------------------------------------------- result
_PAYLOAD_KEYS = ("estimator", "engine", "batches", "examples", "skipped_batches", "skipped_examples", "labels_a",
                 "labels_b", "shapes_a", "shapes_b", "taps_a", "taps_b", "matrix", "hsic_xy", "hsic_xx", "hsic_yy",
                 "diagnostics")
_RESULT_KEYS = ("schema_version", "analysis", "notes", "warnings", "provenance", "title", "best_match")


def _plain(m):
    """A matrix as nested lists with NaN cells as None (strict JSON)."""
    if m is None:
        return None
    return [[None if v != v else v for v in row] if isinstance(row, list) else (None if row != row else row)
            for row in m.tolist()]


def _tensor(rows):
    """A float64 tensor of a JSON matrix or vector (null -> NaN)."""
    if rows is None:
        return None

    def num(v):
        return float("nan") if v is None else v
    return torch.tensor([[num(v) for v in row] if isinstance(row, (list, tuple)) else num(row) for row in rows],
                        dtype=torch.float64)


@dataclass(kw_only=True)
class CKAResult(Result):
    """A CKA matrix with everything needed to read it: rows = taps of model A, columns =
    taps of model B, both in execution order. NaN cells (constant taps) are named in
    ``diagnostics`` and written as JSON null; ``meta`` holds the run's description (models,
    images, batch size, precision ...), written at the top level of results.json."""

    matrix: torch.Tensor
    labels_a: list[str]
    labels_b: list[str]
    taps_a: list[TapSpec]
    taps_b: list[TapSpec]
    shapes_a: dict[str, list[int]]
    shapes_b: dict[str, list[int]]
    estimator: str
    engine: str
    batches: int
    examples: int
    skipped_batches: int = 0
    skipped_examples: int = 0
    hsic_xy: torch.Tensor | None = None
    hsic_xx: torch.Tensor | None = None
    hsic_yy: torch.Tensor | None = None
    diagnostics: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    title: str | None = None

    @property
    def stages_a(self) -> list[int | None]:
        return [t.stage for t in self.taps_a]

    @property
    def stages_b(self) -> list[int | None]:
        return [t.stage for t in self.taps_b]

    def as_dict(self) -> dict:
        """The CKA part of results.json (strict: NaN cells are None)."""
        return {
            "estimator": self.estimator, "engine": self.engine,
            "batches": self.batches, "examples": self.examples,
            "skipped_batches": self.skipped_batches, "skipped_examples": self.skipped_examples,
            "labels_a": self.labels_a, "labels_b": self.labels_b,
            "shapes_a": self.shapes_a, "shapes_b": self.shapes_b,
            "taps_a": [t.as_dict() for t in self.taps_a], "taps_b": [t.as_dict() for t in self.taps_b],
            "matrix": _plain(self.matrix),
            "hsic_xy": _plain(self.hsic_xy), "hsic_xx": _plain(self.hsic_xx), "hsic_yy": _plain(self.hsic_yy),
            "diagnostics": self.diagnostics,
            **self.meta,
        }

    def to_json(self) -> dict:
        best = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                for r in rc.best_matches(self)]
        return {"schema_version": SCHEMA_VERSION, "analysis": self.analysis, "notes": list(self.notes),
                "warnings": list(self.warnings), "title": self.title or rc.default_title(self), **self.as_dict(),
                "best_match": best, "provenance": dict(self.provenance)}

    @classmethod
    def from_json(cls, doc: dict) -> "CKAResult":
        missing = [k for k in ("matrix", "labels_a", "labels_b", "taps_a", "taps_b", "estimator", "engine")
                   if k not in doc]
        if missing:
            raise DataError(f"results of `cka` without {', '.join(missing)}")
        try:
            taps = {side: [TapSpec(**t) for t in doc[f"taps_{side}"]] for side in ("a", "b")}
            return cls(matrix=_tensor(doc["matrix"]), labels_a=list(doc["labels_a"]), labels_b=list(doc["labels_b"]),
                       taps_a=taps["a"], taps_b=taps["b"], shapes_a=dict(doc.get("shapes_a") or {}),
                       shapes_b=dict(doc.get("shapes_b") or {}), estimator=doc["estimator"], engine=doc["engine"],
                       batches=int(doc.get("batches", 0)), examples=int(doc.get("examples", 0)),
                       skipped_batches=int(doc.get("skipped_batches", 0)),
                       skipped_examples=int(doc.get("skipped_examples", 0)), hsic_xy=_tensor(doc.get("hsic_xy")),
                       hsic_xx=_tensor(doc.get("hsic_xx")), hsic_yy=_tensor(doc.get("hsic_yy")),
                       diagnostics=list(doc.get("diagnostics") or []),
                       meta={k: v for k, v in doc.items() if k not in _PAYLOAD_KEYS + _RESULT_KEYS},
                       title=doc.get("title"), notes=list(doc.get("notes") or []),
                       warnings=list(doc.get("warnings") or []), provenance=dict(doc.get("provenance") or {}))
        except (TypeError, ValueError) as exc:
            raise DataError(f"results of `cka` that do not fit ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------------- data
class PairDataset(torch.utils.data.Dataset):
    """The same images through two models' transforms: ``[i]`` -> ``(x_a, x_b)``."""

    def __init__(self, a, b):
        if len(a) != len(b):
            raise DataError(f"the two models' image lists differ in length ({len(a)} vs {len(b)})")
        self.a, self.b = a, b

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i: int):
        return self.a[i], self.b[i]


def _listed_batches(batches: Iterable) -> Iterator[tuple[Batch, torch.Tensor | None]]:
    """Tensors or ``(x_a, x_b)`` pairs -> (Batch of A's input, B's input or None)."""
    start = 0
    for k, item in enumerate(batches):
        xa, xb = item if isinstance(item, (tuple, list)) else (item, None)
        n = int(xa.shape[0])
        if xb is not None and int(xb.shape[0]) != n:
            raise DataError(f"the two inputs of a batch hold {n} and {int(xb.shape[0])} images")
        yield Batch(k, list(range(start, start + n)), xa), xb
        start += n


def _runner_batches(runner: Runner, dataset, paired: bool) -> Iterator[tuple[Batch, torch.Tensor | None]]:
    for b in runner.batches(dataset):
        xb = None
        if paired:
            xb = torch.stack(list(b.extra[0])).to(runner.device)
            if runner.config.channels_last and xb.ndim == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
        yield b, xb


# ---------------------------------------------------------------------------- comparison
def compare_models(model_a: nn.Module, model_b: nn.Module, batches: Iterable, *, taps_a: Sequence[TapSpec],
                   taps_b: Sequence[TapSpec], estimator: str = "unbiased", engine: str = "spectrascope",
                   num_batches: int | None = None, dtype: torch.dtype | None = None, progress: bool | str = False,
                   runner: Runner | None = None) -> CKAResult:
    """Mini-batch CKA between ``taps_a`` of ``model_a`` and ``taps_b`` of ``model_b``.

    ``batches`` yields input tensors (fed to both models) or ``(x_a, x_b)`` pairs holding the
    same images preprocessed for each model. ``model_a`` may be ``model_b`` (one forward
    per batch, one probe). Under torch.distributed pass each rank its own batches; the
    result is the all-reduced matrix. ``num_batches`` (global) sizes the progress bar and
    the torch-cka engine's averaging; ``progress`` may be the bar's label."""
    runner = runner or Runner(RunConfig(device=model_device(model_a)))
    reducer = CKAReducer(taps_a, taps_b, estimator=estimator, engine=engine, num_batches=num_batches or 1,
                         dtype=dtype)
    desc = progress if isinstance(progress, str) else "CKA"
    return _compare(model_a, model_b, _listed_batches(batches), reducer, runner,
                    bar=_bar(bool(progress), num_batches, desc))


def compare_dataset(model_a: nn.Module, model_b: nn.Module, dataset, runner: Runner, *,
                    taps_a: Sequence[TapSpec], taps_b: Sequence[TapSpec], estimator: str = "unbiased",
                    engine: str = "spectrascope", dtype: torch.dtype | None = None, desc: str = "CKA") -> CKAResult:
    """``compare_models`` over a dataset batched and sharded by ``runner`` (batch i -> rank
    i mod world); a ``PairDataset`` gives each model its own transform of the same images."""
    n_batches = len(runner.chunks(len(dataset)))
    total = (len(dataset) + runner.config.batch_size - 1) // runner.config.batch_size
    reducer = CKAReducer(taps_a, taps_b, estimator=estimator, engine=engine, num_batches=total, dtype=dtype)
    items = _runner_batches(runner, dataset, isinstance(dataset, PairDataset))
    bar = _bar(runner.config.progress and runner.dist.main, n_batches, desc)
    return _compare(model_a, model_b, items, reducer, runner, bar=bar)


def _bar(enabled: bool, total: int | None, desc: str):
    return progress_bar(total, desc, enabled=enabled)


def _probes(model_a, model_b, reducer: CKAReducer) -> list[Probe]:
    kw = dict(reducer.probe_kwargs)
    if model_a is model_b:
        return [Probe(model_a, reducer.union_taps(), callback=reducer.callback("AB"), **kw)]
    return [Probe(model_a, reducer.taps_a, callback=reducer.callback("A"), **kw),
            Probe(model_b, reducer.taps_b, callback=reducer.callback("B"), **kw)]


def _compare(model_a, model_b, items, reducer: CKAReducer, runner: Runner, *, bar=None) -> CKAResult:
    """The loop: per accepted batch one forward per model (full forwards, so a module that
    runs twice is seen), then the reducer's update; finally the all-reduce over ranks."""
    probes = _probes(model_a, model_b, reducer)
    dev_a, dev_b = model_device(model_a), model_device(model_b)
    try:
        with runner.dist.together(), contextlib.ExitStack() as stack:   # a NaN on one rank stops every rank
            for p in probes:
                stack.enter_context(p)
            for b, xb in items:
                if bar is not None:
                    bar.update(1)
                if not reducer.accepts(len(b.indices)):
                    continue
                reducer.begin_batch()
                runner.forward(model_a, Batch(b.number, b.indices, b.x.to(dev_a)), probes[0])
                if model_a is not model_b:
                    x = b.x if xb is None else xb
                    runner.forward(model_b, Batch(b.number, b.indices, x.to(dev_b)), probes[1])
                reducer.end_batch()
    finally:
        if bar is not None:
            bar.close()
    reducer.all_reduce(runner.dist)
    return _result(reducer)


def _result(reducer: CKAReducer) -> CKAResult:
    matrix = reducer.compute()
    eng = reducer.engine
    t = eng.last_totals
    if t["batches"] == 0:
        raise DataError(f"no batch with at least {eng.min_batch} images was compared ({t['skipped_batches']} "
                        "batch(es) skipped); use more images or a larger --batch-size")
    order_a, order_b = reducer.order_a, reducer.order_b
    by_a = {tap.name: tap for tap in reducer.taps_a}
    by_b = {tap.name: tap for tap in reducer.taps_b}
    return CKAResult(matrix=matrix, labels_a=order_a, labels_b=order_b,
                     taps_a=[by_a[n] for n in order_a], taps_b=[by_b[n] for n in order_b],
                     shapes_a={n: reducer.a.shapes.get(n) for n in order_a},
                     shapes_b={n: reducer.b.shapes.get(n) for n in order_b},
                     estimator=eng.estimator, engine=reducer.engine_name, batches=t["batches"],
                     examples=t["examples"], skipped_batches=t["skipped_batches"],
                     skipped_examples=t["skipped_examples"], hsic_xy=t["hsic_xy"].cpu(),
                     hsic_xx=t["hsic_xx"].cpu(), hsic_yy=t["hsic_yy"].cpu(), diagnostics=list(eng.diagnostics),
                     meta={"gram_products": sorted(eng.gram_dtypes)})


# ---------------------------------------------------------------------------- the declaration
#: ``--precision`` -> Gram-product dtype (None: automatic)
GRAM_DTYPES = {"auto": None, "float32": torch.float32, "float64": torch.float64}


def skip_warning(result: CKAResult) -> str | None:
    """The line that reports the batches left out (counted over every rank), or None."""
    k, n = result.skipped_batches, result.skipped_examples
    if not k:
        return None
    need = "torch-cka would divide by zero below 4" if result.engine == "torch-cka" else \
        f"the {result.estimator} estimator needs at least 4 per batch"
    if k == 1:
        return f"CKA: skipped a batch of {n} example(s) ({need}); {result.examples} images compared"
    return f"CKA: skipped {k} batches with {n} example(s) in total ({need}); {result.examples} images compared"


def _side(built) -> dict:
    d = built.describe()
    d["name"] = built.spec.name
    return d


def write_report(result: CKAResult, out_dir, *, title: str | None = None, overwrite: bool = False):
    """The report folder of ``result`` (results.json, heatmap, CSVs, report.html), staged."""
    from spectrascope.seam import save
    if title is not None:
        result.title = title
    if not result.provenance:
        result.provenance = rc.provenance_of(result)
    return save(result, out_dir, overwrite=overwrite)


@register
class CKA(Analysis):
    """Mini-batch linear CKA between the layers of two models, written as a report folder
    (heatmap PNG/PDF, matrix CSV, best matches, results.json, report.html).

    --model twice compares two models (rows, columns); once, a model with itself. Runs under
    torchrun too (one process per device; gloo on CPU): every process takes its share of the
    batches and the first one writes the report."""

    name = "cka"
    summary = "Mini-batch linear CKA between the layers of two models (DFFormer Fig. 7)"
    needs = Needs(models="many", data="images")
    shared = {"model": {"required": False, "help": "registry name, alias or timm:<name>: twice for rows and columns, "
                                                   "once to compare a model with itself"},
              "seed": {"default": 0, "help": "seed of random initialisations"},
              "batch_size": {"help": "images per mini-batch (at least 4 for the unbiased estimator)"}}
    options = (
        Option("taps", "fig7", "comma-separated presets (fig7 = DFFormer Fig. 7's 40 points), tap roles, tap names "
                               "or path:<module.path>"),
        Option("taps_a", None, "taps of model A (default: --taps)"),
        Option("taps_b", None, "taps of model B (default: --taps)"),
        Option("model_kwargs_a", (), "constructor overrides for model A", multiple=True, metavar="KEY=VALUE",
               parse=lambda v: parse_model_kwargs(v, "--model-kwargs-a")),
        Option("model_kwargs_b", (), "constructor overrides for model B", multiple=True, metavar="KEY=VALUE",
               parse=lambda v: parse_model_kwargs(v, "--model-kwargs-b")),
        Option("estimator", "unbiased", "mini-batch HSIC estimator", type=choice(*ESTIMATORS)),
        Option("engine", "spectrascope", "torch-cka: torch-cka 0.21's float32 computation (the papers' numbers)",
               type=choice(*ENGINES)),
        Option("precision", "auto", "Gram products of the centred features (sums are float64 either way); auto = "
                                    "float32 for float32/half features, float64 for float64 ones",
               type=choice(*GRAM_DTYPES)),
        Option("title", None, "report title"),
        Option("model_a", None, "deprecated spelling of the first --model"),
        Option("model_b", None, "deprecated spelling of the second --model"),
        Option("checkpoint_a", None, "checkpoint of model A (the first --checkpoint)", metavar="PATH"),
        Option("checkpoint_b", None, "checkpoint of model B (the second --checkpoint)", metavar="PATH"),
    )
    result = CKAResult
    repeat_models = True
    random_weights = "the results describe an untrained network"

    def check(self, p) -> None:
        if (p.model_a or p.model_b) and p.model:
            raise OptionError("give the models either as --model A --model B or as --model-a/--model-b",
                              option="--model")
        if not (p.model or p.model_a or p.model_b):
            raise OptionError("is required (twice: rows and columns; once: a model with itself)", option="--model")
        if len(p.model) > 2:
            raise OptionError(f"cka compares two models, not {len(p.model)}", option="--model")
        if p.batch_size < 4:
            raise OptionError("must be at least 4 (the unbiased estimator needs n >= 4 per batch)",
                              option="--batch-size")

    def pair(self, ctx: Context) -> tuple[ModelSpec, ModelSpec]:
        """(model A, model B): ``--model`` once or twice, or the deprecated ``--model-a``/``--model-b``."""
        p = ctx.params
        if p.model_a or p.model_b:
            a = ModelSpec(p.model_a or p.model_b, p.checkpoint_a, p.img_size, dict(p.model_kwargs or {}))
            b = ModelSpec(p.model_b or p.model_a, p.checkpoint_b, p.img_size, dict(p.model_kwargs or {}))
            ctx.note("--model-a/--model-b are deprecated spellings of --model A --model B")
        else:
            a, b = (ctx.specs * 2)[:2]
            a = replace(a, checkpoint=p.checkpoint_a or a.checkpoint)
            b = replace(b, checkpoint=p.checkpoint_b or b.checkpoint)
        a = replace(a, overrides={**dict(a.overrides), **dict(p.model_kwargs_a or {})})
        b = replace(b, overrides={**dict(b.overrides), **dict(p.model_kwargs_b or {})})
        return a, b

    def tag(self, params) -> str:
        names = [params.model_a, params.model_b] if (params.model_a or params.model_b) else list(params.model)
        names = [str(n).replace("timm:", "") for n in names if n]
        return "-vs-".join((names * 2)[:2])

    def run(self, ctx: Context) -> CKAResult:
        p = ctx.params
        spec_a, spec_b = self.pair(ctx)
        built_a = ctx.build(spec_a)
        built_b = built_a if spec_b.key() == spec_a.key() else ctx.build(spec_b)
        model_a, model_b = built_a.model, built_b.model
        ta = resolve_taps(model_a, p.taps_a or p.taps, option="--taps-a" if p.taps_a else "--taps", notes=ctx.notes)
        tb = resolve_taps(model_b, p.taps_b or p.taps, option="--taps-b" if p.taps_b else "--taps", notes=ctx.notes)
        shared = built_a.pre == built_b.pre
        source = ctx.source
        dataset = source.dataset(built_a.pre) if shared else PairDataset(source.dataset(built_a.pre),
                                                                         source.dataset(built_b.pre))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            result = compare_dataset(model_a, model_b, dataset, ctx.runner, taps_a=ta, taps_b=tb,
                                     estimator=p.estimator, engine=p.engine, dtype=GRAM_DTYPES[p.precision],
                                     desc=f"CKA {spec_a.name} vs {spec_b.name}")
        ctx.warn(*[str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)
                   and not str(w.message).startswith("CKA: skipped")])
        ctx.warn(skip_warning(result), *result.diagnostics)
        r = ctx.runner
        result.meta.update({
            "model_a": _side(built_a), "model_b": _side(built_b), "same_model_object": model_a is model_b,
            "shared_input": shared, "images": source.describe()["files"], "num_images": len(source),
            "images_sha256": source.digest, "batch_size": r.config.batch_size, "world_size": r.dist.world,
            "seed": p.seed, "precision": p.precision, "amp": r.config.amp, "channels_last": r.config.channels_last,
            "taps_spec": {"a": p.taps_a or p.taps, "b": p.taps_b or p.taps}, "device": str(r.device),
        })
        result.title = p.title
        ctx.provenance.update({"checkpoint_sha256_a": built_a.checkpoint_sha256,
                               "checkpoint_sha256_b": built_b.checkpoint_sha256})
        return result

    def report(self, result, folder, style):
        return rc.write_report_files(result, folder)

    def draw(self, result, folder, style):
        return rc.draw(result, folder, style)

    def describe(self, result, output):
        return [f"CKA {len(result.labels_a)}x{len(result.labels_b)} over {result.examples} images "
                f"({result.batches} batches) -> {output}"]
