"""The earlier import path of the data layer, kept for users' code: every name is re-exported
from the module that now holds it (``io.specs``, ``io.synthetic``, ``io.cifar``, ``io.folders``,
``io.bundles``, ``io.transforms``, ``io.randaugment``, ``io.mixing``, ``io.cache``). spectrascope's
own code imports those modules directly."""
from __future__ import annotations

from spectrascope.io.bundles import DataBundle, load_data
from spectrascope.io.cache import cache_root, materialize_images
from spectrascope.io.cifar import ArrayImages, load_cifar, safe_unpickle
from spectrascope.io.folders import FolderImages
from spectrascope.io.mixing import MixupCutmix, build_mixup, cutmix_box, one_hot_smooth
from spectrascope.io.randaugment import RandAugmentPolicy, apply_ra_op, rand_augment
from spectrascope.io.specs import KINDS, SPEC_HELP, DataSpec, parse_data_spec, parse_scalar
from spectrascope.io.synthetic import SyntheticConfig, SyntheticTextures, texture_mask
from spectrascope.io.transforms import (AugmentConfig, EvalTransform, TrainTransform, TransformedDataset,
                                        random_erase, random_resized_crop_box, resolve_backend, to_float)

__all__ = ["DataSpec", "parse_data_spec", "parse_scalar", "SyntheticConfig", "SyntheticTextures", "ArrayImages",
           "FolderImages", "load_cifar", "safe_unpickle", "DataBundle", "load_data", "AugmentConfig", "TrainTransform",
           "EvalTransform", "TransformedDataset", "MixupCutmix", "build_mixup", "RandAugmentPolicy", "rand_augment",
           "apply_ra_op", "random_erase", "random_resized_crop_box", "materialize_images", "resolve_backend",
           "texture_mask", "to_float", "one_hot_smooth", "cutmix_box", "cache_root", "SPEC_HELP", "KINDS"]
