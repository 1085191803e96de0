"""MetaFormer macro-architecture (sail-sg/metaformer) and its baselines.

One implementation of the shared pieces (downsampling, block with res/layer scale,
StarReLU channel MLP, heads) with the token mixer as a constructor argument, given as
a class or a name. DFFormer/CDFFormer/GFFormer (``dfformer.py``) register their
spectral mixers here and reuse the macro unchanged. Features are channels-last
(B, H, W, C) between blocks, as in the official code.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from .base import InputSizeError, TapList, TapSpec, ZooModel, block_depths, register_model
from .layers import (IdentityMixer, LayerNormGeneral, LayerNormWithoutBias, Mlp, MlpHead, Scale, SquaredReLU,
                     StarReLU, as_list, drop_path_or_identity, drop_path_rates, make_activation,
                     normalize_name, register_token_mixer, resolve_token_mixer, trunc_normal_)

PAPER_METAFORMER = "MetaFormer Baselines for Vision (Yu et al., TPAMI 2024, arXiv 2210.13452)"
SRC_METAFORMER = "sail-sg/metaformer@64c534ab:metaformer_baselines.py"
HF = "https://huggingface.co/sail/dl/resolve/main"

# ---------------------------------------------------------------------------- mixers


class Attention(nn.Module):
    """Global multi-head self-attention over the H*W tokens of an NHWC map."""

    def __init__(self, dim, head_dim=32, num_heads=None, qkv_bias=False, attn_drop=0.0,
                 proj_drop=0.0, proj_bias=False, **kwargs):
        super().__init__()
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5
        self.num_heads = num_heads if num_heads else max(dim // head_dim, 1)
        self.attention_dim = self.num_heads * self.head_dim
        self.qkv = nn.Linear(dim, self.attention_dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(self.attention_dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, H, W, C = x.shape
        N = H * W
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        # torch's fused kernel: softmax(q k^T * scale) v, attention dropout inside (training only);
        # the official numbers within 1e-5 (parity fixtures) at a fraction of the explicit cost
        p = self.attn_drop.p if self.training else 0.0
        x = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
        x = x.transpose(1, 2).reshape(B, H, W, self.attention_dim)
        return self.proj_drop(self.proj(x))


class RandomMixing(nn.Module):
    """Frozen random token-mixing matrix (RandFormer). ``num_tokens`` defaults to H*W of
    the stage grid the block is built for (196 / 49 at 224 input, as the official code)."""

    #: bound to the token count of its build resolution
    size_bound = True

    def __init__(self, num_tokens=None, size=(14, 14), **kwargs):
        super().__init__()
        n = num_tokens or size[0] * size[1]
        self.random_matrix = nn.Parameter(torch.softmax(torch.rand(n, n), dim=-1), requires_grad=False)

    def forward(self, x):
        B, H, W, C = x.shape
        x = torch.einsum("mn, bnc -> bmc", self.random_matrix, _token_grid_check(x, self.random_matrix.shape[0]))
        return x.reshape(B, H, W, C)


@torch.fx.wrap
def _token_grid_check(x: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``x`` (B, H, W, C) as tokens (B, H*W, C), refused unless H*W is the mixing matrix's size
    (a leaf for ``torch.fx``: the check branches on the input's shape)."""
    B, H, W, C = x.shape
    if H * W != num_tokens:
        raise InputSizeError(f"RandomMixing was built for {num_tokens} tokens, "
                             f"got {H}x{W}; build the model with img_size matching the input")
    return x.reshape(B, H * W, C)


class Pooling(nn.Module):
    """PoolFormer mixer for NHWC input: avgpool(x) - x."""

    def __init__(self, pool_size=3, **kwargs):
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x):
        y = self.pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return y - x


class SepConv(nn.Module):
    """Inverted separable convolution (ConvFormer): pw -> act -> dw7x7 -> act2 -> pw."""

    def __init__(self, dim, expansion_ratio=2, act1_layer=StarReLU, act2_layer=nn.Identity,
                 bias=False, kernel_size=7, padding=3, **kwargs):
        super().__init__()
        med = int(expansion_ratio * dim)
        self.pwconv1 = nn.Linear(dim, med, bias=bias)
        self.act1 = make_activation(act1_layer)()
        self.dwconv = nn.Conv2d(med, med, kernel_size=kernel_size, padding=padding, groups=med, bias=bias)
        self.act2 = make_activation(act2_layer)()
        self.pwconv2 = nn.Linear(med, dim, bias=bias)

    def forward(self, x):
        x = self.act1(self.pwconv1(x))
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.pwconv2(self.act2(x))


register_token_mixer(Pooling, "pooling", "pool")
register_token_mixer(SepConv, "sepconv", "conv", has_act=True)
register_token_mixer(Attention, "attention", "attn")
register_token_mixer(RandomMixing, "random_mixing", "random", "rand")


_NORMS = {
    "layernorm": partial(LayerNormGeneral, eps=1e-6, bias=False),
    "layernormwithoutbias": partial(LayerNormWithoutBias, eps=1e-6),
    "modifiedlayernorm": partial(LayerNormGeneral, normalized_dim=(1, 2, 3), eps=1e-6, bias=False),
}


def resolve_norm(spec):
    if isinstance(spec, str):
        key = normalize_name(spec)
        if key not in _NORMS:
            raise ValueError(f"unknown norm layer {spec!r}; choose from {sorted(_NORMS)}")
        return _NORMS[key]
    return spec


def resolve_head(spec):
    if isinstance(spec, str):
        key = normalize_name(spec)
        if key in ("mlphead", "mlp"):
            return MlpHead
        if key in ("linear", "nnlinear"):
            return nn.Linear
        raise ValueError(f"unknown head {spec!r}; choose 'MlpHead' or 'Linear'")
    return spec


# ---------------------------------------------------------------------------- macro


class Downsampling(nn.Module):
    """pre-norm -> (NHWC->NCHW) -> conv -> NHWC -> post-norm."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 pre_norm=None, post_norm=None, pre_permute=False):
        super().__init__()
        self.pre_norm = pre_norm(in_channels) if pre_norm else nn.Identity()
        self.pre_permute = pre_permute
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=padding)
        self.post_norm = post_norm(out_channels) if post_norm else nn.Identity()

    def forward(self, x):
        x = self.pre_norm(x)
        if self.pre_permute:
            x = x.permute(0, 3, 1, 2)
        x = self.conv(x).permute(0, 2, 3, 1)
        return self.post_norm(x)


def stage_sizes(hw, layers) -> list[tuple[int, int]]:
    """The (H, W) after each downsampling layer: its strided convolution's real output size
    (``(n + 2p - k) // s + 1``, i.e. the ceiling for the 3x3/2 layers at odd sizes). The official
    code divides by ``2 ** (i + 2)``, which agrees at 224 and at every size divisible by 32, and
    builds filter grids that do not fit the feature maps at others (112, 200, 240, ...)."""
    out, (h, w) = [], (int(hw[0]), int(hw[1]))
    for i, layer in enumerate(layers):
        conv = getattr(layer, "conv", None)
        if isinstance(conv, nn.Conv2d) and not isinstance(conv.padding, str):
            (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
            (ph, pw), (dh, dw) = conv.padding, conv.dilation
            h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
            w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        else:
            f = 4 if i == 0 else 2
            h, w = h // f, w // f
        out.append((h, w))
    return out


def default_downsample_layers():
    ln = partial(LayerNormGeneral, bias=False, eps=1e-6)
    return [partial(Downsampling, kernel_size=7, stride=4, padding=2, post_norm=ln)] + \
           [partial(Downsampling, kernel_size=3, stride=2, padding=1, pre_norm=ln, pre_permute=True)] * 3


class MetaFormerBlock(nn.Module):
    """x = res_scale1(x) + layer_scale1(drop_path(mixer(norm1(x))));
       x = res_scale2(x) + layer_scale2(drop_path(mlp(norm2(x))))."""

    def __init__(self, dim, token_mixer=IdentityMixer, mlp=Mlp, norm_layer=nn.LayerNorm,
                 drop=0.0, drop_path=0.0, layer_scale_init_value=None, res_scale_init_value=None,
                 size=(14, 14)):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.token_mixer = token_mixer(dim=dim, drop=drop, size=size)
        self.drop_path1 = drop_path_or_identity(drop_path)
        self.layer_scale1 = Scale(dim, layer_scale_init_value) if layer_scale_init_value else nn.Identity()
        self.res_scale1 = Scale(dim, res_scale_init_value) if res_scale_init_value else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = mlp(dim=dim, drop=drop)
        self.drop_path2 = drop_path_or_identity(drop_path)
        self.layer_scale2 = Scale(dim, layer_scale_init_value) if layer_scale_init_value else nn.Identity()
        self.res_scale2 = Scale(dim, res_scale_init_value) if res_scale_init_value else nn.Identity()

    def forward(self, x):
        x = self.res_scale1(x) + self.layer_scale1(self.drop_path1(self.token_mixer(self.norm1(x))))
        x = self.res_scale2(x) + self.layer_scale2(self.drop_path2(self.mlp(self.norm2(x))))
        return x


class MetaFormer(ZooModel):
    """The MetaFormer of the official code; argument names are the official ones.

    Extra arguments (ours): ``input_size`` sizes the spectral filters (official DFFormer
    argument), ``act`` replaces StarReLU in the mixers' ``act1`` and the channel MLPs
    (the DFFormer GELU/ReLU ablations), and ``mixer_kwargs`` are passed to every token
    mixer (e.g. ``num_filters``, ``reweight_expansion_ratio``, ``weight_resize``).
    """

    feature_layout = "NHWC"

    def __init__(self, in_chans=3, num_classes=1000, depths=(2, 2, 6, 2), dims=(64, 128, 320, 512),
                 downsample_layers=None, token_mixers=IdentityMixer, mlps=Mlp,
                 norm_layers=partial(LayerNormGeneral, eps=1e-6, bias=False), drop_path_rate=0.0,
                 head_dropout=0.0, layer_scale_init_values=None, res_scale_init_values=(None, None, 1.0, 1.0),
                 fork_feat=False, output_norm=partial(nn.LayerNorm, eps=1e-6), head_fn=nn.Linear,
                 input_size=(3, 224, 224), act=None, mlp_ratios=4, mixer_kwargs=None):
        super().__init__()
        depths = list(depths) if isinstance(depths, (list, tuple)) else [depths]
        dims = list(dims) if isinstance(dims, (list, tuple)) else [dims]
        n = len(depths)
        if len(dims) != n:
            raise ValueError(f"depths ({len(depths)} stages) and dims ({len(dims)}) disagree")
        self.num_classes = num_classes
        self.num_stage = n
        self.depths, self.dims = depths, dims
        self.fork_feat = fork_feat
        self.input_size = tuple(input_size)
        self.in_chans = in_chans

        downsample_layers = downsample_layers or default_downsample_layers()
        if not isinstance(downsample_layers, (list, tuple)):
            downsample_layers = [downsample_layers] * n
        down_dims = [in_chans] + dims
        self.downsample_layers = nn.ModuleList(downsample_layers[i](down_dims[i], down_dims[i + 1]) for i in range(n))

        mixers = as_list(token_mixers, n, "token_mixers")
        mlp_ratios = as_list(mlp_ratios, n, "mlp_ratios")
        mlps = as_list(mlps, n, "mlps")
        norm_layers = [resolve_norm(v) for v in as_list(norm_layers, n, "norm_layers")]
        ls_init = as_list(layer_scale_init_values, n, "layer_scale_init_values")
        rs_init = as_list(res_scale_init_values, n, "res_scale_init_values")
        dp = drop_path_rates(drop_path_rate, depths)
        act_layer = make_activation(act) if act is not None else None
        mixer_kwargs = dict(mixer_kwargs or {})

        self.stages = nn.ModuleList()
        self.stage_sizes = stage_sizes(self.input_size[1:], self.downsample_layers)
        cur = 0
        for i in range(n):
            size = self.stage_sizes[i]
            mixer_cls, has_act = resolve_token_mixer(mixers[i])
            kw = dict(mixer_kwargs)
            if act_layer is not None and has_act:
                kw.setdefault("act1_layer", act_layer)
            mixer = partial(mixer_cls, **kw) if kw else mixer_cls
            mlp = mlps[i]
            if mlp is Mlp or mlp is None:
                mlp = partial(Mlp, mlp_ratio=mlp_ratios[i], **({"act_layer": act_layer} if act_layer else {}))
            self.stages.append(nn.Sequential(*[
                MetaFormerBlock(dim=dims[i], token_mixer=mixer, mlp=mlp, norm_layer=norm_layers[i],
                                drop_path=dp[cur + j], layer_scale_init_value=ls_init[i],
                                res_scale_init_value=rs_init[i], size=size)
                for j in range(depths[i])]))
            cur += depths[i]

        if fork_feat:
            for i in range(n):
                self.add_module(f"norm{i}", output_norm(dims[i]))
        else:
            self.norm = output_norm(dims[-1])
            self._head_fn, self._head_dropout = resolve_head(head_fn), head_dropout
            self.head = self._make_classifier(num_classes)
        self.num_features = self.head_hidden_size = dims[-1]
        self.classifier_name = "head.fc2" if isinstance(getattr(self, "head", None), MlpHead) else "head"
        reductions, r = [], 1
        for layer in self.downsample_layers:
            r *= layer.conv.stride[0]
            reductions.append(r)
        self.feature_info = self._feature_info(dims, reductions, [f"stages.{i}" for i in range(n)])
        self.apply(self._init_weights)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        if self._head_dropout > 0:
            return self._head_fn(self.dims[-1], num_classes, head_dropout=self._head_dropout)
        return self._head_fn(self.dims[-1], num_classes)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"norm.weight", "norm.bias"}

    # ------------------------------------------------------------------ forward (timm's API)
    first_conv = "downsample_layers.0.conv"

    def _stages_forward(self, x):
        for i in range(self.num_stage):
            x = self._run_blocks(self.stages[i], self.downsample_layers[i](x))
            yield x

    def _to_nchw(self, x, i: int):
        return x.permute(0, 3, 1, 2)

    def _final_features(self, x):
        return x.permute(0, 3, 1, 2)

    def forward_features(self, x):
        """The last stage's map (B, C, H, W); with ``fork_feat`` the list of normed stage maps."""
        if not torch.jit.is_scripting():
            if self.fork_feat:
                return [getattr(self, f"norm{i}")(y).permute(0, 3, 1, 2)
                        for i, y in enumerate(self._stages_forward(x))]
            if self.grad_checkpointing:
                return self._forward_levels(x)
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        return x.permute(0, 3, 1, 2)

    def forward_head(self, x, pre_logits: bool = False):
        """Global mean, output norm (``pre_logits``), classifier; without global pooling
        (``global_pool=''``) the output norm on every position of the map."""
        if self.global_pool_type == "":
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            x = self.norm(x.permute(0, 2, 3, 1).mean([1, 2]))
        return x if pre_logits else self.head(x)

    def forward(self, x):
        x = self.forward_features(x)
        if not torch.jit.is_scripting():
            if self.fork_feat:
                return x
        return self.forward_head(x)

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^downsample_layers\.0",
                    blocks=[(r"^downsample_layers\.(\d+)", None),
                            (r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)", None),
                            (r"^norm", (99999,))])

    # ------------------------------------------------------------------ taps
    def taps(self) -> TapList:
        t = TapList()
        for i in range(self.num_stage):
            s = i + 1
            grid = self.stage_sizes[i]
            t.append(TapSpec("stem" if i == 0 else f"downsample{s}", "stem" if i == 0 else "downsample",
                             f"downsample_layers.{i}", "NHWC", stage=s, grid=grid))
        for i, j, depth in block_depths(self.depths):
            s, p = i + 1, f"stages.{i}.{j}"
            grid = self.stage_sizes[i]
            pre = f"s{s}.b{j}"
            mixer = self.stages[i][j].token_mixer
            sub = getattr(mixer, "mixer_tap", None)
            t.append(TapSpec(f"{pre}.mixer", "mixer", f"{p}.token_mixer" + (f".{sub}" if sub else ""),
                             "NHWC", s, j, grid=grid, depth=depth))
            t.append(TapSpec(f"{pre}.residual", "residual", f"{p}.norm2", "NHWC", s, j, hook="pre", grid=grid,
                             depth=depth, note="residual stream after the token mixer (input of norm2)"))
            t.append(TapSpec(f"{pre}.mlp", "mlp", f"{p}.mlp", "NHWC", s, j, grid=grid, depth=depth))
            t.append(TapSpec(f"{pre}.block", "block", p, "NHWC", s, j, grid=grid, depth=depth))
            for extra in getattr(mixer, "spectral_taps", lambda: [])():
                role, sub, layout, note = extra
                t.append(TapSpec(f"{pre}.{role}", role, f"{p}.token_mixer.{sub}", layout, s, j, grid=grid,
                                 depth=depth, note=note))
        for i in range(self.num_stage):
            t.append(TapSpec(f"stage{i + 1}", "stage", f"stages.{i}", "NHWC", i + 1, grid=self.stage_sizes[i]))
        if not self.fork_feat:
            t.append(TapSpec("pool", "pool", "norm", "NC", note="pooled features after the output norm"))
        return execution_order(t)


def execution_order(taps: TapList) -> TapList:
    """Sort taps by the order their hooks fire in a forward pass of a staged model:
    downsample of stage s, then its blocks (mixer-internal taps, mixer, residual, mlp,
    block), then the stage output; pooled taps last."""
    role_rank = {"df_routing": 0, "df_filter": 1, "aff_mask": 1, "spf": 1, "spg": 2, "context": 3,
                 "mixer": 4, "residual": 5, "mlp": 6, "block": 7}

    def key(tp: TapSpec):
        if tp.stage is None:
            return (10 ** 6, 0, 0, 0)
        if tp.role in ("stem", "downsample"):
            return (tp.stage, -1, 0, 0)
        if tp.role == "stage":
            return (tp.stage, 10 ** 5, 0, 0)
        return (tp.stage, tp.index or 0, role_rank.get(tp.role, 4), 0)

    return TapList(sorted(taps, key=key))


# ---------------------------------------------------------------------------- registry

def _metaformer_builder(defaults: dict, img_size_bound: bool = True):
    def build(num_classes=1000, img_size=None, **overrides):
        kw = dict(defaults)
        kw.update(overrides)
        if img_size is not None:
            kw["input_size"] = (3, *img_size)
        elif "input_size" in kw:
            kw["input_size"] = tuple(kw["input_size"])
        return MetaFormer(num_classes=num_classes, **kw)
    return build


_MODIFIED_LN = "modified_layernorm"
_S12 = dict(depths=[2, 2, 6, 2], dims=[64, 128, 320, 512], norm_layers=_MODIFIED_LN)
_S18 = dict(depths=[3, 3, 9, 3], dims=[64, 128, 320, 512])
_S36 = dict(depths=[3, 12, 18, 3], dims=[64, 128, 320, 512])
_M36 = dict(depths=[3, 12, 18, 3], dims=[96, 192, 384, 576])
_B36 = dict(depths=[3, 12, 18, 3], dims=[128, 256, 512, 768])
_SIZES = {"s18": _S18, "s36": _S36, "m36": _M36, "b36": _B36}
_PAPER_PARAMS = {"convformer": {"s18": 27, "s36": 40, "m36": 57, "b36": 100},
                 "caformer": {"s18": 26, "s36": 39, "m36": 56, "b36": 99}}


def _register_metaformer(name, family, cfg, paper_params=None, crop_pct=1.0, description=""):
    mixers = cfg["token_mixers"] if isinstance(cfg["token_mixers"], list) else [cfg["token_mixers"]]
    register_model(name, family=family, paper=PAPER_METAFORMER, source=f"{SRC_METAFORMER}:{name}()",
                   weight_file=f"{name}.pth", weight_url=f"{HF}/{family}/{name}.pth", crop_pct=crop_pct,
                   feature_layout="NHWC", paper_params_m=paper_params, description=description,
                   fixed_input_size="random_mixing" in mixers)(
        _metaformer_builder(cfg))


for _size, _cfg in _SIZES.items():
    _register_metaformer(f"convformer_{_size}", "convformer", dict(_cfg, token_mixers="sepconv", head_fn="MlpHead"),
                         _PAPER_PARAMS["convformer"][_size], description="SepConv token mixer in all stages")
    _register_metaformer(f"caformer_{_size}", "caformer",
                         dict(_cfg, token_mixers=["sepconv", "sepconv", "attention", "attention"], head_fn="MlpHead"),
                         _PAPER_PARAMS["caformer"][_size], description="SepConv in stages 1-2, attention in 3-4")

_register_metaformer("identityformer_s12", "identityformer", dict(_S12, token_mixers="identity"), 11.9,
                     description="identity token mixer, modified LayerNorm")
_register_metaformer("randformer_s12", "randformer",
                     dict(_S12, token_mixers=["identity", "identity", "random_mixing", "random_mixing"]), 11.9,
                     description="frozen random token mixing in stages 3-4 (bound to the build resolution)")
_register_metaformer("poolformerv2_s12", "poolformerv2", dict(_S12, token_mixers="pooling"), 11.9,
                     description="pooling token mixer, modified LayerNorm")

__all__ = ["MetaFormer", "MetaFormerBlock", "Downsampling", "Attention", "RandomMixing", "Pooling", "SepConv",
           "SquaredReLU"]
