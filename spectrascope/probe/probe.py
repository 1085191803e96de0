"""``Probe``: the only place where spectrascope installs hooks on a model.

A probe attaches one hook per hooked point (module output, ``hook="forward"``, or first
module input, ``hook="pre"``) for a list of ``TapSpec``s, captures the tensors in execution
order -- or hands each one to a callback as it is produced (streaming reducers) -- and
optionally registers a tensor hook on each output to capture its gradient (Grad-CAM).
Hooks are removed on exit, also on error.

Per forward pass (between ``begin()`` and ``end()``, which the engine's runner calls) a
probe also

* records which taps fired and refuses a tap whose module ran twice (``once=True``),
* checks every captured tensor for NaN/inf (``check_finite=True``) with one reduction per
  tap and one host synchronisation per forward (``end()`` names the first bad tap in
  execution order),
* stops the forward pass once every tap has fired (``stop_early=True``, raising
  ``StopForward``, which the runner catches): a run whose taps end at stage k never runs
  the stages after it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from spectrascope.errors import TapError
from spectrascope.probe.layouts import is_spatial, to_nchw
from spectrascope.probe.spec import TapList, TapSpec

__all__ = ["Probe", "StopForward", "ForwardReport"]


class StopForward(Exception):
    """Raised from a hook when every tap of a ``stop_early`` probe has fired (caught by the runner)."""


class ForwardReport:
    """What ``Probe.end()`` found about one forward pass."""

    def __init__(self, fired: list[str], missing: list[str], nonfinite: str | None):
        self.fired = fired
        self.missing = missing
        #: name of the first tap (execution order) holding NaN/inf, or None
        self.nonfinite = nonfinite


def _first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], torch.Tensor):
        return obj[0]
    return None


def _finite_probe(x: torch.Tensor):
    """A 0-d float32 tensor that is finite iff ``x`` is (one pass, no host sync)."""
    if x.is_complex():
        x = torch.view_as_real(x)
    if not x.is_floating_point():
        return None
    return x.sum(dtype=torch.float32)


class Probe:
    """Context manager capturing the tensors of ``taps`` during forward passes of ``model``.

    Args:
        model: the module to hook.
        taps: the ``TapSpec``s to capture; taps sharing a module and hook kind share one hook.
        callback: ``callback(tap, tensor)`` consumes every capture as it is produced and
            nothing is stored (memory flat in the number of images); without it the
            captures accumulate in ``self.captures`` (name -> list, one per forward) and
            ``pop()`` returns the latest ones.
        nchw: give spatial taps as (B, C, H, W) (``spectrascope.probe.layouts.to_nchw``).
        dtype: cast real captures to this dtype.
        clone: store copies (in-place ops after the tap cannot change them). Callbacks that
            consume the tensor inside the hook need no copy.
        grads: also capture the gradient of every tapped output (``self.grads``, same
            layout conversion); needs autograd enabled during the forward.
        once: a tap whose module runs twice in one forward is an error (checked by ``end()``).
        check_finite: ``end()`` reports the first tap whose tensor held NaN/inf.
        finite_from_callback: with ``check_finite``, the callback's return value (a tensor
            that is finite iff the capture is, e.g. from the small statistic it just
            computed) replaces the probe's own pass over the capture; a callback returning
            None for a tap contributes nothing for it.
        stop_early: raise ``StopForward`` once every tap fired in the current forward.
        skip_non_tensor: ignore outputs that are not tensors (dry runs over arbitrary modules)
            instead of raising ``TapError``.

    ``self.order`` lists the tap names in the order they first fired.
    """

    def __init__(self, model: nn.Module, taps: Sequence[TapSpec], *, callback: Callable | None = None,
                 nchw: bool = True, dtype: torch.dtype | None = None, clone: bool = True, grads: bool = False,
                 once: bool = False, check_finite: bool = False, stop_early: bool = False,
                 finite_from_callback: bool = False,
                 skip_non_tensor: bool = False):
        self.model = model
        self.taps = TapList(taps)
        if not self.taps:
            raise TapError("no taps selected")
        names = self.taps.names()
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise TapError(f"tap name(s) {', '.join(dup)} selected twice")
        self.callback = callback
        self.nchw = nchw
        self.dtype = dtype
        self.clone = clone
        self.grads_enabled = grads
        self.once = once
        self.check_finite = check_finite
        self.finite_from_callback = finite_from_callback and callback is not None
        self.stop_early = stop_early
        self.skip_non_tensor = skip_non_tensor
        self.captures: dict[str, list[torch.Tensor]] = {}
        self.grads: dict[str, list[torch.Tensor]] = {}
        self.order: list[str] = []
        self._points: dict[tuple[str, str], list[TapSpec]] = {}
        for t in self.taps:
            if t.hook not in ("forward", "pre"):
                raise TapError(f"tap {t.name}: hook must be 'forward' or 'pre', not {t.hook!r}")
            self._points.setdefault((t.path, t.hook), []).append(t)
        self._handles: list = []
        self._seen: set[str] = set()
        self._fired: dict[str, int] = {}
        self._fired_points: set[tuple[str, str]] = set()
        self._finite: list[tuple[str, torch.Tensor]] = []

    # ------------------------------------------------------------------ hooks
    def _convert(self, tap: TapSpec, x: torch.Tensor) -> torch.Tensor:
        if self.nchw and is_spatial(tap.layout):
            x = to_nchw(x, tap)
        if self.dtype is not None and not x.is_complex():
            x = x.to(self.dtype)
        return x

    def _record(self, key: tuple[str, str], value) -> None:
        raw = _first_tensor(value)
        taps = self._points[key]
        if raw is None:
            if self.skip_non_tensor:
                return
            raise TapError(f"tap {taps[0].name} ({taps[0].path}) produced {type(value).__name__}, not a tensor")
        x = raw.detach()
        if self.check_finite and not self.finite_from_callback:
            f = _finite_probe(x)
            if f is not None:
                self._finite.append((taps[0].name, f))
        for tap in taps:
            self._fired[tap.name] = self._fired.get(tap.name, 0) + 1
            if tap.name not in self._seen:
                self._seen.add(tap.name)
                self.order.append(tap.name)
            y = self._convert(tap, x)
            if self.clone:
                y = y.clone()
            if self.callback is not None:
                f = self.callback(tap, y)
                if self.check_finite and self.finite_from_callback and isinstance(f, torch.Tensor):
                    self._finite.append((tap.name, f.reshape(()).to(torch.float32)))
            else:
                self.captures.setdefault(tap.name, []).append(y)
            if self.grads_enabled:
                self._hook_grad(tap, raw)
        self._fired_points.add(key)
        if self.stop_early and len(self._fired_points) == len(self._points):
            raise StopForward

    def _hook_grad(self, tap: TapSpec, raw: torch.Tensor) -> None:
        if not raw.requires_grad:
            raise TapError(f"tap {tap.name} ({tap.path}): its output carries no gradient (run the forward with "
                           "autograd enabled and inputs or weights that require grad)")

        def keep(g, tap=tap):
            self.grads.setdefault(tap.name, []).append(self._convert(tap, g.detach()))
        raw.register_hook(keep)

    def __enter__(self) -> "Probe":
        try:
            for key in self._points:
                path, hook = key
                try:
                    mod = self.model.get_submodule(path)
                except AttributeError:
                    raise TapError(f"tap {self._points[key][0].name}: no module {path!r} in this model") from None
                if hook == "pre":
                    h = mod.register_forward_pre_hook(lambda _m, args, key=key: self._record(key, args))
                else:
                    h = mod.register_forward_hook(lambda _m, _i, out, key=key: self._record(key, out))
                self._handles.append(h)
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self.remove()
        return False

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # ------------------------------------------------------------------ per forward
    def begin(self) -> None:
        """Start a forward pass: clears the per-forward bookkeeping."""
        self._fired.clear()
        self._fired_points.clear()
        self._finite.clear()

    def end(self, *, stopped: bool = False) -> ForwardReport:
        """Finish a forward pass: which taps fired, the first non-finite tap (one host sync).

        Raises ``TapError`` when ``once`` and a tap fired more than once."""
        if self.once:
            twice = [n for n, k in self._fired.items() if k > 1]
            if twice:
                tap = next(t for t in self.taps if t.name == twice[0])
                raise TapError(f"tap {tap.name!r} ({tap.path}) fired {self._fired[tap.name]} times in one forward "
                               "(its module is called more than once); choose another tap")
        bad = None
        if self._finite:
            flags = torch.isfinite(torch.stack([f.to(self._finite[0][1].device) for _, f in self._finite]))
            if not bool(flags.all()):
                bad = self._finite[int((~flags).nonzero()[0])][0]
        fired = [n for n in self.order if n in self._fired]
        missing = [t.name for t in self.taps if t.name not in self._fired]
        return ForwardReport(fired, missing, bad)

    # ------------------------------------------------------------------ results
    def pop(self) -> dict[str, torch.Tensor]:
        """Latest capture per tap, in execution order; clears the store."""
        names = self.order + [t.name for t in self.taps if t.name not in self.order]
        out = {n: self.captures[n][-1] for n in names if n in self.captures}
        self.captures.clear()
        return out

    def pop_grads(self) -> dict[str, torch.Tensor]:
        """Latest gradient per tap; clears the store."""
        out = {n: g[-1] for n, g in self.grads.items()}
        self.grads.clear()
        return out

    def ordered_taps(self) -> TapList:
        """The taps sorted by the order their hooks fired (unfired ones last)."""
        rank = {n: i for i, n in enumerate(self.order)}
        return TapList(sorted(self.taps, key=lambda t: rank.get(t.name, len(rank))))
