"""Tap inference for models that declare none (timm models)."""
from __future__ import annotations

import torch.nn as nn

from spectrascope.models.base import TapList, TapSpec
from .taps import TapError


def infer_taps(model: nn.Module) -> TapList:
    raise TapError(f"cannot infer taps for {type(model).__name__}: it declares none and is not a supported "
                   "timm family; pass module paths with --taps path:<module.path>")
