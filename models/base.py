"""What every zoo model declares: its taps (hookable points addressed by role) and how
official checkpoints are adapted to the built configuration."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, asdict
from typing import Iterator

import torch
import torch.nn as nn

from .layers import resize_complex_weight

log = logging.getLogger("spectrascope.models")

#: Tensor layouts a tap can carry. ``NLC`` are tokens (B, L, C), row-major over (H, W),
#: possibly preceded by ``num_prefix_tokens`` class/register tokens; ``NC`` is pooled;
#: ``raw`` is anything else (routing weights, complex filters, masks) and is described in
#: ``TapSpec.note``.
LAYOUTS = ("NCHW", "NHWC", "NLC", "NC", "raw")

#: Roles. Spatial roles produce feature maps; spectral roles are model specific.
ROLES = (
    "stem", "downsample", "stage", "block", "mixer", "residual", "mlp", "pool",
    # spectral / model-specific taps
    "df_routing", "df_filter", "aff_mask", "spf", "spg", "context",
)


@dataclass(frozen=True)
class TapSpec:
    """One hookable point of a model.

    ``path`` is the module path (``model.get_submodule(path)``); ``hook`` says whether the
    tensor is the module's output (``"forward"``) or its first input (``"pre"``: e.g. the
    residual stream after the token mixer is the input of ``norm2``). ``stage`` is
    1-based as in the papers; ``index`` is the block index inside the stage (0-based) or
    None. ``depth`` is the position among all blocks in [0, 1] (None for non-block taps).
    """

    name: str
    role: str
    path: str
    layout: str
    stage: int | None = None
    index: int | None = None
    hook: str = "forward"
    num_prefix_tokens: int = 0
    grid: tuple[int, int] | None = None
    depth: float | None = None
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


class TapList(list):
    """A list of TapSpec with small selection helpers."""

    def by_role(self, *roles: str) -> "TapList":
        return TapList(t for t in self if t.role in roles)

    def by_stage(self, *stages: int) -> "TapList":
        return TapList(t for t in self if t.stage in stages)

    def names(self) -> list[str]:
        return [t.name for t in self]

    def roles(self) -> list[str]:
        seen: list[str] = []
        for t in self:
            if t.role not in seen:
                seen.append(t.role)
        return seen


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
