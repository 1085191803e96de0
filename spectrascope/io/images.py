"""Image loading without torchvision: bundled sample photos, image folders and the
evaluation transform of the model cards (resize shorter side to S / crop_pct, centre
crop S, ImageNet normalisation)."""
from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from spectrascope.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)



def sample_images() -> list[Path]:
    """The photos bundled with the package (sorted by name)."""
    root = resources.files("spectrascope") / "assets" / "samples"
    return sorted(Path(str(p)) for p in root.iterdir() if str(p).lower().endswith(IMAGE_SUFFIXES))


def list_images(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def load_image(path) -> torch.Tensor:
    """Decode an image file with Pillow into a float tensor (3, H, W) in [0, 1]."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


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


def load_batch(paths: Sequence, size=224, crop_pct: float = 0.9, mean=MEAN, std=STD) -> torch.Tensor:
    return torch.stack([eval_transform(load_image(p), size, crop_pct, mean, std) for p in paths])


def paths_digest(paths: Sequence) -> str:
    """sha256 over the file names and contents of an image list (for results provenance)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode())
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def resolve_image_paths(images=None, data: str | None = None, num_images: int | None = None) -> list[Path]:
    """Image files for an analysis: ``--images DIR`` or ``--data samples|imagefolder:PATH``;
    the bundled sample photos when neither is given. ``num_images`` keeps the first N
    (sorted by path, so every model sees the same images in the same order)."""
    if images and data:
        raise DataError("give either --images or --data, not both")
    if images:
        paths = list_images(images)
    elif data is None or data == "samples":
        paths = sample_images()
    elif data.startswith("imagefolder:"):
        root = Path(data.split(":", 1)[1])
        sub = root / "val" if (root / "val").is_dir() else root
        paths = list_images(sub)
    elif data.split(":", 1)[0] in ("synthetic", "cifar10", "cifar100"):
        # validation images written once as lossless PNGs (spectrascope.io.datasets); labels and
        # synthetic patch boxes are in labels.json beside them
        from spectrascope.io.datasets import materialize_images
        paths = materialize_images(data, "val", num_images)
    else:
        raise DataError(f"--data {data!r} is not an image source for analyses "
                        "(use samples, imagefolder:PATH, synthetic[:...], cifar10:PATH, cifar100:PATH "
                        "or --images DIR)")
    if num_images is not None:
        if num_images < 1:
            raise DataError("--num-images must be >= 1")
        paths = paths[:num_images]
    return paths


def iter_batches(paths: Sequence, batch_size: int = 16, size=224, crop_pct: float = 0.9, mean=MEAN, std=STD):
    """Yield ``(batch (B,3,H,W), paths)`` in order; decoding happens lazily per batch."""
    if batch_size < 1:
        raise DataError("--batch-size must be >= 1")
    for i in range(0, len(paths), batch_size):
        chunk = list(paths[i:i + batch_size])
        yield load_batch(chunk, size, crop_pct, mean, std), chunk
