"""The one layout conversion: every spatial tensor a tap carries (NCHW, NHWC or NLC tokens)
becomes ``(B, C, H, W)`` here and nowhere else, and ``infer_layout`` decides the layout of a
tensor whose layout was not declared (timm models, module paths) from its shape.

NLC tokens are row-major over the (H, W) grid, after ``num_prefix_tokens`` class /
register / distillation tokens. Their grid is the one given, or the square ``isqrt(L)``;
anything else is refused (reference notebooks silently mis-shape non-square grids)."""
from __future__ import annotations

import math

import torch

from spectrascope.errors import TapError
from spectrascope.probe.spec import SPATIAL_LAYOUTS, TapSpec

__all__ = ["SPATIAL_LAYOUTS", "token_grid", "channels_last", "to_nchw", "from_nchw", "infer_layout", "is_spatial"]


def is_spatial(layout: str) -> bool:
    return str(layout).upper() in SPATIAL_LAYOUTS


def token_grid(num_tokens: int, grid=None) -> tuple[int, int]:
    """(H, W) of ``num_tokens`` row-major tokens: ``grid`` when given (checked), else the square grid."""
    if grid is not None:
        h, w = int(grid[0]), int(grid[1])
        if h * w != num_tokens:
            raise TapError(f"{num_tokens} tokens do not match the grid {h}x{w}")
        return h, w
    h = math.isqrt(num_tokens)
    if h * h != num_tokens:
        raise TapError(f"{num_tokens} tokens do not form a square grid; give the grid (path:MODULE:NLC:HxW)")
    return h, h


def _unpack(tap_or_layout, num_prefix_tokens, grid):
    if isinstance(tap_or_layout, TapSpec):
        t = tap_or_layout
        return t.layout.upper(), t.num_prefix_tokens, t.grid, t.name
    return str(tap_or_layout).upper(), num_prefix_tokens, grid, None


def channels_last(x: torch.Tensor, layout="NCHW", num_prefix_tokens: int = 0, grid=None) -> torch.Tensor:
    """A (B, H, W, C) view of a spatial tensor (no copy where the layout allows it).

    ``layout`` is a layout name or a ``TapSpec`` (whose layout, prefix tokens and grid are used)."""
    layout, prefix, grid, name = _unpack(layout, num_prefix_tokens, grid)
    where = f"tap {name}: " if name else ""
    if layout in ("NCHW", "NHWC"):
        if x.ndim != 4:
            raise TapError(f"{where}layout {layout} needs a 4-D tensor, got shape {tuple(x.shape)}")
        return x.permute(0, 2, 3, 1) if layout == "NCHW" else x
    if layout == "NLC":
        if x.ndim != 3:
            raise TapError(f"{where}layout NLC needs a 3-D tensor (B, L, C), got shape {tuple(x.shape)}")
        p = int(prefix or 0)
        if p < 0 or p >= x.shape[1]:
            raise TapError(f"{where}num_prefix_tokens={p} does not fit {x.shape[1]} tokens")
        x = x[:, p:]
        try:
            h, w = token_grid(x.shape[1], grid)
        except TapError as exc:
            raise TapError(f"{where}{exc}") from None
        return x.reshape(x.shape[0], h, w, x.shape[2])
    raise TapError(f"{where}layout {layout!r} is not a spatial layout; use one of {', '.join(SPATIAL_LAYOUTS)}")


def to_nchw(x: torch.Tensor, layout="NCHW", num_prefix_tokens: int = 0, grid=None) -> torch.Tensor:
    """A (B, C, H, W) view of a spatial tensor in ``layout`` (a layout name or a ``TapSpec``)."""
    lay = layout.layout if isinstance(layout, TapSpec) else str(layout).upper()
    if lay.upper() == "NCHW":
        if x.ndim != 4:
            raise TapError(f"layout NCHW needs a 4-D tensor, got shape {tuple(x.shape)}")
        return x
    return channels_last(x, layout, num_prefix_tokens, grid).permute(0, 3, 1, 2)


def from_nchw(y: torch.Tensor, like: torch.Tensor, layout="NCHW", num_prefix_tokens: int = 0) -> torch.Tensor:
    """Inverse of ``to_nchw``: (B, C, H, W) back to ``layout``, the prefix tokens taken from ``like``."""
    if isinstance(layout, TapSpec):
        layout, num_prefix_tokens = layout.layout, layout.num_prefix_tokens
    layout = str(layout).upper()
    if layout == "NCHW":
        return y
    if layout == "NHWC":
        return y.permute(0, 2, 3, 1)
    if layout == "NLC":
        tokens = y.flatten(2).transpose(1, 2)
        if num_prefix_tokens:
            tokens = torch.cat([like[:, :num_prefix_tokens], tokens], dim=1)
        return tokens
    raise TapError(f"layout {layout!r} is not a spatial layout")


def _plausible(h: int, w: int, size) -> bool:
    """Whether an h x w map can be a downsampled view of an input of ``size`` (same aspect ratio)."""
    H, W = size
    if h < 1 or w < 1 or h > H or w > W:
        return False
    rh, rw = H / h, W / w
    return abs(rh - rw) <= 0.25 * max(rh, rw)


def infer_layout(shape, size, *, batch: int | None = None, channels: int | None = None, grid=None,
                 num_prefix_tokens: int = 0, prefix_allowed: bool = True):
    """The layout of a tensor of ``shape`` seen for an input of spatial ``size`` (H, W).

    Returns ``(layout, grid, num_prefix_tokens)``: ``NC`` for (B, C); ``NCHW`` / ``NHWC`` for
    4-D maps whose spatial axes are a plausible downsampling of the input (``channels`` and
    ``grid`` disambiguate, e.g. FocalNet's NCHW ``norm1`` vs Swin's NHWC one); ``NLC`` for
    tokens whose count minus the prefix tokens is ``grid`` or a square. ``("?", shape, 0)``
    when a 4-D shape fits both NCHW and NHWC; None when the tensor is not a map of the batch."""
    if shape is None or len(shape) < 2 or (batch is not None and shape[0] != batch):
        return None
    if len(shape) == 2:
        return ("NC", None, 0)
    if len(shape) == 4:
        cands = []
        for lay, c, hw in (("NCHW", shape[1], (shape[2], shape[3])), ("NHWC", shape[3], (shape[1], shape[2]))):
            if _plausible(*hw, size) and (channels is None or c == channels):
                cands.append((lay, tuple(hw), 0))
        if len(cands) == 2 and grid is not None:
            cands = [c for c in cands if c[1] == tuple(grid)] or cands
        if len(cands) == 1:
            return cands[0]
        return ("?", tuple(shape), 0) if cands else None
    if len(shape) == 3:
        L, C = shape[1], shape[2]
        if channels is not None and C != channels:
            return None
        if grid is not None:
            p = L - grid[0] * grid[1]
            if p == 0 or (prefix_allowed and p == num_prefix_tokens):
                return ("NLC", tuple(grid), p)
        n = L - (num_prefix_tokens if prefix_allowed else 0)
        h = math.isqrt(max(n, 0))
        if n > 0 and h * h == n and _plausible(h, h, size):
            return ("NLC", (h, h), L - n)
        return None
    return None
