"""Streaming reducers fed by ``Probe`` callbacks, and how their statistics cross ranks.

``Reducer`` is the protocol: ``reducer(tap, x)`` folds a capture into running sums;
``state()`` returns those sums (sufficient statistics) as a dict of tensors and
``load_state()`` takes merged ones back. ``all_reduce(dist)`` merges the states of every
rank by summation (``merge_states``; ranks that saw no batch contribute nothing), so each
rank ends with the statistics of the whole data set, as one process would have them.

A reducer is a callable ``reducer(tap, tensor)`` that folds every captured tensor into
running statistics and drops it, so memory stays flat in the number of images. Use it as
``Probe(model, taps, callback=reducer, **reducer.probe_kwargs)``: the reducer handles the
tap layouts itself (no NCHW copy) and consumes each tensor before the model continues,
so no clone is needed.
"""
from __future__ import annotations

from typing import Sequence

import torch

from spectrascope.models.base import TapList, TapSpec
from spectrascope.ops.fourier import EPS, LAYOUTS, DiagonalStats, SpectrumStats, diagonal_stats, spectrum_stats
from spectrascope.probe import TapError

__all__ = ["Reducer", "merge_states", "AmplitudeReducer", "SpectrumReducer", "check_spatial_taps", "SPATIAL_LAYOUTS"]


def merge_states(states) -> dict:
    """Key-wise sum of state dicts (tensors or numbers), in rank order (deterministic)."""
    out: dict = {}
    for st in states:
        for k, v in (st or {}).items():
            out[k] = v if k not in out else out[k] + v
    return out


class Reducer:
    """Protocol of a streaming statistic (see the module doc)."""

    #: how to build the Probe feeding this reducer: it handles raw layouts and consumes inside the hook
    probe_kwargs = {"nchw": False, "clone": False, "dtype": None}

    def __call__(self, tap, x) -> None:  # pragma: no cover - protocol
        raise NotImplementedError

    def state(self) -> dict:  # pragma: no cover - protocol
        """The sums this reducer holds (tensors on any device, or numbers)."""
        raise NotImplementedError

    def load_state(self, state: dict) -> None:  # pragma: no cover - protocol
        raise NotImplementedError

    def all_reduce(self, dist) -> None:
        """Replace this rank's sums by the sums over every rank."""
        if dist is None or not dist.enabled:
            return
        local = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in self.state().items()}
        self.load_state(merge_states(dist.all_gather_object(local)))

SPATIAL_LAYOUTS = LAYOUTS


def check_spatial_taps(taps: Sequence[TapSpec], what: str = "the amplitude") -> TapList:
    """Raise a clear TapError when a tap does not carry a spatial feature map."""
    taps = TapList(taps)
    if not taps:
        raise TapError("no taps selected")
    for t in taps:
        if t.layout not in SPATIAL_LAYOUTS:
            note = f" ({t.note})" if t.note else ""
            raise TapError(f"tap {t.name} has layout {t.layout}{note}: {what} needs spatial feature maps "
                           f"({', '.join(SPATIAL_LAYOUTS)}); choose roles such as stem, downsample, mixer, residual, "
                           "mlp or block")
    return taps


def _grid(tap: TapSpec, x: torch.Tensor):
    if tap.layout != "NLC" or tap.grid is None:
        return None
    L = x.shape[1] - (tap.num_prefix_tokens or 0)
    return tap.grid if tap.grid[0] * tap.grid[1] == L else None


class AmplitudeReducer:
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
        self.taps = check_spatial_taps(taps)
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
