"""PoolFormer v1 (sail-sg/poolformer) and the channels-first MetaFormer macro it shares with SPANet.

Features stay NCHW ``(B, C, H, W)`` from the stem to the head, as in the official code:

- stem ``patch_embed``: Conv 7x7 / stride 4 / pad 2 (no norm);
- ``network``: a ModuleList alternating stages (``nn.Sequential`` of blocks) and downsampling
  convs (3x3 / stride 2 / pad 1), so stage ``i`` (0-based) is ``network.{2i}`` and the
  downsample in front of it ``network.{2i-1}`` whenever every stage downsamples;
- block: pre-norm with the "modified LayerNorm" ``GroupNorm(1, C)`` (statistics over C, H, W),
  ``x = res_scale1(x) + drop_path(layer_scale_1 * mixer(norm1(x)))`` and the same with the
  channel MLP (two 1x1 convs with GELU); PoolFormer uses LayerScale on both branches, SPANet
  ResScale in stages 3-4; one DropPath module shared by both branches;
- head: ``GroupNorm`` on the last map -> mean over H, W -> Linear.

``ChannelsFirstMetaFormer`` implements that macro once with the block's token mixer as a
factory; ``PoolFormer`` (here) and ``SPANet`` (``spanet.py``) subclass it. Parameter names and
state_dict order are the official ones, so official checkpoints load unchanged.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .base import TapList, TapSpec, ZooModel, block_depths, register_model
from .layers import TapPoint, as_list, drop_path_or_identity, make_activation, normalize_name, to_2tuple, trunc_normal_
from .metaformer import execution_order

PAPER_POOLFORMER = "MetaFormer Is Actually What You Need for Vision (Yu et al., CVPR 2022, arXiv 2111.11418)"
SRC_POOLFORMER = "sail-sg/poolformer@a075575b:models/poolformer.py"
URL_POOLFORMER = "https://github.com/sail-sg/poolformer/releases/download/v1.0"

__all__ = ["GroupNorm", "LayerNormChannel", "PatchEmbed", "ConvMlp", "ChannelScale", "Pooling",
           "ChannelsFirstBlock", "ChannelsFirstMetaFormer", "PoolFormer", "conv_out_size", "resolve_nchw_norm"]


# ---------------------------------------------------------------------------- shared NCHW pieces


class GroupNorm(nn.GroupNorm):
    """The "modified LayerNorm" of PoolFormer v1 / SPANet: GroupNorm with one group
    (statistics over C, H, W; per-channel affine; eps 1e-5)."""

    def __init__(self, num_channels: int, **kwargs):
        super().__init__(1, num_channels, **kwargs)


class LayerNormChannel(nn.Module):
    """Per-pixel LayerNorm over the channel axis of an NCHW map (the official alternative norm)."""

    def __init__(self, num_channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


_NCHW_NORMS = {"groupnorm": GroupNorm, "modifiedlayernorm": GroupNorm, "layernormchannel": LayerNormChannel}


def resolve_nchw_norm(spec):
    """A norm class (called with the channel count) or a name: 'GroupNorm', 'LayerNormChannel'."""
    if spec is None:
        return GroupNorm
    if isinstance(spec, str):
        key = normalize_name(spec)
        if key not in _NCHW_NORMS:
            raise ValueError(f"unknown norm layer {spec!r}; choose 'GroupNorm' or 'LayerNormChannel'")
        return _NCHW_NORMS[key]
    return spec


class PatchEmbed(nn.Module):
    """A strided conv (stem and between stages); ``norm`` is Identity in both official models."""

    def __init__(self, patch_size=16, stride=16, padding=0, in_chans=3, embed_dim=768, norm_layer=None):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=to_2tuple(patch_size), stride=to_2tuple(stride),
                              padding=to_2tuple(padding))
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x):
        return self.norm(self.proj(x))


class ConvMlp(nn.Module):
    """Channel MLP with 1x1 convs: fc1 -> act -> drop -> fc2 -> drop (truncated-normal init)."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Conv2d(in_features, hidden_features, 1)
        self.act = make_activation(act_layer)()
        self.fc2 = nn.Conv2d(hidden_features, out_features, 1)
        self.drop = nn.Dropout(drop)
        for m in (self.fc1, self.fc2):
            trunc_normal_(m.weight, std=0.02)
            nn.init.constant_(m.bias, 0)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class ChannelScale(nn.Module):
    """Per-channel scale of an NCHW map (SPANet ``Scale``, used as ResScale)."""

    def __init__(self, dim: int, init_value: float = 1.0, trainable: bool = True):
        super().__init__()
        self.scale = nn.Parameter(init_value * torch.ones(dim), requires_grad=trainable)

    def forward(self, x):
        return x * self.scale[:, None, None]


class Pooling(nn.Module):
    """PoolFormer token mixer: ``avgpool3x3(x) - x`` (stride 1, padding excluded from the mean)."""

    def __init__(self, pool_size: int = 3, **kwargs):
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x):
        return self.pool(x) - x


class ChannelsFirstBlock(nn.Module):
    """One block of the channels-first macro.

    ``x = res_scale1(x) + drop_path(layer_scale_1 * token_mixer(norm1(x)))``
    ``x = res_scale2(x) + drop_path(layer_scale_2 * mlp(norm2(x)))``

    LayerScale vectors are plain Parameters named ``layer_scale_1/2`` (PoolFormer's names);
    ResScale modules are ``res_scale1/2`` (SPANet's names). Either may be absent.
    """

    def __init__(self, dim: int, token_mixer: Callable[[int], nn.Module], mlp_ratio: float = 4.0,
                 act_layer=nn.GELU, norm_layer=GroupNorm, drop: float = 0.0, drop_path: float = 0.0,
                 layer_scale_init_value: float | None = None, res_scale_init_value: float | None = None):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.token_mixer = token_mixer(dim)
        self.norm2 = norm_layer(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.drop_path = drop_path_or_identity(drop_path)
        self.use_layer_scale = layer_scale_init_value is not None
        if self.use_layer_scale:
            self.layer_scale_1 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
            self.layer_scale_2 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.res_scale1 = ChannelScale(dim, res_scale_init_value) if res_scale_init_value else nn.Identity()
        self.res_scale2 = ChannelScale(dim, res_scale_init_value) if res_scale_init_value else nn.Identity()

    def forward(self, x):
        y = self.token_mixer(self.norm1(x))
        if hasattr(self, "layer_scale_1"):      # use_layer_scale (a static test for TorchScript)
            y = self.layer_scale_1[:, None, None] * y
        x = self.res_scale1(x) + self.drop_path(y)
        y = self.mlp(self.norm2(x))
        if hasattr(self, "layer_scale_2"):
            y = self.layer_scale_2[:, None, None] * y
        return self.res_scale2(x) + self.drop_path(y)


def conv_out_size(n: int, kernel: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - kernel) // stride + 1


#: ``block_fn(stage, index, dim, drop_path, grid) -> nn.Module`` (stage and index 0-based)
BlockFn = Callable[[int, int, int, float, tuple], nn.Module]


class ChannelsFirstMetaFormer(ZooModel):
    """The PoolFormer-v1 macro (also SPANet's). Argument names are the official ones.

    ``input_size`` (ours) only sizes what depends on the resolution (SPANet masks, tap grids);
    the network itself runs at any input size.
    """

    feature_layout = "NCHW"

    def __init__(self, layers, embed_dims, block_fn: BlockFn, downsamples=True, norm_layer=GroupNorm,
                 num_classes=1000, in_patch_size=7, in_stride=4, in_pad=2, down_patch_size=3, down_stride=2,
                 down_pad=1, drop_path_rate=0.0, fork_feat=False, input_size=(3, 224, 224), in_chans=3):
        super().__init__()
        layers = [int(v) for v in (layers if isinstance(layers, (list, tuple)) else [layers])]
        n = len(layers)
        embed_dims = [int(v) for v in as_list(embed_dims, n, "embed_dims")]
        downsamples = [bool(v) for v in as_list(downsamples, n, "downsamples")]
        norm_layer = resolve_nchw_norm(norm_layer)
        self.num_classes = num_classes
        self.fork_feat = fork_feat
        self.in_chans = in_chans
        self.layers, self.embed_dims = layers, embed_dims
        self.num_stage = n
        self.input_size = tuple(int(v) for v in input_size)

        # grids at the build resolution (exact conv arithmetic)
        h = conv_out_size(self.input_size[1], in_patch_size, in_stride, in_pad)
        w = conv_out_size(self.input_size[2], in_patch_size, in_stride, in_pad)
        self.stage_sizes: list[tuple[int, int]] = []

        self.patch_embed = PatchEmbed(patch_size=in_patch_size, stride=in_stride, padding=in_pad,
                                      in_chans=in_chans, embed_dim=embed_dims[0])
        total = sum(layers)
        network: list[nn.Module] = []
        self.stage_index: list[int] = []          # network index of stage i
        self.down_index: dict[int, int] = {}      # stage i -> network index of the downsample before it
        cur = 0
        for i in range(n):
            self.stage_sizes.append((h, w))
            blocks = []
            for j in range(layers[i]):
                dpr = drop_path_rate * (cur + j) / (total - 1) if total > 1 else 0.0
                blocks.append(block_fn(i, j, embed_dims[i], dpr, (h, w)))
            cur += layers[i]
            self.stage_index.append(len(network))
            network.append(nn.Sequential(*blocks))
            if i >= n - 1:
                break
            if downsamples[i] or embed_dims[i] != embed_dims[i + 1]:
                self.down_index[i + 1] = len(network)
                network.append(PatchEmbed(patch_size=down_patch_size, stride=down_stride, padding=down_pad,
                                          in_chans=embed_dims[i], embed_dim=embed_dims[i + 1]))
                h = conv_out_size(h, down_patch_size, down_stride, down_pad)
                w = conv_out_size(w, down_patch_size, down_stride, down_pad)
        self.network = nn.ModuleList(network)

        if fork_feat:
            self.out_indices = list(self.stage_index)
            for i, idx in enumerate(self.out_indices):
                self.add_module(f"norm{idx}", norm_layer(embed_dims[i]))
        else:
            self.norm = norm_layer(embed_dims[-1])
            self.global_pool = TapPoint()
            self.head = self._make_classifier(num_classes)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        reductions, r = [], in_stride
        for i in range(n):
            if i in self.down_index:
                r *= down_stride
            reductions.append(r)
        self.feature_info = self._feature_info(embed_dims, reductions,
                                               [f"network.{idx}" for idx in self.stage_index])
        self.apply(self._cls_init_weights)

    @staticmethod
    def _cls_init_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    # ------------------------------------------------------------------ forward (timm's API)
    first_conv = "patch_embed.proj"

    def _stages_forward(self, x):
        x = self.patch_embed(x)
        for i, idx in enumerate(self.stage_index):
            if i in self.down_index:
                x = self.network[self.down_index[i]](x)
            x = self._run_blocks(self.network[idx], x)
            yield x

    def forward_features(self, x):
        """The last stage's map (B, C, H, W) before the output norm; with ``fork_feat`` the normed stage maps."""
        if not torch.jit.is_scripting():
            if self.fork_feat:
                return [getattr(self, f"norm{idx}")(y) for idx, y in zip(self.out_indices, self._stages_forward(x))]
            if self.grad_checkpointing:
                return self._forward_levels(x)
        x = self.patch_embed(x)
        for layer in self.network:          # stages and the downsampling layers between them, in order
            x = layer(x)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        """Output GroupNorm on the map, global mean (``pre_logits``), classifier; without global
        pooling (``global_pool=''``) the normed map."""
        x = self.norm(x)
        if self.global_pool_type != "":
            x = self.global_pool(x.mean([-2, -1]))
        return x if pre_logits else self.head(x)

    def forward(self, x):
        x = self.forward_features(x)
        if not torch.jit.is_scripting():
            if self.fork_feat:
                return x
        return self.forward_head(x)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^patch_embed", blocks=[(r"^network\.(\d+)" if coarse else r"^network\.(\d+)\.(\d+)",
                                                   None), (r"^norm", (99999,))])

    # ------------------------------------------------------------------ taps
    def taps(self) -> TapList:
        t = TapList()
        t.append(TapSpec("stem", "stem", "patch_embed", "NCHW", stage=1, grid=self.stage_sizes[0]))
        for i, idx in self.down_index.items():
            t.append(TapSpec(f"downsample{i + 1}", "downsample", f"network.{idx}", "NCHW", stage=i + 1,
                             grid=self.stage_sizes[i]))
        for i, j, depth in block_depths(self.layers):
            s, p = i + 1, f"network.{self.stage_index[i]}.{j}"
            grid = self.stage_sizes[i]
            pre = f"s{s}.b{j}"
            mixer = self.network[self.stage_index[i]][j].token_mixer
            t.append(TapSpec(f"{pre}.mixer", "mixer", f"{p}.token_mixer", "NCHW", s, j, grid=grid, depth=depth))
            t.append(TapSpec(f"{pre}.residual", "residual", f"{p}.norm2", "NCHW", s, j, hook="pre", grid=grid,
                             depth=depth, note="residual stream after the token mixer (input of norm2)"))
            t.append(TapSpec(f"{pre}.mlp", "mlp", f"{p}.mlp", "NCHW", s, j, grid=grid, depth=depth))
            t.append(TapSpec(f"{pre}.block", "block", p, "NCHW", s, j, grid=grid, depth=depth))
            for name, role, sub, layout, note in getattr(mixer, "spectral_taps", lambda: [])():
                t.append(TapSpec(f"{pre}.{name}", role, f"{p}.token_mixer.{sub}", layout, s, j, grid=grid,
                                 depth=depth, note=note))
        for i, idx in enumerate(self.stage_index):
            t.append(TapSpec(f"stage{i + 1}", "stage", f"network.{idx}", "NCHW", i + 1, grid=self.stage_sizes[i]))
        if not self.fork_feat:
            t.append(TapSpec("pool", "pool", "global_pool", "NC",
                             note="globally averaged features after the output GroupNorm (head input)"))
        return execution_order(t)


# ---------------------------------------------------------------------------- PoolFormer v1


class PoolFormer(ChannelsFirstMetaFormer):
    """PoolFormer v1 with the official constructor arguments (``layers``, ``embed_dims``,
    ``mlp_ratios``, ``downsamples``, ``pool_size``, ``use_layer_scale``,
    ``layer_scale_init_value``, ...). Runs at any input size."""

    def __init__(self, layers=(2, 2, 6, 2), embed_dims=(64, 128, 320, 512), mlp_ratios=4, downsamples=True,
                 pool_size=3, norm_layer=GroupNorm, act_layer=nn.GELU, num_classes=1000, in_patch_size=7,
                 in_stride=4, in_pad=2, down_patch_size=3, down_stride=2, down_pad=1, drop_rate=0.0,
                 drop_path_rate=0.0, use_layer_scale=True, layer_scale_init_value=1e-5, fork_feat=False,
                 input_size=(3, 224, 224), **kwargs):
        if kwargs:
            raise TypeError(f"unexpected argument(s) {', '.join(sorted(kwargs))}")
        layers = list(layers) if isinstance(layers, (list, tuple)) else [layers]
        ratios = as_list(mlp_ratios, len(layers), "mlp_ratios")
        norm = resolve_nchw_norm(norm_layer)
        ls = layer_scale_init_value if use_layer_scale else None

        def block_fn(i, j, dim, dpr, grid):
            return ChannelsFirstBlock(dim, lambda d: Pooling(pool_size), mlp_ratio=ratios[i], act_layer=act_layer,
                                      norm_layer=norm, drop=drop_rate, drop_path=dpr, layer_scale_init_value=ls)

        super().__init__(layers, embed_dims, block_fn, downsamples=downsamples, norm_layer=norm,
                         num_classes=num_classes, in_patch_size=in_patch_size, in_stride=in_stride, in_pad=in_pad,
                         down_patch_size=down_patch_size, down_stride=down_stride, down_pad=down_pad,
                         drop_path_rate=drop_path_rate, fork_feat=fork_feat, input_size=input_size)


def _poolformer_builder(defaults: dict):
    def build(num_classes=1000, img_size=None, **overrides):
        kw = dict(defaults)
        kw.update(overrides)
        if img_size is not None:
            kw["input_size"] = (3, *img_size)
        return PoolFormer(num_classes=num_classes, **kw)
    return build


_S = [64, 128, 320, 512]
_M = [96, 192, 384, 768]
_POOLFORMER = {
    # name: (layers, embed_dims, LayerScale init, crop_pct, README/paper params in M)
    "poolformer_s12": ([2, 2, 6, 2], _S, 1e-5, 0.9, 12),
    "poolformer_s24": ([4, 4, 12, 4], _S, 1e-5, 0.9, 21),
    "poolformer_s36": ([6, 6, 18, 6], _S, 1e-6, 0.9, 31),
    "poolformer_m36": ([6, 6, 18, 6], _M, 1e-6, 0.95, 56),
    "poolformer_m48": ([8, 8, 24, 8], _M, 1e-6, 0.95, 73),
}
for _name, (_layers, _dims, _ls, _crop, _pp) in _POOLFORMER.items():
    register_model(_name, family="poolformer", paper=PAPER_POOLFORMER, source=f"{SRC_POOLFORMER}:{_name}()",
                   weight_file=f"{_name}.pth.tar", weight_url=f"{URL_POOLFORMER}/{_name}.pth.tar", crop_pct=_crop,
                   feature_layout="NCHW", paper_params_m=_pp,
                   description=f"pooling token mixer (avgpool3x3 - x), NCHW, GroupNorm(1), LayerScale init {_ls:g}")(
        _poolformer_builder(dict(layers=_layers, embed_dims=_dims, mlp_ratios=[4, 4, 4, 4],
                                 downsamples=[True, True, True, True], layer_scale_init_value=_ls)))
