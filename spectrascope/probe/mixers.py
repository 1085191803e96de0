"""The kind of token mixer behind a tap (attention, FFT, convolution, pooling, MLP, identity),
read from the module classes of a model; ``annotate_mixers`` fills ``TapSpec.mixer`` so that
figures can shade each latent by the mixer that produced it (Park & Kim Fig. 8)."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch.nn as nn

from spectrascope.errors import TapError
from spectrascope.probe.infer import model_taps
from spectrascope.probe.spec import TapList, TapSpec

__all__ = ["mixer_kind", "annotate_mixers"]

#: class-name words -> mixer kind (first match wins; FFT words before the generic ones)
_MIXER_WORDS = (
    ("fft", ("filter", "fft", "fourier", "afno", "aff", "spectral", "spam", "spf", "gfn", "fno", "ffc", "dff")),
    ("attention", ("attention", "attn", "msa")),
    ("pooling", ("pool",)),
    ("conv", ("conv", "modulation")),
    ("identity", ("identity",)),
    ("mlp", ("mixing", "mlp")),
)
#: module classes that only pass a tensor through (their parent says what the mixer is)
_WRAPPERS = ("tappoint", "droppath", "identity", "sequential", "modulelist", "scale", "layerscale")
#: child names under which blocks keep their token mixer
_MIXER_CHILDREN = ("token_mixer", "attn", "attention", "filter", "mixer", "modulation", "conv_dw", "global_rep")


def mixer_kind(module: nn.Module) -> str:
    """The kind (``probe.spec.MIXER_KINDS``) of a token-mixer module from its class name, or ''."""
    name = type(module).__name__.lower()
    for kind, words in _MIXER_WORDS:
        if any(w in name for w in words):
            return kind
    return ""


def _kind_near(model: nn.Module, path: str) -> str:
    """The mixer kind at ``path``: the module itself, else up to three parents or their mixer children."""
    parts = path.split(".") if path else []
    for up in range(0, min(4, len(parts) + 1)):
        sub = ".".join(parts[:len(parts) - up])
        try:
            mod = model.get_submodule(sub)
        except AttributeError:
            continue
        cls = type(mod).__name__.lower()
        if cls not in _WRAPPERS and mixer_kind(mod):
            return mixer_kind(mod)
        for child in _MIXER_CHILDREN:
            c = getattr(mod, child, None)
            if isinstance(c, nn.Module) and type(c).__name__.lower() not in _WRAPPERS and mixer_kind(c):
                return mixer_kind(c)
    return ""


def annotate_mixers(model: nn.Module, taps: Sequence[TapSpec], *, input_size=None) -> TapList:
    """Fill ``TapSpec.mixer`` (when empty) of every block tap with the kind of its block's token mixer,
    read from the model's mixer tap of the same block (stage, index)."""
    try:
        declared = model_taps(model, input_size=input_size)
    except TapError:
        declared = TapList()
    mixer_path = {(t.stage, t.index): t.path for t in declared if t.role == "mixer" and t.index is not None}
    kinds: dict = {}
    out = TapList()
    for t in taps:
        if t.mixer or t.index is None or (t.stage, t.index) not in mixer_path:
            out.append(t)
            continue
        key = (t.stage, t.index)
        if key not in kinds:
            kinds[key] = _kind_near(model, mixer_path[key]) or "other"
        out.append(replace(t, mixer=kinds[key]))
    out.notes = list(getattr(taps, "notes", []))
    return out
