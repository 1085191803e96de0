"""GFNet and GFNet-H (raoyongming/GFNet): global filter networks.

A global filter layer mixes tokens with a learned, static, per-channel complex filter in
the 2-D Fourier domain: ``irfft2(rfft2(x) * W)`` (ortho), i.e. a circular convolution
over the token grid. Parameter and module names are the official ones, so the released
checkpoints load unchanged.

What follows the official code exactly:

* one residual per block: ``x = x + drop_path(mlp(norm2(filter(norm1(x)))))``; the filter
  and the MLP share the branch (there is no skip around the filter alone). GFNet-H blocks
  scale the branch by a per-channel LayerScale ``gamma``;
* the isotropic model adds a learned ``pos_embed`` after the 16x16 patch embedding; the
  pyramid adds it once after the 4x4 stage-1 embedding and downsamples with 2x2 stride-2
  convolutions (``DownLayer``); final LayerNorm, mean over tokens, linear head.

What is ours:

* the model is built for any input size ``img_size`` = (H, W), square or not. Tokens form
  an ``(H/p, W/p)`` grid and every filter is ``(H/p, W/p // 2 + 1)`` (halved per pyramid
  stage). The grid is stored, so non-square inputs are exact (the official filter assumes
  a square ``sqrt(N) x sqrt(N)`` grid). An input of another size is refused with a clear
  error (the official code asserts).
* ``adapt_state_dict`` applies the official fine-tuning resize of ``main_gfnet.py`` when a
  checkpoint was trained at another size: ``pos_embed`` bicubic (``align_corners=False``),
  every ``complex_weight`` bicubic (``align_corners=True``) to the built filter grid. For
  a square target this is exactly the official recipe; for non-square targets it is the
  same recipe per axis.
* FFTs run in float32 with autocast disabled (``spectral_region``).
* ``representation_size`` pre-logits are applied before the head (the official forward
  builds them but never calls them, so the option is broken there; unused by every
  released model).

Taps (layout NLC with the token ``grid`` declared; stages 1-based, the isotropic model has
one stage): ``stem`` = the tokens entering the first block, i.e. patch embedding **plus**
``pos_embed`` (a pre-hook on ``blocks.0``; the bare patch embedding stays reachable by the
module path ``patch_embed``), ``downsample{s}`` (GFNet-H ``DownLayer`` outputs), per block
``mixer`` (the global filter output ``blocks...filter``), ``mlp`` and ``block``,
``stage{s}`` (GFNet-H), ``pool`` (NC: token mean of the final LayerNorm, the head input).
There is no ``residual`` tap: no residual stream exists between filter and MLP. The
learned filters themselves are the parameters ``*.filter.complex_weight``.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import AdaptNote, InputSizeError, TapList, TapSpec, ZooModel, block_depths, register_model
from .layers import (Mlp, TapPoint, drop_path_or_identity, drop_path_rates, normalize_name, spectral_region,
                     to_2tuple, trunc_normal_)

PAPER_GFNET = "Global Filter Networks for Image Classification (Rao et al., NeurIPS 2021)"
PAPER_GFNET_H = "GFNet: Global Filter Networks for Visual Recognition (Rao et al., TPAMI 2023)"
SRC_GFNET = "raoyongming/GFNet@2de48b62:gfnet.py"
#: official download links (README model zoo, Tsinghua Cloud); the files are named as in the
#: official code's examples (``gfnet-xs.pth``) and hold the weights under the key ``model``.
_URLS = {
    "gfnet_ti": "https://cloud.tsinghua.edu.cn/f/3d0c1579aa524a0a99dd/?dl=1",
    "gfnet_xs": "https://cloud.tsinghua.edu.cn/f/e0ab5b1583954a1fa9b2/?dl=1",
    "gfnet_s": "https://cloud.tsinghua.edu.cn/f/e5561fa070c44d9399bf/?dl=1",
    "gfnet_b": "https://cloud.tsinghua.edu.cn/f/2fbf264597af4d72afb3/?dl=1",
    "gfnet_h_ti": "https://cloud.tsinghua.edu.cn/f/b22dd45eccbe462cbbfb/?dl=1",
    "gfnet_h_s": "https://cloud.tsinghua.edu.cn/f/5229cb4d1daf48e69675/?dl=1",
    "gfnet_h_b": "https://cloud.tsinghua.edu.cn/f/954c5af21e824ba6b40c/?dl=1",
}


def _resolve_norm(norm_layer):
    if norm_layer is None:
        return partial(nn.LayerNorm, eps=1e-6)
    if isinstance(norm_layer, str):
        if normalize_name(norm_layer) in ("layernorm", "nnlayernorm", "nnlayernormeps1e6"):
            return partial(nn.LayerNorm, eps=1e-6)
        raise ValueError(f"unknown norm_layer {norm_layer!r}; GFNet uses 'layernorm' (eps=1e-6) or a module class")
    return norm_layer


def _grid_of(img_size, patch_size) -> tuple[int, int]:
    H, W = to_2tuple(img_size)
    ph, pw = to_2tuple(patch_size)
    gh, gw = int(H) // int(ph), int(W) // int(pw)
    if gh < 1 or gw < 1:
        raise ValueError(f"img_size {H}x{W} is smaller than the patch size {ph}x{pw}")
    return gh, gw


# ---------------------------------------------------------------------------- layers


class GlobalFilter(nn.Module):
    """Static per-channel global filter on tokens ``(B, N, C)``.

    ``complex_weight`` is the real view ``(h, w, C, 2)`` of a complex filter on the rfft
    half-plane of an ``(a, b)`` token grid, ``h = a``, ``w = b // 2 + 1``. ``size=(a, b)``
    is the token grid (official default: square, ``a = b = h``).
    """

    def __init__(self, dim, h=14, w=8, size=None):
        super().__init__()
        self.complex_weight = nn.Parameter(torch.randn(h, w, dim, 2, dtype=torch.float32) * 0.02)
        self.h = h
        self.w = w
        self.size = tuple(size) if size is not None else (h, h)

    #: bound to the token grid it is built for
    size_bound = True

    def forward(self, x, spatial_size: Optional[Tuple[int, int]] = None):
        if spatial_size is not None:
            a, b = spatial_size
        else:
            a, b = self.size
        return global_filter(x, self.complex_weight, a, b)

    def extra_repr(self) -> str:
        return f"grid={self.size}, filter=({self.h}, {self.w})"


def _global_filter_core(x: torch.Tensor, weight: torch.Tensor, a: int, b: int) -> torch.Tensor:
    B, N, C = x.shape
    y = x.reshape(B, a, b, C).to(torch.float32)
    y = torch.fft.rfft2(y, dim=(1, 2), norm="ortho")
    y = y * torch.view_as_complex(weight.float().contiguous())
    y = torch.fft.irfft2(y, s=(a, b), dim=(1, 2), norm="ortho")
    return y.reshape(B, N, C)


@torch.fx.wrap
def global_filter(x: torch.Tensor, weight: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """GFNet's global filter of the tokens ``x`` (B, N, C) on an ``a x b`` grid with the real view
    ``weight`` (a, b//2+1, C, 2) of its complex filter: ``irfft2(rfft2(x) * W)`` (ortho, float32,
    autocast off). A leaf for ``torch.fx``: it checks the input's shape.

    Args:
        x: tokens (B, N, C), N = a * b.
        weight: the filter's real view.
        a: grid height.
        b: grid width.

    Returns:
        The filtered tokens (B, N, C): float32 as the official layer, or ``x``'s dtype for a model cast
        to half precision outside autocast.
    """
    N = x.shape[1]
    if a * b != N:
        raise InputSizeError(f"GlobalFilter built for a {a}x{b} token grid got {N} tokens; build the "
                             f"model for this input with create_model(..., img_size=(H, W))")
    if weight.shape[0] != a or weight.shape[1] != b // 2 + 1:
        raise InputSizeError(f"GlobalFilter: filter grid ({weight.shape[0]}, {weight.shape[1]}) does not fit a "
                             f"{a}x{b} token grid (needs ({a}, {b // 2 + 1})); load checkpoints through "
                             "spectrascope (create_model(checkpoint=...)) to resize them")
    dtype = x.dtype
    if torch.jit.is_scripting():
        y = _global_filter_core(x, weight, a, b)
        autocast = False
    else:
        with spectral_region(x):
            y = _global_filter_core(x, weight, a, b)
        dev = x.device.type if x.device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"
        autocast = torch.is_autocast_enabled(dev)
    # the official layer returns float32; a model cast to half precision gets its dtype back
    if dtype != torch.float32 and not autocast:
        y = y.to(dtype)
    return y


@torch.fx.wrap
def _check_image_size(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``x`` unchanged, refused unless its spatial size is ``height x width`` (a leaf for ``torch.fx``)."""
    H, W = x.shape[-2], x.shape[-1]
    if H != height or W != width:
        raise InputSizeError(
            f"input is {H}x{W} but the model was built for {height}x{width}; build it for "
            f"this size with create_model(..., img_size=({H}, {W})) (checkpoints are resized on load)")
    return x


def _mlp(dim, mlp_ratio, act_layer, drop):
    # official Mlp: fc1 -> act -> dropout -> fc2 -> dropout, with biases; hidden int(dim * ratio)
    return Mlp(dim, mlp_ratio=mlp_ratio, act_layer=act_layer, drop=drop, bias=True)


class Block(nn.Module):
    """``x + drop_path(mlp(norm2(filter(norm1(x)))))``: one residual for filter and MLP."""

    def __init__(self, dim, mlp_ratio=4., drop=0., drop_path=0., act_layer=nn.GELU, norm_layer=nn.LayerNorm,
                 h=14, w=8, size=None):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.filter = GlobalFilter(dim, h=h, w=w, size=size)
        self.drop_path = drop_path_or_identity(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = _mlp(dim, mlp_ratio, act_layer, drop)

    def forward(self, x):
        return x + self.drop_path(self.mlp(self.norm2(self.filter(self.norm1(x)))))


class BlockLayerScale(nn.Module):
    """GFNet-H block: ``x + drop_path(gamma * mlp(norm2(filter(norm1(x)))))``."""

    def __init__(self, dim, mlp_ratio=4., drop=0., drop_path=0., act_layer=nn.GELU, norm_layer=nn.LayerNorm,
                 h=14, w=8, init_values=1e-5, size=None):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.filter = GlobalFilter(dim, h=h, w=w, size=size)
        self.drop_path = drop_path_or_identity(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = _mlp(dim, mlp_ratio, act_layer, drop)
        self.gamma = nn.Parameter(init_values * torch.ones(dim), requires_grad=True)

    def forward(self, x):
        return x + self.drop_path(self.gamma * self.mlp(self.norm2(self.filter(self.norm1(x)))))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` convolution, tokens out ``(B, N, C)``; bound to ``img_size``."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
        super().__init__()
        self.img_size = tuple(int(v) for v in to_2tuple(img_size))
        self.patch_size = tuple(int(v) for v in to_2tuple(patch_size))
        self.grid = _grid_of(self.img_size, self.patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    #: refuses inputs of another size
    size_bound = True

    def forward(self, x):
        x = _check_image_size(x, self.img_size[0], self.img_size[1])
        return self.proj(x).flatten(2).transpose(1, 2)


class DownLayer(nn.Module):
    """GFNet-H downsampling: tokens -> NCHW -> 2x2 stride-2 conv -> tokens."""

    def __init__(self, img_size=56, dim_in=64, dim_out=128):
        super().__init__()
        self.img_size = to_2tuple(img_size)   # the input token grid (official: an int, square)
        self.dim_in = dim_in
        self.dim_out = dim_out
        self.proj = nn.Conv2d(dim_in, dim_out, kernel_size=2, stride=2)
        self.num_patches = (self.img_size[0] // 2) * (self.img_size[1] // 2)

    def forward(self, x):
        B, N, C = x.shape
        h, w = self.img_size
        x = x.reshape(B, h, w, C).permute(0, 3, 1, 2)
        x = self.proj(x).permute(0, 2, 3, 1)
        return x.reshape(B, -1, self.dim_out)


def _init_weights(m):
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


# ---------------------------------------------------------------------------- models


class _GFNetBase(ZooModel):
    feature_layout = "NLC"

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    first_conv = "patch_embed.proj"

    def _make_classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def _final_features(self, x):
        """The final LayerNorm on the tokens (B, N, C)."""
        return self.norm(x)

    def forward_head(self, x, pre_logits: bool = False):
        """Mean over tokens (official order: after the final norm), pre-logits, classifier; without
        global pooling (``global_pool=''``) every token goes through them."""
        if self.global_pool_type != "":
            x = self.pool_tap(x.mean(1))
        x = self.pre_logits(x)
        return x if pre_logits else self.head(self.final_dropout(x))

    def _tokens_to_nchw(self, x, grid):
        B, N, C = x.shape
        return x.transpose(1, 2).reshape(B, C, grid[0], grid[1])

    # ------------------------------------------------------------------ checkpoints
    def adapt_state_dict(self, state):
        """The official fine-tuning resize (``main_gfnet.py --finetune``) for checkpoints trained at
        another size: ``pos_embed`` bicubic with ``align_corners=False`` on its (square) token grid,
        every ``complex_weight`` bicubic with ``align_corners=True`` (base rule)."""
        out, notes = super().adapt_state_dict(state)
        own = self.state_dict()
        key = "pos_embed"
        if key in out and key in own and out[key].shape != own[key].shape:
            old = out[key]
            target = own[key].shape
            n_old = old.shape[1]
            g_old = math.isqrt(n_old)
            if old.ndim == 3 and old.shape[0] == 1 and old.shape[2] == target[2] and g_old * g_old == n_old:
                gh, gw = self.pos_grid
                grid = old.float().reshape(1, g_old, g_old, -1).permute(0, 3, 1, 2)
                grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
                out[key] = grid.permute(0, 2, 3, 1).flatten(1, 2).to(old.dtype)
                notes.append(AdaptNote(key, f"resized token grid ({g_old}, {g_old}) -> ({gh}, {gw}) "
                                            "(bicubic, align_corners=False)"))
        return out, notes


class GFNet(_GFNetBase):
    """Isotropic GFNet (official constructor arguments; ``img_size`` may be (H, W))."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 mlp_ratio=4., representation_size=None, uniform_drop=False, drop_rate=0., drop_path_rate=0.,
                 norm_layer=None, dropcls=0):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.in_chans = in_chans
        norm_layer = _resolve_norm(norm_layer)
        self.depths = [int(depth)]

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim)
        self.img_size = self.patch_embed.img_size
        self.grid = self.pos_grid = self.patch_embed.grid
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)

        h, w = self.grid[0], self.grid[1] // 2 + 1
        dpr = [drop_path_rate] * depth if uniform_drop else drop_path_rates(drop_path_rate, [depth])
        self.blocks = nn.ModuleList([
            Block(dim=embed_dim, mlp_ratio=mlp_ratio, drop=drop_rate, drop_path=dpr[i], norm_layer=norm_layer,
                  h=h, w=w, size=self.grid)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.pool_tap = TapPoint()

        if representation_size:
            self.head_hidden_size = representation_size
            self.pre_logits = nn.Sequential()
            self.pre_logits.add_module("fc", nn.Linear(embed_dim, representation_size))
            self.pre_logits.add_module("act", nn.Tanh())
        else:
            self.pre_logits = nn.Identity()
        self.head = self._make_classifier(num_classes)
        self.final_dropout = nn.Dropout(p=dropcls) if dropcls > 0 else nn.Identity()

        self.feature_info = self._feature_info([embed_dim] * depth, [self.patch_embed.patch_size[0]] * depth,
                                               [f"blocks.{i}" for i in range(depth)])
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_weights)

    def forward_features(self, x):
        """The final LayerNorm of the tokens (B, N, C)."""
        if not torch.jit.is_scripting():
            if self.grad_checkpointing:
                return self._forward_levels(x)
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def _stages_forward(self, x):
        """Every block is a feature level (as timm's ViTs)."""
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        for blk in self.blocks:
            x = self._run_blocks([blk], x)
            yield x

    def _to_nchw(self, x, i: int):
        return self._tokens_to_nchw(x, self.grid)

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^pos_embed|^patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    def taps(self) -> TapList:
        g = self.grid
        t = TapList([TapSpec("stem", "stem", "blocks.0", "NLC", stage=1, hook="pre", grid=g,
                             note="tokens entering the first block: patch embedding + pos_embed (after pos-dropout)")])
        for _, j, depth in block_depths(self.depths):
            p, pre = f"blocks.{j}", f"s1.b{j}"
            t.append(TapSpec(f"{pre}.mixer", "mixer", f"{p}.filter", "NLC", 1, j, grid=g, depth=depth,
                             note="global filter output irfft2(rfft2(norm1(x)) * W), float32"))
            t.append(TapSpec(f"{pre}.mlp", "mlp", f"{p}.mlp", "NLC", 1, j, grid=g, depth=depth,
                             note="MLP output (the whole residual branch before drop-path)"))
            t.append(TapSpec(f"{pre}.block", "block", p, "NLC", 1, j, grid=g, depth=depth))
        t.append(TapSpec("pool", "pool", "pool_tap", "NC", note="mean over tokens of the final LayerNorm output"))
        return t


class GFNetPyramid(_GFNetBase):
    """GFNet-H (official constructor arguments; ``img_size`` may be (H, W); any number of stages)."""

    def __init__(self, img_size=224, patch_size=4, num_classes=1000, embed_dim=(64, 128, 256, 512),
                 depth=(2, 2, 10, 4), mlp_ratio=(4, 4, 4, 4), drop_rate=0., drop_path_rate=0., norm_layer=None,
                 init_values=0.001, no_layerscale=False, dropcls=0, in_chans=3):
        super().__init__()
        embed_dim = list(embed_dim) if isinstance(embed_dim, (list, tuple)) else [embed_dim]
        depth = list(depth) if isinstance(depth, (list, tuple)) else [depth]
        n = len(depth)
        if len(embed_dim) != n:
            raise ValueError(f"depth ({n} stages) and embed_dim ({len(embed_dim)}) disagree")
        mlp_ratio = list(mlp_ratio) if isinstance(mlp_ratio, (list, tuple)) else [mlp_ratio] * n
        if len(mlp_ratio) != n:
            raise ValueError(f"mlp_ratio needs {n} entries, got {len(mlp_ratio)}")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim[-1]
        self.in_chans = in_chans
        self.depths, self.dims = depth, embed_dim
        self.num_stage = n
        norm_layer = _resolve_norm(norm_layer)

        self.patch_embed = nn.ModuleList()
        stem = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim[0])
        self.img_size = stem.img_size
        self.pos_grid = stem.grid
        self.pos_embed = nn.Parameter(torch.zeros(1, stem.num_patches, embed_dim[0]))
        self.patch_embed.append(stem)

        # token grid of each stage: the stem grid, halved (floor) by every 2x2 stride-2 DownLayer
        self.stage_sizes = [stem.grid]
        for _ in range(n - 1):
            h, w = self.stage_sizes[-1]
            if h < 2 or w < 2:
                raise ValueError(f"img_size {self.img_size} is too small for {n} stages of patch size {patch_size}")
            self.stage_sizes.append((h // 2, w // 2))
        for i in range(n - 1):
            self.patch_embed.append(DownLayer(self.stage_sizes[i], embed_dim[i], embed_dim[i + 1]))

        self.pos_drop = nn.Dropout(p=drop_rate)   # built but, as in the official forward, not applied
        self.blocks = nn.ModuleList()
        dpr = drop_path_rates(drop_path_rate, depth)
        cur = 0
        for i in range(n):
            size = self.stage_sizes[i]
            h, w = size[0], size[1] // 2 + 1
            if no_layerscale:
                blk = [Block(dim=embed_dim[i], mlp_ratio=mlp_ratio[i], drop=drop_rate, drop_path=dpr[cur + j],
                             norm_layer=norm_layer, h=h, w=w, size=size) for j in range(depth[i])]
            else:
                blk = [BlockLayerScale(dim=embed_dim[i], mlp_ratio=mlp_ratio[i], drop=drop_rate,
                                       drop_path=dpr[cur + j], norm_layer=norm_layer, h=h, w=w,
                                       init_values=init_values, size=size) for j in range(depth[i])]
            self.blocks.append(nn.Sequential(*blk))
            cur += depth[i]

        self.norm = norm_layer(embed_dim[-1])
        self.pool_tap = TapPoint()
        self.pre_logits = nn.Identity()
        self.head = self._make_classifier(num_classes)
        self.final_dropout = nn.Dropout(p=dropcls) if dropcls > 0 else nn.Identity()

        self.feature_info = self._feature_info(embed_dim, [stem.patch_size[0] * 2 ** i for i in range(n)],
                                               [f"blocks.{i}" for i in range(n)])
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_weights)

    first_conv = "patch_embed.0.proj"

    def forward_features(self, x):
        """The final LayerNorm of the last stage's tokens (B, N, C)."""
        if not torch.jit.is_scripting():
            if self.grad_checkpointing:
                return self._forward_levels(x)
        i = 0
        for embed, stage in zip(self.patch_embed, self.blocks):
            x = embed(x)
            if i == 0:
                x = x + self.pos_embed
            x = stage(x)
            i += 1
        return self.norm(x)

    def _stages_forward(self, x):
        for i in range(self.num_stage):
            x = self.patch_embed[i](x)
            if i == 0:
                x = x + self.pos_embed
            x = self._run_blocks(self.blocks[i], x)
            yield x

    def _to_nchw(self, x, i: int):
        return self._tokens_to_nchw(x, self.stage_sizes[i])

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^pos_embed|^patch_embed\.0",
                    blocks=[(r"^patch_embed\.(\d+)", None),
                            (r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.(\d+)", None),
                            (r"^norm", (99999,))])

    def taps(self) -> TapList:
        t = TapList()
        depths = {(s, j): d for s, j, d in block_depths(self.depths)}
        for i in range(self.num_stage):
            s, g = i + 1, self.stage_sizes[i]
            if i == 0:
                t.append(TapSpec("stem", "stem", "blocks.0", "NLC", stage=1, hook="pre", grid=g,
                                 note="tokens entering stage 1: patch embedding + pos_embed"))
            else:
                t.append(TapSpec(f"downsample{s}", "downsample", f"patch_embed.{i}", "NLC", stage=s, grid=g,
                                 note="DownLayer output (2x2 stride-2 convolution)"))
            for j in range(self.depths[i]):
                p, pre = f"blocks.{i}.{j}", f"s{s}.b{j}"
                depth = depths[(i, j)]
                t.append(TapSpec(f"{pre}.mixer", "mixer", f"{p}.filter", "NLC", s, j, grid=g, depth=depth,
                                 note="global filter output irfft2(rfft2(norm1(x)) * W), float32"))
                t.append(TapSpec(f"{pre}.mlp", "mlp", f"{p}.mlp", "NLC", s, j, grid=g, depth=depth,
                                 note="MLP output (the residual branch before gamma and drop-path)"))
                t.append(TapSpec(f"{pre}.block", "block", p, "NLC", s, j, grid=g, depth=depth))
            t.append(TapSpec(f"stage{s}", "stage", f"blocks.{i}", "NLC", s, grid=g))
        t.append(TapSpec("pool", "pool", "pool_tap", "NC", note="mean over tokens of the final LayerNorm output"))
        return t


# ---------------------------------------------------------------------------- registry


def _builder(cls, defaults: dict):
    def build(num_classes=1000, img_size=None, **overrides):
        kw = dict(defaults)
        kw.update(overrides)
        if img_size is not None:
            kw["img_size"] = img_size
        return cls(num_classes=num_classes, **kw)
    return build


_LN = partial(nn.LayerNorm, eps=1e-6)
#: name -> (class, official --arch, the official constructor arguments of that arch, README params [M])
_VARIANTS = {
    "gfnet_ti": (GFNet, "gfnet-ti", dict(patch_size=16, embed_dim=256, depth=12, mlp_ratio=4), 7),
    "gfnet_xs": (GFNet, "gfnet-xs", dict(patch_size=16, embed_dim=384, depth=12, mlp_ratio=4), 16),
    "gfnet_s": (GFNet, "gfnet-s", dict(patch_size=16, embed_dim=384, depth=19, mlp_ratio=4,
                                       drop_path_rate=0.15), 25),
    "gfnet_b": (GFNet, "gfnet-b", dict(patch_size=16, embed_dim=512, depth=19, mlp_ratio=4,
                                       drop_path_rate=0.25), 43),
    "gfnet_h_ti": (GFNetPyramid, "gfnet-h-ti", dict(patch_size=4, embed_dim=[64, 128, 256, 512], depth=[3, 3, 10, 3],
                                                    mlp_ratio=[4, 4, 4, 4], drop_path_rate=0.1, init_values=1e-3), 15),
    "gfnet_h_s": (GFNetPyramid, "gfnet-h-s", dict(patch_size=4, embed_dim=[96, 192, 384, 768], depth=[3, 3, 10, 3],
                                                  mlp_ratio=[4, 4, 4, 4], drop_path_rate=0.2, init_values=1e-5), 32),
    "gfnet_h_b": (GFNetPyramid, "gfnet-h-b", dict(patch_size=4, embed_dim=[96, 192, 384, 768], depth=[3, 3, 27, 3],
                                                  mlp_ratio=[4, 4, 4, 4], drop_path_rate=0.4, init_values=1e-6), 54),
}

for _name, (_cls, _arch, _cfg, _params) in _VARIANTS.items():
    _pyramid = _cls is GFNetPyramid
    register_model(
        _name, family="gfnet_h" if _pyramid else "gfnet", paper=PAPER_GFNET_H if _pyramid else PAPER_GFNET,
        aliases=(_arch,), source=f"{SRC_GFNET}:{_cls.__name__} (main_gfnet.py --arch {_arch})",
        weight_file=f"{_arch}.pth", weight_url=_URLS[_name], crop_pct=0.9, feature_layout="NLC",
        paper_params_m=_params, fixed_input_size=True,
        description=(f"pyramid, patch 4, dims {_cfg['embed_dim']}, depths {_cfg['depth']}, LayerScale blocks"
                     if _pyramid else f"isotropic, patch 16, dim {_cfg['embed_dim']}, {_cfg['depth']} blocks"))(
        _builder(_cls, dict(_cfg, norm_layer=_LN)))

__all__ = ["GFNet", "GFNetPyramid", "GlobalFilter", "Block", "BlockLayerScale", "PatchEmbed", "DownLayer",
           "InputSizeError"]
