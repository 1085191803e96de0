"""The image files of an analysis without torchvision: bundled sample photos, image folders,
``--images`` / ``--data`` / ``--num-images`` resolved into a file list, batches with the
evaluation transform of the model cards (decoding and the transform live in ``io.pixels``;
synthetic and CIFAR data are written as PNGs by ``io.cache``)."""
from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path
from typing import Sequence

import torch

from spectrascope.errors import DataError, OptionError
from spectrascope.io.cache import materialize_images
from spectrascope.io.pixels import IMAGE_SUFFIXES, MEAN, STD, decode_rgb, eval_transform, load_image

__all__ = ["IMAGE_SUFFIXES", "MEAN", "STD", "DataError", "sample_images", "list_images", "load_image", "decode_rgb",
           "eval_transform", "load_batch", "paths_digest", "resolve_image_paths", "iter_batches"]


def sample_images() -> list[Path]:
    """The photos bundled with the package (sorted by name)."""
    root = resources.files("spectrascope") / "assets" / "samples"
    return sorted(Path(str(p)) for p in root.iterdir() if str(p).lower().endswith(IMAGE_SUFFIXES))


def list_images(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    try:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as exc:
        raise DataError(f"cannot list the images of {folder}: {exc.strerror or exc}") from None
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    undecodable = [p for p in files if not _is_utf8(p.relative_to(folder))]
    if undecodable:
        name = os.fsencode(undecodable[0].relative_to(folder))
        raise DataError(f"{len(undecodable)} image file name(s) in {folder} are not valid UTF-8 (e.g. {name!r}); "
                        "names go into results and figures: rename them")
    return files


def _is_utf8(path) -> bool:
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def load_batch(paths: Sequence, size=224, crop_pct: float = 0.9, mean=MEAN, std=STD) -> torch.Tensor:
    return torch.stack([eval_transform(load_image(p), size, crop_pct, mean, std) for p in paths])


def paths_digest(paths: Sequence) -> str:
    """sha256 over the file names and contents of an image list (for results provenance)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.fsencode(Path(p).name))
        try:
            h.update(Path(p).read_bytes())
        except OSError as exc:
            raise DataError(f"cannot read image {p}: {exc.strerror or exc}") from None
    return h.hexdigest()


def resolve_image_paths(images=None, data: str | None = None, num_images: int | None = None) -> list[Path]:
    """Image files for an analysis: ``--images DIR`` or ``--data samples|imagefolder:PATH``;
    the bundled sample photos when neither is given. ``num_images`` keeps the first N
    (sorted by path, so every model sees the same images in the same order)."""
    if images and data:
        raise OptionError("give either --images or --data, not both", option="--data")
    if num_images is not None and (isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1):
        raise OptionError(f"{num_images!r} is not a number of images (an integer >= 1)", option="--num-images")
    if images:
        paths = list_images(images)
    elif data is None or data == "samples":
        paths = sample_images()
    elif data.startswith("imagefolder:"):
        if not data.split(":", 1)[1].strip():
            raise DataError("imagefolder needs a path: imagefolder:PATH", option="--data")
        root = Path(data.split(":", 1)[1]).expanduser()
        sub = root / "val" if (root / "val").is_dir() else root
        paths = list_images(sub)
    elif data.split(":", 1)[0] in ("synthetic", "cifar10", "cifar100"):
        # validation images written once as lossless PNGs (spectrascope.io.cache); labels and
        # synthetic patch boxes are in labels.json beside them
        paths = materialize_images(data, "val", num_images)
    else:
        raise DataError(f"--data {data!r} is not an image source for analyses "
                        "(use samples, imagefolder:PATH, synthetic[:...], cifar10:PATH, cifar100:PATH "
                        "or --images DIR)")
    if num_images is not None:
        paths = paths[:num_images]
    return paths


def iter_batches(paths: Sequence, batch_size: int = 16, size=224, crop_pct: float = 0.9, mean=MEAN, std=STD):
    """Yield ``(batch (B,3,H,W), paths)`` in order; decoding happens lazily per batch."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"{batch_size!r} is not a batch size (an integer >= 1)", option="--batch-size")
    for i in range(0, len(paths), batch_size):
        chunk = list(paths[i:i + batch_size])
        yield load_batch(chunk, size, crop_pct, mean, std), chunk
