"""What every zoo model declares: its taps (hookable points addressed by role), its registry
entry (``register_model``: name, builder and model-card fields, read by ``spectrascope.zoo``)
and how official checkpoints are adapted to the built configuration.

Model code imports nothing of the toolkit but ``spectrascope.errors`` and the probe's
``TapSpec`` types."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn

from spectrascope.errors import UserError
from spectrascope.probe.spec import LAYOUTS, ROLES, TapList, TapSpec  # noqa: F401  (re-exported)

from .layers import resize_complex_weight

log = logging.getLogger("spectrascope.models")

#: every entry point the model files register: (name, builder, model-card fields), in order
ENTRIES: list[tuple[str, Callable[..., nn.Module], dict]] = []


def register_model(name: str, **card_fields):
    """Decorator recording ``builder(num_classes, img_size, **overrides) -> nn.Module`` under ``name``
    with its model-card fields (family, paper, aliases, weights, preprocessing, ...)."""

    def deco(fn):
        ENTRIES.append((name, fn, dict(card_fields)))
        return fn

    return deco


class InputSizeError(UserError, RuntimeError):
    """An input that does not fit the size a model (or a size-bound layer) was built for."""


@dataclass
class AdaptNote:
    key: str
    what: str


class ZooModel(nn.Module):
    """Mixin-like base for zoo models.

    Subclasses implement ``taps()``; they may extend ``adapt_state_dict`` for
    checkpoint conversions (resolution changes, derived buffers)."""

    #: tensor layout between blocks, for cards and probes
    feature_layout: str = "NCHW"

    def taps(self) -> TapList:  # pragma: no cover - every family overrides
        raise NotImplementedError

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[AdaptNote]]:
        """Make an official state_dict fit this instance.

        Default rule: complex filters stored as ``(h, w, K, 2)`` real tensors whose grid
        differs from the model's are resized with the official bicubic,
        ``align_corners=True`` recipe (DFFormer/GFFormer/GFNet)."""
        own = self.state_dict()
        out = dict(state)
        notes: list[AdaptNote] = []
        for key, value in state.items():
            if key not in own or not key.endswith(("complex_weights", "complex_weight")):
                continue
            target = own[key].shape
            if value.shape == target or value.ndim != 4 or value.shape[2:] != target[2:]:
                continue
            out[key] = resize_complex_weight(value.float(), target[0], target[1]).to(value.dtype)
            notes.append(AdaptNote(key, f"resized {tuple(value.shape[:2])} -> {tuple(target[:2])} "
                                        "(bicubic, align_corners=True)"))
        return out, notes


def block_depths(stage_depths: list[int]) -> Iterator[tuple[int, int, float]]:
    """Yield (stage, index, normalised depth) for every block of a staged network."""
    total = sum(stage_depths)
    k = 0
    for s, d in enumerate(stage_depths):
        for j in range(d):
            yield s, j, (k / (total - 1) if total > 1 else 0.0)
            k += 1
