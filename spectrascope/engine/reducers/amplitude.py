"""The amplitude / spectrum reducer: batch and channel sums of ``log(|F| + eps)`` per tap."""
from __future__ import annotations

from typing import Sequence

import torch

from spectrascope.probe.spec import TapSpec
from spectrascope.ops.fourier import EPS, DiagonalStats, SpectrumStats, diagonal_stats, spectrum_stats
from spectrascope.engine.reducers import Reducer
from spectrascope.probe import SPATIAL_LAYOUTS, TapError
from spectrascope.probe.grammar import check_spatial

__all__ = ["AmplitudeReducer", "SpectrumReducer", "SPATIAL_LAYOUTS"]


def _grid(tap: TapSpec, x: torch.Tensor):
    if tap.layout != "NLC" or tap.grid is None:
        return None
    L = x.shape[1] - (tap.num_prefix_tokens or 0)
    return tap.grid if tap.grid[0] * tap.grid[1] == L else None


class AmplitudeReducer(Reducer):
    """Batch/channel sums of ``log(|F| + eps)`` per tap (float64 accumulators).

    With ``maps=True`` the whole half-plane is accumulated: ``stats[name]`` is a
    :class:`~spectrascope.ops.fourier.SpectrumStats` from which the relative curve, its radial
    variant and the 2-D spectrum map follow (``spectral.curve_from_map(stats.mean_map())``).
    With ``maps=False`` (the fast default for curves) only the half-diagonal is accumulated
    (:class:`~spectrascope.ops.fourier.DiagonalStats`, ``stats[name].curve()``; square maps only).
    The accumulators stay on the device of the captured tensors until :meth:`finalise`
    moves them to the CPU."""

    #: how to build the Probe feeding this reducer
    probe_kwargs = {"nchw": False, "clone": False, "dtype": None}

    def __init__(self, taps: Sequence[TapSpec], *, eps: float = EPS, dtype: torch.dtype = torch.float32,
                 maps: bool = True):
        self.taps = check_spatial(taps, "the amplitude")
        self.eps = eps
        self.dtype = dtype
        self.maps = maps
        self.stats: dict[str, SpectrumStats | DiagonalStats] = {}
        self.calls: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, int, int]] = {}

    def __call__(self, tap: TapSpec, x: torch.Tensor) -> None:
        fn = spectrum_stats if self.maps else diagonal_stats
        try:
            st = fn(x, tap.layout, tap.num_prefix_tokens, _grid(tap, x), eps=self.eps, dtype=self.dtype)
        except ValueError as exc:
            raise TapError(f"tap {tap.name} ({tap.layout}, shape {tuple(x.shape)}): {exc}") from None
        acc = torch.float64 if x.device.type != "mps" else torch.float32     # MPS has no float64
        if self.maps:
            st.half_sum = st.half_sum.to(acc)
        else:
            st.diag_sum = st.diag_sum.to(acc)
        if tap.name in self.stats:
            self.stats[tap.name] += st
        else:
            self.stats[tap.name] = st
            self.shapes[tap.name] = (st.channels, *st.size)
        self.calls[tap.name] = self.calls.get(tap.name, 0) + 1

    def missing(self) -> list[str]:
        """Taps whose hooks never fired."""
        return [t.name for t in self.taps if t.name not in self.stats]

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
