"""CKA between the taps of two models: capture, engines, presets and the runner behind
``spectrascope cka``.

Both models see the same images in the same order (one shared input tensor when their
preprocessing agrees, otherwise the same files through each model's own transform). Taps
are captured by ``spectrascope.probe.probe.Probe`` in callback mode under ``inference_mode``:
each tap is reduced to its Gram matrix the moment its hook fires, so no feature map
outlives its hook. Rows and columns follow the order in which the hooks fired (execution
order), labelled with the tap names. A model compared with itself runs one forward per
batch with both probes attached (distinct captures, unit diagonal).

Engines:

* ``spectrascope`` (default): ``spectrascope.ops.cka.MinibatchCKA`` (centred features, float64
  accumulation; Gram products in float32 for float32 features unless ``dtype`` says otherwise).
* ``torch-cka``: the computation of torch-cka 0.21 (``torch_cka.CKA._HSIC`` on float32
  Gram matrices of uncentred features, its accumulation and ratio) on features captured
  by our probes, for users who need the numbers of papers made with it. It agrees with
  the default engine on well-conditioned features and drifts (up to sign flips, values
  above 1, asymmetric self-comparisons) on features with large means. Our capture keeps
  the labels right (torch-cka's exported labels can be in a different order than its
  rows), removes its hooks and runs without autograd; where torch-cka would abort on NaN,
  the cells are NaN with a diagnostic.

Under ``torch.distributed`` (e.g. ``torchrun``), every rank takes every world-th batch
and the sums are all-reduced, so all ranks get the matrix of a single-process run.
"""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from spectrascope.ops.cka import ESTIMATORS, MinibatchCKA, distributed_sum
from spectrascope.probe import Probe, TapError, TapList, TapSpec, model_taps

__all__ = ["PRESETS", "ENGINES", "FIG7_PAIRS", "resolve_taps", "TorchCKACompat", "make_engine", "CKAResult",
           "compare_models", "ModelSpec", "run_cka", "init_distributed", "shard"]

#: tap presets: name -> roles (union, in execution order)
PRESETS: dict[str, tuple[str, ...]] = {
    # DFFormer Fig. 7: 4 downsampling outputs, the residual stream after every token mixer and
    # after every channel MLP (= block output); 40 points for the S18 models
    "fig7": ("stem", "downsample", "residual", "block"),
    "dfformer40": ("stem", "downsample", "residual", "block"),
    "blocks": ("stem", "downsample", "block"),
}

ENGINES = ("spectrascope", "torch-cka")

#: DFFormer Fig. 7 panels: (panel, model A (rows), model B (columns))
FIG7_PAIRS = (("a", "gfformer_s18", "dfformer_s18"),
              ("b", "caformer_s18", "cdfformer_s18"),
              ("c", "convformer_s18", "dfformer_s18"))


# ---------------------------------------------------------------------------- taps
def resolve_taps(model: nn.Module, spec: str | Sequence[str] | None = "fig7") -> TapList:
    """Taps of ``model`` from a comma-separated spec of presets (``fig7``), tap roles
    (``residual``), tap names (``s3.b1.mixer``) and module paths (``path:stages.2.0``);
    the union, declared taps in the model's execution order, then the paths."""
    tokens = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else (spec or ["fig7"])) if t.strip()]
    if not tokens:
        raise TapError("empty --taps")
    paths = [t[5:] for t in tokens if t.startswith("path:")]
    rest = [t for t in tokens if not t.startswith("path:")]
    declared: TapList = TapList()
    if rest:
        declared = model_taps(model)
    roles: list[str] = []
    names: set[str] = set()
    known_roles = declared.roles()
    known_names = set(declared.names())
    for tok in rest:
        low = tok.lower()
        if low in PRESETS:
            missing = [r for r in PRESETS[low] if r not in known_roles and r not in ("downsample",)]
            if missing:
                raise TapError(f"preset {low!r} needs tap role(s) {', '.join(missing)}, which "
                               f"{type(model).__name__} does not declare (it has: {', '.join(known_roles)})")
            roles += [r for r in PRESETS[low] if r in known_roles]
        elif tok in known_roles:
            roles.append(tok)
        elif tok in known_names:
            names.add(tok)
        else:
            raise TapError(f"unknown tap {tok!r}: not a preset ({', '.join(PRESETS)}), a role of this model "
                           f"({', '.join(known_roles)}), a tap name or path:<module.path>")
    out = TapList(t for t in declared if t.role in roles or t.name in names)
    if paths:
        base = declared if rest else _declared_or_empty(model)
        by_path: dict[str, TapSpec] = {}
        for t in base:
            if t.hook == "forward":
                by_path.setdefault(t.path, t)
        for p in paths:
            t = by_path.get(p) or TapSpec(name=p, role="path", path=p, layout="raw")
            if t not in out:
                out.append(t)
    if not out:
        raise TapError("the tap selection is empty")
    return out


def _declared_or_empty(model) -> TapList:
    try:
        return model_taps(model)
    except TapError:
        return TapList()


# ---------------------------------------------------------------------------- engines
class TorchCKACompat:
    """torch-cka 0.21's mini-batch CKA computation, fed by our capture.

    Per batch and tap: ``X = feat.flatten(1)`` (float32, uncentred), ``K = X Xᵀ`` with a
    zeroed diagonal; ``torch_cka.CKA._HSIC`` for every (K, K), (K, L), (L, L); the sums
    are divided by ``num_batches`` and accumulated in a float32 ``(N, M, 3)`` tensor as
    torch-cka does; the result is ``xy / (sqrt(xx) · sqrt(yy))``. ``HSIC(L, L)`` is
    computed once per batch instead of once per pair (same values)."""

    name = "torch-cka"

    def __init__(self, n_a: int, n_b: int, estimator: str = "unbiased", *, num_batches: int = 1,
                 labels_a: Sequence[str] | None = None, labels_b: Sequence[str] | None = None, **_ignored):
        if estimator != "unbiased":
            raise ValueError("the torch-cka engine implements only the unbiased estimator")
        import torch_cka  # noqa: F401  (a dependency; imported lazily: it pulls in matplotlib)
        self._hsic_fn = torch_cka.CKA._HSIC
        self.n_a, self.n_b = n_a, n_b
        self.estimator = estimator
        self.num_batches = max(1, int(num_batches))
        self.min_batch = 4
        self.labels_a = list(labels_a or [f"a{i}" for i in range(n_a)])
        self.labels_b = list(labels_b or [f"b{j}" for j in range(n_b)])
        self.hsic_matrix = torch.zeros(n_a, n_b, 3)
        self.gram_dtypes = {"float32"}
        self.batches = self.examples = self.skipped_batches = self.skipped_examples = 0
        self.diagnostics: list[str] = []

    def accepts(self, n: int) -> bool:
        if n >= self.min_batch:
            return True
        self.skipped_batches += 1
        self.skipped_examples += int(n)
        warnings.warn(f"CKA: skipped a batch of {n} example(s) (torch-cka would divide by zero below 4)",
                      RuntimeWarning, stacklevel=3)
        return False

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        X = x.flatten(1)
        if X.dtype != torch.float32:  # torch-cka builds float32 ones vectors; other dtypes break it
            X = X.float()
        K = X @ X.t()
        K.fill_diagonal_(0.0)
        return K

    def update(self, feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor]) -> bool:
        if not self.accepts(int(feats_a[0].shape[0])):
            return False
        self.update_grams([self.gram(f) for f in feats_a], [self.gram(f) for f in feats_b])
        return True

    def update_grams(self, grams_a: Sequence[torch.Tensor], grams_b: Sequence[torch.Tensor]) -> None:
        shim = SimpleNamespace(device=grams_a[0].device)
        nb = self.num_batches
        h = self.hsic_matrix
        yy = [self._hsic_fn(shim, L, L) for L in grams_b]
        for i, K in enumerate(grams_a):
            h[i, :, 0] += self._hsic_fn(shim, K, K) / nb
            for j, L in enumerate(grams_b):
                if K.shape != L.shape:
                    raise ValueError(f"feature shape mismatch {tuple(K.shape)} vs {tuple(L.shape)}")
                h[i, j, 1] += self._hsic_fn(shim, K, L) / nb
                h[i, j, 2] += yy[j] / nb
        self.batches += 1
        self.examples += int(grams_a[0].shape[0])

    def totals(self, distributed: bool = True) -> dict:
        h = distributed_sum(self.hsic_matrix) if distributed else self.hsic_matrix
        counts = torch.tensor([self.batches, self.examples, self.skipped_batches, self.skipped_examples],
                              dtype=torch.float64)
        if distributed:
            counts = distributed_sum(counts)
        c = [int(v) for v in counts.tolist()]
        return {"hsic_xy": h[:, :, 1].double(), "hsic_xx": h[:, 0, 0].double(), "hsic_yy": h[0, :, 2].double(),
                "hsic_matrix": h, "batches": c[0], "examples": c[1], "skipped_batches": c[2],
                "skipped_examples": c[3]}

    def compute(self, distributed: bool = True) -> torch.Tensor:
        t = self.totals(distributed)
        self.last_totals = t
        h = t["hsic_matrix"]
        self.diagnostics = []
        out = (h[:, :, 1] / (h[:, :, 0].sqrt() * h[:, :, 2].sqrt())).double()
        for i in range(self.n_a):
            v = float(h[i, 0, 0])
            if not v > 0:
                self.diagnostics.append(f"torch-cka: self-HSIC of tap {self.labels_a[i]!r} of model A is {v:.3g} "
                                        "(constant tap or float32 cancellation): its row is NaN "
                                        "(torch-cka itself aborts here)")
                out[i, :] = float("nan")
        for j in range(self.n_b):
            v = float(h[0, j, 2])
            if not v > 0:
                self.diagnostics.append(f"torch-cka: self-HSIC of tap {self.labels_b[j]!r} of model B is {v:.3g} "
                                        "(constant tap or float32 cancellation): its column is NaN "
                                        "(torch-cka itself aborts here)")
                out[:, j] = float("nan")
        return out


def make_engine(engine: str, n_a: int, n_b: int, estimator: str = "unbiased", *, num_batches: int = 1,
                dtype: torch.dtype | None = None, labels_a=None, labels_b=None):
    """``MinibatchCKA`` (engine ``spectrascope``) or ``TorchCKACompat`` (``torch-cka``)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"--estimator must be one of {', '.join(ESTIMATORS)}, not {estimator!r}")
    if engine == "spectrascope":
        return MinibatchCKA(n_a, n_b, estimator, dtype=dtype, labels_a=labels_a, labels_b=labels_b)
    if engine == "torch-cka":
        return TorchCKACompat(n_a, n_b, estimator, num_batches=num_batches, labels_a=labels_a, labels_b=labels_b)
    raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")


# ---------------------------------------------------------------------------- result
@dataclass
class CKAResult:
    """A CKA matrix with everything needed to read it: rows = taps of model A, columns =
    taps of model B, both in execution order."""

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
        nan_to_none = lambda m: [[None if v != v else v for v in row] for row in m.tolist()]  # noqa: E731
        return {
            "estimator": self.estimator, "engine": self.engine,
            "batches": self.batches, "examples": self.examples,
            "skipped_batches": self.skipped_batches, "skipped_examples": self.skipped_examples,
            "labels_a": self.labels_a, "labels_b": self.labels_b,
            "shapes_a": self.shapes_a, "shapes_b": self.shapes_b,
            "taps_a": [t.as_dict() for t in self.taps_a], "taps_b": [t.as_dict() for t in self.taps_b],
            "matrix": nan_to_none(self.matrix),
            "hsic_xy": None if self.hsic_xy is None else self.hsic_xy.tolist(),
            "hsic_xx": None if self.hsic_xx is None else self.hsic_xx.tolist(),
            "hsic_yy": None if self.hsic_yy is None else self.hsic_yy.tolist(),
            "diagnostics": self.diagnostics,
            **self.meta,
        }


# ---------------------------------------------------------------------------- capture + compute
def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


class _Capture:
    """Callback for one Probe: reduces each tap to its Gram matrix as the hook fires."""

    def __init__(self, side: str, model: nn.Module, engine, cache: dict):
        self.side, self.model, self.engine, self.cache = side, model, engine, cache
        self.fired: dict[str, tuple] = {}
        self.shapes: dict[str, list[int]] = {}

    def __call__(self, tap: TapSpec, x: torch.Tensor):
        if tap.name in self.fired:
            raise TapError(f"tap {tap.name!r} ({tap.path}) of model {self.side} fired twice in one forward "
                           "(its module is called more than once); choose another tap")
        key = (id(self.model), tap.path, tap.hook)
        if key not in self.cache:
            self.cache[key] = self.engine.gram(x)
        self.fired[tap.name] = key
        if tap.name not in self.shapes:
            self.shapes[tap.name] = list(x.shape[1:])


def compare_models(model_a: nn.Module, model_b: nn.Module, batches: Iterable, *, taps_a: Sequence[TapSpec],
                   taps_b: Sequence[TapSpec], estimator: str = "unbiased", engine: str = "spectrascope",
                   num_batches: int | None = None, dtype: torch.dtype | None = None, progress: bool = False,
                   desc: str = "CKA", progress_total: int | None = None) -> CKAResult:
    """Mini-batch CKA between ``taps_a`` of ``model_a`` and ``taps_b`` of ``model_b``.

    ``batches`` yields input tensors (fed to both models) or ``(x_a, x_b)`` pairs holding the
    same images preprocessed for each model. ``model_a`` may be ``model_b`` (one forward
    per batch, both probes attached). Under torch.distributed pass each rank its own
    batches; the result is the all-reduced matrix. ``num_batches`` (global) sizes the
    progress bar and the torch-cka engine's averaging."""
    taps_a, taps_b = TapList(taps_a), TapList(taps_b)
    for side, taps in (("A", taps_a), ("B", taps_b)):
        dup = {n for n in taps.names() if taps.names().count(n) > 1}
        if dup:
            raise TapError(f"duplicate tap name(s) for model {side}: {', '.join(sorted(dup))}")
    same = model_a is model_b
    eng = make_engine(engine, len(taps_a), len(taps_b), estimator, num_batches=num_batches or 1, dtype=dtype,
                      labels_a=taps_a.names(), labels_b=taps_b.names())
    dev_a, dev_b = _device_of(model_a), _device_of(model_b)
    cache: dict = {}
    cap_a = _Capture("A", model_a, eng, cache)
    cap_b = _Capture("B", model_b, eng, cache)
    order_a: list[str] | None = None
    order_b: list[str] | None = None
    from tqdm.auto import tqdm
    bar = tqdm(total=progress_total or num_batches, desc=desc, unit="batch", file=sys.stderr, disable=not progress, leave=False)
    try:
        with Probe(model_a, taps_a, callback=cap_a, nchw=False, clone=False), \
                Probe(model_b, taps_b, callback=cap_b, nchw=False, clone=False), torch.inference_mode():
            for item in batches:
                xa, xb = item if isinstance(item, (tuple, list)) else (item, item)
                if xa.shape[0] != xb.shape[0]:
                    raise ValueError(f"the two inputs of a batch hold {xa.shape[0]} and {xb.shape[0]} images")
                if not eng.accepts(int(xa.shape[0])):
                    bar.update(1)
                    continue
                cache.clear()
                cap_a.fired.clear()
                cap_b.fired.clear()
                model_a(xa.to(dev_a))
                if not same:
                    model_b(xb.to(dev_b))
                if order_a is None:
                    order_a, order_b = _check_fired("A", taps_a, cap_a), _check_fired("B", taps_b, cap_b)
                    eng.labels_a, eng.labels_b = order_a, order_b
                elif set(cap_a.fired) != set(order_a) or set(cap_b.fired) != set(order_b):
                    raise TapError("the set of taps that fired changed between batches")
                eng.update_grams([cache[cap_a.fired[n]] for n in order_a], [cache[cap_b.fired[n]] for n in order_b])
                cache.clear()
                bar.update(1)
    finally:
        bar.close()
    matrix = eng.compute()
    t = eng.last_totals
    if t["batches"] == 0:
        raise ValueError(f"no batch with at least {eng.min_batch} images was compared "
                         f"({t['skipped_batches']} batch(es) skipped); use more images or a larger --batch-size")
    order_a = order_a or taps_a.names()
    order_b = order_b or taps_b.names()
    by_a, by_b = {t_.name: t_ for t_ in taps_a}, {t_.name: t_ for t_ in taps_b}
    return CKAResult(matrix=matrix, labels_a=list(order_a), labels_b=list(order_b),
                     taps_a=[by_a[n] for n in order_a], taps_b=[by_b[n] for n in order_b],
                     shapes_a={n: cap_a.shapes.get(n) for n in order_a},
                     shapes_b={n: cap_b.shapes.get(n) for n in order_b},
                     estimator=estimator, engine=engine, batches=t["batches"], examples=t["examples"],
                     skipped_batches=t["skipped_batches"], skipped_examples=t["skipped_examples"],
                     hsic_xy=t["hsic_xy"].cpu(), hsic_xx=t["hsic_xx"].cpu(), hsic_yy=t["hsic_yy"].cpu(),
                     diagnostics=list(eng.diagnostics),
                     meta={"gram_products": sorted(eng.gram_dtypes)})


def _check_fired(side: str, taps: TapList, cap: _Capture) -> list[str]:
    missing = [t.name for t in taps if t.name not in cap.fired]
    if missing:
        raise TapError(f"tap(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} of model {side} never "
                       "fired (their modules are not called in the forward pass)")
    return list(cap.fired)


# ---------------------------------------------------------------------------- distributed
def init_distributed(device: str | torch.device = "cpu") -> tuple[int, int, torch.device]:
    """Join the process group a launcher (``torchrun``) describes in the environment.

    Returns ``(rank, world_size, device)``: gloo on CPU, nccl with one GPU per local rank.
    Without a launcher: ``(0, 1, device)``."""
    import torch.distributed as dist
    device = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), device


def shard(items: Sequence, rank: int, world: int) -> list:
    """Every ``world``-th item starting at ``rank`` (batch i goes to rank i mod world)."""
    return list(items[rank::world])


# ---------------------------------------------------------------------------- runner
@dataclass
class ModelSpec:
    """How to build one side of a comparison."""

    name: str
    checkpoint: str | None = None
    img_size: int | tuple[int, int] | None = None
    overrides: dict = field(default_factory=dict)

    def key(self):
        return (self.name, self.checkpoint, self.img_size, sorted(self.overrides.items(), key=str))


def _build(spec: ModelSpec, device, seed: int):
    from spectrascope.zoo.build import build_for_inference
    torch.manual_seed(seed)
    return build_for_inference(spec.name, checkpoint=spec.checkpoint, img_size=spec.img_size, device=device,
                               **spec.overrides)


def _images_digest(paths) -> str:
    import hashlib
    from spectrascope.io.images import paths_digest
    if len(paths) <= 2000:
        return paths_digest(paths)
    h = hashlib.sha256()  # large sets: names and sizes only (reading 50k files twice is not worth it)
    for p in paths:
        h.update(str(p.name).encode())
        h.update(str(p.stat().st_size).encode())
    return "names+sizes:" + h.hexdigest()


def run_cka(spec_a: ModelSpec, spec_b: ModelSpec, *, taps: str = "fig7", taps_a: str | None = None,
            taps_b: str | None = None, images=None, data: str | None = None, num_images: int | None = None,
            batch_size: int = 16, estimator: str = "unbiased", engine: str = "spectrascope", device="cpu",
            seed: int = 0, rank: int = 0, world: int = 1, progress: bool = False,
            dtype: torch.dtype | None = None) -> CKAResult:
    """Build both models, read the images, compare, and attach provenance to the result.

    Identical specs (same name, checkpoint, size and overrides) share one model object, so
    a model compared with itself gives a unit diagonal even with random weights."""
    from spectrascope.io.images import iter_batches, resolve_image_paths
    from spectrascope.io.results import Stopwatch
    clock = Stopwatch()
    if estimator not in ESTIMATORS:
        raise ValueError(f"--estimator must be one of {', '.join(ESTIMATORS)}, not {estimator!r}")
    if engine not in ENGINES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if batch_size < 4:
        raise ValueError("--batch-size must be at least 4 (the unbiased estimator needs n >= 4 per batch)")
    paths = resolve_image_paths(images, data, num_images)
    model_a, cfg_a = _build(spec_a, device, seed)
    if spec_b.key() == spec_a.key():
        model_b, cfg_b = model_a, cfg_a
    else:
        model_b, cfg_b = _build(spec_b, device, seed)
    ta = resolve_taps(model_a, taps_a or taps)
    tb = resolve_taps(model_b, taps_b or taps)
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    mine = shard(chunks, rank, world)
    shared_input = cfg_a == cfg_b

    def batches():
        for chunk in mine:
            xa = next(iter_batches(chunk, len(chunk), cfg_a["size"], cfg_a["crop_pct"], cfg_a["mean"], cfg_a["std"]))[0]
            if shared_input:
                yield xa
            else:
                yield xa, next(iter_batches(chunk, len(chunk), cfg_b["size"], cfg_b["crop_pct"], cfg_b["mean"],
                                            cfg_b["std"]))[0]

    result = compare_models(model_a, model_b, batches(), taps_a=ta, taps_b=tb, estimator=estimator, engine=engine,
                            num_batches=len(chunks), dtype=dtype, progress=progress, progress_total=len(mine),
                            desc=f"CKA {spec_a.name} vs {spec_b.name}")

    def side(spec, model, cfg):
        info = getattr(model, "checkpoint_info", None) or {}
        return {"name": spec.name, "checkpoint": spec.checkpoint, "checkpoint_sha256": info.get("sha256"),
                "random_weights": spec.checkpoint is None, "img_size": list(cfg["size"]),
                "overrides": spec.overrides, "preprocessing": {k: list(v) if isinstance(v, tuple) else v
                                                               for k, v in cfg.items()}}

    result.meta.update({
        "model_a": side(spec_a, model_a, cfg_a), "model_b": side(spec_b, model_b, cfg_b),
        "same_model_object": model_a is model_b, "shared_input": shared_input,
        "images": [p.name for p in paths], "num_images": len(paths), "images_sha256": _images_digest(paths),
        "batch_size": batch_size, "world_size": world, "seed": seed,
        "precision": "auto" if dtype is None else str(dtype).replace("torch.", ""),
        "taps_spec": {"a": taps_a or taps, "b": taps_b or taps},
        "wall_time_s": clock.elapsed, "device": str(device),
    })
    return result
