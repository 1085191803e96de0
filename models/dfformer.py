"""DFFormer / CDFFormer / GFFormer and the DFFormer ablations (okojoalg/dfformer).

The token mixers are FFT based and plug into the MetaFormer macro of ``metaformer.py``.
FFTs run in float32 with autocast disabled. The dynamic filter exposes its softmax
routing weights ``(B, N, 2C)`` and the effective per-sample filter
``(B, H, W//2+1, 2C)`` (complex) through parameter-free tap points, so analyses can
hook them without extra compute when nobody listens.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import InputSizeError, register_model
from .layers import Mlp, StarReLU, TapPoint, make_activation, resize_complex_weight, spectral_region, to_2tuple
from .layers import register_token_mixer
from .metaformer import _metaformer_builder

PAPER_DFFORMER = "FFT-based Dynamic Token Mixer for Vision (Tatsunami & Taki, AAAI 2024, arXiv 2303.03932)"
SRC_DFFORMER = "okojoalg/dfformer@2b757c51:models/dfformer.py"
URL = "https://github.com/okojoalg/dfformer/releases/download/weights"


@torch.fx.wrap
def _filter_basis(param: torch.Tensor, xf: torch.Tensor, resize: bool, name: str) -> torch.Tensor:
    """The complex filter ``(H, W//2+1, K)`` for the half spectrum ``xf`` (B, H, W//2+1, C) from its
    real view ``param`` (h, w, K, 2): as built, resampled (``resize``) or refused when the grids
    differ. A leaf for ``torch.fx``: it branches on the input's shape."""
    h, w = xf.shape[1], xf.shape[2]
    if param.shape[0] != h or param.shape[1] != w:
        if not resize:
            raise InputSizeError(
                f"{name} filters were built for a {param.shape[0]}x{param.shape[1]} frequency grid but the input "
                f"gives {h}x{w}; build the model for this input (create_model(..., img_size=(H, W)) resizes "
                f"checkpoint filters on load) or pass weight_resize=True to resample the filters at every forward")
        param = resize_complex_weight(param, h, w)
    return torch.view_as_complex(param.float().contiguous())


class _FFTMixer(nn.Module):
    """Shared wrapper: pwconv1 -> act1 -> [float32 spectral op] -> act2 -> pwconv2 (NHWC).

    ``forward`` runs ``_spectral`` (float32) with autocast off and hands ``pwconv2`` the dtype
    ``pwconv1`` gave (a model cast to half precision stays in it)."""

    #: whether the filters are bound to the build grid (``weight_resize=False``)
    size_bound = False

    def __init__(self, dim, expansion_ratio=2, act1_layer=StarReLU, act2_layer=nn.Identity, bias=False,
                 size=14):
        super().__init__()
        size = to_2tuple(size)
        self.size = size[0]
        self.filter_size = size[1] // 2 + 1
        self.dim = dim
        self.med_channels = int(expansion_ratio * dim)

    def _build_pointwise(self, dim, act1_layer, bias):
        self.pwconv1 = nn.Linear(dim, self.med_channels, bias=bias)
        self.act1 = make_activation(act1_layer)()

    def _build_out(self, dim, act2_layer, bias):
        self.act2 = make_activation(act2_layer)()
        self.pwconv2 = nn.Linear(self.med_channels, dim, bias=bias)

    def _spectral(self, x, routing):  # pragma: no cover - every mixer overrides
        raise NotImplementedError

    def _mix(self, x, routing):
        x = self.act1(self.pwconv1(x))
        dtype = x.dtype
        if torch.jit.is_scripting():
            x = self._spectral(x, routing)
        else:
            with spectral_region(x):
                x = self._spectral(x, routing)
        # an NHWC-contiguous copy of the spectral output: ``irfft2`` over (H, W) returns channels-first
        # memory, on which ``nn.Linear`` under bf16 autocast takes a batched matmul with its weight
        # copied per row (several times slower than float32); same values
        return self.pwconv2(self.act2(x.contiguous()).to(dtype))


class DynamicFilter(_FFTMixer):
    """DF: a per-sample, per-channel convex combination of N shared complex filters.

    routing r = softmax_N(reweight(mean_HW(x)))       (B, N, 2C)
    W[b]      = sum_f r[b, f, c] * K_f               (B, H, W//2+1, 2C)
    out       = pwconv2(irfft2(rfft2(act1(pwconv1(x))) * W))
    """

    def __init__(self, dim, expansion_ratio=2, reweight_expansion_ratio=0.25, act1_layer=StarReLU,
                 act2_layer=nn.Identity, bias=False, num_filters=4, size=14, weight_resize=False, **kwargs):
        super().__init__(dim, expansion_ratio, act1_layer, act2_layer, bias, size)
        self.num_filters = num_filters
        self.weight_resize = weight_resize
        self._build_pointwise(dim, act1_layer, bias)
        self.reweight = Mlp(dim, reweight_expansion_ratio, num_filters * self.med_channels)
        self.complex_weights = nn.Parameter(
            torch.randn(self.size, self.filter_size, num_filters, 2, dtype=torch.float32) * 0.02)
        self._build_out(dim, act2_layer, bias)
        self.routing_tap = TapPoint()
        self.filter_tap = TapPoint()
        self.size_bound = not weight_resize

    def spectral_taps(self):
        return [("df_routing", "routing_tap", "raw", "softmax routing weights (B, N, 2C), index [b, f, c]"),
                ("df_filter", "filter_tap", "raw", "effective per-sample filter (B, H, W//2+1, 2C), complex64")]

    def forward(self, x):
        B = x.shape[0]
        routing = self.reweight(x.mean(dim=(1, 2))).view(B, self.num_filters, -1).softmax(dim=1)
        return self._mix(x, routing)

    def _spectral(self, x, routing):
        H, W = x.shape[1], x.shape[2]
        x = torch.fft.rfft2(x.to(torch.float32), dim=(1, 2), norm="ortho")
        basis = _filter_basis(self.complex_weights, x, self.weight_resize, "DynamicFilter")
        routing = self.routing_tap(routing.to(torch.float32))
        weight = torch.einsum("bfc,hwf->bhwc", routing.to(torch.complex64), basis)
        x = x * self.filter_tap(weight)
        return torch.fft.irfft2(x, s=(H, W), dim=(1, 2), norm="ortho")


class GlobalFilter(_FFTMixer):
    """GF (GFFormer): a static per-channel complex filter ``(H, W//2+1, 2C)``."""

    def __init__(self, dim, expansion_ratio=2, act1_layer=StarReLU, act2_layer=nn.Identity, bias=False,
                 size=14, weight_resize=False, **kwargs):
        super().__init__(dim, expansion_ratio, act1_layer, act2_layer, bias, size)
        self.weight_resize = weight_resize
        self._build_pointwise(dim, act1_layer, bias)
        self.complex_weights = nn.Parameter(
            torch.randn(self.size, self.filter_size, self.med_channels, 2, dtype=torch.float32) * 0.02)
        self._build_out(dim, act2_layer, bias)
        self.size_bound = not weight_resize

    def forward(self, x):
        return self._mix(x, x)

    def _spectral(self, x, routing):
        H, W = x.shape[1], x.shape[2]
        x = torch.fft.rfft2(x.to(torch.float32), dim=(1, 2), norm="ortho")
        x = x * _filter_basis(self.complex_weights, x, self.weight_resize, "GlobalFilter")
        return torch.fft.irfft2(x, s=(H, W), dim=(1, 2), norm="ortho")


def complex_block_linear(xr, xi, w, b):
    """Per-block complex linear layer on (..., blocks, bs) real/imag parts.
    ``w``: (2, blocks, bs_in, bs_out); ``b``: (2, blocks, bs_out)."""
    real = torch.einsum("...bi,bio->...bo", xr, w[0]) - torch.einsum("...bi,bio->...bo", xi, w[1]) + b[0]
    imag = torch.einsum("...bi,bio->...bo", xi, w[0]) + torch.einsum("...bi,bio->...bo", xr, w[1]) + b[1]
    return real, imag


class AFNO2D(_FFTMixer):
    """AFNO (DFFormer ablation DF -> AFNO): block-diagonal complex MLP in the frequency domain,
    softshrink, inverse FFT, plus the pre-FFT features, then pwconv2. Unlike the official
    code it reshapes by the actual input grid, so it runs at any resolution."""

    def __init__(self, dim, expansion_ratio=2, act1_layer=StarReLU, act2_layer=nn.Identity, bias=False,
                 size=14, num_blocks=8, sparsity_threshold=0.01, hard_thresholding_fraction=1,
                 hidden_size_factor=1, **kwargs):
        super().__init__(dim, expansion_ratio, act1_layer, act2_layer, bias, size)
        if self.med_channels % num_blocks:
            raise ValueError(f"AFNO2D: hidden size {self.med_channels} must be divisible by num_blocks {num_blocks}")
        self.sparsity_threshold = sparsity_threshold
        self.num_blocks = num_blocks
        self.block_size = self.med_channels // num_blocks
        self.hard_thresholding_fraction = float(hard_thresholding_fraction)
        self.hidden_size_factor = hidden_size_factor
        self.scale = 0.02
        bs, hs = self.block_size, self.block_size * hidden_size_factor
        self.w1 = nn.Parameter(self.scale * torch.randn(2, num_blocks, bs, hs))
        self.b1 = nn.Parameter(self.scale * torch.randn(2, num_blocks, hs))
        self.w2 = nn.Parameter(self.scale * torch.randn(2, num_blocks, hs, bs))
        self.b2 = nn.Parameter(self.scale * torch.randn(2, num_blocks, bs))
        self._build_pointwise(dim, act1_layer, bias)
        self._build_out(dim, act2_layer, bias)

    def forward(self, x):
        return self._mix(x, x)

    def _spectral(self, x, routing):
        x = x.to(torch.float32)
        skip = x
        H, W = x.shape[1], x.shape[2]
        X = torch.fft.rfft2(x, dim=(1, 2), norm="ortho")
        out = _afno_blocks(X, self.w1.float(), self.b1.float(), self.w2.float(), self.b2.float(), self.num_blocks,
                           self.hard_thresholding_fraction, self.sparsity_threshold)
        return torch.fft.irfft2(out, s=(H, W), dim=(1, 2), norm="ortho") + skip


@torch.fx.wrap
def _afno_blocks(X: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                 num_blocks: int, fraction: float, threshold: float) -> torch.Tensor:
    """AFNO's spectral block MLP on the half spectrum ``X`` (B, H, Wf, C): the lowest
    ``fraction`` of the Wf columns through two complex block-diagonal layers (ReLU between),
    softshrink, the others zero. A leaf for ``torch.fx`` (the kept columns follow the input)."""
    B, H, Wf, C = X.shape
    X = X.reshape(B, H, Wf, num_blocks, C // num_blocks)
    kept = int(Wf * fraction)
    Xk = X[:, :, :kept]
    r1, i1 = complex_block_linear(Xk.real, Xk.imag, w1, b1)
    r2, i2 = complex_block_linear(F.relu(r1), F.relu(i1), w2, b2)
    out = torch.stack([r2, i2], dim=-1)
    if kept < Wf:
        out = F.pad(out, (0, 0, 0, 0, 0, 0, 0, Wf - kept))
    out = torch.view_as_complex(F.softshrink(out, lambd=threshold).contiguous())
    return out.reshape(B, H, Wf, C)


register_token_mixer(DynamicFilter, "dynamic_filter", "df", has_act=True)
register_token_mixer(GlobalFilter, "global_filter", "gf", has_act=True)
register_token_mixer(AFNO2D, "afno", has_act=True)

_S18 = dict(depths=[3, 3, 9, 3], dims=[64, 128, 320, 512])
_SIZES = {
    "s18": _S18,
    "s36": dict(depths=[3, 12, 18, 3], dims=[64, 128, 320, 512]),
    "m36": dict(depths=[3, 12, 18, 3], dims=[96, 192, 384, 576]),
    "b36": dict(depths=[3, 12, 18, 3], dims=[128, 256, 512, 768]),
}
_PAPER = {"dfformer": {"s18": 30, "s36": 46, "m36": 65, "b36": 115},
          "cdfformer": {"s18": 30, "s36": 45, "m36": 64, "b36": 113}}


def _reg(name, family, cfg, paper_params, weights=True, variant_of=None, description=""):
    mixers = cfg["token_mixers"] if isinstance(cfg["token_mixers"], list) else [cfg["token_mixers"]]
    register_model(name, family=family, paper=PAPER_DFFORMER, source=f"{SRC_DFFORMER}:{name}()",
                   weight_file=f"{name}.pth" if weights else None,
                   weight_url=f"{URL}/{name}.pth" if weights else None, crop_pct=1.0, feature_layout="NHWC",
                   paper_params_m=paper_params, variant_of=variant_of, description=description,
                   fixed_input_size=bool({"dynamic_filter", "global_filter"} & set(mixers)))(
        _metaformer_builder(dict(cfg, head_fn="MlpHead", input_size=(3, 224, 224))))


for _s, _c in _SIZES.items():
    _reg(f"dfformer_{_s}", "dfformer", dict(_c, token_mixers="dynamic_filter"), _PAPER["dfformer"][_s],
         description="dynamic filter in all stages")
    _reg(f"cdfformer_{_s}", "cdfformer",
         dict(_c, token_mixers=["sepconv", "sepconv", "dynamic_filter", "dynamic_filter"]), _PAPER["cdfformer"][_s],
         description="SepConv in stages 1-2, dynamic filter in 3-4")

_reg("gfformer_s18", "gfformer", dict(_S18, token_mixers="global_filter"), 30, weights=False,
     variant_of="dfformer_s18", description="ablation DF -> static global filter (no released weights)")
_AFNO_FLOPS = ("; FLOPs 4.453 G by fvcore's rules vs the paper's 3.8 G: the AFNO spectral block MLP adds 0.66 G "
               "of einsum MACs the printed figure leaves out (note in spectrascope/assets/papers/dfformer.json)")
_ABLATIONS = {
    "dfformer_s18_k2": (dict(mixer_kwargs={"num_filters": 2}), 29, "ablation N = 4 -> 2 filters"),
    "dfformer_s18_d8": (dict(mixer_kwargs={"reweight_expansion_ratio": 0.125}), 28, "ablation rho = 0.25 -> 0.125"),
    "dfformer_s18_gelu": (dict(act="gelu"), 30, "ablation StarReLU -> GELU (mixer act1 and channel MLP)"),
    "dfformer_s18_relu": (dict(act="relu"), 30, "ablation StarReLU -> ReLU (mixer act1 and channel MLP)"),
    "dfformer_s18_afno": (dict(token_mixers="afno"), 30, "ablation DF -> AFNO" + _AFNO_FLOPS),
    "dfformer_s18_afno_relu": (dict(token_mixers="afno", act="relu"), 30,
                               "ablation StarReLU, DF -> ReLU, AFNO" + _AFNO_FLOPS),
}
for _n, (_extra, _p, _d) in _ABLATIONS.items():
    _cfg = dict(_S18, token_mixers="dynamic_filter")
    _cfg.update(_extra)
    _reg(_n, "dfformer", _cfg, _p, weights=False, variant_of="dfformer_s18", description=_d)

__all__ = ["DynamicFilter", "GlobalFilter", "AFNO2D", "complex_block_linear"]
