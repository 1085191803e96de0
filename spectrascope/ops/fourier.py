"""Fourier statistics of feature maps: pure tensor maths (no hooks, no I/O).

The relative log amplitude follows Park & Kim (2022, "How do vision transformers
work?", Fig. 2a/8) exactly: for a batch of feature maps ``x`` (B, C, H, W)

1. ``F = fft2(x)`` over the spatial dims (unnormalised, no window, no padding);
2. ``A = log(|F| + eps)`` with ``eps = 1e-6`` (natural log);
3. centre the spectrum (roll by ``(H // 2, W // 2)``, identical to ``fftshift``);
4. average ``A`` over batch **and** channels (a mean of logs, not the log of a mean);
5. keep the main diagonal from the DC term towards the corner (``diag[H // 2:]``);
6. subtract the DC value, so element 0 is exactly 0.

Index ``k`` of the curve is the 2-D frequency ``(2 pi k / H, 2 pi k / W)``; the reference
plots it on ``linspace(0, 1, K)`` pi ("index" axis); ``frequency_axis(..., "true")``
gives ``2k / H`` in units of pi.

Implementation notes (same numbers as the reference up to rounding): the curve needs only
``F(k, k)`` for ``k < ceil(H / 2)``, which ``diagonal_stats`` gets from the sums of each map
over its wrapped anti-diagonals and one length-N DFT of them (no 2-D FFT, no copy of the
maps); the 2-D maps
(``spectrum_stats``) sum over the half-plane ``rfft2`` and are rebuilt by Hermitian symmetry.
Everything is computed in float32, or float64 for float64 input, whatever the model dtype
(half precision is upcast first). Layouts (NCHW, NHWC, NLC tokens) are read by the one
conversion of ``probe.layouts``.

Deviations, both documented and opt-in:

* ``method="radial"``: for non-square maps (where the diagonal is not defined) the curve
  averages the mean log amplitude over rings of the "diagonal-equivalent" frequency
  ``rho = sqrt((u_y^2 + u_x^2) / 2)`` (``u`` per-axis frequency in units of pi, so the
  diagonal point ``(k, k)`` of a square map has ``rho = 2k / H``). Bin ``k >= 1`` holds
  the pixels whose ``rho`` is nearest to ``k * 2 / min(H, W)``; bin 0 is the DC pixel
  alone; pixels beyond the last bin are ignored.
* A warning (:class:`ZeroMeanWarning`) when most maps have (almost) zero mean: then
  ``|F(0, 0)|`` is rounding noise, ``log(eps)`` becomes the reference and the whole curve
  jumps by about +14 to +16.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch

from spectrascope.probe.layouts import channels_last, to_nchw

__all__ = [
    "EPS", "LAYOUTS", "ZeroMeanWarning", "SpectrumStats", "DiagonalStats", "as_nchw", "spectrum_stats",
    "diagonal_stats", "antidiagonal_sums", "diagonal_from_sums", "log_amplitude_map",
    "spectrum_map", "relative_log_amplitude", "radial_log_amplitude", "curve_from_map", "frequency_axis",
    "high_frequency_delta", "normalised_depth", "zero_mean_fraction",
]

#: the reference's epsilon, added to the modulus before the log
EPS = 1e-6
#: spatial layouts the spectral functions accept
LAYOUTS = ("NCHW", "NHWC", "NLC")
#: a map whose DC modulus is below ``DC_FACTOR * eps`` counts as zero-mean
DC_FACTOR = 1e3
#: warn when more than this fraction of the maps is zero-mean
ZERO_MEAN_WARN_FRACTION = 0.5
METHODS = ("diagonal", "radial")


class ZeroMeanWarning(UserWarning):
    """Most maps have (almost) zero mean: the DC reference of the relative curve collapses."""


# ---------------------------------------------------------------------------- layouts

def _channels_last(x: torch.Tensor, layout: str, num_prefix_tokens: int = 0, grid=None) -> torch.Tensor:
    """(B, H, W, C) view of a spatial tensor (the one conversion, ``probe.layouts.channels_last``)."""
    return channels_last(x, layout, num_prefix_tokens, grid)


def as_nchw(x: torch.Tensor, layout: str = "NCHW", num_prefix_tokens: int = 0, grid=None) -> torch.Tensor:
    """A (B, C, H, W) view of ``x``: NCHW as is, NHWC permuted, NLC tokens (row-major over
    the grid, ``num_prefix_tokens`` class/register tokens first) reshaped. The grid of
    NLC tokens is ``grid`` or, when not given, the square ``isqrt(L)``; anything else raises
    (``probe.layouts.to_nchw``)."""
    return to_nchw(x, layout, num_prefix_tokens, grid)


def _no_autocast(device_type: str):
    """Autocast switched off for the statistics (a no-op context when it is off already: the
    reducers call this once per tap and forward)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _compute_dtype(x: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"compute dtype must be float32 or float64, not {dtype}")
        return dtype
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------- core reduction

@dataclass
class SpectrumStats:
    """Sums over the maps of one batch (or a stream of batches).

    ``half_sum`` (H, W//2 + 1) is the sum over maps of ``log(|rfft2(x)| + eps)``;
    ``count`` the number of maps (batch x channels); ``small_dc`` how many non-zero maps have
    ``|F(0, 0)| < 1e3 * eps`` (zero-mean maps); ``channels`` the channel count."""

    half_sum: torch.Tensor
    count: int
    small_dc: torch.Tensor | int
    size: tuple[int, int]
    channels: int

    def __iadd__(self, other: "SpectrumStats") -> "SpectrumStats":
        if other.size != self.size:
            raise ValueError(f"map size changed from {self.size} to {other.size} between batches")
        self.half_sum = torch.add(self.half_sum, other.half_sum)    # promoted to the accumulator's dtype
        self.count += other.count
        self.small_dc = self.small_dc + other.small_dc
        return self

    def mean_map(self, shift: bool = True) -> torch.Tensor:
        """Mean log amplitude over all maps, (H, W), centred (DC at ``(H//2, W//2)``) when ``shift``."""
        H, W = self.size
        half = self.half_sum / self.count
        full = _hermitian_full(half, H, W)
        if shift:
            full = torch.roll(full, shifts=(H // 2, W // 2), dims=(0, 1))
        return full

    @property
    def zero_mean_fraction(self) -> float:
        return float(self.small_dc) / self.count if self.count else 0.0


def _hermitian_full(half: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Rebuild an (H, W) map from its rfft2 half-plane using ``|F(-u)| = |F(u)|``."""
    Wh = half.shape[-1]
    if W <= Wh:
        return half[..., :W]
    j = torch.arange(Wh, W, device=half.device)
    i = torch.arange(H, device=half.device)
    mirror = half[(-i) % H][:, (W - j)]
    return torch.cat([half, mirror], dim=-1)


def spectrum_stats(x: torch.Tensor, layout: str = "NCHW", num_prefix_tokens: int = 0, grid=None, *,
                   eps: float = EPS, dtype: torch.dtype | None = None) -> SpectrumStats:
    """The streaming building block: sums of ``log(|F| + eps)`` over batch and channels.

    Accumulate :class:`SpectrumStats` with ``+=`` over batches; the mean map is the same
    as for one batch holding every image (the reference averages one big batch)."""
    cd = _compute_dtype(x, dtype)
    xl = _channels_last(x.detach(), layout, num_prefix_tokens, grid)
    B, H, W, C = xl.shape
    if H < 1 or W < 1 or B < 1 or C < 1:
        raise ValueError(f"empty feature map of shape {tuple(xl.shape)} (B, H, W, C)")
    xl = xl.to(cd)
    with _no_autocast(xl.device.type):
        F = torch.fft.rfft2(xl, dim=(1, 2))
        mod = F.abs()
        small_dc = _zero_mean_count(mod[:, 0, 0, :], mod.amax(dim=(1, 2)), eps)
        logamp = torch.log(mod.add_(eps))
        half_sum = logamp.sum(dim=(0, 3))
    return SpectrumStats(half_sum, B * C, small_dc, (H, W), C)


def _zero_mean_count(dc: torch.Tensor, peak: torch.Tensor, eps: float, dim=None) -> torch.Tensor:
    """Maps whose DC modulus is rounding noise while the map itself is not (all-zero "dead"
    channels are not counted: they add log(eps) everywhere and do not shift the curve); counted
    over ``dim`` (None: all)."""
    thr = DC_FACTOR * eps
    small = (dc < thr) & (peak >= thr)
    return small.sum() if dim is None else small.sum(dim=dim)


@dataclass
class DiagonalStats:
    """Sums over the maps of ``log(|F(k, k)| + eps)`` for ``k = 0 .. ceil(H / 2) - 1`` only:
    the half-diagonal of the centred spectrum, i.e. exactly what the relative curve needs."""

    diag_sum: torch.Tensor
    count: int
    small_dc: torch.Tensor | int
    size: tuple[int, int]
    channels: int

    def __iadd__(self, other: "DiagonalStats") -> "DiagonalStats":
        if other.size != self.size:
            raise ValueError(f"map size changed from {self.size} to {other.size} between batches")
        if torch.promote_types(self.diag_sum.dtype, other.diag_sum.dtype) == self.diag_sum.dtype and (
                torch.is_inference_mode_enabled() or not self.diag_sum.is_inference()):
            self.diag_sum.add_(other.diag_sum)                     # promoted to the accumulator's dtype
        else:
            self.diag_sum = self.diag_sum + other.diag_sum.to(self.diag_sum)
        self.count += other.count
        self.small_dc = self.small_dc + other.small_dc
        return self

    def curve(self) -> torch.Tensor:
        d = self.diag_sum / self.count
        return d - d[0]

    @property
    def zero_mean_fraction(self) -> float:
        return float(self.small_dc) / self.count if self.count else 0.0


_BASIS: dict = {}
_ANTIDIAG: dict = {}


def _diagonal_basis(N: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(2K, N) real DFT rows of length N: ``cos`` then ``-sin`` of ``2 pi k s / N`` for
    ``k < K = ceil(N / 2)`` (exact integer phases, built in float64, cached)."""
    key = (N, dtype, str(device))
    if key not in _BASIS:
        K = N - N // 2
        phase = (torch.arange(K, dtype=torch.int64)[:, None] * torch.arange(N, dtype=torch.int64)[None, :]) % N
        ang = (2.0 * math.pi / N) * phase.to(torch.float64)
        _BASIS[key] = torch.cat([torch.cos(ang), -torch.sin(ang)]).to(dtype=dtype, device=device)
    return _BASIS[key]


def _antidiagonal_index(N: int, device) -> torch.Tensor:
    """``(h + w) mod N`` of every pixel, row-major (cached)."""
    key = (N, str(device))
    if key not in _ANTIDIAG:
        idx = torch.arange(N, dtype=torch.int64)
        _ANTIDIAG[key] = ((idx[:, None] + idx[None, :]) % N).reshape(-1).to(device)
    return _ANTIDIAG[key]


def _antidiagonal_sums(xl: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B*C, N) sums of every map over its wrapped anti-diagonals ``(h + w) mod N = s``, from the
    (B, N, N, C) view ``xl`` (channels-first or channels-last storage, no copy of the maps)."""
    B, N, _, C = xl.shape
    idx = _antidiagonal_index(N, xl.device)
    nchw = xl.permute(0, 3, 1, 2)
    if nchw.is_contiguous():                                   # channels-first storage: (B*C, N^2) rows
        src = nchw.reshape(B * C, N * N).to(dtype)
        return torch.zeros(B * C, N, dtype=dtype, device=xl.device).index_add_(1, idx, src)
    src = xl.reshape(B, N * N, C).to(dtype)                    # channels-last storage: C-vectors per pixel
    S = torch.zeros(B, N, C, dtype=dtype, device=xl.device).index_add_(1, idx, src)
    return S.transpose(1, 2).reshape(B * C, N)


def antidiagonal_sums(x: torch.Tensor, layout: str = "NCHW", num_prefix_tokens: int = 0, grid=None, *,
                      dtype: torch.dtype | None = None) -> tuple[torch.Tensor, tuple[int, int], int]:
    """The one read of square maps that the diagonal curve needs: their wrapped anti-diagonal sums.

    Args:
        x: a batch of square maps in ``layout`` (``NCHW``, ``NHWC`` or ``NLC`` tokens).
        layout: the layout of ``x``.
        num_prefix_tokens: leading class/register tokens of ``NLC`` input.
        grid: the (H, W) of ``NLC`` input.
        dtype: compute dtype (default: float32, float64 for float64 input).

    Returns:
        (S, (H, W), C): ``S`` (B*C, N) the sums of every map over its N wrapped anti-diagonals
        ``(h + w) mod N = s``; ``diagonal_from_sums`` finishes the statistics.

    Raises:
        ValueError: for non-square or empty maps."""
    cd = _compute_dtype(x, dtype)
    xl = _channels_last(x.detach(), layout, num_prefix_tokens, grid)
    B, H, W, C = xl.shape
    if H != W:
        raise ValueError(f"the diagonal curve needs square maps, got {H}x{W}; use method='radial' "
                         "(ring average, a documented deviation from the reference)")
    if B < 1 or C < 1 or H < 1:
        raise ValueError(f"empty feature map of shape {tuple(xl.shape)} (B, H, W, C)")
    with _no_autocast(xl.device.type):
        return _antidiagonal_sums(xl, cd), (H, W), C


def diagonal_from_sums(S: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """The half-diagonal statistics of maps from their anti-diagonal sums, for several taps at once.

    Args:
        S: (..., M, N) anti-diagonal sums of M maps of size N x N (``antidiagonal_sums``), with
            any leading axes (e.g. the taps of one stage, stacked).
        eps: the epsilon added to the modulus before the log.

    Returns:
        (sums (..., K) over the M maps of ``log(|F(k, k)| + eps)`` for ``k < K = ceil(N / 2)``,
        zero-mean map counts (...)): one length-N DFT of the sums per map."""
    N = S.shape[-1]
    K = N - N // 2
    with _no_autocast(S.device.type):
        R = S @ _diagonal_basis(N, S.dtype, S.device).T            # (..., M, 2K): re then im
        re, im = R[..., :K], R[..., K:]
        mod = torch.sqrt(re * re + im * im)                        # |F(k, k)|, (..., M, K)
        small_dc = _zero_mean_count(mod[..., 0], mod.amax(dim=-1), eps, dim=-1)
        return torch.log(mod.add_(eps)).sum(dim=-2), small_dc


def diagonal_stats(x: torch.Tensor, layout: str = "NCHW", num_prefix_tokens: int = 0, grid=None, *,
                   eps: float = EPS, dtype: torch.dtype | None = None) -> DiagonalStats:
    """Fast path for the diagonal curve of square maps (no 2-D FFT).

    Only ``F(k, k)`` for ``k < ceil(N / 2)`` is needed, and ``F(k, k) = sum_{h,w} x[h, w]
    exp(-2 pi i k (h + w) / N)`` depends on a pixel only through ``s = (h + w) mod N``: the maps
    are first summed over their N wrapped anti-diagonals (one pass over the maps, no copy), then
    a length-N DFT of those sums gives the half-diagonal (same values as ``fft2`` up to rounding)."""
    S, size, C = antidiagonal_sums(x, layout, num_prefix_tokens, grid, dtype=dtype)
    diag_sum, small_dc = diagonal_from_sums(S, eps)
    return DiagonalStats(diag_sum, S.shape[0], small_dc, size, C)


def _warn_zero_mean(frac: float, what: str = "the feature maps", stacklevel: int = 3) -> None:
    if frac > ZERO_MEAN_WARN_FRACTION:
        warnings.warn(f"{frac:.0%} of {what} have (almost) zero mean (|F(0,0)| < {DC_FACTOR:g}*eps): the DC "
                      "reference of the relative log amplitude collapses to log(eps) and the curve is shifted "
                      "by about +14..16; compare shapes only", ZeroMeanWarning, stacklevel=stacklevel)


def log_amplitude_map(x: torch.Tensor, layout: str = "NCHW", num_prefix_tokens: int = 0, grid=None, *,
                      eps: float = EPS, dtype: torch.dtype | None = None, shift: bool = True) -> torch.Tensor:
    """Mean over batch and channels of ``log(|fft2(x)| + eps)``, (H, W), centred when ``shift``."""
    return spectrum_stats(x, layout, num_prefix_tokens, grid, eps=eps, dtype=dtype).mean_map(shift)


def spectrum_map(x: torch.Tensor, layout: str = "NCHW", relative: bool = True, num_prefix_tokens: int = 0,
                 grid=None, *, eps: float = EPS, dtype: torch.dtype | None = None, warn: bool = True) -> torch.Tensor:
    """2-D spectrum map (H, W) of a batch of feature maps: batch/channel mean of
    ``log(|F| + eps)``, centred (DC at pixel ``(H // 2, W // 2)``); with ``relative`` the DC
    value is subtracted, so ``spectrum_map(x).diag()[H // 2:]`` is the relative curve."""
    st = spectrum_stats(x, layout, num_prefix_tokens, grid, eps=eps, dtype=dtype)
    if warn and relative:
        _warn_zero_mean(st.zero_mean_fraction)
    m = st.mean_map(shift=True)
    if relative:
        H, W = st.size
        m = m - m[H // 2, W // 2]
    return m


# ---------------------------------------------------------------------------- curves

def curve_from_map(centred_map: torch.Tensor, method: str = "diagonal") -> torch.Tensor:
    """Relative curve from a centred mean log-amplitude map (see module doc)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    H, W = centred_map.shape[-2:]
    if method == "diagonal":
        if H != W:
            raise ValueError(f"the diagonal curve needs square maps, got {H}x{W}; use method='radial' "
                             "(ring average, a documented deviation from the reference)")
        d = torch.diagonal(centred_map)[H // 2:]
        return d - d[0]
    return _radial(centred_map)


def _radial(m: torch.Tensor) -> torch.Tensor:
    H, W = m.shape
    cy, cx = H // 2, W // 2
    dev = m.device
    uy = 2.0 * (torch.arange(H, device=dev, dtype=torch.float64) - cy) / H
    ux = 2.0 * (torch.arange(W, device=dev, dtype=torch.float64) - cx) / W
    rho = torch.sqrt((uy[:, None] ** 2 + ux[None, :] ** 2) / 2.0)
    n = min(H, W)
    K = n - n // 2
    step = 2.0 / n
    k = torch.floor(rho / step + 0.5).long()
    k[cy, cx] = 0
    keep = (k >= 1) & (k < K)
    sums = torch.zeros(K, dtype=m.dtype, device=dev).index_add_(0, k[keep], m[keep])
    counts = torch.zeros(K, dtype=m.dtype, device=dev).index_add_(0, k[keep], torch.ones_like(m[keep]))
    dc = m[cy, cx]
    vals = sums / counts.clamp_min(1)
    vals[0] = dc
    return vals - dc


def relative_log_amplitude(x, layout: str = "NCHW", num_prefix_tokens: int = 0, grid=None, *,
                           eps: float = EPS, method: str = "diagonal", dtype: torch.dtype | None = None,
                           warn: bool = True):
    """Relative log amplitude of Fourier-transformed feature maps (Park & Kim 2022).

    ``x``: one batch of maps in ``layout`` ("NCHW", "NHWC" or "NLC" tokens with
    ``num_prefix_tokens`` leading class/register tokens and an optional ``grid=(H, W)``),
    or a list of such tensors (one curve each, e.g. the latents of a model in depth order).
    Returns a 1-D tensor of length ``ceil(H / 2)`` whose element 0 is exactly 0: the batch
    and channel mean of ``log(|F| + eps)`` along the half-diagonal minus its DC value.
    Computed in float32 (float64 for float64 input, or ``dtype``). ``method="radial"``
    is the ring-average variant for non-square maps (see the module doc)."""
    if isinstance(x, (list, tuple)):
        return [relative_log_amplitude(t, layout, num_prefix_tokens, grid, eps=eps, method=method, dtype=dtype,
                                       warn=warn) for t in x]
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if method == "diagonal":
        st = diagonal_stats(x, layout, num_prefix_tokens, grid, eps=eps, dtype=dtype)
        if warn:
            _warn_zero_mean(st.zero_mean_fraction)
        return st.curve()
    st = spectrum_stats(x, layout, num_prefix_tokens, grid, eps=eps, dtype=dtype)
    if warn:
        _warn_zero_mean(st.zero_mean_fraction)
    return curve_from_map(st.mean_map(shift=True), method)


def radial_log_amplitude(x, layout: str = "NCHW", num_prefix_tokens: int = 0, grid=None, **kw):
    """``relative_log_amplitude(..., method="radial")``: ring average, works for H != W."""
    return relative_log_amplitude(x, layout, num_prefix_tokens, grid, method="radial", **kw)


def zero_mean_fraction(x: torch.Tensor, layout: str = "NCHW", num_prefix_tokens: int = 0, grid=None, *,
                       eps: float = EPS) -> float:
    """Fraction of (non-zero) maps with ``|F(0, 0)| < 1e3 * eps`` (the zero-mean pitfall)."""
    return spectrum_stats(x, layout, num_prefix_tokens, grid, eps=eps).zero_mean_fraction


def frequency_axis(K: int, size: int | None = None, kind: str = "index") -> torch.Tensor:
    """x values of a curve in units of pi: ``"index"`` = ``linspace(0, 1, K)`` (the reference's
    stretched axis), ``"true"`` = ``2k / size`` (the actual per-axis frequency of point k)."""
    if kind == "index":
        return torch.linspace(0.0, 1.0, K, dtype=torch.float64) if K > 1 else torch.zeros(1, dtype=torch.float64)
    if kind == "true":
        if not size:
            raise ValueError("the 'true' frequency axis needs the map size")
        return 2.0 * torch.arange(K, dtype=torch.float64) / size
    raise ValueError(f"frequency axis must be 'index' or 'true', not {kind!r}")


def normalised_depth(n: int) -> torch.Tensor:
    """``i / (n - 1)`` for ``n`` latents in depth order (0 for a single latent)."""
    if n <= 1:
        return torch.zeros(max(n, 0), dtype=torch.float64)
    return torch.arange(n, dtype=torch.float64) / (n - 1)


def high_frequency_delta(curves: Sequence[torch.Tensor]) -> torch.Tensor:
    """Park & Kim Fig. 8: the value at the highest frequency ``delta[K - 1]`` of every curve."""
    return torch.tensor([float(c[-1]) for c in curves], dtype=torch.float64)
