"""The amplitude / spectrum reducer: batch and channel sums of ``log(|F| + eps)`` per tap.

Its sufficient statistics per tap are one float64 sum (the half-plane of the 2-D map, or
the half-diagonal only), the number of maps, the number of zero-mean maps, and the map
size; ``state()`` / ``load_state()`` carry them across ranks and ``all_reduce(dist)``
sums them over every rank in rank order (a rank that saw no batch of a tap adds nothing),
so each rank ends with the statistics one process would have over all images.
"""
from __future__ import annotations

from typing import Sequence

import torch

from spectrascope.engine.reducers import Reducer
from spectrascope.ops.fourier import (EPS, DiagonalStats, SpectrumStats, antidiagonal_sums, diagonal_from_sums,
                                     spectrum_stats)
from spectrascope.probe import SPATIAL_LAYOUTS, TapError
from spectrascope.probe.grammar import check_spatial
from spectrascope.probe.spec import TapSpec

__all__ = ["AmplitudeReducer", "SpectrumReducer", "SPATIAL_LAYOUTS"]


def _grid(tap: TapSpec, x: torch.Tensor):
    if tap.layout != "NLC" or tap.grid is None:
        return None
    L = x.shape[1] - (tap.num_prefix_tokens or 0)
    return tap.grid if tap.grid[0] * tap.grid[1] == L else None


def _sum_of(st) -> torch.Tensor:
    return st.half_sum if isinstance(st, SpectrumStats) else st.diag_sum


def _stats_from(entry: dict):
    """A SpectrumStats / DiagonalStats from one tap's state entry."""
    cls = SpectrumStats if entry["kind"] == "maps" else DiagonalStats
    return cls(entry["sum"].clone(), int(entry["count"]), int(entry["small_dc"]), tuple(entry["size"]),
               int(entry["channels"]))


class AmplitudeReducer(Reducer):
    """Batch/channel sums of ``log(|F| + eps)`` per tap (float64 accumulators).

    With ``maps=True`` the whole half-plane is accumulated: ``stats[name]`` is a
    :class:`~spectrascope.ops.fourier.SpectrumStats` from which the relative curve, its radial
    variant and the 2-D spectrum map follow (``curve_from_map(stats.mean_map())``).
    With ``maps=False`` (the fast default for curves) only the half-diagonal is accumulated
    (:class:`~spectrascope.ops.fourier.DiagonalStats`, ``stats[name].curve()``; square maps only):
    each hook call makes the one read of its map (its wrapped anti-diagonal sums, ``(B*C, N)``),
    and the DFTs, moduli, logs and sums of the taps of one forward are finished together, one
    batched computation per map size, when the next forward starts or the statistics are read.
    The accumulators stay on the device of the captured tensors until :meth:`finalise`
    moves them to the CPU."""

    #: how to build the Probe feeding this reducer: the maps are read once, by the reduction, whose
    #: sums (returned by ``__call__``) are finite iff the map is, so the probe's own finiteness
    #: pass over every map is not needed
    probe_kwargs = {"nchw": False, "clone": False, "dtype": None, "finite_from_callback": True}

    def __init__(self, taps: Sequence[TapSpec], *, eps: float = EPS, dtype: torch.dtype = torch.float32,
                 maps: bool = True):
        self.taps = check_spatial(taps, "the amplitude")
        self.eps = eps
        self.dtype = dtype
        self.maps = maps
        self._stats: dict[str, SpectrumStats | DiagonalStats] = {}
        self._pending: list[tuple[str, torch.Tensor, tuple[int, int], int]] = []
        self.calls: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, int, int]] = {}

    @property
    def stats(self) -> dict[str, SpectrumStats | DiagonalStats]:
        """tap name -> its statistics so far (the pending taps finished first)."""
        self._finish()
        return self._stats

    @stats.setter
    def stats(self, value: dict) -> None:
        self._pending = []
        self._stats = value

    def __call__(self, tap: TapSpec, x: torch.Tensor) -> torch.Tensor:
        """Add one captured map's statistics; returns a 0-d tensor that is finite iff ``x`` is
        (NaN/inf reach every sum of the reduction), for ``Probe(finite_from_callback=True)``."""
        try:
            if self.maps:
                st = spectrum_stats(x, tap.layout, tap.num_prefix_tokens, _grid(tap, x), eps=self.eps,
                                    dtype=self.dtype)
            else:
                if any(name == tap.name for name, *_ in self._pending):
                    self._finish()                       # the tap fires again: a new forward began
                S, size, channels = antidiagonal_sums(x, tap.layout, tap.num_prefix_tokens, _grid(tap, x),
                                                      dtype=self.dtype)
        except ValueError as exc:
            raise TapError(f"tap {tap.name} ({tap.layout}, shape {tuple(x.shape)}): {exc}") from None
        self.calls[tap.name] = self.calls.get(tap.name, 0) + 1
        if self.maps:
            self._add(tap.name, st)
            return st.half_sum.sum()
        self._pending.append((tap.name, S, size, channels))
        return S.sum()

    def _finish(self) -> None:
        """The pending taps' half-diagonal statistics, one batched computation per map size."""
        groups: dict[tuple, list] = {}
        for item in self._pending:
            S = item[1]
            groups.setdefault((tuple(S.shape), S.dtype, S.device), []).append(item)
        self._pending = []
        for items in groups.values():
            sums, small = diagonal_from_sums(torch.stack([S for _, S, _, _ in items]), self.eps)
            for j, (name, S, size, channels) in enumerate(items):
                self._add(name, DiagonalStats(sums[j], int(S.shape[0]), small[j], size, channels))

    def _add(self, name: str, st) -> None:
        prev = self._stats.get(name)
        if prev is not None:
            prev += st                                   # accumulated in the accumulator's dtype
            return
        acc = torch.float64 if _sum_of(st).device.type != "mps" else torch.float32     # MPS has no float64
        if isinstance(st, SpectrumStats):
            st.half_sum = st.half_sum.to(acc)
        else:
            st.diag_sum = st.diag_sum.to(acc)
        self._stats[name] = st
        self.shapes[name] = (st.channels, *st.size)

    def missing(self) -> list[str]:
        """Taps whose hooks never fired."""
        return [t.name for t in self.taps if t.name not in self.stats]

    # ------------------------------------------------------------------ sufficient statistics
    def state(self) -> dict:
        """tap name -> {kind, sum (float64, CPU), count, small_dc, size, channels, calls}."""
        out = {}
        for name, st in self.stats.items():
            out[name] = {"kind": "maps" if isinstance(st, SpectrumStats) else "diag",
                         "sum": _sum_of(st).detach().to("cpu", torch.float64, copy=True), "count": int(st.count),
                         "small_dc": int(st.small_dc), "size": tuple(st.size), "channels": int(st.channels),
                         "calls": int(self.calls.get(name, 0))}
        return out

    def load_state(self, state: dict) -> None:
        self.stats = {name: _stats_from(e) for name, e in state.items()}
        self.calls = {name: int(e["calls"]) for name, e in state.items()}
        self.shapes = {name: (int(e["channels"]), *e["size"]) for name, e in state.items()}

    @staticmethod
    def merge(states) -> dict:
        """Tap-wise sums of several states (in the given order); sizes must agree."""
        out: dict = {}
        for st in states:
            for name, e in (st or {}).items():
                if name not in out:
                    out[name] = dict(e, sum=e["sum"].clone())
                    continue
                m = out[name]
                if tuple(m["size"]) != tuple(e["size"]) or m["kind"] != e["kind"]:
                    raise TapError(f"tap {name}: map size {tuple(e['size'])} on one rank, {tuple(m['size'])} on "
                                   "another")
                m["sum"] = m["sum"] + e["sum"]
                for k in ("count", "small_dc", "calls"):
                    m[k] = int(m[k]) + int(e[k])
        return out

    def all_reduce(self, dist) -> None:
        """Replace this rank's sums by the sums over every rank (no-op in one process)."""
        if dist is None or not dist.enabled:
            return
        self.load_state(self.merge(dist.all_gather_object(self.state())))

    def finalise(self) -> dict[str, SpectrumStats]:
        """Move the accumulators to the CPU; returns ``stats`` (tap name -> SpectrumStats)."""
        for st in self.stats.values():
            if isinstance(st, SpectrumStats):
                st.half_sum = st.half_sum.cpu()
            else:
                st.diag_sum = st.diag_sum.cpu()
            st.small_dc = int(st.small_dc)
        return self.stats


#: the spectrum maps come from the same statistics
SpectrumReducer = AmplitudeReducer
