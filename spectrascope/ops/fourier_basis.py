"""Real Fourier basis images and the Fourier heat-map perturbation (Yin et al. 2019, "A Fourier
perspective on model robustness"): pure tensor maths, no hooks, no I/O, no models.

Frequencies. A frequency of an H x W image is a pair ``(fy, fx)`` of signed integer indices
(cycles per image side, DC = ``(0, 0)``); ``(fy, fx)`` and ``(fy + H, fx)`` are the same
frequency. Its basis image is

    U(y, x) = cos(2 pi (fy y / H + fx x / W)) / ||cos(...)||_2,

the real image whose spectrum is non-zero only at ``(fy, fx)`` and ``(-fy, -fx)``; it has unit
L2 norm over the (H, W) plane and is the same on every channel. A frequency and its conjugate
``(-fy, -fx)`` give the same image, so only the *half plane* of distinct bases is evaluated
(``half_plane``): ``fx`` from 0 to ``W // 2``; in the self-conjugate columns (``fx = 0`` and,
for even W, ``fx = W / 2``) only ``fy`` from 0 to ``H // 2``; elsewhere the H residues of
``fy`` (``-(H - 1) // 2 .. H // 2``). At 32 x 32 that is 514 bases (the rfft grid's 544 points
hold 30 duplicates); at 31 x 31, 481 = (31 * 31 + 1) / 2.

The heat map is drawn on the frequency plane centred on DC, ``fy`` in ``-Ky .. Ky`` and ``fx``
in ``-Kx .. Kx`` with ``K = side // 2`` (``full_plane``): an odd-sided, point-symmetric map.
For even sides the two outer rows (columns) are the Nyquist frequency ``+-side / 2``, one basis
drawn on both edges. ``max_freq`` limits both axes to ``|f| <= max_freq``.

Perturbation (``perturb``): ``x~ = clip(x + eps * r * U, 0, 1)`` on images ``x`` in [0, 1]
pixel space, *before* the model's normalisation, with a sign ``r = +-1`` per image and channel.
``basis_signs`` draws the signs reproducibly: image ``i`` (its index in the data set) gets its
own ``torch.Generator`` seeded from ``(seed, i)`` and draws one sign per (basis, channel) of
the whole half plane, so a sign never depends on batching, on which bases a process
evaluates, or on ``max_freq``.
"""
from __future__ import annotations

import operator
from typing import Sequence

import torch

from spectrascope.errors import OptionError

__all__ = [
    "SIGNS", "signed_frequencies", "map_frequencies", "half_plane", "half_plane_index", "basis_ids",
    "fourier_basis", "full_plane", "seed_for", "basis_signs", "perturb",
]

#: the accepted ``sign`` settings: deterministic +1 / -1, or seeded random signs
SIGNS = ("+1", "-1", "random")
_MASK64 = (1 << 64) - 1


def _check_size(H: int, W: int) -> None:
    if not (isinstance(H, int) and isinstance(W, int) and H >= 1 and W >= 1):
        raise ValueError(f"image size must be two integers >= 1, got {H!r} x {W!r}")


def signed_frequencies(n: int, device=None) -> torch.Tensor:
    """Signed integer frequencies of an ``n``-point FFT in FFT order: ``0, 1, .., -1`` (for even
    ``n`` the Nyquist index ``n / 2`` is ``-n / 2``, as ``fftfreq``)."""
    k = torch.arange(n, device=device)
    return torch.where(k < (n + 1) // 2, k, k - n)


def map_frequencies(n: int, max_freq: int | None = None, device=None) -> torch.Tensor:
    """The signed frequencies along one axis of the centred heat map: ``-K .. K`` with
    ``K = n // 2``, or ``min(K, max_freq)``."""
    K = n // 2 if max_freq is None else min(n // 2, int(max_freq))
    if K < 0:
        raise ValueError(f"max_freq must be >= 0, got {max_freq}")
    return torch.arange(-K, K + 1, device=device)


def half_plane(H: int, W: int) -> torch.Tensor:
    """The distinct real Fourier bases of an H x W image, (K, 2) int64 rows ``(fy, fx)`` (see the
    module doc): ordered by ``fx`` then ``fy``; row ``k`` is basis id ``k``."""
    _check_size(H, W)
    rows = []
    full_fy = torch.arange(-((H - 1) // 2), H // 2 + 1)
    self_fy = torch.arange(0, H // 2 + 1)
    for fx in range(W // 2 + 1):
        fy = self_fy if (fx == 0 or 2 * fx == W) else full_fy
        rows.append(torch.stack([fy, torch.full_like(fy, fx)], dim=1))
    return torch.cat(rows)


def half_plane_index(H: int, W: int) -> torch.Tensor:
    """(H, W) int64 grid in FFT layout: the basis id (row of ``half_plane``) of every frequency;
    a frequency and its conjugate share an id."""
    freqs = half_plane(H, W)
    grid = torch.full((H, W), -1, dtype=torch.long)
    ids = torch.arange(len(freqs))
    for sy, sx in ((1, 1), (-1, -1)):
        grid[(sy * freqs[:, 0]) % H, (sx * freqs[:, 1]) % W] = ids
    if bool((grid < 0).any()):  # pragma: no cover - an invariant of half_plane
        raise AssertionError("half plane does not cover the frequency grid")
    return grid


def basis_ids(H: int, W: int, max_freq: int | None = None) -> torch.Tensor:
    """Ids of the half-plane bases drawn on the map of ``full_plane(.., max_freq)``: all of
    them, or those with ``|fy| <= max_freq`` and ``|fx| <= max_freq``."""
    freqs = half_plane(H, W)
    ids = torch.arange(len(freqs))
    if max_freq is None:
        return ids
    try:
        bound = operator.index(max_freq)
    except TypeError:
        bound = -1
    if isinstance(max_freq, bool) or bound < 0:
        raise OptionError(f"{max_freq!r} is not a frequency bound (an integer >= 0)", option="--max-freq")
    grid = half_plane_index(H, W)
    fy, fx = map_frequencies(H, bound), map_frequencies(W, bound)
    return torch.unique(grid[fy[:, None] % H, fx[None, :] % W])


def fourier_basis(freqs, H: int, W: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Unit-L2-norm real basis images of the frequencies ``freqs`` ((K, 2) signed ``(fy, fx)``),
    (K, H, W). The phase ``fy y / H`` is reduced modulo 1 in integers and the image is built
    separably (``cos(a + b) = cos a cos b - sin a sin b``) in float64, then cast to ``dtype``."""
    _check_size(H, W)
    f = torch.as_tensor(freqs, dtype=torch.long).reshape(-1, 2).cpu()
    y, x = torch.arange(H), torch.arange(W)
    ay = 2 * torch.pi * ((f[:, :1] * y) % H).double() / H
    ax = 2 * torch.pi * ((f[:, 1:] * x) % W).double() / W
    cy, sy, cx, sx = (t.to(device=device, dtype=dtype) for t in (ay.cos(), ay.sin(), ax.cos(), ax.sin()))
    selfconj = ((2 * f[:, 0]) % H == 0) & ((2 * f[:, 1]) % W == 0)
    norm = (torch.where(selfconj, 1.0, 0.5).double() * (H * W)).sqrt().to(device=device, dtype=dtype)
    basis = cy[:, :, None] * cx[:, None, :] - sy[:, :, None] * sx[:, None, :]
    return basis / norm[:, None, None]


def full_plane(values: torch.Tensor, H: int, W: int, max_freq: int | None = None, ids=None) -> torch.Tensor:
    """Mirror per-basis values onto the centred frequency plane.

    Args:
        values: (..., K) values of the bases ``ids`` (default: every half-plane basis in order).
        H, W: the image size.
        max_freq: keep ``|fy|, |fx| <= max_freq`` (the whole plane when None).
        ids: the basis ids of the last axis of ``values``; every basis the map needs must be there.

    Returns:
        (..., 2 Ky + 1, 2 Kx + 1): row ``fy + Ky``, column ``fx + Kx``; ``map[..., i, j]`` equals
        ``map[..., -1 - i, -1 - j]`` (point symmetry about DC).
    """
    n_all = len(half_plane(H, W))
    lookup = torch.arange(n_all) if ids is None else torch.full((n_all,), -1, dtype=torch.long)
    if ids is not None:
        ids = torch.as_tensor(ids, dtype=torch.long).cpu()
        lookup[ids] = torch.arange(len(ids))
    if values.shape[-1] != (n_all if ids is None else len(ids)):
        raise ValueError(f"values has {values.shape[-1]} bases on its last axis, expected "
                         f"{n_all if ids is None else len(ids)}")
    grid = half_plane_index(H, W)
    fy, fx = map_frequencies(H, max_freq), map_frequencies(W, max_freq)
    pos = lookup[grid[fy[:, None] % H, fx[None, :] % W]]
    if bool((pos < 0).any()):
        raise ValueError("values lack some bases of the requested map (use basis_ids(H, W, max_freq))")
    return values[..., pos.to(values.device)]


def seed_for(seed: int, index: int) -> int:
    """A 63-bit generator seed of (``seed``, ``index``) (SplitMix64 finaliser: neighbouring indices
    get unrelated streams)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(index) + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def basis_signs(indices: Sequence[int], ids, H: int, W: int, channels: int = 3, *, seed: int = 0,
                sign: str = "random") -> torch.Tensor:
    """The signs ``r`` (float32 +-1), (K, N, C) for the bases ``ids`` and the images whose data-set
    indices are ``indices`` (see the module doc: one generator per image, seeded from
    ``(seed, index)``, drawing (n_half_plane, C) signs)."""
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {', '.join(SIGNS)}, not {sign!r}")
    ids = torch.as_tensor(ids, dtype=torch.long).cpu()
    n = len(indices)
    if sign != "random":
        return torch.full((len(ids), n, channels), 1.0 if sign == "+1" else -1.0)
    n_all = len(half_plane(H, W))
    out = torch.empty((n, len(ids), channels))
    g = torch.Generator()
    for k, i in enumerate(indices):
        g.manual_seed(seed_for(seed, int(i)))
        bits = torch.randint(0, 2, (n_all, channels), generator=g, dtype=torch.int8)
        out[k] = bits[ids].float()
    return (out * 2 - 1).transpose(0, 1).contiguous()


def perturb(x: torch.Tensor, bases: torch.Tensor, signs: torch.Tensor, eps: float) -> torch.Tensor:
    """``clip(x + eps * r * U, 0, 1)`` for every basis and image in one tensor op.

    Args:
        x: (N, C, H, W) images in [0, 1] (before normalisation).
        bases: (K, H, W) unit-norm basis images (``fourier_basis``).
        signs: (K, N, C) signs ``r`` (``basis_signs``).
        eps: the L2 norm of the perturbation of each channel.

    Returns:
        (K, N, C, H, W) perturbed images, same dtype and device as ``x``.
    """
    if x.ndim != 4 or bases.ndim != 3 or tuple(bases.shape[1:]) != tuple(x.shape[2:]):
        raise ValueError(f"expected x (N, C, H, W) and bases (K, H, W) of the same size, got {tuple(x.shape)} "
                         f"and {tuple(bases.shape)}")
    K, (N, C) = bases.shape[0], x.shape[:2]
    if tuple(signs.shape) != (K, N, C):
        raise ValueError(f"signs must be (K, N, C) = {(K, N, C)}, got {tuple(signs.shape)}")
    r = (signs.to(device=x.device, dtype=x.dtype) * eps)[..., None, None]
    out = x.unsqueeze(0) + r * bases.to(device=x.device, dtype=x.dtype)[:, None, None]
    return out.clamp_(0.0, 1.0)
