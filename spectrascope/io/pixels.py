"""Pixels: decoding one image file into RGB values in [0, 1] (every Pillow mode), the
ImageNet normalisation constants and the evaluation transform of the model cards.

This is the bottom of ``spectrascope.io``: the data modules and ``io.images`` build on it
and it imports neither.

Decoding rules (``decode_rgb``):

* EXIF orientation is applied first (the pixels are turned as a viewer shows them).
* 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``YCbCr``, ...) are divided by 255.
* 16-bit grey (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) and ``I`` holding values in
  0..65535 are divided by 65535 (scaled, never clipped); ``I`` values outside that range
  are refused.
* ``F`` (32-bit float): values in [0, 1] are taken as they are, values in [0, 255] are
  divided by 255; anything else (or NaN/inf) is refused.
* Transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent index, ``RGBa``, ``La``)
  is composited over white: ``a * colour + (1 - a)``.
* ``CMYK`` becomes ``(1 - C)(1 - K)``, ``(1 - M)(1 - K)``, ``(1 - Y)(1 - K)`` (no ICC profile
  is applied).
* Grey images are repeated over the three channels.

A file that cannot be decoded raises ``DataError`` naming the file.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from spectrascope.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "MEAN", "STD", "decode_rgb", "decode_rgb_uint8", "load_image", "eval_transform"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

_GREY16 = ("I;16", "I;16L", "I;16B", "I;16N")
_PREMULTIPLIED = {"RGBa": "RGBA", "La": "LA"}


def _grey_to_rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, axis=2)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return rgb * alpha[..., None] + (1.0 - alpha[..., None])


def _int_grey(im, path) -> np.ndarray:
    a = np.asarray(im)
    if im.mode == "I":
        a = a.astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise DataError(f"cannot decode image {path}: 32-bit integer pixels outside 0..65535 "
                            f"(range {int(a.min())}..{int(a.max())}) have no defined brightness scale")
    return a.astype(np.float64) / 65535.0


def _float_grey(im, path) -> np.ndarray:
    a = np.asarray(im, dtype=np.float64)
    if not np.isfinite(a).all():
        raise DataError(f"cannot decode image {path}: float pixels hold NaN or inf")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        return a
    if lo >= 0.0 and hi <= 255.0:
        return a / 255.0
    raise DataError(f"cannot decode image {path}: float pixels in [{lo:g}, {hi:g}] are neither in [0, 1] "
                    "nor in [0, 255]")


def _to_rgb(im, path) -> np.ndarray:
    """A loaded Pillow image -> float64 (H, W, 3) in [0, 1] (see the module rules)."""
    mode = im.mode
    if mode in _GREY16 or mode == "I":
        return _grey_to_rgb(_int_grey(im, path))
    if mode == "F":
        return _grey_to_rgb(_float_grey(im, path))
    if mode in _PREMULTIPLIED:
        im = im.convert(_PREMULTIPLIED[mode])
        mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode == "PA":
        im = im.convert("RGBA")
        mode = im.mode
    if mode == "1":
        im = im.convert("L")
        mode = "L"
    if mode == "L":
        return _grey_to_rgb(np.asarray(im, dtype=np.float64) / 255.0)
    if mode == "LA":
        a = np.asarray(im, dtype=np.float64) / 255.0
        return _over_white(_grey_to_rgb(a[..., 0]), a[..., 1])
    if mode == "RGBA":
        a = np.asarray(im, dtype=np.float64) / 255.0
        return _over_white(a[..., :3], a[..., 3])
    if mode == "CMYK":
        a = np.asarray(im, dtype=np.float64) / 255.0
        return (1.0 - a[..., :3]) * (1.0 - a[..., 3:4])
    if mode != "RGB":
        try:
            im = im.convert("RGB")
        except (ValueError, OSError) as exc:
            raise DataError(f"cannot decode image {path}: Pillow mode {mode!r} has no RGB conversion ({exc})") from None
    return np.asarray(im, dtype=np.float64) / 255.0


def decode_rgb(path) -> np.ndarray:
    """Decode an image file into float32 (H, W, 3) RGB in [0, 1] (rules in the module doc)."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.load()
            try:
                im = ImageOps.exif_transpose(im)
            except (ValueError, TypeError, KeyError, OSError, SyntaxError):
                pass                          # a broken EXIF block: keep the stored orientation
            arr = _to_rgb(im, path)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or 0 in arr.shape:
        raise DataError(f"cannot decode image {path}: decoded to shape {arr.shape}, not (H, W, 3)")
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def decode_rgb_uint8(path) -> np.ndarray:
    """``decode_rgb`` rounded to uint8 (H, W, 3) (16-bit images lose their low bits, not their range)."""
    return np.rint(decode_rgb(path) * 255.0).astype(np.uint8)


def load_image(path) -> torch.Tensor:
    """Decode an image file into a float tensor (3, H, W) in [0, 1] (``decode_rgb``)."""
    return torch.from_numpy(np.ascontiguousarray(decode_rgb(path).transpose(2, 0, 1)))


def eval_transform(img: torch.Tensor, size: int | Sequence[int] = 224, crop_pct: float = 0.9,
                   mean=MEAN, std=STD) -> torch.Tensor:
    """Resize the shorter side to ``size / crop_pct`` (bicubic, antialiased), centre-crop
    ``size`` and normalise. ``size`` may be (H, W)."""
    th, tw = (size, size) if isinstance(size, int) else tuple(size)
    scale = max(th, tw) / crop_pct
    h, w = img.shape[-2:]
    r = scale / min(h, w)
    nh, nw = max(th, round(h * r)), max(tw, round(w * r))
    x = F.interpolate(img[None], size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)[0]
    top, left = (nh - th) // 2, (nw - tw) // 2
    x = x[:, top:top + th, left:left + tw].clamp_(0, 1)
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return (x - m) / s
