"""What a tap is: ``TapSpec`` (one hookable point of a model, its role and tensor layout) and
``TapList``. The lowest layer of the probe: it imports nothing of spectrascope, so model
code can declare its taps with it."""
from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["LAYOUTS", "SPATIAL_LAYOUTS", "ROLES", "MIXER_KINDS", "TapSpec", "TapList"]

#: Tensor layouts a tap can carry. ``NLC`` are tokens (B, L, C), row-major over (H, W),
#: possibly preceded by ``num_prefix_tokens`` class/register tokens; ``NC`` is pooled;
#: ``raw`` is anything else (routing weights, complex filters, masks) and is described in
#: ``TapSpec.note``.
LAYOUTS = ("NCHW", "NHWC", "NLC", "NC", "raw")
#: layouts that carry a spatial feature map (convertible to NCHW)
SPATIAL_LAYOUTS = ("NCHW", "NHWC", "NLC")

#: Roles. Spatial roles produce feature maps; spectral roles are model specific.
ROLES = (
    "stem", "downsample", "stage", "block", "mixer", "residual", "mlp", "pool",
    # spectral / model-specific taps
    "df_routing", "df_filter", "aff_mask", "spf", "spg", "context",
)

#: kinds of token mixer a block-level tap can belong to (``TapSpec.mixer``), for figures that
#: shade blocks by mixer type
MIXER_KINDS = ("attention", "fft", "conv", "pooling", "identity", "mlp", "other")


@dataclass(frozen=True)
class TapSpec:
    """One hookable point of a model.

    ``path`` is the module path (``model.get_submodule(path)``); ``hook`` says whether the
    tensor is the module's output (``"forward"``) or its first input (``"pre"``: e.g. the
    residual stream after the token mixer is the input of ``norm2``). ``stage`` is
    1-based as in the papers; ``index`` is the block index inside the stage (0-based) or
    None. ``depth`` is the position among all blocks in [0, 1] (None for non-block taps).
    ``grid`` is the spatial (H, W) of the map when known; ``num_prefix_tokens`` counts the
    class/register tokens in front of NLC tokens; ``mixer`` names the kind of token mixer
    of the tap's block (one of ``MIXER_KINDS``, empty when unknown).
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
    mixer: str = ""

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
