"""Synthetic data: procedural band-limited oriented textures, one class per (band,
orientation), deterministic per (seed, split, index); ``SyntheticTextures.load(i)`` ->
(uint8 HWC, label, (patch box,)) with the box ``(x0, y0, x1, y1)`` in pixels of the image
(x1, y1 exclusive)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from spectrascope.errors import DataError

__all__ = ["MAX_SIDE", "SyntheticConfig", "SyntheticTextures", "texture_mask"]

#: largest image side of synthetic data (px)
MAX_SIDE = 8192

_INT_OPTIONS = ("num_classes", "train_size", "val_size", "size", "height", "width", "bands", "orientations", "seed")


def _typed_option(cls, key: str, value):
    """A synthetic option value checked against the field's type (ints are ints, floats are numbers)."""
    default = {f.name: f.default for f in fields(cls)}[key]
    if value is None and default is None:
        return None
    if key in _INT_OPTIONS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise DataError(f"synthetic: {key}={value!r} is not an integer (default {default})", option="--data")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"synthetic: {key}={value!r} is not a finite number (default {default})", option="--data")
    return float(value)


@dataclass(frozen=True)
class SyntheticConfig:
    """A deterministic, class-conditional texture data set.

    Each image is white noise (std ``noise``) with, at a random position, a square patch
    (side ``patch`` x image side, raised-cosine edges) of band-limited oriented texture
    (unit std x ``contrast``; filtered white noise drawn on a >= 128 px periodic grid and
    cropped, so every band has many frequencies whatever the patch size). Class ``c`` is (band ``c // orientations``, orientation
    ``c % orientations``): bands split [fmin, fmax] (cycles/pixel) on a log scale, leaving
    ``gap`` of each band's log-width empty between neighbours; orientations are the
    frequency directions ``k * 180 / orientations`` degrees (0 = vertical stripes), each
    +/- (1 - gap) x 90 / orientations degrees wide. A random per-channel gain and offset
    make colour uninformative. Image ``i`` of a split depends only on (seed, split, i).
    """

    num_classes: int = 8
    train_size: int = 2048
    val_size: int = 512
    size: int = 64
    height: int | None = None
    width: int | None = None
    patch: float = 0.5
    bands: int | None = None
    orientations: int | None = None
    fmin: float = 0.04
    fmax: float = 0.36
    gap: float = 0.3
    noise: float = 0.5
    contrast: float = 1.0
    seed: int = 0

    def __post_init__(self):
        n, b, o = self.num_classes, self.bands, self.orientations
        if b is None and o is None:
            o = 2 if n % 2 == 0 else 1
            b = n // o
        elif b is None:
            b = n // o if o and n % o == 0 else 0
        elif o is None:
            o = n // b if b and n % b == 0 else 0
        if not (isinstance(b, int) and isinstance(o, int) and b >= 1 and o >= 1 and b * o == n):
            raise DataError(f"synthetic: num_classes={n} must equal bands x orientations "
                            f"(got bands={self.bands}, orientations={self.orientations})", option="--data")
        object.__setattr__(self, "bands", int(b))
        object.__setattr__(self, "orientations", int(o))
        object.__setattr__(self, "height", int(self.height or self.size))
        object.__setattr__(self, "width", int(self.width or self.size))
        checks = [(n >= 2, "num_classes >= 2"), (self.train_size >= 1 and self.val_size >= 1, "sizes >= 1"),
                  (8 <= min(self.height, self.width) and max(self.height, self.width) <= MAX_SIDE,
                   f"8 <= image side <= {MAX_SIDE}"), (0 < self.patch <= 1, "0 < patch <= 1"),
                  (0 < self.fmin < self.fmax <= 0.5, "0 < fmin < fmax <= 0.5 cycles/pixel"),
                  (0 <= self.gap < 1, "0 <= gap < 1"), (self.noise >= 0 and self.contrast > 0, "noise >= 0, contrast > 0")]
        for ok, what in checks:
            if not ok:
                raise DataError(f"synthetic: need {what}", option="--data")

    @classmethod
    def from_options(cls, options: dict, img_size=None) -> "SyntheticConfig":
        """The configuration of ``synthetic:k=v,...`` options; unknown keys and values of the wrong
        type are ``DataError``s naming ``--data``, the key and what it accepts."""
        known = [f.name for f in fields(cls)]
        bad = sorted(set(options) - set(known))
        if bad:
            raise DataError(f"synthetic: unknown option(s) {', '.join(bad)}; accepted: {', '.join(known)}",
                            option="--data")
        kw = {k: _typed_option(cls, k, v) for k, v in options.items()}
        if img_size is not None and "size" not in kw and "height" not in kw and "width" not in kw:
            h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            kw.update(size=h, height=h, width=w)
        return cls(**kw)

    @property
    def patch_hw(self) -> tuple[int, int]:
        return max(4, round(self.patch * self.height)), max(4, round(self.patch * self.width))

    def band_edges(self) -> list[tuple[float, float]]:
        """(low, high) radial frequency of every band, cycles/pixel."""
        r = (self.fmax / self.fmin) ** (1.0 / self.bands)
        shrink = r ** (self.gap / 2)
        return [(self.fmin * r ** k * shrink, self.fmin * r ** (k + 1) / shrink) for k in range(self.bands)]

    def orientation_centres(self) -> list[float]:
        """Frequency direction of every orientation class, radians in [0, pi)."""
        return [k * math.pi / self.orientations for k in range(self.orientations)]

    def class_info(self, c: int) -> dict:
        lo, hi = self.band_edges()[c // self.orientations]
        theta = self.orientation_centres()[c % self.orientations]
        return {"class": c, "band": c // self.orientations, "orientation": c % self.orientations,
                "f_low": lo, "f_high": hi, "theta_deg": math.degrees(theta)}

    def describe(self) -> dict:
        d = asdict(self)
        d["classes"] = [self.class_info(c) for c in range(self.num_classes)]
        return d


def texture_mask(shape: tuple[int, int], f_low: float, f_high: float, theta: float | None,
                 half_width: float) -> np.ndarray:
    """Boolean rfft2 mask (H, W//2+1): radial frequency in [f_low, f_high) cycles/pixel and,
    unless ``theta`` is None, direction within ``half_width`` of ``theta`` (mod pi)."""
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    r = np.sqrt(fx ** 2 + fy ** 2)
    mask = (r >= f_low) & (r < f_high)
    if theta is not None:
        ang = np.mod(np.arctan2(fy, fx), np.pi)
        d = np.abs(ang - theta)
        d = np.minimum(d, np.pi - d)
        mask &= d <= half_width
    return mask


def _taper(n: int) -> np.ndarray:
    t = max(1, n // 8)
    w = np.ones(n)
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(t) + 0.5) / t)
    w[:t] = ramp
    w[n - t:] = ramp[::-1]
    return w


class SyntheticTextures:
    """One split of the synthetic data set; ``load(i)`` -> (uint8 HWC, label, (box,))."""

    SPLITS = {"train": 0, "val": 1}

    def __init__(self, cfg: SyntheticConfig, split: str = "train"):
        if split not in self.SPLITS:
            raise DataError(f"synthetic split must be train or val, not {split!r}")
        self.cfg, self.split = cfg, split
        self.classes = [f"band{c // cfg.orientations}_ori{c % cfg.orientations}" for c in range(cfg.num_classes)]
        ph, pw = cfg.patch_hw
        # textures are drawn on a larger periodic grid (fine frequency resolution) and cropped
        self._grid = (max(128, 1 << (2 * ph - 1).bit_length()), max(128, 1 << (2 * pw - 1).bit_length()))
        half = (1 - cfg.gap) * math.pi / (2 * cfg.orientations)
        theta = cfg.orientation_centres()
        self._masks = []
        for c in range(cfg.num_classes):
            lo, hi = cfg.band_edges()[c // cfg.orientations]
            th = theta[c % cfg.orientations] if cfg.orientations > 1 else None
            m = texture_mask(self._grid, lo, hi, th, half)
            if not m.any():
                raise DataError(f"synthetic: class {c} has no frequency on the texture grid; use fewer bands")
            self._masks.append(m)
        self._window = np.outer(_taper(ph), _taper(pw))

    def __len__(self) -> int:
        return self.cfg.train_size if self.split == "train" else self.cfg.val_size

    def label(self, i: int) -> int:
        return i % self.cfg.num_classes

    def render(self, i: int) -> tuple[np.ndarray, int, tuple[int, int, int, int]]:
        """Float image (H, W, 3) in [0, 1], label, box."""
        cfg = self.cfg
        if not 0 <= i < len(self):
            raise IndexError(i)
        rng = np.random.default_rng([cfg.seed, self.SPLITS[self.split], i])
        label = self.label(i)
        ph, pw = cfg.patch_hw
        spec = np.fft.rfft2(rng.standard_normal(self._grid)) * self._masks[label]
        tex = np.fft.irfft2(spec, s=self._grid)[:ph, :pw]
        tex *= cfg.contrast / max(tex.std(), 1e-8)
        gray = cfg.noise * rng.standard_normal((cfg.height, cfg.width))
        y0 = int(rng.integers(0, cfg.height - ph + 1))
        x0 = int(rng.integers(0, cfg.width - pw + 1))
        win = self._window
        gray[y0:y0 + ph, x0:x0 + pw] = gray[y0:y0 + ph, x0:x0 + pw] * (1 - win) + tex * win
        gain = rng.uniform(0.8, 1.2, size=3)
        offset = rng.uniform(-0.08, 0.08, size=3)
        img = np.clip(0.5 + 0.18 * gray[..., None] * gain + offset, 0.0, 1.0)
        return img, label, (x0, y0, x0 + pw, y0 + ph)

    def load(self, i: int):
        img, label, box = self.render(i)
        return (img * 255.0 + 0.5).astype(np.uint8), label, (torch.tensor(box, dtype=torch.int64),)

    def boxes(self) -> np.ndarray:
        """(N, 4) boxes of the whole split (renders every image)."""
        return np.array([self.render(i)[2] for i in range(len(self))], dtype=np.int64)
