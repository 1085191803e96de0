"""Probes: forward hooks on taps addressed by role, stage or module path.

A tap (``spectrascope.models.TapSpec``) names a module output (or input, ``hook="pre"``)
and its tensor layout. ``Probe`` attaches the hooks, captures clones of the tensors in
execution order (or hands them to a callback, for streaming reducers), normalises spatial
layouts to NCHW on request, and always removes its hooks, also on error.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn

from spectrascope.models.base import TapList, TapSpec
from spectrascope.errors import TapError

__all__ = ["TapSpec", "TapList", "Probe", "model_taps", "select_taps", "to_nchw", "TapError"]



def model_taps(model: nn.Module, input_size=None) -> TapList:
    """The taps a model declares (zoo models) or that can be inferred (timm models).

    ``input_size`` (S or (H, W)) is the input the taps will see; inference for foreign
    models runs one dry forward at that size (default: the model's own input size) and
    caches the result on the model."""
    if hasattr(model, "taps") and callable(model.taps):
        return TapList(model.taps())
    from spectrascope.probe.infer import infer_taps  # timm and other foreign models
    key = None if input_size is None else (tuple(input_size) if not isinstance(input_size, int) else input_size)
    cache = model.__dict__.setdefault("_spectrascope_inferred_taps", {})
    if key not in cache:
        cache[key] = TapList(infer_taps(model, input_size=input_size))
    return TapList(cache[key])


def select_taps(taps: Sequence[TapSpec], roles: Iterable[str] | None = None, stages: Iterable[int] | None = None,
                paths: Iterable[str] | None = None, names: Iterable[str] | None = None) -> TapList:
    """Filter taps by role, 1-based stage, exact module path or tap name.

    Module paths that no declared tap covers become ad-hoc taps with layout ``raw``
    (``to_nchw`` then leaves them as they are)."""
    taps = TapList(taps)
    out = TapList(taps)
    if roles:
        roles = list(roles)
        known = set(taps.roles())
        bad = [r for r in roles if r not in known]
        if bad:
            raise TapError(f"unknown tap role(s) {', '.join(bad)}; this model has: {', '.join(taps.roles())}")
        out = TapList(t for t in out if t.role in roles)
    if stages:
        stages = [int(s) for s in stages]
        have = sorted({t.stage for t in taps if t.stage is not None})
        bad = [s for s in stages if s not in have]
        if bad:
            raise TapError(f"stage(s) {bad} not in this model (stages {have})")
        out = TapList(t for t in out if t.stage in stages)
    if names:
        names = list(names)
        by_name = {t.name: t for t in taps}
        bad = [n for n in names if n not in by_name]
        if bad:
            raise TapError(f"unknown tap name(s) {', '.join(bad)}")
        out = TapList(t for t in out if t.name in names)
    if paths:
        extra = TapList()
        by_path = {}
        for t in taps:
            if t.hook == "forward":
                by_path.setdefault(t.path, t)
        for p in paths:
            extra.append(by_path.get(p) or TapSpec(name=p, role="path", path=p, layout="raw"))
        out = extra if not (roles or stages or names) else TapList(list(out) + [t for t in extra if t not in out])
    if not out:
        raise TapError("the tap selection is empty")
    return out


def to_nchw(x: torch.Tensor, tap: TapSpec) -> torch.Tensor:
    """Normalise a captured spatial map to (B, C, H, W); other layouts are returned as is."""
    if tap.layout == "NCHW":
        return x
    if tap.layout == "NHWC":
        return x.permute(0, 3, 1, 2)
    if tap.layout == "NLC":
        if tap.num_prefix_tokens:
            x = x[:, tap.num_prefix_tokens:]
        B, L, C = x.shape
        if tap.grid is not None and tap.grid[0] * tap.grid[1] == L:
            h, w = tap.grid
        else:
            h = int(math.isqrt(L))
            if h * h != L:
                raise TapError(f"tap {tap.name}: {L} tokens do not form a square grid and no grid is declared")
            w = h
        return x.transpose(1, 2).reshape(B, C, h, w)
    return x


def _first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], torch.Tensor):
        return obj[0]
    return None


class Probe:
    """Context manager capturing tap tensors.

    Without ``callback`` the captures accumulate in ``self.captures`` (name -> list of
    tensors, one per forward) and ``pop()`` returns and clears the latest ones. With
    ``callback(tap, tensor)`` nothing is stored: the callback consumes each tensor as it
    is produced (streaming reducers keep memory flat in the number of images).

    Tensors are detached clones (in-place ops after the tap cannot change them),
    optionally normalised to NCHW and cast with ``dtype``. ``self.order`` lists tap
    names in the order their hooks fired during the first forward.
    """

    def __init__(self, model: nn.Module, taps: Sequence[TapSpec], *, callback: Callable | None = None,
                 nchw: bool = True, dtype: torch.dtype | None = None, clone: bool = True):
        self.model = model
        self.taps = TapList(taps)
        self.callback = callback
        self.nchw = nchw
        self.dtype = dtype
        self.clone = clone
        self.captures: dict[str, list[torch.Tensor]] = {}
        self.order: list[str] = []
        self._handles: list = []
        self._seen: set[str] = set()

    # -- hooks
    def _record(self, tap: TapSpec, value):
        x = _first_tensor(value)
        if x is None:
            raise TapError(f"tap {tap.name} ({tap.path}) produced {type(value).__name__}, not a tensor")
        x = x.detach()
        if self.nchw:
            x = to_nchw(x, tap)
        if self.dtype is not None and not x.is_complex():
            x = x.to(self.dtype)
        if self.clone:
            x = x.clone()
        if tap.name not in self._seen:
            self._seen.add(tap.name)
            self.order.append(tap.name)
        if self.callback is not None:
            self.callback(tap, x)
        else:
            self.captures.setdefault(tap.name, []).append(x)

    def __enter__(self):
        try:
            for tap in self.taps:
                try:
                    mod = self.model.get_submodule(tap.path)
                except AttributeError:
                    raise TapError(f"tap {tap.name}: no module {tap.path!r} in this model") from None
                if tap.hook == "pre":
                    h = mod.register_forward_pre_hook(lambda _m, args, tap=tap: self._record(tap, args))
                else:
                    h = mod.register_forward_hook(lambda _m, _i, out, tap=tap: self._record(tap, out))
                self._handles.append(h)
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- results
    def pop(self) -> dict[str, torch.Tensor]:
        """Latest capture per tap, in execution order; clears the store."""
        names = self.order + [t.name for t in self.taps if t.name not in self.order]
        out = {n: self.captures[n][-1] for n in names if n in self.captures}
        self.captures.clear()
        return out

    def ordered_taps(self) -> TapList:
        """The taps sorted by the order their hooks fired (unfired ones last)."""
        rank = {n: i for i, n in enumerate(self.order)}
        return TapList(sorted(self.taps, key=lambda t: rank.get(t.name, len(rank))))
