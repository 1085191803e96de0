"""Token mixers for the AFFNet ablations (Huang et al., ICCV 2023, Tables 4, 5 and 12).

The AFFNet paper compares its AFF token mixer with other operators placed in the same
slot of the same network (``Block.filter``). None of them exists in the official
repository, so they are implemented here from their own papers; the choices we had to
make are written down in each class. Every mixer takes and returns ``(B, C, H, W)``, runs
its transforms in float32 with autocast disabled, exposes the pure token-mixing term
(before the in-mixer skip) through ``spectral_tap`` and, where it has one, its frequency
mask through ``mask_tap``.

The in-mixer skip: the official AFF mixer returns ``F^-1(M * F(x)) + x``. For a like-for-like
comparison every replacement operator keeps that skip (``in_mixer_skip=True``), except the
paper's "Base." model, whose mixers are "replaced with identity functions".

The frequency transforms of Table 12 (orthonormal DCT-II and a one-level Haar DWT) are
plain torch functions here (``dct2``/``idct2``, ``haar_dwt2``/``haar_idwt2``): no hooks,
no state, exact inverses.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import InputSizeError
from .layers import TapPoint, resize_complex_weight, spectral_region, to_2tuple

__all__ = ["dct_matrix", "dct2", "idct2", "haar_dwt2", "haar_idwt2", "ConvMixer",
           "GFNMixer", "FNOMixer", "FFCMixer", "DFFMixer", "GridError"]


class GridError(InputSizeError):
    """A resolution-bound mixer (GFN, FNO) fed a grid it was not built for."""


# ---------------------------------------------------------------------------- transforms


def _dct_basis(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix (n x n), float64 on the CPU (``dct_matrix``)."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


@lru_cache(maxsize=64)
def _dct_matrix_cpu(n: int) -> torch.Tensor:
    return _dct_basis(n)


def _dct_pair(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The DCT matrices for the last two axes of ``x``, in its device and dtype (cached in eager)."""
    if torch.jit.is_scripting():
        dh = _dct_basis(x.shape[-2]).to(device=x.device, dtype=x.dtype)
        dw = _dct_basis(x.shape[-1]).to(device=x.device, dtype=x.dtype)
    else:
        dh = dct_matrix(x.shape[-2], x.device, x.dtype)
        dw = dct_matrix(x.shape[-1], x.device, x.dtype)
    return dh, dw


def dct_matrix(n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` (n x n): ``X = D @ x``, ``x = D.T @ X``.

    ``D[k, i] = sqrt(2/n) * s_k * cos(pi * (2i + 1) * k / (2n))`` with ``s_0 = 1/sqrt(2)``,
    ``s_k = 1`` otherwise (the same convention as ``scipy.fft.dct(norm='ortho')``)."""
    return _dct_matrix_cpu(int(n)).to(device=device, dtype=dtype)


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two axes."""
    dh, dw = _dct_pair(x)
    return dh @ x @ dw.transpose(0, 1)


def idct2(x: torch.Tensor) -> torch.Tensor:
    """Inverse of ``dct2`` (orthonormal DCT-III over the last two axes)."""
    dh, dw = _dct_pair(x)
    return dh.transpose(0, 1) @ x @ dw


def haar_dwt2(x: torch.Tensor) -> torch.Tensor:
    """One-level orthonormal 2-D Haar DWT over the last two axes (even sizes).

    Returns the four sub-bands tiled into one map of the input's shape,
    ``[[LL, HL], [LH, HH]]`` (rows: low/high along H; columns: low/high along W), each
    ``(H/2, W/2)``. With ``a, b, c, d`` the pixels of a 2x2 cell (row-major):
    ``LL = (a+b+c+d)/2``, ``HL = (a-b+c-d)/2``, ``LH = (a+b-c-d)/2``, ``HH = (a-b-c+d)/2``.
    The transform is orthonormal (energy preserving), so ``haar_idwt2`` is its transpose."""
    H, W = x.shape[-2], x.shape[-1]
    if H % 2 != 0 or W % 2 != 0:
        raise ValueError(f"haar_dwt2 needs even sizes, got {H}x{W} (pad first)")
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    ll, hl = (a + b + c + d) / 2, (a - b + c - d) / 2
    lh, hh = (a + b - c - d) / 2, (a - b - c + d) / 2
    return torch.cat([torch.cat([ll, hl], dim=-1), torch.cat([lh, hh], dim=-1)], dim=-2)


def haar_idwt2(y: torch.Tensor) -> torch.Tensor:
    """Inverse of ``haar_dwt2`` (tiled sub-bands -> signal)."""
    H, W = y.shape[-2], y.shape[-1]
    if H % 2 != 0 or W % 2 != 0:
        raise ValueError(f"haar_idwt2 needs even sizes, got {H}x{W}")
    h, w = H // 2, W // 2
    ll, hl = y[..., :h, :w], y[..., :h, w:]
    lh, hh = y[..., h:, :w], y[..., h:, w:]
    out = y.new_empty(y.shape)
    out[..., 0::2, 0::2] = (ll + hl + lh + hh) / 2
    out[..., 0::2, 1::2] = (ll - hl + lh - hh) / 2
    out[..., 1::2, 0::2] = (ll + hl - lh - hh) / 2
    out[..., 1::2, 1::2] = (ll - hl - lh + hh) / 2
    return out


def pad_even(x: torch.Tensor) -> torch.Tensor:
    """Zero-pad the last two axes to even sizes (the caller crops back to its own size)."""
    H, W = x.shape[-2], x.shape[-1]
    if H % 2 != 0 or W % 2 != 0:
        x = F.pad(x, (0, W % 2, 0, H % 2))
    return x


# ---------------------------------------------------------------------------- mixers


class _SlotMixer(nn.Module):
    """Common part: the in-mixer skip and the tap of the pure mixing term; ``forward`` runs the
    operator's ``_spectral`` with autocast off. (The "Base." rows use the zoo's
    ``IdentityMixer``: "all AFF token mixers are replaced with identity functions".)"""

    #: whether the operator is bound to the grid it is built for
    size_bound = False

    def __init__(self, in_mixer_skip: bool = True):
        super().__init__()
        self.in_mixer_skip = in_mixer_skip
        self.spectral_tap = TapPoint()

    def _finish(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = self.spectral_tap(y.to(x.dtype))
        return y + x if self.in_mixer_skip else y

    def _spectral(self, x):  # pragma: no cover - every spectral operator overrides
        raise NotImplementedError

    def forward(self, x):
        if torch.jit.is_scripting():
            y = self._spectral(x)
        else:
            with spectral_region(x):
                y = self._spectral(x)
        return self._finish(y, x)

    def spectral_taps(self) -> list:
        return []


class ConvMixer(_SlotMixer):
    """"Conv-Mixer (3x3)" of Table 4: one dense 3x3 convolution C -> C (with bias) in the
    original space. The paper gives no further detail; a dense (not depthwise) convolution is
    what reproduces its parameter count (10.7 M for AFFNet)."""

    def __init__(self, dim: int, kernel_size: int = 3, in_mixer_skip: bool = True, **kwargs):
        super().__init__(in_mixer_skip)
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, bias=True)

    def forward(self, x):
        return self._finish(self.conv(x), x)


class GFNMixer(_SlotMixer):
    """GFN operator (Rao et al., "Global Filter Networks for Image Classification",
    NeurIPS 2021): a learned, static, per-channel complex filter on the half spectrum,
    ``irfft2(rfft2(x) * K)`` with ``K`` of shape ``(H, W//2+1, C)``, ortho FFTs, init
    ``0.02 * randn`` as in GFNet. The filter is bound to the grid it is built for
    (``grid`` = the stage's feature size at the model's ``img_size``); pass
    ``weight_resize=True`` to resample it (bicubic, ``align_corners=True``, the GFNet
    fine-tuning recipe) to the input grid at every forward. Checkpoints trained at another
    size are resized on load (``ZooModel.adapt_state_dict``)."""

    def __init__(self, dim: int, grid=(16, 16), weight_resize: bool = False, in_mixer_skip: bool = True,
                 **kwargs):
        super().__init__(in_mixer_skip)
        h, w = to_2tuple(grid)
        self.grid = (h, w)
        self.weight_resize = weight_resize
        self.complex_weight = nn.Parameter(torch.randn(h, w // 2 + 1, dim, 2, dtype=torch.float32) * 0.02)
        self.filter_tap = TapPoint()
        self.size_bound = not weight_resize

    def spectral_taps(self):
        return [("aff_mask", "filter_tap", "raw", "GFN static filter (C, H, W//2+1), complex64")]

    def _spectral(self, x):
        H, W = x.shape[2], x.shape[3]
        X = torch.fft.rfft2(x.float(), dim=(2, 3), norm="ortho")
        k = self.filter_tap(_gfn_filter(self.complex_weight, X, self.weight_resize))
        return torch.fft.irfft2(X * k, s=(H, W), dim=(2, 3), norm="ortho")


@torch.fx.wrap
def _gfn_filter(weight: torch.Tensor, X: torch.Tensor, resize: bool) -> torch.Tensor:
    """The GFN filter (C, H, W//2+1) for the half spectrum ``X`` (B, C, H, W//2+1): as built,
    resampled (``resize``) or refused. A leaf for ``torch.fx``: it branches on the input's shape."""
    if weight.shape[0] != X.shape[2] or weight.shape[1] != X.shape[3]:
        if not resize:
            raise GridError(
                f"GFN filter was built for a {weight.shape[0]}x{weight.shape[1]} frequency grid, the input "
                f"gives {X.shape[2]}x{X.shape[3]}; build the model with img_size=(H, W) of the input or "
                "pass mixer_kwargs={'weight_resize': True}")
        weight = resize_complex_weight(weight.float(), X.shape[2], X.shape[3])
    return torch.view_as_complex(weight.float().contiguous()).permute(2, 0, 1)


class FNOMixer(_SlotMixer):
    """FNO operator (Li et al., "Fourier Neural Operator for Parametric Partial Differential
    Equations", ICLR 2021): the spectral convolution ``R``: per kept Fourier mode a dense
    complex ``C x C`` matrix, ``out[k] = X[k] @ R[k]``, modes outside the kept set zeroed.

    As in the FNO code, the kept modes are the ``modes1`` lowest row frequencies of either
    sign (two weight tensors, ``weights1`` for rows ``[:modes1]``, ``weights2`` for rows
    ``[-modes1:]``) times the ``modes2`` lowest column frequencies of the half spectrum; init
    ``uniform[0, 1) / (C*C)``. Our choices: by default every mode of the build grid is kept
    (``modes1 = H//2``, ``modes2 = W//2+1``), which reproduces the paper's 141.0 M for
    AFFNet exactly; FNO's pointwise ``W`` path is the in-mixer skip. Like FNO, the operator
    runs on larger grids (the extra modes are dropped) but refuses grids with fewer modes
    than it was built for."""

    def __init__(self, dim: int, grid=(16, 16), modes1: int | None = None, modes2: int | None = None,
                 in_mixer_skip: bool = True, **kwargs):
        super().__init__(in_mixer_skip)
        h, w = to_2tuple(grid)
        self.modes1 = int(modes1) if modes1 else max(h // 2, 1)
        self.modes2 = int(modes2) if modes2 else w // 2 + 1
        scale = 1.0 / (dim * dim)
        self.weights1 = nn.Parameter(scale * torch.rand(dim, dim, self.modes1, self.modes2, 2))
        self.weights2 = nn.Parameter(scale * torch.rand(dim, dim, self.modes1, self.modes2, 2))

    #: refuses grids with fewer modes than it keeps
    size_bound = True

    def _spectral(self, x):
        H, W = x.shape[2], x.shape[3]
        X = torch.fft.rfft2(x.float(), dim=(2, 3), norm="ortho")
        w1 = torch.view_as_complex(self.weights1.float().contiguous())
        w2 = torch.view_as_complex(self.weights2.float().contiguous())
        out = _fno_spectral_conv(X, w1, w2, self.modes1, self.modes2, W)
        return torch.fft.irfft2(out, s=(H, W), dim=(2, 3), norm="ortho")


@torch.fx.wrap
def _fno_spectral_conv(X: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, m1: int, m2: int,
                       width: int) -> torch.Tensor:
    """FNO's ``R``: the kept modes of the half spectrum ``X`` (B, C, H, W//2+1) through ``w1``
    (rows ``[:m1]``) and ``w2`` (rows ``[-m1:]``), every other mode zero; refused when ``X`` has
    fewer modes than that. A leaf for ``torch.fx`` (it branches on the input's shape and writes
    into a tensor)."""
    H = X.shape[2]
    if 2 * m1 > H or m2 > X.shape[3]:
        raise GridError(f"FNO mixer keeps {2 * m1}x{m2} modes but a {H}x{width} input has only "
                        f"{H}x{X.shape[3]}; build the model with img_size=(H, W) of the input")
    out = torch.zeros_like(X)
    out[:, :, :m1, :m2] = torch.einsum("bixy,ioxy->boxy", X[:, :, :m1, :m2], w1)
    out[:, :, H - m1:, :m2] = torch.einsum("bixy,ioxy->boxy", X[:, :, H - m1:, :m2], w2)
    return out


def _to_real_channels(X: torch.Tensor) -> torch.Tensor:
    """(B, C, H, Wf) complex -> (B, 2C, H, Wf) real with channels [c0.re, c0.im, c1.re, ...]."""
    B, C, H, Wf = X.shape
    return torch.stack([X.real, X.imag], dim=2).reshape(B, 2 * C, H, Wf)


def _from_real_channels(Z: torch.Tensor) -> torch.Tensor:
    B, C2, H, Wf = Z.shape
    Z = Z.reshape(B, C2 // 2, 2, H, Wf).permute(0, 1, 3, 4, 2).contiguous()
    return torch.view_as_complex(Z)


class FFCMixer(_SlotMixer):
    """FFC operator (Chi et al., "Fast Fourier Convolution", NeurIPS 2020): the Fourier
    unit. ``rfft2`` (ortho), real and imaginary parts stacked as ``2C`` channels
    (interleaved per channel, as in the FFC code), a 1x1 convolution ``2C -> 2C`` without
    bias, BatchNorm, ReLU, back to complex, ``irfft2``. Only the Fourier unit is the
    "frequency-domain operation" compared in Table 5 (its parameter count, 4C^2 per block,
    reproduces the paper's 7.7 M); FFC's local branch and its channel-halving
    ``SpectralTransform`` wrapper are not part of it."""

    def __init__(self, dim: int, in_mixer_skip: bool = True, **kwargs):
        super().__init__(in_mixer_skip)
        self.conv_layer = nn.Conv2d(2 * dim, 2 * dim, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(2 * dim)
        self.relu = nn.ReLU(inplace=False)

    def _unit(self, X: torch.Tensor) -> torch.Tensor:
        # in the layers' dtype, back to float32 for the inverse FFT (both no-ops for a float32 model)
        Z = _to_real_channels(X).to(self.conv_layer.weight.dtype)
        return self.relu(self.bn(self.conv_layer(Z))).float()

    def _spectral(self, x):
        H, W = x.shape[2], x.shape[3]
        X = torch.fft.rfft2(x.float(), dim=(2, 3), norm="ortho")
        Z = self._unit(X)
        return torch.fft.irfft2(_from_real_channels(Z), s=(H, W), dim=(2, 3), norm="ortho")


class DFFMixer(FFCMixer):
    """DFF operator (Lin et al., "Deep Frequency Filtering for Domain Generalization",
    CVPR 2023): FFC's Fourier unit followed by an instance-adaptive *spatial* mask on the
    frequency map, shared by all channels. Our reading of the paper: the mask is a CBAM-style
    spatial attention on the Fourier-unit output ``Z`` (``2C`` real channels),
    ``A = sigmoid(conv7x7([mean_c Z, max_c Z]))`` of shape ``(B, 1, H, W//2+1)``, and the
    filtered spectrum ``Z * A`` goes back through ``irfft2``. The parameter count (the
    Fourier unit plus 98 weights per block) reproduces the paper's 7.7 M."""

    def __init__(self, dim: int, attn_kernel_size: int = 7, in_mixer_skip: bool = True, **kwargs):
        super().__init__(dim, in_mixer_skip)
        self.spatial_attn = nn.Conv2d(2, 1, attn_kernel_size, padding=attn_kernel_size // 2, bias=False)
        self.mask_tap = TapPoint()

    def spectral_taps(self):
        return [("aff_mask", "mask_tap", "raw", "DFF spatial frequency mask (B, 1, H, W//2+1), real, in (0, 1)")]

    def _spectral(self, x):
        H, W = x.shape[2], x.shape[3]
        X = torch.fft.rfft2(x.float(), dim=(2, 3), norm="ortho")
        Z = self._unit(X)
        pooled = torch.cat([Z.mean(dim=1, keepdim=True), Z.amax(dim=1, keepdim=True)], dim=1)
        A = self.mask_tap(torch.sigmoid(self.spatial_attn(pooled.to(self.spatial_attn.weight.dtype)).float()))
        return torch.fft.irfft2(_from_real_channels(Z * A), s=(H, W), dim=(2, 3), norm="ortho")
