"""Pure maths of frequency-domain filters: no hooks, no I/O, no model imports.

Conventions. A *half-plane filter* is a complex tensor ``(..., H, W//2+1)`` as used with
``rfft2``/``irfft2`` (GFNet/GFFormer global filters, DFFormer basis filters, AFFNet
masks, the effective per-sample dynamic filter). Model parameters store it as a real
tensor ``(H, W//2+1, K, 2)`` (real/imag last); ``param_to_filters`` turns that into
``(K, H, W//2+1)`` complex.

``irfft2`` only reads the half plane and ignores the imaginary part of the
self-conjugate bins, so the filter a layer *actually applies* is the Hermitian extension
``fft2(irfft2(w))``. The official GFNet visualisation (``viz_freq.ipynb``) plots exactly
its amplitude with the zero frequency in the centre: ``filter_amplitude``.

A frequency filter is a circular convolution (the convolution theorem, AFFNet Eq. 5-6):
with the ``ortho`` transform pair, ``irfft2(M * rfft2(x))`` equals ``x`` circularly
convolved with ``equivalent_kernel(M) = irfft2(M)`` (backward norm), a real kernel as
large as the map. ``circular_conv2d`` is the direct (spatial) reference used to check it.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = [
    "as_complex", "param_to_filters", "infer_width", "spatial_kernel", "effective_spectrum", "filter_amplitude",
    "hermitian_error", "equivalent_kernel", "centered_kernel", "frequency_filter", "circular_conv2d",
    "dynamic_filters", "routing_usage", "radial_profile", "filter_kind", "spf_mask", "SPF_LAMBDAS", "grid_of",
]

#: the three SPANet balancing parameters, as the official float arange produces them
SPF_LAMBDAS = tuple(torch.arange(0.7, 0.9, 0.1).tolist())


def as_complex(w: torch.Tensor) -> torch.Tensor:
    """A complex tensor, or a real one whose last axis (size 2) holds real/imag parts."""
    if w.is_complex():
        return w
    if w.shape[-1] != 2:
        raise ValueError(f"expected a complex tensor or a real one with a trailing axis of 2, got {tuple(w.shape)}")
    return torch.view_as_complex(w.float().contiguous())


def param_to_filters(param: torch.Tensor) -> torch.Tensor:
    """Model parameter ``(H, W//2+1, K, 2)`` (real) or ``(H, W//2+1, K)`` (complex) -> ``(K, H, W//2+1)`` complex."""
    w = as_complex(param.detach())
    if w.ndim != 3:
        raise ValueError(f"expected a filter parameter (H, W//2+1, K, 2), got {tuple(param.shape)}")
    return w.permute(2, 0, 1)


def infer_width(h: int, wf: int, width: int | None = None) -> int:
    """Width W of the spatial grid of a half-plane filter ``(h, wf)``.

    Given ``width`` it is checked (``wf == width//2+1``). Otherwise the grid is taken as
    square when ``wf == h//2+1`` (GFNet/DFFormer at square inputs, odd sizes included)
    and as even ``2*(wf-1)`` otherwise."""
    if width is not None:
        if width // 2 + 1 != wf:
            raise ValueError(f"a half-plane of width {wf} cannot come from a grid of width {width}")
        return int(width)
    return h if h // 2 + 1 == wf else 2 * (wf - 1)


def spatial_kernel(half: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Real spatial kernel ``irfft2(half, s=(H, W))`` (backward norm), origin at [0, 0]."""
    half = as_complex(half)
    h, wf = half.shape[-2:]
    return torch.fft.irfft2(half, s=(h, infer_width(h, wf, width)), dim=(-2, -1))


def effective_spectrum(half: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """The full Hermitian-symmetric spectrum ``(..., H, W)`` a half-plane filter applies."""
    return torch.fft.fft2(spatial_kernel(half, width), dim=(-2, -1))


def filter_amplitude(half: torch.Tensor, width: int | None = None, shift: bool = True) -> torch.Tensor:
    """The official GFNet recipe: ``|fftshift(fft2(irfft2(w, s=(H, W))))|``, ``(..., H, W)``,
    zero frequency at pixel ``(H//2, W//2)`` when ``shift``."""
    amp = effective_spectrum(half, width).abs()
    return torch.fft.fftshift(amp, dim=(-2, -1)) if shift else amp


def hermitian_error(full: torch.Tensor) -> float:
    """max |F(k) - conj(F(-k))| of a full (unshifted) spectrum ``(..., H, W)``: 0 for the
    spectrum of a real signal."""
    flipped = torch.roll(torch.flip(full, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    return float((full - flipped.conj()).abs().max())


def equivalent_kernel(mask: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """The spatial kernel ``k`` with ``irfft2(mask * rfft2(x, norm='ortho'), norm='ortho') ==
    circular_conv2d(x, k)``: ``k = irfft2(mask)`` with the backward norm (the ortho factors
    of the transform pair cancel). ``(..., H, W)``, origin at [0, 0]."""
    return spatial_kernel(mask, width)


def centered_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """A kernel with its origin moved to the centre pixel ``(H//2, W//2)`` for display."""
    return torch.fft.fftshift(kernel, dim=(-2, -1))


def frequency_filter(x: torch.Tensor, mask: torch.Tensor, norm: str = "ortho") -> torch.Tensor:
    """``irfft2(mask * rfft2(x))`` over the last two axes of a real map ``x`` (..., H, W)."""
    H, W = x.shape[-2:]
    X = torch.fft.rfft2(x.float(), dim=(-2, -1), norm=norm)
    return torch.fft.irfft2(X * as_complex(mask), s=(H, W), dim=(-2, -1), norm=norm)


def circular_conv2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Direct circular convolution ``y[h, w] = sum_ij k[i, j] x[(h-i) % H, (w-j) % W]`` over
    the last two axes (kernel broadcast against ``x``). O(N^2): a reference for small maps."""
    H, W = x.shape[-2:]
    if tuple(kernel.shape[-2:]) != (H, W):
        raise ValueError(f"kernel grid {tuple(kernel.shape[-2:])} differs from the map grid {(H, W)}")
    out = torch.zeros(torch.broadcast_shapes(x.shape, kernel.shape), dtype=torch.result_type(x, kernel))
    for i in range(H):
        for j in range(W):
            out = out + kernel[..., i:i + 1, j:j + 1] * torch.roll(x, shifts=(i, j), dims=(-2, -1))
    return out


def dynamic_filters(routing: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """DFFormer's effective per-sample filters ``sum_f routing[b, f, c] * basis[f]``.

    ``routing`` (B, N, C) softmax weights, ``basis`` (N, H, W//2+1) complex (or the
    parameter ``(H, W//2+1, N, 2)``) -> (B, C, H, W//2+1) complex."""
    if basis.ndim == 4:
        basis = param_to_filters(basis)
    basis = as_complex(basis)
    if routing.shape[1] != basis.shape[0]:
        raise ValueError(f"routing has {routing.shape[1]} filters, the basis {basis.shape[0]}")
    return torch.einsum("bfc,fhw->bchw", routing.to(basis.dtype), basis)


def routing_usage(routing: torch.Tensor) -> dict[str, torch.Tensor]:
    """Which basis the channels use. ``routing`` (B, N, C) softmax weights.

    Returns ``mean`` (N, C) mean weight per basis and channel, ``argmax_share`` (N,) the
    fraction of (image, channel) pairs whose largest weight is on each basis, and
    ``entropy`` (C,) the mean routing entropy per channel in nats (0 = one basis,
    log N = uniform)."""
    r = routing.float()
    n = r.shape[1]
    top = r.argmax(dim=1)
    share = torch.stack([(top == f).float().mean() for f in range(n)])
    ent = -(r.clamp_min(1e-12).log() * r).sum(dim=1).mean(dim=0)
    return {"mean": r.mean(dim=0), "argmax_share": share, "entropy": ent}


def radial_profile(amplitude: torch.Tensor, bins: int | None = None) -> torch.Tensor:
    """Mean of a centred amplitude map ``(..., H, W)`` over rings of normalised radius
    (0 = DC, 1 = the Nyquist corner radius along the shorter axis); ``(..., bins)``."""
    H, W = amplitude.shape[-2:]
    bins = bins or max(2, min(H, W) // 2 + 1)
    yy = (torch.arange(H) - H // 2).float() / max(H // 2, 1)
    xx = (torch.arange(W) - W // 2).float() / max(W // 2, 1)
    r = torch.sqrt(yy[:, None] ** 2 + xx[None, :] ** 2)
    idx = torch.clamp((r * (bins - 1)).round().long(), max=bins - 1).flatten()
    flat = amplitude.reshape(*amplitude.shape[:-2], H * W).float()
    total = torch.zeros(*flat.shape[:-1], bins).index_add_(-1, idx, flat)
    count = torch.zeros(bins).index_add_(0, idx, torch.ones(H * W))
    prof = total / count.clamp_min(1)
    # empty rings (tiny maps) take the previous ring's value
    for b in range(1, bins):
        if count[b] == 0:
            prof[..., b] = prof[..., b - 1]
    return prof


def filter_kind(amplitude: torch.Tensor, ratio: float = 1.5) -> str:
    """Rough type of a centred amplitude map: 'low-pass', 'high-pass', 'band-pass' or
    'all-pass', from where its radial profile peaks relative to its ends."""
    prof = radial_profile(amplitude)
    lo, hi = float(prof[0]), float(prof[-1])
    peak_i = int(prof.argmax())
    peak = float(prof[peak_i])
    floor = max(min(float(prof.min()), lo, hi), 1e-12)
    if peak <= ratio * floor:
        return "all-pass"
    if 0 < peak_i < len(prof) - 1 and peak > ratio * max(lo, hi):
        return "band-pass"
    return "low-pass" if lo >= hi else "high-pass"


def spf_mask(h: int, w: int, radius: float, lam: float) -> torch.Tensor:
    """The SPANet spectral pooling mask ``(H, W)`` (float32, centred frequency layout):
    ``lam`` where the distance from ``(H//2, W//2)`` (frequency-index units) is below
    ``radius``, ``1 - lam`` beyond it and ``1/3`` on the circle (the official constructor;
    the model's own copy is tested against this one)."""
    rows = torch.arange(h).view(-1, 1) - h // 2
    cols = torch.arange(w).view(1, -1) - w // 2
    dist = torch.sqrt((rows ** 2 + cols ** 2).to(torch.float32))
    lam_t = torch.tensor(lam, dtype=torch.float32)
    ring = torch.tensor(1 / 3, dtype=torch.float32)
    return torch.where(dist < radius, lam_t, torch.where(dist > radius, 1.0 - lam_t, ring))


def grid_of(shape: Sequence[int]) -> tuple[int, int]:
    """(H, W) of the spatial grid of a filter given as (..., H, W//2+1)."""
    h, wf = int(shape[-2]), int(shape[-1])
    return h, infer_width(h, wf)
