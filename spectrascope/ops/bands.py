"""Frequency bands of images: radial distances, band masks and their partition of the spectrum,
band-limited noise (Park & Kim 2022, Fig. 2) and low-/high-pass filtered images (Wang et al.
2020, HFC). Pure tensor maths: no hooks, no I/O, no models.

Every mask is an (H, W) tensor in FFT layout (DC at ``[0, 0]``, as ``fft2`` returns it); the
signed integer frequencies ``(fy, fx)`` are ``ops.fourier_basis.signed_frequencies``
(``centred`` moves DC to ``[H // 2, W // 2]`` for drawing). A mask that depends only on
``|fy|`` and ``|fx|`` is Hermitian, so filtering a real image with it gives a real image (the
imaginary part of the inverse FFT is rounding, and is dropped).

Distances (``radius_grid``), in ``units="cycles"`` (cycles per pixel, ``fy / H``, 0 .. 0.5 on
an axis) or ``units="index"`` (``fy`` itself, as HFC's pixel distance on the centred spectrum):

* ``kind="square"``: ``max(|fy|, |fx|)`` -- the square rings of Park & Kim's public
  ``FreqAttack`` (``ops/adversarial.py`` of how-do-vits-work). Theirs keeps the FFT of the noise
  inside the square ``[-a_out, a_out - 1]^2`` minus ``[-a_in, a_in - 1]^2`` (one-sided: it holds
  ``-a`` but not ``+a``, hence their real part of the inverse FFT); ours is the symmetric ring
  ``a_in <= max(|fy|, |fx|) < a_out``, which differs from theirs only on the square edges and
  gives real noise as it is. Their frequency ``f`` in [0, pi] (radians per pixel) with
  half-width ``s`` is the band ``[(f - s) / 2 pi, (f + s) / 2 pi)`` in cycles.
* ``kind="circle"``: ``sqrt(fy^2 + fx^2)`` (Euclidean), as HFC's ``mask_radial``.

Bands are half-open, ``low <= d < high``; ``ring_partition`` turns edges ``0 = e0 < e1 < .. <
inf`` into masks that cover every frequency exactly once, so band-limited copies of a noise sum
back to the noise and their energies sum to its energy (Parseval). Filters (``filter_mask``)
keep ``d <= radius`` (inclusive: radius 0 keeps DC alone; HFC's strict ``d < r`` with integer
``r`` equals our radius ``sqrt(r^2 - 1)``) and multiply the rest by ``outside`` (0, or HFC's 0.5);
the high-pass mask is ``1 - low-pass mask`` (HFC's ``1 - mask``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from spectrascope.ops.fourier_basis import signed_frequencies

__all__ = [
    "KINDS", "UNITS", "BASES", "radius_grid", "max_radius", "band_mask", "ring_edges", "ring_partition",
    "band_limit", "band_limited_noise", "filter_mask", "filter_images", "centred",
]

KINDS = ("square", "circle")
UNITS = ("cycles", "index")
BASES = ("gaussian", "sign")


def _check(kind: str, units: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if units not in UNITS:
        raise ValueError(f"units must be one of {', '.join(UNITS)}, not {units!r}")


def radius_grid(H: int, W: int, kind: str = "circle", units: str = "cycles", device=None) -> torch.Tensor:
    """(H, W) float64 distance of every frequency from DC, FFT layout (see the module doc)."""
    _check(kind, units)
    fy = signed_frequencies(H, device).double()[:, None]
    fx = signed_frequencies(W, device).double()[None, :]
    if units == "cycles":
        fy, fx = fy / H, fx / W
    if kind == "square":
        return torch.maximum(fy.abs(), fx.abs())
    return torch.sqrt(fy ** 2 + fx ** 2)


def max_radius(H: int, W: int, kind: str = "circle", units: str = "cycles") -> float:
    """The largest distance on the (H, W) grid."""
    return float(radius_grid(H, W, kind, units).max())


def band_mask(H: int, W: int, low: float, high: float, kind: str = "square", units: str = "cycles",
              device=None) -> torch.Tensor:
    """Boolean (H, W) mask of the band ``low <= d < high`` (FFT layout)."""
    if not high > low:
        raise ValueError(f"a band needs high > low, got [{low}, {high})")
    d = radius_grid(H, W, kind, units, device)
    return (d >= low) & (d < high)


def ring_edges(num_bands: int, H: int, W: int, kind: str = "square", units: str = "cycles") -> list[float]:
    """``num_bands + 1`` edges of equally wide rings from DC to the largest distance; the last
    edge is ``inf`` so that the rings partition the plane."""
    if not isinstance(num_bands, int) or num_bands < 1:
        raise ValueError(f"num_bands must be an integer >= 1, got {num_bands!r}")
    top = max_radius(H, W, kind, units)
    return [top * k / num_bands for k in range(num_bands)] + [math.inf]


def ring_partition(H: int, W: int, edges: Sequence[float], kind: str = "square", units: str = "cycles",
                   device=None) -> torch.Tensor:
    """Boolean (B, H, W) masks of the bands ``[edges[b], edges[b + 1])``. With ``edges[0] <= 0``
    and ``edges[-1]`` beyond the largest distance they partition the spectrum."""
    e = [float(v) for v in edges]
    if len(e) < 2 or any(not b > a for a, b in zip(e, e[1:])):
        raise ValueError(f"edges must be increasing and at least two, got {list(edges)}")
    d = radius_grid(H, W, kind, units, device)
    return torch.stack([(d >= lo) & (d < hi) for lo, hi in zip(e, e[1:])])


def band_limit(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Keep only the frequencies of ``masks`` in ``x`` (real, (..., H, W)).

    Args:
        x: real tensor whose last two axes are the image plane.
        masks: (H, W) or (B, H, W) masks (bool or float, Hermitian), FFT layout.

    Returns:
        ``real(ifft2(mask * fft2(x)))``: shaped like ``x`` for one mask, (B, *x.shape) for B.
    """
    F = torch.fft.fft2(x)
    m = masks.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
    if masks.ndim == 3:
        m = m.reshape(m.shape[0], *([1] * (x.ndim - 2)), *m.shape[-2:])
        F = F.unsqueeze(0)
    return torch.fft.ifft2(F * m).real.to(x.dtype)


def band_limited_noise(shape: Sequence[int], masks: torch.Tensor, eps: float, *, base: str = "gaussian",
                       generator: torch.Generator | None = None, l2: float | None = None,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Noise confined to frequency bands.

    Args:
        shape: (..., H, W) of one noise draw (e.g. (N, C, H, W)).
        masks: (H, W) or (B, H, W) band masks (``band_mask`` / ``ring_partition``).
        eps: scale of the base noise: ``eps * N(0, 1)`` (``base="gaussian"``) or
            ``eps * sign(N(0, 1))`` (``base="sign"``, Park & Kim's ``Random`` attack).
        generator: the seeded generator of the base noise (one draw, shared by every band).
        l2: when set, each (..., H, W) plane of every band's noise is rescaled to this L2 norm
            (bands of different sizes then perturb equally); an empty plane stays zero.
        dtype: float dtype of the result.

    Returns:
        The band-limited noise: ``shape``, or (B, *shape) for B masks.
    """
    if base not in BASES:
        raise ValueError(f"base must be one of {', '.join(BASES)}, not {base!r}")
    z = torch.randn(tuple(shape), generator=generator, dtype=torch.float64)
    if base == "sign":
        z = z.sign()
    out = band_limit(eps * z, masks)
    if l2 is not None:
        norm = out.flatten(-2).norm(dim=-1)[..., None, None]
        out = torch.where(norm > 0, out * (l2 / norm.clamp_min(1e-300)), torch.zeros_like(out))
    return out.to(dtype)


def filter_mask(H: int, W: int, radius: float, kind: str = "low", *, outside: float = 0.0,
                units: str = "index", device=None) -> torch.Tensor:
    """Float64 (H, W) mask (FFT layout) of a circular low- or high-pass filter.

    Args:
        H, W: the image size.
        radius: the kept disc is ``d <= radius`` (``math.inf``: everything).
        kind: ``low`` (1 inside, ``outside`` elsewhere) or ``high`` (one minus the low mask).
        outside: the low-pass mask's value outside the disc: 0, or 0.5 as HFC.
        units: ``index`` (HFC) or ``cycles``.
    """
    if kind not in ("low", "high"):
        raise ValueError(f"kind must be low or high, not {kind!r}")
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    d = radius_grid(H, W, "circle", units, device)
    low = torch.where(d <= radius, torch.ones_like(d), torch.full_like(d, float(outside)))
    return low if kind == "low" else 1.0 - low


def filter_images(x: torch.Tensor, radius: float, kind: str = "low", *, outside: float = 0.0,
                  units: str = "index") -> torch.Tensor:
    """Low- or high-pass filtered images ``real(ifft2(mask * fft2(x)))`` (no clipping), shaped
    like ``x`` (..., H, W); see ``filter_mask``. Radius 0 low-pass with ``outside=0`` keeps the
    per-channel mean; radius ``inf`` keeps ``x``."""
    H, W = x.shape[-2:]
    return band_limit(x, filter_mask(H, W, radius, kind, outside=outside, units=units, device=x.device))


def centred(spectrum: torch.Tensor) -> torch.Tensor:
    """A spectrum (..., H, W) in FFT layout with DC moved to ``[H // 2, W // 2]`` (``fftshift``)."""
    return torch.fft.fftshift(spectrum, dim=(-2, -1))
