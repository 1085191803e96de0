"""Shared building blocks of the zoo.

Parameter and sub-module names follow the official implementations so that their
state_dicts load unchanged. Spectral operations run in float32 with autocast disabled
(``spectral_region``), so every model works under bf16/fp16 autocast.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as _torch_module

__all__ = [
    "to_2tuple", "trunc_normal_", "DropPath", "Scale", "StarReLU", "SquaredReLU",
    "LayerNormGeneral", "LayerNormWithoutBias", "Mlp", "MlpHead", "TapPoint",
    "spectral_region", "resize_complex_weight", "make_activation", "normalize_name", "IdentityMixer",
    "TOKEN_MIXERS", "register_token_mixer", "resolve_token_mixer", "fx_tracing",
]


def to_2tuple(x) -> tuple:
    if isinstance(x, Iterable) and not isinstance(x, (str, bytes)):
        t = tuple(x)
        if len(t) != 2:
            raise ValueError(f"expected a pair, got {x!r}")
        return t
    return (x, x)


def trunc_normal_(tensor: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """timm-style truncated normal (cut at +-2 absolute, i.e. effectively untruncated for std 0.02)."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2.0, b=2.0)


def normalize_name(name: str) -> str:
    """'DynamicFilter', 'dynamic_filter' and 'dynamic-filter' all become 'dynamicfilter'."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or at rate 0)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def drop_path_or_identity(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0.0 else nn.Identity()


class Scale(nn.Module):
    """Per-channel learnable scale on the last axis (ResScale / LayerScale of MetaFormer)."""

    def __init__(self, dim: int, init_value: float = 1.0, trainable: bool = True):
        super().__init__()
        self.scale = nn.Parameter(init_value * torch.ones(dim), requires_grad=trainable)

    def forward(self, x):
        return x * self.scale


class StarReLU(nn.Module):
    """s * relu(x)**2 + b with scalar learnable s and b."""

    def __init__(self, scale_value: float = 1.0, bias_value: float = 0.0,
                 scale_learnable: bool = True, bias_learnable: bool = True, inplace: bool = False):
        super().__init__()
        self.relu = nn.ReLU(inplace=inplace)
        self.scale = nn.Parameter(scale_value * torch.ones(1), requires_grad=scale_learnable)
        self.bias = nn.Parameter(bias_value * torch.ones(1), requires_grad=bias_learnable)

    def forward(self, x):
        r = self.relu(x)
        if torch.jit.is_scripting():
            return self.scale * r ** 2 + self.bias
        else:
            if (torch.is_grad_enabled() or fx_tracing() or r is x or r.dtype != self.scale.dtype
                    or self.relu._forward_hooks or _global_forward_hooks()):
                return self.scale * r ** 2 + self.bias
            # without autograd: the same operations, in the same order, in place on the fresh ReLU output
            # (bit-identical, half the memory traffic of the MLP's largest tensor)
            return r.pow_(2).mul_(self.scale).add_(self.bias)


def fx_tracing() -> bool:
    """Whether ``torch.fx`` is tracing the current call (values are then symbolic: no branching on them).

    ``is_fx_symbolic_tracing`` where torch has it (``is_fx_tracing`` warns there that it also answers
    for ``torch.export``)."""
    trace = torch.fx._symbolic_trace
    check = getattr(trace, "is_fx_symbolic_tracing", None) or trace.is_fx_tracing
    return check()


def _global_forward_hooks() -> bool:
    """Whether global module forward hooks are registered (they may keep a module's output)."""
    return bool(getattr(_torch_module, "_global_forward_hooks", None))


class SquaredReLU(nn.Module):
    def __init__(self, inplace: bool = False):
        super().__init__()
        self.relu = nn.ReLU(inplace=inplace)

    def forward(self, x):
        return torch.square(self.relu(x))


#: the one activation table of the zoo: name -> module class (MetaFormer mixers and MLPs, the
#: channels-first MLPs, AFFNet's cvnets layers and mask net)
_ACTIVATIONS = {
    "starrelu": StarReLU,
    "squaredrelu": SquaredReLU,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "hardswish": nn.Hardswish,
    "hswish": nn.Hardswish,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def make_activation(act) -> type:
    """Map a name ('starrelu', 'gelu', 'swish', ...) or a module class to a module class.

    Args:
        act: an activation name (case, '-' and '_' ignored) or an ``nn.Module`` subclass.

    Returns:
        The module class (call it to get the layer).
    """
    if isinstance(act, type) and issubclass(act, nn.Module):
        return act
    key = normalize_name(act)
    if key not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; choose from {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[key]


class LayerNormGeneral(nn.Module):
    """LayerNorm over arbitrary axes with an affine of shape ``affine_shape``.

    ``normalized_dim=(-1,)`` is the usual channels-last LayerNorm; ``(1, 2, 3)`` on NHWC
    input is the "modified LayerNorm" (statistics over H, W and C, as GroupNorm(1)).
    """

    def __init__(self, affine_shape=None, normalized_dim=(-1,), scale: bool = True,
                 bias: bool = True, eps: float = 1e-5):
        super().__init__()
        self.normalized_dim = tuple(normalized_dim)
        self.use_scale = scale
        self.use_bias = bias
        self.weight = nn.Parameter(torch.ones(affine_shape)) if scale else None
        self.bias = nn.Parameter(torch.zeros(affine_shape)) if bias else None
        self.eps = eps
        # statistics and affine over the last axis only: the case torch's fused kernel computes
        self.channels_last = self.normalized_dim == (-1,) and all(
            p is None or p.dim() == 1 for p in (self.weight, self.bias))

    #: take torch's fused kernel for the channels-last case (the same maths; off while counting FLOPs,
    #: which follow the official code's element-wise operations: ``spectrascope.engine.flops``)
    fused = True

    def forward(self, x):
        if torch.jit.is_scripting():
            use_fused = self.channels_last
        else:
            use_fused = self.fused and self.channels_last
        if use_fused:
            # the usual channels-last case: the same maths in torch's fused kernel (much faster on CPU)
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        c = x - x.mean(self.normalized_dim, keepdim=True)
        s = c.pow(2).mean(self.normalized_dim, keepdim=True)
        x = c / torch.sqrt(s + self.eps)
        if self.weight is not None:
            x = x * self.weight
        if self.bias is not None:
            x = x + self.bias
        return x

    def extra_repr(self) -> str:
        return f"normalized_dim={self.normalized_dim}, bias={self.use_bias}, eps={self.eps}"


class LayerNormWithoutBias(nn.Module):
    """Channels-last LayerNorm without bias, through ``F.layer_norm``."""

    def __init__(self, normalized_shape, eps: float = 1e-5, **kwargs):
        super().__init__()
        self.eps = eps
        self.bias = None
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.normalized_shape = tuple(normalized_shape)

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, weight=self.weight, bias=self.bias, eps=self.eps)


class Mlp(nn.Module):
    """MetaFormer channel MLP: Linear -> act -> Dropout -> Linear -> Dropout (channels-last)."""

    def __init__(self, dim: int, mlp_ratio: float = 4, out_features: int | None = None,
                 act_layer=StarReLU, drop: float = 0.0, bias: bool = False, **kwargs):
        super().__init__()
        out_features = out_features or dim
        hidden = int(mlp_ratio * dim)
        drops = to_2tuple(drop)
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = make_activation(act_layer)()
        self.drop1 = nn.Dropout(drops[0])
        self.fc2 = nn.Linear(hidden, out_features, bias=bias)
        self.drop2 = nn.Dropout(drops[1])

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class MlpHead(nn.Module):
    """MetaFormer classifier head: Linear -> SquaredReLU -> LayerNorm -> Dropout -> Linear."""

    def __init__(self, dim: int, num_classes: int = 1000, mlp_ratio: float = 4,
                 act_layer=SquaredReLU, norm_layer=nn.LayerNorm, head_dropout: float = 0.0,
                 bias: bool = True):
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = act_layer()
        self.norm = norm_layer(hidden)
        self.fc2 = nn.Linear(hidden, num_classes, bias=bias)
        self.head_dropout = nn.Dropout(head_dropout)

    def forward(self, x):
        x = self.norm(self.act(self.fc1(x)))
        return self.fc2(self.head_dropout(x))


class TapPoint(nn.Identity):
    """A named, parameter-free point inside a module whose output analyses can hook.

    It returns its input unchanged, so it costs nothing when no hook is attached and
    never changes a state_dict. Used for values the official code computes inline
    (DF routing weights and effective filters, the AFF mask, mixer outputs before an
    in-mixer skip, SPANet context)."""


@contextlib.contextmanager
def spectral_region(x: torch.Tensor):
    """Disable autocast for the FFT part of a mixer (FFTs stay float32 under AMP).

    Eager only: TorchScript compiles the mixers' ``torch.jit.is_scripting()`` branch, which runs
    the same operations without the context, and under ``torch.fx`` tracing the context is not
    recorded (the FFT inputs are cast to float32 explicitly either way)."""
    if isinstance(x, torch.fx.Proxy):
        yield
        return
    dev = x.device.type if x.device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"
    with torch.autocast(device_type=dev, enabled=False):
        yield


def resize_complex_weight(weight: torch.Tensor, new_h: int, new_w: int) -> torch.Tensor:
    """Resize a real-view complex filter ``(h, w, K, 2)`` to ``(new_h, new_w, K, 2)``.

    The official recipe (GFNet fine-tuning, DFFormer ``load_weights`` and
    ``weight_resize=True``): the K*2 real values are treated as image channels and
    resampled with bicubic interpolation, ``align_corners=True``.
    """
    h, w, k = weight.shape[0], weight.shape[1], weight.shape[2]
    if h == new_h and w == new_w:
        return weight
    x = weight.reshape(1, h, w, k * 2).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=True)
    return x.permute(0, 2, 3, 1).reshape(new_h, new_w, k, 2)


def as_list(value, n: int, name: str = "value") -> list:
    """Broadcast a scalar to a list of length n, or check the length of a sequence."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} needs {n} entries, got {len(value)}")
        return list(value)
    return [value] * n


def drop_path_rates(rate: float, depths: Sequence[int]) -> list[float]:
    return [x.item() for x in torch.linspace(0, rate, sum(depths), device="cpu")]


class IdentityMixer(nn.Module):
    """The identity token mixer (IdentityFormer; the "Base." rows of the AFFNet ablations).

    Takes and ignores any mixer constructor arguments. ``spectral_tap`` is the point analyses
    hook for the mixing term (here the input itself); ``in_mixer_skip`` is False (no skip is
    added inside the mixer)."""

    in_mixer_skip = False

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.spectral_tap = TapPoint()

    def forward(self, x):
        return self.spectral_tap(x)

    def spectral_taps(self) -> list:
        """Mixer-internal taps (none)."""
        return []


#: the one token mixer table of the zoo: (input layout, name) -> (class, takes ``act1_layer``).
#: ``NHWC`` mixers fill the MetaFormer block's ``token_mixer`` slot (``metaformer.py``,
#: ``dfformer.py``); ``NCHW`` mixers the AFFNet block's ``filter`` slot (``affnet.py``).
TOKEN_MIXERS: dict[tuple[str, str], tuple[type, bool]] = {}


def register_token_mixer(cls: type, *names: str, layout: str = "NHWC", has_act: bool = False) -> None:
    """Record a token mixer class under its class name and ``names`` for one input layout.

    Args:
        cls: the mixer class, built as ``cls(dim, **kwargs)``.
        names: further names (matched case-, '-' and '_'-insensitively).
        layout: the tensor layout the mixer takes and returns, ``"NHWC"`` or ``"NCHW"``.
        has_act: whether it takes ``act1_layer`` (set by the MetaFormer ``act`` ablations).
    """
    for n in (cls.__name__,) + names:
        TOKEN_MIXERS[(layout, normalize_name(n))] = (cls, has_act)


def resolve_token_mixer(spec, layout: str = "NHWC") -> tuple:
    """A mixer class, a ``functools.partial`` of one, a name, or None (the identity).

    Args:
        spec: what the model constructor was given for the mixer.
        layout: the slot's layout, ``"NHWC"`` (MetaFormer) or ``"NCHW"`` (AFFNet).

    Returns:
        ``(class or partial, takes act1_layer)``.
    """
    if spec is None or spec is nn.Identity:
        return IdentityMixer, False
    if isinstance(spec, str):
        entry = TOKEN_MIXERS.get((layout, normalize_name(spec)))
        if entry is None:
            known = sorted({n for (lay, n) in TOKEN_MIXERS if lay == layout})
            raise ValueError(f"unknown token mixer {spec!r}; choose from {', '.join(known)}")
        return entry
    base = getattr(spec, "func", spec)
    if base is nn.Identity:
        return IdentityMixer, False
    has_act = any(base is c and a for (lay, _), (c, a) in TOKEN_MIXERS.items() if lay == layout)
    return spec, has_act


register_token_mixer(IdentityMixer, "identity", "nn.Identity", "none", "base", layout="NHWC")
register_token_mixer(IdentityMixer, "identity", "none", "base", layout="NCHW")
