"""The ``flops`` pipeline: validate the model names, then count each model (``analysis.flops``)."""
from __future__ import annotations

from spectrascope.analysis.flops import FlopCount, count_flops

__all__ = ["count_models"]


def count_models(models, img_size=None, *, fft: str = "none") -> list[FlopCount]:
    """One ``FlopCount`` per model name, in order; unknown names fail before any counting."""
    from spectrascope.zoo.registry import resolve_name
    names = []
    for name in models:
        names.append(name if name.startswith("timm:") else resolve_name(name))
    return [count_flops(n, img_size, fft=fft) for n in names]
