"""The CKA reducer: streaming mini-batch CKA between the taps of two models, fed by ``Probe``
callbacks, with its sufficient statistics merged over ranks.

Each tap is reduced to its Gram matrix the moment its hook fires (one ``Gram`` per hooked
point and batch, shared by the two sides when one model is compared with itself), so no
feature map outlives its hook. ``end_batch()`` adds the batch's Gram matrices to the
engine's sums (``ops.cka.MinibatchCKA`` or ``ops.cka.TorchCKACompat``); rows and columns
follow the order in which the taps first fired (execution order).

``state()`` / ``load_state()`` expose those sums and ``all_reduce(dist)`` replaces them by
the sums over every rank (float64 sums; the per-tap input epsilons by maximum), so each rank
ends with the statistics of a one-process run over the same batches.
"""
from __future__ import annotations

from typing import Sequence

import torch

from spectrascope.engine.reducers import Reducer
from spectrascope.errors import TapError
from spectrascope.ops.cka import make_engine
from spectrascope.probe.spec import TapList, TapSpec

__all__ = ["CKAReducer"]


class _Side:
    """The captures of one model of the pair during one forward (tap name -> Gram cache key)."""

    def __init__(self, label: str, taps: TapList, reducer: "CKAReducer"):
        self.label, self.taps, self.reducer = label, taps, reducer
        self.names = set(taps.names())
        self.fired: dict[str, tuple] = {}
        self.shapes: dict[str, list[int]] = {}
        self.order: list[str] | None = None

    def __call__(self, tap: TapSpec, x: torch.Tensor, scope: str | None = None) -> None:
        if tap.name in self.fired:
            raise TapError(f"tap {tap.name!r} ({tap.path}) of model {self.label} fired twice in one forward "
                           "(its module is called more than once); choose another tap")
        key = self.reducer.gram_of(tap, x, scope or self.label)
        self.fired[tap.name] = key
        if tap.name not in self.shapes:
            self.shapes[tap.name] = list(x.shape[1:])

    def check(self) -> list[str]:
        """The fired order of this batch (the first batch fixes it; later ones must match)."""
        if self.order is None:
            missing = [t.name for t in self.taps if t.name not in self.fired]
            if missing:
                more = " ..." if len(missing) > 5 else ""
                raise TapError(f"tap(s) {', '.join(missing[:5])}{more} of model {self.label} never fired (their "
                               "modules are not called in the forward pass)")
            self.order = list(self.fired)
        elif set(self.fired) != set(self.order):
            raise TapError("the set of taps that fired changed between batches")
        return self.order


class CKAReducer(Reducer):
    """Mini-batch CKA between ``taps_a`` of model A and ``taps_b`` of model B (see the module doc).

    Per batch: ``accepts(n)`` (skips and counts batches below the estimator's minimum),
    ``begin_batch()``, the forwards with ``callback("A")`` / ``callback("B")`` (or
    ``callback("AB")`` on one probe when A and B are the same model), ``end_batch()``.
    After the last batch: ``all_reduce(dist)`` then ``compute()``."""

    probe_kwargs = {"nchw": False, "clone": False, "dtype": None}

    def __init__(self, taps_a: Sequence[TapSpec], taps_b: Sequence[TapSpec], *, estimator: str = "unbiased",
                 engine: str = "spectrascope", num_batches: int = 1, dtype: torch.dtype | None = None):
        self.taps_a, self.taps_b = TapList(taps_a), TapList(taps_b)
        for label, taps in (("A", self.taps_a), ("B", self.taps_b)):
            names = taps.names()
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise TapError(f"duplicate tap name(s) for model {label}: {', '.join(sorted(dup))}")
        self.engine = make_engine(engine, len(self.taps_a), len(self.taps_b), estimator, num_batches=num_batches,
                                  dtype=dtype, labels_a=self.taps_a.names(), labels_b=self.taps_b.names())
        self.engine_name = engine
        self.a = _Side("A", self.taps_a, self)
        self.b = _Side("B", self.taps_b, self)
        self._cache: dict[tuple, object] = {}

    # ------------------------------------------------------------------ capture
    def gram_of(self, tap: TapSpec, x: torch.Tensor, scope: str) -> tuple:
        """Reduce ``x`` to its Gram matrix once per hooked point of a model (``scope``) and batch;
        returns its cache key."""
        key = (scope, tap.path, tap.hook)
        if key not in self._cache:
            self._cache[key] = self.engine.gram(x)
        return key

    def callback(self, sides: str = "AB"):
        """The ``Probe`` callback feeding side ``"A"``, ``"B"`` or both (one probe on a shared model)."""
        if sides == "A":
            return self.a
        if sides == "B":
            return self.b

        def both(tap: TapSpec, x: torch.Tensor) -> None:
            if tap.name in self.a.names:
                self.a(tap, x, "AB")
            if tap.name in self.b.names:
                self.b(tap, x, "AB")
        return both

    def union_taps(self) -> TapList:
        """Taps of A then the taps of B not already named by A (one probe on a shared model)."""
        names = set(self.taps_a.names())
        return TapList(list(self.taps_a) + [t for t in self.taps_b if t.name not in names])

    def __call__(self, tap: TapSpec, x: torch.Tensor) -> None:
        self.callback("AB")(tap, x)

    # ------------------------------------------------------------------ batches
    def accepts(self, n: int) -> bool:
        return self.engine.accepts(int(n))

    def begin_batch(self) -> None:
        self._cache.clear()
        self.a.fired.clear()
        self.b.fired.clear()

    def end_batch(self) -> None:
        order_a, order_b = self.a.check(), self.b.check()
        if self.engine.batches == 0:
            self.engine.labels_a, self.engine.labels_b = list(order_a), list(order_b)
        self.engine.update_grams([self._cache[self.a.fired[n]] for n in order_a],
                                 [self._cache[self.b.fired[n]] for n in order_b])
        self._cache.clear()

    # ------------------------------------------------------------------ statistics
    def state(self) -> dict:
        return {k: v.detach().cpu() for k, v in self.engine.state().items()}

    def load_state(self, state: dict) -> None:
        self.engine.load_state(state)

    def all_reduce(self, dist) -> None:
        """Sums over every rank (one collective per reduction kind, in a fixed key order)."""
        if dist is None or not dist.enabled:
            return
        st = self.state()
        merged = {}
        for op, keys in (("sum", [k for k in st if k not in self.engine.MAX_KEYS]),
                         ("max", [k for k in st if k in self.engine.MAX_KEYS])):
            if not keys:
                continue
            flat = torch.cat([st[k].double().flatten() for k in keys])
            flat = dist.all_reduce(flat, op)
            for k, part in zip(keys, torch.split(flat, [st[k].numel() for k in keys])):
                merged[k] = part.reshape(st[k].shape).to(st[k].dtype)
        self.load_state(merged)

    def compute(self) -> torch.Tensor:
        """The CKA matrix (rows: A's taps, columns: B's, in execution order); diagnostics in
        ``self.engine.diagnostics``, totals in ``self.engine.last_totals``."""
        return self.engine.compute()

    @property
    def order_a(self) -> list[str]:
        return list(self.a.order or self.taps_a.names())

    @property
    def order_b(self) -> list[str]:
        return list(self.b.order or self.taps_b.names())
