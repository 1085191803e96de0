"""Batch mixup / cutmix with label smoothing (timm semantics), ours or timm's."""
from __future__ import annotations

import math

import numpy as np
import torch

from spectrascope.errors import DataError

__all__ = ["one_hot_smooth", "cutmix_box", "MixupCutmix", "build_mixup"]

def one_hot_smooth(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    out = torch.full((y.shape[0], num_classes), off, device=y.device)
    return out.scatter_(1, y.view(-1, 1), 1.0 - smoothing + off)


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    ratio = math.sqrt(1 - lam)
    ch, cw = int(h * ratio), int(w * ratio)
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    return (max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w))


class MixupCutmix:
    """Batch-mode mixup/cutmix (timm semantics): with probability ``prob`` the batch is mixed
    with its reverse, by cutmix with probability ``switch_prob`` when both are enabled;
    ``lam`` ~ Beta(alpha, alpha); cutmix corrects ``lam`` to the pasted area. Targets are
    label-smoothed one-hot vectors mixed with the same ``lam``."""

    def __init__(self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, smoothing: float = 0.1, num_classes: int = 1000):
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.smoothing, self.num_classes = prob, switch_prob, smoothing, num_classes

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator):
        lam, use_cutmix = 1.0, False
        if self.enabled and rng.random() < self.prob:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                use_cutmix = rng.random() < self.switch_prob
            else:
                use_cutmix = self.cutmix_alpha > 0
            alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
            lam = float(rng.beta(alpha, alpha))
        if lam < 1.0:
            if use_cutmix:
                y0, y1, x0, x1 = cutmix_box(x.shape[-2], x.shape[-1], lam, rng)
                x = x.clone()
                x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
                lam = 1.0 - (y1 - y0) * (x1 - x0) / float(x.shape[-2] * x.shape[-1])
            else:
                x = x * lam + x.flip(0) * (1.0 - lam)
        t = one_hot_smooth(y, self.num_classes, self.smoothing)
        return x, t * lam + t.flip(0) * (1.0 - lam)


def build_mixup(backend: str, mixup: float, cutmix: float, prob: float, switch_prob: float, smoothing: float,
                num_classes: int):
    """timm's Mixup (backend 'timm') or ours; None when both alphas are 0."""
    if mixup <= 0 and cutmix <= 0:
        return None
    if backend == "timm":
        from spectrascope.compat import import_timm
        timm = import_timm()
        m = timm.data.Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=prob, switch_prob=switch_prob,
                            mode="batch", label_smoothing=smoothing, num_classes=num_classes)
        return _TimmMixup(m)
    return MixupCutmix(mixup, cutmix, prob, switch_prob, smoothing, num_classes)


class _TimmMixup:
    """timm's Mixup draws from numpy's global RNG: seed it from the step generator first."""

    def __init__(self, m):
        self.m = m

    def __call__(self, x, y, rng: np.random.Generator):
        np.random.seed(int(rng.integers(0, 2 ** 32 - 1)))
        if x.shape[0] % 2:
            raise DataError("timm's Mixup needs an even batch size")
        return self.m(x, y)
