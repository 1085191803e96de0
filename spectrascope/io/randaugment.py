"""RandAugment-lite on tensors: timm's ``rand-mM[-nN][-mstdS][-incI]`` policies over its 15 ops,
drawn from a ``torch.Generator`` (reproducible per sample)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spectrascope.errors import DataError

__all__ = ["RandAugmentPolicy", "apply_ra_op", "rand_augment"]

def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Integer in [lo, hi] inclusive."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


# RandAugment-lite: op -> (kind, strength at level 10). Photometric ops keep the geometry.
# Posterize/Solarize get stronger with the level (timm's "increasing" variants); the
# enhance ops use factor 1 +/- 0.9 level/10 with ``inc1`` and 0.1 + 1.8 level/10 otherwise.
_RA_OPS = {
    "AutoContrast": ("photo", None), "Equalize": ("photo", None), "Invert": ("photo", None),
    "Rotate": ("geo", 30.0), "Posterize": ("photo", 4), "Solarize": ("photo", 1.0), "SolarizeAdd": ("photo", 110 / 255),
    "Color": ("photo", 0.9), "Contrast": ("photo", 0.9), "Brightness": ("photo", 0.9), "Sharpness": ("photo", 0.9),
    "ShearX": ("geo", 0.3), "ShearY": ("geo", 0.3), "TranslateXRel": ("geo", 0.45), "TranslateYRel": ("geo", 0.45),
}


@dataclass(frozen=True)
class RandAugmentPolicy:
    num_ops: int = 2
    magnitude: float = 9.0
    mstd: float = 0.0
    increasing: bool = False
    prob: float = 0.5

    @classmethod
    def parse(cls, text: str) -> "RandAugmentPolicy":
        """timm-style ``rand-m9-mstd0.5-inc1`` (also ``-n2``)."""
        parts = str(text).split("-")
        if parts[0] != "rand":
            raise DataError(f"--aa {text!r}: the built-in augmentation knows RandAugment policies "
                            "('rand-m9-mstd0.5-inc1'); install timm for AutoAugment policies")
        kw = {}
        for p in parts[1:]:
            try:
                if p.startswith("mstd"):
                    kw["mstd"] = float(p[4:])
                elif p.startswith("inc"):
                    kw["increasing"] = bool(int(p[3:]))
                elif p.startswith("m"):
                    kw["magnitude"] = float(p[1:])
                elif p.startswith("n"):
                    kw["num_ops"] = int(p[1:])
                elif p.startswith("p"):
                    kw["prob"] = float(p[1:])
                else:
                    raise ValueError
            except ValueError:
                raise DataError(f"--aa {text!r}: cannot parse {p!r}") from None
        return cls(**kw)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: float) -> torch.Tensor:
    """factor * a + (1 - factor) * b, clipped (PIL ImageEnhance semantics: b is the degenerate image)."""
    return (b + factor * (a - b)).clamp_(0, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]


def _equalize(x: torch.Tensor) -> torch.Tensor:
    q = (x * 255).round().long().clamp_(0, 255)
    out = torch.empty_like(x)
    for c in range(3):
        hist = torch.bincount(q[c].flatten(), minlength=256).float()
        cdf = hist.cumsum(0)
        nz = cdf[hist > 0]
        lo = nz[0] if len(nz) else cdf[-1]
        denom = (cdf[-1] - lo).clamp(min=1)
        lut = ((cdf - lo) / denom).clamp_(0, 1)
        out[c] = lut[q[c]]
    return out


def _affine(x: torch.Tensor, matrix: list[list[float]], fill: float = 0.5) -> torch.Tensor:
    """Apply a 2x3 affine map (normalised coordinates, output -> input) with constant fill."""
    theta = torch.tensor([matrix], dtype=x.dtype)
    grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
    ones = torch.ones_like(x[:1])
    y = F.grid_sample(torch.cat([x, ones])[None], grid, mode="bilinear", padding_mode="zeros",
                      align_corners=False)[0]
    valid = y[3:]
    return y[:3] + (1 - valid) * fill


def apply_ra_op(x: torch.Tensor, name: str, level: float, g: torch.Generator, increasing: bool = False) -> torch.Tensor:
    """One RandAugment op on a float (3, H, W) image in [0, 1]; ``level`` in [0, 10]."""
    kind, top = _RA_OPS[name]
    frac = max(0.0, min(10.0, level)) / 10.0
    sign = -1.0 if _uniform(g) < 0.5 else 1.0
    if name == "AutoContrast":
        lo = x.amin(dim=(1, 2), keepdim=True)
        hi = x.amax(dim=(1, 2), keepdim=True)
        return torch.where(hi > lo, (x - lo) / (hi - lo).clamp(min=1e-8), x)
    if name == "Equalize":
        return _equalize(x)
    if name == "Invert":
        return 1.0 - x
    if name == "Posterize":
        shift = int(round(frac * top))            # keep 8 .. 4 bits
        q = (x * 255).round().long() >> shift << shift
        return q.float() / 255
    if name == "Solarize":
        return torch.where(x >= 1.0 - frac * top, 1.0 - x, x)
    if name == "SolarizeAdd":
        return torch.where(x < 0.5, (x + frac * top).clamp(max=1.0), x)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        factor = 1.0 + sign * frac * top if increasing else frac * 1.8 + 0.1
        if name == "Color":
            return _blend(x, _gray(x).expand_as(x), factor)
        if name == "Contrast":
            return _blend(x, _gray(x).mean().expand_as(x), factor)
        if name == "Brightness":
            return _blend(x, torch.zeros_like(x), factor)
        k = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype) / 13
        blur = F.conv2d(F.pad(x[:, None], (1, 1, 1, 1), mode="replicate"), k[None, None])[:, 0]
        return _blend(x, blur, factor)
    v = sign * frac * top
    if name == "Rotate":
        a = math.radians(v)
        h, w = x.shape[-2:]
        ar = w / h
        return _affine(x, [[math.cos(a), -math.sin(a) / ar, 0], [math.sin(a) * ar, math.cos(a), 0]])
    if name == "ShearX":
        return _affine(x, [[1, v * x.shape[-2] / x.shape[-1], 0], [0, 1, 0]])
    if name == "ShearY":
        return _affine(x, [[1, 0, 0], [v * x.shape[-1] / x.shape[-2], 1, 0]])
    if name == "TranslateXRel":
        return _affine(x, [[1, 0, -2 * v], [0, 1, 0]])
    if name == "TranslateYRel":
        return _affine(x, [[1, 0, 0], [0, 1, -2 * v]])
    raise KeyError(name)


def rand_augment(x: torch.Tensor, policy: RandAugmentPolicy, g: torch.Generator, geometric: bool = True) -> torch.Tensor:
    ops = [n for n, (k, _) in _RA_OPS.items() if geometric or k == "photo"]
    for _ in range(policy.num_ops):
        name = ops[_randint(g, 0, len(ops) - 1)]
        if _uniform(g) > policy.prob:
            continue
        level = policy.magnitude
        if policy.mstd > 0:
            level += policy.mstd * torch.randn((), generator=g).item()
        x = apply_ra_op(x, name, level, g, policy.increasing)
    return x
