"""Training and evaluation data: data specs, datasets and augmentation.

Data specs (``--data SPEC``)::

    imagefolder:PATH      ImageNet layout: PATH/train/<class>/*.jpg and PATH/val/<class>/*.jpg
    cifar10:PATH          the CIFAR-10 python archive (cifar-10-python.tar.gz, or its extracted
    cifar100:PATH         cifar-10-batches-py / cifar-100-python folder, or a folder holding either)
    synthetic[:k=v,...]   procedural band-limited oriented textures (see ``SyntheticConfig``)
    samples               the bundled photos (analyses only: they have no labels)

Nothing is downloaded; images are decoded with Pillow; CIFAR pickles are read with a
restricted unpickler that only rebuilds numpy arrays (no code from the archive runs).

Every dataset yields ``(image, label)``; ``synthetic`` yields ``(image, label, box)`` with
the texture patch box ``(x0, y0, x1, y1)`` in pixels of the returned image (x1, y1
exclusive).

Augmentation: timm's transforms and Mixup when timm is installed (``backend="timm"``),
otherwise a built-in pipeline on tensors (``backend="builtin"``): random resized crop,
horizontal flip, RandAugment-lite (``rand-mM[-nN][-mstdS]`` policies over timm's 15 ops, in torch),
normalisation, random erasing ("pixel" mode), and batch mixup/cutmix with label smoothing.
All randomness is drawn from per-sample / per-batch seeds, so a run is reproducible across
data-loader workers and resumes exactly.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import tarfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from spectrascope.errors import DataError
from spectrascope.io.pixels import IMAGE_SUFFIXES, MEAN, STD, decode_rgb_uint8, eval_transform

SPEC_HELP = ("imagefolder:PATH | cifar10:PATH | cifar100:PATH | "
             "synthetic[:num_classes=8,train_size=2048,val_size=512,...] | samples")
KINDS = ("imagefolder", "cifar10", "cifar100", "synthetic", "samples")


# ---------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class DataSpec:
    kind: str
    path: Path | None = None
    options: dict = field(default_factory=dict)
    text: str = ""


def parse_data_spec(text: str) -> DataSpec:
    """``'cifar10:/data/cifar'`` -> DataSpec('cifar10', Path(...)); ``'synthetic:num_classes=4'``
    -> DataSpec('synthetic', options={'num_classes': 4}). Every malformed spec is a ``DataError``
    naming ``--data`` and what is accepted."""
    if text is None or not str(text).strip():
        raise DataError(f"empty data spec (use {SPEC_HELP})", option="--data")
    text = str(text).strip()
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise DataError(f"unknown data spec {text!r} (use {SPEC_HELP})", option="--data")
    if kind == "synthetic":
        return DataSpec(kind, None, _parse_options(rest), text)
    if kind == "samples":
        if rest:
            raise DataError(f"'samples' takes no argument (got {text!r})", option="--data")
        return DataSpec(kind, None, {}, text)
    if not rest.strip():
        raise DataError(f"{kind} needs a path: {kind}:PATH", option="--data")
    return DataSpec(kind, Path(rest.strip()).expanduser(), {}, text)


def parse_scalar(text: str, *, booleans: bool = False):
    """One option value: ``none``/``null`` -> None, an int, a float, ``true``/``false`` when
    ``booleans``, else the text itself (data-spec values and ``--model-kwargs`` both use it)."""
    low = text.lower()
    if booleans and low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _parse_options(text: str) -> dict:
    known = ", ".join(f.name for f in fields(SyntheticConfig))
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise DataError(f"synthetic option {part!r} is not KEY=VALUE (keys: {known})", option="--data")
        k, v = (s.strip() for s in part.split("=", 1))
        if not k or not v:
            raise DataError(f"synthetic option {part!r} needs both a key and a value (keys: {known})",
                            option="--data")
        if k in out:
            raise DataError(f"synthetic option {k!r} is given twice", option="--data")
        out[k] = parse_scalar(v)
    return out


# ---------------------------------------------------------------------------- synthetic

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


# ---------------------------------------------------------------------------- CIFAR


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR python archives: only numpy array reconstruction is allowed."""

    def find_class(self, module, name):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            core = getattr(np, "_core", None) or np.core
            return core.multiarray._reconstruct
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "_codecs" and name == "encode":   # bytes pickled by Python 3 with protocol 2
            import codecs
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


def safe_unpickle(data: bytes, what: str = "archive") -> dict:
    """Load a pickled dict of numpy arrays / lists / bytes without running pickled code."""
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:
        raise DataError(f"{what}: not a readable CIFAR pickle ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{what}: expected a dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


_CIFAR = {
    "cifar10": {"dir": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"],
                "meta": "batches.meta", "labels": "labels", "names": "label_names", "num_classes": 10},
    "cifar100": {"dir": "cifar-100-python", "train": ["train"], "val": ["test"], "meta": "meta",
                 "labels": "fine_labels", "names": "fine_label_names", "num_classes": 100},
}


class _CifarSource:
    """Members of a CIFAR archive, from a folder or straight from the .tar.gz (no extraction)."""

    def __init__(self, kind: str, path: Path):
        self.kind, self.info = kind, _CIFAR[kind]
        path = Path(path)
        self.tar = None
        if path.is_file():
            try:
                self.tar = tarfile.open(path, "r:*")
            except tarfile.TarError as exc:
                raise DataError(f"{kind}: {path} is not a readable tar archive ({exc})") from None
            self.members = {Path(m.name).name: m for m in self.tar.getmembers() if m.isfile()}
            self.where = str(path)
        elif path.is_dir():
            folder = path / self.info["dir"] if (path / self.info["dir"]).is_dir() else path
            self.members = {p.name: p for p in folder.iterdir() if p.is_file()}
            self.where = str(folder)
        else:
            raise DataError(f"{kind}: {path} not found (give the python archive or its extracted folder)")
        need = self.info["train"] + self.info["val"]
        missing = [m for m in need if m not in self.members]
        if missing:
            raise DataError(f"{kind}: {self.where} lacks {', '.join(missing)} "
                            f"(expected the python version of the archive, folder {self.info['dir']})")

    def read(self, name: str) -> dict:
        m = self.members[name]
        data = self.tar.extractfile(m).read() if self.tar is not None else Path(m).read_bytes()
        return safe_unpickle(data, f"{self.where}/{name}")

    def close(self):
        if self.tar is not None:
            self.tar.close()


class ArrayImages:
    """Images held in memory as uint8 (N, H, W, 3) with integer labels."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], classes: list[str]):
        self.images, self.labels, self.classes = images, np.asarray(labels, dtype=np.int64), classes

    def __len__(self):
        return len(self.images)

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def load(self, i: int):
        return self.images[i], int(self.labels[i]), ()


def load_cifar(kind: str, path, split: str) -> ArrayImages:
    src = _CifarSource(kind, Path(path))
    info = src.info
    try:
        images, labels = [], []
        for name in info[split]:
            d = src.read(name)
            arr, lab = d.get("data"), d.get(info["labels"])
            if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != 3072 \
                    or lab is None or len(lab) != len(arr):
                raise DataError(f"{kind}: {src.where}/{name} does not hold uint8 'data' (N, 3072) and "
                                f"'{info['labels']}' of the same length")
            images.append(arr.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.extend(int(v) for v in lab)
        classes = [str(i) for i in range(info["num_classes"])]
        if info["meta"] in src.members:
            names = src.read(info["meta"]).get(info["names"])
            if isinstance(names, list) and len(names) == info["num_classes"]:
                classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    finally:
        src.close()
    labels = np.asarray(labels, dtype=np.int64)
    if labels.min() < 0 or labels.max() >= info["num_classes"]:
        raise DataError(f"{kind}: labels outside [0, {info['num_classes']})")
    return ArrayImages(np.ascontiguousarray(np.concatenate(images)), labels, classes)


# ---------------------------------------------------------------------------- image folders


class FolderImages:
    """``root/<class>/*.jpg`` with a fixed class list (decoded with Pillow on access)."""

    def __init__(self, root: Path, classes: list[str]):
        self.root, self.classes = root, classes
        self.samples: list[tuple[Path, int]] = []
        for c, name in enumerate(classes):
            d = root / name
            if d.is_dir():
                self.samples += [(p, c) for p in sorted(d.rglob("*"))
                                 if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not self.samples:
            raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {root}")

    def __len__(self):
        return len(self.samples)

    def label(self, i: int) -> int:
        return self.samples[i][1]

    def load(self, i: int):
        path, label = self.samples[i]
        return decode_rgb_uint8(path), label, ()


def _image_folder_splits(root: Path):
    if not root.is_dir():
        raise DataError(f"imagefolder: {root} not found")
    train, val = root / "train", root / "val"
    if not train.is_dir() or not val.is_dir():
        raise DataError(f"imagefolder: {root} needs train/ and val/ subfolders with one folder per class")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"imagefolder: {train} has no class folders")
    extra = sorted(p.name for p in val.iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise DataError(f"imagefolder: val has classes missing from train: {', '.join(extra[:5])}")
    return classes


# ---------------------------------------------------------------------------- bundles


@dataclass
class DataBundle:
    """The two splits of a data spec (raw: ``load(i)`` -> (uint8 HWC, label, extras))."""

    spec: DataSpec
    train: object
    val: object
    classes: list[str]
    #: geometric augmentations (crops, flips, rotations) keep the label
    geometric_ok: bool = True
    #: resize + centre-crop for evaluation (photos) or plain resize (fixed-size arrays)
    center_crop: bool = True
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_data(spec: str | DataSpec, img_size=None) -> DataBundle:
    """Open a data spec (checks that everything exists; decodes nothing yet)."""
    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    if spec.kind == "samples":
        raise DataError("'samples' are unlabelled photos for analyses; train/evaluate need "
                        "imagefolder:PATH, cifar10:PATH, cifar100:PATH or synthetic")
    if spec.kind == "synthetic":
        cfg = SyntheticConfig.from_options(spec.options, img_size)
        tr, va = SyntheticTextures(cfg, "train"), SyntheticTextures(cfg, "val")
        return DataBundle(spec, tr, va, tr.classes, geometric_ok=False, center_crop=False,
                          info={"synthetic": cfg.describe()})
    if spec.kind in _CIFAR:
        tr, va = load_cifar(spec.kind, spec.path, "train"), load_cifar(spec.kind, spec.path, "val")
        return DataBundle(spec, tr, va, tr.classes, geometric_ok=True, center_crop=False)
    classes = _image_folder_splits(spec.path)
    return DataBundle(spec, FolderImages(spec.path / "train", classes), FolderImages(spec.path / "val", classes),
                      classes, geometric_ok=True, center_crop=True)


# ---------------------------------------------------------------------------- transforms


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


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Integer in [lo, hi] inclusive."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


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
    return (h - ch) // 2, (w - cw) // 2, ch, cw


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


# ---------------------------------------------------------------------------- mixup / cutmix


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


# ---------------------------------------------------------------------------- analyses


def cache_root() -> Path:
    return Path(os.environ.get("SPECTRASCOPE_CACHE", Path.home() / ".cache" / "spectrascope"))


def _cached_count(meta_path: Path) -> int:
    """Images already written beside ``labels.json`` (0 when it is missing or damaged: rewritten)."""
    if not meta_path.is_file():
        return 0
    try:
        return len(json.loads(meta_path.read_text())["labels"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def materialize_images(spec: str | DataSpec, split: str = "val", limit: int | None = None) -> list[Path]:
    """Write the first ``limit`` images of a synthetic or CIFAR split as PNG files (cached in
    ``$SPECTRASCOPE_CACHE`` or ~/.cache/spectrascope; lossless, so their pixels equal the data
    set's) and return their paths. A sidecar ``labels.json`` holds labels, class names and
    (synthetic) patch boxes ``(x0, y0, x1, y1)`` in pixels."""
    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    if spec.kind not in ("synthetic", "cifar10", "cifar100"):
        raise DataError(f"cannot write images for {spec.kind!r}")
    bundle = load_data(spec)
    base = bundle.val if split == "val" else bundle.train
    n = len(base) if limit is None else max(0, min(limit, len(base)))
    key = {"spec": spec.kind, "options": spec.options, "split": split}
    if spec.path is not None:
        st = Path(spec.path).stat()
        key.update(path=str(Path(spec.path).resolve()), size=st.st_size, mtime=st.st_mtime_ns)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = cache_root() / "images" / f"{spec.kind}-{split}-{digest}"
    names = [f"{i:06d}.png" for i in range(n)]
    meta_path = folder / "labels.json"
    have = _cached_count(meta_path)
    if have >= n:
        return [folder / nm for nm in names]
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"spec": spec.text, "split": split, "classes": bundle.classes, "labels": [], "boxes": []}
    for i, nm in enumerate(names):
        img, label, extras = base.load(i)
        if not (folder / nm).is_file():
            tmp = folder / f".{nm}.tmp-{os.getpid()}.png"
            Image.fromarray(img).save(tmp)
            os.replace(tmp, folder / nm)
        meta["labels"].append(int(label))
        if extras:
            meta["boxes"].append([int(v) for v in extras[0].tolist()])
    if not meta["boxes"]:
        del meta["boxes"]
    tmp = folder / f".labels.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, meta_path)
    return [folder / nm for nm in names]


__all__ = ["DataSpec", "parse_data_spec", "SyntheticConfig", "SyntheticTextures", "ArrayImages", "FolderImages",
           "load_cifar", "safe_unpickle", "DataBundle", "load_data", "AugmentConfig", "TrainTransform",
           "EvalTransform", "TransformedDataset", "MixupCutmix", "build_mixup", "RandAugmentPolicy",
           "rand_augment", "random_erase", "random_resized_crop_box", "materialize_images", "resolve_backend",
           "texture_mask", "SPEC_HELP"]
