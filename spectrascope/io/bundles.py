"""A data spec opened: its two raw splits (``load(i)`` -> (uint8 HWC, label, extras)), its
classes and how it may be augmented (``load_data``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from spectrascope.errors import DataError
from spectrascope.io.cifar import CIFAR, load_cifar
from spectrascope.io.folders import FolderImages, image_folder_classes
from spectrascope.io.specs import DataSpec, parse_data_spec
from spectrascope.io.synthetic import SyntheticConfig, SyntheticTextures

__all__ = ["DataBundle", "load_data"]

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
    if spec.kind in CIFAR:
        tr, va = load_cifar(spec.kind, spec.path, "train"), load_cifar(spec.kind, spec.path, "val")
        return DataBundle(spec, tr, va, tr.classes, geometric_ok=True, center_crop=False)
    classes = image_folder_classes(spec.path)
    return DataBundle(spec, FolderImages(spec.path / "train", classes), FolderImages(spec.path / "val", classes),
                      classes, geometric_ok=True, center_crop=True)
