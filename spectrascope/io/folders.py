"""Image folders in the ImageNet layout (``root/train/<class>/*.jpg``, ``root/val/<class>/*.jpg``),
decoded with Pillow on access."""
from __future__ import annotations

from pathlib import Path

from spectrascope.errors import DataError
from spectrascope.io.pixels import IMAGE_SUFFIXES, decode_rgb_uint8

__all__ = ["FolderImages", "image_folder_classes"]

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


def image_folder_classes(root: Path):
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
