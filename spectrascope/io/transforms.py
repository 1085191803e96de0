"""Per-sample transforms: the training pipeline (random resized crop, flip, RandAugment,
normalisation, random erasing; or timm's transforms), the evaluation transform, and a raw split
wrapped with one of them. All randomness comes from per-sample seeds, so a run is reproducible
across data-loader workers and resumes exactly."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from spectrascope.errors import DataError
from spectrascope.io.pixels import MEAN, STD, eval_transform
from spectrascope.io.randaugment import RandAugmentPolicy, _randint, _uniform, rand_augment

__all__ = ["to_float", "normalize", "random_resized_crop_box", "random_erase", "AugmentConfig", "resolve_backend",
           "TrainTransform", "EvalTransform", "TransformedDataset"]

def to_float(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)


def _normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x[None], size=size, mode=mode, antialias=mode in ("bilinear", "bicubic"), **kw)[0].clamp_(0, 1)


def random_resized_crop_box(h: int, w: int, scale, ratio, g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of an Inception-style random crop (10 tries, then centre)."""
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(g, scale[0], scale[1])
        aspect = math.exp(_uniform(g, *log_r))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return _randint(g, 0, h - ch), _randint(g, 0, w - cw), ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h


def random_erase(x: torch.Tensor, prob: float, g: torch.Generator, area=(0.02, 1 / 3), log_ratio=(math.log(0.3), math.log(1 / 0.3))) -> torch.Tensor:
    """timm-style random erasing ("pixel" mode: per-pixel N(0, 1) in normalised space)."""
    if prob <= 0 or _uniform(g) >= prob:
        return x
    c, h, w = x.shape
    for _ in range(10):
        target = h * w * _uniform(g, *area)
        aspect = math.exp(_uniform(g, *log_ratio))
        eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if eh < h and ew < w:
            top, left = _randint(g, 0, h - eh), _randint(g, 0, w - ew)
            x = x.clone()
            x[:, top:top + eh, left:left + ew] = torch.randn((c, eh, ew), generator=g)
            return x
    return x


@dataclass
class AugmentConfig:
    """Training augmentation (timm flag names)."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    aa: str | None = None
    reprob: float = 0.0
    interpolation: str = "bicubic"
    backend: str = "auto"     # auto | builtin | timm


def resolve_backend(backend: str) -> str:
    backend = (backend or "auto").lower()
    if backend not in ("auto", "builtin", "timm"):
        raise DataError(f"--aug-backend must be auto, builtin or timm, not {backend!r}")
    if backend == "builtin":
        return "builtin"
    from spectrascope.compat import timm_available
    if timm_available():
        return "timm"
    if backend == "timm":
        raise DataError("--aug-backend timm needs timm: pip install 'spectrascope[timm]'")
    return "builtin"


class TrainTransform:
    """Per-sample training pipeline; ``__call__(uint8 HWC, seed) -> normalised (3, H, W)``."""

    def __init__(self, size, mean=MEAN, std=STD, aug: AugmentConfig | None = None, geometric: bool = True,
                 backend: str = "builtin"):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.aug = aug or AugmentConfig()
        self.geometric = geometric
        self.policy = RandAugmentPolicy.parse(self.aug.aa) if (self.aug.aa and backend == "builtin") else None
        self.backend = backend if geometric else "builtin"
        self._timm = None

    def _timm_transform(self):
        if self._timm is None:
            from spectrascope.compat import import_timm
            timm = import_timm()
            self._timm = timm.data.create_transform(
                input_size=(3, *self.size), is_training=True, scale=tuple(self.aug.scale), ratio=tuple(self.aug.ratio),
                hflip=self.aug.hflip, auto_augment=self.aug.aa, interpolation="random", mean=self.mean, std=self.std,
                re_prob=self.aug.reprob, re_mode="pixel")
        return self._timm

    def __call__(self, img: np.ndarray, seed: int) -> torch.Tensor:
        if self.backend == "timm":
            import random
            from PIL import Image
            for attempt in range(4):
                s = seed if attempt == 0 else (seed * 1_000_003 + attempt) % (2 ** 63)
                random.seed(s)
                np.random.seed(s % (2 ** 32))
                torch.manual_seed(s)
                try:
                    return self._timm_transform()(Image.fromarray(img))
                except ValueError as exc:
                    # timm's PosterizeIncreasing asks for 0 bits at magnitude 10, which Pillow >= 12
                    # refuses: redraw this image's augmentation (deterministically, ~0.3% of images)
                    if "bits" not in str(exc) or attempt == 3:
                        raise
        g = torch.Generator().manual_seed(int(seed))
        aug = self.aug
        if self.geometric:
            h, w = img.shape[:2]
            top, left, ch, cw = random_resized_crop_box(h, w, aug.scale, aug.ratio, g)
            x = _resize(to_float(img[top:top + ch, left:left + cw]), self.size, aug.interpolation)
            if aug.hflip > 0 and _uniform(g) < aug.hflip:
                x = x.flip(-1)
        else:
            x = _resize(to_float(img), self.size, aug.interpolation)
        if self.policy is not None:
            x = rand_augment(x, self.policy, g, geometric=self.geometric)
        x = _normalize(x, self.mean, self.std)
        return random_erase(x, aug.reprob, g)


class EvalTransform:
    """Photos: resize the shorter side to S / crop_pct and centre-crop S (as ``data.eval_transform``);
    fixed-size arrays (CIFAR, synthetic): resize to S. Then normalise."""

    def __init__(self, size, mean=MEAN, std=STD, crop_pct: float = 0.9, center_crop: bool = True):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mean, self.std, self.crop_pct, self.center_crop = tuple(mean), tuple(std), crop_pct, center_crop

    def __call__(self, img: np.ndarray, seed=None) -> torch.Tensor:
        x = to_float(img)
        if self.center_crop:
            return eval_transform(x, self.size, self.crop_pct, self.mean, self.std)
        return _normalize(_resize(x, self.size), self.mean, self.std)


class TransformedDataset(torch.utils.data.Dataset):
    """A raw split plus a transform; items are addressed by ``i`` or ``(i, seed)``."""

    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, 0)
        img, label, extras = self.base.load(int(i))
        return (self.transform(img, seed), label, *extras)


normalize = _normalize
