"""AFFNet / AFFNet-T / AFFNet-ET (microsoft/TokenMixers, "Adaptive Frequency Filters As
Efficient Global Token Mixers", Huang et al., ICCV 2023) and every ablation of the paper.

Module and parameter names are the official ones (``conv_1``, ``layer_1`` ..
``layer_5``, ``conv_1x1_exp``, ``classifier.fc``; inside an AFF stage
``layer_k.1.global_rep.{j}.{norm1,filter,norm2,mlp}``, the final ``global_rep.{n}`` norm,
``conv_proj`` and ``fusion``), in the official registration order, so the released
state_dicts (BatchNorm buffers and int64 ``num_batches_tracked`` included) load unchanged.
The model is channels-first ``(B, C, H, W)`` throughout and has no resolution-bound
weights: it runs at any input size.

What follows the official code exactly:

* ``conv_1`` 3x3/s2 conv-BN-Swish; ``layer_1``/``layer_2`` MobileNetV2 blocks; each AFF
  stage (``layer_3..5``) is a stride-2 MBConv followed by one ``AFFBlock``:
  ``fusion(cat[x, conv_proj(GN(Blocks(x)))])``; ``conv_1x1_exp`` then mean pool and a
  linear classifier. MBConv hidden width ``make_divisible(round(C * e), 8)``.
* ``Block``: one residual around ``norm1 -> MBConv (own skip) -> norm2 -> AFF``
  (``layer_norm_2d`` = GroupNorm with one group, eps 1e-5).
* AFF mixer: ``X = rfft2(x)`` (ortho, float32, autocast off); the mask net is two complex
  block-diagonal linear layers (8 groups) with the global activation (Swish) on the real
  and imaginary parts, then ``softshrink(0.01)``; ``out = irfft2(M * X) + x`` (the skip
  inside the mixer is official).

What is ours:

* taps (see ``AFFNet.taps``): the instance-adaptive mask ``M`` (``aff_mask``, complex,
  ``(B, C, H, W//2+1)``) and the pure spectral term ``irfft2(M * X)`` before the in-mixer
  skip (``mixer``) are exposed through parameter-free ``TapPoint`` modules;
* every ablation of the paper as a constructor flag (``token_mixer``, ``transform``,
  ``combine``, ``mask_shape``, ``num_blocks``, ``mask_kernel_size``, ``block_order``,
  ``channel_mixer``) and as a registered variant on the AFFNet base (the size the paper's
  ablation tables use); the operators of Table 5 live in ``affnet_ablations.py``.
"""
from __future__ import annotations

import copy
import json
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .affnet_ablations import (ConvMixer, DFFMixer, FFCMixer, FNOMixer, GFNMixer, _SlotMixer, dct2, haar_dwt2,
                               haar_idwt2, idct2, pad_even)
from .base import TapList, TapSpec, ZooModel, block_depths, register_model
from .layers import (DropPath, IdentityMixer, TapPoint, make_activation, normalize_name, register_token_mixer,
                     resolve_token_mixer, spectral_region)

# the transforms branch on the input's size: leaves for torch.fx where the AFF mixer calls them
torch.fx.wrap("dct2")
torch.fx.wrap("idct2")
torch.fx.wrap("haar_dwt2")
torch.fx.wrap("haar_idwt2")
torch.fx.wrap("pad_even")

PAPER_AFFNET = "Adaptive Frequency Filters As Efficient Global Token Mixers (Huang et al., ICCV 2023)"
SRC_AFFNET = ("microsoft/TokenMixers@99dbe38c:Adaptive Frequency Filters/affnet/models/classification/"
              "affnet.py:AffNet")

__all__ = ["AFFNet", "AFFBlock", "Block", "AFFMixer", "InvertedResidual", "ConvLayer", "get_configuration",
           "make_divisible", "OPTS_KEYS"]


# ---------------------------------------------------------------------------- configuration


def _mv2(out_channels, expand_ratio, num_blocks, stride):
    return {"out_channels": out_channels, "expand_ratio": expand_ratio, "num_blocks": num_blocks,
            "stride": stride, "block_type": "mv2"}


def _aff(channels, blocks, expand, no_fuse=False):
    d = {"out_channels": channels, "transformer_channels": channels, "ffn_dim": 2 * channels,
         "transformer_blocks": blocks, "patch_h": 2, "patch_w": 2, "stride": 2, "mv_expand_ratio": expand,
         "head_dim": None, "num_heads": 4, "block_type": "aff_block"}
    if no_fuse:
        d["no_fuse"] = True
    return d


#: The official per-layer tables (the official ``get_configuration``), by mode.
_MODES = {
    "xx_small": (2, [32, 48, 64, 104, 144], [1, 3], [2, 4, 3], ()),
    "x_small": (4, [32, 48, 96, 160, 192], [1, 3], [2, 4, 3], ()),
    "small": (4, [32, 64, 128, 256, 320], [1, 3], [2, 4, 3], ()),
    "base": (4, [64, 128, 256, 512, 640], [1, 3], [2, 4, 3], (4, 5)),
    "large": (4, [64, 128, 256, 512, 768], [2, 6], [4, 18, 6], (4, 5)),
}


def get_configuration(mode: str = "small") -> dict:
    """The official layer table of a mode (``xx_small`` = AFFNet-ET, ``x_small`` = AFFNet-T,
    ``small`` = AFFNet; ``base``/``large`` exist in the code but are not paper models)."""
    key = str(mode).lower()
    if key not in _MODES:
        raise ValueError(f"unknown AFFNet mode {mode!r}; choose from {', '.join(_MODES)}")
    e, ch, mv_blocks, aff_blocks, no_fuse = _MODES[key]
    cfg = {"layer1": _mv2(ch[0], e, mv_blocks[0], 1), "layer2": _mv2(ch[1], e, mv_blocks[1], 2)}
    for i in range(3):
        cfg[f"layer{i + 3}"] = _aff(ch[i + 2], aff_blocks[i], e, no_fuse=(i + 3) in no_fuse)
    cfg["last_layer_exp_factor"] = 4
    return cfg


def _resolve_config(config, mode) -> dict:
    if config is None:
        return get_configuration(mode)
    if isinstance(config, str):
        text = config.strip()
        if text.startswith("{"):
            config = json.loads(text)
        else:
            return get_configuration(text)
    if not isinstance(config, dict):
        raise ValueError(f"config must be a layer table (dict), a JSON string or a mode name, got {type(config).__name__}")
    cfg = copy.deepcopy(config)
    missing = [k for k in ("layer1", "layer2", "layer3", "layer4", "layer5") if k not in cfg]
    if missing:
        raise ValueError(f"config table lacks {', '.join(missing)} (official format: see get_configuration('small'))")
    cfg.setdefault("last_layer_exp_factor", 4)
    return cfg


#: official ``opts`` keys (cvnets argparse names, '-' or '_') -> constructor arguments
OPTS_KEYS = {
    "model.classification.affnet.mode": "mode",
    "model.classification.n_classes": "num_classes",
    "model.classification.classifier_dropout": "classifier_dropout",
    "model.classification.affnet.attn_norm_layer": "attn_norm_layer",
    "model.activation.name": "activation",
    "model.activation.sparsity_threshold": "sparsity_threshold",
    "model.normalization.name": "normalization",
    "model.normalization.momentum": "norm_momentum",
    "model.layer.global_pool": "global_pool",
}
_OPTS_CHECKED = {"model.classification.name": "affnet", "dataset.category": "classification"}


def opts_to_kwargs(opts: dict) -> dict:
    """Translate cvnets ``opts`` (dotted keys, e.g. a fixture's ``affnet_opts_applied``)."""
    out = {}
    for key, value in dict(opts).items():
        k = key.replace("-", "_")
        if k in _OPTS_CHECKED:
            if str(value).lower() != _OPTS_CHECKED[k]:
                raise ValueError(f"opts {key}={value!r}: only {_OPTS_CHECKED[k]!r} is supported here")
            continue
        if k not in OPTS_KEYS:
            raise ValueError(f"unsupported AFFNet opts key {key!r}; known: {', '.join(sorted(OPTS_KEYS))}")
        out[OPTS_KEYS[k]] = value
    return out


def make_divisible(v, divisor: int = 8, min_value: int | None = None) -> int:
    """MobileNet rounding: nearest multiple of ``divisor`` (at least ``min_value``), bumped
    up by one step when rounding lost more than 10%."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


# ---------------------------------------------------------------------------- layers

class ChannelLayerNorm(nn.Module):
    """cvnets ``layer_norm`` on NCHW input: per-pixel statistics over C,
    ``(x - mean) / (std + eps)`` (biased std, eps added to the std), then the affine."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.eps = eps

    def forward(self, x):
        s, u = torch.std_mean(x, dim=1, keepdim=True, unbiased=False)
        x = (x - u) / (s + self.eps)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return torch.addcmul(self.bias.reshape(shape), x, self.weight.reshape(shape))


def make_block_norm(kind: str, dim: int) -> nn.Module:
    key = normalize_name(kind)
    if key in ("layernorm2d", "layernormnchw", "groupnorm1"):
        return nn.GroupNorm(num_groups=1, num_channels=dim, eps=1e-5, affine=True)
    if key == "layernorm":
        return ChannelLayerNorm(dim)
    raise ValueError(f"unknown attn_norm_layer {kind!r}; choose 'layer_norm_2d' (released models) or 'layer_norm'")


class ConvLayer(nn.Module):
    """cvnets ConvLayer: ``block = Sequential(conv, norm?, act?)``; no conv bias when a
    BatchNorm follows; padding ``(k-1)/2 * dilation``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1, dilation=1, use_norm=True,
                 use_act=True, act="swish", normalization="batch_norm", norm_momentum=0.1):
        super().__init__()
        if use_norm and normalize_name(normalization) not in ("batchnorm", "syncbatchnorm", "batchnorm2d"):
            raise ValueError(f"normalization {normalization!r} is not supported; the released AFFNets use "
                             "batch_norm / sync_batch_norm (same state_dict entries)")
        pad = (kernel_size - 1) // 2 * dilation
        block = nn.Sequential()
        block.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=pad,
                                           dilation=dilation, groups=groups, bias=not use_norm))
        if use_norm:
            block.add_module("norm", nn.BatchNorm2d(out_channels, momentum=norm_momentum))
        if use_act:
            block.add_module("act", make_activation(act)())
        self.block = block

    def forward(self, x):
        return self.block(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand, BN, act] (if e != 1) -> 3x3 depthwise (stride), BN,
    act -> 1x1 reduce, BN; skip when ``stride == 1 and in == out``.

    ``depthwise=False`` drops the 3x3 depthwise layer (the FFN channel mixer of the paper's
    Table 14: two cascaded pointwise layers)."""

    def __init__(self, in_channels, out_channels, stride, expand_ratio, dilation=1, skip_connection=True,
                 depthwise=True, **conv_kw):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = make_divisible(int(round(in_channels * expand_ratio)), 8)
        block = nn.Sequential()
        if expand_ratio != 1:
            block.add_module("exp_1x1", ConvLayer(in_channels, hidden, 1, use_act=True, **conv_kw))
        if depthwise:
            block.add_module("conv_3x3", ConvLayer(hidden, hidden, 3, stride=stride, groups=hidden, dilation=dilation,
                                                   use_act=True, **conv_kw))
        elif stride != 1:
            raise ValueError("the FFN channel mixer has no strided layer")
        block.add_module("red_1x1", ConvLayer(hidden, out_channels, 1, use_act=False, **conv_kw))
        self.block = block
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.use_res_connect = stride == 1 and in_channels == out_channels and skip_connection

    def forward(self, x):
        return x + self.block(x) if self.use_res_connect else self.block(x)


class GlobalPool(nn.Module):
    """Global pooling over (H, W) (cvnets ``GlobalPool``, ``keep_dim=False``)."""

    def __init__(self, pool_type: str = "mean"):
        super().__init__()
        if pool_type not in ("mean", "max"):
            raise ValueError(f"global_pool {pool_type!r} not supported (mean, max)")
        self.pool_type = pool_type

    def forward(self, x):
        if self.pool_type == "":            # no pooling (timm's global_pool='')
            return x
        return x.mean(dim=(-2, -1)) if self.pool_type == "mean" else x.amax(dim=(-2, -1))


# ---------------------------------------------------------------------------- AFF mixer


def _group_lin(t: torch.Tensor, m: torch.Tensor, groups: int) -> torch.Tensor:
    B, C, H, W = t.shape
    return torch.einsum("bkihw,kio->bkohw", t.reshape(B, groups, -1, H, W), m)


def _group_conv(t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    g, bi, bo, k, _ = m.shape
    weight = m.permute(0, 2, 1, 3, 4).reshape(g * bo, bi, k, k)
    return F.conv2d(t, weight, padding=k // 2, groups=g)


def _group_linear(xr: torch.Tensor, xi: Optional[torch.Tensor], w: torch.Tensor, b: torch.Tensor, kernel_size: int,
                  groups: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Complex group-linear (or group-conv) layer on real/imag parts ``(B, C, H, W)``.

    ``w``: ``(2, G, b_in, b_out)`` (k = 1, the official layout) or ``(2, G, b_in, b_out, k, k)``;
    ``b``: ``(2, G, b_out)``. Returns ``Re = xr*Wr - xi*Wi + Br``, ``Im = xi*Wr + xr*Wi + Bi``.
    ``xi=None`` means a real input (imaginary part zero)."""
    B, C, H, W = xr.shape
    if kernel_size == 1:
        re = _group_lin(xr, w[0], groups) + b[0, :, :, None, None]
        im = _group_lin(xr, w[1], groups) + b[1, :, :, None, None]
        if xi is not None:
            re = re - _group_lin(xi, w[1], groups)
            im = im + _group_lin(xi, w[0], groups)
        return re.reshape(B, -1, H, W), im.reshape(B, -1, H, W)
    re = _group_conv(xr, w[0]) + b[0].reshape(1, -1, 1, 1)
    im = _group_conv(xr, w[1]) + b[1].reshape(1, -1, 1, 1)
    if xi is not None:
        re = re - _group_conv(xi, w[1])
        im = im + _group_conv(xi, w[0])
    return re, im


_TRANSFORMS = {"fft": "fft", "rfft": "fft", "fourier": "fft", "none": "identity", "identity": "identity",
               "nofft": "identity", "dct": "dct", "dwt": "dwt", "haar": "dwt", "wavelet": "dwt"}
_COMBINES = {"product": "product", "mul": "product", "hadamard": "product", "sum": "sum", "add": "sum",
             "none": "none", "afno": "none"}


class AFFMixer(_SlotMixer):
    """The AFF token mixer (official class ``AFNO2D_channelfirst``) and its ablations.

    Official computation (defaults): ``X = rfft2(x)``; ``M = softshrink(GL2(act(GL1(X))))``
    with complex block-diagonal linear layers ``GL`` (``num_blocks`` groups; ``w1 (2, G,
    b, b)``, ``b1 (2, G, b)``, ``w2``, ``b2``); ``out = irfft2(M * X) + x``.

    Ablation flags (the paper's Tables 4-7 and 12):

    * ``transform``: ``'fft'`` (official), ``'identity'`` ("AFF w/o FFT": the same mask net
      and product on ``x`` itself), ``'dct'`` (orthonormal DCT-II / DCT-III), ``'dwt'``
      (one-level orthonormal Haar DWT, sub-bands tiled; odd sizes are zero-padded and the
      output cropped). For these real transforms the mask net sees a real input (imaginary
      part zero, so all its weights still act) and the real part of its complex output is
      the mask: ``out = T^-1(Re(M) * T(x)) + x``.
    * ``combine``: ``'product'`` (official), ``'sum'`` ("AFF w. SUM": ``T^-1(M + T(x))``),
      ``'none'`` (the mask net output itself, i.e. AFNO).
    * ``mask_shape``: ``'CHW'`` or ``'1HW'`` (Table 6: the learned mask averaged over the
      channels, shared by all channels).
    * ``num_blocks``: groups of both group-linear layers (official 8; ``'C'`` = depthwise;
      1 = dense) (Table 7).
    * ``mask_kernel_size``: spatial kernel of the two mask layers over the frequency grid
      (Table 7: 3 = grouped 3x3 convolutions, zero padded; weights ``(2, G, b, b, k, k)``).
    * ``act``: activation of the mask net (official: the global activation, Swish in the
      released configs; the paper's text says ReLU).
    """

    def __init__(self, dim: int, num_blocks=8, sparsity_threshold: float = 0.01, act="swish",
                 transform: str = "fft", combine: str = "product", mask_shape: str = "CHW",
                 mask_kernel_size: int = 1, in_mixer_skip: bool = True, hidden_size_factor: int = 1, **kwargs):
        super().__init__(in_mixer_skip)
        groups = dim if (isinstance(num_blocks, str) and num_blocks.upper() == "C") else int(num_blocks)
        if groups < 1 or dim % groups:
            raise ValueError(f"AFF mixer: {dim} channels are not divisible into num_blocks={num_blocks} groups")
        if hidden_size_factor != 1:
            raise ValueError("hidden_size_factor != 1 is not supported (the official mixer uses 1)")
        t, c = normalize_name(transform), normalize_name(combine)
        if t not in _TRANSFORMS:
            raise ValueError(f"unknown transform {transform!r}; choose fft, identity, dct or dwt")
        if c not in _COMBINES:
            raise ValueError(f"unknown combine {combine!r}; choose product, sum or none")
        ms = str(mask_shape).upper().replace("X", "").replace("×", "")
        if ms not in ("CHW", "1HW"):
            raise ValueError(f"mask_shape must be 'CHW' or '1HW', got {mask_shape!r}")
        k = int(mask_kernel_size)
        if k < 1 or k % 2 == 0:
            raise ValueError(f"mask_kernel_size must be odd and >= 1, got {mask_kernel_size}")
        self.hidden_size = dim
        self.num_blocks = groups
        self.block_size = dim // groups
        self.sparsity_threshold = float(sparsity_threshold)
        self.transform, self.combine, self.mask_shape, self.kernel_size = _TRANSFORMS[t], _COMBINES[c], ms, k
        self.scale = 0.02
        bs = self.block_size
        ks = (k, k) if k > 1 else ()
        self.w1 = nn.Parameter(self.scale * torch.randn(2, groups, bs, bs, *ks))
        self.b1 = nn.Parameter(self.scale * torch.randn(2, groups, bs))
        self.w2 = nn.Parameter(self.scale * torch.randn(2, groups, bs, bs, *ks))
        self.b2 = nn.Parameter(self.scale * torch.randn(2, groups, bs))
        self.act = make_activation(act)()
        self.act2 = make_activation(act)()
        self.mask_tap = TapPoint()

    def spectral_taps(self):
        if self.transform == "fft":
            shape = "(B, C, H, W//2+1)" if self.mask_shape == "CHW" else "(B, 1, H, W//2+1)"
            note = f"instance-adaptive frequency mask M {shape}, complex64 (after softshrink)"
        else:
            shape = "(B, C, H, W)" if self.mask_shape == "CHW" else "(B, 1, H, W)"
            note = f"mask Re(M) {shape} on the {self.transform} coefficients, float32 (after softshrink)"
        return [("aff_mask", "mask_tap", "raw", note)]

    def extra_repr(self) -> str:
        return (f"dim={self.hidden_size}, num_blocks={self.num_blocks}, transform={self.transform}, "
                f"combine={self.combine}, mask_shape={self.mask_shape}, kernel_size={self.kernel_size}, "
                f"skip={self.in_mixer_skip}")

    def _mask(self, xr, xi: Optional[torch.Tensor]):
        g, k = self.num_blocks, self.kernel_size
        # the mask net runs in float32 (a no-op cast for a float32 model; a half-precision one stays usable)
        r1, i1 = _group_linear(xr, xi, self.w1.float(), self.b1.float(), k, g)
        r1, i1 = self.act(r1), self.act2(i1)
        r2, i2 = _group_linear(r1, i1, self.w2.float(), self.b2.float(), k, g)
        m = F.softshrink(torch.stack([r2, i2], dim=-1), lambd=self.sparsity_threshold)
        return torch.view_as_complex(m)

    def _spectral(self, x):
        x = x.float()
        H, W = x.shape[2], x.shape[3]
        if self.transform == "fft":
            X = torch.fft.rfft2(x, dim=(2, 3), norm="ortho")
            M = self._mask(X.real, X.imag)
        else:
            if self.transform == "identity":
                X = x
            elif self.transform == "dct":
                X = dct2(x)
            else:
                X = haar_dwt2(pad_even(x))
            M = self._mask(X, None).real
        if self.mask_shape == "1HW":
            M = M.mean(dim=1, keepdim=True)
        M = self.mask_tap(M)
        if self.combine == "product":
            Y = M * X
        elif self.combine == "sum":
            Y = M + X
        else:
            Y = M.expand_as(X)
        if self.transform == "fft":
            y = torch.fft.irfft2(Y, s=(H, W), dim=(2, 3), norm="ortho")
        elif self.transform == "identity":
            y = Y
        elif self.transform == "dct":
            y = idct2(Y)
        else:
            y = haar_idwt2(Y)[..., :H, :W]
        return y

    def forward(self, x):
        if torch.jit.is_scripting():
            y = self._spectral(x)
        else:
            with spectral_region(x):
                y = self._spectral(x)
        y = self.spectral_tap(y.to(x.dtype))
        return y + x if self.in_mixer_skip else y


class AFNOMixer(AFFMixer):
    """AFNO operator (Guibas et al., "Adaptive Fourier Neural Operators", ICLR 2022), as the
    AFFNet paper describes it: FFT -> block-diagonal complex Linear -> ReLU -> Linear ->
    SoftShrink -> iFFT, with the input added back (AFNO's bias skip). It is the AFF mixer
    without the product with ``X`` (same parameters); the activation is AFNO's ReLU."""

    def __init__(self, dim: int, num_blocks=8, sparsity_threshold: float = 0.01, act="relu",
                 in_mixer_skip: bool = True, **kwargs):
        kwargs.pop("combine", None)
        kwargs.pop("transform", None)
        super().__init__(dim, num_blocks=num_blocks, sparsity_threshold=sparsity_threshold, act=act,
                         transform="fft", combine="none", in_mixer_skip=in_mixer_skip, **kwargs)

    def spectral_taps(self):
        return []


# the operators of the ``Block.filter`` slot (NCHW) in the zoo's token mixer table
register_token_mixer(AFFMixer, "aff", "afnochannelfirst", "afno2dchannelfirst", layout="NCHW")
register_token_mixer(ConvMixer, "conv", "conv3x3", layout="NCHW")
register_token_mixer(AFNOMixer, "afno", layout="NCHW")
register_token_mixer(GFNMixer, "gfn", "gfnet", "globalfilter", layout="NCHW")
register_token_mixer(FFCMixer, "ffc", "fourierunit", layout="NCHW")
register_token_mixer(DFFMixer, "dff", layout="NCHW")
register_token_mixer(FNOMixer, "fno", layout="NCHW")


# ---------------------------------------------------------------------------- blocks


class Block(nn.Module):
    """AFF block (official ``aff_block.Block``): one residual around
    ``norm1 -> mlp (MBConv, own skip) -> norm2 -> filter (token mixer, own skip)``.

    ``block_order='token_first'`` (Table 13) swaps the two mixers: ``norm1 -> filter ->
    norm2 -> mlp``. ``double_skip`` (official flag, off in every released model) adds a
    residual after the channel mixer."""

    def __init__(self, dim, ffn_dim, mixer: nn.Module, attn_norm_layer="layer_norm_2d", double_skip=False,
                 drop_path=0.0, block_order="channel_first", channel_mixer="mbconv", **conv_kw):
        super().__init__()
        self.norm1 = make_block_norm(attn_norm_layer, dim)
        self.filter = mixer
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = make_block_norm(attn_norm_layer, dim)
        cm = normalize_name(channel_mixer)
        if cm not in ("mbconv", "ffn"):
            raise ValueError(f"channel_mixer must be 'mbconv' or 'ffn', got {channel_mixer!r}")
        self.mlp = InvertedResidual(dim, dim, stride=1, expand_ratio=ffn_dim / dim, depthwise=(cm == "mbconv"),
                                    **conv_kw)
        order = normalize_name(block_order)
        if order not in ("channelfirst", "tokenfirst"):
            raise ValueError(f"block_order must be 'channel_first' or 'token_first', got {block_order!r}")
        self.token_first = order == "tokenfirst"
        self.double_skip = double_skip

    def forward(self, x):
        residual = x
        if self.token_first:
            x = self.filter(self.norm1(x))
        else:
            x = self.mlp(self.norm1(x))
        if self.double_skip:
            x = x + residual
            residual = x
        if self.token_first:
            x = self.mlp(self.norm2(x))
        else:
            x = self.filter(self.norm2(x))
        return self.drop_path(x) + residual


class AFFBlock(nn.Module):
    """One AFF stage body (official ``AFFBlock``): ``global_rep`` = the Blocks + a final
    norm, ``conv_proj`` (1x1 conv + BN), ``fusion`` (1x1 conv on ``cat[input, projected]`` +
    BN + act; absent when ``no_fuse``)."""

    def __init__(self, in_channels, transformer_dim, ffn_dim, n_blocks, make_mixer, attn_norm_layer="layer_norm_2d",
                 no_fusion=False, drop_paths=None, block_kw=None, **conv_kw):
        super().__init__()
        if transformer_dim != in_channels:
            raise ValueError(f"transformer_channels ({transformer_dim}) must equal out_channels ({in_channels}): "
                             "the official AFFBlock has no input projection")
        drop_paths = drop_paths or [0.0] * n_blocks
        blocks = [Block(transformer_dim, ffn_dim, make_mixer(transformer_dim), attn_norm_layer=attn_norm_layer,
                        drop_path=drop_paths[j], **(block_kw or {}), **conv_kw) for j in range(n_blocks)]
        blocks.append(make_block_norm(attn_norm_layer, transformer_dim))
        self.global_rep = nn.Sequential(*blocks)
        self.conv_proj = ConvLayer(transformer_dim, in_channels, 1, use_act=False, **conv_kw)
        self.fusion = None if no_fusion else ConvLayer(2 * in_channels, in_channels, 1, use_act=True, **conv_kw)
        self.n_blocks = n_blocks

    def forward(self, x):
        fm = self.conv_proj(self.global_rep(x))
        if self.fusion is not None:
            fm = self.fusion(torch.cat((x, fm), dim=1))
        return fm


# ---------------------------------------------------------------------------- network


def _half(n: int) -> int:
    return (n - 1) // 2 + 1  # 3x3 stride-2 conv with padding 1


class AFFNet(ZooModel):
    """AFFNet (official class ``AffNet``), built from a mode or an official layer table.

    Official arguments: ``mode`` (``xx_small``/``x_small``/``small``), ``config`` (a layer
    table in the official ``get_configuration`` format; overrides ``mode``),
    ``num_classes`` (``n_classes``), ``classifier_dropout``, ``global_pool``,
    ``activation`` (``model.activation.name``; Swish in the released configs, also used by
    the AFF mask net), ``normalization`` (BatchNorm), ``norm_momentum``,
    ``attn_norm_layer`` (``layer_norm_2d``, released; ``layer_norm`` = the argparse
    default), ``sparsity_threshold``. Ablation flags: see ``AFFMixer`` and ``Block``;
    ``token_mixer`` picks the operator in every ``Block.filter`` slot; ``mixer_kwargs`` go
    to that operator. ``input_size`` only sizes the resolution-bound ablation operators
    (GFN, FNO) and the tap grids; the official model runs at any input size.
    """

    feature_layout = "NCHW"

    def __init__(self, mode="small", config=None, num_classes=1000, classifier_dropout=0.0, global_pool="mean",
                 activation="swish", normalization="batch_norm", norm_momentum=0.1, attn_norm_layer="layer_norm_2d",
                 sparsity_threshold=0.01, in_chans=3, input_size=(3, 256, 256), drop_path_rate=0.0,
                 token_mixer="aff", transform="fft", combine="product", mask_shape="CHW", num_blocks=8,
                 mask_kernel_size=1, mask_act=None, in_mixer_skip=True, block_order="channel_first",
                 channel_mixer="mbconv", double_skip=False, mixer_kwargs=None):
        super().__init__()
        cfg = _resolve_config(config, mode)
        self.config = cfg
        self.mode = mode
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.input_size = tuple(input_size)
        conv_kw = dict(act=activation, normalization=normalization, norm_momentum=norm_momentum)
        mixer_cls = resolve_token_mixer(token_mixer, layout="NCHW")[0]
        self.token_mixer_name = mixer_cls.__name__
        mixer_kw = dict(mixer_kwargs or {})
        if mixer_cls in (AFFMixer, AFNOMixer):
            defaults = dict(num_blocks=num_blocks, sparsity_threshold=sparsity_threshold,
                            mask_kernel_size=mask_kernel_size, in_mixer_skip=in_mixer_skip)
            if mixer_cls is AFFMixer:
                defaults.update(transform=transform, combine=combine, mask_shape=mask_shape,
                                act=mask_act or activation)
            elif mask_act:
                defaults["act"] = mask_act
            mixer_kw = {**defaults, **mixer_kw}
        elif mixer_cls is not IdentityMixer:
            mixer_kw.setdefault("in_mixer_skip", in_mixer_skip)

        # feature grids (H, W) after conv_1 and every layer
        H, W = self.input_size[1:]
        grid = (_half(H), _half(W))
        self.grids = {"conv_1": grid}
        aff_layers = [k for k in range(1, 6) if cfg[f"layer{k}"].get("block_type", "aff_block").lower() == "aff_block"]
        n_aff_blocks = [cfg[f"layer{k}"].get("transformer_blocks", 1) for k in aff_layers]
        dp = [v.item() for v in torch.linspace(0, drop_path_rate, max(sum(n_aff_blocks), 1), device="cpu")]
        self.depths = {}

        self.conv_1 = ConvLayer(in_chans, 16, 3, stride=2, use_act=True, **conv_kw)
        in_ch = 16
        cur = 0
        for k in range(1, 6):
            lc = cfg[f"layer{k}"]
            if lc.get("stride", 1) == 2:
                grid = (_half(grid[0]), _half(grid[1]))
            self.grids[f"layer_{k}"] = grid
            if lc.get("block_type", "aff_block").lower() == "aff_block":
                n = lc.get("transformer_blocks", 1)
                g = grid

                def make_mixer(dim, g=g):
                    return mixer_cls(dim, grid=g, **mixer_kw)
                layer, in_ch = self._make_aff_layer(in_ch, lc, make_mixer, attn_norm_layer, dp[cur:cur + n],
                                                    dict(block_order=block_order, channel_mixer=channel_mixer,
                                                         double_skip=double_skip), conv_kw)
                self.depths[k] = n
                cur += n
            else:
                layer, in_ch = self._make_mobilenet_layer(in_ch, lc, conv_kw)
            self.add_module(f"layer_{k}", layer)
        exp = min(cfg.get("last_layer_exp_factor", 4) * in_ch, 960)
        self.conv_1x1_exp = ConvLayer(in_ch, exp, 1, use_act=True, **conv_kw)
        self.classifier = nn.Sequential()
        self.classifier.add_module("global_pool", GlobalPool(global_pool))
        if 0.0 < classifier_dropout < 1.0:
            self.classifier.add_module("dropout", nn.Dropout(p=classifier_dropout))
        self.num_features = self.head_hidden_size = exp
        self.global_pool_type = {"mean": "avg", "max": "max"}[global_pool]
        self.classifier.add_module("fc", self._make_classifier(num_classes))
        reductions, r = [], 2
        for k in range(1, 6):
            r *= cfg[f"layer{k}"].get("stride", 1)
            reductions.append(r)
        self.feature_info = self._feature_info([cfg[f"layer{k}"]["out_channels"] for k in range(1, 6)], reductions,
                                               [f"layer_{k}" for k in range(1, 6)])

    def _make_classifier(self, num_classes: int) -> nn.Module:
        # official init: cvnets' initialize_weights is a no-op for this model (PyTorch
        # defaults everywhere); the classifier's LinearLayer is xavier-uniform, bias 0.
        if num_classes <= 0:
            return nn.Identity()
        fc = nn.Linear(self.num_features, num_classes, bias=True)
        nn.init.xavier_uniform_(fc.weight)
        nn.init.zeros_(fc.bias)
        return fc

    @staticmethod
    def _make_mobilenet_layer(in_ch, cfg, conv_kw):
        out = cfg.get("out_channels")
        blocks = []
        for i in range(cfg.get("num_blocks", 2)):
            stride = cfg.get("stride", 1) if i == 0 else 1
            blocks.append(InvertedResidual(in_ch, out, stride=stride, expand_ratio=cfg.get("expand_ratio", 4),
                                           **conv_kw))
            in_ch = out
        return nn.Sequential(*blocks), in_ch

    @staticmethod
    def _make_aff_layer(in_ch, cfg, make_mixer, attn_norm_layer, drop_paths, block_kw, conv_kw):
        blocks = []
        if cfg.get("stride", 1) == 2:
            blocks.append(InvertedResidual(in_ch, cfg["out_channels"], stride=2,
                                           expand_ratio=cfg.get("mv_expand_ratio", 4), **conv_kw))
            in_ch = cfg["out_channels"]
        dim = cfg["transformer_channels"]
        blocks.append(AFFBlock(in_ch, dim, cfg.get("ffn_dim"), cfg.get("transformer_blocks", 1), make_mixer,
                               attn_norm_layer=attn_norm_layer, no_fusion=cfg.get("no_fuse", False),
                               drop_paths=drop_paths, block_kw=block_kw, **conv_kw))
        return nn.Sequential(*blocks), in_ch

    # ------------------------------------------------------------------ forward
    first_conv = "conv_1.block.conv"
    classifier_name = classifier_slot = "classifier.fc"
    pool_types = ("avg", "max", "")

    def _stages_forward(self, x):
        x = self.conv_1(x)
        for k in range(1, 6):
            x = self._run_blocks(getattr(self, f"layer_{k}"), x)
            yield x

    def _final_features(self, x):
        """The ``conv_1x1_exp`` map (B, num_features, H/32, W/32)."""
        return self.conv_1x1_exp(x)

    def forward_features(self, x):
        """The ``conv_1x1_exp`` map (B, num_features, H/32, W/32)."""
        if not torch.jit.is_scripting():
            if self.grad_checkpointing:
                return self._forward_levels(x)
        x = self.conv_1(x)
        x = self.layer_1(x)
        x = self.layer_2(x)
        x = self.layer_3(x)
        x = self.layer_4(x)
        x = self.layer_5(x)
        return self.conv_1x1_exp(x)

    def forward_head(self, x, pre_logits: bool = False):
        """Global pool (and dropout): ``pre_logits``; then the classifier."""
        x = self.classifier.global_pool(x)
        if hasattr(self.classifier, "dropout"):
            x = self.classifier.dropout(x)
        return x if pre_logits else self.classifier.fc(x)

    def _set_global_pool(self, global_pool: str) -> None:
        """timm's ``global_pool``: 'avg' (the official mean), 'max' or '' (none: ``forward_head`` gives the map)."""
        super()._set_global_pool(global_pool)
        self.classifier.global_pool.pool_type = {"avg": "mean", "max": "max", "": ""}[global_pool]

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^conv_1\.", blocks=[(r"^layer_(\d+)" if coarse else r"^layer_(\d+)\.(\d+)", None),
                                               (r"^conv_1x1_exp", (99999,))])

    # ------------------------------------------------------------------ taps
    def taps(self) -> TapList:
        """Execution-ordered taps, all NCHW except ``aff_mask`` (raw) and ``pool`` (NC).

        Stages are the five official layers, 1-based (stage k = ``layer_k``); the stem
        (``conv_1``) belongs to stage 1. ``downsample{k}`` = the stride-2 MBConv that opens
        ``layer_k`` (k = 2..5). Blocks are ``layer_k.1.global_rep.{j}`` (stages 3-5):
        ``s{k}.b{j}.mlp`` (the MBConv channel mixer), ``.aff_mask`` (the mask),
        ``.mixer`` (the token-mixing term without the in-mixer skip), ``.block``.
        ``stage{k}`` is the layer output, ``pool`` the pooled ``conv_1x1_exp`` features."""
        t = TapList()
        t.append(TapSpec("stem", "stem", "conv_1", "NCHW", stage=1, grid=self.grids["conv_1"]))
        aff = [k for k in range(1, 6) if k in self.depths]
        depth_iter = block_depths([self.depths[k] for k in aff])
        for k in range(1, 6):
            grid = self.grids[f"layer_{k}"]
            layer = getattr(self, f"layer_{k}")
            first = layer[0]
            if isinstance(first, InvertedResidual) and first.stride == 2:
                t.append(TapSpec(f"downsample{k}", "downsample", f"layer_{k}.0", "NCHW", stage=k, grid=grid,
                                 note="stride-2 MBConv"))
            if k in self.depths:
                idx = len(layer) - 1
                for j in range(self.depths[k]):
                    _, _, depth = next(depth_iter)
                    p = f"layer_{k}.{idx}.global_rep.{j}"
                    blk = layer[idx].global_rep[j]
                    pre = f"s{k}.b{j}"
                    mlp = TapSpec(f"{pre}.mlp", "mlp", f"{p}.mlp", "NCHW", k, j, grid=grid, depth=depth,
                                  note="MBConv channel mixer (with its own skip)")
                    mixer = [TapSpec(f"{pre}.{role}", role, f"{p}.filter.{sub}", layout, k, j, grid=grid, depth=depth,
                                     note=note) for role, sub, layout, note in blk.filter.spectral_taps()]
                    mixer.append(TapSpec(f"{pre}.mixer", "mixer", f"{p}.filter.spectral_tap", "NCHW", k, j, grid=grid,
                                         depth=depth, note="token-mixer output without the in-mixer skip"))
                    t.extend(mixer + [mlp] if blk.token_first else [mlp] + mixer)
                    t.append(TapSpec(f"{pre}.block", "block", p, "NCHW", k, j, grid=grid, depth=depth))
            t.append(TapSpec(f"stage{k}", "stage", f"layer_{k}", "NCHW", stage=k, grid=grid))
        t.append(TapSpec("pool", "pool", "classifier.global_pool", "NC",
                         note="global mean of the conv_1x1_exp features"))
        return t


# ---------------------------------------------------------------------------- registry

_MODE_OF = {"affnet": "small", "affnet_t": "x_small", "affnet_et": "xx_small"}
_PAPER_PARAMS = {"affnet": 5.5, "affnet_t": 2.6, "affnet_et": 1.4}
_TOP1 = {"affnet": 79.8, "affnet_t": 77.0, "affnet_et": 73.0}
_SIG = ("mode", "config", "classifier_dropout", "global_pool", "activation", "normalization", "norm_momentum",
        "attn_norm_layer", "sparsity_threshold", "in_chans", "input_size", "drop_path_rate", "token_mixer",
        "transform", "combine", "mask_shape", "num_blocks", "mask_kernel_size", "mask_act", "in_mixer_skip",
        "block_order", "channel_mixer", "double_skip", "mixer_kwargs")
_ALIASES = {"n_classes": "num_classes", "num_groups": "num_blocks", "n_groups": "num_blocks"}


def _affnet_builder(defaults: dict):
    def build(num_classes=1000, img_size=None, opts=None, **overrides):
        kw = dict(defaults)
        explicit = {}
        if opts:
            explicit.update(opts_to_kwargs(opts))
        for key, value in overrides.items():
            key = _ALIASES.get(key, key)
            if key not in _SIG and key != "num_classes":
                raise TypeError(f"unexpected argument {key!r}; AFFNet accepts opts, n_classes, "
                                + ", ".join(_SIG))
            explicit[key] = value
        if "num_classes" in explicit:
            n = int(explicit.pop("num_classes"))
            if num_classes not in (1000, n):
                raise ValueError(f"num_classes={num_classes} conflicts with n_classes={n}")
            num_classes = n
        if "config" in explicit and "mode" not in explicit:
            kw.pop("mode", None)
        kw.update(explicit)
        if img_size is not None:
            kw["input_size"] = (3, *img_size)
        elif "input_size" in kw:
            kw["input_size"] = tuple(kw["input_size"])
        return AFFNet(num_classes=num_classes, **kw)
    return build


def _register(name, cfg, paper_params, description, variant_of=None, aliases=(), weight_file=None, table=""):
    register_model(name, family="affnet", paper=PAPER_AFFNET, aliases=aliases, source=SRC_AFFNET,
                   default_input_size=(3, 256, 256), feature_layout="NCHW", crop_pct=0.888, interpolation="bicubic",
                   mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), weight_file=weight_file, weight_url=None,
                   paper_params_m=paper_params, variant_of=variant_of,
                   fixed_input_size=cfg.get("token_mixer") in ("gfn", "fno"),
                   description=description + (f" [{table}]" if table else ""))(_affnet_builder(cfg))


#: The official weights are in OneDrive folders linked from the README (model, log and
#: config per variant); the cvnets EMA checkpoints are plain state_dicts named
#: ``checkpoint_ema_score_<top-1>.pt`` (the AFFNet-ET name is the one reported by a
#: third-party study of the released files; the others follow the pattern).
_WEIGHTS = "; official weights: OneDrive links in the TokenMixers README (cvnets EMA state_dict)"
_register("affnet", {"mode": "small"}, 5.5,
          "AFFNet (mode small); top-1 79.8; inputs in [0, 1], no mean/std" + _WEIGHTS,
          aliases=("affnet_small",), weight_file="checkpoint_ema_score_*.pt")
_register("affnet_t", {"mode": "x_small"}, 2.6,
          "AFFNet-T (mode x_small); top-1 77.0; inputs in [0, 1], no mean/std" + _WEIGHTS,
          aliases=("affnet_x_small", "affnet_tiny"), weight_file="checkpoint_ema_score_*.pt")
_register("affnet_et", {"mode": "xx_small"}, 1.4,
          "AFFNet-ET (mode xx_small); top-1 73.0; inputs in [0, 1], no mean/std" + _WEIGHTS,
          aliases=("affnet_xx_small", "affnet_extremely_tiny"), weight_file="checkpoint_ema_score_73.0238.pt")

#: the paper's ablations, all on the AFFNet (mode small) base: name -> (flags, paper params
#: [M], paper top-1, table, description)
_FLOPS_NOTE = " (FLOPs note in spectrascope/assets/papers/affnet.json)"
ABLATIONS = {
    "affnet_no_mixer": (dict(token_mixer="none"), 5.2, 77.9, "Tables 4/5",
                        "Base.: every AFF token mixer replaced by the identity; 1.426 G by fvcore's rules vs the "
                        "paper's 1.3 G, 5.26 M parameters (paper 5.2)" + _FLOPS_NOTE),
    "affnet_conv3x3": (dict(token_mixer="conv3x3"), 10.7, 78.6, "Table 4",
                       "Base. + Conv-Mixer (3x3): dense 3x3 convolution as token mixer; 2.509 G by fvcore's rules "
                       "vs the paper's 2.7 G, 10.68 M parameters (paper 10.7)" + _FLOPS_NOTE),
    "affnet_nofft": (dict(transform="identity"), 5.5, 78.4, "Tables 4/12",
                     "Base. + AFF w/o FFT: the same adaptive filtering in the original space"),
    "affnet_afno": (dict(token_mixer="afno"), 5.5, 78.8, "Table 5", "Base. + AFNO"),
    "affnet_gfn": (dict(token_mixer="gfn"), 6.5, 79.1, "Table 5",
                   "Base. + GFN: static global filter (bound to the build resolution); 1.426 G by fvcore's rules "
                   "(element-wise filtering is free) vs the paper's 1.5 G, 5.91 M parameters vs 6.5" + _FLOPS_NOTE),
    "affnet_ffc": (dict(token_mixer="ffc"), 7.7, 79.1, "Table 5", "Base. + FFC Fourier unit"),
    "affnet_dff": (dict(token_mixer="dff"), 7.7, 79.3, "Table 5", "Base. + DFF spatial frequency mask"),
    "affnet_fno": (dict(token_mixer="fno"), 141.0, 79.7, "Table 5",
                   "Base. + FNO: dense complex CxC weight per Fourier mode (bound to the build resolution)"),
    "affnet_sum": (dict(combine="sum"), 5.5, 78.8, "Table 5", "Base. + AFF w. SUM: mask added to the spectrum"),
    "affnet_mask1hw": (dict(mask_shape="1HW"), 5.5, 79.3, "Table 6", "1xHxW mask (channel-averaged AFF mask)"),
    "affnet_gc": (dict(num_blocks="C"), 5.3, 79.4, "Table 7", "mask net with N_group = C (depthwise)"),
    "affnet_g1": (dict(num_blocks=1), 7.7, 79.9, "Table 7", "mask net with N_group = 1 (dense)"),
    "affnet_k3": (dict(mask_kernel_size=3), 7.9, 79.8, "Table 7", "mask net with 3x3 group convolutions (8 groups)"),
    "affnet_dct": (dict(transform="dct"), 5.5, 79.6, "Table 12",
                   "DCT-II instead of FFT; 1.568 G by fvcore's rules (the DCT as matrix products) vs the paper's "
                   "1.5 G (a DCT through an FFT is free)" + _FLOPS_NOTE),
    "affnet_dwt": (dict(transform="dwt"), 5.5, 78.6, "Table 12", "one-level Haar wavelet instead of FFT"),
    "affnet_token_first": (dict(block_order="token_first"), 5.5, 79.7, "Table 13",
                           "token mixing before channel mixing in every block"),
    "affnet_ffn": (dict(channel_mixer="ffn"), 5.5, 79.5, "Table 14", "FFN (no depthwise 3x3) as channel mixer"),
}

for _name, (_flags, _p, _top1, _table, _desc) in ABLATIONS.items():
    _register(_name, dict({"mode": "small"}, **_flags), _p, f"ablation: {_desc}; paper top-1 {_top1}",
              variant_of="affnet", table=_table)
