"""Spectra that frequency-robustness analyses read: the Fourier sensitivity of a model (the
spectrum of its input gradients), the mean spectrum of a corruption, and where a heat map's error
mass lies by radius. Pure tensor maths: no hooks, no I/O, no models.

Fourier sensitivity (kiranchari/Fourier-Sensitivity-Regularization, ``regularizers.py``): the
gradient of the loss with respect to the input image is averaged over channels, transformed with
the unitary FFT (``norm="ortho"``) and squared; the power is summed over rings of rounded
radius ``round(sqrt(fy^2 + fx^2))`` (DC excluded), and every image's ring sums are divided by
their total. Differences from the reference, both for any input size: odd sides are not padded
to even (the signed frequencies of ``ops.fourier_basis`` are used directly), and a non-square
image measures ``fy`` and ``fx`` in units of the shorter side (``fy * min(H, W) / H``) so that
a ring is one frequency step of the coarser axis. An image whose gradient is exactly zero (a
saturated softmax) has no profile; ``normalise_profiles`` reports it as invalid instead of
dividing by zero.

Corruption spectrum (Yin et al. 2019, Fig. 4): the mean over images and channels of
``|fft2(corrupted - clean)|`` (unitary), centred on DC.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from spectrascope.ops.bands import centred
from spectrascope.ops.fourier_basis import signed_frequencies

__all__ = [
    "gradient_power", "ring_index", "radial_sum", "normalise_profiles", "fourier_sensitivity",
    "difference_spectrum", "basis_radii", "in_bands", "radial_mass", "concentration", "band_concentration",
]


def gradient_power(grad: torch.Tensor) -> torch.Tensor:
    """(B, H, W) unitary-FFT power ``|fft2(mean_c grad)|^2`` (FFT layout) of input gradients
    (B, C, H, W), computed in float64 for float64 input and float32 otherwise."""
    if grad.ndim != 4:
        raise ValueError(f"expected gradients (B, C, H, W), got {tuple(grad.shape)}")
    g = grad.double() if grad.dtype == torch.float64 else grad.float()
    return torch.fft.fft2(g.mean(dim=1), norm="ortho").abs() ** 2


def ring_index(H: int, W: int, device=None) -> torch.Tensor:
    """(H, W) int64 ring of every frequency (FFT layout): ``round(sqrt(fy'^2 + fx'^2))`` with
    ``f' = f * min(H, W) / side`` (the plain index distance for square images)."""
    s = min(H, W)
    fy = signed_frequencies(H, device).double()[:, None] * s / H
    fx = signed_frequencies(W, device).double()[None, :] * s / W
    return torch.round(torch.sqrt(fy ** 2 + fx ** 2)).long()


def radial_sum(power: torch.Tensor, *, exclude_dc: bool = True) -> torch.Tensor:
    """Sums of (B, H, W) power over the rings of ``ring_index``: (B, R) for rings ``1 .. R`` (or
    ``0 .. R`` with ``exclude_dc=False``: ring 0 is DC alone)."""
    H, W = power.shape[-2:]
    ring = ring_index(H, W, power.device).flatten()
    n = int(ring.max()) + 1
    flat = power.reshape(-1, H * W)
    out = torch.zeros(flat.shape[0], n, dtype=flat.dtype, device=flat.device)
    out.index_add_(1, ring, flat)
    out = out.reshape(*power.shape[:-2], n)
    return out[..., 1:] if exclude_dc else out


def normalise_profiles(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of (B, R) ring sums divided by its total; returns (profiles, valid) where rows with
    a zero or non-finite total are zeros and ``valid`` is False."""
    total = sums.sum(dim=-1, keepdim=True)
    valid = torch.isfinite(total) & (total > 0)
    prof = torch.where(valid, sums / torch.where(valid, total, torch.ones_like(total)), torch.zeros_like(sums))
    return prof, valid.squeeze(-1)


def fourier_sensitivity(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image normalised radial profiles of the input-gradient power (see the module doc).

    Args:
        grad: (B, C, H, W) gradients of the loss with respect to the input images.

    Returns:
        (profiles (B, R) summing to 1 over rings 1 .. R, valid (B,) bool); the model's curve is
        the mean of the valid profiles.
    """
    return normalise_profiles(radial_sum(gradient_power(grad)))


def difference_spectrum(corrupted: torch.Tensor, clean: torch.Tensor, *, reduce: str = "mean") -> torch.Tensor:
    """(H, W) ``|fft2(corrupted - clean)|`` (unitary, float64) averaged (``reduce="mean"``) or
    summed (``"sum"``, for streaming: divide by images x channels at the end) over every leading
    axis, centred on DC. Inputs (..., H, W) on one scale (e.g. [0, 1])."""
    if corrupted.shape != clean.shape:
        raise ValueError(f"corrupted {tuple(corrupted.shape)} and clean {tuple(clean.shape)} differ in shape")
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be mean or sum, not {reduce!r}")
    d = corrupted.double() - clean.double()
    amp = torch.fft.fft2(d, norm="ortho").abs().reshape(-1, *d.shape[-2:])
    return centred(amp.mean(0) if reduce == "mean" else amp.sum(0))


def _excess(values: torch.Tensor, baseline: float | None) -> torch.Tensor:
    v = values.double()
    base = float(v.min()) if baseline is None else float(baseline)
    return (v - base).clamp_min(0.0)


def basis_radii(freqs, H: int, W: int) -> torch.Tensor:
    """(K,) radial frequency ``sqrt((fy / H)^2 + (fx / W)^2)`` in cycles per pixel of (K, 2) signed
    frequencies."""
    f = torch.as_tensor(freqs).long().reshape(-1, 2).double()
    return torch.sqrt((f[:, 0] / H) ** 2 + (f[:, 1] / W) ** 2)


def in_bands(radii, bands: Sequence[Sequence[float]]) -> torch.Tensor:
    """Boolean mask of the radii inside any of the half-open ``(low, high)`` bands."""
    r = torch.as_tensor(radii).double()
    pairs = [tuple(bands)] if len(bands) == 2 and not isinstance(bands[0], (list, tuple)) else list(bands)
    out = torch.zeros_like(r, dtype=torch.bool)
    for lo, hi in pairs:
        out |= (r >= float(lo)) & (r < float(hi))
    return out


def radial_mass(values, freqs, H: int, W: int, edges: Sequence[float], *,
                baseline: float | None = None) -> dict:
    """Where a heat map's error mass lies by radius.

    Args:
        values: (K,) per-basis values (error rates) of the bases ``freqs``.
        freqs: (K, 2) signed ``(fy, fx)`` of those bases (``ops.fourier_basis.half_plane``), one
            per distinct basis image.
        H, W: the image size.
        edges: increasing radii in cycles per pixel (``basis_radii``); bin ``b`` is
            ``[edges[b], edges[b + 1])``.
        baseline: the level that counts as no effect (e.g. the clean error); the mass is
            ``max(value - baseline, 0)``. Default: the map's minimum.

    Returns:
        ``{"mass": (B,) share of the excess mass per bin, "area": (B,) share of the bases per bin,
        "mean": (B,) mean value per bin (NaN for an empty bin), "edges": list}``; shares are over
        all bases, so they sum to less than 1 when the edges leave some out.
    """
    v = torch.as_tensor(values).double().flatten()
    r = basis_radii(freqs, H, W)
    if len(v) != len(r):
        raise ValueError(f"{len(v)} values for {len(r)} frequencies")
    ex = _excess(v, baseline)
    total = float(ex.sum())
    e = [float(x) for x in edges]
    mass, area, mean = [], [], []
    for lo, hi in zip(e, e[1:]):
        sel = (r >= lo) & (r < hi)
        mass.append(float(ex[sel].sum()) / total if total > 0 else math.nan)
        area.append(float(sel.double().mean()))
        mean.append(float(v[sel].mean()) if bool(sel.any()) else math.nan)
    f64 = torch.float64
    return {"mass": torch.tensor(mass, dtype=f64), "area": torch.tensor(area, dtype=f64),
            "mean": torch.tensor(mean, dtype=f64), "edges": e}


def concentration(values, radii, bands: Sequence[Sequence[float]], *, baseline: float | None = None) -> float:
    """How much more of the excess ``max(value - baseline, 0)`` lies at the radii inside ``bands``
    than their share of the points: (mass share) / (point share). 1 means no preference, larger
    means the values concentrate in the bands; NaN when there is no excess or no point inside.

    Args:
        values: (K,) values (a heat map's per-basis errors, or a curve's errors per noise ring).
        radii: (K,) their radial frequencies (``basis_radii``, or ring centres), cycles per pixel.
        bands: one ``(low, high)`` pair or several (their union), cycles per pixel.
        baseline: the no-effect level (default: the minimum value).
    """
    v = torch.as_tensor(values).double().flatten()
    inside = in_bands(radii, bands)
    if len(v) != len(inside):
        raise ValueError(f"{len(v)} values for {len(inside)} radii")
    ex = _excess(v, baseline)
    total, share = float(ex.sum()), float(inside.double().mean())
    if total <= 0 or share <= 0:
        return math.nan
    return float(ex[inside].sum()) / total / share


def band_concentration(values, freqs, H: int, W: int, bands: Sequence[Sequence[float]], *,
                       baseline: float | None = None) -> float:
    """``concentration`` of a heat map: per-basis ``values`` of the bases ``freqs`` (one per
    distinct basis image), radii from ``basis_radii``; ``bands`` in cycles per pixel."""
    return concentration(values, basis_radii(freqs, H, W), bands, baseline=baseline)
