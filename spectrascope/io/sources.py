"""The images an analysis runs on: ``ImageSource``.

A source is resolved once from the command line (``--images DIR`` or ``--data samples |
imagefolder:PATH | synthetic[:...] | cifar10:PATH | cifar100:PATH``, ``--num-images N``)
into an ordered list of images, with labels and boxes when the data has them; every model
of a command sees the same images in the same order. ``source.dataset(pre)`` gives a map-
style dataset (``len``, ``[i]`` -> normalised (3, H, W) tensor) with a model's evaluation
transform, which the engine's runner batches and shards.

Synthetic data can be read two ways: as the lossless PNGs that ``io.cache`` writes once
into the cache (``render=False``, the default: the same files every command reads) or
rendered directly at the model's input size (``render=True``: the patch boxes are then
exact in input pixels, which localisation scores need).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from spectrascope.errors import DataError, OptionError
from spectrascope.io.images import eval_transform, load_image, paths_digest, resolve_image_paths

__all__ = ["ImageSource", "ImageDataset", "images_digest"]


def images_digest(paths: Sequence[Path]) -> str:
    """sha256 of the image files (names and contents); names and sizes only above 2000 files."""
    if len(paths) <= 2000:
        return paths_digest(paths)
    h = hashlib.sha256()
    for p in paths:
        h.update(str(Path(p).name).encode())
        h.update(str(Path(p).stat().st_size).encode())
    return "names+sizes:" + h.hexdigest()


class ImageDataset(torch.utils.data.Dataset):
    """Files decoded and transformed for one model: ``[i]`` -> (3, H, W) float tensor."""

    def __init__(self, paths: Sequence[Path], pre):
        self.paths = list(paths)
        self.pre = pre

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        p = self.pre
        return eval_transform(load_image(self.paths[i]), p["size"], p["crop_pct"], p["mean"], p["std"])


class _RenderedSynthetic(torch.utils.data.Dataset):
    def __init__(self, spec: str, n: int, pre):
        from spectrascope.io.bundles import load_data
        self.val = load_data(spec, img_size=tuple(pre["size"])).val
        self.n = n
        self.pre = pre

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        from spectrascope.io.transforms import normalize, to_float
        img, _label, _extra = self.val.load(i)
        return normalize(to_float(img), self.pre["mean"], self.pre["std"])


def _read_labels(meta: Path, paths: Sequence[Path]):
    """Labels (and boxes) of materialised images from their ``labels.json``; a damaged file is a
    ``DataError`` naming it."""
    try:
        doc = json.loads(meta.read_text())
        idx = [int(Path(p).stem) for p in paths]
        labels = [int(doc["labels"][i]) for i in idx]
        boxes = [[tuple(doc["boxes"][i])] for i in idx] if doc.get("boxes") else None
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise DataError(f"{meta} is damaged ({type(exc).__name__}: {exc}); delete its folder to rebuild it",
                        option="--data") from None
    return labels, boxes


@dataclass
class ImageSource:
    """An ordered set of images with optional labels (class indices) and boxes (see the module doc)."""

    paths: list[Path] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    labels: list[int] | None = None
    boxes: list | None = None
    description: str = "samples"
    roots: list[Path] = field(default_factory=list)
    synthetic: str | None = None          # spec rendered at the model's size (render=True)
    notes: list[str] = field(default_factory=list)
    _digest: str | None = None

    @classmethod
    def resolve(cls, images=None, data: str | None = None, num_images: int | None = None, *,
                render: bool = False, default_count: int | None = None) -> "ImageSource":
        """The images of ``--images`` / ``--data`` / ``--num-images`` (bundled photos by default).

        ``render=True`` renders ``synthetic`` data at each model's size (exact boxes) instead of
        reading its cached PNGs; ``default_count`` is the number of rendered images without
        ``--num-images``."""
        if num_images is not None and (not isinstance(num_images, int) or num_images < 1):
            raise OptionError(f"{num_images!r} is not a number of images (an integer >= 1)", option="--num-images")
        kind = (data or "").split(":", 1)[0]
        if render and kind == "synthetic" and not images:
            from spectrascope.io.bundles import load_data
            val = load_data(data).val
            n = min(num_images or default_count or len(val), len(val))
            labels = [int(val.label(i)) for i in range(n)]
            src = cls([], [f"synthetic_{i:03d}" for i in range(n)], labels, None, data, [], data,
                      _digest=f"synthetic:{data}")
            src._note_count(num_images, len(val), data)
            return src
        paths = resolve_image_paths(images, data, num_images)
        if not paths:
            raise DataError("no images to analyse")
        src = cls(list(paths), [Path(p).stem for p in paths], description=str(images) if images else (data or "samples"))
        src._note_count(num_images, len(paths), src.description)
        if images:
            src.roots = [Path(images)]
        elif data and data.startswith("imagefolder:"):
            src.roots = [Path(data.split(":", 1)[1])]
        meta = Path(paths[0]).parent / "labels.json"
        if kind in ("synthetic", "cifar10", "cifar100") and meta.is_file():
            src.labels, src.boxes = _read_labels(meta, paths)
        return src

    def _note_count(self, asked: int | None, have: int, where: str) -> None:
        if asked is not None and have < asked:
            self.notes.append(f"--num-images {asked}: {where} holds only {have} image(s); using {have}")

    def __len__(self) -> int:
        return len(self.names)

    def keys(self) -> list[str]:
        """One unique key per image for file and array names: its stem when the stems differ, else its
        file name, else its path under the images' common folder (``x.png`` and ``x.jpg`` never share one)."""
        if not self.paths:
            return list(self.names)
        paths = [Path(p) for p in self.paths]
        for candidate in ([p.stem for p in paths], [p.name for p in paths]):
            if len(set(candidate)) == len(candidate):
                return candidate
        import os
        root = Path(os.path.commonpath([str(p.parent) for p in paths]))
        return [p.relative_to(root).as_posix() for p in paths]

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = images_digest(self.paths)
        return self._digest

    def dataset(self, pre) -> torch.utils.data.Dataset:
        """The images with one model's evaluation transform (``pre``: a ``zoo.build.Preprocessing``)."""
        if self.synthetic is not None:
            return _RenderedSynthetic(self.synthetic, len(self.names), pre)
        return ImageDataset(self.paths, pre)

    def boxes_for(self, pre) -> list | None:
        """Patch boxes in input pixels for ``pre`` (rendered synthetic data only; None otherwise)."""
        if self.synthetic is None:
            return None
        ds = _RenderedSynthetic(self.synthetic, len(self.names), pre)
        return [[tuple(int(v) for v in ds.val.render(i)[2])] for i in range(len(ds))]

    def load(self, pre, indices: Sequence[int] | None = None) -> torch.Tensor:
        """A batch (B, 3, H, W) of the images ``indices`` (default: all) with ``pre``'s transform."""
        ds = self.dataset(pre)
        idx = range(len(ds)) if indices is None else indices
        return torch.stack([ds[i] for i in idx])

    def describe(self) -> dict:
        """The block that results.json records for the images."""
        return {"count": len(self), "sha256": self.digest, "files": [Path(p).name for p in self.paths] or self.names,
                "source": self.description}
