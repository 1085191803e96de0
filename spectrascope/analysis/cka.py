"""CKA between the taps of two models: tap selection, the comparison loop and its result.

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
import sys
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn as nn

from spectrascope.engine.reducers.cka import CKAReducer
from spectrascope.engine.runner import Batch, RunConfig, Runner
from spectrascope.errors import DataError, TapError
from spectrascope.ops.cka import ENGINES, ESTIMATORS, MinibatchCKA, TorchCKACompat, make_engine
from spectrascope.probe import LAYOUTS, Probe, TapList, TapSpec, model_taps
from spectrascope.probe.grammar import PRESETS as _GRAMMAR_PRESETS
from spectrascope.probe.grammar import TapRequest
from spectrascope.zoo.build import ModelSpec

__all__ = ["PRESETS", "ENGINES", "ESTIMATORS", "FIG7_PAIRS", "resolve_taps", "TorchCKACompat", "MinibatchCKA",
           "make_engine", "CKAResult", "PairDataset", "compare_models", "compare_dataset", "ModelSpec"]

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
@dataclass
class CKAResult:
    """A CKA matrix with everything needed to read it: rows = taps of model A, columns =
    taps of model B, both in execution order. NaN cells (constant taps) are named in
    ``diagnostics`` and written as JSON null."""

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

    @property
    def stages_a(self) -> list[int | None]:
        return [t.stage for t in self.taps_a]

    @property
    def stages_b(self) -> list[int | None]:
        return [t.stage for t in self.taps_b]

    def as_dict(self) -> dict:
        """The JSON payload (strict: NaN cells are None)."""
        def plain(m):
            return None if m is None else [[None if v != v else v for v in row] if isinstance(row, list)
                                           else (None if row != row else row) for row in m.tolist()]
        return {
            "estimator": self.estimator, "engine": self.engine,
            "batches": self.batches, "examples": self.examples,
            "skipped_batches": self.skipped_batches, "skipped_examples": self.skipped_examples,
            "labels_a": self.labels_a, "labels_b": self.labels_b,
            "shapes_a": self.shapes_a, "shapes_b": self.shapes_b,
            "taps_a": [t.as_dict() for t in self.taps_a], "taps_b": [t.as_dict() for t in self.taps_b],
            "matrix": plain(self.matrix),
            "hsic_xy": plain(self.hsic_xy), "hsic_xx": plain(self.hsic_xx), "hsic_yy": plain(self.hsic_yy),
            "diagnostics": self.diagnostics,
            **self.meta,
        }


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


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


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
                   num_batches: int | None = None, dtype: torch.dtype | None = None, progress: bool = False,
                   desc: str = "CKA", progress_total: int | None = None, runner: Runner | None = None) -> CKAResult:
    """Mini-batch CKA between ``taps_a`` of ``model_a`` and ``taps_b`` of ``model_b``.

    ``batches`` yields input tensors (fed to both models) or ``(x_a, x_b)`` pairs holding the
    same images preprocessed for each model. ``model_a`` may be ``model_b`` (one forward
    per batch, one probe). Under torch.distributed pass each rank its own batches; the
    result is the all-reduced matrix. ``num_batches`` (global) sizes the progress bar and
    the torch-cka engine's averaging."""
    runner = runner or Runner(RunConfig(device=_device_of(model_a)))
    reducer = CKAReducer(taps_a, taps_b, estimator=estimator, engine=engine, num_batches=num_batches or 1,
                         dtype=dtype)
    return _compare(model_a, model_b, _listed_batches(batches), reducer, runner,
                    bar=_bar(progress, progress_total or num_batches, desc))


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
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=False)


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
    dev_a, dev_b = _device_of(model_a), _device_of(model_b)
    try:
        with contextlib.ExitStack() as stack:
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
